//! A real server on 127.0.0.1 with a real HTTP client: batching under concurrency, backpressure,
//! time limits, graceful shutdown, and metrics that Prometheus accepts.
mod common;

use common::*;
use flowscore::engine::EngineConfig;
use flowscore::flow::{Preprocess, Prior};
use flowscore::http::{AppState, Limits};
use flowscore::metrics::Metrics;
use flowscore::models::Models;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Metrics,
}

async fn start(dir: &Path, config: EngineConfig) -> Server {
    start_with(dir, config, Limits::default()).await
}

async fn start_with(dir: &Path, config: EngineConfig, limits: Limits) -> Server {
    let metrics = Metrics::new();
    let models = Models::for_folders(&[dir.to_path_buf()], config, metrics.clone()).await.unwrap();
    let state = AppState::new(models, metrics.clone(), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(flowscore::serve::serve_on(listener, state, async {
        let _ = stopped.await;
    }));
    Server { addr, stop: Some(stop), task, metrics }
}

fn model_dir(tmp: &Path, dim: usize, units: usize) -> std::path::PathBuf {
    let dir = tmp.join("model");
    let arch = flowscore::flow::Architecture { dim, couplings: 4, hidden_layers: 2, hidden_units: units };
    let card = flowscore::store::ModelCard::new(
        "served",
        arch,
        Prior::Logistic,
        Preprocess::Logit { alpha: 0.05 },
        flowscore::store::InputSpec { shape: vec![dim], eight_bit: false },
    );
    let mut model = flowscore::store::Model::new(card, tch::Device::Cpu).unwrap();
    randomize(&model, 3, 0.05);
    flowscore::store::save(&mut model, &dir, false).unwrap();
    dir
}

fn rows_json(x: &tch::Tensor) -> serde_json::Value {
    let n = x.size()[0];
    let rows: Vec<Vec<f64>> = (0..n).map(|i| to_vec(&x.get(i))).collect();
    serde_json::json!({ "inputs": rows })
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_get_exactly_their_own_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), 64, 256);
    let server = start(&dir, EngineConfig::default()).await;
    let model = flowscore::store::load(&dir, tch::Device::Cpu).unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/log_prob", server.addr);
    let mut tasks = Vec::new();
    let mut expected = Vec::new();
    // Each round's 32 requests leave together, so that they meet in the queue.
    let round = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    for c in 0..32u64 {
        let mut mine = Vec::new();
        for r in 0..8u64 {
            // Each request has its own rows and its own row count (1..=4).
            let x = random_rows(1 + ((c + r) % 4) as usize, 64, 0.0, 1.0, c * 100 + r);
            let _g = tch::no_grad_guard();
            mine.push((rows_json(&x), to_vec(&model.nice.log_prob(&x).unwrap())));
        }
        expected.push(mine.iter().map(|m| m.1.clone()).collect::<Vec<_>>());
        let (client, url, round) = (client.clone(), url.clone(), round.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for (body, _) in mine {
                round.wait().await;
                let r = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                got.push(v["log_prob"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>());
            }
            got
        }));
    }
    for (c, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        for (r, (g, e)) in got.iter().zip(&expected[c]).enumerate() {
            assert_eq!(g.len(), e.len(), "client {c} request {r}: row count");
            for (a, b) in g.iter().zip(e) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "client {c} request {r}: {a} vs {b}");
            }
        }
    }
    // Requests really were merged: fewer forward passes than requests.
    let text = server.metrics.render();
    let batches = metric(&text, "flowscore_batch_rows_count");
    assert!(batches < 256.0, "{batches} forward passes for 256 concurrent requests: no batching happened");
    assert_eq!(
        metric(&text, "flowscore_rows_total{model=\"served\",op=\"log_prob\"}"),
        expected.iter().flatten().map(|e| e.len()).sum::<usize>() as f64
    );
}

