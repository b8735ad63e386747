//! Background training jobs: one at a time, on their own thread with their own libtorch
//! thread budget, checkpointed every epoch, cancellable between batches, and promoted to live
//! through the engine's hot swap. Job state is kept on disk, so a restart can tell what happened.
use crate::data::{self, Dataset, LoadOptions};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::{self, registry::valid_segment, EpochRecord, ModelId, Registry};
use crate::train::{self, Observer, TrainConfig, TrainError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const JOB_FILE: &str = "job.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// When a finished model becomes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    /// If its validation log-likelihood beats the live model's on the same validation rows.
    #[default]
    Better,
    Always,
    Never,
}

/// Where the training rows come from.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A file under the server's data folder (IDX, CSV or NPY), relative to it.
    pub path: Option<String>,
    /// CSV columns to ignore (name or 0-based index).
    #[serde(default)]
    pub exclude_columns: Vec<String>,
    /// Use only the first N rows.
    pub limit: Option<usize>,
}

/// Everything a job needs; kept in its job file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub dataset: String,
    pub promote: Promotion,
    pub config: TrainConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    pub name: String,
    /// Data the job trains on.
    pub dataset: String,
    pub promote: Promotion,
    pub created: String,
    pub epoch: usize,
    pub max_epochs: usize,
    /// Share of the current epoch's batches done, in [0, 1].
    pub progress: f64,
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<EpochRecord>,
    pub best_val_log_likelihood: Option<f64>,
    /// Seconds left if every remaining epoch runs (early stopping may end sooner).
    pub eta_seconds: Option<f64>,
    pub error: Option<String>,
    /// The version written on success.
    pub model: Option<ModelId>,
    pub promoted: bool,
    pub promotion_reason: Option<String>,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("a training job is already {0}; one job runs at a time")]
    Busy(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no training job `{0}`")]
    NotFound(String),
    #[error("job {0} has already finished")]
    Finished(String),
}

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Files a job may read live here.
    pub data_dir: PathBuf,
    /// libtorch threads for training (the rest stay with scoring).
    pub threads: usize,
}

struct Entry {
    status: JobStatus,
    cancel: Arc<AtomicBool>,
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    dir: PathBuf,
    config: JobsConfig,
    engine: Engine,
    metrics: Metrics,
    jobs: Mutex<BTreeMap<String, Entry>>,
    runtime: tokio::runtime::Handle,
}

