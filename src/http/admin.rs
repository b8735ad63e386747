//! Admin routes (bearer token): training jobs and model activation. Mounted only when a token
//! is configured. Also the public model listing.
use super::body::{parse_json_integral, parse_npy, Body, Matrix};
use super::error::{ApiError, ErrorBody};
use super::handlers::AppQuery;
use super::AppState;
use crate::data::Dataset;
use crate::jobs::{DataSource, DatasetSpec, JobError, JobSpec, JobStatus, Promotion};
use crate::store::ModelId;
use crate::train::TrainConfig;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Busy(_) | JobError::Finished(_) | JobError::NotResumable { .. } | JobError::ResumeFailed(..) => {
                ApiError::Conflict(e.to_string())
            }
            JobError::BadRequest(m) => ApiError::BadRequest(m),
            JobError::Forbidden(m) => ApiError::Forbidden(m),
            JobError::NotFound(_) | JobError::DatasetMissing(_) => ApiError::NotFound(e.to_string()),
        }
    }
}

/// 401 without a bearer token, 403 with the wrong one.
/// Store-changing requests on a scorer: 409, naming where to send them.
pub async fn require_store_writer(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.role.writes_store() {
        return Ok(next.run(req).await);
    }
    // Read the body first: an answer sent before it closes the connection, and a proxy in
    // front may then lose the answer.
    let _ = axum::body::to_bytes(req.into_body(), state.limits.max_body_bytes).await;
    let target = match &state.trainer_url {
        Some(url) => format!("the trainer at {url}"),
        None => "the trainer replica (`flowscore serve --role trainer`)".into(),
    };
    Err(ApiError::Conflict(format!(
        "this replica is a scorer: it follows the model store and never writes it; send training and activation \
         requests to {target}"
    )))
}

pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Err(ApiError::NotFound("admin routes are disabled (no admin token configured)".into()));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(ApiError::Forbidden("wrong admin token".into()));
    }
    Ok(next.run(req).await)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// Model name; the new model becomes the next version of it (default: the live model's).
    pub name: Option<String>,
    /// A file in the server's data folder...
    pub dataset: Option<DatasetSpec>,
    /// ...or the rows themselves.
    #[schema(value_type = Option<Vec<Vec<f64>>>)]
    pub inputs: Option<Matrix>,
    pub promote: Option<Promotion>,
    /// Hyperparameters overriding the defaults of `flowscore train` (same names, snake_case).
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

/// For NPY uploads, where the body is the rows.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrainQuery {
    pub name: Option<String>,
    pub promote: Option<Promotion>,
    pub epochs: Option<usize>,
    pub max_seconds: Option<f64>,
    pub seed: Option<u64>,
}

/// Defaults of `flowscore train` with the request's overrides; unknown names are refused.
fn merge_config(overrides: Option<serde_json::Value>) -> Result<TrainConfig, ApiError> {
    let mut base = serde_json::to_value(TrainConfig::default()).unwrap_or_default();
    if let Some(over) = overrides {
        let serde_json::Value::Object(over) = over else {
            return Err(ApiError::BadRequest("`config` must be an object".into()));
        };
        for (k, v) in over {
            match base.get_mut(&k) {
                Some(slot) if k != "name" => *slot = v,
                _ => return Err(ApiError::BadRequest(format!("unknown hyperparameter `{k}` in `config`"))),
            }
        }
    }
    let config: TrainConfig =
        serde_json::from_value(base).map_err(|e| ApiError::BadRequest(format!("`config`: {e}")))?;
    config.validate().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(config)
}

