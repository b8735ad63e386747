//! `flowscore serve`: configuration, start-up (load, warm up, bind) and graceful shutdown.
use crate::engine::{Engine, EngineConfig};
use crate::http::{self, AppState, Limits};
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Every setting is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Model folder to serve.
    #[arg(long, env = "FLOWSCORE_MODEL", default_value = "models/fashion-mnist")]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "FLOWSCORE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Largest request body accepted, bytes.
    #[arg(long, env = "FLOWSCORE_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Most rows in one request.
    #[arg(long, env = "FLOWSCORE_MAX_ROWS", default_value_t = 10_000)]
    pub max_rows: usize,
    /// Largest `n` for /sample.
    #[arg(long, env = "FLOWSCORE_MAX_SAMPLES", default_value_t = 1024)]
    pub max_samples: usize,
    /// Largest `steps` for /inpaint.
    #[arg(long, env = "FLOWSCORE_MAX_INPAINT_STEPS", default_value_t = 2000)]
    pub max_inpaint_steps: usize,
    /// Inference threads, each with its own model copy (1 is best on 2 cores: libtorch already
    /// uses both for one batch).
    #[arg(long, env = "FLOWSCORE_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Merge concurrent requests into one forward pass.
    #[arg(long, env = "FLOWSCORE_BATCHING", default_value_t = true, action = clap::ArgAction::Set)]
    pub batching: bool,
    /// Row budget of one merged forward pass.
    #[arg(long, env = "FLOWSCORE_MAX_BATCH_ROWS", default_value_t = 1024)]
    pub max_batch_rows: usize,
    /// Extra wait for more requests once a batch has merged some, microseconds.
    #[arg(long, env = "FLOWSCORE_MAX_WAIT_US", default_value_t = 500)]
    pub max_wait_us: u64,
    /// Requests that may wait for inference; more are refused with 503 + Retry-After.
    #[arg(long, env = "FLOWSCORE_QUEUE_DEPTH", default_value_t = 1024)]
    pub queue_depth: usize,
    /// Per-request time limit in the engine, milliseconds.
    #[arg(long, env = "FLOWSCORE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

impl ServeArgs {
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            workers: self.workers.max(1),
            batching: self.batching,
            max_batch_rows: self.max_batch_rows.max(1),
            max_wait: Duration::from_micros(self.max_wait_us),
            queue_depth: self.queue_depth.max(1),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_rows: self.max_rows,
            max_samples: self.max_samples,
            max_inpaint_steps: self.max_inpaint_steps,
        }
    }
}

/// Loads the model, binds, serves until `shutdown` resolves, then finishes the requests in
/// flight and returns.
pub async fn run(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    tracing::info!(?args, "starting");
    let metrics = Metrics::new();
    let engine = {
        let (dir, config, metrics) = (args.model.clone(), args.engine_config(), metrics.clone());
        tokio::task::spawn_blocking(move || Engine::start(&dir, config, metrics)).await??
    };
    let info = engine.info();
    tracing::info!(model = %info.card.name, version = %info.card.version, dir = %info.dir.display(), "model loaded");
    let state = AppState {
        engine,
        metrics,
        limits: args.limits(),
    };
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    serve_on(listener, state, shutdown).await
}

/// Serves `state` on an already bound listener until `shutdown`, then drains.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing requests in flight");
}
