//! Loaded models behind handles: dedicated inference threads (never the async runtime's) shared
//! by every model, a bounded queue per model that refuses work at once when full, a dynamic
//! batcher that merges a model's concurrent requests into one forward pass, and round-robin
//! turns between the models with queued work.
mod worker;

use crate::flow::InpaintOptions;
use crate::kernels::{CpuKernels, KernelError};
use crate::metrics::Metrics;
use crate::store::{self, ModelCard, ModelId};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Requests that may wait in one model's queue; beyond it requests are refused (503).
    pub queue_depth: usize,
    /// A request not answered within this time fails with 503.
    pub request_timeout: Duration,
    /// Which CPU kernels the coupling MLPs run on (`crate::kernels::plan`); not used on a GPU.
    pub cpu_kernels: CpuKernels,
    /// Where the models run; batches move there once and results come back once.
    pub device: tch::Device,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 1,
            batching: true,
            max_batch_rows: BatchDefaults::CPU.max_batch_rows,
            max_wait: BatchDefaults::CPU.max_wait,
            queue_depth: 1024,
            request_timeout: Duration::from_secs(30),
            cpu_kernels: CpuKernels::Auto,
            device: tch::Device::Cpu,
        }
    }
}

/// How much a merged forward pass may hold and how long it waits for it, by device. A GPU's pass
/// costs about the same from a few hundred rows to thousands (launches and transfers dominate
/// small ones), so it takes bigger batches; its passes are short, so it waits less for them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchDefaults {
    pub max_batch_rows: usize,
    pub max_wait: Duration,
}

impl BatchDefaults {
    pub const CPU: BatchDefaults = BatchDefaults { max_batch_rows: 1024, max_wait: Duration::from_micros(2000) };
    pub const GPU: BatchDefaults = BatchDefaults { max_batch_rows: 16384, max_wait: Duration::from_micros(1000) };

    pub fn for_device(device: tch::Device) -> BatchDefaults {
        if device.is_cuda() {
            BatchDefaults::GPU
        } else {
            BatchDefaults::CPU
        }
    }
}

/// One loaded model version, for validating requests and labelling responses.
#[derive(Debug)]
pub struct ModelInfo {
    pub card: ModelCard,
    pub dir: PathBuf,
    /// Unique per load: two loads of the same folder are two units.
    pub generation: u64,
    /// Estimated bytes the inference threads hold for it (weights and prepared kernel copies).
    pub memory_bytes: u64,
    /// Where it runs: `cpu` or `cuda:N`.
    pub device: String,
    /// The scaling layer's learned log-scales s_d, in input order (the spectrum `GET .../spectrum`
    /// serves), read once at load.
    pub log_scales: Vec<f64>,
}

impl ModelInfo {
    pub fn dim(&self) -> usize {
        self.card.architecture.dim
    }

    /// `name/version`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.card.name, self.card.version)
    }
}

/// One unit of inference work. Row data is row-major f32, already validated.
#[derive(Debug)]
pub enum Task {
    LogProb {
        rows: Vec<f32>,
    },
    Encode {
        rows: Vec<f32>,
    },
    Decode {
        latents: Vec<f32>,
    },
    Sample {
        n: usize,
        seed: u64,
        temperature: f64,
    },
    Inpaint {
        rows: Vec<f32>,
        missing: Vec<f32>,
        options: InpaintOptions,
    },
    /// Per-feature attributions (`crate::explain`).
    Explain {
        rows: Vec<f32>,
    },
}

impl Task {
    fn rows(&self, dim: usize) -> usize {
        match self {
            Task::LogProb { rows } | Task::Encode { rows } | Task::Inpaint { rows, .. } | Task::Explain { rows } => {
                rows.len() / dim.max(1)
            }
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
            Task::Explain { .. } => "explain",
        }
    }
}

#[derive(Debug)]
pub enum Output {
    LogProb(Vec<f64>),
    Encode { latents: Vec<f32>, log_prob: Vec<f64> },
    Rows(Vec<f32>),
    Explain { attributions: Vec<f64>, log_prob: Vec<f64> },
}

/// A result and the model that produced it.
#[derive(Debug)]
pub struct Scored {
    pub output: Output,
    pub model: Arc<ModelInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("server overloaded: the inference queue of model {0} is full, retry later")]
    Overloaded(String),
    #[error("request timed out after {0:?} in the inference queue")]
    Timeout(Duration),
    #[error("model {0} was unloaded while the request was queued; retry")]
    Unloaded(String),
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

/// A loaded model version with its own bounded queue. The inference threads take turns over the
/// units with queued work (`Engine::runnable`), one batch each, so a hot model cannot starve
/// the others.
pub(crate) struct Unit {
    info: Arc<ModelInfo>,
    queue: Sender<Job>,
    jobs: Receiver<Job>,
    /// A job taken from the queue that did not fit the last batch: the next batch starts with it.
    front: Mutex<Option<Job>>,
    /// In the runnable channel or held by an inference thread (at most once in the channel).
    scheduled: AtomicBool,
}

