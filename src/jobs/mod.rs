//! Background training jobs: one at a time, on their own thread with their own libtorch
//! thread budget, checkpointed every epoch, cancellable between batches, and promoted to live
//! through the engine's hot swap. Job state is kept on disk, so a restart can tell what happened.
//! A job stopped by a shutdown (or found running after a crash) is `interrupted`: its spec, data
//! and last checkpoint stay in its folder, and `resume` continues it from that checkpoint to the
//! model an uninterrupted run would have given. Resuming is an explicit admin request, never
//! automatic, so a job that crashes the process cannot do so in a loop.
use crate::data::{self, Dataset, LoadOptions};
use crate::metrics::Metrics;
use crate::models::Models;
use crate::store::{self, registry::valid_segment, EpochRecord, ModelId, Registry};
use crate::train::{self, Observer, TrainConfig, TrainError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const JOB_FILE: &str = "job.json";
/// What a job needs to run again: its spec (`JobSpec`).
const SPEC_FILE: &str = "spec.json";
/// Uploaded training rows, kept for a resume (float32 NPY).
const DATA_FILE: &str = "data.npy";
/// The state after the last finished epoch (`train::TrainState::save`).
const CHECKPOINT_DIR: &str = "checkpoint";

/// Why a job's thread should stop (`Entry::stop`).
const RUN: u8 = 0;
const CANCEL: u8 = 1;
const INTERRUPT: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped by a shutdown or a crash; `POST /train/{id}/resume` continues it.
    Interrupted,
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

/// Where a job's rows come from, so that a resume can read them again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSource {
    /// Rows sent with the request, kept in the job folder.
    Upload,
    /// A file in the data folder.
    File(DatasetSpec),
}

/// Everything a job needs; kept in its folder (`spec.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// The data, in words.
    pub dataset: String,
    pub source: DataSource,
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
    #[error("no dataset `{0}` in the server's data folder")]
    DatasetMissing(String),
    #[error("job {0} has already finished")]
    Finished(String),
    #[error("job {id} is {state}; only an interrupted job can be resumed")]
    NotResumable { id: String, state: String },
    #[error("job {0} cannot be resumed: {1}")]
    ResumeFailed(String, String),
}

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Files a job may read live here.
    pub data_dir: PathBuf,
    /// libtorch threads for training (the rest stay with scoring).
    pub threads: usize,
    /// Where jobs train (the server's `--device`).
    pub device: tch::Device,
}

struct Entry {
    status: JobStatus,
    /// RUN, CANCEL or INTERRUPT.
    stop: Arc<AtomicU8>,
    /// The job's thread while it may still run; joined at shutdown.
    thread: Option<JoinHandle<()>>,
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
    models: Models,
    metrics: Metrics,
    jobs: Mutex<BTreeMap<String, Entry>>,
    runtime: tokio::runtime::Handle,
}

