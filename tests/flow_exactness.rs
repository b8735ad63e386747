//! The flow core against independent computations: autograd Jacobians, numerical integration,
//! inverse round trips, prior moments.
mod common;

use common::*;
use flowscore::flow::{Preprocess, Prior};
use flowscore::kernels::CpuKernels;
use flowscore::store::Model;
use tch::{Kind, Tensor};

/// log p(z) written out independently of the library, in f64.
fn prior_log_density(prior: Prior, z: f64) -> f64 {
    match prior {
        Prior::Logistic => -z.abs() - 2.0 * (-z.abs()).exp().ln_1p(),
        Prior::Gaussian => -0.5 * z * z - 0.5 * (2.0 * std::f64::consts::PI).ln(),
    }
}

/// log p(x) = Σ log p(z) + log|det ∂z/∂x|, with the full D×D Jacobian from autograd in f64.
fn reference_log_prob(model: &flowscore::store::Model, row: &[f64]) -> f64 {
    let dim = row.len();
    let x = Tensor::from_slice(row).view([1, dim as i64]).set_requires_grad(true);
    let (z, _) = model.nice.encode(&x).expect("encode");
    let z = z.squeeze_dim(0);
    let mut jac = Vec::with_capacity(dim * dim);
    for i in 0..dim {
        let g = Tensor::run_backward(&[z.get(i as i64)], &[&x], true, false);
        jac.extend(to_vec(&g[0]));
    }
    let j = Tensor::from_slice(&jac).view([dim as i64, dim as i64]);
    let (_, logabsdet) = j.slogdet();
    let prior: f64 = to_vec(&z.detach()).iter().map(|v| prior_log_density(model.nice.spec().prior, *v)).sum();
    prior + logabsdet.double_value(&[])
}

/// A random model prepared for inference under `policy`, as the server prepares it.
fn prepared(dim: usize, prior: Prior, preprocess: Preprocess, seed: u64, policy: CpuKernels) -> Model {
    let mut model = random_model(dim, prior, preprocess, seed);
    model.vs.freeze();
    flowscore::kernels::prepare(&mut model.nice, policy).unwrap_or_else(|e| panic!("{e}"));
    model
}

/// Checks f32 log_prob of `rows` against the f64 autograd reference, on libtorch's own layers
/// and with the MLPs on the kernels of `policy`.
fn check_exact(dim: usize, prior: Prior, preprocess: Preprocess, rows: Tensor, seed: u64, policy: CpuKernels) {
    let paths = [
        ("layers", random_model(dim, prior, preprocess.clone(), seed)),
        (policy.name(), prepared(dim, prior, preprocess.clone(), seed, policy)),
    ];
    // The same weights in f64 for the reference.
    let mut model64 = random_model(dim, prior, preprocess, seed);
    model64.vs.double();
    let rows64 = rows.to_kind(Kind::Double);
    let references: Vec<f64> =
        (0..rows.size()[0]).map(|i| reference_log_prob(&model64, &to_vec(&rows64.get(i)))).collect();
    for (path, model) in &paths {
        let lp32 = {
            let _g = tch::no_grad_guard();
            to_vec(&model.nice.log_prob(&rows).expect("log_prob"))
        };
        for (i, (lp, reference)) in lp32.iter().zip(&references).enumerate() {
            let rel = (lp - reference).abs() / reference.abs().max(1.0);
            assert!(
                rel < 1e-4,
                "D={dim} {prior:?} {path} row {i}: log_prob {lp} vs autograd reference {reference} (rel {rel:e})"
            );
        }
    }
}

/// The density under `policy` against the autograd Jacobian, for every prior and preprocessing.
fn matches_autograd_jacobian(policy: CpuKernels) {
    for dim in [2, 5, 8] {
        for prior in [Prior::Logistic, Prior::Gaussian] {
            let seed = dim as u64 * 10 + prior as u64;
            check_exact(dim, prior, Preprocess::Identity, random_rows(6, dim, -2.0, 2.0, seed), seed, policy);
            let std = standardize(dim, seed);
            check_exact(dim, prior, std, random_rows(6, dim, -5.0, 5.0, seed + 1), seed, policy);
            let logit = Preprocess::Logit { alpha: 0.05 };
            check_exact(dim, prior, logit, random_rows(6, dim, 0.0, 1.0, seed + 2), seed, policy);
            check_exact(dim, prior, whiten(dim, seed), random_rows(6, dim, -5.0, 5.0, seed + 3), seed, policy);
        }
    }
}