impl Unit {
    fn has_work(&self) -> bool {
        !self.jobs.is_empty() || self.front.lock().map(|f| f.is_some()).unwrap_or(false)
    }

    fn take_front(&self) -> Option<Job> {
        self.front.lock().ok().and_then(|mut f| f.take())
    }

    fn put_front(&self, job: Job) {
        if let Ok(mut f) = self.front.lock() {
            *f = Some(job);
        }
    }
}

pub(crate) enum Control {
    Load {
        unit: Arc<Unit>,
        done: std::sync::mpsc::Sender<Result<(), EngineError>>,
    },
    /// Answers the unit's queued jobs, then drops the thread's copy.
    Unload {
        generation: u64,
        done: std::sync::mpsc::Sender<()>,
    },
    /// Makes the inference thread panic outside a batch, so tests can watch it recover.
    #[cfg(test)]
    Panic,
}

/// What the inference threads tell the engine, and read from it.
pub(crate) struct Health {
    /// Inference threads holding every loaded model and taking jobs.
    alive: AtomicUsize,
    /// The loaded units: what a restarted thread loads again.
    units: Mutex<HashMap<u64, Arc<Unit>>>,
}

impl Health {
    fn units(&self) -> Vec<Arc<Unit>> {
        self.units.lock().map(|u| u.values().cloned().collect()).unwrap_or_default()
    }
}

struct Shared {
    next_generation: AtomicU64,
    metrics: Metrics,
    health: Arc<Health>,
}

/// Loads `dir` in full (hash, shapes, finite weights) and returns its card, on a thread of its
/// own that ends afterwards. libtorch's first parallel op on a thread starts an OpenMP thread
/// team that lives as long as that thread; once a process holds more OpenMP threads than cores,
/// libgomp stops spinning at barriers in every team, and each GEMM of the inference threads then
/// sleeps and wakes (docs/architecture.md, "OpenMP").
fn validate(dir: &Path) -> Result<(ModelCard, Vec<f64>), EngineError> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("flowscore-validate".into())
            .spawn_scoped(s, || store::load(dir, tch::Device::Cpu).map(|m| (m.card, m.nice.log_scales())))
            .map_err(|e| EngineError::Inference(format!("cannot start a thread to load the model: {e}")))?
            .join()
            .map_err(|_| EngineError::Inference("loading the model panicked".into()))?
            .map_err(EngineError::from)
    })
}

/// Bytes the inference threads will hold for a model of this card: each thread keeps the float32
/// weights and about as much again in prepared kernel copies.
pub fn memory_estimate(card: &ModelCard, workers: usize) -> u64 {
    card.architecture.parameter_count() as u64 * 4 * 2 * workers.max(1) as u64
}

/// Cheap to clone; all clones drive the same inference threads.
#[derive(Clone)]
pub struct Engine {
    runnable: Sender<Arc<Unit>>,
    controls: Arc<Vec<Sender<Control>>>,
    shared: Arc<Shared>,
    config: Arc<EngineConfig>,
    _threads: Arc<worker::Threads>,
}

/// A loaded model version: submit work to it. Cheap to clone.
#[derive(Clone)]
pub struct ModelHandle {
    unit: Arc<Unit>,
    engine: Engine,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelHandle({})", self.unit.info.label())
    }
}

impl Engine {
    /// Starts the inference threads, holding no model yet.
    pub fn start(config: EngineConfig, metrics: Metrics) -> Result<Engine, EngineError> {
        let health = Arc::new(Health { alive: AtomicUsize::new(0), units: Mutex::new(HashMap::new()) });
        let shared = Arc::new(Shared { next_generation: AtomicU64::new(0), metrics, health });
        let (runnable, runnable_rx) = crossbeam_channel::unbounded();
        let config = Arc::new(config);
        let (controls, threads) =
            worker::spawn(&config, runnable_rx, runnable.clone(), shared.metrics.clone(), shared.health.clone())?;
        Ok(Engine { runnable, controls: Arc::new(controls), shared, config, _threads: Arc::new(threads) })
    }

