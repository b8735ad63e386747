//! Training hyperparameters, shared by `flowscore train` and (later) HTTP training jobs.
use super::TrainError;
use crate::flow::Prior;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessChoice {
    /// logit for 8-bit data (images); whiten for tables of at most 256 features; standardize
    /// for wider tables.
    Auto,
    Identity,
    Standardize,
    Logit,
    Whiten,
}

/// Default (couplings, hidden layers, hidden units) by kind of data.
const IMAGE_ARCHITECTURE: (usize, usize, usize) = (6, 3, 400);
const TABLE_ARCHITECTURE: (usize, usize, usize) = (4, 2, 64);

/// `auto` whitens tables up to this many features: the D × D factor lives in the card.
pub const WHITEN_MAX_DIM: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same learning rate throughout (the paper).
    Constant,
    /// Cosine decay from `lr` to 0 over `epochs`.
    Cosine,
}

/// Bounds that keep a model trainable in memory (16 × 8 × 1024² ≈ 134 M parameters at most in
/// the hidden layers) and a job finite.
const MAX_COUPLINGS: usize = 16;
const MAX_HIDDEN_LAYERS: usize = 8;
const MAX_HIDDEN_UNITS: usize = 1024;
const MAX_EPOCHS: usize = 10_000;
const MAX_BATCH_SIZE: usize = 65_536;
const MAX_SECONDS: f64 = 1e7;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Model name written into the card.
    #[arg(long, default_value = "model")]
    pub name: String,
    /// Additive coupling layers [default: 6 for images, 4 for tables].
    #[arg(long)]
    #[serde(default)]
    pub couplings: Option<usize>,
    /// Hidden layers per coupling MLP [default: 3 for images, 2 for tables].
    #[arg(long)]
    #[serde(default)]
    pub hidden_layers: Option<usize>,
    /// Units per hidden layer [default: 400 for images, 64 for tables].
    #[arg(long)]
    #[serde(default)]
    pub hidden_units: Option<usize>,
    #[arg(long, value_enum, default_value = "logistic")]
    pub prior: Prior,
    /// Fixed preprocessing: logit for data in [0,1] (images), whiten or standardize for tables;
    /// auto picks logit for 8-bit data, whiten for up to 256 features, standardize otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub preprocess: PreprocessChoice,
    /// α of the logit preprocessing: h = logit(α + (1 − 2α) x).
    #[arg(long, default_value_t = 0.05)]
    pub logit_alpha: f64,
    /// Maximum epochs.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Stop after this many seconds of training (the epoch in progress ends early).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Adam learning rate (the paper: 1e-3; 2e-3 trains faster with the zero-initialised
    /// couplings and data-initialised scaling).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, value_enum, default_value = "constant")]
    pub lr_schedule: LrSchedule,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// Adam β2 (the paper's "β2 = 0.01" is 1 − β2).
    #[arg(long, default_value_t = 0.99)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub eps: f64,
    /// Share of the training rows held out for validation (early stopping, calibration).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Stop after this many epochs without a better validation log-likelihood.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Initialise the scaling layer so z has the prior's spread on the data (instead of s = 0).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub data_init: bool,
    /// Calibration quantile used as the default anomaly threshold.
    #[arg(long, default_value_t = crate::calibration::DEFAULT_THRESHOLD_QUANTILE)]
    pub threshold_quantile: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to train: cpu, cuda, cuda:N or auto (CUDA when libtorch sees a GPU). HTTP jobs
    /// train on the server's `--device`.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse)]
    #[serde(skip, default = "cpu")]
    pub device: tch::Device,
}

fn cpu() -> tch::Device {
    tch::Device::Cpu
}

impl TrainConfig {
    /// The preprocessing for `data`, with `auto` resolved.
    pub fn preprocess_for(&self, data: &crate::data::Dataset) -> PreprocessChoice {
        match self.preprocess {
            PreprocessChoice::Auto if data.eight_bit => PreprocessChoice::Logit,
            PreprocessChoice::Auto if data.dim <= WHITEN_MAX_DIM => PreprocessChoice::Whiten,
            PreprocessChoice::Auto => PreprocessChoice::Standardize,
            other => other,
        }
    }

