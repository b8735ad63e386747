//! Route handlers: validate and convert DTOs, call the engine, shape the response. No tensors.
use super::body::{npy_response, parse_json, parse_json_integral, parse_npy, wants_npy, Body, Matrix, RowsOut};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::anomaly::{judge, resolve_kind, Policy, ScoreKind};
use crate::drift::DriftReport;
use crate::engine::{ModelHandle, ModelInfo, Output, Scored, Task};
use crate::flow::{bits_per_dim, InpaintOptions};
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Names the model version that produced a response.
pub const MODEL_HEADER: HeaderName = HeaderName::from_static("x-flowscore-model");

/// Query strings with our JSON errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query string: {}", r.body_text()))
    }
}

/// The model a scoring route addresses: `/models/{name}[/versions/{version}]/...`, or the
/// default model for the unprefixed routes.
pub struct Target(pub ModelHandle);

impl FromRequestParts<AppState> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The unprefixed routes have no parameters: they read nothing and copy nothing here.
        let params = RawPathParams::from_request_parts(parts, state).await.ok();
        let param = |key: &str| params.as_ref().and_then(|p| p.iter().find(|(k, _)| *k == key).map(|(_, v)| v));
        let handle = match param("name") {
            Some(name) => state.models.resolve(name, param("version"))?,
            None => state.models.default_model()?,
        };
        Ok(Target(handle))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputsRequest {
    /// Rows of D numbers.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub inputs: Matrix,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[schema(value_type = Vec<Vec<f64>>)]
    pub inputs: Matrix,
    /// `likelihood` or `complexity_corrected` (8-bit image models); default: the model's.
    pub kind: Option<ScoreKind>,
    /// Flag rows whose log_prob is below this (nats) for `likelihood`, or whose score is above
    /// this for other kinds.
    pub threshold: Option<f64>,
    /// Or: flag this share of the calibration rows.
    pub contamination: Option<f64>,
    /// Or: flag by Benjamini–Hochberg over this request's rows at this false discovery rate.
    pub fdr: Option<f64>,
}

#[derive(Deserialize, ToSchema, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct ThresholdQuery {
    /// `likelihood` or `complexity_corrected` (8-bit image models); default: the model's.
    pub kind: Option<ScoreKind>,
    /// Flag rows whose log_prob is below this (nats) for `likelihood`, or whose score is above
    /// this for other kinds.
    pub threshold: Option<f64>,
    /// Or: flag this share of the calibration rows (the threshold is that quantile).
    pub contamination: Option<f64>,
    /// Or: flag by Benjamini–Hochberg over this request's rows at this false discovery rate.
    pub fdr: Option<f64>,
}

impl ThresholdQuery {
    pub fn policy(&self) -> Policy {
        Policy { kind: self.kind, threshold: self.threshold, contamination: self.contamination, fdr: self.fdr }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodeRequest {
    #[schema(value_type = Vec<Vec<f64>>)]
    pub latents: Matrix,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InpaintRequest {
    #[schema(value_type = Vec<Vec<f64>>)]
    pub inputs: Matrix,
    /// Same shape as `inputs`: 1 = missing (to complete), 0 = observed (kept).
    #[schema(value_type = Vec<Vec<f64>>)]
    pub mask: Matrix,
    /// Gradient-ascent steps (default 300).
    pub steps: Option<usize>,
    /// Initial step size (default 0.001), decaying as 1 / (1 + t/100).
    pub step_size: Option<f64>,
    /// Std of Gaussian noise added per step (default 0).
    pub noise: Option<f64>,
    /// Seed of the starting values and the noise (default 0).
    pub seed: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SampleQuery {
    /// Number of samples (default 16).
    pub n: Option<i64>,
    /// Seed: the same seed gives the same samples (default 0).
    pub seed: Option<u64>,
    /// Scales the prior draws (default 1).
    pub temperature: Option<f64>,
    /// `json` (default), `npy`, or `png` (image grid, image models only).
    pub format: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Serialize, ToSchema)]
pub struct LogProbResponse {
    /// Exact log-density of each row, nats.
    pub log_prob: Vec<f64>,
    pub bits_per_dim: Vec<f64>,
    pub model: ModelRef,
}

#[derive(Serialize, ToSchema)]
pub struct ScoreResponse {
    pub log_prob: Vec<f64>,
    /// Share of the model's calibration rows with a lower log_prob.
    pub percentile: Vec<f64>,
    /// The score kind used.
    pub score_kind: ScoreKind,
    /// Each row's score of that kind: higher is more anomalous.
    pub scores: Vec<f64>,
    /// Conformal p-value of each score against the calibration rows' (null without calibration).
    pub p_value: Option<Vec<f64>>,
    pub is_anomaly: Vec<bool>,
    /// The threshold used: log_prob nats for `likelihood`, the score otherwise; null under `fdr`.
    pub threshold: Option<f64>,
    pub model: ModelRef,
}

#[derive(Serialize, ToSchema)]
pub struct EncodeResponse<'a> {
    #[schema(value_type = Vec<Vec<f32>>)]
    pub latents: RowsOut<'a>,
    pub log_prob: Vec<f64>,
    pub model: ModelRef,
}

#[derive(Serialize, ToSchema)]
pub struct OutputsResponse<'a> {
    #[schema(value_type = Vec<Vec<f32>>)]
    pub outputs: RowsOut<'a>,
    pub model: ModelRef,
}

#[derive(Serialize, ToSchema)]
pub struct SamplesResponse<'a> {
    #[schema(value_type = Vec<Vec<f32>>)]
    pub samples: RowsOut<'a>,
    pub model: ModelRef,
}

