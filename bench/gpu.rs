//! Raw log_prob throughput on a device (issue: scoring on a GPU): the paper's architecture
//! (784-d, 4 couplings × 5 × 1000, random weights) at batches of 512, 4096 and 32768 rows, on
//! `--device` (default cuda) and, for reference in the same run, on the CPU at batch 512.
//! Prints one `raw device=.. batch=.. rows_per_s=.. batch_ms_median=..` line per case.
//!
//!   cargo bench --bench gpu -- [--device cuda] [--seconds 5]
use flowscore::flow::{Architecture, Preprocess, Prior};
use flowscore::store::{InputSpec, Model, ModelCard};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn paper(device: Device) -> Model {
    let arch = Architecture { dim: 784, couplings: 4, hidden_layers: 5, hidden_units: 1000 };
    let card = ModelCard::new(
        "paper",
        arch,
        Prior::Logistic,
        Preprocess::Logit { alpha: 0.05 },
        InputSpec { shape: vec![28, 28], eight_bit: true },
    );
    let model = Model::new(card, device).expect("model");
    let _g = tch::no_grad_guard();
    for (_, mut t) in model.named_tensors() {
        t.copy_(&(t.randn_like() * 0.02));
    }
    model
}

/// Median seconds per batch over `seconds` of calls, synchronised by reading the result back.
fn time(model: &Model, batch: i64, seconds: f64) -> f64 {
    let device = model.vs.device();
    let x = Tensor::rand([batch, 784], (Kind::Float, device));
    let _g = tch::no_grad_guard();
    let run = || model.nice.log_prob(&x).expect("log_prob").sum(Kind::Double).double_value(&[]);
    for _ in 0..3 {
        run();
    }
    let (start, mut times) = (Instant::now(), Vec::new());
    while start.elapsed().as_secs_f64() < seconds || times.len() < 5 {
        let t = Instant::now();
        run();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let device = flowscore::device::parse(&arg("--device").unwrap_or_else(|| "cuda".into())).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let cases = [(Device::Cpu, 512), (device, 512), (device, 4096), (device, 32768)];
    for (device, batch) in cases {
        let t = time(&paper(device), batch, seconds);
        println!(
            "raw device={} batch={batch} rows_per_s={:.0} batch_ms_median={:.3}",
            flowscore::device::name(device),
            batch as f64 / t,
            t * 1e3
        );
    }
}
