//! The HTTP contract (DESIGN.md, "HTTP contract (v1)") driven in-process through the router with
//! `oneshot`: every route's happy path checked against the flow core, every kind of bad input
//! refused with the right 4xx and a JSON error that names the problem, and the server healthy
//! after each refusal.
mod common;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use common::*;
use flowscore::calibration::Calibration;
use flowscore::engine::EngineConfig;
use flowscore::flow::{InpaintOptions, Preprocess, Prior};
use flowscore::http::{AppState, Limits};
use flowscore::metrics::Metrics;
use flowscore::models::Models;
use flowscore::store::Model;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use tch::{Device, Tensor};
use tower::ServiceExt;

const NPY: &str = "application/x-npy";
const JSON: &str = "application/json";
const MAX_ROWS: usize = 100;
const MAX_BODY: usize = 1 << 20;

type Rows = Vec<Vec<f32>>;

/// A served model: the router, its folder (for the flow core's own answers) and good rows.
struct Fixture {
    app: Router,
    dir: PathBuf,
    dim: usize,
    good: Rows,
    _tmp: tempfile::TempDir,
}

/// A 4×4 image model with logit preprocessing (inputs in [0, 1]).
async fn image_fixture() -> Fixture {
    fixture(16, vec![4, 4], Preprocess::Logit { alpha: 0.05 }, 0.0, 1.0, 11).await
}

/// A 5-column tabular model with standardisation (any finite input).
async fn tabular_fixture() -> Fixture {
    fixture(5, vec![5], standardize(5, 3), -6.0, 6.0, 21).await
}

async fn fixture(dim: usize, shape: Vec<usize>, pre: Preprocess, lo: f64, hi: f64, seed: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let mut m = random_model(dim, Prior::Logistic, pre, seed);
    let calibration_lp = core_log_prob_model(&m, &rows_of(&random_rows(200, dim, lo, hi, seed + 1)));
    m.card.calibration = Some(Calibration::from_log_probs(&calibration_lp, 0.01).unwrap());
    m.card.input.shape = shape;
    flowscore::store::save(&mut m, &dir, false).unwrap();
    let metrics = Metrics::new();
    let models =
        Models::for_folders(std::slice::from_ref(&dir), EngineConfig::default(), metrics.clone()).await.unwrap();
    let limits = Limits {
        max_rows: MAX_ROWS,
        max_body_bytes: MAX_BODY,
        max_samples: 64,
        max_inpaint_steps: 50,
        ..Limits::default()
    };
    let app = flowscore::http::router(AppState::new(models, metrics, limits));
    let good = rows_of(&random_rows(3, dim, lo, hi, seed + 2));
    Fixture { app, dir, dim, good, _tmp: tmp }
}

// ---- plumbing -------------------------------------------------------------------------------

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    send(app, req.body(Body::from(body.into())).unwrap()).await
}

/// POSTs JSON and expects 200 with a JSON body.
async fn post_json(app: &Router, uri: &str, body: &Value) -> (HeaderMap, Value) {
    let (status, headers, bytes) = call(app, "POST", uri, Some(JSON), body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "POST {uri}: {}", String::from_utf8_lossy(&bytes));
    (headers, serde_json::from_slice(&bytes).unwrap())
}

/// GETs and expects 200 with a JSON body.
async fn get_json(app: &Router, uri: &str) -> Value {
    let (status, _, bytes) = call(app, "GET", uri, None, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK, "GET {uri}: {}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).unwrap()
}

impl Fixture {
    /// The model as the server's inference threads hold it: loaded, with its MLPs on the kernels
    /// the server's default policy picks (the same arithmetic, so results agree to the last bit).
    fn model(&self) -> Model {
        let mut model = flowscore::store::load(&self.dir, Device::Cpu).unwrap();
        flowscore::kernels::prepare(&mut model.nice, flowscore::kernels::CpuKernels::Auto).unwrap();
        model
    }

    /// A request that must be refused with `status` and an `{"error": ...}` naming `needle`;
    /// afterwards the server must still score good rows.
    async fn refused(
        &self,
        method: &str,
        uri: &str,
        ct: Option<&str>,
        body: impl Into<Bytes>,
        status: StatusCode,
        needle: &str,
    ) {
        let body = body.into();
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        let (got, headers, bytes) = call(&self.app, method, uri, ct, body).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(got, status, "{method} {uri} {shown:?}: {text}");
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(ct.starts_with(JSON), "{method} {uri} {shown:?}: content type {ct:?}");
        let v: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {uri}: not JSON ({e}): {text}"));
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{method} {uri}: no `error` string: {text}"));
        assert_eq!(v.as_object().unwrap().len(), 1, "{method} {uri}: extra fields: {text}");
        assert!(msg.contains(needle), "{method} {uri} {shown:?}: message {msg:?} lacks {needle:?}");
        self.assert_healthy().await;
    }

    async fn assert_healthy(&self) {
        let (_, v) = post_json(&self.app, "/log_prob", &json!({ "inputs": as_f64(&self.good) })).await;
        assert_eq!(v["log_prob"].as_array().unwrap().len(), self.good.len());
    }
}

fn rows_of(t: &Tensor) -> Rows {
    let d = t.size()[1] as usize;
    to_vec(t).chunks(d).map(|r| r.iter().map(|v| *v as f32).collect()).collect()
}

/// f32 rows as exact f64 JSON numbers (so the server's f64→f32 parse gives back the same f32).
fn as_f64(rows: &Rows) -> Vec<Vec<f64>> {
    rows.iter().map(|r| r.iter().map(|v| f64::from(*v)).collect()).collect()
}

fn tensor(rows: &Rows) -> Tensor {
    let flat: Vec<f32> = rows.concat();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

fn npy_f32(rows: &Rows) -> Vec<u8> {
    flowscore::data::npy_bytes(&rows.concat(), &[rows.len() as u64, rows[0].len() as u64]).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(f64s).collect()
}

fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0), "{what}[{i}]: {a} vs {b}");
    }
}