fn model_ref(info: &ModelInfo) -> ModelRef {
    ModelRef { name: info.card.name.clone(), version: info.card.version.clone() }
}

fn with_model(mut response: Response, info: &ModelInfo) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("{}/{}", info.card.name, info.card.version)) {
        response.headers_mut().insert(MODEL_HEADER, v);
    }
    response
}

/// Rows from a JSON `inputs` field or an NPY body, checked against the live model.
fn inputs(state: &AppState, body: Body, info: &ModelInfo) -> Result<Matrix, ApiError> {
    let m = match body {
        Body::Json(b) => parse_json::<InputsRequest>(&b)?.inputs,
        Body::Npy(b) => parse_npy(&b)?,
    };
    m.check("inputs", info.dim(), state.limits.max_rows)?;
    m.check_domain("inputs", info.card.preprocess.domain())?;
    Ok(m)
}

/// Results that overflow (an input or parameter far outside the model's range) are refused by
/// name rather than served as JSON nulls.
fn ensure_finite<T: Copy + Into<f64>>(values: &[T], cols: usize, what: &str) -> Result<(), ApiError> {
    match values.iter().position(|v| !(*v).into().is_finite()) {
        None => Ok(()),
        Some(i) => Err(ApiError::BadRequest(format!(
            "row {}: the {what} is not finite; the input or parameters are far outside the model's range",
            i / cols.max(1)
        ))),
    }
}

fn log_probs(scored: Scored) -> Result<(Vec<f64>, Arc<ModelInfo>), ApiError> {
    match scored.output {
        Output::LogProb(lp) => {
            ensure_finite(&lp, 1, "log-density")?;
            Ok((lp, scored.model))
        }
        _ => Err(ApiError::Engine(crate::engine::EngineError::Inference("unexpected output".into()))),
    }
}

fn rows_output(scored: Scored) -> Result<(Vec<f32>, Arc<ModelInfo>), ApiError> {
    match scored.output {
        Output::Rows(rows) => {
            ensure_finite(&rows, scored.model.dim(), "result")?;
            Ok((rows, scored.model))
        }
        _ => Err(ApiError::Engine(crate::engine::EngineError::Inference("unexpected output".into()))),
    }
}

#[utoipa::path(post, path = "/log_prob", tag = "scoring",
    request_body(content(
        (InputsRequest = "application/json"),
        (Vec<u8> = "application/x-npy")
    )),
    responses(
        (status = 200, description = "log p per row (NPY float64 [n] with `Accept: application/x-npy`)", body = LogProbResponse),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 503, description = "overloaded; retry after `Retry-After`", body = ErrorBody)
    ))]
