//! The model's own fixed preprocessing h = pre(x). Its log-Jacobian is part of log_prob, so
//! log_prob is the density of the input exactly as the client sends it.
use super::FlowError;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Preprocess {
    /// h = x.
    Identity,
    /// h = (x − mean) / std, fitted per feature on the training set (tabular data).
    Standardize { mean: Vec<f64>, std: Vec<f64> },
    /// h = logit(α + (1 − 2α) x) for data in [0, 1] (images): spreads pixels bunched at 0 and 1.
    Logit { alpha: f64 },
}

impl Preprocess {
    pub(super) fn validate(&self, dim: usize) -> Result<(), FlowError> {
        let bad = |m: String| Err(FlowError::InvalidSpec(m));
        match self {
            Preprocess::Identity => Ok(()),
            Preprocess::Standardize { mean, std } => {
                if mean.len() != dim || std.len() != dim {
                    return bad(format!(
                        "standardize needs {dim} means and stds, got {} and {}",
                        mean.len(),
                        std.len()
                    ));
                }
                if let Some(i) = mean.iter().position(|m| !m.is_finite()) {
                    return bad(format!("standardize mean[{i}] is not finite"));
                }
                if let Some(i) = std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
                    return bad(format!("standardize std[{i}] must be finite and > 0"));
                }
                Ok(())
            }
            Preprocess::Logit { alpha } => {
                if !(alpha.is_finite() && *alpha >= 0.0 && *alpha < 0.5) {
                    return bad(format!("logit alpha must be in [0, 0.5), got {alpha}"));
                }
                Ok(())
            }
        }
    }

    /// The interval inputs must lie in for the density to be defined, if any.
    pub fn domain(&self) -> Option<(f64, f64)> {
        match self {
            Preprocess::Logit { .. } => Some((0.0, 1.0)),
            _ => None,
        }
    }

    pub(super) fn tensors(&self, device: Device) -> PreprocessTensors {
        match self {
            Preprocess::Identity => PreprocessTensors::Identity,
            Preprocess::Standardize { mean, std } => PreprocessTensors::Standardize {
                mean: Tensor::from_slice(mean).to_kind(Kind::Float).to_device(device),
                std: Tensor::from_slice(std).to_kind(Kind::Float).to_device(device),
                log_det: -std.iter().map(|s| s.ln()).sum::<f64>(),
            },
            Preprocess::Logit { alpha } => PreprocessTensors::Logit { alpha: *alpha },
        }
    }
}

/// Preprocessing ready to run: constants on the model's device, the constant part of the
/// log-Jacobian summed once in f64.
#[derive(Debug)]
pub(super) enum PreprocessTensors {
    Identity,
    Standardize { mean: Tensor, std: Tensor, log_det: f64 },
    Logit { alpha: f64 },
}

impl PreprocessTensors {
    /// h = pre(x) and log|det ∂h/∂x| per row (f64).
    pub(super) fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let rows = x.size()[0];
        match self {
            PreprocessTensors::Identity => (x.shallow_clone(), zeros(rows, x.device())),
            PreprocessTensors::Standardize { mean, std, log_det } => {
                ((x - mean) / std, zeros(rows, x.device()) + *log_det)
            }
            PreprocessTensors::Logit { alpha } => {
                let u = x * (1.0 - 2.0 * alpha) + *alpha;
                let (log_u, log_1mu) = (u.log(), (-&u).log1p());
                let h = &log_u - &log_1mu;
                let dim = x.size()[1] as f64;
                let per_dim = -(log_u + log_1mu);
                let log_det = per_dim.sum_dim_intlist(1, false, Kind::Double) + dim * (1.0 - 2.0 * alpha).ln();
                (h, log_det)
            }
        }
    }

    /// x = pre⁻¹(h).
    pub(super) fn inverse(&self, h: &Tensor) -> Tensor {
        match self {
            PreprocessTensors::Identity => h.shallow_clone(),
            PreprocessTensors::Standardize { mean, std, .. } => h * std + mean,
            PreprocessTensors::Logit { alpha } => (h.sigmoid() - *alpha) / (1.0 - 2.0 * alpha),
        }
    }
}

fn zeros(rows: i64, device: Device) -> Tensor {
    Tensor::zeros([rows], (Kind::Double, device))
}