impl Jobs {
    /// Reads the jobs folder; jobs a previous process left queued or running are marked failed
    /// with the reason (their last checkpoint stays on disk).
    pub fn open(registry: Registry, config: JobsConfig, engine: Engine, metrics: Metrics) -> std::io::Result<Jobs> {
        let dir = registry.root().join(".jobs");
        std::fs::create_dir_all(&dir)?;
        let mut jobs = BTreeMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let path = e.path().join(JOB_FILE);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let Ok(mut status) = serde_json::from_str::<JobStatus>(&text) else { continue };
            if matches!(status.state, JobState::Queued | JobState::Running) {
                status.state = JobState::Failed;
                status.error = Some(format!(
                    "interrupted: the server stopped during epoch {} (the last finished epoch's checkpoint is in {})",
                    status.epoch,
                    e.path().join("checkpoint").display()
                ));
                write_status(&e.path(), &status);
            }
            jobs.insert(status.id.clone(), Entry { status, cancel: Arc::new(AtomicBool::new(false)) });
        }
        let runtime = tokio::runtime::Handle::current();
        let inner = Inner { registry, dir, config, engine, metrics, jobs: Mutex::new(jobs), runtime };
        Ok(Jobs { inner: Arc::new(inner) })
    }

    pub fn list(&self) -> Vec<JobStatus> {
        self.lock().values().map(|e| e.status.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Result<JobStatus, JobError> {
        self.lock().get(id).map(|e| e.status.clone()).ok_or_else(|| JobError::NotFound(id.into()))
    }

    /// Asks a job to stop; it does within one batch.
    pub fn cancel(&self, id: &str) -> Result<JobStatus, JobError> {
        let jobs = self.lock();
        let e = jobs.get(id).ok_or_else(|| JobError::NotFound(id.into()))?;
        if !matches!(e.status.state, JobState::Queued | JobState::Running) {
            return Err(JobError::Finished(id.into()));
        }
        e.cancel.store(true, Ordering::SeqCst);
        Ok(e.status.clone())
    }

    /// Resolves `path` inside the data folder; anything outside it is refused.
    pub fn data_path(&self, path: &str) -> Result<PathBuf, JobError> {
        let outside = || JobError::Forbidden(format!("dataset `{path}` is outside the server's data folder"));
        let relative = Path::new(path);
        if relative.is_absolute() || relative.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(outside());
        }
        let root = self.inner.config.data_dir.canonicalize().map_err(|e| {
            JobError::BadRequest(format!(
                "the server's data folder {} is unavailable: {e}",
                self.inner.config.data_dir.display()
            ))
        })?;
        let full =
            root.join(path).canonicalize().map_err(|e| JobError::BadRequest(format!("dataset `{path}`: {e}")))?;
        if !full.starts_with(&root) {
            return Err(outside()); // a symlink out of the folder
        }
        Ok(full)
    }

    /// Loads the dataset of a request (a file in the data folder).
    pub fn load_dataset(&self, spec: &DatasetSpec) -> Result<Dataset, JobError> {
        let path =
            spec.path.as_deref().ok_or_else(|| JobError::BadRequest("dataset needs `path` (or upload rows)".into()))?;
        let full = self.data_path(path)?;
        let opts =
            LoadOptions { exclude_columns: spec.exclude_columns.clone(), limit: spec.limit, ..Default::default() };
        data::load(&full, &opts).map_err(|e| JobError::BadRequest(format!("dataset: {e}")))
    }

    /// Starts a job on `data` (refused while another job is queued or running).
    pub fn submit(&self, spec: JobSpec, data: Dataset) -> Result<JobStatus, JobError> {
        if !valid_segment(&spec.name) {
            return Err(JobError::BadRequest(format!(
                "invalid model name `{}`: use letters, digits, '.', '_', '-'",
                spec.name
            )));
        }
        spec.config.validate().map_err(|e| JobError::BadRequest(e.to_string()))?;
        let live_dim = self.inner.engine.info().dim();
        if spec.promote != Promotion::Never && data.dim != live_dim {
            tracing::info!(dim = data.dim, live_dim, "training a model of another dimension than the live one");
        }
        let mut jobs = self.lock();
        if let Some(busy) = jobs.values().find(|e| matches!(e.status.state, JobState::Queued | JobState::Running)) {
            return Err(JobError::Busy(format!("{:?} ({})", busy.status.state, busy.status.id).to_lowercase()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let status = JobStatus {
            id: id.clone(),
            state: JobState::Queued,
            name: spec.name.clone(),
            dataset: spec.dataset.clone(),
            promote: spec.promote,
            created: store::now_rfc3339(),
            epoch: 0,
            max_epochs: spec.config.epochs,
            progress: 0.0,
            history: Vec::new(),
            best_val_log_likelihood: None,
            eta_seconds: None,
            error: None,
            model: None,
            promoted: false,
            promotion_reason: None,
            config: serde_json::to_value(&spec.config).unwrap_or_default(),
        };
        let job_dir = self.inner.dir.join(&id);
        std::fs::create_dir_all(&job_dir)
            .map_err(|e| JobError::BadRequest(format!("cannot create the job folder: {e}")))?;
        write_status(&job_dir, &status);
        let cancel = Arc::new(AtomicBool::new(false));
        jobs.insert(id.clone(), Entry { status: status.clone(), cancel: cancel.clone() });
        drop(jobs);
        let jobs = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("flowscore-train-{id}"))
            .spawn(move || jobs.run(id, spec, data, cancel));
        if let Err(e) = spawned {
            return Err(JobError::BadRequest(format!("cannot start the training thread: {e}")));
        }
        Ok(status)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobStatus)) {
        let mut jobs = self.lock();
        if let Some(e) = jobs.get_mut(id) {
            f(&mut e.status);
            write_status(&self.inner.dir.join(id), &e.status);
        }
    }

    fn run(self, id: String, spec: JobSpec, data: Dataset, cancel: Arc<AtomicBool>) {
        tch::set_num_threads(self.inner.config.threads.max(1) as i32);
        let m = &self.inner.metrics;
        self.update(&id, |s| s.state = JobState::Running);
        let started = Instant::now();
        let outcome = self.train_and_promote(&id, &spec, &data, cancel, started);
        let (state, label) = match &outcome {
            Ok(()) => (JobState::Succeeded, "succeeded"),
            Err(TrainError::Cancelled) => (JobState::Cancelled, "cancelled"),
            Err(_) => (JobState::Failed, "failed"),
        };
        m.jobs.with_label_values(&[label]).inc();
        m.train_progress.set(0.0);
        self.update(&id, |s| {
            s.state = state;
            s.eta_seconds = None;
            if let Err(e) = &outcome {
                if state == JobState::Failed {
                    s.error = Some(e.to_string());
                }
            }
        });
        tracing::info!(job = %id, outcome = label, seconds = started.elapsed().as_secs_f64(), "training job finished");
    }

    fn train_and_promote(
        &self,
        id: &str,
        spec: &JobSpec,
        data: &Dataset,
        cancel: Arc<AtomicBool>,
        started: Instant,
    ) -> Result<(), TrainError> {
        let (train_set, val_set) = data.split(spec.config.val_fraction, spec.config.seed);
        let job_dir = self.inner.dir.join(id);
        let mut observer = JobObserver {
            jobs: self.clone(),
            id: id.to_string(),
            cancel,
            started,
            dir: job_dir,
            max_epochs: spec.config.epochs,
        };
        let mut model = train::train(&spec.config, &train_set, &val_set, None, &mut observer)?;
        let registry = &self.inner.registry;
        let version = registry.next_version(&spec.name);
        model.card.name = spec.name.clone();
        model.card.version = version.clone();
        let model_id = ModelId { name: spec.name.clone(), version };
        let dir = registry.dir(&model_id).map_err(|e| TrainError::Data(e.to_string()))?;
        store::save(&mut model, &dir, false).map_err(|e| TrainError::Data(format!("saving the model: {e}")))?;
        let new_ll = model.card.training.as_ref().map_or(f64::NEG_INFINITY, |t| t.val_log_likelihood);
        let (promote, reason) = match spec.promote {
            Promotion::Never => (false, "promotion policy is `never`".to_string()),
            Promotion::Always => (true, "promotion policy is `always`".to_string()),
            Promotion::Better => self.compare_with_live(new_ll, &val_set),
        };
        let promoted = promote
            && match self.inner.runtime.block_on(self.inner.engine.swap(&dir)) {
                Ok(_) => {
                    self.inner.metrics.swaps.inc();
                    registry.set_live(&model_id).map_err(|e| TrainError::Data(e.to_string()))?;
                    true
                }
                Err(e) => return Err(TrainError::Data(format!("the new model could not be swapped in: {e}"))),
            };
        self.update(id, |s| {
            s.model = Some(model_id);
            s.promoted = promoted;
            s.promotion_reason = Some(reason);
        });
        Ok(())
    }

    /// Scores the job's validation rows with the live model (a copy loaded here).
    fn compare_with_live(&self, new_ll: f64, val: &Dataset) -> (bool, String) {
        let info = self.inner.engine.info();
        if info.dim() != val.dim {
            return (
                false,
                format!("not comparable: the live model takes {} values per row, this one {}", info.dim(), val.dim),
            );
        }
        let live_ll = store::load(&info.dir, tch::Device::Cpu)
            .map_err(|e| e.to_string())
            .and_then(|m| train::log_probs(&m.nice, val).map_err(|e| e.to_string()))
            .map(|lp| train::mean(&lp));
        match live_ll {
            Ok(live) if new_ll > live => {
                (true, format!("validation log-likelihood {new_ll:.4} beats the live model's {live:.4}"))
            }
            Ok(live) => {
                (false, format!("validation log-likelihood {new_ll:.4} does not beat the live model's {live:.4}"))
            }
            Err(e) => (false, format!("the live model could not be scored: {e}")),
        }
    }
}

struct JobObserver {
    jobs: Jobs,
    id: String,
    cancel: Arc<AtomicBool>,
    started: Instant,
    dir: PathBuf,
    max_epochs: usize,
}

impl Observer for JobObserver {
    fn on_batch(&mut self, epoch: usize, done: usize, total: usize) {
        if done.is_multiple_of(10) || done == total {
            let progress = done as f64 / total.max(1) as f64;
            self.jobs.inner.metrics.train_progress.set(progress);
            let mut jobs = self.jobs.lock();
            if let Some(e) = jobs.get_mut(&self.id) {
                e.status.epoch = epoch;
                e.status.progress = progress;
            }
        }
    }

    fn on_epoch(&mut self, record: &EpochRecord, best_val: f64) {
        let m = &self.jobs.inner.metrics;
        m.train_epoch.set(record.epoch as i64);
        m.train_val_log_likelihood.set(record.val_log_likelihood);
        let per_epoch = self.started.elapsed().as_secs_f64() / record.epoch as f64;
        let eta = per_epoch * self.max_epochs.saturating_sub(record.epoch) as f64;
        let record = record.clone();
        self.jobs.update(&self.id, |s| {
            s.epoch = record.epoch;
            s.progress = 1.0;
            s.history.push(record);
            s.best_val_log_likelihood = Some(best_val);
            s.eta_seconds = Some(eta);
        });
    }

    fn on_checkpoint(&mut self, model: &mut store::Model) {
        // Atomic: a reader (or a restart) sees the previous checkpoint or this one.
        if let Err(e) = store::save(model, &self.dir.join("checkpoint"), true) {
            tracing::warn!(job = %self.id, error = %e, "checkpoint failed");
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Writes a job's status atomically.
fn write_status(dir: &Path, status: &JobStatus) {
    let tmp = dir.join(format!(".{JOB_FILE}.tmp"));
    let ok = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, dir.join(JOB_FILE)));
    if let Err(e) = ok {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write the job status");
    }
}