/// Under `policy`, every batch size the server may form gives each row the value it has in one
/// full batch on libtorch's own layers (to float rounding: f32 products block differently by
/// batch size). Under `auto` this covers every kernel the rule picks: on Intel plain up to 3 rows,
/// tiled up to 224 and oneDNN above; on AMD tiled up to 384 rows and oneDNN above.
fn batch_equals_rows(policy: CpuKernels) {
    let plain = random_model(5, Prior::Logistic, standardize(5, 3), 3);
    let served = prepared(5, Prior::Logistic, standardize(5, 3), 3, policy);
    let _g = tch::no_grad_guard();
    let total = 400;
    let x = random_rows(total, 5, -4.0, 4.0, 9);
    let reference = to_vec(&plain.nice.log_prob(&x).unwrap());
    for size in [1, 2, 3, 7, 13, 16, 30, 32, 33, 48, 383, 384, 400] {
        for start in (0..total).step_by(size) {
            let n = size.min(total - start);
            let part = to_vec(&served.nice.log_prob(&x.narrow(0, start as i64, n as i64)).unwrap());
            for (j, lp) in part.iter().enumerate() {
                let want = reference[start + j];
                assert!(
                    (lp - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{policy}: row {}: {lp} in a batch of {n} vs {want}",
                    start + j
                );
            }
        }
    }
}

/// Decoding through the prepared MLPs inverts encoding through them.
fn round_trips(policy: CpuKernels) {
    let model = prepared(8, Prior::Logistic, standardize(8, 4), 5, policy);
    let _g = tch::no_grad_guard();
    for rows in [1, 16, 64, 500] {
        let x = random_rows(rows, 8, -6.0, 6.0, 6);
        let (z, _) = model.nice.encode(&x).unwrap();
        let back = model.nice.decode(&z).unwrap();
        assert!(max_abs_diff(&x, &back) < 1e-4, "{policy}, {rows} rows: drifted by {}", max_abs_diff(&x, &back));
    }
}

fn exact_under(policy: CpuKernels) {
    matches_autograd_jacobian(policy);
    batch_equals_rows(policy);
    round_trips(policy);
}

#[test]
fn layers_and_auto_kernels_match_autograd_and_batches_equal_rows() {
    exact_under(CpuKernels::Auto);
}

#[test]
fn plain_kernels_match_autograd_and_batches_equal_rows() {
    exact_under(CpuKernels::Plain);
}

#[test]
#[cfg_attr(not(libtorch_mkl), ignore = "the loaded libtorch has no MKL: --cpu-kernels mkl cannot run here")]
fn mkl_kernels_match_autograd_and_batches_equal_rows() {
    exact_under(CpuKernels::Mkl);
}

#[test]
#[cfg_attr(
    not(libtorch_onednn),
    ignore = "the loaded libtorch has no oneDNN linear: --cpu-kernels onednn cannot run here"
)]
fn onednn_kernels_match_autograd_and_batches_equal_rows() {
    exact_under(CpuKernels::Onednn);
}

#[test]
#[cfg_attr(not(cpu_avx512), ignore = "this CPU has no AVX-512F: --cpu-kernels tiled cannot run here")]
fn tiled_kernels_match_autograd_and_batches_equal_rows() {
    exact_under(CpuKernels::Tiled);
}

