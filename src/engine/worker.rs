//! Inference threads, shared by every loaded model. Each owns one copy of every model (tch
//! tensors are !Sync), runs with grad mode off, takes turns over the models with queued work
//! (one batch per turn, merging that model's queued requests of one kind into one forward pass),
//! and loads and drops models when told to.
use super::{Control, EngineConfig, EngineError, Health, Job, ModelInfo, Output, Scored, Task, Unit};
use crate::metrics::Metrics;
use crate::store::{self, Model};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// Joins the inference threads when the last engine handle is dropped (after the control
/// channels have closed, which makes them exit).
pub(super) struct Threads(Vec<JoinHandle<()>>);

impl Drop for Threads {
    fn drop(&mut self) {
        for h in self.0.drain(..) {
            let _ = h.join();
        }
    }
}

pub(super) fn spawn(
    config: &Arc<EngineConfig>,
    runnable: Receiver<Arc<Unit>>,
    reschedule: Sender<Arc<Unit>>,
    metrics: Metrics,
    health: Arc<Health>,
) -> Result<(Vec<Sender<Control>>, Threads), EngineError> {
    let mut controls = Vec::new();
    let mut handles = Vec::new();
    for id in 0..config.workers.max(1) {
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        let worker = Worker {
            config: config.clone(),
            metrics: metrics.clone(),
            runnable: runnable.clone(),
            reschedule: reschedule.clone(),
            controls: ctl_rx,
            health: health.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("flowscore-infer-{id}"))
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Inference(format!("cannot start an inference thread: {e}")))?;
        controls.push(ctl_tx);
        handles.push(handle);
    }
    let threads = Threads(handles);
    // Each thread counts itself alive once it runs; wait for that, so `is_ready` holds at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while health.alive.load(Ordering::SeqCst) < config.workers.max(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((controls, threads))
}

struct Worker {
    config: Arc<EngineConfig>,
    metrics: Metrics,
    runnable: Receiver<Arc<Unit>>,
    reschedule: Sender<Arc<Unit>>,
    controls: Receiver<Control>,
    health: Arc<Health>,
}

/// This thread's copy of one loaded model.
struct Live {
    model: Model,
    unit: Arc<Unit>,
    /// Requests the last batch merged: about as many are expected in the next (see `gather`).
    expect: usize,
}

impl Live {
    fn load(unit: Arc<Unit>, config: &EngineConfig) -> Result<Live, EngineError> {
        let info = &unit.info;
        let mut model = store::load(&info.dir, config.device)?;
        model.vs.freeze();
        // The CPU kernels pack weights for the CPU; on a GPU libtorch's own layers run.
        if config.device == Device::Cpu {
            let prepared = crate::kernels::prepare(&mut model.nice, config.cpu_kernels)?;
            tracing::debug!(
                kernels = ?prepared.kernels, prepared_mb = prepared.bytes as f64 / 1e6, dir = %info.dir.display(),
                "weights prepared for inference"
            );
        }
        // One forward pass at the real batch shape, so the first request pays no set-up cost.
        let rows = config.max_batch_rows.clamp(1, 1024) as i64;
        let x = match model.card.preprocess.domain() {
            Some((lo, hi)) => {
                Tensor::full([rows, info.dim() as i64], (lo + hi) / 2.0, (tch::Kind::Float, config.device))
            }
            None => Tensor::zeros([rows, info.dim() as i64], (tch::Kind::Float, config.device)),
        };
        let _ = model.nice.log_prob(&x).map_err(|e| EngineError::Inference(e.to_string()))?;
        Ok(Live { model, unit, expect: 1 })
    }

    fn info(&self) -> &Arc<ModelInfo> {
        &self.unit.info
    }
}

type Lives = HashMap<u64, Live>;

impl Worker {
    fn run(self) {
        let _no_grad = tch::no_grad_guard();
        let mut lives = Lives::new();
        self.set_alive(1);
        // A panic here (a batch's own are caught in `run_batch`) takes the thread's state down;
        // the thread reloads every loaded model and goes on, not ready meanwhile.
        while catch_unwind(AssertUnwindSafe(|| self.serve(&mut lives))).is_err() {
            self.set_alive(-1);
            self.metrics.inference_restarts.inc();
            tracing::error!("an inference thread panicked; reloading the loaded models");
            match self.reload() {
                Some(fresh) => lives = fresh,
                None => return, // the engine stopped meanwhile
            }
            release_freed_memory();
            self.set_alive(1);
            tracing::info!("the inference thread is serving again");
        }
        self.set_alive(-1);
    }

