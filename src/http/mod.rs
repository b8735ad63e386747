//! The HTTP layer: routes, limits, request ids, logs and metrics. Handlers never touch tensors;
//! they talk to the engine.
mod admin;
mod admission;
mod body;
mod dashboard;
mod error;
mod handlers;
mod oip;
mod oip_codec;
mod openapi;
pub mod server;

pub use admission::Admission;
pub use error::ApiError;
pub use handlers::MODEL_HEADER;

use crate::drift::Drift;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::models::Models;
use crate::role::Role;
use crate::store::Registry;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;

/// Largest `temperature` for /sample: beyond it the samples overflow float32 on most models.
pub const MAX_TEMPERATURE: f64 = 100.0;

/// Largest latent magnitude /decode takes: the priors put no float32-visible mass beyond it
/// (density below e^-10000), and decoding far past it overflows float32.
pub const MAX_LATENT: f64 = 1e4;

/// Limits per request and per connection (the engine has its own queue limits).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_rows: usize,
    pub max_samples: usize,
    pub max_inpaint_steps: usize,
    /// Most rows a training request may upload.
    pub max_upload_rows: usize,
    /// A connection must send a request's headers within this time (also the keep-alive idle
    /// limit between requests).
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this time.
    pub body_read_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Declared body bytes that admitted scoring requests may hold at once.
    pub max_inflight_bytes: usize,
    /// How long a scoring request may wait for admission (body unread) before its 503.
    pub admission_wait: Duration,
    /// At shutdown, how long open connections may take to finish their requests.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_rows: 10_000,
            max_samples: 1024,
            max_inpaint_steps: 2000,
            max_upload_rows: 100_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 2048,
            max_inflight_bytes: 1 << 30,
            admission_wait: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    /// What is loaded, and the engine that runs it.
    pub models: Models,
    pub metrics: Metrics,
    pub limits: Limits,
    /// Where model versions live (`<root>/<name>/<version>/`).
    pub registry: Registry,
    /// Admin routes exist only when this is set.
    pub admin_token: Option<Arc<str>>,
    /// Background training; None disables /train.
    pub jobs: Option<Jobs>,
    /// Slots and body bytes of the scoring requests being served.
    pub admission: Admission,
    /// Set once shutdown has begun: /ready answers 503.
    pub draining: Arc<AtomicBool>,
    /// Each model's recent log_probs, for the drift test.
    pub drift: Drift,
    /// A scorer answers store-changing admin requests with 409, naming `trainer_url`.
    pub role: Role,
    pub trainer_url: Option<Arc<str>>,
    /// How often a scorer follows the store (and a replica syncs with the remote store).
    pub store_poll: Duration,
    /// The shared object store, when `--models-dir` is a local copy of it.
    pub remote: Option<Arc<crate::store::remote::RemoteStore>>,
}

