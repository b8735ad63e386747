//! Anomaly scores beyond the raw log-likelihood, and the statistics that make them usable:
//! score kinds (the likelihood, and for 8-bit images Serrà et al.'s complexity correction),
//! conformal p-values against the calibration scores, Benjamini–Hochberg over one request's
//! rows, and the two-sample Kolmogorov–Smirnov test behind the drift gauges. Scores follow one
//! convention: higher is more anomalous. docs/anomaly.md says why each choice.
use serde::{Deserialize, Serialize};
use std::f64::consts::LN_2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// −log p(x), nats.
    Likelihood,
    /// −log₂ P(x) − L(x), bits: the 8-bit image's code length under the model less its length
    /// compressed losslessly as PNG (Serrà et al. 2020).
    ComplexityCorrected,
}

impl ScoreKind {
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Likelihood => "likelihood",
            ScoreKind::ComplexityCorrected => "complexity_corrected",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AnomalyError {
    #[error("`complexity_corrected` needs an 8-bit image model (inputs shaped [H, W])")]
    NotAnImage,
    #[error("this model's calibration has no `{0}` scores (retrain it, or run `flowscore calibrate`)")]
    NoCalibration(&'static str),
    #[error("cannot compress the image: {0}")]
    Png(String),
    #[error("{0}")]
    Policy(String),
}

/// How a request asks rows to be flagged. At most one of `threshold`, `contamination` and
/// `fdr`; none: the calibration's default threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Policy {
    pub kind: Option<ScoreKind>,
    /// `likelihood`: flag log_prob below this (nats, as before score kinds); other kinds: flag a
    /// score above this (the kind's units).
    pub threshold: Option<f64>,
    /// Flag the share of calibration rows this is: the threshold is that quantile.
    pub contamination: Option<f64>,
    /// Flag by Benjamini–Hochberg over the request's rows at this false discovery rate.
    pub fdr: Option<f64>,
}

impl Policy {
    pub fn check(&self) -> Result<(), AnomalyError> {
        let bad = |m: &str| Err(AnomalyError::Policy(m.into()));
        let given = [self.threshold.is_some(), self.contamination.is_some(), self.fdr.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return bad("give at most one of `threshold`, `contamination` and `fdr`");
        }
        match (self.threshold, self.contamination, self.fdr) {
            (Some(t), _, _) if !t.is_finite() => bad("`threshold` must be a finite number"),
            (_, Some(c), _) if !(c > 0.0 && c < 1.0) => bad("`contamination` must be in (0, 1)"),
            (_, _, Some(q)) if !(q > 0.0 && q < 1.0) => bad("`fdr` must be in (0, 1)"),
            _ => Ok(()),
        }
    }
}

/// What scoring a request's rows gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub kind: ScoreKind,
    /// Higher is more anomalous (`kind`'s units).
    pub scores: Vec<f64>,
    /// Conformal p-values; None without calibration.
    pub p_values: Option<Vec<f64>>,
    pub is_anomaly: Vec<bool>,
    /// The threshold used (log_prob nats for `likelihood`, else the kind's score); None under
    /// `fdr`.
    pub threshold: Option<f64>,
}

/// The kind a request is scored by: its own, else the model's default, else `likelihood`.
pub fn resolve_kind(calibration: Option<&crate::calibration::Calibration>, policy: &Policy) -> ScoreKind {
    policy.kind.or(calibration.map(|c| c.default_kind)).unwrap_or(ScoreKind::Likelihood)
}

