//! The model folder: `card.json` (the model card) + `model.safetensors` (the weights).
//! Saved atomically (written beside, then renamed); loading validates everything a corrupt,
//! truncated or mismatched folder could get wrong and says what is wrong.
mod card;
pub mod registry;
pub mod remote;

pub use card::{now_rfc3339, EpochRecord, InputSpec, ModelCard, TrainingSummary, WeightsRef, FORMAT_VERSION};
pub use registry::{ModelId, Registry};

use crate::flow::{FlowError, FlowSpec, Nice};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

pub const CARD_FILE: &str = "card.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid model card: {message}")]
    Card { path: PathBuf, message: String },
    #[error("{path}: format_version {found} is not supported (this flowscore reads {FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: weights file is corrupt or truncated: sha256 {found} does not match the card's {expected}")]
    Hash { path: PathBuf, expected: String, found: String },
    #[error("{path}: unreadable weights: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` {problem}")]
    Tensor { path: PathBuf, name: String, problem: String },
    #[error("{path}: {source}")]
    Spec { path: PathBuf, source: FlowError },
    #[error("{0} already exists")]
    Exists(PathBuf),
}

/// A NICE model with its variables and card. Owned by exactly one thread (tensors are !Sync).
pub struct Model {
    pub vs: nn::VarStore,
    pub nice: Nice,
    pub card: ModelCard,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("card", &self.card.name).finish()
    }
}

impl Model {
    /// A fresh, randomly initialised model for `card` (used by training and benchmarks).
    pub fn new(card: ModelCard, device: Device) -> Result<Model, FlowError> {
        let vs = nn::VarStore::new(device);
        let nice = Nice::new(&vs.root(), card.flow_spec())?;
        Ok(Model { vs, nice, card })
    }

    /// Variables by their safetensors names, sorted.
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// A float64 copy (for rows whose float32 arithmetic overflows).
    pub fn to_double(&self) -> Result<Model, FlowError> {
        let mut wide = Model::new(self.card.clone(), self.vs.device())?;
        wide.vs.double();
        let _guard = tch::no_grad_guard();
        let mine = self.named_tensors();
        for (name, mut var) in wide.named_tensors() {
            if let Some(w) = mine.get(&name) {
                var.copy_(w);
            }
        }
        Ok(wide)
    }
}

/// Loads and validates a model folder.
pub fn load(dir: &Path, device: Device) -> Result<Model, StoreError> {
    let card_path = dir.join(CARD_FILE);
    let text =
        std::fs::read_to_string(&card_path).map_err(|source| StoreError::Io { path: card_path.clone(), source })?;
    let card = ModelCard::from_json(&text, &card_path)?;
    let weights_path = dir.join(&card.weights.file);
    if card.weights.file.contains('/') || card.weights.file.contains("..") {
        return Err(StoreError::Card { path: card_path, message: "weights.file must be a plain file name".into() });
    }
    let bytes = std::fs::read(&weights_path).map_err(|source| StoreError::Io { path: weights_path.clone(), source })?;
    let found = sha256_hex(&bytes);
    if !found.eq_ignore_ascii_case(&card.weights.sha256) {
        return Err(StoreError::Hash { path: weights_path, expected: card.weights.sha256.clone(), found });
    }
    let stored = Tensor::read_safetensors(&weights_path)
        .map_err(|e| StoreError::Weights { path: weights_path.clone(), message: e.to_string() })?;
    let mut stored: BTreeMap<String, Tensor> = stored.into_iter().collect();

    let model = Model::new(card, device).map_err(|source| StoreError::Spec { path: card_path.clone(), source })?;
    let tensor_err = |name: &str, problem: String| StoreError::Tensor {
        path: weights_path.clone(),
        name: name.to_string(),
        problem,
    };
    {
        let _guard = tch::no_grad_guard();
        for (name, mut var) in model.vs.variables() {
            let src = stored.remove(&name).ok_or_else(|| tensor_err(&name, "is missing".into()))?;
            if src.size() != var.size() {
                return Err(tensor_err(
                    &name,
                    format!("has shape {:?}, the card's architecture needs {:?}", src.size(), var.size()),
                ));
            }
            if src.kind() != Kind::Float {
                return Err(tensor_err(&name, format!("has dtype {:?}, expected float32", src.kind())));
            }
            let finite = src.isfinite().all().int64_value(&[]) == 1;
            if !finite {
                return Err(tensor_err(&name, "contains NaN or infinite values".into()));
            }
            var.copy_(&src);
        }
    }
    if let Some(extra) = stored.keys().next() {
        return Err(tensor_err(extra, "is not part of this architecture".into()));
    }
    Ok(model)
}

/// Saves `model` into `dir` atomically: everything is written to a sibling temporary folder
/// which is then renamed into place, so a reader sees the old folder or the new one, never a
/// half-written one. Fills in the card's weights hash. Refuses to overwrite unless `replace`.
pub fn save(model: &mut Model, dir: &Path, replace: bool) -> Result<(), StoreError> {
    save_with(model, dir, replace, |_| Ok(()))
}

/// `save`, with `extra` writing more files into the folder before it appears (training
/// checkpoints keep their optimiser state beside the model this way, in the same atomic step).
pub fn save_with(
    model: &mut Model,
    dir: &Path,
    replace: bool,
    extra: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    if dir.exists() && !replace {
        return Err(StoreError::Exists(dir.to_path_buf()));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{base}.tmp-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = write_folder(model, &tmp).and_then(|()| extra(&tmp)).and_then(|()| {
        if dir.exists() {
            let old = parent.join(format!(".{base}.old-{}-{}", std::process::id(), unique()));
            std::fs::rename(dir, &old).map_err(io(dir))?;
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
            std::fs::remove_dir_all(&old).map_err(io(&old))
        } else {
            std::fs::rename(&tmp, dir).map_err(io(dir))
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    sync_dir(parent);
    result
}

fn write_folder(model: &mut Model, tmp: &Path) -> Result<(), StoreError> {
    let weights = tmp.join(WEIGHTS_FILE);
    let named: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.to_device(Device::Cpu).to_kind(Kind::Float).contiguous()))
        .collect();
    Tensor::write_safetensors(&named, &weights)
        .map_err(|e| StoreError::Weights { path: weights.clone(), message: e.to_string() })?;
    let bytes = std::fs::read(&weights).map_err(|source| StoreError::Io { path: weights.clone(), source })?;
    model.card.weights = WeightsRef { file: WEIGHTS_FILE.into(), sha256: sha256_hex(&bytes) };
    fsync(&weights)?;
    let card_path = tmp.join(CARD_FILE);
    let text = serde_json::to_string_pretty(&model.card)
        .map_err(|e| StoreError::Card { path: card_path.clone(), message: e.to_string() })?;
    let mut f =
        std::fs::File::create(&card_path).map_err(|source| StoreError::Io { path: card_path.clone(), source })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|source| StoreError::Io { path: card_path, source })
}

fn fsync(path: &Path) -> Result<(), StoreError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| StoreError::Io { path: path.to_path_buf(), source })
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ModelCard {
    pub fn flow_spec(&self) -> FlowSpec {
        FlowSpec { architecture: self.architecture.clone(), prior: self.prior, preprocess: self.preprocess.clone() }
    }
}
