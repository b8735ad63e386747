//! `flowscore serve`: configuration, start-up (load, warm up, bind) and graceful shutdown.
use crate::engine::{Engine, EngineConfig};
use crate::http::{self, AppState, Limits};
use crate::jobs::{Jobs, JobsConfig};
use crate::kernels::{self, Cpu, CpuKernels};
use crate::metrics::Metrics;
use crate::models::{Models, ModelsConfig, VersionState};
use crate::role::Role;
use crate::store::remote::RemoteStore;
use crate::store::Registry;
use anyhow::{Context, Result};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Every setting is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Folder of model versions: `<models-dir>/<name>/<version>/`, with each name's
    /// `live.json` and the default name's `default.json`.
    #[arg(long, env = "FLOWSCORE_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// `all` (one process does everything), `scorer` (serves, follows the store's live pointers,
    /// never writes the store or trains) or `trainer` (runs training jobs, writes the store).
    #[arg(long, env = "FLOWSCORE_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// An S3-compatible object store shared by the replicas, `s3://bucket/prefix` (credentials,
    /// region and endpoint from `AWS_*` variables); `--models-dir` is then this replica's local
    /// copy. Unset: `--models-dir` itself is the shared store (a local or shared filesystem).
    #[arg(long, env = "FLOWSCORE_STORE_URL")]
    pub store_url: Option<String>,
    /// How often a scorer reads the store's live pointers (and, with `--store-url`, how often a
    /// writer uploads new versions), in milliseconds (0: never).
    #[arg(long, env = "FLOWSCORE_STORE_POLL_MS", default_value_t = 2000)]
    pub store_poll_ms: u64,
    /// Where store-changing admin requests go (named in a scorer's 409 answer), e.g.
    /// http://flowscore-trainer:8080.
    #[arg(long, env = "FLOWSCORE_TRAINER_URL")]
    pub trainer_url: Option<String>,
    /// Models to serve (repeatable; the variable takes a comma-separated list): `name` (its live
    /// version), `name/version`, or a model folder path. Default: every name in the models folder.
    #[arg(long = "model", env = "FLOWSCORE_MODEL", value_delimiter = ',')]
    pub models: Vec<String>,
    /// The model the unprefixed routes (/log_prob, ...) serve. Default: the first `--model`, else
    /// the recorded default (`default.json`), else the first name.
    #[arg(long, env = "FLOWSCORE_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Recent scored rows per model that the drift test compares with the calibration rows.
    #[arg(long, env = "FLOWSCORE_DRIFT_WINDOW", default_value_t = crate::drift::DEFAULT_WINDOW)]
    pub drift_window: usize,
    /// Megabytes the loaded models may hold in all (estimated from their parameters, per
    /// inference thread); a load beyond it is refused with 409. 0: no limit.
    #[arg(long, env = "FLOWSCORE_MEMORY_BUDGET_MB", default_value_t = 0)]
    pub memory_budget_mb: u64,
    /// Folder that training jobs may read data files from.
    #[arg(long, env = "FLOWSCORE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Bearer token for the admin routes (/train, activate). Without it they are off.
    #[arg(long, env = "FLOWSCORE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// libtorch threads of a training job (scoring keeps the rest).
    #[arg(long, env = "FLOWSCORE_TRAIN_THREADS", default_value_t = 1)]
    pub train_threads: usize,
    /// Most rows a training request may upload.
    #[arg(long, env = "FLOWSCORE_MAX_UPLOAD_ROWS", default_value_t = 100_000)]
    pub max_upload_rows: usize,
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
    /// Row budget of one merged forward pass. Default: 1024 on the CPU, 16384 on a GPU.
    #[arg(long, env = "FLOWSCORE_MAX_BATCH_ROWS")]
    pub max_batch_rows: Option<usize>,
    /// Longest a batch waits for the requests it expects (as many as the last batch merged),
    /// microseconds. A lone client never waits. Default: 2000 on the CPU, 1000 on a GPU.
    #[arg(long, env = "FLOWSCORE_MAX_WAIT_US")]
    pub max_wait_us: Option<u64>,
    /// Scoring requests admitted at once (being read, queued or computed); more are refused with
    /// 503 + Retry-After before their bodies are read.
    #[arg(long, env = "FLOWSCORE_QUEUE_DEPTH", default_value_t = 1024)]
    pub queue_depth: usize,
    /// A client must send a request's headers within this time, milliseconds; it is also how long
    /// a keep-alive connection may idle between requests.
    #[arg(long, env = "FLOWSCORE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A client must send a request's whole body within this time, milliseconds (408 after).
    #[arg(long, env = "FLOWSCORE_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// Open connections at most; one more is answered 503 and closed at once.
    #[arg(long, env = "FLOWSCORE_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,
    /// Megabytes of declared request bodies the admitted scoring requests may hold at once; with
    /// `--queue-depth` requests it bounds the work admitted before a body is read (503 beyond).
    #[arg(long, env = "FLOWSCORE_MAX_INFLIGHT_MB", default_value_t = 1024)]
    pub max_inflight_mb: usize,
    /// How long a scoring request that finds admission full waits for room, its body unread,
    /// before its 503, milliseconds (0: refuse at once).
    #[arg(long, env = "FLOWSCORE_ADMISSION_WAIT_MS", default_value_t = 5000)]
    pub admission_wait_ms: u64,
    /// At shutdown, how long open connections and a training job may take to stop, milliseconds.
    #[arg(long, env = "FLOWSCORE_DRAIN_TIMEOUT_MS", default_value_t = 20_000)]
    pub drain_timeout_ms: u64,
    /// Per-request time limit in the engine, milliseconds.
    #[arg(long, env = "FLOWSCORE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Where models run: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when libtorch sees a GPU).
    #[arg(long, env = "FLOWSCORE_DEVICE", default_value = "auto", value_parser = crate::device::parse)]
    pub device: tch::Device,
    /// CPU kernels of the coupling MLPs: `auto` (the measured rule for this CPU), or one kernel at
    /// every batch size: `plain` (libtorch's own layers), `mkl`, `onednn`, `tiled` (see
    /// docs/kernels.md). A kernel this machine cannot run stops the start with an error.
    #[arg(long, env = "FLOWSCORE_CPU_KERNELS", value_enum, default_value_t = CpuKernels::Auto)]
    pub cpu_kernels: CpuKernels,
    /// Threads of the async HTTP runtime. Default: the cores libtorch's threads leave free, at
    /// least 1.
    #[arg(long, env = "FLOWSCORE_HTTP_THREADS")]
    pub http_threads: Option<usize>,
}

