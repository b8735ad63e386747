//! The remote model store: push and pull mirror versions and pointers exactly, and replicas
//! with private model folders share versions through an S3-compatible server (moto's, installed
//! by scripts/setup-s3-server.sh).
mod common;

use common::process::{free_port, Child, Remote};
use common::workspace;
use flowscore::store::remote::RemoteStore;
use flowscore::store::{ModelId, Registry};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Every file of a version, byte for byte.
fn same_files(a: &Path, b: &Path) -> bool {
    ["card.json", "model.safetensors"].iter().all(|f| std::fs::read(a.join(f)).ok() == std::fs::read(b.join(f)).ok())
}

#[tokio::test]
async fn push_then_pull_mirrors_versions_and_pointers() {
    let tmp = tempfile::tempdir().unwrap();
    let (models, _) = workspace(tmp.path());
    let trainer = Registry::new(&models);
    trainer.set_live(&ModelId { name: "tab".into(), version: "1".into() }).unwrap();
    trainer.set_default_name("tab").unwrap();
    let remote = RemoteStore::open("memory:///").unwrap();
    assert_eq!(remote.push(&trainer).await.unwrap().len(), 3, "version, pointer, default");
    assert!(remote.push(&trainer).await.unwrap().is_empty(), "a second push has nothing to do");

    let scorer = Registry::new(tmp.path().join("scorer"));
    remote.pull(&scorer, false).await.unwrap();
    assert!(same_files(&models.join("tab/1"), &tmp.path().join("scorer/tab/1")));
    assert_eq!(scorer.live_version("tab").as_deref(), Some("1"));
    assert_eq!(scorer.default_name().as_deref(), Some("tab"));

    // A second version, not (yet) live: a scorer's pull skips it, a writer's takes it.
    let mut v2 = flowscore::store::load(&models.join("tab/1"), tch::Device::Cpu).unwrap();
    common::randomize(&v2, 3, 0.2);
    v2.card.version = "2".into();
    flowscore::store::save(&mut v2, &models.join("tab/2"), false).unwrap();
    remote.push(&trainer).await.unwrap();
    remote.pull(&scorer, false).await.unwrap();
    assert!(!tmp.path().join("scorer/tab/2").exists());
    let writer = Registry::new(tmp.path().join("writer"));
    remote.pull(&writer, true).await.unwrap();
    assert!(same_files(&models.join("tab/2"), &tmp.path().join("writer/tab/2")));

    // Made live: the scorer gets it, and its folder holds no temporaries.
    trainer.set_live(&ModelId { name: "tab".into(), version: "2".into() }).unwrap();
    remote.push(&trainer).await.unwrap();
    remote.pull(&scorer, false).await.unwrap();
    assert!(same_files(&models.join("tab/2"), &tmp.path().join("scorer/tab/2")));
    assert_eq!(scorer.live_version("tab").as_deref(), Some("2"));
    let hidden: Vec<_> = std::fs::read_dir(tmp.path().join("scorer/tab"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with(".tmp") || e.file_name().to_string_lossy().contains(".tmp-")
        })
        .collect();
    assert!(hidden.is_empty(), "temporaries left: {hidden:?}");
}

#[test]
fn bad_store_urls_are_refused_with_a_reason() {
    let err = RemoteStore::open("ftp://host/x").unwrap_err().to_string();
    assert!(err.contains("only s3://"), "{err}");
    let err = RemoteStore::open("not a url").unwrap_err().to_string();
    assert!(err.contains("store URL"), "{err}");
}

/// moto's S3 server on a free port, killed on drop.
struct S3Server {
    process: std::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The S3 server; a prerequisite that scripts/setup-s3-server.sh installs (the test command
/// runs it), so its absence fails the test with that hint.
fn s3_server() -> S3Server {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-s3/bin/moto_server");
    assert!(bin.exists(), "{} is missing: run scripts/setup-s3-server.sh", bin.display());
    let port = free_port();
    let process = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (rt, client) = (tokio::runtime::Runtime::new().unwrap(), reqwest::Client::new());
    let start = Instant::now();
    // Up once it answers; then the bucket.
    let create_bucket = || rt.block_on(client.put(format!("{endpoint}/models")).send());
    while create_bucket().map(|r| !r.status().is_success()).unwrap_or(true) {
        assert!(start.elapsed() < Duration::from_secs(30), "the S3 server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    S3Server { process, endpoint }
}

#[test]
fn replicas_share_versions_through_s3() {
    let s3 = s3_server();
    let tmp = tempfile::tempdir().unwrap();
    let (models, data) = workspace(tmp.path());
    let scorer_models = tmp.path().join("scorer-models");
    let envs = [
        ("AWS_ENDPOINT", s3.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let url = "s3://models/flowscore";
    let (trainer_port, scorer_port) = (free_port(), free_port());
    let common = ["--store-url", url, "--store-poll-ms", "200"];
    let trainer =
        Child::spawn_with(&models, &data, trainer_port, &[&common[..], &["--role", "trainer"]].concat(), &envs);
    let t = Remote::new(trainer_port);
    t.wait_ready();
    // The scorer starts from an empty folder: what it serves comes from the bucket.
    let start = Instant::now();
    let listing = format!("{}/models?list-type=2&prefix=flowscore/tab/live.json", s3.endpoint);
    while !t.rt.block_on(async {
        let r = reqwest::get(&listing).await;
        match r {
            Ok(r) => r.text().await.is_ok_and(|t| t.contains("<Key>flowscore/tab/live.json</Key>")),
            Err(_) => false,
        }
    }) {
        assert!(start.elapsed() < Duration::from_secs(30), "the trainer never pushed tab's live pointer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let scorer =
        Child::spawn_with(&scorer_models, &data, scorer_port, &[&common[..], &["--role", "scorer"]].concat(), &envs);
    let s = Remote::new(scorer_port);
    s.wait_ready();
    let (status, scored) = s.call(Method::POST, "/models/tab/log_prob", Some(json!({"inputs": [[0.0, 1.0, 2.0]]})));
    assert_eq!((status, &scored["model"]["version"]), (200, &json!("1")), "{scored}");

    let job = json!({"dataset": {"path": "good.csv"}, "promote": "always",
        "config": {"epochs": 1, "hidden_units": 16, "hidden_layers": 1, "couplings": 2}});
    let (status, started) = t.call(Method::POST, "/train", Some(job));
    assert_eq!(status, 202, "{started}");
    let done = t.wait_done(started["id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    let version = done["model"]["version"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let (_, listed) = s.call(Method::GET, "/models", None);
        let tab: Option<&Value> = listed["models"].as_array().and_then(|m| m.iter().find(|n| n["name"] == "tab"));
        if tab.is_some_and(|t| t["live"] == version.as_str()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the scorer never served {version}: {listed}");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the scorer served version {version} {:?} after the job finished", start.elapsed());
    assert!(same_files(&models.join("tab").join(&version), &scorer_models.join("tab").join(&version)));
    scorer.kill();
    trainer.kill();
}
