//! Median wall time of one flowscore training step (forward, backward, Adam) for a NICE
//! architecture, to compare with `bench/pytorch_nice_train.py --step-time-only` on the same
//! shape. Usage: cargo bench --bench train_step -- [hidden_units] [hidden_layers] [batch] [threads]
use flowscore::flow::{Architecture, Preprocess, Prior};
use flowscore::store::{InputSpec, Model, ModelCard};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (units, layers, batch, threads) = (arg(0, 1000), arg(1, 5), arg(2, 256), arg(3, 2));
    tch::set_num_threads(threads as i32);
    let arch = Architecture { dim: 784, couplings: 4, hidden_layers: layers, hidden_units: units };
    let card = ModelCard::new(
        "bench",
        arch,
        Prior::Logistic,
        Preprocess::Identity,
        InputSpec { shape: vec![28, 28], eight_bit: true },
    );
    let model = Model::new(card, Device::Cpu).expect("model");
    let mut opt =
        nn::Adam { beta1: 0.9, beta2: 0.99, wd: 0.0, eps: 1e-4, amsgrad: false }.build(&model.vs, 1e-3).expect("adam");
    let x = Tensor::rand([batch as i64, 784], (Kind::Float, Device::Cpu));
    let mut times = Vec::new();
    for i in 0..23 {
        let t = Instant::now();
        let xb = &x + (x.rand_like() - 0.5) / 256.0;
        let loss = -model.nice.log_prob(&xb).expect("log_prob").mean(Kind::Double);
        opt.backward_step(&loss);
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("step_ms_median={median:.3} rows_per_s={:.0} (4 couplings x {layers} x {units}, batch {batch}, {threads} threads)", batch as f64 * 1e3 / median);
}