/// A kernel this machine cannot run is refused by name, not run.
#[test]
fn kernels_this_machine_lacks_are_refused() {
    let cpu = flowscore::kernels::Cpu::detect();
    for (policy, runs) in [
        (CpuKernels::Mkl, cfg!(libtorch_mkl)),
        (CpuKernels::Onednn, cfg!(libtorch_onednn)),
        (CpuKernels::Tiled, cfg!(cpu_avx512)),
    ] {
        let checked = flowscore::kernels::check(cpu, policy);
        assert_eq!(checked.is_ok(), runs, "{policy}: {checked:?}");
        if !runs {
            let mut model = random_model(4, Prior::Logistic, Preprocess::Identity, 1);
            let err = flowscore::kernels::prepare(&mut model.nice, policy).expect_err("refused");
            assert!(err.to_string().contains(&format!("--cpu-kernels {policy}")), "{err}");
        }
    }
}

#[test]
fn density_of_2d_model_integrates_to_one() {
    for (prior, seed) in [(Prior::Gaussian, 1u64), (Prior::Logistic, 2)] {
        let model = random_model(2, prior, standardize(2, seed), seed);
        let _g = tch::no_grad_guard();
        // Bound the mass with the model's own samples, then integrate well past them.
        let s = model.nice.sample(20_000, seed, 1.0).unwrap();
        let (lo, hi) = (to_vec(&s.min_dim(0, false).0), to_vec(&s.max_dim(0, false).0));
        let n = 800usize;
        let mut cells = Vec::with_capacity(n * n * 2);
        let pad: Vec<f64> = (0..2).map(|d| (hi[d] - lo[d]) * 0.75).collect();
        let step: Vec<f64> = (0..2).map(|d| (hi[d] - lo[d] + 2.0 * pad[d]) / n as f64).collect();
        for i in 0..n {
            for j in 0..n {
                cells.push((lo[0] - pad[0] + (i as f64 + 0.5) * step[0]) as f32);
                cells.push((lo[1] - pad[1] + (j as f64 + 0.5) * step[1]) as f32);
            }
        }
        let grid = Tensor::from_slice(&cells).view([(n * n) as i64, 2]);
        let lp = model.nice.log_prob(&grid).unwrap();
        let mass = lp.exp().sum(Kind::Double).double_value(&[]) * step[0] * step[1];
        assert!((mass - 1.0).abs() < 0.01, "{prior:?}: density integrates to {mass}");
    }
}

#[test]
fn encode_decode_round_trips() {
    for (pre, lo, hi) in [
        (Preprocess::Identity, -3.0, 3.0),
        (standardize(8, 4), -6.0, 6.0),
        (whiten(8, 4), -6.0, 6.0),
        (Preprocess::Logit { alpha: 0.05 }, 0.0, 1.0),
    ] {
        let model = random_model(8, Prior::Logistic, pre, 5);
        let _g = tch::no_grad_guard();
        let x = random_rows(64, 8, lo, hi, 6);
        let (z, _) = model.nice.encode(&x).unwrap();
        let back = model.nice.decode(&z).unwrap();
        assert!(max_abs_diff(&x, &back) < 1e-4, "decode(encode(x)) drifted by {}", max_abs_diff(&x, &back));
        // Latents where the model puts its mass (near encodings of data): far out in the tails
        // a logit model's inputs saturate at 0 or 1, where f32 cannot represent them exactly.
        let (z, _) = model.nice.encode(&random_rows(64, 8, lo * 0.9 + hi * 0.1, lo * 0.1 + hi * 0.9, 7)).unwrap();
        let z = z + random_rows(64, 8, -0.05, 0.05, 8);
        let x = model.nice.decode(&z).unwrap();
        let (again, _) = model.nice.encode(&x).unwrap();
        assert!(max_abs_diff(&z, &again) < 1e-4, "encode(decode(z)) drifted by {}", max_abs_diff(&z, &again));
    }
}

