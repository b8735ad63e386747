//! Many models in one server: five models of different D answering concurrent mixed requests
//! with their own values, loads and unloads at run time with no failed request on the others,
//! fair turns between a hot model and an idle one, broken folders skipped and reported, the old
//! single live.json migrated, the memory budget, and the Open Inference Protocol's JSON and
//! binary forms against /log_prob, with its bad inputs refused.
mod common;

use common::*;
use flowscore::engine::{Engine, EngineConfig, Output, Task};
use flowscore::flow::Prior;
use flowscore::metrics::Metrics;
use flowscore::serve::{build_state, serve_on, ServeArgs};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "s3cret";

/// Saves a random model of width `dim` as `<root>/<name>/<version>/`.
fn save_model(root: &Path, name: &str, version: &str, dim: usize, seed: u64) -> PathBuf {
    let mut m = random_model(dim, Prior::Logistic, standardize(dim, seed), seed);
    m.card.name = name.into();
    m.card.version = version.into();
    let dir = root.join(name).join(version);
    flowscore::store::save(&mut m, &dir, false).unwrap();
    dir
}

/// log p of `rows` by the model in `dir`, computed here with the kernels the server prepares.
fn reference(dir: &Path, rows: &[Vec<f32>]) -> Vec<f64> {
    let mut m = flowscore::store::load(dir, tch::Device::Cpu).unwrap();
    flowscore::kernels::prepare(&mut m.nice, flowscore::kernels::CpuKernels::Auto).unwrap();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let x = tch::Tensor::from_slice(&flat).view([rows.len() as i64, -1]);
    to_vec(&tch::no_grad(|| m.nice.log_prob(&x).unwrap()))
}

