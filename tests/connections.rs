//! Hostile and slow connections on a real socket: a client that never finishes its headers or
//! its body is dropped, a declared body over the limit is refused before a byte of it is read,
//! connections over the cap are refused at once, and an overloaded server refuses scoring
//! requests before reading their bodies. After each, the server still serves.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than any timeout set below: a read that takes this long means the server held on.
const PATIENCE: Duration = Duration::from_secs(20);

async fn start(tmp: &Path, config: EngineConfig, limits: Limits) -> (SocketAddr, Metrics) {
    let dir = tmp.join("model");
    let arch = flowscore::flow::Architecture { dim: 4, couplings: 2, hidden_layers: 1, hidden_units: 8 };
    let card = flowscore::store::ModelCard::new(
        "conn",
        arch,
        Prior::Logistic,
        Preprocess::Identity,
        flowscore::store::InputSpec { shape: vec![4], eight_bit: false },
    );
    let mut model = flowscore::store::Model::new(card, tch::Device::Cpu).unwrap();
    randomize(&model, 1, 0.1);
    flowscore::store::save(&mut model, &dir, false).unwrap();
    let metrics = Metrics::new();
    let models = Models::for_folders(&[dir.to_path_buf()], config, metrics.clone()).await.unwrap();
    let state = AppState::new(models, metrics.clone(), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flowscore::serve::serve_on(listener, state, std::future::pending()));
    (addr, metrics)
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept the connection open (got so far: {:?})", String::from_utf8_lossy(&buf));
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends `request` raw on a new connection and returns what comes back until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

async fn healthy(addr: SocketAddr) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/log_prob"))
        .json(&serde_json::json!({"inputs": [[0.1, 0.2, 0.3, 0.4]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        admission_wait: Duration::from_millis(300),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _) = start(tmp.path(), EngineConfig::default(), limits()).await;
    // Nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    // Half a head, then silence.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /log_prob HTTP/1.1\r\nhost: x\r\ncontent-type: app").await.unwrap();
    let answer = read_to_close(&mut slow).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    healthy(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408_and_the_connection_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _) = start(tmp.path(), EngineConfig::default(), limits()).await;
    let head = b"POST /log_prob HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    let answer = exchange(addr, &[&head[..], b"{\"inputs\""].concat()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 300 ms"), "{answer}");
    healthy(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    // Long body timeout: only an answer that does not wait for the body can come back in time.
    let limits = Limits { body_read_timeout: Duration::from_secs(3600), ..limits() };
    let (addr, _) = start(tmp.path(), EngineConfig::default(), limits).await;
    let head =
        b"POST /log_prob HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5000000000\r\n\r\n";
    let answer = exchange(addr, head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"the request body is 5000000000 bytes; the limit is 67108864\""), "{answer}");
    healthy(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits { max_connections: 2, header_read_timeout: Duration::from_secs(3600), ..limits() };
    let (addr, metrics) = start(tmp.path(), EngineConfig::default(), limits).await;
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // The first two hold their slots while idle; a third is answered and closed.
    let mut third = None;
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let answer = read_to_close(&mut s).await;
        if answer.starts_with("HTTP/1.1 503") {
            third = Some(answer);
            break;
        }
        // The server had not yet accepted one of the first two: try again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = third.expect("a third connection was never refused");
    assert!(third.contains("too many open connections"), "{third}");
    assert!(metrics.connections_refused.get() >= 1);
    // Closing one frees its slot.
    drop(first);
    let mut served = false;
    for _ in 0..100 {
        let r = reqwest::Client::new().get(format!("http://{addr}/health")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a closed connection did not free its slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_before_the_body_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    // One admission slot; long body timeout, so the first request holds its slot while its body
    // never comes.
    let limits = Limits { body_read_timeout: Duration::from_secs(3600), ..limits() };
    let config = EngineConfig { queue_depth: 1, ..EngineConfig::default() };
    let (addr, metrics) = start(tmp.path(), config, limits).await;
    let head = b"POST /log_prob HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
    let mut holder = TcpStream::connect(addr).await.unwrap();
    holder.write_all(head).await.unwrap();
    for _ in 0..500 {
        if metrics.admitted.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.admitted.get(), 1, "the first request was never admitted");
    // Headers only: were the body awaited, this read would wait until PATIENCE runs out.
    let refused = Some(exchange(addr, head).await).filter(|a| a.starts_with("HTTP/1.1 503"));
    let refused = refused.expect("a second request was never refused");
    // Refused after waiting for room, not read: its body never came.
    let lower = refused.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1") && lower.contains("connection: close"), "{refused}");
    assert!(refused.contains("overloaded"), "{refused}");
    assert!(metrics.rejected.get() >= 1);
    assert_eq!(metrics.admitted.get(), 1);
    // The slot comes back when the admitted request ends.
    drop(holder);
    let mut served = false;
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/log_prob"))
            .json(&serde_json::json!({"inputs": [[0.1, 0.2, 0.3, 0.4]]}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the admission slot was not released");
}
