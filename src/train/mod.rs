//! Fitting a NICE model by maximum likelihood: Adam on mini-batches, fresh dequantisation noise
//! for 8-bit data, a validation split, early stopping that keeps the best weights, and
//! calibration for anomaly scoring at the end. Every epoch's shuffle and noise come from the seed
//! and the epoch alone, and a checkpoint holds the whole state after an epoch (weights, Adam's
//! moments, the best weights, the early-stopping counters), so a run resumed from its checkpoint
//! ends with exactly the model an uninterrupted run would have.
mod adam;
mod config;

pub use config::{LrSchedule, PreprocessChoice, TrainConfig};

use crate::anomaly::ScoreKind;
use crate::calibration::Calibration;
use crate::data::Dataset;
use crate::flow::{bits_per_dim, Architecture, FlowError, Nice, Preprocess};
use crate::store::{self, EpochRecord, InputSpec, Model, ModelCard, StoreError, TrainingSummary};
use adam::Adam;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("invalid training data: {0}")]
    Data(String),
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("training diverged at epoch {0} (non-finite loss); try a lower learning rate")]
    Diverged(usize),
    #[error("cancelled")]
    Cancelled,
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

impl From<StoreError> for TrainError {
    fn from(e: StoreError) -> Self {
        TrainError::Checkpoint(e.to_string())
    }
}

/// Receives progress; lets the caller cancel between batches.
pub trait Observer {
    fn on_batch(&mut self, _epoch: usize, _done: usize, _total: usize) {}
    fn on_epoch(&mut self, _record: &EpochRecord, _best_val: f64) {}
    /// Called after every epoch with the whole training state, e.g. to `save` it.
    fn on_checkpoint(&mut self, _state: &mut TrainState) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Most parameters a trained model may have (800 MB of float32 weights).
const MAX_PARAMETERS: u128 = 200_000_000;

/// Rows evaluated per forward pass when scoring a whole data set.
const EVAL_CHUNK: usize = 2048;

/// What a run carries from one epoch to the next, besides tensors; saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub epochs_done: usize,
    pub history: Vec<EpochRecord>,
    /// The best validation log-likelihood so far and its epoch.
    pub best: Option<(f64, usize)>,
    /// Epochs since the best one.
    pub stale: usize,
    /// Adam steps taken.
    pub steps: u64,
}

/// The whole state of a run after an epoch.
pub struct TrainState {
    pub model: Model,
    adam: Adam,
    /// The weights of the best epoch so far.
    best_weights: BTreeMap<String, Tensor>,
    pub progress: Progress,
}

const TRAINER_TENSORS: &str = "trainer.safetensors";
const TRAINER_JSON: &str = "trainer.json";

impl TrainState {
    /// Writes the state to `dir` atomically: a model folder of the current weights (loadable as
    /// any model) with the optimiser and early-stopping state beside it.
    pub fn save(&mut self, dir: &Path) -> Result<(), TrainError> {
        let progress = serde_json::to_vec_pretty(&self.progress).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        let mut tensors = self.adam.state();
        tensors.extend(self.best_weights.iter().map(|(k, v)| (format!("best.{k}"), v.shallow_clone())));
        // Written from the CPU, so a checkpoint resumes on either device.
        let tensors: Vec<(String, Tensor)> = tensors.into_iter().map(|(k, v)| (k, v.to_device(Device::Cpu))).collect();
        store::save_with(&mut self.model, dir, true, |tmp| {
            let io = |path: std::path::PathBuf| move |source| StoreError::Io { path, source };
            let path = tmp.join(TRAINER_TENSORS);
            Tensor::write_safetensors(&tensors, &path)
                .map_err(|e| StoreError::Weights { path: path.clone(), message: e.to_string() })?;
            let path = tmp.join(TRAINER_JSON);
            std::fs::write(&path, &progress).map_err(io(path))
        })?;
        Ok(())
    }

