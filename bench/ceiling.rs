//! The serving ceiling: raw in-process libtorch `log_prob` on a model folder, no HTTP, no
//! parsing. bench/serve_bench.sh divides served rows/s by `ceiling_rows_per_s` and compares the
//! 1-row latency at concurrency 1 with `single_row_ms_*`.
//!
//! Usage: cargo bench --bench ceiling -- [--model DIR] [--batch 512] [--threads 2]
//!        [--seconds 8] [--single-seconds 5] [--curve 8,16,32,48,64] [--curve-seconds 2]
//!        [--kernels auto,plain,mkl,onednn,tiled]
//! (Unknown arguments such as cargo's `--bench` are ignored.)
//!
//! One copy of the model per `--kernels` policy (default: every policy this machine can run;
//! src/kernels, docs/kernels.md) is timed, alternately call by call so that the machine's drift
//! cancels. `auto` is what the server runs by default; `plain` is libtorch's own layers.
//! Per path it prints `path=NAME` lines with the batch throughput, the single-row latency and
//! rows/s at the `--curve` batch sizes; then two parseable summary lines, taken from the fastest
//! path:
//!   ceiling_rows_per_s=<batch / median batch time> path=.. rows_per_s=.. batch=.. threads=..
//!     batch_ms_median=.. batch_ms_p90=.. mean_rows_per_s=.. iters=..
//!   single_row_ms_median=.. single_row_ms_p99=.. single_row_ms_min=.. iters=.. path=..
use clap::ValueEnum;
use flowscore::kernels::{self, CpuKernels};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

struct Args {
    model: PathBuf,
    batch: i64,
    threads: i32,
    seconds: f64,
    single_seconds: f64,
    /// Small batch sizes to time as well (rows/s per size).
    curve: Vec<i64>,
    curve_seconds: f64,
    /// The kernel policies to time.
    kernels: Vec<CpuKernels>,
}

