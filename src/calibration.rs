//! Calibration for anomaly scoring: the model's log_probs on held-out normal rows, kept sorted in
//! the model card, turn a log_prob into a percentile and define the default anomaly threshold.
use crate::anomaly::{self, AnomalyError, ScoreKind};
use serde::{Deserialize, Serialize};

/// At most this many calibration values are kept in the card (evenly spaced order statistics).
pub const MAX_CALIBRATION_ROWS: usize = 10_000;
/// Default share of normal rows flagged as anomalies.
pub const DEFAULT_THRESHOLD_QUANTILE: f64 = 0.01;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Validation log_probs in nats, sorted ascending.
    pub log_probs: Vec<f64>,
    /// The quantile of `log_probs` used as the default threshold.
    pub threshold_quantile: f64,
    /// Rows with log_prob below this are anomalies by default.
    pub threshold: f64,
    /// The same rows' `complexity_corrected` scores, sorted ascending (8-bit image models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity_corrected: Option<Vec<f64>>,
    /// The score kind `/score` uses when a request names none (docs/anomaly.md, "Score kinds").
    #[serde(default = "default_kind")]
    pub default_kind: ScoreKind,
}

fn default_kind() -> ScoreKind {
    ScoreKind::Likelihood
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CalibrationError {
    #[error("calibration needs at least one finite log_prob")]
    Empty,
    #[error("calibration log_probs must be finite and sorted ascending")]
    Unsorted,
    #[error("quantile must be in [0, 1], got {0}")]
    Quantile(f64),
}

/// The finite `values`, sorted, thinned to at most `MAX_CALIBRATION_ROWS` evenly spaced order
/// statistics.
fn order_statistics(values: &[f64]) -> Result<Vec<f64>, CalibrationError> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Err(CalibrationError::Empty);
    }
    v.sort_by(f64::total_cmp);
    if v.len() > MAX_CALIBRATION_ROWS {
        let n = v.len();
        v = (0..MAX_CALIBRATION_ROWS).map(|i| v[i * (n - 1) / (MAX_CALIBRATION_ROWS - 1)]).collect();
    }
    Ok(v)
}

impl Calibration {
    /// Builds calibration from held-out log_probs (non-finite values are dropped).
    pub fn from_log_probs(values: &[f64], threshold_quantile: f64) -> Result<Calibration, CalibrationError> {
        let mut c = Calibration {
            log_probs: order_statistics(values)?,
            threshold_quantile,
            threshold: 0.0,
            complexity_corrected: None,
            default_kind: ScoreKind::Likelihood,
        };
        c.threshold = c.quantile(threshold_quantile)?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), CalibrationError> {
        if self.log_probs.is_empty() {
            return Err(CalibrationError::Empty);
        }
        let finite = self.log_probs.iter().all(|x| x.is_finite()) && self.threshold.is_finite();
        if !finite || self.log_probs.windows(2).any(|w| w[0] > w[1]) {
            return Err(CalibrationError::Unsorted);
        }
        if !(0.0..=1.0).contains(&self.threshold_quantile) {
            return Err(CalibrationError::Quantile(self.threshold_quantile));
        }
        if let Some(s) = &self.complexity_corrected {
            if s.is_empty() || s.iter().any(|x| !x.is_finite()) || s.windows(2).any(|w| w[0] > w[1]) {
                return Err(CalibrationError::Unsorted);
            }
        }
        if self.default_kind == ScoreKind::ComplexityCorrected && self.complexity_corrected.is_none() {
            return Err(CalibrationError::Empty);
        }
        Ok(())
    }

    /// Adds the `complexity_corrected` scores of the calibration rows and makes it the default.
    pub fn with_complexity_corrected(mut self, scores: &[f64]) -> Result<Calibration, CalibrationError> {
        self.complexity_corrected = Some(order_statistics(scores)?);
        self.default_kind = ScoreKind::ComplexityCorrected;
        Ok(self)
    }

    /// The calibration rows' scores of `kind`, sorted ascending.
    fn sorted_scores(&self, kind: ScoreKind) -> Result<&[f64], AnomalyError> {
        match kind {
            ScoreKind::Likelihood => Ok(&self.log_probs),
            ScoreKind::ComplexityCorrected => {
                self.complexity_corrected.as_deref().ok_or(AnomalyError::NoCalibration("complexity_corrected"))
            }
        }
    }

    /// The conformal p-value of a row's `score` of `kind` (higher is more anomalous).
    pub fn p_value(&self, kind: ScoreKind, score: f64) -> Result<f64, AnomalyError> {
        let sorted = self.sorted_scores(kind)?;
        Ok(match kind {
            // Stored as log_probs (score = −log_prob): the calibration scores ≥ s are the
            // log_probs ≤ −s.
            ScoreKind::Likelihood => {
                let at_least = sorted.partition_point(|lp| *lp <= -score);
                (1 + at_least) as f64 / (sorted.len() + 1) as f64
            }
            ScoreKind::ComplexityCorrected => anomaly::conformal_p_value(sorted, score),
        })
    }