    /// Reads a state written by `save`, checking it against `cfg`.
    fn load(dir: &Path, cfg: &TrainConfig) -> Result<TrainState, TrainError> {
        let bad = |m: String| TrainError::Checkpoint(format!("{}: {m}", dir.display()));
        let model = store::load(dir, cfg.device)?;
        let text = std::fs::read(dir.join(TRAINER_JSON)).map_err(|e| bad(format!("{TRAINER_JSON}: {e}")))?;
        let progress: Progress = serde_json::from_slice(&text).map_err(|e| bad(format!("{TRAINER_JSON}: {e}")))?;
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join(TRAINER_TENSORS))
            .map_err(|e| bad(format!("{TRAINER_TENSORS}: {e}")))?
            .into_iter()
            .collect();
        let mut adam = Adam::new(&model.vs, cfg.beta1, cfg.beta2, cfg.eps);
        adam.restore(progress.steps, &saved).map_err(bad)?;
        let mut best_weights = BTreeMap::new();
        for (name, var) in model.named_tensors() {
            let w = saved.get(&format!("best.{name}")).ok_or_else(|| bad(format!("no best weights for `{name}`")))?;
            if w.size() != var.size() {
                return Err(bad(format!("best weights for `{name}` have the wrong shape")));
            }
            best_weights.insert(name, w.shallow_clone());
        }
        Ok(TrainState { model, adam, best_weights, progress })
    }
}

/// Trains on `train`, early-stops on `val`, reports on `test` if given.
pub fn train(
    cfg: &TrainConfig,
    train: &Dataset,
    val: &Dataset,
    test: Option<&Dataset>,
    observer: &mut dyn Observer,
) -> Result<Model, TrainError> {
    cfg.validate()?;
    check_data(cfg, train, val, test)?;
    tch::manual_seed(cfg.seed as i64);
    let card = new_card(cfg, train)?;
    let mut model = Model::new(card, cfg.device)?;
    if cfg.data_init {
        let n = train.n.min(4096) as i64;
        model.nice.init_scale_from_data(&rows_tensor(train, cfg.device)?.narrow(0, 0, n))?;
    }
    let adam = Adam::new(&model.vs, cfg.beta1, cfg.beta2, cfg.eps);
    let state = TrainState { model, adam, best_weights: BTreeMap::new(), progress: Progress::default() };
    run(cfg, train, val, test, state, observer)
}

/// Continues the run whose checkpoint (`TrainState::save`) is in `dir`, on the same data and
/// configuration, to the model an uninterrupted run would have given.
pub fn resume(
    cfg: &TrainConfig,
    train: &Dataset,
    val: &Dataset,
    test: Option<&Dataset>,
    dir: &Path,
    observer: &mut dyn Observer,
) -> Result<Model, TrainError> {
    cfg.validate()?;
    check_data(cfg, train, val, test)?;
    let state = TrainState::load(dir, cfg)?;
    if state.model.card.architecture.dim != train.dim {
        return Err(TrainError::Checkpoint(format!(
            "the checkpoint's model takes {} values per row, the data has {}",
            state.model.card.architecture.dim, train.dim
        )));
    }
    run(cfg, train, val, test, state, observer)
}

/// Calibration from held-out rows and their log_probs. The default score kind is chosen here:
/// `complexity_corrected` for 8-bit image models (raw likelihood ranks simple out-of-distribution
/// images above the data; docs/anomaly.md), `likelihood` for everything else.
pub fn calibrate(
    card: &crate::store::ModelCard,
    rows: &Dataset,
    log_probs: &[f64],
    threshold_quantile: f64,
) -> Result<Calibration, TrainError> {
    let err = |e: String| TrainError::Data(format!("calibration: {e}"));
    let calibration = Calibration::from_log_probs(log_probs, threshold_quantile).map_err(|e| err(e.to_string()))?;
    match (card.image_shape(), card.input.eight_bit) {
        (Some(shape), true) => {
            let scores = rows
                .rows
                .chunks_exact(rows.dim)
                .zip(log_probs)
                .map(|(row, lp)| crate::anomaly::score(ScoreKind::ComplexityCorrected, *lp, row, Some(shape)))
                .collect::<Result<Vec<f64>, _>>()
                .map_err(|e| err(e.to_string()))?;
            calibration.with_complexity_corrected(&scores).map_err(|e| err(e.to_string()))
        }
        _ => Ok(calibration),
    }
}

