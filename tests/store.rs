//! Model folders: bit-identical round trips, and every kind of corrupt folder refused with a
//! message that says what is wrong.
mod common;

use common::*;
use flowscore::flow::{Preprocess, Prior};
use flowscore::store::{self, StoreError};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

fn saved_model(dir: &Path) -> Tensor {
    saved_model_and_weights(dir).0
}

/// Saves a random model into `dir`; returns its log_prob on fixed rows and its named weights.
fn saved_model_and_weights(dir: &Path) -> (Tensor, BTreeMap<String, Tensor>) {
    let mut model = random_model(6, Prior::Logistic, standardize(6, 1), 1);
    store::save(&mut model, dir, false).expect("save");
    let _g = tch::no_grad_guard();
    let weights = model.named_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect();
    (model.nice.log_prob(&random_rows(50, 6, -5.0, 5.0, 2)).unwrap(), weights)
}

fn load_err(dir: &Path) -> String {
    match store::load(dir, Device::Cpu) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the weights with `edit` applied and a matching hash, so that only the tensor check
/// can catch the problem.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join(store::WEIGHTS_FILE);
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let sha = store::sha256_hex(&std::fs::read(&path).unwrap());
    edit_card(dir, |c| c["weights"]["sha256"] = sha.into());
}

fn edit_card(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(store::CARD_FILE);
    let mut card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut card);
    std::fs::write(&path, serde_json::to_string(&card).unwrap()).unwrap();
}

#[test]
fn round_trip_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let (before, weights) = saved_model_and_weights(&dir);
    let loaded = store::load(&dir, Device::Cpu).unwrap();
    // Every weight comes back bit for bit, under its own name.
    let back = loaded.named_tensors();
    assert_eq!(back.keys().collect::<Vec<_>>(), weights.keys().collect::<Vec<_>>());
    for (name, a) in &weights {
        assert!(a.equal(&back[name]), "{name} changed across save/load");
    }
    // The same function: libtorch's GEMM may block a product differently from one call to the
    // next (MKL's results depend on alignment and threads), so log_prob is compared to float32
    // rounding, not bit for bit; the weights above are.
    let _g = tch::no_grad_guard();
    let after = loaded.nice.log_prob(&random_rows(50, 6, -5.0, 5.0, 2)).unwrap();
    assert!(before.allclose(&after, 1e-6, 1e-5, false), "log_prob changed across save/load");
    assert_eq!(loaded.card.preprocess, standardize(6, 1), "preprocessing parameters must round-trip exactly");
    // No temporary folders are left beside it.
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m")]);
}

#[test]
fn save_refuses_to_overwrite_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let _ = saved_model(&dir);
    let mut other = random_model(6, Prior::Gaussian, Preprocess::Identity, 9);
    assert!(matches!(store::save(&mut other, &dir, false), Err(StoreError::Exists(_))));
    store::save(&mut other, &dir, true).unwrap();
    assert_eq!(store::load(&dir, Device::Cpu).unwrap().card.prior, Prior::Gaussian);
}

type Corruption = (&'static str, fn(&Path), &'static str);

#[test]
fn corrupt_folders_are_refused_with_a_reason() {
    let cases: Vec<Corruption> = vec![
        ("missing card", |d| std::fs::remove_file(d.join("card.json")).unwrap(), "card.json"),
        ("card not JSON", |d| std::fs::write(d.join("card.json"), "{not json").unwrap(), "not a valid model card"),
        ("future format", |d| edit_card(d, |c| c["format_version"] = 99.into()), "format_version 99"),
        ("unknown prior", |d| edit_card(d, |c| c["prior"] = "cauchy".into()), "cauchy"),
        ("missing weights", |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(), "model.safetensors"),
        (
            "truncated weights",
            |d| {
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            },
            "corrupt or truncated",
        ),
        (
            "flipped byte",
            |d| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                let n = b.len() - 3;
                b[n] ^= 0xff;
                std::fs::write(&p, &b).unwrap();
            },
            "corrupt or truncated",
        ),
        ("architecture mismatch", |d| edit_card(d, |c| c["architecture"]["hidden_units"] = 17.into()), "shape"),
        ("dim vs input shape", |d| edit_card(d, |c| c["input"]["shape"] = serde_json::json!([7])), "input.shape"),
        ("bad standardize std", |d| edit_card(d, |c| c["preprocess"]["std"][0] = (-1.0).into()), "std[0]"),
        ("missing tensor", |d| rewrite_weights(d, |t| t.retain(|(n, _)| n != "scale")), "`scale` is missing"),
        (
            "extra tensor",
            |d| rewrite_weights(d, |t| t.push(("extra".into(), Tensor::zeros([3], (tch::Kind::Float, Device::Cpu))))),
            "`extra` is not part",
        ),
        (
            "wrong shape",
            |d| {
                rewrite_weights(d, |t| {
                    for (n, v) in t.iter_mut() {
                        if n == "scale" {
                            *v = Tensor::zeros([1], (tch::Kind::Float, Device::Cpu));
                        }
                    }
                })
            },
            "`scale` has shape [1]",
        ),
        (
            "NaN weights",
            |d| {
                rewrite_weights(d, |t| {
                    for (n, v) in t.iter_mut() {
                        if n == "scale" {
                            *v = Tensor::full([6], f64::NAN, (tch::Kind::Float, Device::Cpu));
                        }
                    }
                })
            },
            "NaN",
        ),
        (
            "float64 weights",
            |d| {
                rewrite_weights(d, |t| {
                    for (n, v) in t.iter_mut() {
                        if n == "scale" {
                            *v = v.to_kind(tch::Kind::Double);
                        }
                    }
                })
            },
            "dtype",
        ),
    ];
    for (what, corrupt, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        let _ = saved_model(&dir);
        corrupt(&dir);
        let msg = load_err(&dir);
        assert!(msg.contains(expected), "{what}: error {msg:?} should mention {expected:?}");
    }
}
