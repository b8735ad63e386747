//! Replicas sharing one model store: a trainer writes versions and live pointers, a scorer
//! follows them by itself, and a version that cannot load leaves the old one serving.
mod common;

use common::process::{free_port, score_until, Child, Remote};
use common::workspace;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL_MS: u64 = 200;

/// Clients scoring one row at a time on `port` until `stop`: the versions that answered (with
/// counts) and the requests that failed.
fn scoring_load(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(BTreeMap<String, usize>, usize)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let clients: Vec<_> = (0..4)
                .map(|c| {
                    let url = format!("http://127.0.0.1:{port}/models/tab/log_prob");
                    tokio::spawn(score_until(client.clone(), url, c, stop.clone()))
                })
                .collect();
            let (mut seen, mut failed) = (BTreeMap::new(), 0);
            for c in clients {
                let (s, f) = c.await.unwrap();
                failed += f;
                for (k, v) in s {
                    *seen.entry(k).or_default() += v;
                }
            }
            (seen, failed)
        })
    })
}

/// Polls the scorer's `GET /models/tab` until `check` holds (the deadline only bounds a hang).
fn wait_for(scorer: &Remote, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, status) = scorer.call(Method::GET, "/models", None);
        let tab = status["models"].as_array().and_then(|m| m.iter().find(|n| n["name"] == "tab")).cloned();
        if let Some(tab) = tab.filter(|t| check(t)) {
            return tab;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "scorer never got to {what}: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(remote: &Remote, line_start: &str) -> f64 {
    let text = remote.rt.block_on(async {
        remote.client.get(format!("{}/metrics", remote.base)).send().await.unwrap().text().await.unwrap()
    });
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Moves `tab`'s live pointer as a trainer does: write beside, then rename.
fn point_live(models: &std::path::Path, version: &str) {
    let (tmp, live) = (models.join("tab").join("live.json.tmp"), models.join("tab").join("live.json"));
    std::fs::write(&tmp, json!({ "version": version }).to_string()).unwrap();
    std::fs::rename(tmp, live).unwrap();
}

#[test]
fn a_scorer_follows_the_trainer_and_survives_a_corrupt_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    let (trainer_port, scorer_port) = (free_port(), free_port());
    let trainer_url = format!("http://127.0.0.1:{trainer_port}");
    let trainer = Child::spawn_with(&models, &data, trainer_port, &["--role", "trainer"], &[]);
    let poll = POLL_MS.to_string();
    let scorer = Child::spawn_with(
        &models,
        &data,
        scorer_port,
        &["--role", "scorer", "--store-poll-ms", &poll, "--trainer-url", &trainer_url],
        &[],
    );
    let (t, s) = (Remote::new(trainer_port), Remote::new(scorer_port));
    t.wait_ready();
    s.wait_ready();

    // The scorer refuses what would write the store, and says where to send it.
    let (status, body) = s.call(Method::POST, "/train", Some(json!({"dataset": {"path": "good.csv"}})));
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&trainer_url), "{body}");
    let (status, body) = s.call(Method::POST, "/models/tab/versions/1/activate", Some(json!({})));
    assert_eq!(status, 409, "{body}");

    // A training job on the trainer; the scorer serves its version under load, no request lost.
    let stop = Arc::new(AtomicBool::new(false));
    let load = scoring_load(scorer_port, stop.clone());
    let job = json!({"dataset": {"path": "good.csv"}, "promote": "always",
        "config": {"epochs": 2, "hidden_units": 16, "hidden_layers": 1, "couplings": 2}});
    let (status, started) = t.call(Method::POST, "/train", Some(job));
    assert_eq!(status, 202, "{started}");
    let done = t.wait_done(started["id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    let version = done["model"]["version"].as_str().unwrap().to_string();
    assert_ne!(version, "1");
    let promoted = Instant::now();
    let tab = wait_for(&s, "the trained version", |t| t["live"] == version.as_str());
    let lag = promoted.elapsed();
    std::thread::sleep(Duration::from_millis(3 * POLL_MS));
    stop.store(true, Ordering::SeqCst);
    let (seen, failed) = load.join().unwrap();
    assert_eq!(failed, 0, "requests failed while the scorer followed the store");
    assert!(seen.contains_key("1") && seen.contains_key(&version), "versions answering: {seen:?}");
    assert_eq!(tab["store_live"], version.as_str());
    eprintln!("the scorer served version {version} {lag:?} after the trainer promoted it (poll {POLL_MS} ms)");

    // A version whose weights are corrupt: the old version keeps serving, the status says why.
    let bad = models.join("tab").join("9");
    let src = models.join("tab").join(&version);
    std::fs::create_dir_all(&bad).unwrap();
    let card = std::fs::read_to_string(src.join("card.json"))
        .unwrap()
        .replace(&format!("\"version\": \"{version}\""), "\"version\": \"9\"");
    std::fs::write(bad.join("card.json"), card).unwrap();
    let mut weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 0xff;
    std::fs::write(bad.join("model.safetensors"), weights).unwrap();
    point_live(&models, "9");
    let tab = wait_for(&s, "reporting version 9 as unavailable", |t| {
        t["versions"].as_array().unwrap().iter().any(|v| v["version"] == "9" && v["state"] == "unavailable")
    });
    assert_eq!(tab["live"], version.as_str(), "{tab}");
    assert_eq!(tab["store_live"], "9", "{tab}");
    let nine = tab["versions"].as_array().unwrap().iter().find(|v| v["version"] == "9").unwrap().clone();
    assert!(nine["reason"].as_str().unwrap().contains("sha256"), "{nine}");
    let (status, scored) = s.call(Method::POST, "/models/tab/log_prob", Some(json!({"inputs": [[0.0, 1.0, 2.0]]})));
    assert_eq!((status, scored["model"]["version"].as_str()), (200, Some(version.as_str())), "{scored}");
    assert!(metric(&s, "flowscore_model_load_failures_total{model=\"tab\"}") >= 1.0);
    std::thread::sleep(Duration::from_millis(3 * POLL_MS));
    assert_eq!(metric(&s, "flowscore_store_behind{model=\"tab\"}"), 1.0);
    assert_eq!(metric(&s, "flowscore_role{role=\"scorer\"}"), 1.0);

    // Pointing back at a good version catches up (and clears the gauge).
    point_live(&models, "1");
    wait_for(&s, "version 1 again", |t| t["live"] == "1");
    std::thread::sleep(Duration::from_millis(3 * POLL_MS));
    assert_eq!(metric(&s, "flowscore_store_behind{model=\"tab\"}"), 0.0);
    scorer.kill();
    trainer.kill();
}