/// The epochs after `state.progress.epochs_done`, then the best weights, calibration and summary.
fn run(
    cfg: &TrainConfig,
    train: &Dataset,
    val: &Dataset,
    test: Option<&Dataset>,
    mut state: TrainState,
    observer: &mut dyn Observer,
) -> Result<Model, TrainError> {
    let started = Instant::now();
    // Seconds of the epochs before a resume, so that records and the summary count the whole run.
    let before = state.progress.history.last().map_or(0.0, |r| r.seconds);
    let x_train = rows_tensor(train, cfg.device)?;
    let dim = train.dim;
    let batches = train.n.div_ceil(cfg.batch_size);
    let out_of_time = |t: &Instant| cfg.max_seconds.is_some_and(|m| before + t.elapsed().as_secs_f64() >= m);

    for epoch in state.progress.epochs_done + 1..=cfg.epochs {
        if out_of_time(&started) {
            break;
        }
        let epoch_start = Instant::now();
        // The epoch's shuffle and noise depend on the seed and the epoch only.
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<i64> = (0..train.n as i64).collect();
        order.shuffle(&mut rng);
        let (mut ll_sum, mut rows_seen) = (0.0, 0usize);
        for b in 0..batches {
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            if out_of_time(&started) && rows_seen > 0 {
                break;
            }
            let lo = b * cfg.batch_size;
            let hi = (lo + cfg.batch_size).min(train.n);
            let idx = Tensor::from_slice(&order[lo..hi]).to_device(cfg.device);
            let mut xb = x_train.index_select(0, &idx);
            if train.eight_bit {
                // (pixel + U(0,1)) / 256, with rows stored as (pixel + 0.5) / 256.
                let noise: Vec<f32> = (0..(hi - lo) * dim).map(|_| (rng.gen::<f32>() - 0.5) / 256.0).collect();
                xb += Tensor::f_from_slice(&noise)?.f_view([(hi - lo) as i64, dim as i64])?.to_device(cfg.device);
            }
            let lr = cfg.lr_at(epoch, b, batches).unwrap_or(cfg.lr);
            let ll = state.model.nice.log_prob(&xb)?.mean(Kind::Double);
            (-&ll).backward();
            state.adam.step(lr);
            let ll = ll.double_value(&[]);
            if !ll.is_finite() {
                return Err(TrainError::Diverged(epoch));
            }
            ll_sum += ll * (hi - lo) as f64;
            rows_seen += hi - lo;
            observer.on_batch(epoch, b + 1, batches);
        }
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        let val_ll = mean(&log_probs(&state.model.nice, val)?);
        if !val_ll.is_finite() {
            return Err(TrainError::Diverged(epoch));
        }
        let record = EpochRecord {
            epoch,
            seconds: before + started.elapsed().as_secs_f64(),
            train_log_likelihood: ll_sum / rows_seen.max(1) as f64,
            val_log_likelihood: val_ll,
            val_bits_per_dim: bits_per_dim(val_ll, dim, train.eight_bit),
            rows_per_second: rows_seen as f64 / train_seconds.max(1e-9),
        };
        let p = &mut state.progress;
        if p.best.is_none_or(|(b, _)| val_ll > b) {
            p.best = Some((val_ll, epoch));
            p.stale = 0;
            state.best_weights = snapshot(&state.model);
        } else {
            p.stale += 1;
        }
        p.epochs_done = epoch;
        p.steps = state.adam.steps();
        p.history.push(record.clone());
        let best_val = p.best.map_or(val_ll, |b| b.0);
        let stop = p.stale >= cfg.patience;
        observer.on_epoch(&record, best_val);
        observer.on_checkpoint(&mut state);
        if stop {
            break;
        }
    }

    let TrainState { mut model, best_weights, progress, .. } = state;
    let (best_val, best_epoch) = progress.best.ok_or_else(|| TrainError::Config("no epoch ran".into()))?;
    restore(&model, &best_weights);
    let val_lp = log_probs(&model.nice, val)?;
    let calibration = calibrate(&model.card, val, &val_lp, cfg.threshold_quantile)?;
    let test_ll = match test {
        Some(t) => Some(mean(&log_probs(&model.nice, t)?)),
        None => None,
    };
    model.card.calibration = Some(calibration);
    model.card.training = Some(TrainingSummary {
        data: train.source.clone(),
        train_rows: train.n,
        val_rows: val.n,
        epochs: progress.history.len(),
        best_epoch,
        wall_seconds: before + started.elapsed().as_secs_f64(),
        val_log_likelihood: best_val,
        val_bits_per_dim: bits_per_dim(best_val, dim, train.eight_bit),
        test_rows: test.map(|t| t.n),
        test_log_likelihood: test_ll,
        test_bits_per_dim: test_ll.map(|ll| bits_per_dim(ll, dim, train.eight_bit)),
        device: Some(crate::device::name(cfg.device)),
        recipe: serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null),
        history: progress.history,
    });
    Ok(model)
}

