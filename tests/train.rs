//! Training: it learns what a single Gaussian cannot, it is reproducible, and the CLI works end
//! to end on a CSV file.
mod common;

use flowscore::data::Dataset;
use flowscore::flow::Prior;
use flowscore::train::{self, PreprocessChoice, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::process::Command;

/// A 2-D mixture of three well-separated Gaussian blobs along a curve.
fn mixture(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres = [(-4.0, 0.0), (0.0, 3.0), (4.0, 0.0)];
    let mut rows = Vec::with_capacity(n * 2);
    for _ in 0..n {
        let (cx, cy) = centres[rng.gen_range(0..3)];
        let (a, b): (f64, f64) = (rng.sample(rand_distr::StandardNormal), rng.sample(rand_distr::StandardNormal));
        rows.push((cx + 0.5 * a) as f32);
        rows.push((cy + 0.5 * b) as f32);
    }
    Dataset::from_rows(rows, n, 2, format!("mixture(seed {seed})")).unwrap()
}

/// Held-out log-likelihood of the maximum-likelihood full-covariance Gaussian fitted on `train`.
fn gaussian_baseline(train: &Dataset, test: &Dataset) -> f64 {
    let n = train.n as f64;
    let (mut mx, mut my) = (0.0, 0.0);
    for i in 0..train.n {
        mx += train.row(i)[0] as f64 / n;
        my += train.row(i)[1] as f64 / n;
    }
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for i in 0..train.n {
        let (dx, dy) = (train.row(i)[0] as f64 - mx, train.row(i)[1] as f64 - my);
        sxx += dx * dx / n;
        syy += dy * dy / n;
        sxy += dx * dy / n;
    }
    let det = sxx * syy - sxy * sxy;
    let mut total = 0.0;
    for i in 0..test.n {
        let (dx, dy) = (test.row(i)[0] as f64 - mx, test.row(i)[1] as f64 - my);
        let q = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / det;
        total += -0.5 * q - 0.5 * det.ln() - (2.0 * std::f64::consts::PI).ln();
    }
    total / test.n as f64
}

fn small_config() -> TrainConfig {
    TrainConfig {
        couplings: Some(6),
        hidden_layers: Some(2),
        hidden_units: Some(64),
        prior: Prior::Gaussian,
        preprocess: PreprocessChoice::Standardize,
        epochs: 60,
        batch_size: 128,
        lr: 3e-3,
        patience: 10,
        ..TrainConfig::default()
    }
}

#[test]
fn learns_a_mixture_better_than_a_gaussian() {
    let (all, test) = (mixture(4000, 1), mixture(2000, 2));
    let (tr, val) = all.split(0.2, 0);
    let model = train::train(&small_config(), &tr, &val, Some(&test), &mut train::Quiet).unwrap();
    let summary = model.card.training.clone().unwrap();
    let nice_ll = summary.test_log_likelihood.unwrap();
    let gauss_ll = gaussian_baseline(&tr, &test);
    assert!(nice_ll > gauss_ll + 0.3, "NICE {nice_ll:.3} nats vs single Gaussian {gauss_ll:.3}");
    // The card describes the run.
    assert_eq!(summary.train_rows, tr.n);
    assert!(summary.best_epoch >= 1 && summary.best_epoch <= summary.epochs);
    let cal = model.card.calibration.unwrap();
    assert_eq!(cal.log_probs.len(), val.n);
    assert!((cal.percentile(cal.threshold) - 0.01).abs() < 0.01);
}

#[test]
fn same_seed_same_model() {
    let all = mixture(600, 3);
    let (tr, val) = all.split(0.2, 0);
    let cfg = TrainConfig { epochs: 3, ..small_config() };
    let a = train::train(&cfg, &tr, &val, None, &mut train::Quiet).unwrap();
    let b = train::train(&cfg, &tr, &val, None, &mut train::Quiet).unwrap();
    for (name, t) in a.named_tensors() {
        assert!(t.equal(&b.named_tensors()[&name]), "{name} differs between runs with the same seed");
    }
}

#[test]
fn rejects_bad_configs_and_data() {
    let all = mixture(100, 4);
    let (tr, val) = all.split(0.2, 0);
    let bad = TrainConfig { lr: -1.0, ..small_config() };
    assert!(train::train(&bad, &tr, &val, None, &mut train::Quiet).unwrap_err().to_string().contains("lr"));
    let logit = TrainConfig { preprocess: PreprocessChoice::Logit, ..small_config() };
    let err = train::train(&logit, &tr, &val, None, &mut train::Quiet).unwrap_err().to_string();
    assert!(err.contains("[0, 1]"), "{err}");
}

#[test]
fn cli_train_eval_sample_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("data.csv");
    let data = mixture(1500, 5);
    let mut text = String::from("id,x,y,label\n");
    for i in 0..data.n {
        text += &format!("{i},{},{},{}\n", data.row(i)[0], data.row(i)[1], i % 10 == 0);
    }
    // Labels as integers: 1 = anomaly (every tenth row, shifted far away).
    let text = text.replace(",true\n", ",1\n").replace(",false\n", ",0\n");
    std::fs::write(&csv, &text).unwrap();
    let model = tmp.path().join("model");
    let bin = env!("CARGO_BIN_EXE_flowscore");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(&[
        "train",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--exclude-column",
        "id",
        "--exclude-column",
        "label",
        "--epochs",
        "5",
        "--hidden-units",
        "32",
        "--hidden-layers",
        "2",
        "--prior",
        "gaussian",
    ]);
    assert!(out.contains("saved"), "{out}");
    let eval = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        csv.to_str().unwrap(),
        "--exclude-column",
        "id",
        "--label-column",
        "label",
    ]);
    let report: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(report["rows"], 1500);
    assert_eq!(report["anomalies"], 150);
    assert!(report["log_likelihood_nats"].as_f64().unwrap().is_finite());
    let auroc = report["auroc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auroc));
    let npy = tmp.path().join("s.npy");
    run(&["sample", "--model", model.to_str().unwrap(), "-n", "10", "--seed", "3", "--out", npy.to_str().unwrap()]);
    let s = flowscore::data::load(&npy, &Default::default()).unwrap();
    assert_eq!((s.n, s.dim), (10, 2));
    let inspect = run(&["inspect", "--model", model.to_str().unwrap()]);
    assert!(inspect.contains("scaling spectrum: 2 log-scales"), "{inspect}");
    // A clear error, not a crash, for a model folder that is not there.
    let out = Command::new(bin).args(["inspect", "--model", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/card.json"));
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // `serve` logs its arguments at info before it loads anything; stderr here is a pipe, as
    // under docker or a log collector, where colour codes would garble every line.
    let out = Command::new(env!("CARGO_BIN_EXE_flowscore"))
        .args(["serve", "--model", "/nonexistent", "--bind", "127.0.0.1:0"])
        .env_remove("FLOWSCORE_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO") && stderr.contains("starting"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in piped logs: {stderr:?}");
}

/// Rows of an equicorrelated Gaussian (ρ = 0.9) in `dim` features with uneven scales.
fn correlated(n: usize, dim: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let shared: f64 = rng.sample(rand_distr::StandardNormal);
        for d in 0..dim {
            let own: f64 = rng.sample(rand_distr::StandardNormal);
            rows.push(((0.9f64.sqrt() * shared + 0.1f64.sqrt() * own) * (1.0 + d as f64) + d as f64) as f32);
        }
    }
    Dataset::from_rows(rows, n, dim, format!("correlated(seed {seed})")).unwrap()
}

fn mean_test_log_prob(model: &flowscore::store::Model, test: &Dataset) -> f64 {
    let x = tch::Tensor::from_slice(&test.rows).view([test.n as i64, test.dim as i64]);
    let _guard = tch::no_grad_guard();
    model.nice.log_prob(&x).unwrap().mean(tch::Kind::Double).double_value(&[])
}

#[test]
fn tables_default_to_whitening_and_a_small_network() {
    let (all, test) = (correlated(900, 6, 11), correlated(1000, 6, 12));
    let (tr, val) = all.split(0.2, 0);
    let cfg = TrainConfig { epochs: 2, ..TrainConfig::default() };
    let whitened = train::train(&cfg, &tr, &val, None, &mut train::Quiet).unwrap();
    assert!(matches!(whitened.card.preprocess, flowscore::flow::Preprocess::Whiten { .. }));
    let a = &whitened.card.architecture;
    assert_eq!((a.couplings, a.hidden_layers, a.hidden_units), (4, 2, 64));
    // The same recipe on standardized features starts axis-aligned: the correlation (≈ 4.9 nats
    // per row for the true Gaussian) is left to the couplings to learn.
    let std_cfg = TrainConfig { preprocess: PreprocessChoice::Standardize, ..cfg };
    let standardized = train::train(&std_cfg, &tr, &val, None, &mut train::Quiet).unwrap();
    let (w, s) = (mean_test_log_prob(&whitened, &test), mean_test_log_prob(&standardized, &test));
    assert!(w > s + 1.0, "whitened {w:.3} nats/row, standardized {s:.3}");
}
