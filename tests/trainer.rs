//! Background training over HTTP: train → promote → serve the new version, cancel, auth, bad
//! datasets, hot swap under load with zero failures, and a stop or a crash in the middle of a
//! job, resumed to the model an uninterrupted run gives.
mod common;

use flowscore::serve::{build_state, serve_on, ServeArgs};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{free_port, score_until, Child, Remote, TOKEN};
use common::workspace;

struct Server {
    base: String,
    client: reqwest::Client,
}

async fn start(models: &Path, data: &Path, token: Option<&str>) -> Server {
    let (m, d) = (models.to_str().unwrap().to_string(), data.to_str().unwrap().to_string());
    let mut flags = vec!["--models-dir", &m, "--data-dir", &d];
    if let Some(t) = token {
        flags.extend(["--admin-token", t]);
    }
    let args = ServeArgs::from_flags(&flags).unwrap();
    let state = build_state(&args).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(serve_on(listener, state, std::future::pending()));
    Server { base: format!("http://{addr}"), client: reqwest::Client::new() }
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn wait_done(&self, id: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (_, job) = self.get(&format!("/train/{id}")).await;
            if !matches!(job["state"].as_str(), Some("queued" | "running")) {
                return job;
            }
            assert!(start.elapsed() < limit, "job {id} still running: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn small(epochs: usize) -> Value {
    json!({"epochs": epochs, "hidden_units": 32, "hidden_layers": 2, "couplings": 4, "batch_size": 128})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn train_promote_and_serve_the_new_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    let s = start(&models, &data, Some(TOKEN)).await;
    let row = json!({"inputs": [[3.0, -1.0, 0.0]]});
    let (_, before) = s.post("/log_prob", row.clone()).await;
    assert_eq!(before["model"], json!({"name": "tab", "version": "1"}));
    let (status, job) = s.post("/train", json!({"dataset": {"path": "good.csv"}, "config": small(8)})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job = s.wait_done(&id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["model"], json!({"name": "tab", "version": "2"}));
    assert_eq!(job["promoted"], true, "{job}");
    assert_eq!(job["history"].as_array().unwrap().len(), job["epoch"].as_u64().unwrap() as usize);
    // /log_prob now answers from version 2, with the new model's value.
    let (status, after) = s.post("/log_prob", row).await;
    assert_eq!(status, 200);
    assert_eq!(after["model"], json!({"name": "tab", "version": "2"}));
    // Prepared as the server prepares it, so that the same forward path gives the same bits.
    let mut v2 = flowscore::store::load(&models.join("tab/2"), tch::Device::Cpu).unwrap();
    flowscore::kernels::prepare(&mut v2.nice, flowscore::kernels::CpuKernels::Auto).unwrap();
    let x = tch::Tensor::from_slice(&[3.0f32, -1.0, 0.0]).view([1, 3]);
    let expected = tch::no_grad(|| v2.nice.log_prob(&x).unwrap().double_value(&[0]));
    assert!((after["log_prob"][0].as_f64().unwrap() - expected).abs() < 1e-9);
    // The choice is recorded, and the models listing shows both versions.
    let live: Value = serde_json::from_str(&std::fs::read_to_string(models.join("tab/live.json")).unwrap()).unwrap();
    assert_eq!(live, json!({"version": "2"}));
    let (_, list) = s.get("/models").await;
    let tab = &list["models"][0];
    assert_eq!(
        (tab["name"].as_str(), tab["live"].as_str(), tab["default"].as_bool()),
        (Some("tab"), Some("2"), Some(true))
    );
    let states: Vec<(&str, &str)> = tab["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap(), v["state"].as_str().unwrap()))
        .collect();
    // The previous live version was unloaded by the swap; it stays on disk.
    assert_eq!(states, [("1", "available"), ("2", "loaded")]);
    // Metrics saw the job and the swap.
    let text = s.client.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("flowscore_train_jobs_total{outcome=\"succeeded\"} 1"), "{text}");
    assert!(text.contains("flowscore_model_swaps_total 1"));
    assert!(text.contains("flowscore_model_info{name=\"tab\",version=\"2\"} 1"));
    // A worse model is not promoted under `better`; `never` never promotes.
    let (_, job) =
        s.post("/train", json!({"dataset": {"path": "good.csv"}, "promote": "never", "config": small(1)})).await;
    let job = s.wait_done(job["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!((job["state"].as_str(), job["promoted"].as_bool()), (Some("succeeded"), Some(false)));
    let (_, now) = s.post("/log_prob", json!({"inputs": [[0.0, 0.0, 0.0]]})).await;
    assert_eq!(now["model"]["version"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_within_a_batch_and_writes_no_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    let s = start(&models, &data, Some(TOKEN)).await;
    // The first start records each name's live version, so a later version does not take over
    // on a restart by sorting last.
    let live: Value = serde_json::from_str(&std::fs::read_to_string(models.join("tab/live.json")).unwrap()).unwrap();
    assert_eq!(live, json!({"version": "1"}));
    let (status, job) = s.post("/train", json!({"dataset": {"path": "good.csv"}, "config": small(10_000)})).await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap().to_string();
    // A second job while this one runs is refused.
    let (status, body) = s.post("/train", json!({"dataset": {"path": "good.csv"}})).await;
    assert_eq!(status, 409, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = s.client.delete(format!("{}/train/{id}", s.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let job = s.wait_done(&id, Duration::from_secs(10)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(!models.join("tab/2").exists(), "a cancelled job wrote a model");
    let (status, _) = s.get("/train/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_routes_need_the_token_and_are_off_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    let s = start(&models, &data, Some(TOKEN)).await;
    let url = format!("{}/train", s.base);
    let body = json!({"dataset": {"path": "good.csv"}});
    let r = s.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s.client.post(&url).bearer_auth("wrong").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = s.client.post(format!("{}/models/tab/1/activate", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let off = start(&models, &data, None).await;
    let r = off.client.post(format!("{}/train", off.base)).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_datasets_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    std::fs::write(tmp.path().join("secret.csv"), "x,y,z\n1,2,3\n").unwrap();
    let s = start(&models, &data, Some(TOKEN)).await;
    for (dataset, status, needle) in [
        (json!({"path": "missing.csv"}), 404, "no dataset `missing.csv`"),
        (json!({"path": "../secret.csv"}), 403, "outside"),
        (json!({"path": "/etc/passwd"}), 403, "outside"),
        (json!({"path": "text.csv"}), 400, "abc"),
        (json!({"path": "nan.csv"}), 400, "line 3"),
    ] {
        let (got, body) = s.post("/train", json!({"dataset": dataset})).await;
        assert_eq!(got, status, "{dataset}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{dataset}: {body}");
    }
    let (got, body) = s.post("/train", json!({"inputs": [[1.0, 2.0, 3.0]], "config": {"epochz": 3}})).await;
    assert_eq!(got, 400);
    assert!(body["error"].as_str().unwrap().contains("epochz"));
    let (got, body) = s.post("/train", json!({"inputs": [[1.0, 2.0], [1.0, 2.0]]})).await;
    assert_eq!(got, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at least 3 rows"), "{body}");
    // No message names a folder of the server.
    assert!(!body.to_string().contains(tmp.path().to_str().unwrap()), "{body}");
    // Uploaded rows of another width for a served name: trained, but never promoted, whatever
    // the policy.
    let rows: Vec<Vec<f64>> = (0..200).map(|i| vec![i as f64 / 10.0, (i % 7) as f64]).collect();
    for (promote, reason) in [("better", "not comparable"), ("always", "takes 2 values per row")] {
        let body = json!({"inputs": rows, "name": "tab", "config": small(2), "promote": promote});
        let (got, job) = s.post("/train", body).await;
        assert_eq!(got, 202, "{job}");
        let job = s.wait_done(job["id"].as_str().unwrap(), Duration::from_secs(60)).await;
        assert_eq!(job["promoted"], false);
        assert!(job["promotion_reason"].as_str().unwrap().contains(reason), "{job}");
    }
    // A new name is served as soon as its job ends, beside the default model.
    let body = json!({"inputs": rows, "name": "other", "config": small(2)});
    let (_, job) = s.post("/train", body).await;
    let job = s.wait_done(job["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(job["promoted"], true, "{job}");
    let (got, out) = s.post("/models/other/log_prob", json!({"inputs": [[1.0, 2.0]]})).await;
    assert_eq!((got, out["model"]["name"].as_str()), (200, Some("other")), "{out}");
    let (got, out) = s.post("/log_prob", json!({"inputs": [[0.0, 0.0, 0.0]]})).await;
    assert_eq!((got, out["model"]["name"].as_str()), (200, Some("tab")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_fail_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    // A second version to swap between.
    let mut v2 = flowscore::store::load(&models.join("tab/1"), tch::Device::Cpu).unwrap();
    common::randomize(&v2, 5, 0.2);
    v2.card.version = "2".into();
    flowscore::store::save(&mut v2, &models.join("tab/2"), false).unwrap();
    let s = start(&models, &data, Some(TOKEN)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| tokio::spawn(score_until(s.client.clone(), format!("{}/log_prob", s.base), c, stop.clone())))
        .collect();
    for i in 0..6 {
        let version = if i % 2 == 0 { 2 } else { 1 };
        let (status, body) = s.post(&format!("/models/tab/{version}/activate"), json!({})).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut versions = std::collections::BTreeSet::new();
    for c in clients {
        let (seen, failures) = c.await.unwrap();
        assert_eq!(failures, 0, "requests failed during swaps");
        versions.extend(seen.into_keys());
    }
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), ["1", "2"]);
    let (status, _) = s.post("/models/tab/9/activate", json!({})).await;
    assert_eq!(status, 404);
}

/// Waits for a job's first checkpoint, so that a stop lands mid-job with state on disk.
fn wait_for_checkpoint(models: &Path, id: &str) -> PathBuf {
    let checkpoint = models.join(".jobs").join(id).join("checkpoint");
    let start = Instant::now();
    while !checkpoint.join("trainer.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(20));
    }
    checkpoint
}

/// Every variable of two model folders, bit for bit.
fn same_weights(a: &Path, b: &Path) -> bool {
    let (a, b) =
        (flowscore::store::load(a, tch::Device::Cpu).unwrap(), flowscore::store::load(b, tch::Device::Cpu).unwrap());
    let (a, b) = (a.named_tensors(), b.named_tensors());
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.equal(w)))
}

/// A stop (SIGTERM) and a crash (SIGKILL) in the middle of a training job: the stop exits 0 once
/// the job has stopped at a batch boundary; after either, the restarted server lists the job as
/// interrupted, `resume` continues it from its checkpoint, and the model it ends with equals,
/// bit for bit, the model of the same job run without interruption. No half-written folder is
/// left anywhere.
#[test]
fn interrupted_jobs_resume_to_the_uninterrupted_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    let port = free_port();
    let remote = Remote::new(port);
    // About 0.1 s an epoch: long enough to stop it mid-run, with a fixed seed and no early stop.
    let job = json!({"dataset": {"path": "good.csv"}, "promote": "never",
        "config": {"epochs": 30, "patience": 1000, "seed": 11, "hidden_units": 32, "hidden_layers": 2,
                   "couplings": 4, "batch_size": 16}});
    let mut versions = Vec::new();
    for stop in ["SIGTERM", "SIGKILL"] {
        let child = Child::spawn(&models, &data, port);
        remote.wait_ready();
        let (status, started) = remote.call(reqwest::Method::POST, "/train", Some(job.clone()));
        assert_eq!(status, 202, "{started}");
        let id = started["id"].as_str().unwrap().to_string();
        wait_for_checkpoint(&models, &id);
        if stop == "SIGTERM" {
            let exit = child.terminate();
            assert!(exit.success(), "SIGTERM during a job: exit status {exit}");
            // The job's thread wrote its last state before the process exited.
            let text = std::fs::read_to_string(models.join(".jobs").join(&id).join("job.json")).unwrap();
            let on_disk: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(on_disk["state"], "interrupted", "{on_disk}");
        } else {
            child.kill();
        }
        let child = Child::spawn(&models, &data, port);
        remote.wait_ready();
        let (_, listed) = remote.call(reqwest::Method::GET, &format!("/train/{id}"), None);
        assert_eq!(listed["state"], "interrupted", "after {stop}: {listed}");
        assert!(listed["error"].as_str().unwrap().contains("resume"), "{listed}");
        let (status, resumed) = remote.call(reqwest::Method::POST, &format!("/train/{id}/resume"), None);
        assert_eq!(status, 202, "{resumed}");
        let (status, again) = remote.call(reqwest::Method::POST, &format!("/train/{id}/resume"), None);
        assert_eq!(status, 409, "a running job cannot be resumed: {again}");
        let done = remote.wait_done(&id);
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["history"].as_array().unwrap().len(), 30, "every epoch once in the history: {done}");
        versions.push(done["model"]["version"].as_str().unwrap().to_string());
        // A finished job cannot be resumed.
        let (status, _) = remote.call(reqwest::Method::POST, &format!("/train/{id}/resume"), None);
        assert_eq!(status, 409);
        child.kill();
    }
    // The same job without interruption.
    let child = Child::spawn(&models, &data, port);
    remote.wait_ready();
    let (_, started) = remote.call(reqwest::Method::POST, "/train", Some(job));
    let done = remote.wait_done(started["id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    let plain = models.join("tab").join(done["model"]["version"].as_str().unwrap());
    child.kill();
    for v in &versions {
        assert!(
            same_weights(&models.join("tab").join(v), &plain),
            "resumed version {v} differs from the uninterrupted run"
        );
    }
    // No half-written folders; every version that exists loads.
    for entry in std::fs::read_dir(models.join("tab")).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue; // live.json
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "left a temporary folder {name}");
        flowscore::store::load(&entry.path(), tch::Device::Cpu).unwrap();
    }
}