/// Exact log_prob of every row of `data`, evaluated in chunks without autograd.
pub fn log_probs(nice: &Nice, data: &Dataset) -> Result<Vec<f64>, TrainError> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::with_capacity(data.n);
    for lo in (0..data.n).step_by(EVAL_CHUNK) {
        let hi = (lo + EVAL_CHUNK).min(data.n);
        let x = Tensor::f_from_slice(&data.rows[lo * data.dim..hi * data.dim])?
            .f_view([(hi - lo) as i64, data.dim as i64])?
            .to_device(nice.device());
        let lp = nice.log_prob(&x)?.to_device(Device::Cpu);
        out.extend(Vec::<f64>::try_from(&lp)?);
    }
    Ok(out)
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The rows on `device`: on a GPU the whole training set moves there once.
fn rows_tensor(d: &Dataset, device: Device) -> Result<Tensor, TrainError> {
    Ok(Tensor::f_from_slice(&d.rows)?.f_view([d.n as i64, d.dim as i64])?.to_device(device))
}

fn check_data(cfg: &TrainConfig, train: &Dataset, val: &Dataset, test: Option<&Dataset>) -> Result<(), TrainError> {
    if train.n < 2 {
        return Err(TrainError::Data(format!("{}: need at least 2 training rows, got {}", train.source, train.n)));
    }
    if val.n == 0 {
        return Err(TrainError::Data("the validation split is empty; use more rows or a larger --val-fraction".into()));
    }
    if train.dim < 2 {
        return Err(TrainError::Data(format!("{}: NICE needs at least 2 columns, got {}", train.source, train.dim)));
    }
    // Weights and Adam's moments must fit in memory: four copies of every parameter.
    let (couplings, layers, units) = cfg.architecture_for(train);
    let (d, u) = (train.dim as u128, units as u128);
    let params = couplings as u128 * (d * u + (layers as u128 - 1) * u * u + u * d);
    if params > MAX_PARAMETERS {
        return Err(TrainError::Config(format!(
            "the model would have {params} parameters for {} columns; the limit is {MAX_PARAMETERS} (use fewer or smaller layers)",
            train.dim
        )));
    }
    for d in std::iter::once(val).chain(test) {
        if d.dim != train.dim {
            return Err(TrainError::Data(format!(
                "{} has {} columns, the training data {}",
                d.source, d.dim, train.dim
            )));
        }
    }
    if let Some(i) = train.rows.iter().position(|v| !v.is_finite()) {
        return Err(TrainError::Data(format!(
            "{}: row {} column {} is not finite",
            train.source,
            i / train.dim + 1,
            i % train.dim + 1
        )));
    }
    if cfg.preprocess_for(train) == PreprocessChoice::Logit {
        for d in [train, val].into_iter().chain(test) {
            if let Some(i) = d.rows.iter().position(|v| !(0.0..=1.0).contains(v)) {
                return Err(TrainError::Data(format!(
                    "{}: logit preprocessing needs values in [0, 1]; row {} column {} is {}",
                    d.source,
                    i / d.dim + 1,
                    i % d.dim + 1,
                    d.rows[i]
                )));
            }
        }
    }
    Ok(())
}

