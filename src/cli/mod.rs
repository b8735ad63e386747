//! The `flowscore` command line: train, eval, sample, inspect (and serve, with the HTTP layer).
mod progress;

use crate::data::{self, Dataset, LoadOptions};
use crate::flow::bits_per_dim;
use crate::store::{self, Model};
use crate::train::{self, TrainConfig};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Device;

#[derive(Debug, Parser)]
#[command(name = "flowscore", version, about = "Exact density scoring with NICE normalizing flows")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, env = "FLOWSCORE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// libtorch intra-op threads (default: libtorch's choice, one per core).
    #[arg(long, global = true, env = "FLOWSCORE_THREADS")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on a data file (IDX, CSV or NPY) and save it as a model folder.
    Train(TrainArgs),
    /// Log-likelihood of a data file (nats, bits/dim); AUROC when labels mark anomalies.
    Eval(EvalArgs),
    /// Draw samples: NPY, or a PNG grid for image models.
    Sample(SampleArgs),
    /// Show a model card and its learned scaling spectrum.
    Inspect(InspectArgs),
    /// Serve a model over HTTP.
    Serve(crate::serve::ServeArgs),
    /// Create an untrained model folder (random weights), e.g. for benchmarks.
    Init(InitArgs),
    /// Recompute a model's calibration (every score kind) from held-out normal rows.
    Calibrate(CalibrateArgs),
    /// Which features make each row unlikely (one JSON line per row; a heat map for images).
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// Features listed per row, largest attribution first.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Image models: write the first row's attributions as a PNG heat map here.
    #[arg(long)]
    pub png: Option<PathBuf>,
    #[command(flatten)]
    pub data_args: DataArgs,
}

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// The model folder; its card is rewritten (weights unchanged).
    #[arg(long)]
    pub model: PathBuf,
    /// Held-out rows of normal data (not trained on).
    #[arg(long)]
    pub data: PathBuf,
    /// Share of calibration rows flagged by the default threshold.
    #[arg(long, default_value_t = crate::calibration::DEFAULT_THRESHOLD_QUANTILE)]
    pub threshold_quantile: f64,
    #[command(flatten)]
    pub data_args: DataArgs,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub dim: usize,
    /// Row layout, e.g. 28,28 for images (default: [dim]).
    #[arg(long, value_delimiter = ',')]
    pub shape: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    pub couplings: usize,
    #[arg(long, default_value_t = 5)]
    pub hidden_layers: usize,
    #[arg(long, default_value_t = 1000)]
    pub hidden_units: usize,
    #[arg(long, value_enum, default_value = "logistic")]
    pub prior: crate::flow::Prior,
    /// identity or logit (standardize needs data: use `train`).
    #[arg(long, value_enum, default_value = "identity")]
    pub preprocess: crate::train::PreprocessChoice,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// CSV columns to ignore (name or 0-based index); repeatable.
    #[arg(long = "exclude-column")]
    pub exclude_columns: Vec<String>,
    /// Use only the first N rows.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Training data.
    #[arg(long)]
    pub data: PathBuf,
    /// Optional test data: its log-likelihood goes into the card.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Model folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the model folder if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub data_args: DataArgs,
    #[command(flatten)]
    pub config: TrainConfig,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// IDX labels file (default: the one beside an IDX images file).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// CSV column holding labels.
    #[arg(long)]
    pub label_column: Option<String>,
    /// Labels that mark anomalies, comma separated (default: any non-zero label).
    #[arg(long, value_delimiter = ',')]
    pub anomaly_labels: Vec<i64>,
    #[command(flatten)]
    pub data_args: DataArgs,
}

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(short, long, default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scales the prior draws; < 1 gives cleaner, less varied samples.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Output file: .npy (rows) or .png (image grid, image models only).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Write the sorted scaling spectrum as a PNG chart (and, for image models, a per-pixel map
    /// beside it as `<name>-map.png`).
    #[arg(long)]
    pub spectrum_png: Option<PathBuf>,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWSCORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only where a person reads the terminal, not in files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n as i32);
    }
    crate::device::pin_float32();
    match cli.command {
        Command::Train(a) => train_cmd(a),
        Command::Eval(a) => eval_cmd(a),
        Command::Calibrate(a) => calibrate_cmd(a),
        Command::Explain(a) => explain_cmd(a),
        Command::Sample(a) => sample_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::Serve(a) => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(a.http_threads()).enable_all().build()?;
            runtime.block_on(crate::serve::run(a, crate::serve::shutdown_signal()))
        }
        Command::Init(a) => init_cmd(a),
    }
}