pub async fn log_prob(
    State(state): State<AppState>,
    Target(target): Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info().clone();
    let m = inputs(&state, body, &info)?;
    let (lp, model) = log_probs(target.submit(Task::LogProb { rows: m.data }).await?)?;
    let (dim, eight_bit) = (model.dim(), model.card.input.eight_bit);
    let bpd: Vec<f64> = lp.iter().map(|v| bits_per_dim(*v, dim, eight_bit)).collect();
    for b in &bpd {
        state.metrics.scored_bits_per_dim.observe(*b);
    }
    state.drift.record(&model, &lp);
    let response = if wants_npy(&headers) {
        npy_response(&lp, &[lp.len() as u64])?
    } else {
        Json(LogProbResponse { log_prob: lp, bits_per_dim: bpd, model: model_ref(&model) }).into_response()
    };
    Ok(with_model(response, &model))
}

#[utoipa::path(post, path = "/score", tag = "scoring",
    params(ThresholdQuery),
    request_body(content(
        (ScoreRequest = "application/json"),
        (Vec<u8> = "application/x-npy")
    )),
    responses((status = 200, body = ScoreResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn score(
    State(state): State<AppState>,
    Target(target): Target,
    AppQuery(query): AppQuery<ThresholdQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info().clone();
    let (m, policy) = match body {
        Body::Json(b) => {
            let r = parse_json::<ScoreRequest>(&b)?;
            query.policy().check().map_err(|e| ApiError::BadRequest(e.to_string()))?;
            // The body's fields win; the query string fills in what the body leaves out.
            let body = Policy { kind: r.kind, threshold: r.threshold, contamination: r.contamination, fdr: r.fdr };
            let choice = body.threshold.is_some() || body.contamination.is_some() || body.fdr.is_some();
            let q = query.policy();
            let policy = Policy {
                kind: body.kind.or(q.kind),
                threshold: if choice { body.threshold } else { q.threshold },
                contamination: if choice { body.contamination } else { q.contamination },
                fdr: if choice { body.fdr } else { q.fdr },
            };
            (r.inputs, policy)
        }
        Body::Npy(b) => (parse_npy(&b)?, query.policy()),
    };
    m.check("inputs", info.dim(), state.limits.max_rows)?;
    m.check_domain("inputs", info.card.preprocess.domain())?;
    // Refuse a policy the model cannot serve before computing anything.
    let calibration = info.card.calibration.as_ref();
    judge(calibration, image(&info), &policy, &[], info.dim(), &[]).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // The rows go to the engine; only the image score kinds need them again afterwards.
    let rows = if resolve_kind(calibration, &policy) == ScoreKind::Likelihood { Vec::new() } else { m.data.clone() };
    let (lp, model) = log_probs(target.submit(Task::LogProb { rows: m.data }).await?)?;
    let j = judge(calibration, image(&model), &policy, &rows, model.dim(), &lp)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let percentile = lp.iter().map(|v| calibration.map_or(f64::NAN, |c| c.percentile(*v))).collect();
    let (dim, eight_bit) = (model.dim(), model.card.input.eight_bit);
    for v in &lp {
        state.metrics.scored_bits_per_dim.observe(bits_per_dim(*v, dim, eight_bit));
    }
    state.drift.record(&model, &lp);
    let flagged = j.is_anomaly.iter().filter(|a| **a).count() as u64;
    state.metrics.anomalies.with_label_values(&[&model.card.name]).inc_by(flagged);
    state.metrics.judged_rows.with_label_values(&[&model.card.name]).inc_by(j.is_anomaly.len() as u64);
    let response = ScoreResponse {
        log_prob: lp,
        percentile,
        score_kind: j.kind,
        scores: j.scores,
        p_value: j.p_values,
        is_anomaly: j.is_anomaly,
        threshold: j.threshold,
        model: model_ref(&model),
    };
    Ok(with_model(Json(response).into_response(), &model))
}

/// The [H, W] of an 8-bit image model, for image-only score kinds.
pub(super) fn image(info: &ModelInfo) -> Option<[usize; 2]> {
    info.card.image_shape().filter(|_| info.card.input.eight_bit)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// Rows of D numbers.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub inputs: Matrix,
    /// How many of each row's top features to list (default 5).
    pub top_k: Option<usize>,
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// How many of each row's top features to list (default 5).
    pub top_k: Option<usize>,
    /// `json` (default), or `png`: the first row's attributions as a heat map (image models).
    pub format: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ExplainResponse<'a> {
    /// Per row and feature: the log-likelihood gained by re-optimising that feature given the
    /// others (nats, ≥ 0). Large values are the features that make the row unlikely.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub attributions: RowsOut64<'a>,
    /// Per row, the indices of the largest attributions, largest first.
    pub top_features: Vec<Vec<usize>>,
    pub log_prob: Vec<f64>,
    /// The layout of one row ([H, W] for images): attributions reshape to it.
    pub shape: Vec<usize>,
    pub model: ModelRef,
}

/// Rows of f64 written as nested arrays without copying.
pub struct RowsOut64<'a> {
    pub data: &'a [f64],
    pub cols: usize,
}

impl Serialize for RowsOut64<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.data.len() / self.cols.max(1)))?;
        for row in self.data.chunks(self.cols.max(1)) {
            seq.serialize_element(row)?;
        }
        seq.end()
    }
}