    /// Counts this thread in (+1) or out (−1) of the ones taking jobs.
    fn set_alive(&self, delta: isize) {
        let alive = if delta > 0 {
            self.health.alive.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.health.alive.fetch_sub(1, Ordering::SeqCst) - 1
        };
        self.metrics.inference_threads.set(alive as i64);
    }

    /// Loads every loaded model again, retrying with backoff while one fails; None once the
    /// engine has stopped.
    fn reload(&self) -> Option<Lives> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let loaded: Result<Lives, EngineError> = self
                .health
                .units()
                .into_iter()
                .map(|u| Live::load(u.clone(), &self.config).map(|l| (u.info.generation, l)))
                .collect();
            match loaded {
                Ok(lives) => return Some(lives),
                Err(e) => tracing::error!(error = %e, retry_in = ?backoff, "reloading the models failed"),
            }
            // Waits on the control channel, which closes when the engine stops.
            match self.controls.recv_timeout(backoff) {
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return None,
                Ok(Control::Load { done, .. }) => {
                    let _ = done.send(Err(EngineError::Inference("an inference thread is restarting".into())));
                }
                Ok(Control::Unload { done, .. }) => {
                    let _ = done.send(());
                }
                #[cfg(test)]
                Ok(Control::Panic) | Err(_) => {}
                #[cfg(not(test))]
                Err(_) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Takes turns over the models with queued work until the engine stops.
    fn serve(&self, lives: &mut Lives) {
        loop {
            crossbeam_channel::select! {
                recv(self.controls) -> c => match c {
                    Ok(c) => self.control(c, lives),
                    Err(_) => return,
                },
                recv(self.runnable) -> unit => match unit {
                    Ok(unit) => self.turn(&unit, lives),
                    Err(_) => return,
                },
            }
        }
    }

    /// One batch of `unit`'s queued work; the unit goes back in line if more is queued.
    fn turn(&self, unit: &Arc<Unit>, lives: &mut Lives) {
        let Some(first) = unit.take_front().or_else(|| unit.jobs.try_recv().ok()) else {
            self.release(unit);
            return;
        };
        let Some(live) = lives.get_mut(&unit.info.generation) else {
            // Unloaded meanwhile: nothing can run it.
            let _ = first.reply.send(Err(EngineError::Unloaded(unit.info.label())));
            self.release(unit);
            return;
        };
        let (batch, next) = self.gather(unit, first, live.expect);
        live.expect = batch.len();
        if let Some(next) = next {
            unit.put_front(next);
        }
        self.release(unit);
        self.metrics.queue_depth.with_label_values(&[&unit.info.card.name]).set(unit.jobs.len() as i64);
        self.run_batch(live, batch);
    }

    /// Puts `unit` back in line if it has work, else marks it idle (checking again, so a job
    /// queued meanwhile is never stranded).
    fn release(&self, unit: &Arc<Unit>) {
        if unit.has_work() {
            let _ = self.reschedule.send(unit.clone());
            return;
        }
        unit.scheduled.store(false, Ordering::SeqCst);
        if unit.has_work() && !unit.scheduled.swap(true, Ordering::SeqCst) {
            let _ = self.reschedule.send(unit.clone());
        }
    }

    fn control(&self, c: Control, lives: &mut Lives) {
        match c {
            Control::Load { unit, done } => {
                let generation = unit.info.generation;
                let result = catch_unwind(AssertUnwindSafe(|| Live::load(unit, &self.config)))
                    .unwrap_or_else(|_| Err(EngineError::Inference("loading the model panicked".into())))
                    .map(|live| {
                        lives.insert(generation, live);
                    });
                let _ = done.send(result);
            }
            Control::Unload { generation, done } => {
                if let Some(mut live) = lives.remove(&generation) {
                    // Answer what is queued before dropping the weights.
                    let unit = live.unit.clone();
                    while let Some(first) = unit.take_front().or_else(|| unit.jobs.try_recv().ok()) {
                        let (batch, next) = self.gather(&unit, first, 1);
                        if let Some(next) = next {
                            unit.put_front(next);
                        }
                        self.run_batch(&mut live, batch);
                    }
                    drop(live);
                    release_freed_memory();
                }
                let _ = done.send(());
            }
            #[cfg(test)]
            Control::Panic => panic!("an inference thread was told to panic (test)"),
        }
    }

    /// Takes `first` plus whatever queued requests of `unit` of the same kind fit the row
    /// budget, and while it holds fewer requests than the last batch merged (`expect`), waits up
    /// to `max_wait` for more. Clients that were answered together come back together: without
    /// the wait the first of that burst would run alone, at most of a full batch's cost
    /// (docs/architecture.md). A lone client (expect = 1) never waits. Returns a job of another
    /// kind, if it pulled one, for the next turn.
    fn gather(&self, unit: &Unit, first: Job, expect: usize) -> (Vec<Job>, Option<Job>) {
        let dim = unit.info.dim();
        let kind = std::mem::discriminant(&first.task);
        let mergeable = matches!(first.task, Task::LogProb { .. } | Task::Encode { .. } | Task::Decode { .. });
        let mut rows = first.task.rows(dim);
        let mut batch = vec![first];
        if !self.config.batching || !mergeable {
            return (batch, None);
        }
        let deadline = Instant::now() + self.config.max_wait;
        while rows < self.config.max_batch_rows {
            let next = match unit.jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if batch.len() < expect => match unit.jobs.recv_deadline(deadline) {
                    Ok(job) => job,
                    Err(_) => break,
                },
                Err(TryRecvError::Empty) => break,
            };
            let n = next.task.rows(dim);
            if std::mem::discriminant(&next.task) != kind || rows + n > self.config.max_batch_rows {
                return (batch, Some(next));
            }
            rows += n;
            batch.push(next);
        }
        (batch, None)
    }