impl Jobs {
    /// Reads the jobs folder; jobs a previous process left queued or running are marked
    /// interrupted (their folder keeps what `resume` needs).
    pub fn open(registry: Registry, config: JobsConfig, models: Models, metrics: Metrics) -> std::io::Result<Jobs> {
        let dir = registry.root().join(".jobs");
        std::fs::create_dir_all(&dir)?;
        let mut jobs = BTreeMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let path = e.path().join(JOB_FILE);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let Ok(mut status) = serde_json::from_str::<JobStatus>(&text) else { continue };
            if matches!(status.state, JobState::Queued | JobState::Running) {
                status.state = JobState::Interrupted;
                status.eta_seconds = None;
                status.error = Some(interrupted_message(&status));
                write_status(&e.path(), &status);
            }
            jobs.insert(status.id.clone(), Entry { status, stop: Arc::new(AtomicU8::new(RUN)), thread: None });
        }
        let runtime = tokio::runtime::Handle::current();
        let inner = Inner { registry, dir, config, models, metrics, jobs: Mutex::new(jobs), runtime };
        Ok(Jobs { inner: Arc::new(inner) })
    }

    pub fn list(&self) -> Vec<JobStatus> {
        self.lock().values().map(|e| e.status.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Result<JobStatus, JobError> {
        self.lock().get(id).map(|e| e.status.clone()).ok_or_else(|| JobError::NotFound(id.into()))
    }

    /// Asks a job to stop; it does within one batch. An interrupted job is cancelled at once (it
    /// can then no longer be resumed).
    pub fn cancel(&self, id: &str) -> Result<JobStatus, JobError> {
        let mut jobs = self.lock();
        let e = jobs.get_mut(id).ok_or_else(|| JobError::NotFound(id.into()))?;
        match e.status.state {
            JobState::Queued | JobState::Running => {
                e.stop.store(CANCEL, Ordering::SeqCst);
            }
            JobState::Interrupted => {
                e.status.state = JobState::Cancelled;
                e.status.error = None;
                write_status(&self.inner.dir.join(id), &e.status);
                remove_resume_files(&self.inner.dir.join(id));
            }
            _ => return Err(JobError::Finished(id.into())),
        }
        Ok(e.status.clone())
    }

    /// Stops the running job at its next batch as interrupted (its last checkpoint kept) and
    /// waits up to `timeout` for its thread to end; for shutdown.
    pub async fn shutdown(&self, timeout: Duration) {
        let threads: Vec<(String, JoinHandle<()>)> = {
            let mut jobs = self.lock();
            jobs.iter_mut()
                .filter_map(|(id, e)| {
                    let thread = e.thread.take()?;
                    e.stop.store(INTERRUPT, Ordering::SeqCst);
                    Some((id.clone(), thread))
                })
                .collect()
        };
        for (id, thread) in threads {
            tracing::info!(job = %id, "stopping the training job at its next batch");
            let joined = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout(timeout, joined).await {
                Ok(_) => tracing::info!(job = %id, "training job stopped; resume it with POST /train/{id}/resume"),
                Err(_) => tracing::warn!(job = %id, ?timeout, "training job did not stop in time"),
            }
        }
    }

    /// Resolves `path` inside the data folder; anything outside it is refused.
    pub fn data_path(&self, path: &str) -> Result<PathBuf, JobError> {
        let outside = || JobError::Forbidden(format!("dataset `{path}` is outside the server's data folder"));
        let relative = Path::new(path);
        if relative.is_absolute() || relative.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(outside());
        }
        let root = self.inner.config.data_dir.canonicalize().map_err(|e| {
            tracing::warn!(dir = %self.inner.config.data_dir.display(), error = %e, "the data folder is unavailable");
            JobError::DatasetMissing(path.into())
        })?;
        let full = root.join(path).canonicalize().map_err(|_| JobError::DatasetMissing(path.into()))?;
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
        // Messages name the file as the client did, not by its place on the server.
        let shown = full.display().to_string();
        data::load(&full, &opts)
            .map_err(|e| JobError::BadRequest(format!("dataset: {}", e.to_string().replace(&shown, path))))
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
        let live_dim = self.inner.models.resolve(&spec.name, None).ok().map(|h| h.info().dim());
        if spec.promote != Promotion::Never && live_dim.is_some_and(|d| d != data.dim) {
            tracing::info!(dim = data.dim, ?live_dim, "training a model of another dimension than the live one");
        }
        let mut jobs = self.lock();
        ensure_idle(&jobs)?;
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
        let cannot = |e: String| JobError::BadRequest(format!("cannot set up the job folder: {e}"));
        std::fs::create_dir_all(&job_dir).map_err(|e| cannot(e.to_string()))?;
        let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| cannot(e.to_string()))?;
        std::fs::write(job_dir.join(SPEC_FILE), spec_json).map_err(|e| cannot(e.to_string()))?;
        if matches!(spec.source, DataSource::Upload) {
            data::write_npy(&job_dir.join(DATA_FILE), &data.rows, data.n, data.dim)
                .map_err(|e| cannot(e.to_string()))?;
        }
        write_status(&job_dir, &status);
        jobs.insert(id.clone(), Entry { status: status.clone(), stop: Arc::new(AtomicU8::new(RUN)), thread: None });
        self.start(&mut jobs, &id, spec, data, false)?;
        Ok(status)
    }

    /// Continues an interrupted job from its last checkpoint (from the start where it had none),
    /// on the same data and configuration, in the same job.
    pub fn resume(&self, id: &str) -> Result<JobStatus, JobError> {
        resumable(&self.lock(), id)?;
        // The spec and the rows are read without holding the jobs' lock (a data file can take
        // seconds); the state is checked again before the job starts.
        let dir = self.inner.dir.join(id);
        let failed = |m: String| JobError::ResumeFailed(id.into(), m);
        let text = std::fs::read(dir.join(SPEC_FILE)).map_err(|_| failed("its folder keeps no spec".into()))?;
        let spec: JobSpec = serde_json::from_slice(&text).map_err(|e| failed(format!("its spec: {e}")))?;
        let data = match &spec.source {
            DataSource::Upload => {
                let rows = data::load(&dir.join(DATA_FILE), &LoadOptions::default())
                    .map_err(|e| failed(format!("its uploaded rows: {e}")))?;
                Dataset { source: spec.dataset.clone(), ..rows }
            }
            DataSource::File(file) => self.load_dataset(file).map_err(|e| failed(e.to_string()))?,
        };
        let mut jobs = self.lock();
        resumable(&jobs, id)?;
        let checkpoint = dir.join(CHECKPOINT_DIR).join("trainer.json").exists();
        let Some(entry) = jobs.get_mut(id) else { return Err(JobError::NotFound(id.into())) };
        entry.stop.store(RUN, Ordering::SeqCst);
        entry.status.state = JobState::Queued;
        entry.status.error = None;
        if !checkpoint {
            entry.status.history.clear();
            entry.status.epoch = 0;
        }
        write_status(&dir, &entry.status);
        let status = entry.status.clone();
        self.start(&mut jobs, id, spec, data, checkpoint)?;
        tracing::info!(job = %id, from_checkpoint = checkpoint, "training job resumed");
        Ok(status)
    }

    /// Starts the thread of job `id` (already in `jobs`).
    fn start(
        &self,
        jobs: &mut BTreeMap<String, Entry>,
        id: &str,
        spec: JobSpec,
        data: Dataset,
        resume: bool,
    ) -> Result<(), JobError> {
        let entry = jobs.get_mut(id).ok_or_else(|| JobError::NotFound(id.into()))?;
        let (me, job, stop) = (self.clone(), id.to_string(), entry.stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("flowscore-train-{id}"))
            .spawn(move || me.run(job, spec, data, stop, resume));
        match spawned {
            Ok(thread) => {
                entry.thread = Some(thread);
                Ok(())
            }
            Err(e) => {
                entry.status.state = JobState::Failed;
                entry.status.error = Some(format!("cannot start the training thread: {e}"));
                write_status(&self.inner.dir.join(id), &entry.status);
                Err(JobError::BadRequest(format!("cannot start the training thread: {e}")))
            }
        }
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

    fn run(self, id: String, spec: JobSpec, data: Dataset, stop: Arc<AtomicU8>, resume: bool) {
        tch::set_num_threads(self.inner.config.threads.max(1) as i32);
        let m = &self.inner.metrics;
        self.update(&id, |s| s.state = JobState::Running);
        let started = Instant::now();
        let outcome = self.train_and_promote(&id, &spec, &data, stop.clone(), started, resume);
        let interrupted = stop.load(Ordering::SeqCst) == INTERRUPT;
        let (state, label) = match &outcome {
            Ok(()) => (JobState::Succeeded, "succeeded"),
            Err(TrainError::Cancelled) if interrupted => (JobState::Interrupted, "interrupted"),
            Err(TrainError::Cancelled) => (JobState::Cancelled, "cancelled"),
            Err(_) => (JobState::Failed, "failed"),
        };
        m.jobs.with_label_values(&[label]).inc();
        m.train_progress.set(0.0);
        self.update(&id, |s| {
            s.state = state;
            s.eta_seconds = None;
            match (&outcome, state) {
                (Err(e), JobState::Failed) => s.error = Some(e.to_string()),
                (_, JobState::Interrupted) => s.error = Some(interrupted_message(s)),
                _ => {}
            }
        });
        if matches!(state, JobState::Succeeded | JobState::Cancelled) {
            remove_resume_files(&self.inner.dir.join(&id));
        }
        tracing::info!(job = %id, outcome = label, seconds = started.elapsed().as_secs_f64(), "training job finished");
    }

    fn train_and_promote(
        &self,
        id: &str,
        spec: &JobSpec,
        data: &Dataset,
        stop: Arc<AtomicU8>,
        started: Instant,
        resume: bool,
    ) -> Result<(), TrainError> {
        let (train_set, val_set) = data.split(spec.config.val_fraction, spec.config.seed);
        let job_dir = self.inner.dir.join(id);
        let checkpoint = job_dir.join(CHECKPOINT_DIR);
        let mut observer = JobObserver {
            jobs: self.clone(),
            id: id.to_string(),
            stop,
            started,
            first_epoch: None,
            dir: checkpoint.clone(),
            max_epochs: spec.config.epochs,
        };
        let config = train::TrainConfig { device: self.inner.config.device, ..spec.config.clone() };
        let mut model = if resume {
            // The status's history up to the checkpoint, then the resumed epochs append to it.
            train::resume(&config, &train_set, &val_set, None, &checkpoint, &mut observer)?
        } else {
            train::train(&config, &train_set, &val_set, None, &mut observer)?
        };
        let registry = &self.inner.registry;
        let version = registry.next_version(&spec.name);
        model.card.name = spec.name.clone();
        model.card.version = version.clone();
        let model_id = ModelId { name: spec.name.clone(), version };
        let dir = registry.dir(&model_id).map_err(|e| TrainError::Data(e.to_string()))?;
        store::save(&mut model, &dir, false).map_err(|e| TrainError::Data(format!("saving the model: {e}")))?;
        let new_ll = model.card.training.as_ref().map_or(f64::NEG_INFINITY, |t| t.val_log_likelihood);
        let live = self.inner.models.resolve(&spec.name, None).ok();
        let live_dim = live.as_ref().map(|h| h.info().dim());
        let (promote, reason) = match spec.promote {
            Promotion::Never => (false, "promotion policy is `never`".to_string()),
            Promotion::Always | Promotion::Better if live.is_none() => {
                (true, format!("`{}` had no live version: the new name is served", spec.name))
            }
            // Clients of the live model send rows of its width: another width would break them.
            Promotion::Always if live_dim != Some(val_set.dim) => (
                false,
                format!(
                    "not promoted: it takes {} values per row, the live model {}",
                    val_set.dim,
                    live_dim.unwrap_or_default()
                ),
            ),
            Promotion::Always => (true, "promotion policy is `always`".to_string()),
            Promotion::Better => self.compare_with_live(new_ll, &val_set, &spec.name),
        };
        let promoted = promote
            && match self.inner.runtime.block_on(self.inner.models.activate(&model_id)) {
                Ok(_) => true,
                Err(e) => return Err(TrainError::Data(format!("the new model could not be swapped in: {e}"))),
            };
        self.update(id, |s| {
            s.model = Some(model_id);
            s.promoted = promoted;
            s.promotion_reason = Some(reason);
        });
        Ok(())
    }

    /// Scores the job's validation rows with `name`'s live model (a copy loaded here).
    fn compare_with_live(&self, new_ll: f64, val: &Dataset, name: &str) -> (bool, String) {
        let Ok(live) = self.inner.models.resolve(name, None) else {
            return (true, format!("`{name}` had no live version: the new name is served"));
        };
        let info = live.info();
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
    stop: Arc<AtomicU8>,
    started: Instant,
    /// The first epoch this run trained (after a resume, not 1), for the ETA.
    first_epoch: Option<usize>,
    /// Where the checkpoint goes.
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
        let first = *self.first_epoch.get_or_insert(record.epoch);
        let per_epoch = self.started.elapsed().as_secs_f64() / (record.epoch + 1 - first) as f64;
        let eta = per_epoch * self.max_epochs.saturating_sub(record.epoch) as f64;
        let record = record.clone();
        self.jobs.update(&self.id, |s| {
            s.epoch = record.epoch;
            s.progress = 1.0;
            // After a resume the epochs past the checkpoint run again: they replace their records.
            s.history.retain(|r| r.epoch < record.epoch);
            s.history.push(record);
            s.best_val_log_likelihood = Some(best_val);
            s.eta_seconds = Some(eta);
        });
    }

    fn on_checkpoint(&mut self, state: &mut train::TrainState) {
        // Atomic: a reader (or a resume) sees the previous checkpoint or this one.
        if let Err(e) = state.save(&self.dir) {
            tracing::warn!(job = %self.id, error = %e, "checkpoint failed");
        }
    }

    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::SeqCst) != RUN
    }
}