fn explain_grid(info: &ModelInfo) -> usize {
    if info.card.input.eight_bit {
        crate::explain::IMAGE_GRID
    } else {
        crate::explain::TABULAR_GRID
    }
}

/// Rows one /explain request may carry for this model (at least 1).
pub(super) fn explain_row_limit(info: &ModelInfo) -> usize {
    (MAX_EXPLAIN_CANDIDATES / (info.dim() * explain_grid(info)).max(1)).max(1)
}

/// Largest `top_k` accepted.
pub const MAX_TOP_K: usize = 1_000_000;

/// Candidate rows one explanation request may score at most (rows × D × candidates per feature).
pub const MAX_EXPLAIN_CANDIDATES: usize = 1 << 18;

#[utoipa::path(post, path = "/explain", tag = "scoring", params(ExplainQuery),
    request_body(content((ExplainRequest = "application/json"), (Vec<u8> = "application/x-npy"))),
    responses((status = 200, description = "per-feature attributions (or a PNG heat map of the first row with `format=png`)", body = ExplainResponse),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn explain(
    State(state): State<AppState>,
    Target(target): Target,
    AppQuery(q): AppQuery<ExplainQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info().clone();
    let (m, top_k) = match body {
        Body::Json(b) => {
            let r = parse_json_integral::<ExplainRequest>(&b)?;
            (r.inputs, [r.top_k, q.top_k])
        }
        Body::Npy(b) => (parse_npy(&b)?, [None, q.top_k]),
    };
    if let Some(k) = top_k.iter().flatten().find(|k| **k > MAX_TOP_K) {
        return Err(ApiError::BadRequest(format!("`top_k` is {k}; the limit is {MAX_TOP_K}")));
    }
    // The body's value wins over the query string's.
    let top_k = top_k[0].or(top_k[1]);
    m.check("inputs", info.dim(), state.limits.max_rows)?;
    m.check_domain("inputs", info.card.preprocess.domain())?;
    let format = q.format.as_deref().unwrap_or("json");
    let shape = image(&info);
    match (format, shape) {
        ("json", _) | ("png", Some(_)) => {}
        ("png", None) => return Err(ApiError::BadRequest("`format=png` needs an 8-bit image model".into())),
        (other, _) => return Err(ApiError::BadRequest(format!("`format` must be json or png, got `{other}`"))),
    }
    let limit = explain_row_limit(&info);
    if m.rows > limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "explaining a row of {} features scores {} candidate rows, and one request may score {MAX_EXPLAIN_CANDIDATES}: \
             send at most {limit} rows per request (got {})",
            info.dim(),
            info.dim() * explain_grid(&info),
            m.rows
        )));
    }
    let top_k = top_k.unwrap_or(5).min(info.dim());
    let scored = target.submit(Task::Explain { rows: m.data }).await?;
    let model = scored.model;
    let Output::Explain { attributions, log_prob } = scored.output else {
        return Err(ApiError::Engine(crate::engine::EngineError::Inference("unexpected output".into())));
    };
    ensure_finite(&log_prob, 1, "log-density")?;
    let dim = model.dim();
    if let (true, Some([h, w])) = (format == "png", shape) {
        let mut png = Vec::new();
        crate::image::write_png_heatmap(&mut png, &attributions[..dim], h, w, 8)
            .map_err(|e| ApiError::BadRequest(format!("cannot draw the heat map: {e}")))?;
        let response = ([(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))], png).into_response();
        return Ok(with_model(response, &model));
    }
    let top_features = attributions.chunks(dim).map(|row| crate::explain::top_k(row, top_k)).collect();
    let response = ExplainResponse {
        attributions: RowsOut64 { data: &attributions, cols: dim },
        top_features,
        log_prob,
        shape: model.card.input.shape.clone(),
        model: model_ref(&model),
    };
    Ok(with_model(Json(response).into_response(), &model))
}

