//! Model versions on disk: `<root>/<name>/<version>/` (each a model folder), plus
//! `<root>/<name>/live.json` naming each name's live version, so the choice survives a restart,
//! and `<root>/default.json` naming the model that the unprefixed routes serve. A `<root>/live.json`
//! from before many models (one live model for the whole server) is migrated on open.
use super::{ModelCard, StoreError, CARD_FILE};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const LIVE_FILE: &str = "live.json";
pub const DEFAULT_FILE: &str = "default.json";

#[derive(Serialize, Deserialize)]
struct LivePointer {
    version: String,
}

#[derive(Serialize, Deserialize)]
struct DefaultPointer {
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.name, self.version)
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// A name or version must be a plain path segment: letters, digits, `.`, `_`, `-`, not
/// starting with `.` (so `..` and hidden temporary folders are never models).
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Registry {
    pub fn new(root: impl Into<PathBuf>) -> Registry {
        Registry { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &ModelId) -> Result<PathBuf, StoreError> {
        if !valid_segment(&id.name) || !valid_segment(&id.version) {
            return Err(StoreError::Card {
                path: self.root.clone(),
                message: format!("invalid model name or version `{id}`: use letters, digits, '.', '_', '-'"),
            });
        }
        Ok(self.root.join(&id.name).join(&id.version))
    }

    /// Every model folder with a readable card, sorted by name then numeric version.
    pub fn list(&self) -> Vec<(ModelId, ModelCard)> {
        let mut out = Vec::new();
        for name in read_dir_names(&self.root) {
            for version in read_dir_names(&self.root.join(&name)) {
                let path = self.root.join(&name).join(&version).join(CARD_FILE);
                let Ok(text) = std::fs::read_to_string(&path) else { continue };
                if let Ok(card) = ModelCard::from_json(&text, &path) {
                    out.push((ModelId { name: name.clone(), version }, card));
                }
            }
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name).then(version_key(&a.0.version).cmp(&version_key(&b.0.version))));
        out
    }

    /// The next free numeric version of `name` ("1" for a new name).
    pub fn next_version(&self, name: &str) -> String {
        let max = read_dir_names(&self.root.join(name)).iter().filter_map(|v| v.parse::<u64>().ok()).max();
        (max.unwrap_or(0) + 1).to_string()
    }

    /// The latest version of `name`.
    pub fn latest(&self, name: &str) -> Option<ModelId> {
        self.list().into_iter().rev().find(|(id, _)| id.name == name).map(|(id, _)| id)
    }

    /// Every model name (a folder under the root), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = read_dir_names(&self.root);
        names.sort();
        names
    }

    /// The version folders of `name`, sorted numerically, each with its card or why it is
    /// unreadable.
    pub fn versions(&self, name: &str) -> Vec<(String, Result<ModelCard, String>)> {
        let mut versions = read_dir_names(&self.root.join(name));
        versions.sort_by_key(|v| version_key(v));
        versions
            .into_iter()
            .map(|v| {
                let path = self.root.join(name).join(&v).join(CARD_FILE);
                let card = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{CARD_FILE}: {e}"))
                    .and_then(|text| ModelCard::from_json(&text, &path).map_err(|e| e.to_string()));
                (v, card)
            })
            .collect()
    }

    /// The live version of `name`, as recorded.
    pub fn live_version(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join(name).join(LIVE_FILE)).ok()?;
        serde_json::from_str::<LivePointer>(&text).ok().map(|p| p.version)
    }

    /// Records `id` as its name's live version, atomically (write beside, then rename).
    pub fn set_live(&self, id: &ModelId) -> Result<(), StoreError> {
        self.dir(id)?;
        let text = serde_json::to_string_pretty(&LivePointer { version: id.version.clone() }).unwrap_or_default();
        write_atomic(&self.root.join(&id.name).join(LIVE_FILE), &text)
    }

    /// The model the unprefixed routes serve, as recorded.
    pub fn default_name(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join(DEFAULT_FILE)).ok()?;
        serde_json::from_str::<DefaultPointer>(&text).ok().map(|p| p.name)
    }

    pub fn set_default_name(&self, name: &str) -> Result<(), StoreError> {
        let text = serde_json::to_string_pretty(&DefaultPointer { name: name.into() }).unwrap_or_default();
        write_atomic(&self.root.join(DEFAULT_FILE), &text)
    }

    /// Turns a single-model `<root>/live.json` ({name, version}) into that name's live pointer
    /// and the default name; the old file is removed once both are written.
    pub fn migrate_single_live(&self) -> Result<Option<ModelId>, StoreError> {
        let old = self.root.join(LIVE_FILE);
        let Ok(text) = std::fs::read_to_string(&old) else { return Ok(None) };
        let Ok(id) = serde_json::from_str::<ModelId>(&text) else {
            tracing::warn!(path = %old.display(), "ignoring an unreadable live.json from before many models");
            return Ok(None);
        };
        if valid_segment(&id.name) && valid_segment(&id.version) {
            if self.live_version(&id.name).is_none() {
                self.set_live(&id)?;
            }
            if self.default_name().is_none() {
                self.set_default_name(&id.name)?;
            }
        }
        std::fs::remove_file(&old).map_err(|source| StoreError::Io { path: old.clone(), source })?;
        tracing::info!(model = %id, "migrated live.json to a per-name live pointer and default.json");
        Ok(Some(id))
    }

    /// Removes leftovers of interrupted atomic saves (`.<name>.tmp-*`, `.<name>.old-*`).
    pub fn clean_temporaries(&self) {
        for dir in
            std::iter::once(self.root.clone()).chain(read_dir_names(&self.root).into_iter().map(|n| self.root.join(n)))
        {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
                    tracing::warn!(path = %e.path().display(), "removing a half-written folder left by an interrupted save");
                    let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), StoreError> {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file}.tmp-{}", std::process::id()));
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| valid_segment(n))
        .collect()
}

fn version_key(v: &str) -> (u64, String) {
    (v.parse().unwrap_or(u64::MAX), v.to_string())
}