/// Only an interrupted job can be resumed, and only while no other job is queued or running.
fn resumable(jobs: &BTreeMap<String, Entry>, id: &str) -> Result<(), JobError> {
    let entry = jobs.get(id).ok_or_else(|| JobError::NotFound(id.into()))?;
    if entry.status.state != JobState::Interrupted {
        let state = serde_json::to_value(entry.status.state).ok().and_then(|v| v.as_str().map(String::from));
        return Err(JobError::NotResumable { id: id.into(), state: state.unwrap_or_default() });
    }
    ensure_idle(jobs)
}

/// Refuses a new job (or a resume) while another is queued or running.
fn ensure_idle(jobs: &BTreeMap<String, Entry>) -> Result<(), JobError> {
    match jobs.values().find(|e| matches!(e.status.state, JobState::Queued | JobState::Running)) {
        Some(busy) => Err(JobError::Busy(format!("{:?} ({})", busy.status.state, busy.status.id).to_lowercase())),
        None => Ok(()),
    }
}

fn interrupted_message(status: &JobStatus) -> String {
    format!(
        "interrupted during epoch {} (the server stopped); POST /train/{}/resume continues from the last finished epoch",
        status.epoch.max(1),
        status.id
    )
}

/// What only a resume needs: the checkpoint and the uploaded rows.
fn remove_resume_files(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join(CHECKPOINT_DIR));
    let _ = std::fs::remove_file(dir.join(DATA_FILE));
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
