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
    /// h = L⁻¹ (x − mean) / std: standardize, then decorrelate with L, the lower Cholesky factor of
    /// the training rows' correlation matrix shrunk toward the identity (tables). The flow then
    /// starts from a full-covariance fit instead of an axis-aligned one.
    Whiten { mean: Vec<f64>, std: Vec<f64>, cholesky: Vec<Vec<f64>> },
}

impl Preprocess {
    pub(super) fn validate(&self, dim: usize) -> Result<(), FlowError> {
        let bad = |m: String| Err(FlowError::InvalidSpec(m));
        let moments = |kind: &str, mean: &[f64], std: &[f64]| {
            if mean.len() != dim || std.len() != dim {
                return bad(format!("{kind} needs {dim} means and stds, got {} and {}", mean.len(), std.len()));
            }
            if let Some(i) = mean.iter().position(|m| !m.is_finite()) {
                return bad(format!("{kind} mean[{i}] is not finite"));
            }
            if let Some(i) = std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
                return bad(format!("{kind} std[{i}] must be finite and > 0"));
            }
            Ok(())
        };
        match self {
            Preprocess::Identity => Ok(()),
            Preprocess::Standardize { mean, std } => moments("standardize", mean, std),
            Preprocess::Whiten { mean, std, cholesky } => {
                moments("whiten", mean, std)?;
                if cholesky.len() != dim || cholesky.iter().any(|r| r.len() != dim) {
                    return bad(format!("whiten cholesky must be {dim} rows of {dim} values"));
                }
                for (i, row) in cholesky.iter().enumerate() {
                    if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                        return bad(format!("whiten cholesky[{i}][{j}] is not finite"));
                    }
                    if let Some(j) = row[i + 1..].iter().position(|v| *v != 0.0) {
                        return bad(format!("whiten cholesky must be lower triangular; [{i}][{}] is not 0", i + 1 + j));
                    }
                    if row[i] <= 0.0 {
                        return bad(format!("whiten cholesky[{i}][{i}] must be > 0"));
                    }
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
            Preprocess::Whiten { mean, std, cholesky } => {
                let d = mean.len() as i64;
                let l = Tensor::from_slice(&cholesky.concat()).view([d, d]);
                // L⁻¹ once, in f64: encoding (the hot path) is then one matmul.
                let inv = l.linalg_solve_triangular(&Tensor::eye(d, (Kind::Double, Device::Cpu)), false, true, false);
                let float = |t: Tensor| t.to_kind(Kind::Float).to_device(device).contiguous();
                let log_diag: f64 = (0..cholesky.len()).map(|i| cholesky[i][i].ln()).sum();
                PreprocessTensors::Whiten {
                    mean: float(Tensor::from_slice(mean)),
                    std: float(Tensor::from_slice(std)),
                    inv_t: float(inv.tr()),
                    l_t: float(l.tr()),
                    log_det: -std.iter().map(|s| s.ln()).sum::<f64>() - log_diag,
                }
            }
        }
    }
}

/// Preprocessing ready to run: constants on the model's device, the constant part of the
/// log-Jacobian summed once in f64.
#[derive(Debug)]
pub(super) enum PreprocessTensors {
    Identity,
    Standardize {
        mean: Tensor,
        std: Tensor,
        log_det: f64,
    },
    Logit {
        alpha: f64,
    },
    /// Row-vector form: h = ((x − mean) / std) L⁻ᵀ, so `inv_t` = L⁻ᵀ and `l_t` = Lᵀ. Cast to the
    /// input's kind, as the float64 copy of a model feeds float64 rows.
    Whiten {
        mean: Tensor,
        std: Tensor,
        inv_t: Tensor,
        l_t: Tensor,
        log_det: f64,
    },
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
            PreprocessTensors::Whiten { mean, std, inv_t, log_det, .. } => {
                (((x - mean) / std).matmul(&inv_t.to_kind(x.kind())), zeros(rows, x.device()) + *log_det)
            }
        }
    }

    /// x = pre⁻¹(h).
    pub(super) fn inverse(&self, h: &Tensor) -> Tensor {
        match self {
            PreprocessTensors::Identity => h.shallow_clone(),
            PreprocessTensors::Standardize { mean, std, .. } => h * std + mean,
            PreprocessTensors::Logit { alpha } => (h.sigmoid() - *alpha) / (1.0 - 2.0 * alpha),
            PreprocessTensors::Whiten { mean, std, l_t, .. } => h.matmul(&l_t.to_kind(h.kind())) * std + mean,
        }
    }
}

fn zeros(rows: i64, device: Device) -> Tensor {
    Tensor::zeros([rows], (Kind::Double, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiten(cholesky: Vec<Vec<f64>>) -> Preprocess {
        Preprocess::Whiten { mean: vec![0.0; 2], std: vec![1.0; 2], cholesky }
    }

    #[test]
    fn whiten_factor_must_be_lower_triangular_with_positive_diagonal() {
        assert!(whiten(vec![vec![1.0, 0.0], vec![0.5, 2.0]]).validate(2).is_ok());
        for (bad, says) in [
            (vec![vec![1.0, 0.1], vec![0.5, 2.0]], "lower triangular"),
            (vec![vec![1.0, 0.0], vec![0.5, 0.0]], "[1][1] must be > 0"),
            (vec![vec![1.0, 0.0], vec![f64::NAN, 1.0]], "not finite"),
            (vec![vec![1.0, 0.0]], "2 rows of 2"),
        ] {
            let err = whiten(bad).validate(2).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}