fn core_log_prob_model(m: &Model, rows: &Rows) -> Vec<f64> {
    let _g = tch::no_grad_guard();
    to_vec(&m.nice.log_prob(&tensor(rows)).unwrap())
}

fn core_log_prob(fx: &Fixture, rows: &Rows) -> Vec<f64> {
    core_log_prob_model(&fx.model(), rows)
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("missing header {name}"))
}

// ---- happy paths ----------------------------------------------------------------------------

#[tokio::test]
async fn log_prob_json_matches_the_flow_core() {
    for fx in [image_fixture().await, tabular_fixture().await] {
        let rows = rows_of(&random_rows(7, fx.dim, if fx.dim == 16 { 0.0 } else { -5.0 }, 1.0, 99));
        let (headers, v) = post_json(&fx.app, "/log_prob", &json!({ "inputs": as_f64(&rows) })).await;
        assert_eq!(header_str(&headers, "x-flowscore-model"), "test/1");
        assert_eq!(v["model"], json!({"name": "test", "version": "1"}));
        let want = core_log_prob(&fx, &rows);
        let lp = f64s(&v["log_prob"]);
        assert_close(&lp, &want, 1e-9, "log_prob");
        let bpd: Vec<f64> = want.iter().map(|l| -l / (fx.dim as f64 * std::f64::consts::LN_2)).collect();
        assert_close(&f64s(&v["bits_per_dim"]), &bpd, 1e-9, "bits_per_dim");
        // Every key the contract names, and no surprise ones.
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["bits_per_dim", "log_prob", "model"]);
    }
}

#[tokio::test]
async fn log_prob_accepts_npy_bodies() {
    let fx = image_fixture().await;
    let rows = rows_of(&random_rows(6, 16, 0.0, 1.0, 5));
    let want = core_log_prob(&fx, &rows);

    let (status, headers, bytes) = call(&fx.app, "POST", "/log_prob", Some(NPY), npy_f32(&rows)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(header_str(&headers, "x-flowscore-model"), "test/1");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_close(&f64s(&v["log_prob"]), &want, 1e-9, "float32 NPY");

    // float64 NPY holding the same (f32-exact) values scores the same.
    let flat: Vec<f64> = rows.concat().iter().map(|v| f64::from(*v)).collect();
    let body = flowscore::data::npy_bytes(&flat, &[6, 16]).unwrap();
    let (status, _, bytes) = call(&fx.app, "POST", "/log_prob", Some(NPY), body).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_close(&f64s(&v["log_prob"]), &want, 1e-9, "float64 NPY");

    // uint8 images [n, 4, 4] are 8-bit pixels, scored as (p + 0.5) / 256.
    let pixels: Vec<u8> = (0..2 * 16).map(|i| (i * 37 % 256) as u8).collect();
    let body = flowscore::data::npy_bytes(&pixels, &[2, 4, 4]).unwrap();
    let (status, _, bytes) = call(&fx.app, "POST", "/log_prob", Some(NPY), body).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let scaled: Rows = pixels.chunks(16).map(|r| r.iter().map(|p| (*p as f32 + 0.5) / 256.0).collect()).collect();
    assert_close(&f64s(&v["log_prob"]), &core_log_prob(&fx, &scaled), 1e-9, "uint8 NPY");
}

#[tokio::test]
async fn log_prob_answers_npy_when_asked() {
    let fx = tabular_fixture().await;
    let rows = rows_of(&random_rows(9, 5, -4.0, 4.0, 8));
    let req = Request::post("/log_prob")
        .header(header::CONTENT_TYPE, JSON)
        .header(header::ACCEPT, "application/x-npy")
        .body(Body::from(json!({ "inputs": as_f64(&rows) }).to_string()))
        .unwrap();
    let (status, headers, bytes) = send(&fx.app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_str(&headers, "content-type"), NPY);
    assert_eq!(header_str(&headers, "x-flowscore-model"), "test/1");
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[9]);
    assert_eq!(npy.dtype(), npyz::DType::Plain("<f8".parse().unwrap()));
    let lp: Vec<f64> = npy.into_vec().unwrap();
    assert_close(&lp, &core_log_prob(&fx, &rows), 1e-9, "NPY log_prob");
}

