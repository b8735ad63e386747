//! The live model behind a handle: dedicated inference threads (never the async runtime's),
//! a dynamic batcher that merges concurrent requests into one forward pass, a bounded queue
//! that refuses work at once when full, and atomic hot swap.
mod worker;

use crate::flow::InpaintOptions;
use crate::kernels::{CpuKernels, KernelError};
use crate::metrics::Metrics;
use crate::store::{self, ModelCard};
use arc_swap::ArcSwap;
use crossbeam_channel::{Sender, TrySendError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Inference threads, each with its own copy of the model.
    pub workers: usize,
    /// Merge concurrent requests of the same kind into one forward pass.
    pub batching: bool,
    /// Row budget of one merged forward pass.
    pub max_batch_rows: usize,
    /// How long a batch that already merged other requests may wait for more.
    pub max_wait: Duration,
    /// Requests that may wait in the queue; beyond it requests are refused (503).
    pub queue_depth: usize,
    /// A request not answered within this time fails with 503.
    pub request_timeout: Duration,
    /// Which CPU kernels the coupling MLPs run on (`crate::kernels::plan`).
    pub cpu_kernels: CpuKernels,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 1,
            batching: true,
            max_batch_rows: 1024,
            max_wait: Duration::from_micros(2000),
            queue_depth: 1024,
            request_timeout: Duration::from_secs(30),
            cpu_kernels: CpuKernels::Auto,
        }
    }
}

/// What the live model is, for validating requests and labelling responses.
#[derive(Debug)]
pub struct ModelInfo {
    pub card: ModelCard,
    pub dir: PathBuf,
    /// Increases with every swap.
    pub generation: u64,
}

impl ModelInfo {
    pub fn dim(&self) -> usize {
        self.card.architecture.dim
    }
}

/// One unit of inference work. Row data is row-major f32, already validated.
#[derive(Debug)]
pub enum Task {
    LogProb { rows: Vec<f32> },
    Encode { rows: Vec<f32> },
    Decode { latents: Vec<f32> },
    Sample { n: usize, seed: u64, temperature: f64 },
    Inpaint { rows: Vec<f32>, missing: Vec<f32>, options: InpaintOptions },
}

impl Task {
    fn rows(&self, dim: usize) -> usize {
        match self {
            Task::LogProb { rows } | Task::Encode { rows } | Task::Inpaint { rows, .. } => rows.len() / dim.max(1),
            Task::Decode { latents } => latents.len() / dim.max(1),
            Task::Sample { n, .. } => *n,
        }
    }

    fn op(&self) -> &'static str {
        match self {
            Task::LogProb { .. } => "log_prob",
            Task::Encode { .. } => "encode",
            Task::Decode { .. } => "decode",
            Task::Sample { .. } => "sample",
            Task::Inpaint { .. } => "inpaint",
        }
    }
}

#[derive(Debug)]
pub enum Output {
    LogProb(Vec<f64>),
    Encode { latents: Vec<f32>, log_prob: Vec<f64> },
    Rows(Vec<f32>),
}

/// A result and the model that produced it.
#[derive(Debug)]
pub struct Scored {
    pub output: Output,
    pub model: Arc<ModelInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("server overloaded: the inference queue is full, retry later")]
    Overloaded,
    #[error("request timed out after {0:?} in the inference queue")]
    Timeout(Duration),
    #[error("the model changed while the request was queued (it now expects {expected} values per row); retry")]
    ModelChanged { expected: usize },
    #[error("the inference engine has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Kernels(#[from] KernelError),
    #[error("inference failed: {0}")]
    Inference(String),
}

pub(crate) struct Job {
    task: Task,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Scored, EngineError>>,
    span: tracing::Span,
}

pub(crate) enum Control {
    Swap {
        info: Arc<ModelInfo>,
        done: std::sync::mpsc::Sender<Result<(), EngineError>>,
    },
    /// Makes the inference thread panic outside a batch, so tests can watch it recover.
    #[cfg(test)]
    Panic,
}

