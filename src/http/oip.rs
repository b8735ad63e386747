//! The Open Inference Protocol (KServe v2 REST) over the loaded models, with Triton's binary
//! tensor data and model repository extensions. One input, `inputs`, of FP32 or FP64 rows
//! `[N, D]`; outputs by name: `log_prob` (the default), `bits_per_dim`, `percentile`, `score`,
//! `p_value`, `is_anomaly` (the fields of /score) and `latents` (of /encode). docs/models.md has
//! the mapping.
use super::body::Matrix;
use super::error::{ApiError, ErrorBody};
use super::handlers::{image, MODEL_HEADER};
use super::oip_codec::{self, OipError, OutData, OutTensor, HEADER_LENGTH};
use super::AppState;
use crate::anomaly::{judge, resolve_kind, Policy, ScoreKind};
use crate::engine::{ModelHandle, Output, Task};
use crate::flow::bits_per_dim;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The outputs a request may ask for, in the order metadata lists them.
pub const OUTPUTS: [&str; 7] = ["log_prob", "bits_per_dim", "percentile", "score", "p_value", "is_anomaly", "latents"];
pub const INPUT: &str = "inputs";
pub const PLATFORM: &str = "flowscore_nice";

impl From<OipError> for ApiError {
    fn from(e: OipError) -> Self {
        match e {
            OipError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

#[derive(Deserialize)]
pub struct Addressed {
    name: String,
    version: Option<String>,
}

fn resolve(state: &AppState, a: &Addressed) -> Result<ModelHandle, ApiError> {
    Ok(state.models.resolve(&a.name, a.version.as_deref())?)
}

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "flowscore",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository"],
    }))
}

pub async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let draining = state.draining.load(std::sync::atomic::Ordering::SeqCst);
    if !draining && state.models.is_ready() {
        return Json(json!({"ready": true})).into_response();
    }
    let error = if draining { "not ready: shutting down" } else { "not ready: no model is loaded, or loading" };
    (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error: error.into() })).into_response()
}

pub async fn model_metadata(State(state): State<AppState>, Path(a): Path<Addressed>) -> Result<Json<Value>, ApiError> {
    let handle = resolve(&state, &a)?;
    let info = handle.info();
    let d = info.dim() as i64;
    let versions: Vec<String> = match &a.version {
        Some(v) => vec![v.clone()],
        None => state
            .models
            .loaded()
            .into_iter()
            .filter(|(h, _)| h.info().card.name == a.name)
            .map(|(h, _)| h.info().card.version.clone())
            .collect(),
    };
    Ok(Json(json!({
        "name": info.card.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, d]}],
        "outputs": [
            {"name": "log_prob", "datatype": "FP64", "shape": [-1]},
            {"name": "bits_per_dim", "datatype": "FP64", "shape": [-1]},
            {"name": "percentile", "datatype": "FP64", "shape": [-1]},
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "p_value", "datatype": "FP64", "shape": [-1]},
            {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]},
            {"name": "latents", "datatype": "FP32", "shape": [-1, d]},
        ],
    })))
}

pub async fn model_ready(State(state): State<AppState>, Path(a): Path<Addressed>) -> Result<Json<Value>, ApiError> {
    let handle = resolve(&state, &a)?;
    let c = &handle.info().card;
    Ok(Json(json!({"name": c.name, "version": c.version, "ready": state.models.engine().is_ready()})))
}

