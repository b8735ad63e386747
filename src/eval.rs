//! Offline evaluation metrics.

/// Area under the ROC curve for `scores` (higher = more anomalous) against `positive` labels,
/// by the Mann–Whitney rank statistic with tied scores sharing their mean rank. None when one
/// class is absent.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 || scores.len() != positive.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|k| positive[**k]).count() as f64 * mean_rank;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::auroc;

    #[test]
    fn perfect_random_and_ties() {
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), Some(0.0));
        assert_eq!(auroc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]), Some(0.5));
        // One positive above two of three negatives.
        let a = auroc(&[0.1, 0.2, 0.9, 0.5], &[false, false, false, true]).unwrap();
        assert!((a - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(auroc(&[0.1], &[true]), None);
    }
}