impl AppState {
    /// Scoring only: no admin routes, no training.
    pub fn new(models: Models, metrics: Metrics, limits: Limits) -> AppState {
        let registry = models.registry().clone();
        let admission = Admission::new(models.engine().config().queue_depth, limits.max_inflight_bytes);
        let draining = Arc::new(AtomicBool::new(false));
        let drift = Drift::new(crate::drift::DEFAULT_WINDOW);
        AppState {
            models,
            metrics,
            limits,
            registry,
            admin_token: None,
            jobs: None,
            admission,
            draining,
            drift,
            role: Role::All,
            trainer_url: None,
            store_poll: Duration::ZERO,
            remote: None,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowscore",
        description = "Exact density scoring with NICE normalizing flows"
    ),
    paths(
        handlers::log_prob,
        handlers::score,
        handlers::encode,
        handlers::decode,
        handlers::sample,
        handlers::inpaint,
        handlers::explain,
        handlers::model,
        handlers::named_model,
        handlers::drift,
        handlers::spectrum,
        handlers::health,
        handlers::ready,
        handlers::metrics,
        admin::start_training,
        admin::list_jobs,
        admin::job,
        admin::cancel_job,
        admin::resume_job,
        admin::list_models,
        admin::activate,
        admin::load_model,
        admin::unload_model
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole service as a router; tests drive it with `oneshot`, `serve` puts it on a socket.
pub fn router(state: AppState) -> Router {
    let max_body = state.limits.max_body_bytes;
    // What writes the store (jobs, versions, live pointers): a scorer refuses it with 409.
    let store_writes = Router::new()
        .route("/train", post(admin::start_training).get(admin::list_jobs))
        .route("/train/{id}", get(admin::job).delete(admin::cancel_job))
        .route("/train/{id}/resume", post(admin::resume_job))
        .route("/models/{name}/{version}/activate", post(admin::activate))
        .route("/models/{name}/versions/{version}/activate", post(admin::activate))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin::require_store_writer));
    // Loads and unloads change only this replica's memory.
    let admin = Router::new()
        .merge(store_writes)
        .route("/models/{name}/load", post(admin::load_model))
        .route("/models/{name}/unload", post(admin::unload_model))
        .route("/models/{name}/versions/{version}/load", post(admin::load_model))
        .route("/models/{name}/versions/{version}/unload", post(admin::unload_model))
        .route("/v2/repository/index", post(oip::repository_index))
        .route("/v2/repository/models/{name}/load", post(oip::repository_load))
        .route("/v2/repository/models/{name}/unload", post(oip::repository_unload))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin::require_admin));
    let admin = if state.admin_token.is_some() { admin } else { Router::new() };
    // Admitted (or refused) before their bodies are read. The same routes serve the default
    // model, a name's live version, and a loaded version.
    let mut scoring = Router::new();
    for prefix in ["", "/models/{name}", "/models/{name}/versions/{version}"] {
        scoring = scoring
            .route(&format!("{prefix}/log_prob"), post(handlers::log_prob))
            .route(&format!("{prefix}/score"), post(handlers::score))
            .route(&format!("{prefix}/encode"), post(handlers::encode))
            .route(&format!("{prefix}/decode"), post(handlers::decode))
            .route(&format!("{prefix}/sample"), get(handlers::sample))
            .route(&format!("{prefix}/inpaint"), post(handlers::inpaint))
            .route(&format!("{prefix}/explain"), post(handlers::explain));
    }
    let scoring = scoring
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(oip::infer))
        .route_layer(middleware::from_fn_with_state(state.clone(), admission::admit));
    let protocol = Router::new()
        .route("/v2", get(oip::server_metadata))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2/models/{name}", get(oip::model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(oip::model_metadata))
        .route("/v2/models/{name}/ready", get(oip::model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(oip::model_ready));
    Router::new()
        .merge(admin)
        .merge(scoring)
        .merge(protocol)
        .route("/models", get(admin::list_models))
        .route("/models/{name}", get(handlers::named_model))
        .route("/models/{name}/versions/{version}", get(handlers::named_model))
        .route("/models/{name}/openapi.json", get(handlers::openapi))
        .route("/models/{name}/drift", get(handlers::drift))
        .route("/spectrum", get(handlers::spectrum))
        .route("/models/{name}/spectrum", get(handlers::spectrum))
        .route("/models/{name}/versions/{version}/spectrum", get(handlers::spectrum))
        .route("/model", get(handlers::model))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .route("/", get(dashboard::root))
        .route("/dashboard", get(dashboard::root))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/{file}", get(dashboard::asset))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Request count, latency and in-flight gauge, labelled by the matched route (never the raw
/// path, which would explode the label set).
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    state.metrics.in_flight.inc();
    let response = next.run(req).await;
    state.metrics.in_flight.dec();
    let status = response.status().as_u16().to_string();
    state.metrics.requests.with_label_values(&[&route, &method, &status]).inc();
    state.metrics.request_seconds.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    response
}
