//! Every Prometheus metric flowscore exports, declared in one place. The registry is owned by
//! `Metrics` (not global), so each test or server gets its own. The `expect`s below can only
//! fail on a malformed or duplicate static name, a programming error every test would hit.
use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// A handle on one registry's metrics. Cloning is one reference count: the HTTP layer clones
/// its state, metrics included, for every request.
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

pub struct MetricSet {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub queue_wait_seconds: Histogram,
    pub inference_seconds: Histogram,
    pub batch_rows: Histogram,
    pub rows: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub model_seconds: HistogramVec,
    pub models_loaded: IntGauge,
    pub model_memory_bytes: IntGauge,
    pub model_load_failures: IntCounterVec,
    pub drift_ks_statistic: GaugeVec,
    pub drift_p_value: GaugeVec,
    pub drift_window_rows: IntGaugeVec,
    pub in_flight: IntGauge,
    pub rejected: IntCounter,
    pub admitted: IntGauge,
    pub dropped: IntCounter,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    pub inference_threads: IntGauge,
    pub inference_restarts: IntCounter,
    pub model_info: IntGaugeVec,
    pub scored_bits_per_dim: Histogram,
    pub anomalies: IntCounterVec,
    /// Rows judged anomalous or not (the denominator of the anomaly rate), by model.
    pub judged_rows: IntCounterVec,
    pub jobs: IntCounterVec,
    pub train_epoch: IntGauge,
    pub train_progress: Gauge,
    pub train_val_log_likelihood: Gauge,
    pub swaps: IntCounter,
    /// 1 while this replica serves another version of a name than the store's live pointer.
    pub store_behind: IntGaugeVec,
    /// The replica's role (value 1).
    pub role: IntGaugeVec,
    /// Failed syncs with the remote store, by direction (push, pull).
    pub store_sync_errors: IntCounterVec,
    /// When the last sync with the remote store succeeded (Unix seconds).
    pub store_last_sync: Gauge,
}

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];
const BPD_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0];

impl Metrics {
    pub fn new() -> Metrics {
        Metrics(Arc::new(MetricSet::new()))
    }
}