fn inpaint_body(dim: usize, steps: usize) -> serde_json::Value {
    let row: Vec<f64> = (0..dim).map(|i| (i % 7) as f64 / 7.0).collect();
    let mask: Vec<f64> = (0..dim).map(|i| (i % 2) as f64).collect();
    serde_json::json!({"inputs": vec![row; 64], "mask": vec![mask; 64], "steps": steps})
}

/// With no admission wait, a full server refuses at once; the refused requests leave it healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overfull_queue_answers_503_at_once_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), 64, 256);
    let config = EngineConfig { queue_depth: 1, ..EngineConfig::default() };
    let server = start_with(&dir, config, Limits { admission_wait: Duration::ZERO, ..Limits::default() }).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/inpaint", server.addr);
    let body = inpaint_body(64, 200);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let r = client.post(&url).json(&body).send().await.unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry, r.text().await.unwrap())
            })
        })
        .collect();
    let mut rejected = 0;
    for t in tasks {
        let (status, retry, text) = t.await.unwrap();
        match status {
            200 => {}
            503 => {
                rejected += 1;
                assert_eq!(retry.as_deref(), Some("1"), "503 without Retry-After");
                assert!(text.contains("overloaded"), "{text}");
            }
            s => panic!("unexpected status {s}: {text}"),
        }
    }
    assert!(rejected > 0, "12 slow requests against a queue of 1: none was refused");
    assert_eq!(metric(&server.metrics.render(), "flowscore_rejected_total"), rejected as f64);
    // Still healthy afterwards.
    let x = random_rows(2, 64, 0.0, 1.0, 1);
    let r = client.post(format!("http://{}/log_prob", server.addr)).json(&rows_json(&x)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_requests_time_out_with_503() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), 64, 256);
    let config = EngineConfig { request_timeout: Duration::from_millis(20), ..EngineConfig::default() };
    let server = start(&dir, config).await;
    let client = reqwest::Client::new();
    let r = client.post(format!("http://{}/inpaint", server.addr)).json(&inpaint_body(64, 2000)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), 64, 256);
    let mut server = start(&dir, EngineConfig::default()).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/inpaint", server.addr);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            let r = client.post(&url).json(&inpaint_body(64, 400)).send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    });
    // Let the request reach the engine, then ask the server to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&server.metrics.render(), "flowscore_http_requests_in_flight"), 1.0);
    server.stop.take().unwrap().send(()).unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the in-flight request was dropped: {body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 64);
    tokio::time::timeout(Duration::from_secs(10), server.task).await.expect("server did not stop").unwrap().unwrap();
    // New connections are refused once it has stopped.
    assert!(client.get(format!("http://{}/health", server.addr)).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), 16, 32);
    let server = start(&dir, EngineConfig::default()).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let x = random_rows(3, 16, 0.0, 1.0, 1);
    for _ in 0..3 {
        client.post(format!("{base}/log_prob")).json(&rows_json(&x)).send().await.unwrap();
    }
    client.get(format!("{base}/nope")).send().await.unwrap();
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "flowscore_http_requests_total{method=\"POST\",route=\"/log_prob\",status=\"200\"} 3",
        "flowscore_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "flowscore_model_info{name=\"served\",version=\"1\"} 1",
        "flowscore_rows_total{model=\"served\",op=\"log_prob\"} 9",
        "flowscore_model_request_seconds_count{model=\"served\"} 3",
        "flowscore_models_loaded 1",
        "flowscore_model_memory_bytes",
        "flowscore_scored_bpd_count 9",
        "flowscore_http_request_duration_seconds_bucket",
        "flowscore_queue_wait_seconds_bucket",
        "flowscore_inference_seconds_bucket",
        "flowscore_batch_rows_bucket",
        "flowscore_queue_depth{model=\"served\"}",
        "flowscore_rejected_total 0",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let promtool = which("promtool").expect("promtool missing: scripts/setup.sh installs Debian's prometheus package");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics: {report}");
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.exists())
}