    fn run_batch(&self, live: &mut Live, batch: Vec<Job>) {
        let dim = live.info().dim();
        let mut jobs = Vec::with_capacity(batch.len());
        for job in batch {
            self.metrics.queue_wait_seconds.observe(job.enqueued.elapsed().as_secs_f64());
            if job.reply.is_closed() {
                // The client is gone (disconnected, or its time limit passed): skip its rows.
                self.metrics.dropped.inc();
                continue;
            }
            jobs.push(job);
        }
        if jobs.is_empty() {
            return;
        }
        let rows: usize = jobs.iter().map(|j| j.task.rows(dim)).sum();
        let started = Instant::now();
        let outputs = catch_unwind(AssertUnwindSafe(|| compute(&live.model, &jobs, dim)))
            .unwrap_or_else(|_| Err(EngineError::Inference("libtorch panicked; the request was not processed".into())));
        let inference = started.elapsed();
        self.metrics.inference_seconds.observe(inference.as_secs_f64());
        self.metrics.batch_rows.observe(rows as f64);
        for job in &jobs {
            job.span.in_scope(|| {
                tracing::debug!(
                    queue_ms = (started - job.enqueued).as_secs_f64() * 1e3,
                    inference_ms = inference.as_secs_f64() * 1e3,
                    batch_rows = rows,
                    "inference"
                )
            });
        }
        match outputs {
            Ok(outputs) => {
                for (job, output) in jobs.into_iter().zip(outputs) {
                    let _ = job.reply.send(Ok(Scored { output, model: live.info().clone() }));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, rows, "inference failed");
                for job in jobs {
                    let _ = job.reply.send(Err(EngineError::Inference(msg.clone())));
                }
            }
        }
    }
}

/// Rows as a `[n, dim]` tensor on `device` (one copy to a GPU per batch).
fn tensor(rows: &[f32], dim: usize, device: Device) -> Result<Tensor, EngineError> {
    let t = Tensor::f_from_slice(rows).and_then(|t| t.f_view([(rows.len() / dim) as i64, dim as i64]));
    // A no-op on the CPU.
    Ok(t.map_err(|e| EngineError::Inference(e.to_string()))?.to_device(device))
}

fn to_vec<T: tch::kind::Element>(t: &Tensor) -> Result<Vec<T>, EngineError>
where
    Vec<T>: TryFrom<Tensor, Error = tch::TchError>,
{
    Vec::<T>::try_from(t.flatten(0, -1).to_device(Device::Cpu)).map_err(|e| EngineError::Inference(e.to_string()))
}