fn init_cmd(a: InitArgs) -> Result<()> {
    use crate::flow::{Architecture, Preprocess};
    use crate::train::PreprocessChoice;
    let preprocess = match a.preprocess {
        PreprocessChoice::Identity => Preprocess::Identity,
        PreprocessChoice::Logit => Preprocess::Logit { alpha: 0.05 },
        PreprocessChoice::Standardize | PreprocessChoice::Whiten | PreprocessChoice::Auto => {
            bail!("standardize and whiten are fitted on data: use `flowscore train`")
        }
    };
    let shape = if a.shape.is_empty() { vec![a.dim] } else { a.shape.clone() };
    let eight_bit = shape.len() == 2;
    let arch = Architecture {
        dim: a.dim,
        couplings: a.couplings,
        hidden_layers: a.hidden_layers,
        hidden_units: a.hidden_units,
    };
    let card = store::ModelCard::new("random", arch, a.prior, preprocess, store::InputSpec { shape, eight_bit });
    tch::manual_seed(a.seed as i64);
    let mut model = Model::new(card, Device::Cpu)?;
    let _ = store::ModelCard::from_json(&serde_json::to_string(&model.card)?, &a.out)?;
    store::save(&mut model, &a.out, a.force)?;
    println!("wrote an untrained model to {}", a.out.display());
    Ok(())
}

fn load_data(path: &Path, args: &DataArgs, labels: Option<PathBuf>, label_column: Option<String>) -> Result<Dataset> {
    let opts = LoadOptions {
        exclude_columns: args.exclude_columns.clone(),
        label_column,
        labels_path: labels,
        limit: args.limit,
    };
    Ok(data::load(path, &opts)?)
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!("{} already exists (use --force to replace it)", a.out.display());
    }
    let all = load_data(&a.data, &a.data_args, None, None)?;
    let test = match &a.test {
        Some(p) => Some(load_data(
            p,
            &DataArgs { exclude_columns: a.data_args.exclude_columns.clone(), limit: None },
            None,
            None,
        )?),
        None => None,
    };
    let (train_set, val_set) = all.split(a.config.val_fraction, a.config.seed);
    tracing::info!(
        data = %all.source, train_rows = train_set.n, val_rows = val_set.n, dim = all.dim,
        test_rows = test.as_ref().map(|t| t.n), "training"
    );
    let mut progress = progress::Progress::new(all.eight_bit, all.dim);
    let mut model = train::train(&a.config, &train_set, &val_set, test.as_ref(), &mut progress)?;
    drop(progress);
    store::save(&mut model, &a.out, a.force)?;
    let t = model.card.training.as_ref().context("training summary missing")?;
    println!(
        "saved {} (best epoch {} of {}, {:.0} s): val {:.2} nats ({:.4} bits/dim){}",
        a.out.display(),
        t.best_epoch,
        t.epochs,
        t.wall_seconds,
        t.val_log_likelihood,
        t.val_bits_per_dim,
        match (t.test_log_likelihood, t.test_bits_per_dim) {
            (Some(ll), Some(b)) => format!(", test {ll:.2} nats ({b:.4} bits/dim)"),
            _ => String::new(),
        }
    );
    Ok(())
}