impl MetricSet {
    fn new() -> MetricSet {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let requests = IntCounterVec::new(
            Opts::new("flowscore_http_requests_total", "HTTP requests by route, method and status."),
            &["route", "method", "status"],
        )
        .expect("valid counter");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("flowscore_http_request_duration_seconds", "HTTP request latency by route.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid histogram");
        let rows = IntCounterVec::new(
            Opts::new("flowscore_rows_total", "Rows processed by model and operation."),
            &["model", "op"],
        )
        .expect("valid counter");
        let queue_depth =
            IntGaugeVec::new(Opts::new("flowscore_queue_depth", "Requests waiting in a model's queue."), &["model"])
                .expect("valid gauge");
        let model_seconds = HistogramVec::new(
            HistogramOpts::new(
                "flowscore_model_request_seconds",
                "Time from a request entering a model's queue to its result, by model.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid histogram");
        let anomalies = IntCounterVec::new(
            Opts::new("flowscore_anomalies_total", "Rows flagged anomalous by /score, by model."),
            &["model"],
        )
        .expect("valid counter");
        let judged_rows = IntCounterVec::new(
            Opts::new(
                "flowscore_judged_rows_total",
                "Rows judged by /score or the protocol's is_anomaly output, by model: \
                 flowscore_anomalies_total over it is the anomaly rate.",
            ),
            &["model"],
        )
        .expect("valid counter");
        let drift_gauge = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["model"]).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let drift_ks_statistic = drift_gauge(
            "flowscore_drift_ks_statistic",
            "Kolmogorov-Smirnov statistic of the model's recent log_probs against its calibration rows.",
        );
        let drift_p_value = drift_gauge(
            "flowscore_drift_p_value",
            "p-value of that test: small when recent rows do not look like the calibration rows.",
        );
        let drift_window_rows = IntGaugeVec::new(
            Opts::new("flowscore_drift_window_rows", "Recent rows in the model's drift window."),
            &["model"],
        )
        .expect("valid gauge");
        registry.register(Box::new(drift_window_rows.clone())).expect("unique metric");
        let model_load_failures = IntCounterVec::new(
            Opts::new("flowscore_model_load_failures_total", "Model versions that failed to load, by model."),
            &["model"],
        )
        .expect("valid counter");
        let model_info = IntGaugeVec::new(
            Opts::new("flowscore_model_info", "Each live model version (value 1), labelled by name and version."),
            &["name", "version"],
        )
        .expect("valid gauge");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let jobs = IntCounterVec::new(
            Opts::new("flowscore_train_jobs_total", "Finished training jobs by outcome."),
            &["outcome"],
        )
        .expect("valid counter");
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let store_sync_errors = IntCounterVec::new(
            Opts::new("flowscore_store_sync_errors_total", "Failed syncs with the remote store, by direction."),
            &["op"],
        )
        .expect("valid counter");
        registry.register(Box::new(store_sync_errors.clone())).expect("unique metric");
        let fgauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rows.clone()),
            Box::new(jobs.clone()),
            Box::new(queue_depth.clone()),
            Box::new(model_seconds.clone()),
            Box::new(anomalies.clone()),
            Box::new(judged_rows.clone()),
            Box::new(model_load_failures.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        registry.register(Box::new(request_seconds.clone())).expect("unique metric");
        registry.register(Box::new(model_info.clone())).expect("unique metric");
        MetricSet {
            requests,
            request_seconds,
            queue_wait_seconds: hist(
                "flowscore_queue_wait_seconds",
                "Time a request waited in the engine queue before its batch started.",
                LATENCY_BUCKETS,
            ),
            inference_seconds: hist(
                "flowscore_inference_seconds",
                "Time of one batched forward pass on an inference thread.",
                LATENCY_BUCKETS,
            ),
            batch_rows: hist("flowscore_batch_rows", "Rows per batched forward pass.", BATCH_BUCKETS),
            rows,
            queue_depth,
            model_seconds,
            models_loaded: gauge("flowscore_models_loaded", "Model versions loaded and serving."),
            model_memory_bytes: gauge(
                "flowscore_model_memory_bytes",
                "Estimated bytes the inference threads hold for the loaded models (the budget's measure).",
            ),
            model_load_failures,
            drift_ks_statistic,
            drift_p_value,
            drift_window_rows,
            in_flight: gauge("flowscore_http_requests_in_flight", "HTTP requests being served."),
            rejected: counter(
                "flowscore_rejected_total",
                "Scoring requests refused with 503 (admission full, or the engine queue full).",
            ),
            admitted: gauge(
                "flowscore_admitted_requests",
                "Scoring requests admitted and not yet answered (reading, queued or computing).",
            ),
            dropped: counter(
                "flowscore_dropped_total",
                "Queued requests skipped because their client had gone or their time limit had passed.",
            ),
            connections_open: gauge("flowscore_connections_open", "Open client connections."),
            connections_refused: counter(
                "flowscore_connections_refused_total",
                "Connections answered 503 and closed because --max-connections were open.",
            ),
            inference_threads: gauge(
                "flowscore_inference_threads_ready",
                "Inference threads holding a model and taking jobs (/ready needs all of them).",
            ),
            inference_restarts: counter(
                "flowscore_inference_restarts_total",
                "Times an inference thread panicked and reloaded the live model.",
            ),
            model_info,
            scored_bits_per_dim: hist(
                "flowscore_scored_bpd",
                "bits per dimension (bpd) of rows scored by /log_prob and /score; watch it for drift.",
                BPD_BUCKETS,
            ),
            anomalies,
            judged_rows,
            jobs,
            train_epoch: gauge("flowscore_train_epoch", "Epoch of the running training job (last finished epoch)."),
            train_progress: fgauge(
                "flowscore_train_progress_ratio",
                "Share of the current training epoch done, 0 to 1.",
            ),
            train_val_log_likelihood: fgauge(
                "flowscore_train_val_log_likelihood_nats",
                "Validation log-likelihood of the training job's last epoch, nats per row.",
            ),
            swaps: counter("flowscore_model_swaps_total", "Times a new model was swapped in."),
            store_behind: gauge_vec(
                "flowscore_store_behind",
                "1 while this replica serves another version than the store's live pointer (a scorer catching up, or a version that failed to load).",
                "model",
            ),
            role: gauge_vec("flowscore_role", "This replica's role (value 1): all, scorer or trainer.", "role"),
            store_sync_errors,
            store_last_sync: fgauge(
                "flowscore_store_last_sync_timestamp_seconds",
                "When the last sync with the remote store (--store-url) succeeded, Unix seconds.",
            ),
            registry,
        }
    }

    /// Marks `name`/`version` as the live version of `name` (replacing its previous one).
    pub fn set_live(&self, name: &str, version: &str, previous: Option<&str>) {
        if let Some(old) = previous.filter(|old| *old != version) {
            let _ = self.model_info.remove_label_values(&[name, old]);
        }
        self.model_info.with_label_values(&[name, version]).set(1);
    }

    /// Drops every series labelled with `name`, once no version of it is served (labels stay
    /// bounded by the names that exist).
    pub fn forget_model(&self, name: &str, live_version: Option<&str>) {
        if let Some(v) = live_version {
            let _ = self.model_info.remove_label_values(&[name, v]);
        }
        let _ = self.queue_depth.remove_label_values(&[name]);
        let _ = self.store_behind.remove_label_values(&[name]);
        let _ = self.model_seconds.remove_label_values(&[name]);
        let _ = self.anomalies.remove_label_values(&[name]);
        let _ = self.judged_rows.remove_label_values(&[name]);
        let _ = self.drift_ks_statistic.remove_label_values(&[name]);
        let _ = self.drift_p_value.remove_label_values(&[name]);
        let _ = self.drift_window_rows.remove_label_values(&[name]);
        for op in ["log_prob", "encode", "decode", "sample", "inpaint"] {
            let _ = self.rows.remove_label_values(&[name, op]);
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