#[tokio::test]
async fn score_flags_rows_against_the_calibration() {
    let fx = image_fixture().await;
    let cal = fx.model().card.calibration.unwrap();
    // Rows pushed to the corners of the cube are far less likely than mid-range rows: a mix
    // of flagged and unflagged rows under the card's threshold.
    let mut rows = rows_of(&random_rows(6, 16, 0.0, 1.0, 31));
    rows.extend(rows_of(&random_rows(4, 16, 0.0, 1.0, 32)).into_iter().map(|r| r.iter().map(|v| v.round()).collect()));
    let lp = core_log_prob(&fx, &rows);
    let check = |v: &Value, threshold: f64, what: &str| {
        assert_close(&f64s(&v["log_prob"]), &lp, 1e-9, what);
        assert_eq!(v["threshold"].as_f64().unwrap(), threshold, "{what}: threshold");
        let pct: Vec<f64> = lp.iter().map(|l| cal.percentile(*l)).collect();
        assert_close(&f64s(&v["percentile"]), &pct, 1e-12, what);
        let flags: Vec<bool> = v["is_anomaly"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect();
        let want: Vec<bool> = lp.iter().map(|l| *l < threshold).collect();
        assert_eq!(flags, want, "{what}: is_anomaly");
        assert_eq!(v["model"]["name"], "test");
    };

    let (headers, v) = post_json(&fx.app, "/score", &json!({ "inputs": as_f64(&rows) })).await;
    assert_eq!(header_str(&headers, "x-flowscore-model"), "test/1");
    check(&v, cal.threshold, "default threshold");
    let flagged = lp.iter().filter(|l| **l < cal.threshold).count();
    assert!(
        flagged > 0 && flagged < rows.len(),
        "fixture should mix flagged and normal rows: {lp:?} vs {}",
        cal.threshold
    );

    let t = lp[3];
    let (_, v) = post_json(&fx.app, "/score", &json!({ "inputs": as_f64(&rows), "threshold": t })).await;
    check(&v, t, "explicit threshold");

    let (_, v) = post_json(&fx.app, "/score", &json!({ "inputs": as_f64(&rows), "contamination": 0.3 })).await;
    check(&v, cal.quantile(0.3).unwrap(), "contamination");

    // NPY bodies take the policy from the query string.
    let (status, _, bytes) = call(&fx.app, "POST", &format!("/score?threshold={t}"), Some(NPY), npy_f32(&rows)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    check(&serde_json::from_slice(&bytes).unwrap(), t, "NPY ?threshold=");
    let (status, _, bytes) = call(&fx.app, "POST", "/score?contamination=0.5", Some(NPY), npy_f32(&rows)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    check(&serde_json::from_slice(&bytes).unwrap(), cal.quantile(0.5).unwrap(), "NPY ?contamination=");
}

#[tokio::test]
async fn encode_matches_and_decode_inverts_it() {
    for fx in [image_fixture().await, tabular_fixture().await] {
        let lo = if fx.dim == 16 { 0.01 } else { -5.0 };
        let rows = rows_of(&random_rows(5, fx.dim, lo, 0.99, 41));
        let (headers, v) = post_json(&fx.app, "/encode", &json!({ "inputs": as_f64(&rows) })).await;
        assert_eq!(header_str(&headers, "x-flowscore-model"), "test/1");
        let (z, _) = {
            let _g = tch::no_grad_guard();
            fx.model().nice.encode(&tensor(&rows)).unwrap()
        };
        let want_z = rows_of(&z);
        let latents = matrix(&v["latents"]);
        assert_eq!(latents.len(), 5);
        for (got, want) in latents.iter().zip(&want_z) {
            let want: Vec<f64> = want.iter().map(|v| f64::from(*v)).collect();
            assert_close(got, &want, 1e-6, "latents");
        }
        assert_close(&f64s(&v["log_prob"]), &core_log_prob(&fx, &rows), 1e-9, "encode log_prob");

        // decode(encode(x)) = x, through two HTTP calls.
        let (_, d) = post_json(&fx.app, "/decode", &json!({ "latents": latents })).await;
        let outputs = matrix(&d["outputs"]);
        assert_eq!(outputs.len(), 5);
        for (got, want) in outputs.iter().zip(&rows) {
            let want: Vec<f64> = want.iter().map(|v| f64::from(*v)).collect();
            assert_eq!(got.len(), fx.dim);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "decode(encode(x)): {a} vs {b}");
            }
        }
    }
}

#[tokio::test]
async fn sample_is_seeded_and_formatted() {
    let fx = image_fixture().await;
    let core = |n: usize, seed: u64, t: f64| -> Vec<f64> {
        let _g = tch::no_grad_guard();
        to_vec(&fx.model().nice.sample(n, seed, t).unwrap())
    };
    let samples = |v: &Value| -> Vec<f64> { matrix(&v["samples"]).concat() };

    let a = get_json(&fx.app, "/sample?n=5&seed=7").await;
    assert_eq!(a["model"]["version"], "1");
    assert_eq!(matrix(&a["samples"]).len(), 5);
    assert!(matrix(&a["samples"]).iter().all(|r| r.len() == 16));
    assert_close(&samples(&a), &core(5, 7, 1.0), 1e-6, "samples vs flow core");
    let again = get_json(&fx.app, "/sample?n=5&seed=7").await;
    assert_eq!(samples(&a), samples(&again), "same seed, same samples");
    let other = get_json(&fx.app, "/sample?n=5&seed=8").await;
    assert_ne!(samples(&a), samples(&other), "different seed, different samples");
    let cool = get_json(&fx.app, "/sample?n=5&seed=7&temperature=0.3").await;
    assert_ne!(samples(&a), samples(&cool), "temperature changes the samples");
    assert_close(&samples(&cool), &core(5, 7, 0.3), 1e-6, "tempered samples vs flow core");
    let default_n = get_json(&fx.app, "/sample").await;
    assert_eq!(matrix(&default_n["samples"]).len(), 16, "default n");

    let (status, headers, bytes) = call(&fx.app, "GET", "/sample?n=3&seed=7&format=npy", None, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_str(&headers, "content-type"), NPY);
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[3, 16]);
    let got: Vec<f32> = npy.into_vec().unwrap();
    let got: Vec<f64> = got.into_iter().map(f64::from).collect();
    assert_eq!(got, core(3, 7, 1.0), "NPY samples are the flow core's f32 values");

    let (status, headers, bytes) = call(&fx.app, "GET", "/sample?n=4&seed=1&format=png", None, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_str(&headers, "content-type"), "image/png");
    assert_eq!(header_str(&headers, "x-flowscore-model"), "test/1");
    let reader = png::Decoder::new(&bytes[..]).read_info().unwrap();
    // 4 images of 4×4 in a 2×2 grid with 1-pixel gaps.
    assert_eq!((reader.info().width, reader.info().height), (9, 9));

    let tab = tabular_fixture().await;
    tab.refused("GET", "/sample?n=4&format=png", None, Bytes::new(), StatusCode::BAD_REQUEST, "image model").await;
    let v = get_json(&tab.app, "/sample?n=2&seed=3").await;
    assert_eq!(matrix(&v["samples"]).len(), 2);
    assert!(matrix(&v["samples"]).iter().all(|r| r.len() == 5));
}