impl ServeArgs {
    /// The HTTP runtime's thread count. Its threads compete with libtorch's for the cores, so by
    /// default it takes the cores libtorch leaves (docs/architecture.md).
    pub fn http_threads(&self) -> usize {
        self.http_threads
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                cores.saturating_sub(tch::get_num_threads().max(1) as usize)
            })
            .max(1)
    }

    pub fn engine_config(&self) -> EngineConfig {
        let batching = crate::engine::BatchDefaults::for_device(self.device);
        EngineConfig {
            workers: self.workers.max(1),
            batching: self.batching,
            max_batch_rows: self.max_batch_rows.unwrap_or(batching.max_batch_rows).max(1),
            max_wait: self.max_wait_us.map_or(batching.max_wait, Duration::from_micros),
            queue_depth: self.queue_depth.max(1),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            cpu_kernels: self.cpu_kernels,
            device: self.device,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_rows: self.max_rows,
            max_samples: self.max_samples,
            max_inpaint_steps: self.max_inpaint_steps,
            max_upload_rows: self.max_upload_rows,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            body_read_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            max_inflight_bytes: self.max_inflight_mb.max(1).saturating_mul(1 << 20),
            admission_wait: Duration::from_millis(self.admission_wait_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        }
    }
}

/// Loads the model, binds, serves until `shutdown` resolves, then finishes the requests in
/// flight and returns.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let state = build_state(&args).await?;
    let listener = tokio::net::TcpListener::bind(&args.bind).await.with_context(|| format!("binding {}", args.bind))?;
    serve_on(listener, state, shutdown).await
}

