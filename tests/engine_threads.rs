//! Starting and swapping a model leave OpenMP thread teams on the inference threads alone.
//! libtorch's first parallel op on a thread starts a team that lives as long as that thread;
//! once a process holds more OpenMP threads than cores, libgomp stops spinning at barriers in
//! every team, and each GEMM of a batch then sleeps and wakes (measured: 27% slower batches).
//! An OpenMP pool thread takes the name of the thread that started its team, which is what
//! these checks count. Own test binary: other tests' libtorch work would add teams of its own.
mod common;

use common::randomize;
use flowscore::engine::{Engine, EngineConfig};
use flowscore::flow::{Architecture, Preprocess, Prior};
use flowscore::metrics::Metrics;
use flowscore::store::{InputSpec, Model, ModelCard};
use std::collections::BTreeMap;
use std::path::Path;

/// Thread id → name, for every thread of this process.
fn threads() -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("procfs") {
        let entry = entry.expect("task entry");
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u64>() else { continue };
        if let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) {
            out.insert(tid, name.trim().to_string());
        }
    }
    out
}

/// Large enough for libtorch to run the loader's copies and checks in parallel.
fn write_model(dir: &Path) {
    let arch = Architecture { dim: 784, couplings: 2, hidden_layers: 2, hidden_units: 1000 };
    let card = ModelCard::new(
        "threads",
        arch,
        Prior::Logistic,
        Preprocess::Identity,
        InputSpec { shape: vec![784], eight_bit: false },
    );
    let mut model = Model::new(card, tch::Device::Cpu).expect("model");
    randomize(&model, 1, 0.05);
    flowscore::store::save(&mut model, dir, false).expect("save");
}

#[test]
fn start_and_swap_leave_no_openmp_team_outside_the_inference_threads() {
    // Two intra-op threads, so that libtorch starts OpenMP teams even on a one-core machine.
    tch::set_num_threads(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    // The fixture's own libtorch work runs on a thread that ends, taking its team with it.
    std::thread::scope(|s| s.spawn(|| write_model(&dir)).join().expect("fixture thread"));

    let before = threads();
    // Loads validate the folder from a blocking thread of the async runtime (at most one here).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("test-blocking")
        .max_blocking_threads(1)
        .build()
        .expect("runtime");
    let engine = Engine::start(EngineConfig::default(), Metrics::new()).expect("engine starts");
    let first = runtime.block_on(engine.load(&dir, None)).expect("load succeeds");
    let started: Vec<String> = threads().into_iter().filter(|(t, _)| !before.contains_key(t)).map(|(_, n)| n).collect();
    assert!(started.iter().any(|n| n == "flowscore-infer"), "no inference thread appeared: {started:?}");
    assert!(
        started.iter().all(|n| n == "flowscore-infer" || n == "test-blocking"),
        "starting the engine left threads other than the inference threads and their pool: {started:?}"
    );

    // A second version loaded beside the first, then the first unloaded: a swap.
    let second = runtime.block_on(engine.load(&dir, None)).expect("second load succeeds");
    runtime.block_on(engine.unload(&first));
    assert_eq!(second.info().generation, 2);
    let blocking = threads().into_values().filter(|n| n == "test-blocking").count();
    assert_eq!(blocking, 1, "a load left an OpenMP team on the runtime's blocking thread");
}