#[test]
fn round_trips_on_real_images() {
    let path = std::path::Path::new(FASHION_TEST);
    assert!(path.exists(), "{FASHION_TEST} missing: run scripts/setup.sh (Debian package dataset-fashion-mnist)");
    let data =
        flowscore::data::load(path, &flowscore::data::LoadOptions { limit: Some(200), ..Default::default() }).unwrap();
    let arch = flowscore::flow::Architecture { dim: 784, couplings: 4, hidden_layers: 2, hidden_units: 64 };
    let card = flowscore::store::ModelCard::new(
        "t",
        arch,
        Prior::Logistic,
        Preprocess::Logit { alpha: 0.05 },
        flowscore::store::InputSpec { shape: vec![28, 28], eight_bit: true },
    );
    let model = flowscore::store::Model::new(card, tch::Device::Cpu).unwrap();
    randomize(&model, 11, 0.05);
    let _g = tch::no_grad_guard();
    let x = Tensor::from_slice(&data.rows).view([200, 784]);
    let (z, _) = model.nice.encode(&x).unwrap();
    let back = model.nice.decode(&z).unwrap();
    assert!(max_abs_diff(&x, &back) < 1e-4, "real rows drifted by {}", max_abs_diff(&x, &back));
}

#[test]
fn sampling_moments_seeds_and_temperature() {
    // A fresh model is the identity map (zero-initialised coupling outputs, s = 0), so its
    // samples are prior draws.
    for (prior, var) in [(Prior::Logistic, std::f64::consts::PI.powi(2) / 3.0), (Prior::Gaussian, 1.0)] {
        let arch = flowscore::flow::Architecture { dim: 4, couplings: 2, hidden_layers: 1, hidden_units: 8 };
        let card = flowscore::store::ModelCard::new(
            "t",
            arch,
            prior,
            Preprocess::Identity,
            flowscore::store::InputSpec { shape: vec![4], eight_bit: false },
        );
        let model = flowscore::store::Model::new(card, tch::Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let s = model.nice.sample(50_000, 42, 1.0).unwrap().to_kind(Kind::Double);
        let mean = s.mean(Kind::Double).double_value(&[]);
        let v = s.var(false).double_value(&[]);
        assert!(mean.abs() < 0.03, "{prior:?} sample mean {mean}");
        assert!((v / var - 1.0).abs() < 0.03, "{prior:?} sample variance {v}, expected {var}");
        let again = model.nice.sample(50_000, 42, 1.0).unwrap();
        assert!(s.to_kind(Kind::Float).equal(&again), "same seed gave different samples");
        let other = model.nice.sample(50_000, 43, 1.0).unwrap();
        assert!(!s.to_kind(Kind::Float).equal(&other), "different seeds gave the same samples");
        let cold = model.nice.sample(50_000, 42, 0.5).unwrap();
        assert!(max_abs_diff(&(s.to_kind(Kind::Float) * 0.5), &cold) < 1e-6, "temperature must scale z");
    }
}

#[test]
fn inpaint_keeps_observed_and_raises_log_prob() {
    let model = random_model(8, Prior::Gaussian, Preprocess::Logit { alpha: 0.05 }, 8);
    let _g = tch::no_grad_guard();
    let x = random_rows(16, 8, 0.0, 1.0, 12);
    let mask: Vec<f32> = (0..16 * 8).map(|i| if i % 8 < 3 { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_slice(&mask).view([16, 8]);
    let opts = flowscore::flow::InpaintOptions { steps: 200, step_size: 1e-2, noise: 0.0, seed: 1 };
    let out = model.nice.inpaint(&x, &mask, &opts).unwrap();
    let observed = 1.0 - &mask;
    assert_eq!(max_abs_diff(&(&out * &observed), &(&x * &observed)), 0.0, "observed values changed");
    assert!(to_vec(&out).iter().all(|v| (0.0..=1.0).contains(v)), "left the [0, 1] domain");
    // Compared with the seeded start, the completion has a higher density.
    let start = model.nice.inpaint(&x, &mask, &flowscore::flow::InpaintOptions { steps: 0, ..opts }).unwrap();
    let (before, after) = (model.nice.log_prob(&start).unwrap(), model.nice.log_prob(&out).unwrap());
    let gained = (after - before).mean(Kind::Double).double_value(&[]);
    assert!(gained > 0.0, "inpainting lowered log p by {gained}");
    let again = model.nice.inpaint(&x, &mask, &opts).unwrap();
    assert!(out.equal(&again), "inpainting is not deterministic for a seed");
}
