//! Fixtures shared by the integration tests.
#![allow(dead_code)]
pub mod process;
use flowscore::flow::{Architecture, Preprocess, Prior};
use flowscore::store::{InputSpec, Model, ModelCard};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A small model with every weight random (a fresh model's couplings are the identity, which
/// would make exactness tests too easy).
pub fn random_model(dim: usize, prior: Prior, preprocess: Preprocess, seed: u64) -> Model {
    let arch = Architecture { dim, couplings: 4, hidden_layers: 2, hidden_units: 16 };
    let card = ModelCard::new("test", arch, prior, preprocess, InputSpec { shape: vec![dim], eight_bit: false });
    let model = Model::new(card, Device::Cpu).expect("model");
    randomize(&model, seed, 0.4);
    model
}

pub fn randomize(model: &Model, seed: u64, std: f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let _guard = tch::no_grad_guard();
    for (_, mut v) in model.named_tensors() {
        let vals: Vec<f32> = (0..v.numel()).map(|_| (rng.gen::<f64>() * 2.0 - 1.0) as f32 * std as f32 * 1.7).collect();
        v.copy_(&Tensor::from_slice(&vals).view(v.size().as_slice()));
    }
}

pub fn standardize(dim: usize, seed: u64) -> Preprocess {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Preprocess::Standardize {
        mean: (0..dim).map(|_| rng.gen_range(-3.0..3.0)).collect(),
        std: (0..dim).map(|_| rng.gen_range(0.2..4.0)).collect(),
    }
}

/// A random whitening: standardize's moments and a lower-triangular factor with diagonal in
/// [0.3, 1.5) and off-diagonal entries in [−0.5, 0.5).
pub fn whiten(dim: usize, seed: u64) -> Preprocess {
    let Preprocess::Standardize { mean, std } = standardize(dim, seed) else { unreachable!() };
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let cholesky = (0..dim)
        .map(|i| {
            (0..dim)
                .map(|j| match j.cmp(&i) {
                    std::cmp::Ordering::Less => rng.gen_range(-0.5..0.5),
                    std::cmp::Ordering::Equal => rng.gen_range(0.3..1.5),
                    std::cmp::Ordering::Greater => 0.0,
                })
                .collect()
        })
        .collect();
    Preprocess::Whiten { mean, std, cholesky }
}

/// n random rows in [lo, hi), f32.
pub fn random_rows(n: usize, dim: usize, lo: f64, hi: f64, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(lo..hi) as f32).collect();
    Tensor::from_slice(&v).view([n as i64, dim as i64])
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("to_vec")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

pub const FASHION_TEST: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

/// A models folder holding an untrained 3-column model `tab/1`, and a data folder with CSVs.
pub fn workspace(tmp: &Path) -> (PathBuf, PathBuf) {
    let (models, data) = (tmp.join("models"), tmp.join("data"));
    std::fs::create_dir_all(&data).unwrap();
    let arch = flowscore::flow::Architecture { dim: 3, couplings: 4, hidden_layers: 2, hidden_units: 32 };
    let card = flowscore::store::ModelCard::new(
        "tab",
        arch,
        flowscore::flow::Prior::Gaussian,
        flowscore::flow::Preprocess::Identity,
        flowscore::store::InputSpec { shape: vec![3], eight_bit: false },
    );
    let mut model = flowscore::store::Model::new(card, tch::Device::Cpu).unwrap();
    flowscore::store::save(&mut model, &models.join("tab").join("1"), false).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut csv = String::from("x,y,z\n");
    for _ in 0..3000 {
        let (a, b): (f64, f64) = (rng.sample(rand_distr::StandardNormal), rng.sample(rand_distr::StandardNormal));
        csv += &format!("{},{},{}\n", 3.0 + 2.0 * a, -1.0 + 0.5 * b, a * b);
    }
    std::fs::write(data.join("good.csv"), &csv).unwrap();
    std::fs::write(data.join("text.csv"), "x,y,z\n1,2,abc\n").unwrap();
    std::fs::write(data.join("nan.csv"), "x,y,z\n1,2,3\n1,NaN,3\n").unwrap();
    (models, data)
}