#[tokio::test]
async fn inpaint_keeps_observed_values_and_is_deterministic() {
    let fx = image_fixture().await;
    let rows = rows_of(&random_rows(3, 16, 0.05, 0.95, 51));
    let mask: Vec<Vec<f64>> = (0..3).map(|r| (0..16).map(|c| ((c + r) % 3 == 0) as u8 as f64).collect()).collect();
    let body =
        json!({ "inputs": as_f64(&rows), "mask": mask, "steps": 30, "step_size": 0.01, "noise": 0.5, "seed": 4 });
    let (headers, v) = post_json(&fx.app, "/inpaint", &body).await;
    assert_eq!(header_str(&headers, "x-flowscore-model"), "test/1");
    let out = matrix(&v["outputs"]);
    assert_eq!(out.len(), 3);
    for (r, row) in out.iter().enumerate() {
        assert_eq!(row.len(), 16);
        for (c, value) in row.iter().enumerate() {
            if mask[r][c] == 0.0 {
                // JSON carries the f32 in its shortest form: compare as f32.
                assert_eq!(*value as f32, rows[r][c], "observed [{r}][{c}] changed");
            } else {
                assert!((0.0..=1.0).contains(value), "completed [{r}][{c}] = {value} outside the domain");
            }
        }
    }
    // The flow core with the same options gives the same completion.
    let want = {
        let m = fx.model();
        let missing = tensor(&mask.iter().map(|r| r.iter().map(|v| *v as f32).collect()).collect());
        let opts = InpaintOptions { steps: 30, step_size: 0.01, noise: 0.5, seed: 4 };
        let _g = tch::no_grad_guard();
        to_vec(&m.nice.inpaint(&tensor(&rows), &missing, &opts).unwrap())
    };
    assert_close(&out.concat(), &want, 1e-5, "inpaint vs flow core");
    // Bit-exact through NPY: observed values untouched, the rest the flow core's own values.
    let req = Request::post("/inpaint")
        .header(header::CONTENT_TYPE, JSON)
        .header(header::ACCEPT, NPY)
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, bytes) = send(&fx.app, req).await;
    assert_eq!(status, StatusCode::OK);
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[3, 16]);
    let exact: Vec<f32> = npy.into_vec().unwrap();
    for (k, value) in exact.iter().enumerate() {
        let (r, c) = (k / 16, k % 16);
        if mask[r][c] == 0.0 {
            assert_eq!(value.to_bits(), rows[r][c].to_bits(), "observed [{r}][{c}] changed");
        }
    }
    assert_close(&exact.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(), &want, 1e-5, "NPY inpaint vs flow core");
    let (_, again) = post_json(&fx.app, "/inpaint", &body).await;
    assert_eq!(matrix(&again["outputs"]), out, "same seed, same completion");
    let mut reseeded = body.clone();
    reseeded["seed"] = json!(5);
    let (_, other) = post_json(&fx.app, "/inpaint", &reseeded).await;
    assert_ne!(matrix(&other["outputs"]), out, "another seed, another completion");
}

