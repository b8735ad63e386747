//! Training progress: a bar on a terminal, one log line per epoch otherwise.
use crate::store::EpochRecord;
use crate::train::Observer;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    eight_bit: bool,
    dim: usize,
}

impl Progress {
    pub fn new(eight_bit: bool, dim: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} batches {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress { bar, eight_bit, dim }
    }
}

impl Observer for Progress {
    fn on_batch(&mut self, epoch: usize, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(epoch.to_string());
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }

    fn on_epoch(&mut self, r: &EpochRecord, best_val: f64) {
        let train_bpd = crate::flow::bits_per_dim(r.train_log_likelihood, self.dim, self.eight_bit);
        let line = format!(
            "epoch {:>3} {:>7.1}s  train {:>9.2} nats ({:.4} bpd)  val {:>9.2} nats ({:.4} bpd)  best {:.2}  {:.0} rows/s",
            r.epoch, r.seconds, r.train_log_likelihood, train_bpd, r.val_log_likelihood, r.val_bits_per_dim, best_val, r.rows_per_second
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => tracing::info!("{line}"),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