/// What the inference threads tell the engine, and read from it.
pub(crate) struct Health {
    /// Inference threads holding a model and taking jobs.
    alive: AtomicUsize,
    /// The live model: what a restarted thread loads.
    info: ArcSwap<ModelInfo>,
}

struct Shared {
    ready: AtomicBool,
    generation: AtomicU64,
    metrics: Metrics,
    health: Arc<Health>,
}

/// Loads `dir` in full (hash, shapes, finite weights) and returns its card, on a thread of its
/// own that ends afterwards. libtorch's first parallel op on a thread starts an OpenMP thread
/// team that lives as long as that thread; once a process holds more OpenMP threads than cores,
/// libgomp stops spinning at barriers in every team, and each GEMM of the inference threads then
/// sleeps and wakes (docs/architecture.md, "OpenMP").
fn validate(dir: &Path) -> Result<ModelCard, EngineError> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("flowscore-validate".into())
            .spawn_scoped(s, || store::load(dir, tch::Device::Cpu).map(|m| m.card))
            .map_err(|e| EngineError::Inference(format!("cannot start a thread to load the model: {e}")))?
            .join()
            .map_err(|_| EngineError::Inference("loading the model panicked".into()))?
            .map_err(EngineError::from)
    })
}

/// Cheap to clone; all clones drive the same inference threads.
#[derive(Clone)]
pub struct Engine {
    jobs: Sender<Job>,
    controls: Arc<Vec<Sender<Control>>>,
    shared: Arc<Shared>,
    config: Arc<EngineConfig>,
    _threads: Arc<worker::Threads>,
}

impl Engine {
    /// Loads `dir` on every inference thread, warms each up and returns once all are ready.
    pub fn start(dir: &Path, config: EngineConfig, metrics: Metrics) -> Result<Engine, EngineError> {
        let card = validate(dir)?;
        metrics.set_model(&card.name, &card.version);
        let info = Arc::new(ModelInfo { card, dir: dir.to_path_buf(), generation: 0 });
        let health = Arc::new(Health { alive: AtomicUsize::new(0), info: ArcSwap::new(info.clone()) });
        let shared = Arc::new(Shared { ready: AtomicBool::new(false), generation: AtomicU64::new(0), metrics, health });
        let (jobs, job_rx) = crossbeam_channel::bounded(config.queue_depth.max(1));
        let config = Arc::new(config);
        let (controls, threads) = worker::spawn(&config, info, job_rx, shared.metrics.clone(), shared.health.clone())?;
        shared.ready.store(true, Ordering::SeqCst);
        Ok(Engine { jobs, controls: Arc::new(controls), shared, config, _threads: Arc::new(threads) })
    }

    /// The live model.
    pub fn info(&self) -> Arc<ModelInfo> {
        self.shared.health.info.load_full()
    }