    /// Every inference thread holds every loaded model and takes jobs. False while one reloads
    /// after a panic (it restarts itself).
    pub fn is_ready(&self) -> bool {
        self.shared.health.alive.load(Ordering::SeqCst) == self.config.workers.max(1)
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

    /// Estimated bytes held for every loaded model.
    pub fn memory_bytes(&self) -> u64 {
        self.shared.health.units().iter().map(|u| u.info.memory_bytes).sum()
    }

    /// Validates `dir` (on a thread of its own), then has every inference thread load its own
    /// copy, prepare its kernels and warm up. The returned handle takes work at once. `id`, when
    /// given, names the model (a registry folder's `<name>/<version>` wins over its card's).
    pub async fn load(&self, dir: &Path, id: Option<&ModelId>) -> Result<ModelHandle, EngineError> {
        let dir = dir.to_path_buf();
        let (mut card, log_scales) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || validate(&dir)
        })
        .await
        .map_err(|e| EngineError::Inference(e.to_string()))??;
        if let Some(id) = id {
            card.name.clone_from(&id.name);
            card.version.clone_from(&id.version);
        }
        let generation = self.shared.next_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let memory_bytes = memory_estimate(&card, self.config.workers);
        let device = crate::device::name(self.config().device);
        let info = Arc::new(ModelInfo { card, dir, generation, memory_bytes, device, log_scales });
        let (queue, jobs) = crossbeam_channel::bounded(self.config.queue_depth.max(1));
        let unit = Arc::new(Unit { info, queue, jobs, front: Mutex::new(None), scheduled: AtomicBool::new(false) });
        let controls = self.controls.clone();
        let sent = unit.clone();
        tokio::task::spawn_blocking(move || {
            let mut waits = Vec::new();
            for c in controls.iter() {
                let (done, wait) = std::sync::mpsc::channel();
                c.send(Control::Load { unit: sent.clone(), done }).map_err(|_| EngineError::Stopped)?;
                waits.push(wait);
            }
            let mut result = Ok(());
            for w in waits {
                if let Err(e) = w.recv().map_err(|_| EngineError::Stopped).and_then(|r| r) {
                    result = Err(e);
                }
            }
            result
        })
        .await
        .map_err(|e| EngineError::Inference(e.to_string()))
        .and_then(|r| r)
        .inspect_err(|_| self.forget(&unit))?;
        if let Ok(mut units) = self.shared.health.units.lock() {
            units.insert(unit.info.generation, unit.clone());
        }
        tracing::info!(model = %unit.info.label(), dir = %unit.info.dir.display(), "model loaded");
        Ok(ModelHandle { unit, engine: self.clone() })
    }

    /// Drops a unit some threads may hold after a failed load.
    fn forget(&self, unit: &Arc<Unit>) {
        for c in self.controls.iter() {
            let (done, _) = std::sync::mpsc::channel();
            let _ = c.send(Control::Unload { generation: unit.info.generation, done });
        }
    }

    /// Unloads a model version: the requests already queued are answered first, then every
    /// inference thread drops its copy. New requests must no longer reach `handle` (the caller
    /// has unrouted it).
    pub async fn unload(&self, handle: &ModelHandle) {
        let generation = handle.unit.info.generation;
        if let Ok(mut units) = self.shared.health.units.lock() {
            units.remove(&generation);
        }
        let controls = self.controls.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut waits = Vec::new();
            for c in controls.iter() {
                let (done, wait) = std::sync::mpsc::channel();
                if c.send(Control::Unload { generation, done }).is_ok() {
                    waits.push(wait);
                }
            }
            for w in waits {
                let _ = w.recv();
            }
        })
        .await;
        // A request that found the handle just before it was unrouted gets a clear error.
        while let Some(job) = handle.unit.take_front().or_else(|| handle.unit.jobs.try_recv().ok()) {
            let _ = job.reply.send(Err(EngineError::Unloaded(handle.unit.info.label())));
        }
        tracing::info!(model = %handle.unit.info.label(), "model unloaded");
    }
}

impl ModelHandle {
    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.unit.info
    }

    /// Requests waiting in this model's queue.
    pub fn queued(&self) -> usize {
        self.unit.jobs.len()
    }

    /// Queues `task` and waits for its result. Refuses at once when this model's queue is full.
    pub async fn submit(&self, task: Task) -> Result<Scored, EngineError> {
        let (reply, rx) = oneshot::channel();
        let op = task.op();
        let info = &self.unit.info;
        let metrics = &self.engine.shared.metrics;
        let rows = task.rows(info.dim()) as u64;
        let job = Job { task, enqueued: Instant::now(), reply, span: tracing::Span::current() };
        match self.unit.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics.rejected.inc();
                return Err(EngineError::Overloaded(info.label()));
            }
            Err(TrySendError::Disconnected(_)) => return Err(EngineError::Stopped),
        }
        if !self.unit.scheduled.swap(true, Ordering::SeqCst) && self.engine.runnable.send(self.unit.clone()).is_err() {
            return Err(EngineError::Stopped);
        }
        let name = info.card.name.as_str();
        metrics.queue_depth.with_label_values(&[name]).set(self.unit.jobs.len() as i64);
        let timeout = self.engine.config.request_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Stopped),
            Err(_) => Err(EngineError::Timeout(timeout)),
        };
        if result.is_ok() {
            metrics.rows.with_label_values(&[name, op]).inc_by(rows);
            metrics.model_seconds.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        }
        result
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
        let models =
            crate::models::Models::for_folders(std::slice::from_ref(&dir), EngineConfig::default(), metrics.clone())
                .await
                .expect("models");
        let engine = models.engine().clone();
        let handle = models.default_model().expect("loaded");
        let state = AppState::new(models, metrics.clone(), Limits::default());
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
        let scored = handle.submit(Task::LogProb { rows: vec![0.1, 0.2, 0.3] }).await.expect("scores again");
        assert!(matches!(scored.output, Output::LogProb(ref lp) if lp.len() == 1 && lp[0].is_finite()));
        // Once shutdown begins, /ready turns 503 for health checks on open connections.
        state.draining.store(true, Ordering::SeqCst);
        assert_eq!(ready_status(&state).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