#[utoipa::path(post, path = "/train", tag = "admin", params(TrainQuery),
    request_body(content((TrainRequest = "application/json"), (Vec<u8> = "application/x-npy"))),
    responses((status = 202, description = "job accepted", body = JobStatus), (status = 400, body = ErrorBody),
        (status = 404, description = "no such dataset in the server's data folder", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "a job is already queued or running", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start_training(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<TrainQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let jobs = state.jobs.clone().ok_or_else(|| ApiError::NotFound("training is not enabled".into()))?;
    let (request, rows) = match body {
        Body::Json(b) => {
            let mut r = parse_json_integral::<TrainRequest>(&b)?;
            let rows = r.inputs.take();
            (r, rows)
        }
        Body::Npy(b) => {
            let mut config = serde_json::Map::new();
            if let Some(e) = query.epochs {
                config.insert("epochs".into(), e.into());
            }
            if let Some(s) = query.max_seconds {
                config.insert("max_seconds".into(), s.into());
            }
            if let Some(s) = query.seed {
                config.insert("seed".into(), s.into());
            }
            let r = TrainRequest {
                name: query.name,
                dataset: None,
                inputs: None,
                promote: query.promote,
                config: Some(config.into()),
            };
            (r, Some(parse_npy(&b)?))
        }
    };
    let config = merge_config(request.config)?;
    let name = match request.name {
        Some(name) => name,
        None => state
            .models
            .default_name()
            .ok_or_else(|| ApiError::BadRequest("no default model to train a new version of: give `name`".into()))?,
    };
    let promote = request.promote.unwrap_or_default();
    let (data, described, source) = match (rows, request.dataset) {
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("give either `dataset` or `inputs`, not both".into())),
        (None, None) => return Err(ApiError::BadRequest("missing training data: `dataset.path` or `inputs`".into())),
        (Some(m), None) => {
            if m.rows < 3 || m.cols < 2 {
                return Err(ApiError::BadRequest(format!(
                    "{} uploaded rows of {} values: training needs at least 3 rows (2 to train on, 1 to validate) of at least 2 values",
                    m.rows, m.cols
                )));
            }
            if m.rows > state.limits.max_upload_rows {
                return Err(ApiError::PayloadTooLarge(format!(
                    "{} uploaded rows; the limit is {} (put larger data in the data folder)",
                    m.rows, state.limits.max_upload_rows
                )));
            }
            let ds = Dataset::from_rows(m.data, m.rows, m.cols, "uploaded rows")
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            (ds, format!("{} uploaded rows", m.rows), DataSource::Upload)
        }
        (None, Some(spec)) => {
            let jobs = jobs.clone();
            let described = spec.path.clone().unwrap_or_default();
            let file = spec.clone();
            let ds = tokio::task::spawn_blocking(move || jobs.load_dataset(&spec))
                .await
                .map_err(|e| ApiError::BadRequest(e.to_string()))??;
            (ds, described, DataSource::File(file))
        }
    };
    let spec = JobSpec { name, dataset: described, source, promote, config };
    let status = jobs.submit(spec, data)?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

#[utoipa::path(get, path = "/train", tag = "admin", responses((status = 200, body = Vec<JobStatus>)), security(("bearer" = [])))]
pub async fn list_jobs(State(state): State<AppState>) -> Result<Json<Vec<JobStatus>>, ApiError> {
    let jobs = state.jobs.ok_or_else(|| ApiError::NotFound("training is not enabled".into()))?;
    Ok(Json(jobs.list()))
}

#[utoipa::path(get, path = "/train/{id}", tag = "admin",
    responses((status = 200, body = JobStatus), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobStatus>, ApiError> {
    let jobs = state.jobs.ok_or_else(|| ApiError::NotFound("training is not enabled".into()))?;
    Ok(Json(jobs.get(&id)?))
}

#[utoipa::path(delete, path = "/train/{id}", tag = "admin",
    responses((status = 202, description = "cancelling (within one batch)", body = JobStatus), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let jobs = state.jobs.ok_or_else(|| ApiError::NotFound("training is not enabled".into()))?;
    Ok((StatusCode::ACCEPTED, Json(jobs.cancel(&id)?)).into_response())
}

#[utoipa::path(post, path = "/train/{id}/resume", tag = "admin",
    responses((status = 202, description = "resuming from the last finished epoch's checkpoint", body = JobStatus),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job is not interrupted, another job is running, or its data is gone", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let jobs = state.jobs.ok_or_else(|| ApiError::NotFound("training is not enabled".into()))?;
    let status = tokio::task::spawn_blocking(move || jobs.resume(&id))
        .await
        .map_err(|e| ApiError::Engine(crate::engine::EngineError::Inference(e.to_string())))??;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

#[utoipa::path(get, path = "/models", tag = "models",
    responses((status = 200, description = "every model name with its versions: state (loaded, loading, available, unavailable with the reason), live flag and card")))]
pub async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let models = state.models.clone();
    let status = tokio::task::spawn_blocking(move || models.status()).await.unwrap_or_default();
    let default = state.models.default_model().ok().map(|h| {
        let c = &h.info().card;
        serde_json::json!({"name": c.name, "version": c.version})
    });
    let names: Vec<serde_json::Value> = status
        .into_iter()
        .map(|n| {
            let versions: Vec<serde_json::Value> = n
                .versions
                .into_iter()
                .map(|v| {
                    let mut out = serde_json::to_value(&v.state).unwrap_or_default();
                    out["version"] = v.version.into();
                    out["live"] = v.live.into();
                    out["card"] = v.card.map(card_summary).unwrap_or_default();
                    out
                })
                .collect();
            serde_json::json!({"name": n.name, "live": n.live, "store_live": n.store_live, "default": n.default, "versions": versions})
        })
        .collect();
    Json(serde_json::json!({"role": state.role, "default": default, "models": names}))
}

/// A card without its calibration rows and training history.
fn card_summary(mut card: crate::store::ModelCard) -> serde_json::Value {
    let summary = card.calibration.take().map(
        |c| serde_json::json!({"rows": c.log_probs.len(), "threshold": c.threshold, "default_kind": c.default_kind}),
    );
    let mut card = serde_json::to_value(card).unwrap_or_default();
    card["calibration"] = summary.unwrap_or_default();
    if let Some(t) = card.get_mut("training").and_then(|t| t.as_object_mut()) {
        t.remove("history");
    }
    card
}

#[utoipa::path(post, path = "/models/{name}/{version}/activate", tag = "admin",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "now the name's live version (loaded first if it was not)"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the version failed validation, or the memory budget is used up", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn activate(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = ModelId { name, version };
    let handle = state.models.activate(&id).await?;
    let c = &handle.info().card;
    Ok(Json(serde_json::json!({"live": {"name": c.name, "version": c.version}})))
}