#[utoipa::path(post, path = "/encode", tag = "latents",
    request_body(content((InputsRequest = "application/json"), (Vec<u8> = "application/x-npy"))),
    responses((status = 200, description = "latents z = f(x) (NPY float32 [n, D] with Accept)", body = EncodeResponse),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn encode(
    State(state): State<AppState>,
    Target(target): Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info().clone();
    let m = inputs(&state, body, &info)?;
    let scored = target.submit(Task::Encode { rows: m.data }).await?;
    let model = scored.model;
    let Output::Encode { latents, log_prob } = scored.output else {
        return Err(ApiError::Engine(crate::engine::EngineError::Inference("unexpected output".into())));
    };
    let dim = model.dim();
    ensure_finite(&latents, dim, "latent")?;
    ensure_finite(&log_prob, 1, "log-density")?;
    let response = if wants_npy(&headers) {
        npy_response(&latents, &[(latents.len() / dim) as u64, dim as u64])?
    } else {
        let latents = RowsOut { data: &latents, cols: dim };
        Json(EncodeResponse { latents, log_prob, model: model_ref(&model) }).into_response()
    };
    Ok(with_model(response, &model))
}

#[utoipa::path(post, path = "/decode", tag = "latents",
    request_body(content((DecodeRequest = "application/json"), (Vec<u8> = "application/x-npy"))),
    responses((status = 200, body = OutputsResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn decode(
    State(state): State<AppState>,
    Target(target): Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info().clone();
    let m = match body {
        Body::Json(b) => parse_json::<DecodeRequest>(&b)?.latents,
        Body::Npy(b) => parse_npy(&b)?,
    };
    m.check("latents", info.dim(), state.limits.max_rows)?;
    m.check_domain("latents", Some((-super::MAX_LATENT, super::MAX_LATENT)))?;
    let (rows, model) = rows_output(target.submit(Task::Decode { latents: m.data }).await?)?;
    Ok(with_model(rows_response(&headers, &rows, model.dim(), &model, false)?, &model))
}

fn rows_response(
    headers: &HeaderMap,
    rows: &[f32],
    dim: usize,
    model: &ModelInfo,
    samples: bool,
) -> Result<Response, ApiError> {
    if wants_npy(headers) {
        return npy_response(rows, &[(rows.len() / dim) as u64, dim as u64]);
    }
    let out = RowsOut { data: rows, cols: dim };
    Ok(if samples {
        Json(SamplesResponse { samples: out, model: model_ref(model) }).into_response()
    } else {
        Json(OutputsResponse { outputs: out, model: model_ref(model) }).into_response()
    })
}

#[utoipa::path(get, path = "/sample", tag = "generation", params(SampleQuery),
    responses((status = 200, description = "samples (JSON, NPY, or a PNG grid)", body = SamplesResponse),
        (status = 400, body = ErrorBody)))]
pub async fn sample(
    State(state): State<AppState>,
    Target(target): Target,
    headers: HeaderMap,
    AppQuery(q): AppQuery<SampleQuery>,
) -> Result<Response, ApiError> {
    let n = q.n.unwrap_or(16);
    if n <= 0 {
        return Err(ApiError::BadRequest(format!("`n` must be at least 1, got {n}")));
    }
    if n as u64 > state.limits.max_samples as u64 {
        return Err(ApiError::BadRequest(format!("`n` is {n}; the limit is {}", state.limits.max_samples)));
    }
    let temperature = q.temperature.unwrap_or(1.0);
    if !(temperature > 0.0 && temperature <= super::MAX_TEMPERATURE) {
        return Err(ApiError::BadRequest(format!(
            "`temperature` must be in (0, {}], got {temperature}",
            super::MAX_TEMPERATURE
        )));
    }
    let format = q.format.as_deref().unwrap_or("json");
    let info = target.info().clone();
    if format == "png" && info.card.image_shape().is_none() {
        return Err(ApiError::BadRequest("`format=png` needs an image model".into()));
    }
    if !matches!(format, "json" | "npy" | "png") {
        return Err(ApiError::BadRequest(format!("`format` must be json, npy or png, got `{format}`")));
    }
    let task = Task::Sample { n: n as usize, seed: q.seed.unwrap_or(0), temperature };
    let (rows, model) = rows_output(target.submit(task).await?)?;
    let dim = model.dim();
    let response = match (format, model.card.image_shape()) {
        ("png", Some([h, w])) => {
            let mut png = Vec::new();
            let n = rows.len() / dim;
            let cols = (n as f64).sqrt().ceil() as usize;
            crate::image::write_png_grid(&mut png, &rows, n, h, w, cols)
                .map_err(|e| ApiError::BadRequest(format!("cannot draw the samples: {e}")))?;
            ([(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))], png).into_response()
        }
        ("npy", _) => npy_response(&rows, &[(rows.len() / dim) as u64, dim as u64])?,
        _ => rows_response(&headers, &rows, dim, &model, true)?,
    };
    Ok(with_model(response, &model))
}