/// One forward pass over the concatenated rows of `jobs` (all of one kind), split back per job.
fn compute(model: &Model, jobs: &[Job], dim: usize) -> Result<Vec<Output>, EngineError> {
    let flow_err = |e: crate::flow::FlowError| EngineError::Inference(e.to_string());
    let device = model.vs.device();
    let concat = |pick: &dyn Fn(&Task) -> &[f32]| -> Result<Tensor, EngineError> {
        if jobs.len() == 1 {
            return tensor(pick(&jobs[0].task), dim, device);
        }
        let all: Vec<f32> = jobs.iter().flat_map(|j| pick(&j.task).iter().copied()).collect();
        tensor(&all, dim, device)
    };
    let counts: Vec<usize> = jobs.iter().map(|j| j.task.rows(dim)).collect();
    match &jobs[0].task {
        Task::LogProb { .. } => {
            let x = concat(&|t| match t {
                Task::LogProb { rows } => rows,
                _ => &[],
            })?;
            let mut lp: Vec<f64> = to_vec(&model.nice.log_prob(&x).map_err(flow_err)?)?;
            rescore_in_f64(model, &x, &mut lp)?;
            Ok(split(lp, &counts, 1).into_iter().map(Output::LogProb).collect())
        }
        Task::Encode { .. } => {
            let x = concat(&|t| match t {
                Task::Encode { rows } => rows,
                _ => &[],
            })?;
            let (z, log_det) = model.nice.encode(&x).map_err(flow_err)?;
            let prior = model.nice.spec().prior.log_density(&z).sum_dim_intlist(1, false, tch::Kind::Double);
            let lp: Vec<f64> = to_vec(&(prior + log_det))?;
            let z: Vec<f32> = to_vec(&z)?;
            Ok(split(z, &counts, dim)
                .into_iter()
                .zip(split(lp, &counts, 1))
                .map(|(latents, log_prob)| Output::Encode { latents, log_prob })
                .collect())
        }
        Task::Decode { .. } => {
            let z = concat(&|t| match t {
                Task::Decode { latents } => latents,
                _ => &[],
            })?;
            let x: Vec<f32> = to_vec(&model.nice.decode(&z).map_err(flow_err)?)?;
            Ok(split(x, &counts, dim).into_iter().map(Output::Rows).collect())
        }
        Task::Sample { n, seed, temperature } => {
            let x = model.nice.sample(*n, *seed, *temperature).map_err(flow_err)?;
            Ok(vec![Output::Rows(to_vec(&x)?)])
        }
        Task::Inpaint { rows, missing, options } => {
            let (x, m) = (tensor(rows, dim, device)?, tensor(missing, dim, device)?);
            let out = model.nice.inpaint(&x, &m, options).map_err(flow_err)?;
            Ok(vec![Output::Rows(to_vec(&out)?)])
        }
        Task::Explain { rows } => {
            let grid = crate::explain::grid(model).map_err(flow_err)?;
            let e = crate::explain::explain(model, &tensor(rows, dim, device)?, &grid).map_err(flow_err)?;
            Ok(vec![Output::Explain { attributions: e.attributions, log_prob: e.log_prob }])
        }
    }
}

/// Hands the heap's free pages back to the system after the old model's weights were dropped,
/// so that swaps under load leave RSS flat (docs/architecture.md).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only releases free memory; it is thread-safe.
        unsafe { malloc_trim(0) };
    }
}

/// Rows whose float32 log-density overflowed (inputs far outside the training data) are scored
/// again in float64, on a float64 copy of the model made for the purpose: every finite input gets
/// its finite log-density, not an error.
fn rescore_in_f64(model: &Model, x: &Tensor, lp: &mut [f64]) -> Result<(), EngineError> {
    let bad: Vec<i64> = lp.iter().enumerate().filter(|(_, v)| !v.is_finite()).map(|(i, _)| i as i64).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let wide = model.to_double().map_err(|e| EngineError::Inference(e.to_string()))?;
    let rows = x.index_select(0, &Tensor::from_slice(&bad).to_device(x.device())).to_kind(tch::Kind::Double);
    let again: Vec<f64> = to_vec(&wide.nice.log_prob(&rows).map_err(|e| EngineError::Inference(e.to_string()))?)?;
    for (i, v) in bad.into_iter().zip(again) {
        lp[i as usize] = v;
    }
    Ok(())
}