/// Scores rows (row-major, `dim` values each, with their log_probs; `likelihood` reads no rows)
/// and flags them by `policy`.
pub fn judge(
    calibration: Option<&crate::calibration::Calibration>,
    image: Option<[usize; 2]>,
    policy: &Policy,
    rows: &[f32],
    dim: usize,
    log_probs: &[f64],
) -> Result<Judgement, AnomalyError> {
    policy.check()?;
    let kind = resolve_kind(calibration, policy);
    if kind == ScoreKind::ComplexityCorrected {
        if image.is_none() {
            return Err(AnomalyError::NotAnImage);
        }
        if calibration.is_some_and(|c| c.complexity_corrected.is_none()) {
            return Err(AnomalyError::NoCalibration(kind.name()));
        }
    }
    let scores = match kind {
        // The rows themselves are needed by the image kinds only.
        ScoreKind::Likelihood => log_probs.iter().map(|lp| -lp).collect(),
        _ => rows
            .chunks_exact(dim.max(1))
            .zip(log_probs)
            .map(|(row, lp)| score(kind, *lp, row, image))
            .collect::<Result<Vec<f64>, _>>()?,
    };
    let p_values = match calibration {
        Some(c) => Some(scores.iter().map(|s| c.p_value(kind, *s)).collect::<Result<Vec<f64>, _>>()?),
        None => None,
    };
    let need_cal =
        || calibration.ok_or(AnomalyError::Policy("this model has no calibration data; pass `threshold`".into()));
    // Likelihood thresholds stay in log_prob nats (what /score always took); the others are scores.
    let (is_anomaly, threshold) = match (policy.threshold, policy.contamination, policy.fdr) {
        (_, _, Some(q)) => {
            let p =
                p_values.as_ref().ok_or(AnomalyError::Policy("`fdr` needs a model with calibration data".into()))?;
            (benjamini_hochberg(p, q), None)
        }
        (t, c, None) => {
            let t = match (t, c) {
                (Some(t), _) => t,
                (None, Some(c)) => threshold_of(need_cal()?, kind, c)?,
                (None, None) => {
                    let cal = need_cal()?;
                    threshold_of(cal, kind, cal.threshold_quantile)?
                }
            };
            let flags = match kind {
                ScoreKind::Likelihood => log_probs.iter().map(|lp| *lp < t).collect(),
                _ => scores.iter().map(|s| *s > t).collect(),
            };
            (flags, Some(t))
        }
    };
    Ok(Judgement { kind, scores, p_values, is_anomaly, threshold })
}

fn threshold_of(c: &crate::calibration::Calibration, kind: ScoreKind, q: f64) -> Result<f64, AnomalyError> {
    match kind {
        ScoreKind::Likelihood => c.quantile(q).map_err(|e| AnomalyError::Policy(e.to_string())),
        _ => c.score_quantile(kind, q),
    }
}

/// The 8-bit pixel a row value stands for: rows are (pixel + 0.5) / 256.
pub fn to_pixel(v: f32) -> u8 {
    (v as f64 * 256.0 - 0.5).round().clamp(0.0, 255.0) as u8
}

/// Length in bits of the `h`×`w` 8-bit grayscale image `row` compressed as PNG at maximum
/// compression with adaptive filtering (the whole file, headers included: a constant that shifts
/// every score alike).
pub fn png_bits(row: &[f32], h: usize, w: usize) -> Result<f64, AnomalyError> {
    let pixels: Vec<u8> = row.iter().map(|v| to_pixel(*v)).collect();
    let mut out = Vec::with_capacity(pixels.len() / 2 + 128);
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        let mut writer = enc.write_header().map_err(|e| AnomalyError::Png(e.to_string()))?;
        writer.write_image_data(&pixels).map_err(|e| AnomalyError::Png(e.to_string()))?;
    }
    Ok(out.len() as f64 * 8.0)
}

/// −log₂ P(x) of the 8-bit image: the model's density of the dequantised row times the volume of
/// its pixel cell, 256^−D.
pub fn code_length_bits(log_prob: f64, dim: usize) -> f64 {
    -log_prob / LN_2 + dim as f64 * 8.0
}

/// The score of one row (higher is more anomalous). `image`: the [H, W] shape of an 8-bit image
/// model, needed by `ComplexityCorrected`.
pub fn score(kind: ScoreKind, log_prob: f64, row: &[f32], image: Option<[usize; 2]>) -> Result<f64, AnomalyError> {
    match kind {
        ScoreKind::Likelihood => Ok(-log_prob),
        ScoreKind::ComplexityCorrected => {
            let [h, w] = image.ok_or(AnomalyError::NotAnImage)?;
            Ok(code_length_bits(log_prob, row.len()) - png_bits(row, h, w)?)
        }
    }
}

/// The conformal p-value of `s` against calibration scores sorted ascending:
/// (1 + #{calibration scores ≥ s}) / (n + 1). Valid (uniform or conservative) for a row
/// exchangeable with the calibration rows.
pub fn conformal_p_value(sorted: &[f64], s: f64) -> f64 {
    let at_least = sorted.len() - sorted.partition_point(|c| *c < s);
    (1 + at_least) as f64 / (sorted.len() + 1) as f64
}

/// Benjamini–Hochberg at false discovery rate `alpha`: which of `p` are discoveries.
pub fn benjamini_hochberg(p: &[f64], alpha: f64) -> Vec<bool> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    // The largest k with p_(k) ≤ k·α/m; the k smallest are discoveries.
    let k = (1..=m).rev().find(|k| p[order[k - 1]] <= *k as f64 * alpha / m as f64).unwrap_or(0);
    let mut out = vec![false; m];
    for i in &order[..k] {
        out[*i] = true;
    }
    out
}