#[tokio::test]
async fn model_card_and_service_routes() {
    let fx = image_fixture().await;
    let card = fx.model().card;
    let v = get_json(&fx.app, "/model").await;
    assert_eq!(v["name"], "test");
    assert_eq!(v["version"], "1");
    assert_eq!(v["architecture"]["dim"], 16);
    assert_eq!(v["architecture"]["couplings"], 4);
    assert_eq!(v["input"]["shape"], json!([4, 4]));
    assert_eq!(v["preprocess"]["kind"], "logit");
    assert_eq!(v["prior"], serde_json::to_value(card.prior).unwrap());
    assert_eq!(v["weights"]["sha256"], card.weights.sha256.as_str());
    let cal = card.calibration.unwrap();
    assert_eq!(
        v["calibration"],
        json!({"rows": 200, "threshold": cal.threshold, "threshold_quantile": 0.01, "default_kind": "likelihood"}),
        "calibration is summarised, not dumped"
    );

    // The spectrum is the loaded weights' own log-scales, at every route to the model.
    let scales = fx.model().nice.log_scales();
    for path in ["/spectrum", "/models/test/spectrum", "/models/test/versions/1/spectrum"] {
        let v = get_json(&fx.app, path).await;
        assert_eq!(v["log_scales"], json!(scales), "{path}");
        assert_eq!(v["shape"], json!([4, 4]), "{path}");
    }

    assert_eq!(get_json(&fx.app, "/health").await["status"], "ok");
    let ready = get_json(&fx.app, "/ready").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["model"], json!({"name": "test", "version": "1"}));

    fx.assert_healthy().await;
    call(&fx.app, "GET", "/no/such/route", None, Bytes::new()).await;
    let (status, headers, bytes) = call(&fx.app, "GET", "/metrics", None, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(header_str(&headers, "content-type").starts_with("text/plain"));
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("flowscore_http_requests_total{") && l.contains("route=\"/log_prob\""))
        .unwrap_or_else(|| panic!("no /log_prob request counter:\n{text}"));
    assert!(line.contains("status=\"200\"") && line.contains("method=\"POST\"") && line.ends_with(" 1"), "{line}");
    assert!(text.contains("flowscore_model_info{name=\"test\",version=\"1\"} 1"), "{text}");
    assert!(!text.contains("/no/such/route"), "raw paths must not become labels:\n{text}");

    let api = get_json(&fx.app, "/openapi.json").await;
    assert!(api["openapi"].as_str().unwrap().starts_with("3."), "{}", api["openapi"]);
    for path in ["/log_prob", "/score", "/sample", "/encode", "/decode", "/inpaint", "/spectrum"] {
        assert!(api["paths"].get(path).is_some(), "openapi lacks {path}");
    }
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy() {
    let fx = tabular_fixture().await;
    for path in ["/", "/dashboard"] {
        let (status, headers, _) = call(&fx.app, "GET", path, None, Bytes::new()).await;
        assert!(status.is_redirection(), "{path}: {status}");
        assert_eq!(header_str(&headers, "location"), "/dashboard/");
    }
    for (path, kind) in [
        ("/dashboard/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/charts.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let (status, headers, body) = call(&fx.app, "GET", path, None, Bytes::new()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(header_str(&headers, "content-type").starts_with(kind), "{path}");
        let csp = header_str(&headers, "content-security-policy");
        for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header_str(&headers, "x-content-type-options"), "nosniff");
        assert!(!body.is_empty(), "{path}");
    }
    // The page itself carries no inline code or styles, which the policy would block anyway.
    let (_, _, html) = call(&fx.app, "GET", "/dashboard/", None, Bytes::new()).await;
    let html = String::from_utf8(html.to_vec()).unwrap();
    assert!(!html.contains("<script>") && !html.contains(" style=") && !html.contains("<style"), "{html}");
    fx.refused("GET", "/dashboard/secrets.txt", None, Bytes::new(), StatusCode::NOT_FOUND, "no dashboard file").await;
    fx.refused("GET", "/dashboard/..%2FCargo.toml", None, Bytes::new(), StatusCode::NOT_FOUND, "no dashboard file")
        .await;
}

// ---- bad input ------------------------------------------------------------------------------