    /// Couplings, hidden layers and hidden units for `data`, with unset ones from its kind's
    /// default: the paper's large network for images, a small one for tables, where the large one
    /// overfits hundreds of rows (docs/anomaly.md, "Tables").
    pub fn architecture_for(&self, data: &crate::data::Dataset) -> (usize, usize, usize) {
        let (c, l, u) = if data.eight_bit { IMAGE_ARCHITECTURE } else { TABLE_ARCHITECTURE };
        (self.couplings.unwrap_or(c), self.hidden_layers.unwrap_or(l), self.hidden_units.unwrap_or(u))
    }

    /// Refuses what cannot train, or could not fit in memory: the ranges are `json_schema`'s.
    pub fn validate(&self) -> Result<(), TrainError> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(TrainError::Config(what.into())) };
        let within = |v: Option<usize>, max: usize| v.is_none_or(|v| (1..=max).contains(&v));
        check(within(self.couplings, MAX_COUPLINGS), "couplings must be in 1..=16")?;
        check(within(self.hidden_layers, MAX_HIDDEN_LAYERS), "hidden_layers must be in 1..=8")?;
        check(within(self.hidden_units, MAX_HIDDEN_UNITS), "hidden_units must be in 1..=1024")?;
        check((1..=MAX_EPOCHS).contains(&self.epochs), "epochs must be in 1..=10000")?;
        check((1..=MAX_EPOCHS).contains(&self.patience), "patience must be in 1..=10000")?;
        check((1..=MAX_BATCH_SIZE).contains(&self.batch_size), "batch_size must be in 1..=65536")?;
        check(self.lr > 0.0 && self.lr <= 10.0, "lr must be in (0, 10]")?;
        check(
            (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2),
            "beta1 and beta2 must be in [0, 1)",
        )?;
        check(self.eps > 0.0 && self.eps <= 1.0, "eps must be in (0, 1]")?;
        check(self.val_fraction > 0.0 && self.val_fraction < 1.0, "val_fraction must be in (0, 1)")?;
        check((0.0..=1.0).contains(&self.threshold_quantile), "threshold_quantile must be in [0, 1]")?;
        check((0.0..0.5).contains(&self.logit_alpha), "logit_alpha must be in [0, 0.5)")?;
        check(self.max_seconds.is_none_or(|s| s > 0.0 && s <= MAX_SECONDS), "max_seconds must be in (0, 10000000]")
    }

    /// The JSON schema of a training `config` object over HTTP: every field optional (the
    /// defaults of `flowscore train` fill in), with the ranges `validate` enforces.
    pub fn json_schema() -> serde_json::Value {
        use serde_json::json;
        let int = |lo: usize, hi: usize| json!({"type": "integer", "minimum": lo, "maximum": hi});
        // null: the default for the data's kind (images or tables).
        let int_or_null = |lo: usize, hi: usize| json!({"type": ["integer", "null"], "minimum": lo, "maximum": hi});
        let enumerated = |values: &[&str]| json!({"type": "string", "enum": values});
        json!({
            "type": "object",
            "additionalProperties": false,
            "description": "Hyperparameters overriding the defaults of `flowscore train` (same names, snake_case).",
            "properties": {
                "couplings": int_or_null(1, MAX_COUPLINGS),
                "hidden_layers": int_or_null(1, MAX_HIDDEN_LAYERS),
                "hidden_units": int_or_null(1, MAX_HIDDEN_UNITS),
                "prior": enumerated(&["logistic", "gaussian"]),
                "preprocess": enumerated(&["auto", "identity", "standardize", "logit", "whiten"]),
                "logit_alpha": {"type": "number", "minimum": 0, "exclusiveMaximum": 0.5},
                "epochs": int(1, MAX_EPOCHS),
                "max_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
                "batch_size": int(1, MAX_BATCH_SIZE),
                "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                "lr_schedule": enumerated(&["constant", "cosine"]),
                "beta1": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                "beta2": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                "eps": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "val_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "patience": int(1, MAX_EPOCHS),
                "data_init": {"type": "boolean"},
                "threshold_quantile": {"type": "number", "minimum": 0, "maximum": 1},
                "seed": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
            },
        })
    }

    /// The learning rate for a step, when the schedule changes it.
    pub(super) fn lr_at(&self, epoch: usize, batch: usize, batches: usize) -> Option<f64> {
        match self.lr_schedule {
            LrSchedule::Constant => None,
            LrSchedule::Cosine => {
                let t = ((epoch - 1) as f64 + batch as f64 / batches as f64) / self.epochs as f64;
                Some(0.5 * self.lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
            }
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            cfg: TrainConfig,
        }
        Wrapper::parse_from(["flowscore"]).cfg
    }
}