fn new_card(cfg: &TrainConfig, train: &Dataset) -> Result<ModelCard, TrainError> {
    let preprocess = match cfg.preprocess_for(train) {
        PreprocessChoice::Identity => Preprocess::Identity,
        PreprocessChoice::Logit => Preprocess::Logit { alpha: cfg.logit_alpha },
        PreprocessChoice::Standardize | PreprocessChoice::Auto => {
            let (mean, std) = train.feature_stats();
            Preprocess::Standardize { mean, std }
        }
        PreprocessChoice::Whiten => fit_whiten(train)?,
    };
    let (couplings, hidden_layers, hidden_units) = cfg.architecture_for(train);
    let architecture = Architecture { dim: train.dim, couplings, hidden_layers, hidden_units };
    let shape = match train.image_shape {
        Some([h, w]) => vec![h, w],
        None => vec![train.dim],
    };
    let input = InputSpec { shape, eight_bit: train.eight_bit };
    Ok(ModelCard::new(&cfg.name, architecture, cfg.prior, preprocess, input))
}

/// Shrinkage of the correlation matrix toward the identity before whitening: (1 − λ) C + λ I.
/// Chosen on the tabular anomaly benchmark (docs/anomaly.md); it also keeps L well conditioned
/// when features are collinear or rows are fewer than features.
const WHITEN_SHRINKAGE: f64 = 0.2;

/// Standardizes `train` and factors its shrunk correlation matrix (float64 throughout).
fn fit_whiten(train: &Dataset) -> Result<Preprocess, TrainError> {
    let (mean, std) = train.feature_stats();
    let (n, d) = (train.n as i64, train.dim as i64);
    let _guard = tch::no_grad_guard();
    let x = (Tensor::from_slice(&train.rows).to_kind(Kind::Double).view([n, d]) - Tensor::from_slice(&mean))
        / Tensor::from_slice(&std);
    let corr = x.tr().matmul(&x) / n as f64;
    let shrunk = corr * (1.0 - WHITEN_SHRINKAGE) + Tensor::eye(d, (Kind::Double, Device::Cpu)) * WHITEN_SHRINKAGE;
    let l = shrunk.f_linalg_cholesky(false).map_err(|e| TrainError::Data(format!("whitening: {e}")))?;
    let flat =
        Vec::<f64>::try_from(l.contiguous().view([-1])).map_err(|e| TrainError::Data(format!("whitening: {e}")))?;
    let cholesky = flat.chunks(d as usize).map(<[f64]>::to_vec).collect();
    Ok(Preprocess::Whiten { mean, std, cholesky })
}

fn snapshot(model: &Model) -> BTreeMap<String, Tensor> {
    let _guard = tch::no_grad_guard();
    model.named_tensors().into_iter().map(|(k, v)| (k, v.copy())).collect()
}

fn restore(model: &Model, weights: &BTreeMap<String, Tensor>) {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in model.named_tensors() {
        if let Some(w) = weights.get(&name) {
            var.copy_(w);
        }
    }
}