fn load_model(dir: &Path) -> Result<Model> {
    let model = store::load(dir, Device::Cpu)?;
    Ok(model)
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let data = load_data(&a.data, &a.data_args, a.labels.clone(), a.label_column.clone())?;
    let dim = model.nice.dim();
    if data.dim != dim {
        bail!("{} has {} columns, the model expects {dim}", data.source, data.dim);
    }
    if let Some((lo, hi)) = model.card.preprocess.domain() {
        if let Some(i) = data.rows.iter().position(|v| !(lo..=hi).contains(&(*v as f64))) {
            bail!(
                "{}: row {} column {} is outside the model's input range [{lo}, {hi}]",
                data.source,
                i / dim + 1,
                i % dim + 1
            );
        }
    }
    let lp = train::log_probs(&model.nice, &data)?;
    let ll = train::mean(&lp);
    let eight_bit = model.card.input.eight_bit;
    let mut report = serde_json::json!({
        "model": model.card.name, "version": model.card.version, "data": data.source, "rows": data.n,
        "log_likelihood_nats": ll, "bits_per_dim": bits_per_dim(ll, dim, eight_bit),
    });
    if let Some(labels) = &data.labels {
        let positive: Vec<bool> = labels
            .iter()
            .map(|l| if a.anomaly_labels.is_empty() { *l != 0 } else { a.anomaly_labels.contains(l) })
            .collect();
        let scores: Vec<f64> = lp.iter().map(|v| -v).collect();
        report["anomalies"] = positive.iter().filter(|p| **p).count().into();
        report["auroc"] = crate::eval::auroc(&scores, &positive).into();
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn calibrate_cmd(a: CalibrateArgs) -> Result<()> {
    let mut model = load_model(&a.model)?;
    let data = load_data(&a.data, &a.data_args, None, None)?;
    let dim = model.nice.dim();
    if data.dim != dim {
        bail!("{} has {} columns, the model expects {dim}", data.source, data.dim);
    }
    let lp = train::log_probs(&model.nice, &data)?;
    let calibration = train::calibrate(&model.card, &data, &lp, a.threshold_quantile)?;
    let report = serde_json::json!({
        "model": a.model.display().to_string(), "rows": data.n, "default_kind": calibration.default_kind,
        "threshold": calibration.threshold,
        "kinds": if calibration.complexity_corrected.is_some() { vec!["likelihood", "complexity_corrected"] } else { vec!["likelihood"] },
    });
    model.card.calibration = Some(calibration);
    store::save(&mut model, &a.model, true)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn explain_cmd(a: ExplainArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let data = load_data(&a.data, &a.data_args, None, None)?;
    let dim = model.nice.dim();
    if data.dim != dim {
        bail!("{} has {} columns, the model expects {dim}", data.source, data.dim);
    }
    let grid = crate::explain::grid(&model)?;
    let x = tch::Tensor::from_slice(&data.rows).view([data.n as i64, dim as i64]);
    let e = crate::explain::explain(&model, &x, &grid)?;
    for (i, (row, lp)) in e.attributions.chunks(dim).zip(&e.log_prob).enumerate() {
        let top: Vec<serde_json::Value> = crate::explain::top_k(row, a.top_k)
            .into_iter()
            .map(|j| serde_json::json!({"feature": j, "attribution": row[j]}))
            .collect();
        println!("{}", serde_json::json!({"row": i, "log_prob": lp, "top": top}));
    }
    if let Some(path) = &a.png {
        let [h, w] = model.card.image_shape().context("--png needs an image model")?;
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        crate::image::write_png_heatmap(std::io::BufWriter::new(file), &e.attributions[..dim], h, w, 8)?;
    }
    Ok(())
}

fn sample_cmd(a: SampleArgs) -> Result<()> {
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!("--temperature must be a positive number");
    }
    let model = load_model(&a.model)?;
    let _guard = tch::no_grad_guard();
    let x = model.nice.sample(a.n, a.seed, a.temperature)?;
    let rows = Vec::<f32>::try_from(&x.flatten(0, -1))?;
    let dim = model.nice.dim();
    match a.out.extension().and_then(|e| e.to_str()) {
        Some("npy") => data::write_npy(&a.out, &rows, a.n, dim)?,
        Some("png") => {
            let [h, w] = model.card.image_shape().context("PNG output needs an image model (input.shape [h, w])")?;
            let file = std::fs::File::create(&a.out).with_context(|| a.out.display().to_string())?;
            let cols = (a.n as f64).sqrt().ceil() as usize;
            crate::image::write_png_grid(std::io::BufWriter::new(file), &rows, a.n, h, w, cols)?;
        }
        _ => bail!("--out must end in .npy or .png"),
    }
    println!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}

fn inspect_cmd(a: InspectArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let mut card = serde_json::to_value(&model.card)?;
    // The calibration list is long; show its size and threshold instead.
    if let Some(c) = &model.card.calibration {
        card["calibration"] = serde_json::json!({
            "rows": c.log_probs.len(), "threshold_quantile": c.threshold_quantile, "threshold": c.threshold,
        });
    }
    if let Some(t) = card.get_mut("training").and_then(|t| t.as_object_mut()) {
        t.remove("history");
    }
    let scales = model.nice.log_scales();
    let mut sorted: Vec<f64> = scales.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&card)?)?;
    // Large s = a direction the model stretches = one that matters little (like a small PCA
    // eigenvalue); the paper reads the spectrum of exp(-s) as the spread of each latent.
    let show: Vec<String> = sorted.iter().take(10).map(|s| format!("{s:.3}")).collect();
    let tail: Vec<String> = sorted.iter().rev().take(10).rev().map(|s| format!("{s:.3}")).collect();
    writeln!(out, "scaling spectrum: {} log-scales s_d, sorted descending", sorted.len())?;
    writeln!(out, "  largest  : {}", show.join(" "))?;
    writeln!(out, "  smallest : {}", tail.join(" "))?;
    writeln!(out, "  sum      : {:.3} (log|det| of the scaling layer)", sorted.iter().sum::<f64>())?;
    if let Some(path) = &a.spectrum_png {
        let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
        crate::image::write_png_series(std::io::BufWriter::new(file), &sorted)?;
        writeln!(out, "wrote {}", path.display())?;
        if let Some([h, w]) = model.card.image_shape() {
            let map = path.with_file_name(format!(
                "{}-map.png",
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            ));
            let file = std::fs::File::create(&map).with_context(|| map.display().to_string())?;
            crate::image::write_png_heatmap(std::io::BufWriter::new(file), &scales, h, w, 8)?;
            writeln!(out, "wrote {}", map.display())?;
        }
    }
    Ok(())
}
