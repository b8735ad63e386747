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
        Some(DriftReport {
            window_rows: recent.len(),
            window_size: self.0.capacity,
            calibration_rows: calibration.log_probs.len(),
            ks_statistic,
            p_value,
        })
    }

    /// Forgets a name that is no longer served.
    pub fn forget(&self, name: &str) {
        if let Ok(mut w) = self.0.windows.lock() {
            w.remove(name);
        }
    }
}