fn split<T>(mut all: Vec<T>, counts: &[usize], width: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(counts.len());
    for c in counts.iter().rev() {
        let tail = all.split_off(all.len() - c * width);
        out.push(tail);
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(rows: usize, dim: usize) -> Job {
        let (reply, _) = tokio::sync::oneshot::channel();
        Job {
            task: Task::LogProb { rows: vec![0.0; rows * dim] },
            enqueued: Instant::now(),
            reply,
            span: tracing::Span::none(),
        }
    }

    /// A worker and a unit of D = 2 whose queue `tx` feeds; `gather` reads that queue.
    fn worker(max_wait: Duration, max_batch_rows: usize) -> (Worker, Arc<Unit>, Sender<Job>) {
        let (_, runnable) = crossbeam_channel::unbounded();
        let (reschedule, _) = crossbeam_channel::unbounded();
        let (_, controls) = crossbeam_channel::unbounded();
        let config = Arc::new(EngineConfig { max_wait, max_batch_rows, ..EngineConfig::default() });
        let arch = crate::flow::Architecture { dim: 2, couplings: 1, hidden_layers: 1, hidden_units: 2 };
        let input = crate::store::InputSpec { shape: vec![2], eight_bit: false };
        let card = crate::store::ModelCard::new(
            "t",
            arch,
            crate::flow::Prior::Logistic,
            crate::flow::Preprocess::Identity,
            input,
        );
        let info = Arc::new(ModelInfo {
            card,
            dir: "unused".into(),
            generation: 0,
            memory_bytes: 0,
            device: "cpu".into(),
            log_scales: Vec::new(),
        });
        let (queue, jobs) = crossbeam_channel::unbounded();
        let unit = Arc::new(Unit {
            info,
            queue: queue.clone(),
            jobs,
            front: Default::default(),
            scheduled: Default::default(),
        });
        let health = Arc::new(Health { alive: Default::default(), units: Default::default() });
        (Worker { config, metrics: Metrics::new(), runnable, reschedule, controls, health }, unit, queue)
    }

    /// Sends `n` one-row jobs after `delay`, from another thread.
    fn send_later(tx: &Sender<Job>, n: usize, delay: Duration) -> std::thread::JoinHandle<()> {
        let tx = tx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            for _ in 0..n {
                tx.send(job(1, 2)).unwrap();
            }
        })
    }

    #[test]
    fn a_lone_client_does_not_wait() {
        let (w, unit, tx) = worker(Duration::from_secs(10), 1024);
        let later = send_later(&tx, 3, Duration::from_millis(200));
        let (batch, next) = w.gather(&unit, job(1, 2), 1);
        // Had it waited (up to 10 s), the jobs sent 200 ms later would have joined.
        assert_eq!(batch.len(), 1);
        assert!(next.is_none());
        later.join().unwrap();
    }

    #[test]
    fn waits_for_as_many_requests_as_the_last_batch_merged() {
        let (w, unit, tx) = worker(Duration::from_secs(10), 1024);
        let later = send_later(&tx, 3, Duration::from_millis(100));
        let (batch, _) = w.gather(&unit, job(1, 2), 4);
        assert_eq!(batch.len(), 4, "the three late requests joined the first");
        later.join().unwrap();
    }

    #[test]
    fn takes_what_is_queued_without_waiting_past_the_expected_count() {
        let (w, unit, tx) = worker(Duration::from_secs(10), 1024);
        for _ in 0..5 {
            tx.send(job(1, 2)).unwrap();
        }
        let later = send_later(&tx, 3, Duration::from_millis(200));
        let (batch, _) = w.gather(&unit, job(1, 2), 3);
        // Had it waited for more than it expected, the jobs sent 200 ms later would have joined.
        assert_eq!(batch.len(), 6, "everything already queued is merged, nothing more");
        later.join().unwrap();
    }

    #[test]
    fn gives_up_waiting_after_max_wait() {
        let (w, unit, _tx) = worker(Duration::from_millis(50), 1024);
        let started = Instant::now();
        let (batch, _) = w.gather(&unit, job(1, 2), 32);
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn respects_the_row_budget_and_hands_back_the_job_that_did_not_fit() {
        let (w, unit, tx) = worker(Duration::from_secs(10), 10);
        for rows in [4, 4, 4] {
            tx.send(job(rows, 2)).unwrap();
        }
        let (batch, next) = w.gather(&unit, job(1, 2), 8);
        assert_eq!(batch.iter().map(|j| j.task.rows(2)).collect::<Vec<_>>(), vec![1, 4, 4]);
        assert_eq!(next.map(|j| j.task.rows(2)), Some(4));
    }
}
