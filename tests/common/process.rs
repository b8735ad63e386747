//! `flowscore serve` child processes and blocking HTTP helpers to drive them.
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The admin token every child process is started with.
pub const TOKEN: &str = "s3cret";

/// A `flowscore serve` child process on a fixed port of the workspace.
pub struct Child {
    pub process: std::process::Child,
}

impl Child {
    pub fn spawn(models: &Path, data: &Path, port: u16) -> Child {
        Child::spawn_with(models, data, port, &[], &[])
    }

    /// With extra `serve` flags and environment variables.
    pub fn spawn_with(models: &Path, data: &Path, port: u16, extra: &[&str], envs: &[(&str, &str)]) -> Child {
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_flowscore"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--admin-token", TOKEN])
            .args(extra)
            .envs(envs.iter().copied())
            .arg("--models-dir")
            .arg(models)
            .arg("--data-dir")
            .arg(data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Child { process }
    }

    /// SIGTERM, as `docker stop` and Kubernetes send it; the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.process.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.process.wait().unwrap()
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        self.process.kill().unwrap();
        self.process.wait().unwrap();
    }
}

/// Blocking HTTP helpers for tests that drive child processes.
pub struct Remote {
    pub rt: tokio::runtime::Runtime,
    pub client: reqwest::Client,
    pub base: String,
}

impl Remote {
    pub fn new(port: u16) -> Remote {
        let rt = tokio::runtime::Runtime::new().unwrap();
        Remote { rt, client: reqwest::Client::new(), base: format!("http://127.0.0.1:{port}") }
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        while self
            .rt
            .block_on(self.client.get(format!("{}/ready", self.base)).send())
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(start.elapsed() < Duration::from_secs(60), "server did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut r = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        })
    }

    /// Polls a job until it leaves `queued` and `running`.
    pub fn wait_done(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let (_, job) = self.call(reqwest::Method::GET, &format!("/train/{id}"), None);
            if !matches!(job["state"].as_str(), Some("queued") | Some("running")) {
                return job;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "job {id} still running: {job}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One client posting the 3-column row `[c, 1, 2]` to `url` until `stop`: the versions that
/// answered (with counts) and the requests that failed.
pub async fn score_until(
    client: reqwest::Client,
    url: String,
    c: usize,
    stop: Arc<AtomicBool>,
) -> (BTreeMap<String, usize>, usize) {
    let (mut seen, mut failed) = (BTreeMap::<String, usize>::new(), 0);
    while !stop.load(Ordering::SeqCst) {
        match client.post(&url).json(&json!({"inputs": [[c as f64, 1.0, 2.0]]})).send().await {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap();
                *seen.entry(v["model"]["version"].as_str().unwrap().to_string()).or_default() += 1;
            }
            _ => failed += 1,
        }
    }
    (seen, failed)
}