/// `/models/{name}/load` or `/models/{name}/versions/{version}/load`.
#[derive(Deserialize)]
pub struct NameVersion {
    name: String,
    version: Option<String>,
}

#[utoipa::path(post, path = "/models/{name}/load", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 200, description = "loaded: the name's live version, or with /versions/{version} that version beside it"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the version failed validation, or the memory budget is used up", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn load_model(
    State(state): State<AppState>,
    Path(p): Path<NameVersion>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // A name alone loads its live version; a version is pinned beside the live one.
    let live = p.version.is_none() || state.models.resolve(&p.name, None).is_err();
    let handle = state.models.load(&p.name, p.version.as_deref(), live).await?;
    let c = &handle.info().card;
    let is_live = state.models.resolve(&p.name, None).is_ok_and(|h| h.info().generation == handle.info().generation);
    Ok(Json(serde_json::json!({"loaded": {"name": c.name, "version": c.version}, "live": is_live})))
}

#[utoipa::path(post, path = "/models/{name}/unload", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 200, description = "unloaded: every version of the name, or with /versions/{version} that one"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the version is the name's live version", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn unload_model(
    State(state): State<AppState>,
    Path(p): Path<NameVersion>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let versions = state.models.unload(&p.name, p.version.as_deref()).await?;
    Ok(Json(serde_json::json!({"unloaded": {"name": p.name, "versions": versions}})))
}
