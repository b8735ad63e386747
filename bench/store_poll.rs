//! What one replica's poll of the model store costs (docs/scaling.md): the reads a scorer makes
//! each `--store-poll-ms` with nothing new, against a local folder and against an S3-compatible
//! server (moto, from scripts/setup-s3-server.sh), for 1, 10 and 100 model names. Prints the
//! median time per poll and the requests per poll.
//!
//!   cargo bench --bench store_poll [-- --s3-endpoint http://127.0.0.1:9000]
use flowscore::store::remote::RemoteStore;
use flowscore::store::{ModelId, Registry};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A store of `names` names, each with one tiny version and a live pointer.
fn store(root: &std::path::Path, names: usize) -> Registry {
    let registry = Registry::new(root);
    let arch = flowscore::flow::Architecture { dim: 2, couplings: 1, hidden_layers: 1, hidden_units: 2 };
    for i in 0..names {
        let name = format!("m{i}");
        let card = flowscore::store::ModelCard::new(
            &name,
            arch.clone(),
            flowscore::flow::Prior::Logistic,
            flowscore::flow::Preprocess::Identity,
            flowscore::store::InputSpec { shape: vec![2], eight_bit: false },
        );
        let mut model = flowscore::store::Model::new(card, tch::Device::Cpu).expect("model");
        flowscore::store::save(&mut model, &root.join(&name).join("1"), false).expect("save");
        registry.set_live(&ModelId { name, version: "1".into() }).expect("pointer");
    }
    registry
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args.iter().position(|a| a == "--s3-endpoint").and_then(|i| args.get(i + 1)).cloned();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("| names | local folder, per poll | S3 (moto, loopback), per poll | S3 requests per poll |");
    println!("|---:|---:|---:|---:|");
    for names in [1usize, 10, 100] {
        let tmp = tempfile::tempdir().expect("tmp");
        let registry = store(&tmp.path().join("models"), names);
        // A scorer's local poll: list the names, read each live pointer and the default.
        let local: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                let all = registry.names();
                let live: Vec<_> = all.iter().map(|n| registry.live_version(n)).collect();
                std::hint::black_box((live, registry.default_name()));
                t.elapsed().as_secs_f64()
            })
            .collect();
        let s3 = endpoint.as_ref().map(|e| {
            std::env::set_var("AWS_ENDPOINT", e);
            std::env::set_var("AWS_ALLOW_HTTP", "true");
            std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
            std::env::set_var("AWS_REGION", "us-east-1");
            let remote = RemoteStore::open(&format!("s3://models/poll-{names}")).expect("store");
            rt.block_on(remote.push(&registry)).expect("push");
            let mirror = Registry::new(tmp.path().join("mirror"));
            rt.block_on(remote.pull(&mirror, false)).expect("first pull");
            let times: Vec<f64> = (0..20)
                .map(|_| {
                    let t = Instant::now();
                    rt.block_on(remote.pull(&mirror, false)).expect("pull");
                    t.elapsed().as_secs_f64()
                })
                .collect();
            median(times)
        });
        let s3_cell = s3.map(|s| format!("{:.1} ms", s * 1e3)).unwrap_or_else(|| "not run".into());
        // pull: one LIST of the names, one GET of each live pointer, one GET of default.json.
        println!("| {names} | {:.0} µs | {s3_cell} | {} |", median(local) * 1e6, names + 2);
    }
}