/// Two-sample Kolmogorov–Smirnov test of `a` against `b` (both sorted ascending): the statistic
/// D = sup |F_a − F_b| and its asymptotic p-value (Kolmogorov's distribution at
/// √(n·m/(n+m))·D, with Stephens' small-sample correction).
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return (0.0, 1.0);
    }
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let en = ((n * m) as f64 / (n + m) as f64).sqrt();
    (d, kolmogorov_q((en + 0.12 + 0.11 / en) * d))
}

/// P(K > λ) for Kolmogorov's distribution: 2 Σ (−1)^(k−1) e^(−2k²λ²).
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let term = (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        sum += if k % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn conformal_p_values_count_the_calibration_scores_at_least_as_extreme() {
        let cal = [1.0, 2.0, 2.0, 3.0];
        assert_eq!(conformal_p_value(&cal, 0.5), 1.0);
        assert_eq!(conformal_p_value(&cal, 2.0), 4.0 / 5.0);
        assert_eq!(conformal_p_value(&cal, 2.5), 2.0 / 5.0);
        assert_eq!(conformal_p_value(&cal, 9.0), 1.0 / 5.0);
    }

    #[test]
    fn benjamini_hochberg_matches_the_step_up_rule() {
        // m = 5, α = 0.05: thresholds 0.01, 0.02, 0.03, 0.04, 0.05. The fourth smallest (0.04)
        // is under 0.04, so the four smallest are discoveries although 0.021 > 0.02.
        let p = [0.04, 0.001, 0.021, 0.9, 0.025];
        assert_eq!(benjamini_hochberg(&p, 0.05), vec![true, true, true, false, true]);
        // With 0.041 in its place, the largest k is 3.
        let p = [0.041, 0.001, 0.021, 0.9, 0.025];
        assert_eq!(benjamini_hochberg(&p, 0.05), vec![false, true, true, false, true]);
        assert_eq!(benjamini_hochberg(&[0.5, 0.6], 0.05), vec![false, false]);
        assert!(benjamini_hochberg(&[], 0.05).is_empty());
    }

    #[test]
    fn ks_separates_shifted_samples_and_not_equal_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut draw = |shift: f64, n: usize| {
            let mut v: Vec<f64> = (0..n).map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal) + shift).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (a, b, c) = (draw(0.0, 2000), draw(0.0, 500), draw(0.5, 500));
        let (d_same, p_same) = ks_two_sample(&a, &b);
        let (d_shift, p_shift) = ks_two_sample(&a, &c);
        assert!(p_same > 0.01 && d_same < 0.1, "{d_same} {p_same}");
        assert!(p_shift < 1e-6 && d_shift > 0.15, "{d_shift} {p_shift}");
        // The statistic by brute force over every point.
        let brute = a
            .iter()
            .chain(&c)
            .map(|x| {
                let fa = a.iter().filter(|v| *v <= x).count() as f64 / a.len() as f64;
                let fc = c.iter().filter(|v| *v <= x).count() as f64 / c.len() as f64;
                (fa - fc).abs()
            })
            .fold(0.0, f64::max);
        assert!((brute - d_shift).abs() < 1e-12);
    }

    #[test]
    fn kolmogorov_tail_matches_known_values() {
        // Tabulated: P(K > 1.36) ≈ 0.049, P(K > 1.63) ≈ 0.0098.
        assert!((kolmogorov_q(1.36) - 0.0494).abs() < 1e-3);
        assert!((kolmogorov_q(1.63) - 0.0098).abs() < 1e-3);
    }

    #[test]
    fn png_length_grows_with_image_complexity_and_decodes_back() {
        let flat = vec![0.5f32; 28 * 28];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let noise: Vec<f32> = (0..28 * 28).map(|_| (rng.gen_range(0..256) as f32 + 0.5) / 256.0).collect();
        let (lf, ln) = (png_bits(&flat, 28, 28).unwrap(), png_bits(&noise, 28, 28).unwrap());
        assert!(lf < 800.0 && ln > 5000.0, "{lf} {ln}");
        assert_eq!(to_pixel(0.5 / 256.0), 0);
        assert_eq!(to_pixel(255.5 / 256.0), 255);
        assert_eq!(to_pixel(100.5 / 256.0), 100);
    }

    #[test]
    fn scores_follow_their_formulas() {
        let row = vec![0.5f32; 16];
        assert_eq!(score(ScoreKind::Likelihood, -3.0, &row, None).unwrap(), 3.0);
        let cc = score(ScoreKind::ComplexityCorrected, -3.0, &row, Some([4, 4])).unwrap();
        let want = 3.0 / LN_2 + 16.0 * 8.0 - png_bits(&row, 4, 4).unwrap();
        assert!((cc - want).abs() < 1e-12);
        assert_eq!(score(ScoreKind::ComplexityCorrected, -3.0, &row, None), Err(AnomalyError::NotAnImage));
    }
}