#[utoipa::path(post, path = "/inpaint", tag = "generation", request_body = InpaintRequest,
    responses((status = 200, body = OutputsResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn inpaint(
    State(state): State<AppState>,
    Target(target): Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info().clone();
    let r = match body {
        Body::Json(b) => parse_json_integral::<InpaintRequest>(&b)?,
        Body::Npy(_) => {
            return Err(ApiError::UnsupportedMediaType("/inpaint takes JSON (inputs and mask)".into()));
        }
    };
    r.inputs.check("inputs", info.dim(), state.limits.max_rows)?;
    r.inputs.check_domain("inputs", info.card.preprocess.domain())?;
    if r.mask.rows != r.inputs.rows || r.mask.cols != r.inputs.cols {
        return Err(ApiError::BadRequest(format!(
            "`mask` is {}×{}, `inputs` is {}×{}: they must have the same shape",
            r.mask.rows, r.mask.cols, r.inputs.rows, r.inputs.cols
        )));
    }
    if let Some(i) = r.mask.data.iter().position(|v| *v != 0.0 && *v != 1.0) {
        return Err(ApiError::BadRequest(format!(
            "`mask` row {} column {} is {}: use 1 for missing, 0 for observed",
            i / r.mask.cols,
            i % r.mask.cols,
            r.mask.data[i]
        )));
    }
    let defaults = InpaintOptions::default();
    let options = InpaintOptions {
        steps: r.steps.unwrap_or(defaults.steps),
        step_size: r.step_size.unwrap_or(defaults.step_size),
        noise: r.noise.unwrap_or(defaults.noise),
        seed: r.seed.unwrap_or(defaults.seed),
    };
    if options.steps > state.limits.max_inpaint_steps {
        return Err(ApiError::BadRequest(format!(
            "`steps` is {}; the limit is {}",
            options.steps, state.limits.max_inpaint_steps
        )));
    }
    let valid = options.step_size > 0.0 && options.step_size <= 1e6 && (0.0..=1e6).contains(&options.noise);
    if !valid {
        return Err(ApiError::BadRequest("`step_size` must be in (0, 1e6] and `noise` in [0, 1e6]".into()));
    }
    let task = Task::Inpaint { rows: r.inputs.data, missing: r.mask.data, options };
    let (rows, model) = rows_output(target.submit(task).await?)?;
    Ok(with_model(rows_response(&headers, &rows, model.dim(), &model, false)?, &model))
}

#[utoipa::path(get, path = "/model", tag = "service",
    responses((status = 200, description = "the default model's card (calibration summarised)"),
        (status = 404, body = ErrorBody)))]
