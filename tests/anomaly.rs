//! The anomaly layer: the complexity-corrected score against its formula computed here, uniform
//! conformal p-values for in-distribution rows, Benjamini–Hochberg flags, explanations that find
//! planted anomalies, the drift gauge on a shifted and an unshifted stream, the example alerting
//! rules under `promtool test rules`, and bad input to the new routes and parameters.
mod common;

use common::*;
use flowscore::anomaly::{png_bits, ScoreKind};
use flowscore::calibration::Calibration;
use flowscore::data::Dataset;
use flowscore::engine::EngineConfig;
use flowscore::flow::{Preprocess, Prior};
use flowscore::http::{AppState, Limits};
use flowscore::metrics::Metrics;
use flowscore::models::Models;
use flowscore::store::Model;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::Tensor;

struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn text(&self, path: &str) -> String {
        self.client.get(format!("{}{path}", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

async fn serve(dir: &Path) -> Server {
    serve_with(dir, Limits::default()).await
}

async fn serve_with(dir: &Path, limits: Limits) -> Server {
    let metrics = Metrics::new();
    let models = Models::for_folders(&[dir.to_path_buf()], EngineConfig::default(), metrics.clone()).await.unwrap();
    let state = AppState::new(models, metrics, limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flowscore::serve::serve_on(listener, state, std::future::pending()));
    Server { base: format!("http://{addr}"), client: reqwest::Client::new() }
}

fn rows_json(x: &[f32], dim: usize) -> Value {
    Value::Array(x.chunks(dim).map(|r| json!(r)).collect())
}

/// Samples of `model` (seeded), as flat rows.
fn samples(model: &Model, n: usize, seed: u64) -> Vec<f32> {
    let s = tch::no_grad(|| model.nice.sample(n, seed, 1.0).unwrap());
    Vec::try_from(s.flatten(0, -1)).unwrap()
}

fn log_probs(model: &Model, rows: &[f32], dim: usize) -> Vec<f64> {
    let x = Tensor::from_slice(rows).view([-1, dim as i64]);
    to_vec(&tch::no_grad(|| model.nice.log_prob(&x).unwrap()))
}

/// A 4×4 8-bit image model (logit preprocessing), calibrated on 300 random images with both
/// score kinds.
fn image_model(dir: &Path) -> Model {
    let mut m = random_model(16, Prior::Logistic, Preprocess::Logit { alpha: 0.05 }, 5);
    m.card.input = flowscore::store::InputSpec { shape: vec![4, 4], eight_bit: true };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let rows: Vec<f32> = (0..300 * 16).map(|_| (rng.gen_range(0..256) as f32 + 0.5) / 256.0).collect();
    let data = Dataset::from_rows(rows.clone(), 300, 16, "calibration").unwrap();
    let lp = log_probs(&m, &rows, 16);
    m.card.calibration = Some(flowscore::train::calibrate(&m.card, &data, &lp, 0.05).unwrap());
    flowscore::store::save(&mut m, dir, false).unwrap();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_complexity_corrected_score_equals_its_formula() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let model = image_model(&dir);
    assert_eq!(model.card.calibration.as_ref().unwrap().default_kind, ScoreKind::ComplexityCorrected);
    let s = serve(&dir).await;
    // A flat image, a noisy one, a half-and-half one.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut rows: Vec<f32> = vec![128.5 / 256.0; 16];
    rows.extend((0..16).map(|_| (rng.gen_range(0..256) as f32 + 0.5) / 256.0));
    rows.extend((0..16).map(|i| if i < 8 { 0.5 / 256.0 } else { 255.5 / 256.0 }));
    let (status, out) = s.post("/score", json!({"inputs": rows_json(&rows, 16)})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["score_kind"], "complexity_corrected");
    let lp = log_probs(&model, &rows, 16);
    for (i, row) in rows.chunks(16).enumerate() {
        // −log₂ P(x) of the 8-bit image (density × the 256^−16 pixel cell) − its PNG length.
        let pixels: Vec<u8> = row.iter().map(|v| (v * 256.0 - 0.5).round() as u8).collect();
        let mut png = Vec::new();
        let mut enc = png::Encoder::new(&mut png, 4, 4);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        enc.write_header().unwrap().write_image_data(&pixels).unwrap();
        let want = -lp[i] / std::f64::consts::LN_2 + 16.0 * 8.0 - png.len() as f64 * 8.0;
        let got = out["scores"][i].as_f64().unwrap();
        assert!((got - want).abs() < 1e-3, "row {i}: {got} against {want}");
        assert_eq!(png.len() as f64 * 8.0, png_bits(row, 4, 4).unwrap());
        // Its p-value: (1 + calibration scores at least as large) / (n + 1).
        let cal = model.card.calibration.as_ref().unwrap().complexity_corrected.clone().unwrap();
        let p = (1 + cal.iter().filter(|c| **c >= got).count()) as f64 / (cal.len() + 1) as f64;
        assert!((out["p_value"][i].as_f64().unwrap() - p).abs() < 1e-12);
    }
    // The likelihood kind on request, and its own threshold semantics (log_prob nats).
    let (_, out) = s.post("/score", json!({"inputs": rows_json(&rows, 16), "kind": "likelihood"})).await;
    assert_eq!(out["score_kind"], "likelihood");
    assert!((out["scores"][0].as_f64().unwrap() + lp[0]).abs() < 1e-3);
    // A PNG heat map of the first row's attributions.
    let r = s
        .client
        .post(format!("{}/explain?format=png", s.base))
        .json(&json!({"inputs": rows_json(&rows[..16], 16)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(&r.bytes().await.unwrap()[1..4], b"PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_values_of_in_distribution_rows_are_uniform_and_bh_controls_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tab");
    let mut m = random_model(6, Prior::Logistic, Preprocess::Identity, 2);
    // Calibrated on the model's own samples: test rows drawn the same way are exchangeable.
    let cal = samples(&m, 2000, 1);
    m.card.calibration = Some(Calibration::from_log_probs(&log_probs(&m, &cal, 6), 0.01).unwrap());
    flowscore::store::save(&mut m, &dir, false).unwrap();
    let s = serve(&dir).await;
    let test = samples(&m, 2000, 2);
    let mut p: Vec<f64> = Vec::new();
    for chunk in test.chunks(500 * 6) {
        let (status, out) = s.post("/score", json!({"inputs": rows_json(chunk, 6)})).await;
        assert_eq!(status, 200, "{out}");
        p.extend(out["p_value"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()));
    }
    // Kolmogorov–Smirnov against U(0, 1), computed here: D·√n stays below 1.63 (α = 0.01).
    p.sort_by(f64::total_cmp);
    let n = p.len() as f64;
    let d = p
        .iter()
        .enumerate()
        .map(|(i, v)| ((i + 1) as f64 / n - v).abs().max((v - i as f64 / n).abs()))
        .fold(0.0, f64::max);
    assert!(d * n.sqrt() < 1.63, "p-values are not uniform: D = {d}");
    // Benjamini–Hochberg at 10% over in-distribution rows flags (almost) nothing; rows far out
    // are flagged.
    let mut mixed = test[..100 * 6].to_vec();
    mixed.extend(std::iter::repeat_n(40.0f32, 5 * 6));
    let (_, out) = s.post("/score", json!({"inputs": rows_json(&mixed, 6), "fdr": 0.1})).await;
    let flags: Vec<bool> = out["is_anomaly"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
    assert!(flags[100..].iter().all(|f| *f), "{out}");
    assert!(flags[..100].iter().filter(|f| **f).count() <= 3, "{out}");
    assert!(out["threshold"].is_null());
}

/// Correlated columns x_k = z_k + small noise in pairs: a row whose one column breaks its pair
/// is an anomaly in that column only.
fn planted(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * 8);
    for _ in 0..n {
        for _ in 0..4 {
            let z: f64 = rng.sample(rand_distr::StandardNormal);
            let e1: f64 = rng.sample(rand_distr::StandardNormal);
            let e2: f64 = rng.sample(rand_distr::StandardNormal);
            out.push((z + 0.1 * e1) as f32);
            out.push((z + 0.1 * e2) as f32);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explanations_find_planted_anomalies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("pairs");
    let train = Dataset::from_rows(planted(3000, 1), 3000, 8, "train").unwrap();
    let val = Dataset::from_rows(planted(500, 2), 500, 8, "val").unwrap();
    let cfg: flowscore::train::TrainConfig = serde_json::from_value(json!({
        "name": "pairs", "couplings": 6, "hidden_layers": 2, "hidden_units": 64, "epochs": 25,
        "batch_size": 128, "lr": 0.003, "seed": 3, "patience": 25,
    }))
    .map(|over: Value| {
        let mut base = serde_json::to_value(flowscore::train::TrainConfig::default()).unwrap();
        base.as_object_mut().unwrap().extend(over.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    })
    .unwrap();
    let mut model = flowscore::train::train(&cfg, &train, &val, None, &mut flowscore::train::Quiet).unwrap();
    flowscore::store::save(&mut model, &dir, false).unwrap();
    let s = serve(&dir).await;
    // 20 rows, each with one column pushed 3 away from its pair partner.
    let mut rows = planted(20, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let planted_at: Vec<usize> = (0..20).map(|_| rng.gen_range(0..8)).collect();
    for (i, j) in planted_at.iter().enumerate() {
        rows[i * 8 + j] += if rng.gen_bool(0.5) { 3.0 } else { -3.0 };
    }
    let (status, out) = s.post("/explain", json!({"inputs": rows_json(&rows, 8), "top_k": 1})).await;
    assert_eq!(status, 200, "{out}");
    let hits = out["top_features"].as_array().unwrap().iter().zip(&planted_at).filter(|(t, j)| t[0] == **j).count();
    assert!(hits >= 16, "precision@1 {hits}/20: {out}");
    let a = &out["attributions"][0];
    assert!(a.as_array().unwrap().iter().all(|v| v.as_f64().unwrap() >= 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_gauge_rises_on_a_shifted_stream_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("drift");
    let mut m = random_model(4, Prior::Logistic, Preprocess::Identity, 4);
    m.card.name = "drift".into();
    let cal = samples(&m, 3000, 1);
    m.card.calibration = Some(Calibration::from_log_probs(&log_probs(&m, &cal, 4), 0.01).unwrap());
    flowscore::store::save(&mut m, &dir, false).unwrap();
    let s = serve(&dir).await;
    let normal = samples(&m, 1000, 2);
    s.post("/log_prob", json!({"inputs": rows_json(&normal, 4)})).await;
    let (status, report) = s.get("/models/drift/drift").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["window_rows"], 1000);
    assert!(report["p_value"].as_f64().unwrap() > 0.01, "{report}");
    let metrics = s.text("/metrics").await;
    assert!(metrics.contains("flowscore_drift_window_rows{model=\"drift\"} 1000"), "{metrics}");
    // The histogram: both samples as shares on the same edges, and the window's anomaly share
    // against the rows' own log_probs.
    let h = &report["histogram"];
    let shares = |k: &str| h[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum::<f64>();
    assert_eq!(h["edges"].as_array().unwrap().len(), flowscore::drift::HISTOGRAM_BINS + 1);
    assert!((shares("calibration") - 1.0).abs() < 1e-9, "{h}");
    let outside = h["window_below_range"].as_f64().unwrap() + h["window_above_range"].as_f64().unwrap();
    assert!((shares("window") + outside - 1.0).abs() < 1e-9, "{h}");
    let threshold = report["threshold"].as_f64().unwrap();
    let below = log_probs(&m, &normal, 4).iter().filter(|lp| **lp < threshold).count();
    // A row within rounding of the threshold may fall either side.
    let share = report["window_anomaly_share"].as_f64().unwrap();
    assert!((share - below as f64 / 1000.0).abs() <= 1.001e-3, "{share} vs {below} of 1000: {report}");
    // The same rows shifted: the window fills with them and the p-value collapses.
    let shifted: Vec<f32> = normal.iter().map(|v| v + 1.5).collect();
    let (_, scored) = s.post("/score", json!({"inputs": rows_json(&shifted, 4), "threshold": 0.0})).await;
    // The anomaly rate's two counters: flagged rows over judged rows.
    let flagged = scored["is_anomaly"].as_array().unwrap().iter().filter(|f| f.as_bool().unwrap()).count();
    let metrics = s.text("/metrics").await;
    assert!(metrics.contains("flowscore_judged_rows_total{model=\"drift\"} 1000"), "{metrics}");
    assert!(metrics.contains(&format!("flowscore_anomalies_total{{model=\"drift\"}} {flagged}")), "{metrics}");
    let (_, report) = s.get("/models/drift/drift").await;
    assert!(report["p_value"].as_f64().unwrap() < 1e-6, "{report}");
    assert!(report["ks_statistic"].as_f64().unwrap() > 0.3, "{report}");
    let metrics = s.text("/metrics").await;
    let p: f64 = metrics
        .lines()
        .find(|l| l.starts_with("flowscore_drift_p_value{model=\"drift\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(p < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_anomaly_requests_get_a_4xx_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tab");
    let mut m = random_model(3, Prior::Logistic, Preprocess::Identity, 2);
    let cal = samples(&m, 200, 1);
    m.card.calibration = Some(Calibration::from_log_probs(&log_probs(&m, &cal, 3), 0.01).unwrap());
    flowscore::store::save(&mut m, &dir, false).unwrap();
    let s = serve_with(&dir, Limits { max_rows: 100_000, ..Limits::default() }).await;
    let row = json!([[0.1, 0.2, 0.3]]);
    for (body, status, needle) in [
        (json!({"inputs": row, "kind": "complexity_corrected"}), 400, "image"),
        (json!({"inputs": row, "kind": "entropy"}), 400, "entropy"),
        (json!({"inputs": row, "fdr": 2.0}), 400, "fdr"),
        (json!({"inputs": row, "fdr": 0.1, "threshold": -3.0}), 400, "at most one"),
        (json!({"inputs": row, "contamination": 0.0}), 400, "contamination"),
    ] {
        let (got, out) = s.post("/score", body.clone()).await;
        assert_eq!(got, status, "{body}: {out}");
        assert!(out["error"].as_str().unwrap().contains(needle), "{body}: {out}");
    }
    let (got, out) = s.post("/score?fdr=-1", json!({"inputs": row})).await;
    assert_eq!(got, 400, "{out}");
    let (got, out) = s.post("/explain?format=png", json!({"inputs": row})).await;
    assert_eq!(got, 400, "{out}");
    assert!(out["error"].as_str().unwrap().contains("image"));
    let (got, out) = s.post("/explain", json!({"inputs": row, "top_k": -1})).await;
    assert_eq!(got, 400, "{out}");
    // 3,000 rows × 3 features × 33 candidates is over the explanation budget.
    let many: Vec<Vec<f64>> = (0..3_000).map(|_| vec![0.1, 0.2, 0.3]).collect();
    let (got, out) = s.post("/explain", json!({"inputs": many})).await;
    assert_eq!(got, 413, "status {got}");
    assert!(out["error"].as_str().unwrap().contains("send at most 2647 rows"), "{}", out["error"]);
    assert_eq!(s.get("/models/nope/drift").await.0, 404);
    assert_eq!(s.get("/ready").await.0, 200);
}

#[test]
fn the_example_alerting_rules_pass_promtool() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker");
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("promtool missing: scripts/setup.sh installs Debian's prometheus package");
    for args in [vec!["check", "config", "prometheus.yml"], vec!["test", "rules", "alerts.test.yml"]] {
        let out = std::process::Command::new(promtool).args(&args).current_dir(&root).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