/// Everything but the socket: resolves and loads the model, starts the engine and the jobs.
pub async fn build_state(args: &ServeArgs) -> Result<AppState> {
    let mut shown = args.clone();
    shown.admin_token = shown.admin_token.map(|_| "<redacted>".into());
    tracing::info!(args = ?shown, "starting");
    let engine_config = args.engine_config();
    tracing::info!(
        device = %crate::device::name(args.device),
        max_batch_rows = engine_config.max_batch_rows,
        max_wait_us = engine_config.max_wait.as_micros() as u64,
        "inference device"
    );
    let cpu = Cpu::detect();
    kernels::check(cpu, args.cpu_kernels)?;
    let chosen: Vec<&str> = kernels::kernels_used(cpu, args.cpu_kernels).iter().map(|k| k.name()).collect();
    tracing::info!(policy = %args.cpu_kernels, cpu = %cpu, kernels = %chosen.join(","), "cpu kernels");
    let registry = Registry::new(&args.models_dir);
    // A scorer shares the store with a trainer whose temporaries may be in progress.
    if args.role.writes_store() || args.store_url.is_some() {
        registry.clean_temporaries();
    }
    let remote = match &args.store_url {
        Some(url) => {
            let remote = RemoteStore::open(url)?;
            // A writer mirrors every version (it numbers the next one); a scorer what is live.
            let pulled = remote
                .pull(&registry, args.role.writes_store())
                .await
                .with_context(|| format!("copying models from {url} into {}", args.models_dir.display()))?;
            tracing::info!(store = %url, pulled = ?pulled, "synced from the remote store");
            Some(Arc::new(remote))
        }
        None => None,
    };
    let metrics = Metrics::new();
    let engine = {
        let (config, metrics) = (engine_config, metrics.clone());
        tokio::task::spawn_blocking(move || Engine::start(config, metrics)).await??
    };
    let config = ModelsConfig {
        selection: args.models.clone(),
        default: args.default_model.clone(),
        memory_budget: (args.memory_budget_mb > 0).then(|| args.memory_budget_mb.saturating_mul(1_000_000)),
        follower: !args.role.writes_store(),
    };
    let models = Models::start(engine, registry.clone(), metrics.clone(), config).await;
    // A server that can serve nothing it was asked to is a configuration error, not a start.
    if models.loaded().is_empty() {
        let reasons: Vec<String> = models
            .status()
            .into_iter()
            .flat_map(|n| n.versions.into_iter().map(move |v| (n.name.clone(), v)))
            .filter_map(|(name, v)| match v.state {
                VersionState::Unavailable { reason } => Some(format!("{name}/{}: {reason}", v.version)),
                _ => None,
            })
            .collect();
        anyhow::bail!(
            "no model could be loaded from {} (selection: {}){}{}",
            args.models_dir.display(),
            if args.models.is_empty() { "every name".to_string() } else { args.models.join(", ") },
            if reasons.is_empty() { "" } else { "; " },
            reasons.join("; ")
        );
    }
    if let Some(wanted) = &args.default_model {
        anyhow::ensure!(models.resolve(wanted, None).is_ok(), "--default-model `{wanted}` is not loaded");
    }
    for (h, live) in models.loaded() {
        let info = h.info();
        tracing::info!(model = %info.label(), live, dir = %info.dir.display(), "serving");
    }
    tracing::info!(default = ?models.default_name(), "default model of the unprefixed routes");
    metrics.role.with_label_values(&[args.role.name()]).set(1);
    // Jobs write the store (versions, pointers, job records): never on a scorer.
    let jobs = if args.role.writes_store() {
        let jobs_config =
            JobsConfig { data_dir: args.data_dir.clone(), threads: args.train_threads, device: args.device };
        let jobs = Jobs::open(registry.clone(), jobs_config, models.clone(), metrics.clone())
            .with_context(|| format!("opening the jobs folder in {}", args.models_dir.display()))?;
        Some(jobs)
    } else {
        None
    };
    let mut state = AppState::new(models, metrics, args.limits());
    state.registry = registry;
    state.admin_token = args.admin_token.as_deref().filter(|t| !t.is_empty()).map(Into::into);
    state.jobs = jobs;
    state.role = args.role;
    state.store_poll = Duration::from_millis(args.store_poll_ms);
    state.remote = remote;
    state.trainer_url = args.trainer_url.clone().map(Into::into);
    state.drift = crate::drift::Drift::new(args.drift_window);
    Ok(state)
}