pub async fn infer(
    State(state): State<AppState>,
    Path(a): Path<Addressed>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let handle = resolve(&state, &a)?;
    let info = handle.info().clone();
    let header_length = headers.get(HEADER_LENGTH).map(|v| v.to_str().unwrap_or("(not text)"));
    let max_values = state.limits.max_rows.saturating_mul(info.dim());
    let request = oip_codec::parse_infer(&body, header_length, max_values)?;
    if request.input_name != INPUT {
        return Err(ApiError::BadRequest(format!(
            "unknown input `{}`: this model's one input is `{INPUT}`",
            request.input_name
        )));
    }
    // The rows, checked as the other routes check them.
    let m = Matrix { data: request.rows, rows: request.n, cols: request.d };
    m.check(INPUT, info.dim(), state.limits.max_rows)?;
    m.check_domain(INPUT, info.card.preprocess.domain())?;
    let mut wanted: Vec<(String, bool)> = Vec::new();
    for o in &request.outputs {
        if !OUTPUTS.contains(&o.name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown output `{}`: this model has {}",
                o.name,
                OUTPUTS.join(", ")
            )));
        }
        if wanted.iter().any(|(n, _)| *n == o.name) {
            return Err(ApiError::BadRequest(format!("output `{}` is asked for twice", o.name)));
        }
        wanted.push((o.name.clone(), o.binary.unwrap_or(request.binary_data_output)));
    }
    if wanted.is_empty() {
        wanted.push(("log_prob".into(), request.binary_data_output));
    }
    let policy = policy(&request.parameters)?;
    let needs = |name: &str| wanted.iter().any(|(n, _)| n == name);
    let calibration = info.card.calibration.as_ref();
    if (needs("percentile") || needs("p_value")) && calibration.is_none() {
        return Err(ApiError::BadRequest("`percentile` and `p_value` need a model with calibration data".into()));
    }
    let judged = needs("score") || needs("p_value") || needs("is_anomaly");
    if judged {
        // Refuse a policy the model cannot serve before computing anything.
        judge(calibration, image(&info), &policy, &[], info.dim(), &[])
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    // The rows go to the engine; only the image score kinds need them again afterwards.
    let image_kind = resolve_kind(calibration, &policy) != ScoreKind::Likelihood;
    let kept = if judged && image_kind { m.data.clone() } else { Vec::new() };
    let rows = m.data;
    let (log_prob, latents) = if needs("latents") {
        match handle.submit(Task::Encode { rows }).await?.output {
            Output::Encode { latents, log_prob } => (log_prob, Some(latents)),
            _ => return Err(unexpected()),
        }
    } else {
        match handle.submit(Task::LogProb { rows }).await?.output {
            Output::LogProb(lp) => (lp, None),
            _ => return Err(unexpected()),
        }
    };
    if let Some(i) = log_prob.iter().position(|v| !v.is_finite()) {
        return Err(ApiError::BadRequest(format!(
            "row {i}: the log-density is not finite; the input is far outside the model's range"
        )));
    }
    let n = log_prob.len();
    let (dim, eight_bit) = (info.dim(), info.card.input.eight_bit);
    let judgement = if judged {
        Some(
            judge(calibration, image(&info), &policy, &kept, dim, &log_prob)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        )
    } else {
        None
    };
    let mut outputs = Vec::with_capacity(wanted.len());
    for (name, binary) in wanted {
        let j = judgement.as_ref();
        let (shape, data) = match name.as_str() {
            "log_prob" => (vec![n], OutData::Fp64(log_prob.clone())),
            "bits_per_dim" => {
                (vec![n], OutData::Fp64(log_prob.iter().map(|v| bits_per_dim(*v, dim, eight_bit)).collect()))
            }
            "percentile" => (
                vec![n],
                OutData::Fp64(log_prob.iter().map(|v| calibration.map_or(0.0, |c| c.percentile(*v))).collect()),
            ),
            "score" => (vec![n], OutData::Fp64(j.map(|j| j.scores.clone()).unwrap_or_default())),
            "p_value" => (vec![n], OutData::Fp64(j.and_then(|j| j.p_values.clone()).unwrap_or_default())),
            "is_anomaly" => {
                let flags = j.map(|j| j.is_anomaly.clone()).unwrap_or_default();
                let flagged = flags.iter().filter(|f| **f).count() as u64;
                state.metrics.anomalies.with_label_values(&[&info.card.name]).inc_by(flagged);
                state.metrics.judged_rows.with_label_values(&[&info.card.name]).inc_by(flags.len() as u64);
                (vec![n], OutData::Bool(flags))
            }
            _ => {
                let z = latents.clone().unwrap_or_default();
                if let Some(i) = z.iter().position(|v| !v.is_finite()) {
                    return Err(ApiError::BadRequest(format!("row {}: the latent is not finite", i / dim)));
                }
                (vec![n, dim], OutData::Fp32(z))
            }
        };
        outputs.push(OutTensor { name, shape, data, binary });
    }
    for v in &log_prob {
        state.metrics.scored_bits_per_dim.observe(bits_per_dim(*v, dim, eight_bit));
    }
    state.drift.record(&info, &log_prob);
    let encoded = oip_codec::encode_infer(&info.card.name, Some(&info.card.version), request.id.as_deref(), &outputs)
        .map_err(|e| {
        ApiError::Engine(crate::engine::EngineError::Inference(format!("encoding the response: {e}")))
    })?;
    let mut response = encoded.body.into_response();
    let h = response.headers_mut();
    match encoded.header_length {
        Some(len) => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(HEADER_LENGTH, HeaderValue::from(len));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&info.label()) {
        h.insert(MODEL_HEADER, v);
    }
    Ok(response)
}

fn unexpected() -> ApiError {
    ApiError::Engine(crate::engine::EngineError::Inference("unexpected output".into()))
}

/// `score_kind`, `threshold`, `contamination` or `fdr` from the request's parameters, as /score
/// takes them.
fn policy(params: &serde_json::Map<String, Value>) -> Result<Policy, ApiError> {
    let number = |key: &str| match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("parameter `{key}` must be a number, got {v}"))),
    };
    let kind = match params.get("score_kind") {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<ScoreKind>(v.clone()).map_err(|_| {
            ApiError::BadRequest(format!(
                "parameter `score_kind` must be `likelihood` or `complexity_corrected`, got {v}"
            ))
        })?),
    };
    Ok(Policy { kind, threshold: number("threshold")?, contamination: number("contamination")?, fdr: number("fdr")? })
}

/// `POST /v2/repository/index`: every version on disk or loaded, with its state.
pub async fn repository_index(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let ready_only = if body.is_empty() {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the index request is not valid JSON: {e}")))?;
        match v.get("ready") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(ApiError::BadRequest(format!("`ready` must be a boolean, got {other}"))),
        }
    };
    let models = state.models.clone();
    let status = tokio::task::spawn_blocking(move || models.status()).await.unwrap_or_default();
    let mut index = Vec::new();
    for n in status {
        for v in n.versions {
            use crate::models::VersionState::*;
            let (s, reason) = match &v.state {
                Loaded => ("READY", String::new()),
                Loading => ("LOADING", String::new()),
                Available => ("UNAVAILABLE", "not loaded".to_string()),
                Unavailable { reason } => ("UNAVAILABLE", reason.clone()),
            };
            if ready_only && s != "READY" {
                continue;
            }
            index.push(json!({"name": n.name, "version": v.version, "state": s, "reason": reason}));
        }
    }
    Ok(Json(Value::Array(index)))
}

/// `POST /v2/repository/models/{name}/load`: loads the name's live version.
pub async fn repository_load(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    state.models.load(&name, None, true).await?;
    Ok(Json(json!({})))
}

/// `POST /v2/repository/models/{name}/unload`: unloads every version of the name.
pub async fn repository_unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.models.unload(&name, None).await?;
    Ok(Json(json!({})))
}