fn close(a: f64, b: f64) -> bool {
    // Batches of other sizes may take other kernels: equal to float32 rounding.
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

struct Server {
    base: String,
    client: reqwest::Client,
}

async fn start(models: &Path, extra: &[&str]) -> Server {
    let m = models.to_str().unwrap().to_string();
    let mut flags = vec!["--models-dir", &m, "--admin-token", TOKEN, "--data-dir", &m];
    flags.extend(extra);
    let state = build_state(&ServeArgs::from_flags(&flags).unwrap()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_on(listener, state, std::future::pending()));
    Server { base: format!("http://{addr}"), client: reqwest::Client::new() }
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn post_raw(&self, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Value) {
        let mut r = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn get_auth(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn rows(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let x = random_rows(n, dim, -3.0, 3.0, seed);
    (0..n).map(|i| to_vec(&x.get(i as i64)).into_iter().map(|v| v as f32).collect()).collect()
}

const DIMS: [(&str, usize); 5] = [("a", 3), ("b", 5), ("c", 8), ("d", 13), ("e", 21)];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_models_answer_mixed_concurrent_requests_with_their_own_values() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    let dirs: BTreeMap<&str, PathBuf> =
        DIMS.iter().enumerate().map(|(i, (n, d))| (*n, save_model(&root, n, "1", *d, i as u64 + 1))).collect();
    let s = Arc::new(start(&root, &[]).await);
    let mut tasks = Vec::new();
    for i in 0..120u64 {
        let (name, dim) = DIMS[(i as usize * 7) % DIMS.len()];
        let (s, dir) = (s.clone(), dirs[name].clone());
        tasks.push(tokio::spawn(async move {
            let x = rows(1 + (i as usize % 6), dim, 100 + i);
            // Alternate the named route, the version-pinned one and the protocol's infer.
            let got: Vec<f64> = match i % 3 {
                0 => {
                    let (status, out) = s.post(&format!("/models/{name}/log_prob"), json!({"inputs": x})).await;
                    assert_eq!(status, 200, "{out}");
                    assert_eq!(out["model"]["name"], name);
                    serde_json::from_value(out["log_prob"].clone()).unwrap()
                }
                1 => {
                    let (status, out) =
                        s.post(&format!("/models/{name}/versions/1/log_prob"), json!({"inputs": x})).await;
                    assert_eq!(status, 200, "{out}");
                    serde_json::from_value(out["log_prob"].clone()).unwrap()
                }
                _ => {
                    let flat: Vec<f32> = x.iter().flatten().copied().collect();
                    let body = json!({"inputs": [{"name": "inputs", "datatype": "FP32", "shape": [x.len(), dim], "data": flat}]});
                    let (status, out) = s.post(&format!("/v2/models/{name}/infer"), body).await;
                    assert_eq!(status, 200, "{out}");
                    assert_eq!(out["model_name"], name);
                    assert_eq!(out["outputs"][0]["name"], "log_prob");
                    assert_eq!(out["outputs"][0]["datatype"], "FP64");
                    serde_json::from_value(out["outputs"][0]["data"].clone()).unwrap()
                }
            };
            let want = tokio::task::spawn_blocking(move || reference(&dir, &x)).await.unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(close(*g, *w), "model {name}: got {g}, its own model gives {w}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The unprefixed routes serve the default model: the first name, nothing being recorded.
    let (_, out) = s.post("/log_prob", json!({"inputs": rows(1, 3, 1)})).await;
    assert_eq!(out["model"]["name"], "a");
    // Per-model metrics, labelled by name.
    let text = s.client.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    for (name, _) in DIMS {
        assert!(text.contains(&format!("flowscore_rows_total{{model=\"{name}\",op=\"log_prob\"}}")), "{name}: {text}");
    }
    assert!(text.contains("flowscore_models_loaded 5"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loads_unloads_swaps_and_a_new_trained_name_fail_no_request_of_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    save_model(&root, "hot", "1", 4, 1);
    save_model(&root, "cold", "1", 6, 2);
    let s = Arc::new(start(&root, &[]).await);
    let stop = Arc::new(AtomicUsize::new(0));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for c in 0..4 {
        let (s, stop, ok, failed) = (s.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while stop.load(Ordering::SeqCst) == 0 {
                let (status, _) = s.post("/models/hot/log_prob", json!({"inputs": rows(2, 4, c * 1000 + i)})).await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst)
                } else {
                    failed.fetch_add(1, Ordering::SeqCst)
                };
                i += 1;
            }
        }));
    }
    // Unload a name: its routes answer 404 with a reason; load it again.
    assert_eq!(s.post("/models/cold/unload", json!({})).await.0, 200);
    let (status, out) = s.post("/models/cold/log_prob", json!({"inputs": rows(1, 6, 1)})).await;
    assert_eq!(status, 404, "{out}");
    assert!(out["error"].as_str().unwrap().contains("cold"), "{out}");
    assert_eq!(s.post("/models/cold/load", json!({})).await.0, 200);
    assert_eq!(s.post("/models/cold/log_prob", json!({"inputs": rows(1, 6, 1)})).await.0, 200);
    // A new version of the hot model appears on disk: pinned beside the live one, then live.
    let v2 = save_model(&root, "hot", "2", 4, 9);
    let (status, out) = s.post("/models/hot/versions/2/load", json!({})).await;
    assert_eq!((status, &out["live"]), (200, &json!(false)), "{out}");
    let x = rows(3, 4, 77);
    let (_, pinned) = s.post("/models/hot/versions/2/log_prob", json!({"inputs": x})).await;
    let want = reference(&v2, &x);
    for (g, w) in pinned["log_prob"].as_array().unwrap().iter().zip(&want) {
        assert!(close(g.as_f64().unwrap(), *w));
    }
    assert_eq!(s.post("/models/hot/versions/2/activate", json!({})).await.0, 200);
    let (_, out) = s.post("/models/hot/log_prob", json!({"inputs": rows(1, 4, 5)})).await;
    assert_eq!(out["model"]["version"], "2");
    // The live version cannot be unloaded alone; the old one can.
    assert_eq!(s.post("/models/hot/versions/2/unload", json!({})).await.0, 409);
    let (status, _) = s.post("/models/hot/versions/1/unload", json!({})).await;
    assert!(status == 200 || status == 404, "version 1 was unloaded by the swap or now: {status}");
    // The protocol's repository extension sees the same.
    let (status, index) = s.post("/v2/repository/index", json!({"ready": true})).await;
    assert_eq!(status, 200);
    let ready: Vec<String> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}/{}", m["name"].as_str().unwrap(), m["version"].as_str().unwrap()))
        .collect();
    assert_eq!(ready, ["cold/1", "hot/2"]);
    assert_eq!(s.post("/v2/repository/models/cold/unload", json!({})).await.0, 200);
    assert_eq!(s.get("/v2/models/cold/ready").await.0, 404);
    assert_eq!(s.post("/v2/repository/models/cold/load", json!({})).await.0, 200);
    assert_eq!(s.get("/v2/models/cold/ready").await.0, 200);
    // A training job for a new name: served as soon as it ends, the others untouched.
    let train_rows: Vec<Vec<f32>> = rows(300, 5, 42);
    let config = json!({"epochs": 2, "couplings": 2, "hidden_layers": 1, "hidden_units": 16});
    let (status, job) = s.post("/train", json!({"name": "fresh", "inputs": train_rows, "config": config})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = loop {
        let (_, j) = s.get_auth(&format!("/train/{id}")).await;
        if matches!(j["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((done["state"].as_str(), done["promoted"].as_bool()), (Some("succeeded"), Some(true)), "{done}");
    let (status, out) = s.post("/models/fresh/log_prob", json!({"inputs": rows(2, 5, 1)})).await;
    assert_eq!((status, &out["model"]["name"]), (200, &json!("fresh")), "{out}");
    stop.store(1, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert!(ok.load(Ordering::SeqCst) > 20, "the load ran");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests to the hot model failed during loads and unloads");
}

/// A request to an idle model waits for about one batch of a hot model whose queue is full, not
/// for the whole queue: counted in the engine's batches run meanwhile, not in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_model_is_not_stuck_behind_a_hot_models_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    let (hot_dir, idle_dir) = (save_model(&root, "hot", "1", 64, 1), save_model(&root, "idle", "1", 4, 2));
    let config = EngineConfig { max_batch_rows: 256, queue_depth: 4096, ..EngineConfig::default() };
    let metrics = Metrics::new();
    let engine = {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || Engine::start(config, metrics)).await.unwrap().unwrap()
    };
    let (hot, idle) = (engine.load(&hot_dir, None).await.unwrap(), engine.load(&idle_dir, None).await.unwrap());
    let mut tasks = Vec::new();
    // 400 hot requests of 256 rows: one batch each.
    for i in 0..400 {
        let hot = hot.clone();
        let rows: Vec<f32> = (0..256 * 64).map(|j| ((i * 31 + j) % 97) as f32 / 50.0 - 1.0).collect();
        tasks.push(tokio::spawn(async move { hot.submit(Task::LogProb { rows }).await.unwrap() }));
    }
    // Wait until the hot queue is long, then ask the idle model.
    while hot.queued() < 300 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let batches = || metrics.batch_rows.get_sample_count();
    let before = batches();
    let out = idle.submit(Task::LogProb { rows: vec![0.5; 4] }).await.unwrap();
    // Batches that ran meanwhile: the hot one in progress, at most one more already in line, and
    // the idle model's own.
    let meanwhile = batches() - before;
    assert!(matches!(out.output, Output::LogProb(ref lp) if lp.len() == 1));
    assert!(meanwhile <= 4, "the idle model's request waited for {} hot batches", meanwhile - 1);
    assert!(hot.queued() > 100, "the hot queue had drained: the check proves nothing");
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_folders_are_skipped_and_reported_and_the_old_live_file_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    save_model(&root, "a", "1", 3, 1);
    save_model(&root, "b", "1", 5, 2);
    save_model(&root, "b", "2", 5, 3);
    let bad = save_model(&root, "bad", "1", 4, 4);
    std::fs::write(bad.join("model.safetensors"), b"not weights").unwrap();
    // A copied folder whose card names another model is served under its folder's name.
    let copy = root.join("copy").join("7");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["card.json", "model.safetensors"] {
        std::fs::copy(root.join("a/1").join(f), copy.join(f)).unwrap();
    }
    // One live model for the whole server, as before many models.
    std::fs::write(root.join("live.json"), r#"{"name": "b", "version": "1"}"#).unwrap();
    let s = start(&root, &["--memory-budget-mb", "1"]).await;
    // b/1 stays live (not the latest b/2), and b is the default model.
    let (_, out) = s.post("/log_prob", json!({"inputs": rows(1, 5, 1)})).await;
    assert_eq!(out["model"], json!({"name": "b", "version": "1"}));
    assert!(!root.join("live.json").exists());
    let live: Value = serde_json::from_str(&std::fs::read_to_string(root.join("b/live.json")).unwrap()).unwrap();
    assert_eq!(live, json!({"version": "1"}));
    let (_, list) = s.get("/models").await;
    let bad = list["models"].as_array().unwrap().iter().find(|m| m["name"] == "bad").unwrap().clone();
    assert_eq!(bad["versions"][0]["state"], "unavailable", "{bad}");
    assert!(bad["versions"][0]["reason"].as_str().unwrap().contains("model.safetensors"), "{bad}");
    assert_eq!(s.post("/models/bad/log_prob", json!({"inputs": rows(1, 4, 1)})).await.0, 404);
    assert_eq!(s.post("/models/bad/load", json!({})).await.0, 409);
    // The budget (1 MB) refuses a model that does not fit.
    save_model(&root, "big", "1", 2000, 5);
    let (status, out) = s.post("/models/big/load", json!({})).await;
    assert_eq!(status, 409, "{out}");
    assert!(out["error"].as_str().unwrap().contains("memory budget"), "{out}");
    let (status, out) = s.post("/models/copy/log_prob", json!({"inputs": rows(1, 3, 1)})).await;
    assert_eq!((status, &out["model"]), (200, &json!({"name": "copy", "version": "7"})), "{out}");
    // Still healthy.
    assert_eq!(s.get("/ready").await.0, 200);
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_protocol_in_binary_matches_log_prob_and_refuses_bad_input_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    save_model(&root, "m", "1", 4, 1);
    let s = start(&root, &[]).await;
    let (status, meta) = s.get("/v2/models/m").await;
    assert_eq!(status, 200);
    assert_eq!(meta["inputs"][0], json!({"name": "inputs", "datatype": "FP32", "shape": [-1, 4]}));
    let (_, server) = s.get("/v2").await;
    assert!(server["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    // Binary in and out: FP64 rows, log_prob and latents back as raw bytes.
    let x = rows(3, 4, 5);
    let (_, by_route) = s.post("/models/m/encode", json!({"inputs": x})).await;
    let raw: Vec<u8> = x.iter().flatten().flat_map(|v| (*v as f64).to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "inputs", "datatype": "FP64", "shape": [3, 4], "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "log_prob", "parameters": {"binary_data": true}}, {"name": "latents", "parameters": {"binary_data": true}}]});
    let header = serde_json::to_vec(&header).unwrap();
    let mut body = header.clone();
    body.extend(&raw);
    let r = s
        .client
        .post(format!("{}/v2/models/m/infer", s.base))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    let meta: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], 24);
    let lp: Vec<f64> =
        bytes[json_len..json_len + 24].chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    let z: Vec<f32> = bytes[json_len + 24..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let want_lp: Vec<f64> = serde_json::from_value(by_route["log_prob"].clone()).unwrap();
    let want_z: Vec<f32> = by_route["latents"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    assert_eq!(lp, want_lp);
    assert_eq!(z, want_z);
    // Bad input: 4xx with a JSON error naming the problem, and the server stays healthy.
    let input = |datatype: &str, shape: Value, data: Value| json!({"name": "inputs", "datatype": datatype, "shape": shape, "data": data});
    let good = input("FP32", json!([1, 4]), json!([0.1, 0.2, 0.3, 0.4]));
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"inputs": [input("INT32", json!([1, 4]), json!([1, 2, 3, 4]))]}), 400, "INT32"),
        (json!({"inputs": [input("BYTES", json!([1, 1]), json!(["abc"]))]}), 400, "BYTES"),
        (json!({"inputs": [input("FP32", json!([2, 4]), json!([0.1, 0.2, 0.3, 0.4]))]}), 400, "8"),
        (json!({"inputs": [input("FP32", json!([1, 3]), json!([0.1, 0.2, 0.3]))]}), 400, "expects 4"),
        (json!({"inputs": [good.clone(), good.clone()]}), 400, "inputs"),
        (json!({"inputs": []}), 400, "input"),
        (json!({"inputs": [good.clone()], "outputs": [{"name": "nope"}]}), 400, "nope"),
    ];
    for (body, status, needle) in cases {
        let (got, out) = s.post("/v2/models/m/infer", body.clone()).await;
        assert_eq!(got, status, "{body}: {out}");
        assert!(out["error"].as_str().unwrap_or_default().contains(needle), "{body}: {out}");
    }
    for len in [header.len() + 1000, 3] {
        let mut body = header.clone();
        body.extend(&raw);
        let (got, out) =
            s.post_raw("/v2/models/m/infer", body, &[("Inference-Header-Content-Length", len.to_string())]).await;
        assert_eq!(got, 400, "a header length of {len}: {out}");
        assert!(out["error"].is_string(), "{out}");
    }
    for path in ["/v2/models/nope/infer", "/v2/models/m/versions/9/infer"] {
        let (got, out) = s.post(path, json!({"inputs": [good.clone()]})).await;
        assert_eq!(got, 404, "{path}: {out}");
        assert!(out["error"].is_string());
    }
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    let (got, _) = s.post("/v2/models/m/infer", json!({"inputs": [good]})).await;
    assert_eq!(got, 200);
}
