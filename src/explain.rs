//! Per-feature explanations grounded in the flow: for each feature j of a row x, the
//! log-likelihood gained by re-optimising x_j with the other features held,
//!
//!   a_j(x) = max_t log p(x with x_j := t) − log p(x)  ≥ 0,
//!
//! which is log [ max_t p(t | x_−j) / p(x_j | x_−j) ]: how far the observed value sits from the
//! most likely value of that feature given the others, in nats. It is exact in the model (no
//! gradient, no baseline), zero for a feature at its conditional mode, and large for a feature
//! that alone makes the row unlikely. The maximum is taken over a grid of candidate values per
//! feature (docs/anomaly.md, "Explanations"), so a_j is a lower bound of the true gain.
use crate::flow::{FlowError, Preprocess};
use crate::store::Model;
use tch::{Device, Kind, Tensor};

/// Candidate values per feature for tabular models.
pub const TABULAR_GRID: usize = 33;
/// Candidate values per pixel for 8-bit image models: every 16th grey level.
pub const IMAGE_GRID: usize = 16;
/// Rows scored in one forward pass while explaining.
const CHUNK: i64 = 8192;

#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Row-major n × D gains, nats.
    pub attributions: Vec<f64>,
    pub log_prob: Vec<f64>,
}

/// The candidate values of each feature: grey levels for 8-bit images; for standardised tables
/// mean ± 4 std; otherwise the 0.1% to 99.9% range of 4096 samples from the model itself.
pub fn grid(model: &Model) -> Result<Vec<Vec<f32>>, FlowError> {
    let dim = model.nice.dim();
    let even = |lo: f64, hi: f64, n: usize| -> Vec<f32> {
        (0..n).map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32).collect()
    };
    if model.card.input.eight_bit {
        let levels: Vec<f32> = (0..IMAGE_GRID).map(|i| ((i * 256 / IMAGE_GRID + 8) as f32 + 0.5) / 256.0).collect();
        return Ok(vec![levels; dim]);
    }
    match &model.card.preprocess {
        Preprocess::Standardize { mean, std } | Preprocess::Whiten { mean, std, .. } => {
            Ok(mean.iter().zip(std).map(|(m, s)| even(m - 4.0 * s, m + 4.0 * s, TABULAR_GRID)).collect())
        }
        Preprocess::Logit { .. } => Ok(vec![even(0.005, 0.995, TABULAR_GRID); dim]),
        Preprocess::Identity => {
            let samples = model.nice.sample(4096, 0, 1.0)?.to_kind(Kind::Double);
            let sorted = samples.sort(0, false).0;
            let at = |q: f64| sorted.get((q * 4095.0).round() as i64);
            let (lo, hi) = (at(0.001), at(0.999));
            Ok((0..dim as i64).map(|j| even(lo.double_value(&[j]), hi.double_value(&[j]), TABULAR_GRID)).collect())
        }
    }
}

/// Explains `rows` (n × D, float32) with `model` over `grid`.
pub fn explain(model: &Model, rows: &Tensor, grid: &[Vec<f32>]) -> Result<Explanation, FlowError> {
    let _guard = tch::no_grad_guard();
    let (n, dim) = (rows.size()[0], rows.size()[1]);
    let mut base: Vec<f64> = Vec::try_from(model.nice.log_prob(rows)?.to_kind(Kind::Double).to_device(Device::Cpu))?;
    // Rows whose float32 log-density overflowed are scored again in float64, as /log_prob does.
    let bad: Vec<i64> = base.iter().enumerate().filter(|(_, v)| !v.is_finite()).map(|(i, _)| i as i64).collect();
    if !bad.is_empty() {
        let wide = model.to_double()?;
        let again = wide.nice.log_prob(
            &rows.index_select(0, &Tensor::from_slice(&bad).to_device(rows.device())).to_kind(Kind::Double),
        )?;
        for (i, v) in bad.iter().zip(Vec::<f64>::try_from(again.to_device(Device::Cpu))?) {
            base[*i as usize] = v;
        }
    }
    // Every (feature, candidate) pair: the row with that feature replaced by the candidate.
    let (mut features, mut values) = (Vec::new(), Vec::new());
    for (j, candidates) in grid.iter().enumerate() {
        for v in candidates {
            features.push(j as i64);
            values.push(*v);
        }
    }
    let m = features.len() as i64;
    let mut attributions = Vec::with_capacity((n * dim) as usize);
    // Several rows' candidates per forward pass (small models), or one row's in pieces (images).
    let rows_per_block = (CHUNK / m.max(1)).max(1);
    for start in (0..n).step_by(rows_per_block as usize) {
        let r = rows_per_block.min(n - start);
        let mut block =
            rows.narrow(0, start, r).unsqueeze(1).expand([r, m, dim], false).contiguous().view([r * m, dim]);
        let device = block.device();
        let at = Tensor::arange(r * m, (Kind::Int64, device));
        let cols = Tensor::from_slice(&features).repeat([r]).to_device(device);
        let _ = block.index_put_(
            &[Some(at), Some(cols)],
            &Tensor::from_slice(&values).repeat([r]).to_device(device),
            false,
        );
        let mut best = vec![f64::NEG_INFINITY; (r * dim) as usize];
        for piece in (0..r * m).step_by(CHUNK as usize) {
            let len = CHUNK.min(r * m - piece);
            let lp = model.nice.log_prob(&block.narrow(0, piece, len))?.to_kind(Kind::Double).to_device(Device::Cpu);
            let lp: Vec<f64> = Vec::try_from(lp)?;
            for (k, v) in lp.into_iter().enumerate() {
                let flat = piece as usize + k;
                let (row, cand) = (flat / m as usize, flat % m as usize);
                let slot = row * dim as usize + features[cand] as usize;
                if v > best[slot] {
                    best[slot] = v;
                }
            }
        }
        for (row, best) in best.chunks(dim as usize).enumerate() {
            let lp = base[start as usize + row];
            let gain = |b: f64| if b.is_finite() && lp.is_finite() { (b - lp).max(0.0) } else { 0.0 };
            attributions.extend(best.iter().map(|b| gain(*b)));
        }
    }
    Ok(Explanation { attributions, log_prob: base })
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|a, b| values[*b].total_cmp(&values[*a]).then(a.cmp(b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.1, 3.0, 3.0, -1.0, 2.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&[1.0], 5), vec![0]);
    }
}
