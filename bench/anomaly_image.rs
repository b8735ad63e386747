//! Out-of-distribution detection on images: a model trained on Fashion-MNIST against sets that
//! can be made here, scored three ways: `likelihood` (−log p), `complexity_corrected`
//! (−log₂ P(x) − L(x), Serrà et al. 2020) and the PNG length L(x) alone. Prints AUROC per set
//! (in-distribution: Fashion-MNIST test rows 5000..10000; the model's calibration may use rows
//! 0..5000).
//!
//! Usage: cargo bench --bench anomaly_image -- --model DIR [--digits FILE.npy] [--holdout-model DIR]
//!   --digits: uint8 [n, 28, 28] images (bench/anomaly_bench.sh makes them from scikit-learn's
//!   digits, 8×8 scaled up); --holdout-model: a model trained without class 9 (ankle boots),
//!   scored on class 9 against the other classes.
use flowscore::anomaly::{png_bits, score, ScoreKind};
use flowscore::data::{self, LoadOptions};
use flowscore::eval::auroc;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

const TEST: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

fn fail(msg: &str) -> ! {
    eprintln!("anomaly_image: {msg}");
    std::process::exit(2)
}

fn arg(name: &str) -> Option<String> {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).cloned()
}

/// Rows of 784 values (p + 0.5) / 256 from 8-bit pixels.
fn rows_of(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|p| (*p as f32 + 0.5) / 256.0).collect()
}

fn pixels_of(rows: &[f32]) -> Vec<u8> {
    rows.iter().map(|v| flowscore::anomaly::to_pixel(*v)).collect()
}

struct Scores {
    likelihood: Vec<f64>,
    corrected: Vec<f64>,
    png: Vec<f64>,
}

fn scores(model: &flowscore::store::Model, rows: &[f32]) -> Scores {
    let x = tch::Tensor::from_slice(rows).view([-1, 784]);
    let lp: Vec<f64> = tch::no_grad(|| {
        let mut out = Vec::new();
        for chunk in x.split(1000, 0) {
            let v: Vec<f64> = Vec::try_from(model.nice.log_prob(&chunk).unwrap().to_kind(tch::Kind::Double)).unwrap();
            out.extend(v);
        }
        out
    });
    let mut s = Scores { likelihood: Vec::new(), corrected: Vec::new(), png: Vec::new() };
    for (row, lp) in rows.chunks(784).zip(&lp) {
        s.likelihood.push(score(ScoreKind::Likelihood, *lp, row, None).unwrap());
        s.corrected.push(score(ScoreKind::ComplexityCorrected, *lp, row, Some([28, 28])).unwrap());
        s.png.push(png_bits(row, 28, 28).unwrap());
    }
    s
}

fn row(name: &str, normal: &Scores, odd: &Scores) {
    let a = |n: &[f64], o: &[f64]| {
        let all: Vec<f64> = n.iter().chain(o).copied().collect();
        let labels: Vec<bool> = n.iter().map(|_| false).chain(o.iter().map(|_| true)).collect();
        auroc(&all, &labels).unwrap_or(f64::NAN)
    };
    println!(
        "| {name} | {} | {:.3} | {:.3} | {:.3} |",
        odd.likelihood.len(),
        a(&normal.likelihood, &odd.likelihood),
        a(&normal.corrected, &odd.corrected),
        a(&normal.png, &odd.png)
    );
}

fn main() {
    let model_dir = PathBuf::from(arg("--model").unwrap_or_else(|| fail("--model is required")));
    let model = flowscore::store::load(&model_dir, tch::Device::Cpu).unwrap_or_else(|e| fail(&e.to_string()));
    let test = data::load(std::path::Path::new(TEST), &LoadOptions::default()).unwrap_or_else(|e| fail(&e.to_string()));
    let normal_rows = &test.rows[5000 * 784..];
    let normal = scores(&model, normal_rows);
    let normal_pixels = pixels_of(normal_rows);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = 2000;
    let mut sets: Vec<(&str, Vec<u8>)> = Vec::new();
    let take = |f: &dyn Fn(usize, usize, usize) -> u8| -> Vec<u8> {
        (0..n).flat_map(|i| (0..784).map(move |k| (i, k / 28, k % 28))).map(|(i, r, c)| f(i, r, c)).collect()
    };
    let at = |i: usize, r: usize, c: usize| normal_pixels[i * 784 + r * 28 + c];
    sets.push(("horizontally flipped", take(&|i, r, c| at(i, r, 27 - c))));
    sets.push(("vertically flipped", take(&|i, r, c| at(i, 27 - r, c))));
    sets.push(("inverted (255 − p)", take(&|i, r, c| 255 - at(i, r, c))));
    let noise: Vec<u8> = (0..n * 784).map(|_| rng.gen()).collect();
    sets.push(("uniform noise", noise));
    let greys: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    sets.push(("constant images", (0..n * 784).map(|k| greys[k / 784]).collect()));
    if let Some(path) = arg("--digits") {
        let d =
            data::load(std::path::Path::new(&path), &LoadOptions::default()).unwrap_or_else(|e| fail(&e.to_string()));
        sets.push(("scikit-learn digits, 8×8 scaled to 28×28", pixels_of(&d.rows)));
    }
    println!(
        "model {} ({}), in-distribution: {} Fashion-MNIST test images (5000..10000)",
        model_dir.display(),
        model.card.name,
        normal.likelihood.len()
    );
    println!();
    println!("| out-of-distribution set | images | AUROC likelihood | AUROC complexity_corrected | AUROC PNG length |");
    println!("|---|---:|---:|---:|---:|");
    for (name, pixels) in &sets {
        row(name, &normal, &scores(&model, &rows_of(pixels)));
    }
    if let Some(dir) = arg("--holdout-model") {
        let held = flowscore::store::load(std::path::Path::new(&dir), tch::Device::Cpu)
            .unwrap_or_else(|e| fail(&e.to_string()));
        let labels = test.labels.as_ref().unwrap_or_else(|| fail("the test set has no labels"));
        let (mut inside, mut outside) = (Vec::new(), Vec::new());
        for (i, l) in labels.iter().enumerate().skip(5000) {
            let r = &test.rows[i * 784..(i + 1) * 784];
            if *l == 9 {
                outside.extend_from_slice(r)
            } else {
                inside.extend_from_slice(r)
            }
        }
        row("held-out class (ankle boot), model trained without it", &scores(&held, &inside), &scores(&held, &outside));
    }
}