pub async fn model(Target(target): Target) -> Response {
    card_response(target.info())
}

#[utoipa::path(get, path = "/models/{name}", tag = "models",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, description = "the card of the name's live version (calibration summarised)"),
        (status = 404, body = ErrorBody)))]
pub async fn named_model(Target(target): Target) -> Response {
    card_response(target.info())
}

fn card_response(info: &ModelInfo) -> Response {
    let mut card = serde_json::to_value(&info.card).unwrap_or_default();
    card["device"] = info.device.clone().into();
    if let Some(c) = &info.card.calibration {
        card["calibration"] = serde_json::json!({
            "rows": c.log_probs.len(), "threshold_quantile": c.threshold_quantile, "threshold": c.threshold,
            "default_kind": c.default_kind,
        });
    }
    with_model(Json(card).into_response(), info)
}

#[derive(Serialize, ToSchema)]
pub struct SpectrumResponse {
    /// The scaling layer's log-scales s_d, one per input feature or pixel, in input order. A
    /// large s_d is a direction the model stretches, one that matters little to the density.
    pub log_scales: Vec<f64>,
    /// The layout of one row, e.g. [28, 28], to draw the values as a map.
    pub shape: Vec<usize>,
    pub model: ModelRef,
}

#[utoipa::path(get, path = "/spectrum", tag = "models",
    responses((status = 200, description = "the default model's learned scaling spectrum", body = SpectrumResponse),
        (status = 404, body = ErrorBody)))]
pub async fn spectrum(Target(target): Target) -> Response {
    let info = target.info();
    let body = SpectrumResponse {
        log_scales: info.log_scales.clone(),
        shape: info.card.input.shape.clone(),
        model: model_ref(info),
    };
    with_model(Json(body).into_response(), info)
}

#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, description = "the process is up")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", tag = "service",
    responses((status = 200, description = "every inference thread is up and holds every loaded model"),
        (status = 503, description = "starting, an inference thread is reloading after a fault, or shutting down", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let not_ready = if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        "not ready: shutting down"
    } else if !state.models.is_ready() {
        "not ready: no model is loaded, or an inference thread is (re)loading the models"
    } else {
        let models: Vec<ModelRef> = state.models.loaded().iter().map(|(h, _)| model_ref(h.info())).collect();
        let default = state.models.default_model().ok().map(|h| model_ref(h.info()));
        return Json(serde_json::json!({"status": "ready", "model": default, "models": models})).into_response();
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error: not_ready.into() })).into_response()
}

#[utoipa::path(get, path = "/models/{name}/drift", tag = "models",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, description = "the name's recent log_probs against its calibration rows (KS test)", body = DriftReport),
        (status = 404, description = "no such model is loaded", body = ErrorBody),
        (status = 409, description = "the model has no calibration data", body = ErrorBody)))]
pub async fn drift(State(state): State<AppState>, Target(target): Target) -> Result<Json<DriftReport>, ApiError> {
    state
        .drift
        .report_with_histogram(target.info())
        .map(Json)
        .ok_or_else(|| ApiError::Conflict("this model has no calibration data to compare with".into()))
}

#[utoipa::path(get, path = "/metrics", tag = "service", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // The drift gauges are computed at each scrape, for the live versions.
    for (h, live) in state.models.loaded() {
        let info = h.info();
        if let (true, Some(r)) = (live, state.drift.report(info)) {
            let name = [info.card.name.as_str()];
            state.metrics.drift_ks_statistic.with_label_values(&name).set(r.ks_statistic);
            state.metrics.drift_p_value.with_label_values(&name).set(r.p_value);
            state.metrics.drift_window_rows.with_label_values(&name).set(r.window_rows as i64);
        }
    }
    let ct = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, ct)], state.metrics.render()).into_response()
}

/// The OpenAPI document for the default model (`/openapi.json`) or a named one.
pub async fn openapi(State(state): State<AppState>, Target(target): Target) -> Json<serde_json::Value> {
    Json(super::openapi::document(&state, target.info()))
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