    /// The score above which a share `q` of the calibration rows lies (`kind`'s units).
    pub fn score_quantile(&self, kind: ScoreKind, q: f64) -> Result<f64, AnomalyError> {
        match kind {
            ScoreKind::Likelihood => Ok(-self.quantile(q).map_err(|_| AnomalyError::NoCalibration("likelihood"))?),
            ScoreKind::ComplexityCorrected => {
                let v = self.sorted_scores(kind)?;
                let pos = (1.0 - q).clamp(0.0, 1.0) * (v.len() - 1) as f64;
                let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
                let hi = (lo + 1).min(v.len() - 1);
                Ok(v[lo] + (v[hi] - v[lo]) * frac)
            }
        }
    }

    /// The calibration rows' scores of `kind` in ascending order (for the drift test).
    pub fn scores(&self, kind: ScoreKind) -> Result<Vec<f64>, AnomalyError> {
        let sorted = self.sorted_scores(kind)?;
        Ok(match kind {
            ScoreKind::Likelihood => sorted.iter().rev().map(|lp| -lp).collect(),
            ScoreKind::ComplexityCorrected => sorted.to_vec(),
        })
    }

    /// Share of calibration rows with a lower log_prob than `log_prob`, in [0, 1].
    pub fn percentile(&self, log_prob: f64) -> f64 {
        let below = self.log_probs.partition_point(|v| *v < log_prob);
        below as f64 / self.log_probs.len() as f64
    }

    /// The q-quantile of the calibration log_probs (linear interpolation).
    pub fn quantile(&self, q: f64) -> Result<f64, CalibrationError> {
        if !(0.0..=1.0).contains(&q) {
            return Err(CalibrationError::Quantile(q));
        }
        let v = &self.log_probs;
        if v.is_empty() {
            return Err(CalibrationError::Empty);
        }
        let pos = q * (v.len() - 1) as f64;
        let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
        let hi = (lo + 1).min(v.len() - 1);
        Ok(v[lo] + (v[hi] - v[lo]) * frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_and_threshold() {
        let vals: Vec<f64> = (0..101).rev().map(f64::from).collect();
        let c = Calibration::from_log_probs(&vals, 0.1).unwrap();
        assert_eq!(c.log_probs[0], 0.0);
        assert!((c.threshold - 10.0).abs() < 1e-12);
        assert_eq!(c.percentile(-1.0), 0.0);
        assert!((c.percentile(50.0) - 50.0 / 101.0).abs() < 1e-12);
        assert_eq!(c.percentile(1000.0), 1.0);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn p_values_of_both_kinds_count_calibration_rows_at_least_as_extreme() {
        let c = Calibration::from_log_probs(&[-4.0, -3.0, -2.0, -1.0], 0.25).unwrap();
        // Likelihood scores are −log_prob: 1, 2, 3, 4.
        assert_eq!(c.p_value(ScoreKind::Likelihood, 0.5).unwrap(), 1.0);
        assert_eq!(c.p_value(ScoreKind::Likelihood, 3.0).unwrap(), 3.0 / 5.0);
        assert_eq!(c.p_value(ScoreKind::Likelihood, 9.0).unwrap(), 1.0 / 5.0);
        assert_eq!(c.scores(ScoreKind::Likelihood).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert!(c.p_value(ScoreKind::ComplexityCorrected, 0.0).is_err());
        let c = c.with_complexity_corrected(&[30.0, 10.0, 20.0]).unwrap();
        assert_eq!(c.default_kind, ScoreKind::ComplexityCorrected);
        assert_eq!(c.p_value(ScoreKind::ComplexityCorrected, 20.0).unwrap(), 3.0 / 4.0);
        assert_eq!(c.score_quantile(ScoreKind::ComplexityCorrected, 0.0).unwrap(), 30.0);
        assert_eq!(c.score_quantile(ScoreKind::Likelihood, 0.25).unwrap(), -c.quantile(0.25).unwrap());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn subsamples_and_rejects_bad_input() {
        let vals: Vec<f64> = (0..50_000).map(f64::from).collect();
        let c = Calibration::from_log_probs(&vals, 0.5).unwrap();
        assert_eq!(c.log_probs.len(), MAX_CALIBRATION_ROWS);
        assert_eq!(*c.log_probs.last().unwrap(), 49_999.0);
        assert_eq!(Calibration::from_log_probs(&[f64::NAN], 0.1), Err(CalibrationError::Empty));
        assert_eq!(Calibration::from_log_probs(&[1.0], 1.5), Err(CalibrationError::Quantile(1.5)));
        let mut bad = c.clone();
        bad.log_probs.swap(0, 5);
        assert_eq!(bad.validate(), Err(CalibrationError::Unsorted));
    }
}