#[tokio::test]
async fn bad_json_bodies_are_refused() {
    let fx = image_fixture().await;
    let row = |n: usize| vec![0.5f64; n];
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(String, &str)> = vec![
        (r#"{"inputs": [[0.1, 0.2"#.into(), "invalid JSON body"),
        ("not json at all".into(), "invalid JSON body"),
        ("{}".into(), "missing field `inputs`"),
        (json!({ "rows": [row(16)] }).to_string(), "unknown field `rows`"),
        (json!({ "inputs": [row(16)], "extra": 1 }).to_string(), "unknown field `extra`"),
        (json!({ "inputs": [row(3)] }).to_string(), "rows have 3 values, the model expects 16"),
        (json!({ "inputs": [row(16), row(15)] }).to_string(), "ragged rows"),
        (json!({ "inputs": [vec!["0.5"; 16]] }).to_string(), "invalid type: string"),
        (json!({ "inputs": [vec![Value::Null; 16]] }).to_string(), "invalid type: null"),
        (json!({ "inputs": "abc" }).to_string(), "an array of rows"),
        (format!(r#"{{"inputs": [[NaN{}]]}}"#, ", 0.5".repeat(15)), "invalid JSON body"),
        (format!(r#"{{"inputs": [[Infinity{}]]}}"#, ", 0.5".repeat(15)), "invalid JSON body"),
        (format!(r#"{{"inputs": [[1e400{}]]}}"#, ", 0.5".repeat(15)), "out of range"),
        (format!(r#"{{"inputs": [[0.5, 1e39{}]]}}"#, ", 0.5".repeat(14)), "outside the float32 range"),
        (r#"{"inputs": []}"#.into(), "`inputs` is empty"),
        (r#"{"inputs": [[]]}"#.into(), "row 0 is empty"),
        (json!({ "inputs": [row(16), vec![1.5; 16]] }).to_string(), "outside the model's input range"),
        (format!(r#"{{"inputs": [[-0.01{}]]}}"#, ", 0.5".repeat(15)), "row 0 column 0 is -0.01"),
    ];
    for (body, needle) in cases {
        fx.refused("POST", "/log_prob", Some(JSON), body, bad, needle).await;
    }
    // The same checks guard the other row-taking routes.
    let out_of_range = json!({ "inputs": [vec![2.0; 16]] }).to_string();
    for uri in ["/score", "/encode"] {
        fx.refused("POST", uri, Some(JSON), out_of_range.clone(), bad, "outside the model's input range").await;
        fx.refused("POST", uri, Some(JSON), "{}", bad, "missing field `inputs`").await;
    }
    fx.refused(
        "POST",
        "/decode",
        Some(JSON),
        json!({ "latents": [row(4)] }).to_string(),
        bad,
        "`latents` rows have 4 values",
    )
    .await;
    fx.refused(
        "POST",
        "/decode",
        Some(JSON),
        json!({ "inputs": [row(16)] }).to_string(),
        bad,
        "unknown field `inputs`",
    )
    .await;
    fx.refused(
        "POST",
        "/log_prob",
        Some("text/plain"),
        "0.5",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported content type `text/plain`",
    )
    .await;
}

#[tokio::test]
async fn oversize_requests_are_refused() {
    let fx = image_fixture().await;
    let too_many = json!({ "inputs": vec![vec![0.5f64; 16]; MAX_ROWS + 1] }).to_string();
    fx.refused("POST", "/log_prob", Some(JSON), too_many.clone(), StatusCode::PAYLOAD_TOO_LARGE, "too many rows: 101")
        .await;
    fx.refused("POST", "/score", Some(JSON), too_many, StatusCode::PAYLOAD_TOO_LARGE, "too many rows").await;
    let npy = npy_f32(&vec![vec![0.5f32; 16]; MAX_ROWS + 1]);
    fx.refused("POST", "/log_prob", Some(NPY), npy, StatusCode::PAYLOAD_TOO_LARGE, "too many rows").await;
    // Exactly the limit is fine.
    let (_, v) = post_json(&fx.app, "/log_prob", &json!({ "inputs": vec![vec![0.5f64; 16]; MAX_ROWS] })).await;
    assert_eq!(f64s(&v["log_prob"]).len(), MAX_ROWS);

    let mut huge = String::from(r#"{"inputs": [[0.5"#);
    while huge.len() <= MAX_BODY {
        huge.push_str(", 0.5");
    }
    huge.push_str("]]}");
    fx.refused("POST", "/log_prob", Some(JSON), huge, StatusCode::PAYLOAD_TOO_LARGE, "size limit").await;
    fx.refused("POST", "/log_prob", Some(NPY), vec![0u8; MAX_BODY + 1], StatusCode::PAYLOAD_TOO_LARGE, "size limit")
        .await;
}

#[tokio::test]
async fn bad_npy_bodies_are_refused() {
    let fx = image_fixture().await;
    let bad = StatusCode::BAD_REQUEST;
    let ints = flowscore::data::npy_bytes(&[1i64; 32], &[2, 16]).unwrap();
    fx.refused("POST", "/log_prob", Some(NPY), ints, bad, "expected float32, float64 or uint8").await;
    let flat = flowscore::data::npy_bytes(&[0.5f32; 16], &[16]).unwrap();
    fx.refused("POST", "/log_prob", Some(NPY), flat, bad, "expected a 2-D array").await;
    let cube = flowscore::data::npy_bytes(&[0.5f32; 16], &[1, 4, 4]).unwrap();
    fx.refused("POST", "/log_prob", Some(NPY), cube, bad, "3-D arrays are only accepted as uint8").await;
    let mut truncated = npy_f32(&vec![vec![0.5f32; 16]; 2]);
    truncated.truncate(truncated.len() - 3);
    fx.refused("POST", "/log_prob", Some(NPY), truncated, bad, "truncated NPY data").await;
    let narrow = flowscore::data::npy_bytes(&[0.5f32; 6], &[2, 3]).unwrap();
    fx.refused("POST", "/log_prob", Some(NPY), narrow, bad, "rows have 3 values, the model expects 16").await;
    fx.refused("POST", "/log_prob", Some(NPY), &b"\x93NUMPY garbage"[..], bad, "invalid NPY body").await;
    fx.refused("POST", "/log_prob", Some(NPY), Bytes::new(), bad, "invalid NPY body").await;
    let mut nan = vec![vec![0.5f32; 16]; 2];
    nan[1][3] = f32::NAN;
    fx.refused("POST", "/log_prob", Some(NPY), npy_f32(&nan), bad, "row 1, column 3").await;
    let huge = flowscore::data::npy_bytes(&[1e300f64; 16], &[1, 16]).unwrap();
    fx.refused("POST", "/log_prob", Some(NPY), huge, bad, "not finite").await;
    let mut outside = vec![vec![0.5f32; 16]; 2];
    outside[1][2] = 1.25;
    fx.refused("POST", "/log_prob", Some(NPY), npy_f32(&outside), bad, "row 1 column 2 is 1.25, outside").await;
    fx.refused("POST", "/score", Some(NPY), npy_f32(&outside), bad, "outside the model's input range").await;
}

#[tokio::test]
async fn bad_sample_queries_are_refused() {
    let fx = image_fixture().await;
    let cases = [
        ("n=0", "`n` must be at least 1, got 0"),
        ("n=-3", "`n` must be at least 1, got -3"),
        ("n=65", "the limit is 64"),
        ("n=abc", "invalid query string"),
        ("temperature=0", "temperature"),
        ("temperature=-1", "temperature"),
        ("temperature=NaN", "temperature"),
        ("temperature=inf", "temperature"),
        ("seed=-1", "invalid query string"),
        ("seed=99999999999999999999999", "invalid query string"),
        ("format=gif", "`format` must be json, npy or png, got `gif`"),
    ];
    for (query, needle) in cases {
        fx.refused("GET", &format!("/sample?{query}"), None, Bytes::new(), StatusCode::BAD_REQUEST, needle).await;
    }
    // n at the limit is fine.
    assert_eq!(matrix(&get_json(&fx.app, "/sample?n=64").await["samples"]).len(), 64);
}

#[tokio::test]
async fn bad_inpaint_requests_are_refused() {
    let fx = image_fixture().await;
    let bad = StatusCode::BAD_REQUEST;
    let inputs = vec![vec![0.5f64; 16]; 2];
    let half: Vec<f64> = (0..16).map(|i| (i % 2) as f64).collect();
    let cases = [
        (json!({ "inputs": inputs, "mask": [half] }), "must have the same shape"),
        (json!({ "inputs": inputs, "mask": [vec![1.0; 8], vec![1.0; 8]] }), "must have the same shape"),
        (json!({ "inputs": inputs, "mask": [half, vec![0.5; 16]] }), "use 1 for missing, 0 for observed"),
        (json!({ "inputs": inputs, "mask": [half, vec![2.0; 16]] }), "`mask` row 1 column 0 is 2"),
        (json!({ "inputs": inputs, "mask": [half, half], "steps": 51 }), "`steps` is 51; the limit is 50"),
        (json!({ "inputs": inputs, "mask": [half, half], "steps": -1 }), "invalid value: integer `-1`"),
        (
            json!({ "inputs": inputs, "mask": [half, half], "steps": 10, "step_size": 0.0 }),
            "`step_size` must be in (0, 1e6]",
        ),
        (
            json!({ "inputs": inputs, "mask": [half, half], "steps": 10, "step_size": 2e6 }),
            "`step_size` must be in (0, 1e6]",
        ),
        (json!({ "inputs": inputs, "mask": [half, half], "steps": 10, "noise": -1.0 }), "`noise` in [0, 1e6]"),
        (json!({ "inputs": inputs }), "missing field `mask`"),
        (json!({ "inputs": [vec![1.5; 16]], "mask": [half] }), "outside the model's input range"),
    ];
    for (body, needle) in cases {
        fx.refused("POST", "/inpaint", Some(JSON), body.to_string(), bad, needle).await;
    }
    let npy = npy_f32(&vec![vec![0.5f32; 16]; 2]);
    fx.refused("POST", "/inpaint", Some(NPY), npy, StatusCode::UNSUPPORTED_MEDIA_TYPE, "/inpaint takes JSON").await;
}

#[tokio::test]
async fn bad_score_policies_are_refused() {
    let fx = image_fixture().await;
    let bad = StatusCode::BAD_REQUEST;
    let inputs = vec![vec![0.5f64; 16]; 2];
    let cases = [
        (json!({ "inputs": inputs, "threshold": -10.0, "contamination": 0.1 }), "at most one"),
        (json!({ "inputs": inputs, "contamination": 1.5 }), "`contamination` must be in (0, 1)"),
        (json!({ "inputs": inputs, "contamination": 0.0 }), "`contamination` must be in (0, 1)"),
        (json!({ "inputs": inputs, "threshold": "low" }), "invalid type: string"),
    ];
    for (body, needle) in cases {
        fx.refused("POST", "/score", Some(JSON), body.to_string(), bad, needle).await;
    }
    let npy = npy_f32(&vec![vec![0.5f32; 16]; 2]);
    fx.refused("POST", "/score?threshold=-1&contamination=0.1", Some(NPY), npy.clone(), bad, "at most one").await;
    fx.refused("POST", "/score?contamination=1.5", Some(NPY), npy.clone(), bad, "`contamination` must be in (0, 1)")
        .await;
    fx.refused("POST", "/score?threshold=low", Some(NPY), npy.clone(), bad, "invalid query string").await;
    fx.refused("POST", "/score?threshold=inf", Some(NPY), npy, bad, "`threshold` must be a finite number").await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let fx = image_fixture().await;
    fx.refused("GET", "/nope", None, Bytes::new(), StatusCode::NOT_FOUND, "no route for /nope").await;
    fx.refused("POST", "/log_prob/extra", Some(JSON), "{}", StatusCode::NOT_FOUND, "no route").await;
    fx.refused("GET", "/log_prob", None, Bytes::new(), StatusCode::METHOD_NOT_ALLOWED, "method not allowed").await;
    fx.refused("POST", "/health", Some(JSON), "{}", StatusCode::METHOD_NOT_ALLOWED, "method not allowed").await;
    fx.refused("DELETE", "/model", None, Bytes::new(), StatusCode::METHOD_NOT_ALLOWED, "method not allowed").await;
    fx.refused("POST", "/sample", Some(JSON), "{}", StatusCode::METHOD_NOT_ALLOWED, "method not allowed").await;
}

// ---- batch independence ---------------------------------------------------------------------

#[tokio::test]
async fn a_row_scores_the_same_alone_or_in_a_batch() {
    for fx in [image_fixture().await, tabular_fixture().await] {
        let lo = if fx.dim == 16 { 0.0 } else { -5.0 };
        let rows = rows_of(&random_rows(50, fx.dim, lo, 1.0, 61));
        let (_, v) = post_json(&fx.app, "/log_prob", &json!({ "inputs": as_f64(&rows) })).await;
        let together = f64s(&v["log_prob"]);
        assert_eq!(together.len(), 50);
        for (i, row) in rows.iter().enumerate() {
            let (_, v) = post_json(&fx.app, "/log_prob", &json!({ "inputs": as_f64(&vec![row.clone()]) })).await;
            let alone = f64s(&v["log_prob"]);
            assert_close(&alone, &together[i..=i], 1e-5, &format!("row {i} alone vs in a batch of 50"));
        }
        // Order within a batch does not matter either.
        let reversed: Rows = rows.iter().rev().cloned().collect();
        let (_, v) = post_json(&fx.app, "/log_prob", &json!({ "inputs": as_f64(&reversed) })).await;
        let mut back = f64s(&v["log_prob"]);
        back.reverse();
        assert_close(&back, &together, 1e-5, "reversed batch");
    }
}

// ---- non-finite results (known bugs) ---------------------------------------------------------

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(o) => o.values().any(has_null),
        _ => false,
    }
}

/// A request whose result is not a finite number is either refused with a 4xx JSON error, or
/// answered with numbers: never a 200 with `null`s (serde_json's rendering of NaN and ±inf).
async fn numbers_or_refused(fx: &Fixture, method: &str, uri: &str, body: Option<Value>) -> Option<Value> {
    let (ct, bytes) = match body {
        Some(b) => (Some(JSON), Bytes::from(b.to_string())),
        None => (None, Bytes::new()),
    };
    let (status, _, bytes) = call(&fx.app, method, uri, ct, bytes).await;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {text}"));
    fx.assert_healthy().await;
    if status == StatusCode::OK {
        assert!(!has_null(&v), "{method} {uri}: 200 with non-numbers: {text}");
        Some(v)
    } else {
        assert!(status.is_client_error(), "{method} {uri}: {status}: {text}");
        assert!(v["error"].is_string(), "{method} {uri}: {text}");
        None
    }
}

#[tokio::test]
async fn overflowing_results_are_never_served_as_null() {
    let tab = tabular_fixture().await;
    let img = image_fixture().await;
    // 3e38 is a valid float32, but (x - mean) / std overflows in the standardisation.
    let extreme = json!({ "inputs": [vec![3e38; 5], vec![0.5; 5]] });
    numbers_or_refused(&tab, "POST", "/log_prob", Some(extreme.clone())).await;
    numbers_or_refused(&tab, "POST", "/encode", Some(extreme)).await;
    // A finite, positive temperature whose prior draws overflow float32.
    numbers_or_refused(&tab, "GET", "/sample?n=2&temperature=1e300", None).await;
    numbers_or_refused(&img, "GET", "/sample?n=2&temperature=1e300", None).await;
    // Finite float32 latents whose inverse is not finite.
    numbers_or_refused(&img, "POST", "/decode", Some(json!({ "latents": [vec![1e38; 16]] }))).await;
}

#[tokio::test]
async fn score_never_calls_an_unscorable_row_normal() {
    let tab = tabular_fixture().await;
    let body = json!({ "inputs": [vec![3e38; 5], vec![-3e38; 5], vec![0.5; 5]] });
    let (status, _, bytes) = call(&tab.app, "POST", "/score", Some(JSON), body.to_string()).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    if status == StatusCode::OK {
        // Checked first: the worst outcome is an extreme outlier passing as normal.
        assert_eq!(v["is_anomaly"][0], true, "an input far outside the data is not normal: {v}");
        assert_eq!(v["is_anomaly"][1], true, "an input far outside the data is not normal: {v}");
        assert!(!has_null(&v), "200 with non-numbers: {v}");
    } else {
        assert!(status.is_client_error() && v["error"].is_string(), "{status}: {v}");
    }
    tab.assert_healthy().await;
    let (_, _, bytes) = call(&tab.app, "GET", "/metrics", None, Bytes::new()).await;
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let poisoned: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && l.ends_with(" NaN")).collect();
    assert!(poisoned.is_empty(), "metrics stuck at NaN: {poisoned:?}");
}

#[tokio::test]
async fn inpaint_never_touches_observed_values_even_when_the_update_overflows() {
    let fx = image_fixture().await;
    let rows = rows_of(&random_rows(1, 16, 0.05, 0.95, 71));
    let mask: Vec<f64> = (0..16).map(|i| (i % 2) as f64).collect();
    // Finite, non-negative noise that passes validation, but whose per-step draws overflow f32.
    let body = json!({ "inputs": as_f64(&rows), "mask": [mask], "steps": 5, "noise": 1e300 });
    if let Some(v) = numbers_or_refused(&fx, "POST", "/inpaint", Some(body)).await {
        let out = matrix(&v["outputs"]);
        for (c, value) in out[0].iter().enumerate() {
            if c % 2 == 0 {
                assert_eq!(*value as f32, rows[0][c], "observed column {c} changed");
            }
        }
    }
}

/// Rows far outside the training data, up to float32's largest value, get a finite log-density:
/// where float32 arithmetic overflows, those rows are scored again in float64, and agree with
/// the flow core run in float64.
#[tokio::test]
async fn extreme_rows_get_finite_log_densities() {
    let f = tabular_fixture().await;
    let rows: Rows = vec![vec![1.0; 5], vec![f32::MAX, -f32::MAX, 0.0, 1e30, -1e20], vec![3e38, 1.0, 2.0, 3.0, 4.0]];
    let (_, v) = post_json(&f.app, "/log_prob", &serde_json::json!({ "inputs": rows })).await;
    let lp: Vec<f64> = v["log_prob"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(lp.len(), 3);
    assert!(lp.iter().all(|x| x.is_finite()), "{v}");
    let wide = flowscore::store::load(&f.dir, Device::Cpu).unwrap().to_double().unwrap();
    let x: Vec<f64> = rows.iter().flatten().map(|v| *v as f64).collect();
    let expected = to_vec(&tch::no_grad(|| wide.nice.log_prob(&Tensor::from_slice(&x).view([3, 5])).unwrap()));
    for (got, want) in lp.iter().zip(&expected).skip(1) {
        assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs float64 {want}");
    }
    assert!(lp[1] < lp[0] && lp[2] < lp[0], "extreme rows must score far below a typical one: {lp:?}");
}
