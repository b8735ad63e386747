//! Drift: each model's most recent scored rows against its calibration rows. Every scoring route
//! (/log_prob, /score, the protocol's infer) adds its rows' log_probs to the name's rolling window;
//! the two-sample Kolmogorov–Smirnov test compares the window with the calibration log_probs,
//! read at each /metrics scrape and by `GET /models/{name}/drift`. The window is the likelihood
//! score because every route computes it; a swap to another version starts a new window.
use crate::anomaly::ks_two_sample;
use crate::engine::ModelInfo;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Rows in each window unless configured (`--drift-window`).
pub const DEFAULT_WINDOW: usize = 1000;

/// Cheap to clone.
#[derive(Clone)]
pub struct Drift(Arc<Inner>);

struct Inner {
    capacity: usize,
    windows: Mutex<HashMap<String, Window>>,
}

struct Window {
    /// The loaded version whose rows these are.
    generation: u64,
    log_probs: VecDeque<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DriftReport {
    /// Rows in the window (at most the window size).
    pub window_rows: usize,
    pub window_size: usize,
    pub calibration_rows: usize,
    /// KS statistic: the largest gap between the two empirical CDFs, in [0, 1].
    pub ks_statistic: f64,
    /// Its p-value: small when the recent rows do not look like the calibration rows.
    pub p_value: f64,
    /// The calibration threshold (log_prob, nats): rows below it are anomalies by default.
    pub threshold: f64,
    /// Share of the window's rows below the threshold (None while the window is empty).
    pub window_anomaly_share: Option<f64>,
    /// Only in `GET /models/{name}/drift` (the metrics scrape needs the test alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram: Option<ScoreHistogram>,
}

/// Both samples binned on the same edges, as shares of their rows, for plotting one over the other.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ScoreHistogram {
    /// `HISTOGRAM_BINS + 1` ascending log_prob edges (nats), spanning the calibration rows and a
    /// tenth of their range either side.
    pub edges: Vec<f64>,
    pub calibration: Vec<f64>,
    pub window: Vec<f64>,
    /// Shares of the window's rows below the first edge and above the last (far outliers).
    pub window_below_range: f64,
    pub window_above_range: f64,
}

/// Bins of the drift histogram.
pub const HISTOGRAM_BINS: usize = 40;

impl ScoreHistogram {
    /// `calibration` sorted ascending and not empty.
    fn new(calibration: &[f64], window: &[f64]) -> ScoreHistogram {
        let (lo, hi) = (calibration[0], calibration[calibration.len() - 1]);
        let pad = if hi > lo { (hi - lo) / 10.0 } else { 1.0 };
        let (lo, hi) = (lo - pad, hi + pad);
        let width = (hi - lo) / HISTOGRAM_BINS as f64;
        let edges = (0..=HISTOGRAM_BINS).map(|i| lo + width * i as f64).collect();
        let shares = |values: &[f64]| {
            let mut bins = vec![0.0; HISTOGRAM_BINS];
            let (mut below, mut above) = (0.0, 0.0);
            let one = 1.0 / values.len().max(1) as f64;
            for v in values {
                let i = ((v - lo) / width).floor();
                if i < 0.0 {
                    below += one;
                } else if i >= HISTOGRAM_BINS as f64 {
                    // The top edge itself belongs to the last bin.
                    if *v <= hi {
                        bins[HISTOGRAM_BINS - 1] += one
                    } else {
                        above += one
                    }
                } else {
                    bins[i as usize] += one;
                }
            }
            (bins, below, above)
        };
        let (calibration, _, _) = shares(calibration);
        let (window, window_below_range, window_above_range) = shares(window);
        ScoreHistogram { edges, calibration, window, window_below_range, window_above_range }
    }
}

impl Drift {
    pub fn new(capacity: usize) -> Drift {
        Drift(Arc::new(Inner { capacity: capacity.max(1), windows: Mutex::new(HashMap::new()) }))
    }

    /// Adds scored rows of `model` (finite log_probs only).
    pub fn record(&self, model: &ModelInfo, log_probs: &[f64]) {
        let Ok(mut windows) = self.0.windows.lock() else { return };
        // The name is copied only the first time: this runs on every scoring request.
        if !windows.contains_key(&model.card.name) {
            let window = Window { generation: model.generation, log_probs: VecDeque::with_capacity(self.0.capacity) };
            windows.insert(model.card.name.clone(), window);
        }
        let Some(w) = windows.get_mut(&model.card.name) else { return };
        if w.generation != model.generation {
            w.generation = model.generation;
            w.log_probs.clear();
        }
        for lp in log_probs.iter().filter(|v| v.is_finite()) {
            if w.log_probs.len() == self.0.capacity {
                w.log_probs.pop_front();
            }
            w.log_probs.push_back(*lp);
        }
    }

    /// The window of `model` against its calibration; None without calibration. A window of
    /// another version (the name was swapped) counts as empty.
    pub fn report(&self, model: &ModelInfo) -> Option<DriftReport> {
        self.compare(model, false)
    }

    /// `report` with both samples binned for plotting.
    pub fn report_with_histogram(&self, model: &ModelInfo) -> Option<DriftReport> {
        self.compare(model, true)
    }

    fn compare(&self, model: &ModelInfo, histogram: bool) -> Option<DriftReport> {
        let calibration = model.card.calibration.as_ref()?;
        let mut recent: Vec<f64> = match self.0.windows.lock() {
            Ok(w) => w
                .get(&model.card.name)
                .filter(|w| w.generation == model.generation)
                .map(|w| w.log_probs.iter().copied().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        recent.sort_by(f64::total_cmp);
        let (ks_statistic, p_value) = ks_two_sample(&recent, &calibration.log_probs);
        let below = recent.partition_point(|v| *v < calibration.threshold);
        let window_anomaly_share = (!recent.is_empty()).then(|| below as f64 / recent.len() as f64);
        // A card read from a file may hold no calibration rows: no histogram then, not a panic.
        let histogram = (histogram && !calibration.log_probs.is_empty())
            .then(|| ScoreHistogram::new(&calibration.log_probs, &recent));
        Some(DriftReport {
            window_rows: recent.len(),
            window_size: self.0.capacity,
            calibration_rows: calibration.log_probs.len(),
            ks_statistic,
            p_value,
            threshold: calibration.threshold,
            window_anomaly_share,
            histogram,
        })
    }

    /// Forgets a name that is no longer served.
    pub fn forget(&self, name: &str) {
        if let Ok(mut w) = self.0.windows.lock() {
            w.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_bins_both_samples_on_the_calibration_range() {
        let calibration: Vec<f64> = (0..10).map(f64::from).collect();
        let h = ScoreHistogram::new(&calibration, &[-100.0, 5.0, 9.0, 100.0]);
        assert_eq!(h.edges.len(), HISTOGRAM_BINS + 1);
        assert!((h.edges[0] + 0.9).abs() < 1e-12 && (h.edges[HISTOGRAM_BINS] - 9.9).abs() < 1e-12);
        assert!(h.calibration.iter().all(|s| *s == 0.0 || (*s - 0.1).abs() < 1e-12));
        assert!((h.calibration.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!((h.window_below_range, h.window_above_range), (0.25, 0.25));
        // 5 falls in bin floor(5.9 / 0.27) = 21, 9 in bin floor(9.9 / 0.27) = 36.
        let hits: Vec<usize> = (0..HISTOGRAM_BINS).filter(|i| h.window[*i] > 0.0).collect();
        assert_eq!(hits, [21, 36]);
    }
}
