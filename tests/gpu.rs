//! The GPU path, where there is one (`cuda_gpu`: a CUDA libtorch and an NVIDIA device; ignored
//! with that reason elsewhere): log_prob on CUDA equals the CPU's to 1e-4 relative on the shipped
//! model and on the paper's architecture, directly and through the engine; encode/decode round
//! trip on the device; seeded sampling is reproducible there; a model trained there scores the
//! same on the CPU.
mod common;

use common::*;
use flowscore::engine::{Engine, EngineConfig, Output, Task};
use flowscore::flow::{Architecture, Preprocess, Prior};
use flowscore::metrics::Metrics;
use tch::{Device, Kind, Tensor};

const GPU: Device = Device::Cuda(0);
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/fashion-mnist/1");

fn log_prob(model: &flowscore::store::Model, x: &Tensor) -> Vec<f64> {
    let _g = tch::no_grad_guard();
    to_vec(&model.nice.log_prob(&x.to_device(model.vs.device())).unwrap().to_device(Device::Cpu))
}

fn assert_close(cpu: &[f64], gpu: &[f64], what: &str) {
    for (i, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        assert!((c - g).abs() <= 1e-4 * c.abs().max(1.0), "{what}, row {i}: cpu {c}, cuda {g}");
    }
}

#[test]
#[cfg_attr(not(cuda_gpu), ignore = "needs a CUDA libtorch (scripts/setup-libtorch.sh --cuda) and an NVIDIA GPU")]
fn cuda_log_prob_equals_cpu() {
    // As `flowscore serve` and `train` do at start: float32 stays float32 (no TF32).
    flowscore::device::pin_float32();
    assert!(!flowscore::device::tf32_allowed());
    let x = random_rows(256, 784, 0.0, 1.0, 1);
    let cpu = flowscore::store::load(SHIPPED.as_ref(), Device::Cpu).unwrap();
    let gpu = flowscore::store::load(SHIPPED.as_ref(), GPU).unwrap();
    assert_close(&log_prob(&cpu, &x), &log_prob(&gpu, &x), "shipped model");
    // The paper's architecture, random weights.
    let paper = Architecture { dim: 784, couplings: 4, hidden_layers: 5, hidden_units: 1000 };
    let card = flowscore::store::ModelCard::new(
        "paper",
        paper,
        Prior::Logistic,
        Preprocess::Logit { alpha: 0.05 },
        flowscore::store::InputSpec { shape: vec![28, 28], eight_bit: true },
    );
    let mut cpu = flowscore::store::Model::new(card, Device::Cpu).unwrap();
    randomize(&cpu, 3, 0.02);
    let tmp = tempfile::tempdir().unwrap();
    flowscore::store::save(&mut cpu, &tmp.path().join("paper"), false).unwrap();
    let gpu = flowscore::store::load(&tmp.path().join("paper"), GPU).unwrap();
    assert_close(&log_prob(&cpu, &x), &log_prob(&gpu, &x), "paper architecture");
}

#[tokio::test]
#[cfg_attr(not(cuda_gpu), ignore = "needs a CUDA libtorch (scripts/setup-libtorch.sh --cuda) and an NVIDIA GPU")]
async fn the_engine_serves_on_cuda_what_the_cpu_computes() {
    let config = EngineConfig { device: GPU, ..EngineConfig::default() };
    let engine = tokio::task::spawn_blocking(move || Engine::start(config, Metrics::new())).await.unwrap().unwrap();
    let handle = engine.load(SHIPPED.as_ref(), None).await.unwrap();
    assert_eq!(handle.info().device, "cuda:0");
    let x = random_rows(64, 784, 0.0, 1.0, 2);
    let rows: Vec<f32> = Vec::try_from(x.flatten(0, -1).to_kind(Kind::Float)).unwrap();
    let Output::LogProb(served) = handle.submit(Task::LogProb { rows }).await.unwrap().output else {
        panic!("log_prob answered something else")
    };
    let cpu = flowscore::store::load(SHIPPED.as_ref(), Device::Cpu).unwrap();
    assert_close(&log_prob(&cpu, &x), &served, "served on cuda");
}

#[test]
#[cfg_attr(not(cuda_gpu), ignore = "needs a CUDA libtorch (scripts/setup-libtorch.sh --cuda) and an NVIDIA GPU")]
fn cuda_round_trips_and_seeded_samples_repeat() {
    let gpu = flowscore::store::load(SHIPPED.as_ref(), GPU).unwrap();
    let _g = tch::no_grad_guard();
    let x = random_rows(64, 784, 0.05, 0.95, 3).to_device(GPU);
    let (z, _) = gpu.nice.encode(&x).unwrap();
    let back = gpu.nice.decode(&z).unwrap();
    assert!(max_abs_diff(&x.to_device(Device::Cpu), &back.to_device(Device::Cpu)) < 1e-4);
    let (a, b) = (gpu.nice.sample(16, 7, 1.0).unwrap(), gpu.nice.sample(16, 7, 1.0).unwrap());
    assert!(a.equal(&b), "the same seed drew different samples on the device");
}

#[test]
#[cfg_attr(not(cuda_gpu), ignore = "needs a CUDA libtorch (scripts/setup-libtorch.sh --cuda) and an NVIDIA GPU")]
fn a_model_trained_on_cuda_scores_the_same_on_the_cpu() {
    use flowscore::train::{self, TrainConfig};
    let x = random_rows(3000, 8, -2.0, 2.0, 4);
    let rows: Vec<f32> = Vec::try_from(x.flatten(0, -1).to_kind(Kind::Float)).unwrap();
    let all = flowscore::data::Dataset::from_rows(rows, 3000, 8, "random".to_string()).unwrap();
    let (tr, val) = all.split(0.2, 0);
    let cfg = TrainConfig { epochs: 2, device: GPU, ..TrainConfig::default() };
    let mut trained = train::train(&cfg, &tr, &val, None, &mut train::Quiet).unwrap();
    assert_eq!(trained.card.training.as_ref().unwrap().device.as_deref(), Some("cuda:0"));
    let tmp = tempfile::tempdir().unwrap();
    flowscore::store::save(&mut trained, &tmp.path().join("m"), false).unwrap();
    let cpu = flowscore::store::load(&tmp.path().join("m"), Device::Cpu).unwrap();
    let probe = random_rows(64, 8, -2.0, 2.0, 5);
    assert_close(&log_prob(&cpu, &probe), &log_prob(&trained, &probe), "trained on cuda");
}