fn bad(name: &str) -> ! {
    eprintln!("ceiling: {name} needs a positive number (or a path for --model)");
    std::process::exit(2)
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(name: &str, val: Option<&String>) -> T {
    match val.and_then(|v| v.parse::<T>().ok()) {
        Some(v) if v > T::default() => v,
        _ => bad(name),
    }
}

fn parse_args() -> Args {
    let mut a = Args {
        model: PathBuf::from("bench/out/model-paper"),
        batch: 512,
        threads: 2,
        seconds: 8.0,
        single_seconds: 5.0,
        curve: vec![8, 16, 32, 48, 64],
        curve_seconds: 2.0,
        kernels: CpuKernels::ALL.into_iter().filter(|&p| kernels::check(kernels::Cpu::detect(), p).is_ok()).collect(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let name = argv[i].as_str();
        let val = argv.get(i + 1);
        match name {
            "--model" => a.model = PathBuf::from(val.unwrap_or_else(|| bad(name))),
            "--batch" => a.batch = positive(name, val),
            "--threads" => a.threads = positive(name, val),
            "--seconds" => a.seconds = positive(name, val),
            "--single-seconds" => a.single_seconds = positive(name, val),
            "--curve" => {
                let list = val.unwrap_or_else(|| bad(name));
                a.curve =
                    list.split(',').filter(|s| !s.is_empty()).map(|v| positive(name, Some(&v.to_string()))).collect();
            }
            "--curve-seconds" => a.curve_seconds = positive(name, val),
            "--kernels" => {
                let list = val.unwrap_or_else(|| bad(name));
                a.kernels = list
                    .split(',')
                    .map(|k| {
                        CpuKernels::from_str(k, true).unwrap_or_else(|_| {
                            eprintln!("ceiling: unknown kernel policy `{k}` (auto, plain, mkl, onednn, tiled)");
                            std::process::exit(2)
                        })
                    })
                    .collect();
            }
            _ => {
                // Not ours (e.g. cargo's `--bench`): skip it alone.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    // Nearest-rank percentile of an ascending slice.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Measured {
    path: &'static str,
    rows_per_s: f64,
    batch_line: String,
    single_median: f64,
    single_line: String,
    curve: Vec<(i64, f64)>,
}

/// Calls `f(i)` for each of `n` models in turn, alternating call by call in a rotating order,
/// until `budget` has passed and each ran at least `min_iters` times (after `warmup` untimed
/// rounds); returns each one's sorted wall times in ms. Alternating keeps this machine's
/// minute-scale speed drift out of the comparison between the paths.
fn time_alternating(
    n: usize,
    warmup: usize,
    min_iters: usize,
    max_iters: usize,
    budget: Duration,
    mut f: impl FnMut(usize),
) -> Vec<Vec<f64>> {
    for _ in 0..warmup {
        (0..n).for_each(&mut f);
    }
    let start = Instant::now();
    let mut times = vec![Vec::new(); n];
    let mut round = 0;
    while times[0].len() < max_iters && (times[0].len() < min_iters || start.elapsed() < budget) {
        // Each round starts with the next model, so that none keeps one place in the order. Two
        // copies of the same path still came out up to 4% apart (instance, not order).
        for i in (0..n).map(|j| (round + j) % n) {
            let s = Instant::now();
            f(i);
            times[i].push(s.elapsed().as_secs_f64() * 1e3);
        }
        round += 1;
    }
    times.iter_mut().for_each(|t| t.sort_by(f64::total_cmp));
    times
}

/// Times every model, interleaved: batch throughput at `args.batch`, the single-row latency, and
/// rows/s at a few smaller batch sizes (what the dynamic batcher forms from single-row clients).
fn measure(models: &[(&'static str, flowscore::store::Model)], args: &Args) -> Vec<Measured> {
    let dim = models[0].1.nice.dim() as i64;
    let run = |x: &Tensor, warmup, min, max, secs: f64| {
        time_alternating(models.len(), warmup, min, max, Duration::from_secs_f64(secs), |i| {
            // Reading a value back makes sure the whole forward ran (CPU ops are synchronous).
            std::hint::black_box(models[i].1.nice.log_prob(x).expect("log_prob").double_value(&[0]));
        })
    };

    // Batch throughput: one [batch, D] float32 tensor of U[0, 1) rows, scored repeatedly.
    let xb = Tensor::rand([args.batch, dim], (Kind::Float, Device::Cpu));
    let batch_times = run(&xb, 2, 10, 100_000, args.seconds);
    // Single-row compute latency; the same row every call keeps the measurement to the forward
    // pass alone (libtorch caches nothing).
    let x1 = Tensor::rand([1, dim], (Kind::Float, Device::Cpu));
    let single_times = run(&x1, 20, 200, 20_000, args.single_seconds);
    let curves: Vec<Vec<f64>> = args
        .curve
        .iter()
        .map(|&b| {
            let x = Tensor::rand([b, dim], (Kind::Float, Device::Cpu));
            run(&x, 2, 5, 10_000, args.curve_seconds).iter().map(|t| b as f64 * 1e3 / percentile(t, 50.0)).collect()
        })
        .collect();

    models
        .iter()
        .enumerate()
        .map(|(i, &(path, _))| {
            let times = &batch_times[i];
            let median = percentile(times, 50.0);
            let total: f64 = times.iter().sum();
            let rows_per_s = args.batch as f64 * 1e3 / median;
            let batch_line = format!(
                "rows_per_s={rows_per_s:.1} batch={} threads={} batch_ms_median={median:.3} batch_ms_p90={:.3} mean_rows_per_s={:.1} iters={} model={}",
                args.batch,
                args.threads,
                percentile(times, 90.0),
                args.batch as f64 * times.len() as f64 * 1e3 / total,
                times.len(),
                args.model.display()
            );
            let times = &single_times[i];
            let single_median = percentile(times, 50.0);
            let single_line = format!(
                "single_row_ms_median={single_median:.4} single_row_ms_p99={:.4} single_row_ms_min={:.4} iters={} threads={}",
                percentile(times, 99.0),
                times[0],
                times.len(),
                args.threads
            );
            let curve = args.curve.iter().zip(&curves).map(|(&b, c)| (b, c[i])).collect();
            Measured { path, rows_per_s, batch_line, single_median, single_line, curve }
        })
        .collect()
}

fn load(args: &Args) -> flowscore::store::Model {
    match flowscore::store::load(&args.model, Device::Cpu) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ceiling: cannot load {}: {e}", args.model.display());
            std::process::exit(1);
        }
    }
}

fn main() {
    let args = parse_args();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let _guard = tch::no_grad_guard();

    // One copy per policy (see the top of this file). The ceiling is the fastest at `--batch`,
    // so that the served/ceiling ratios are never flattered by a slow reference.
    let cpu = kernels::Cpu::detect();
    println!("# cpu: {cpu}");
    let models: Vec<(&'static str, flowscore::store::Model)> = args
        .kernels
        .iter()
        .map(|&policy| {
            let mut model = load(&args);
            model.vs.freeze();
            match kernels::prepare(&mut model.nice, policy) {
                Ok(p) => {
                    let used: Vec<&str> = p.kernels.iter().map(|k| k.name()).collect();
                    println!("# {policy}: {} ({:.0} MB prepared)", used.join(", "), p.bytes as f64 / 1e6);
                }
                Err(e) => {
                    eprintln!("ceiling: {e}");
                    std::process::exit(2);
                }
            }
            (policy.name(), model)
        })
        .collect();
    let results = measure(&models, &args);
    for r in &results {
        println!("path={} {}", r.path, r.batch_line);
        println!("path={} {}", r.path, r.single_line);
        let curve: Vec<String> = r.curve.iter().map(|(b, v)| format!("{b}:{v:.0}")).collect();
        if !curve.is_empty() {
            println!("path={} rows_per_s_by_batch={}", r.path, curve.join(","));
        }
    }
    let best = results.iter().max_by(|a, b| a.rows_per_s.total_cmp(&b.rows_per_s)).expect("one result");
    let fastest_single = results.iter().min_by(|a, b| a.single_median.total_cmp(&b.single_median)).expect("one result");
    println!("ceiling_rows_per_s={:.1} path={} {}", best.rows_per_s, best.path, best.batch_line);
    println!("{} path={}", fastest_single.single_line, fastest_single.path);
}