    /// Every inference thread holds a model and takes jobs. False while one reloads after a
    /// panic (it restarts itself), and until start-up has finished.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
            && self.shared.health.alive.load(Ordering::SeqCst) == self.config.workers.max(1)
    }

    /// Makes every inference thread panic once, outside a batch.
    #[cfg(test)]
    pub(crate) fn inject_panic(&self) {
        for c in self.controls.iter() {
            let _ = c.send(Control::Panic);
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Queues `task` and waits for its result. Refuses at once when the queue is full.
    pub async fn submit(&self, task: Task) -> Result<Scored, EngineError> {
        let (reply, rx) = oneshot::channel();
        let op = task.op();
        let rows = task.rows(self.info().dim()) as u64;
        let job = Job { task, enqueued: Instant::now(), reply, span: tracing::Span::current() };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.metrics.rejected.inc();
                return Err(EngineError::Overloaded);
            }
            Err(TrySendError::Disconnected(_)) => return Err(EngineError::Stopped),
        }
        self.shared.metrics.queue_depth.set(self.jobs.len() as i64);
        let result = match tokio::time::timeout(self.config.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Stopped),
            Err(_) => Err(EngineError::Timeout(self.config.request_timeout)),
        };
        if result.is_ok() {
            self.shared.metrics.rows.with_label_values(&[op]).inc_by(rows);
        }
        result
    }

    /// Swaps in the model folder `dir`: validated here first, then loaded by every inference
    /// thread itself between two batches. A batch runs wholly on one model, and each response
    /// names the model that produced it; a queued request whose rows no longer fit the new model
    /// gets `ModelChanged`.
    pub async fn swap(&self, dir: &Path) -> Result<Arc<ModelInfo>, EngineError> {
        let dir = dir.to_path_buf();
        let card = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || validate(&dir)
        })
        .await
        .map_err(|e| EngineError::Inference(e.to_string()))??;
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let info = Arc::new(ModelInfo { card, dir, generation });
        let controls = self.controls.clone();
        let sent = info.clone();
        tokio::task::spawn_blocking(move || {
            let mut waits = Vec::new();
            for c in controls.iter() {
                let (done, wait) = std::sync::mpsc::channel();
                c.send(Control::Swap { info: sent.clone(), done }).map_err(|_| EngineError::Stopped)?;
                waits.push(wait);
            }
            for w in waits {
                w.recv().map_err(|_| EngineError::Stopped)??;
            }
            Ok::<(), EngineError>(())
        })
        .await
        .map_err(|e| EngineError::Inference(e.to_string()))??;
        self.shared.health.info.store(info.clone());
        self.shared.metrics.set_model(&info.card.name, &info.card.version);
        tracing::info!(name = %info.card.name, version = %info.card.version, dir = %info.dir.display(), "model swapped");
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{router, AppState, Limits};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn write_model(dir: &Path) {
        let arch = crate::flow::Architecture { dim: 3, couplings: 2, hidden_layers: 1, hidden_units: 8 };
        let input = store::InputSpec { shape: vec![3], eight_bit: false };
        let card =
            ModelCard::new("restart", arch, crate::flow::Prior::Logistic, crate::flow::Preprocess::Identity, input);
        let mut model = store::Model::new(card, tch::Device::Cpu).expect("model");
        store::save(&mut model, dir, false).expect("save");
    }

    async fn ready_status(state: &AppState) -> StatusCode {
        let request = Request::get("/ready").body(Body::empty()).expect("request");
        router(state.clone()).oneshot(request).await.expect("response").status()
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..600 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// An inference thread that dies is restarted: /ready is 503 while it cannot reload the model
    /// (the folder is gone) and 200 once it has, and it scores again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_inference_thread_restarts_and_readiness_follows() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, away) = (tmp.path().join("model"), tmp.path().join("away"));
        write_model(&dir);
        let metrics = Metrics::new();
        let engine = {
            let (dir, metrics) = (dir.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || Engine::start(&dir, EngineConfig::default(), metrics))
                .await
                .expect("join")
                .expect("engine")
        };
        let state = AppState::new(engine.clone(), metrics.clone(), Limits::default());
        assert_eq!(ready_status(&state).await, StatusCode::OK);
        std::fs::rename(&dir, &away).expect("move the model away");
        engine.inject_panic();
        until("the thread is down", || !engine.is_ready()).await;
        assert_eq!(ready_status(&state).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(metrics.inference_restarts.get(), 1);
        assert_eq!(metrics.inference_threads.get(), 0);
        std::fs::rename(&away, &dir).expect("bring the model back");
        until("the thread has reloaded", || engine.is_ready()).await;
        assert_eq!(ready_status(&state).await, StatusCode::OK);
        assert_eq!(metrics.inference_threads.get(), 1);
        let scored = engine.submit(Task::LogProb { rows: vec![0.1, 0.2, 0.3] }).await.expect("scores again");
        assert!(matches!(scored.output, Output::LogProb(ref lp) if lp.len() == 1 && lp[0].is_finite()));
        // Once shutdown begins, /ready turns 503 for health checks on open connections.
        state.draining.store(true, Ordering::SeqCst);
        assert_eq!(ready_status(&state).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
