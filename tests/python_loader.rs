//! The shipped Python loader (python/flowscore_torch.py, plain PyTorch) agrees with Rust.
mod common;

use common::*;
use flowscore::flow::{Preprocess, Prior};
use std::path::Path;
use std::process::Command;

fn python() -> &'static Path {
    let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"));
    assert!(p.exists(), "{} missing: run scripts/setup-python.sh (the test command does)", p.display());
    p
}

#[test]
fn python_loader_agrees_with_rust() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/flowscore_torch.py");
    for (i, (prior, pre, lo, hi)) in [
        (Prior::Logistic, Preprocess::Logit { alpha: 0.05 }, 0.0, 1.0),
        (Prior::Gaussian, standardize(7, 3), -5.0, 5.0),
        (Prior::Logistic, whiten(7, 3), -5.0, 5.0),
        (Prior::Logistic, Preprocess::Identity, -2.0, 2.0),
    ]
    .into_iter()
    .enumerate()
    {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        let mut model = random_model(7, prior, pre, i as u64);
        flowscore::store::save(&mut model, &dir, false).unwrap();
        let x = random_rows(100, 7, lo, hi, 40 + i as u64);
        let rows = to_vec(&x).iter().map(|v| *v as f32).collect::<Vec<_>>();
        let input = tmp.path().join("x.npy");
        let output = tmp.path().join("lp.npy");
        flowscore::data::write_npy(&input, &rows, 100, 7).unwrap();
        let out = Command::new(python())
            .args([script, dir.to_str().unwrap(), input.to_str().unwrap(), output.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "python loader failed: {}", String::from_utf8_lossy(&out.stderr));
        let py = npyz::NpyFile::new(&std::fs::read(&output).unwrap()[..]).unwrap().into_vec::<f64>().unwrap();
        let _g = tch::no_grad_guard();
        let rust = to_vec(&model.nice.log_prob(&x).unwrap());
        assert_eq!(py.len(), rust.len());
        for (r, (a, b)) in rust.iter().zip(&py).enumerate() {
            let rel = (a - b).abs() / b.abs().max(1.0);
            assert!(rel < 1e-4, "case {i} row {r}: rust {a} vs python {b}");
        }
    }
}