/// Serves `state` on an already bound listener until `shutdown`, then drains.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let draining = state.draining.clone();
    let shutdown = async move {
        shutdown.await;
        // /ready answers 503 from here on, for health checks on open connections.
        draining.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (limits, metrics) = (state.limits.clone(), state.metrics.clone());
    let syncs = state.role == Role::Scorer || state.remote.is_some();
    let follower = (syncs && state.store_poll > Duration::ZERO).then(|| tokio::spawn(sync_store(state.clone())));
    http::server::serve(listener, http::router(state.clone()), &limits, metrics, shutdown).await?;
    if let Some(follower) = follower {
        follower.abort();
    }
    if let Some(jobs) = &state.jobs {
        jobs.shutdown(limits.drain_timeout).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Every `store_poll`: a scorer copies new live versions from the remote store (if any) and
/// follows the live pointers; a writer uploads its new versions and pointers to the remote store.
async fn sync_store(state: AppState) {
    let mut tick = tokio::time::interval(state.store_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let registry = state.models.registry().clone();
    loop {
        tick.tick().await;
        if let Some(remote) = &state.remote {
            let (op, result) = if state.role.writes_store() {
                ("push", remote.push(&registry).await)
            } else {
                ("pull", remote.pull(&registry, false).await)
            };
            match result {
                Ok(changed) => {
                    if !changed.is_empty() {
                        tracing::info!(store = %remote.url(), op, changed = ?changed, "remote store synced");
                    }
                    state.metrics.store_last_sync.set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
                }
                Err(e) => {
                    tracing::warn!(store = %remote.url(), op, error = %e, "remote store sync failed");
                    state.metrics.store_sync_errors.with_label_values(&[op]).inc();
                }
            }
        }
        if state.role == Role::Scorer {
            state.models.follow_store().await;
        }
    }
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

impl ServeArgs {
    /// The settings `flowscore serve` would use with these flags (and the environment).
    pub fn from_flags(flags: &[&str]) -> Result<ServeArgs, clap::Error> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServeArgs,
        }
        Wrapper::try_parse_from(std::iter::once("serve").chain(flags.iter().copied())).map(|w| w.args)
    }
}

#[cfg(test)]
mod tests {
    use super::ServeArgs;
    use std::time::Duration;

    #[test]
    fn http_threads_default_leaves_libtorch_its_cores_and_a_flag_overrides() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let libtorch = tch::get_num_threads().max(1) as usize;
        let default = ServeArgs::from_flags(&[]).expect("no flags parse").http_threads();
        assert_eq!(default, cores.saturating_sub(libtorch).max(1));
        assert_eq!(ServeArgs::from_flags(&["--http-threads", "3"]).expect("flag parses").http_threads(), 3);
        assert_eq!(ServeArgs::from_flags(&["--http-threads", "0"]).expect("flag parses").http_threads(), 1);
        assert!(ServeArgs::from_flags(&["--http-threads", "two"]).is_err());
    }

    #[test]
    fn batching_defaults_follow_the_device_and_flags_win() {
        let config = |flags: &[&str]| ServeArgs::from_flags(flags).expect("flags parse").engine_config();
        let c = config(&["--device", "cpu"]);
        assert_eq!((c.max_batch_rows, c.max_wait), (1024, Duration::from_micros(2000)));
        let gpu = crate::engine::BatchDefaults::for_device(tch::Device::Cuda(0));
        assert_eq!((gpu.max_batch_rows, gpu.max_wait), (16384, Duration::from_micros(1000)));
        let c = config(&["--device", "cpu", "--max-batch-rows", "64", "--max-wait-us", "0"]);
        assert_eq!((c.max_batch_rows, c.max_wait), (64, Duration::ZERO));
    }
}
