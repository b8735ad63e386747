//! Training hyperparameters, shared by `flowscore train` and (later) HTTP training jobs.
use super::TrainError;
use crate::flow::Prior;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessChoice {
    /// logit for 8-bit data (images), standardize otherwise.
    Auto,
    Identity,
    Standardize,
    Logit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same learning rate throughout (the paper).
    Constant,
    /// Cosine decay from `lr` to 0 over `epochs`.
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Model name written into the card.
    #[arg(long, default_value = "model")]
    pub name: String,
    /// Additive coupling layers.
    #[arg(long, default_value_t = 6)]
    pub couplings: usize,
    /// Hidden layers per coupling MLP.
    #[arg(long, default_value_t = 3)]
    pub hidden_layers: usize,
    /// Units per hidden layer.
    #[arg(long, default_value_t = 400)]
    pub hidden_units: usize,
    #[arg(long, value_enum, default_value = "logistic")]
    pub prior: Prior,
    /// Fixed preprocessing: logit for data in [0,1] (images), standardize for tables; auto
    /// picks logit for 8-bit data and standardize otherwise.
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
}

impl TrainConfig {
    /// The preprocessing for `data`, with `auto` resolved.
    pub fn preprocess_for(&self, data: &crate::data::Dataset) -> PreprocessChoice {
        match self.preprocess {
            PreprocessChoice::Auto if data.eight_bit => PreprocessChoice::Logit,
            PreprocessChoice::Auto => PreprocessChoice::Standardize,
            other => other,
        }
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.into()));
        if self.batch_size == 0 {
            return bad("batch_size must be > 0");
        }
        if self.epochs == 0 {
            return bad("epochs must be > 0");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr must be > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1 and beta2 must be in [0, 1)");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps must be > 0");
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad("val_fraction must be in (0, 1)");
        }
        if !(0.0..=1.0).contains(&self.threshold_quantile) {
            return bad("threshold_quantile must be in [0, 1]");
        }
        if self.max_seconds.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return bad("max_seconds must be > 0");
        }
        Ok(())
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
