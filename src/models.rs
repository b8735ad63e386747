//! The models a server serves: for each name its live version and any other versions loaded on
//! request, their states (loading, failed and why), the default name for the unprefixed routes,
//! the memory budget, and the live pointers on disk. The engine runs what is loaded; this module
//! decides what is loaded and routes names to it.
use crate::engine::{memory_estimate, Engine, EngineConfig, EngineError, ModelHandle};
use crate::metrics::Metrics;
use crate::store::{registry::valid_segment, ModelCard, ModelId, Registry, CARD_FILE};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. unloading the live version).
    #[error("{0}")]
    Conflict(String),
    #[error("model {model} cannot be loaded: {reason}")]
    Invalid { model: String, reason: String },
    #[error(
        "loading {model} needs about {needed_mb:.1} MB; {used_mb:.1} MB of the {budget_mb:.1} MB model memory \
         budget are in use (unload a model or raise --memory-budget-mb)"
    )]
    MemoryBudget { model: String, needed_mb: f64, used_mb: f64, budget_mb: f64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// How a server chooses what to serve at start.
#[derive(Debug, Clone, Default)]
pub struct ModelsConfig {
    /// `name`, `name/version` or a model folder path; empty: every name in the models folder.
    pub selection: Vec<String>,
    /// The name the unprefixed routes serve (default: the first `selection` entry, else the
    /// recorded default, else the first name).
    pub default: Option<String>,
    /// Estimated bytes all loaded models may hold (None: no limit).
    pub memory_budget: Option<u64>,
    /// A scorer replica: never write the store (live pointers); `follow_store` picks up what
    /// the trainer writes.
    pub follower: bool,
}

/// A version's state, as `GET /models` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum VersionState {
    Loaded,
    Loading,
    /// On disk, not loaded (load it through the admin routes).
    Available,
    Unavailable {
        reason: String,
    },
}

#[derive(Default)]
struct NameEntry {
    live: Option<ModelHandle>,
    /// Versions loaded on request besides the live one: they stay when the live one changes.
    pinned: BTreeMap<String, ModelHandle>,
    loading: BTreeSet<String>,
    failed: BTreeMap<String, String>,
}

impl NameEntry {
    fn is_empty(&self) -> bool {
        self.live.is_none() && self.pinned.is_empty() && self.loading.is_empty() && self.failed.is_empty()
    }

    fn get(&self, version: &str) -> Option<&ModelHandle> {
        self.live.as_ref().filter(|h| h.info().card.version == version).or_else(|| self.pinned.get(version))
    }
}

#[derive(Default)]
struct Table {
    names: BTreeMap<String, NameEntry>,
    default: Option<String>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Models(Arc<Inner>);

struct Inner {
    engine: Engine,
    registry: Registry,
    metrics: Metrics,
    memory_budget: Option<u64>,
    /// Never writes the store (see `ModelsConfig::follower`).
    follower: bool,
    /// Serves every name in the store, new ones included (no selection was given).
    every_name: bool,
    table: RwLock<Table>,
    /// Loads, unloads and swaps run one at a time, so the budget and the table stay consistent.
    changes: tokio::sync::Mutex<()>,
}

/// What `name/version` or a folder path means.
enum Source {
    Folder(PathBuf),
    Id(ModelId),
}

impl Models {
    /// Migrates an old single `live.json`, then loads what `config` selects: each name's live
    /// version (its recorded pointer, else its latest readable version). A name that fails to
    /// load is reported (log, `GET /models`) and skipped.
    pub async fn start(engine: Engine, registry: Registry, metrics: Metrics, config: ModelsConfig) -> Models {
        if !config.follower {
            if let Err(e) = registry.migrate_single_live() {
                tracing::error!(error = %e, "migrating live.json failed");
            }
        }
        let models = Models::empty(engine, registry, metrics, &config);
        let selection = if config.selection.is_empty() { models.0.registry.names() } else { config.selection.clone() };
        let mut first = None;
        for wanted in &selection {
            let result = match models.source(wanted) {
                Ok(Source::Folder(dir)) => models.load_folder(&dir).await,
                Ok(Source::Id(id)) => models.load(&id.name, Some(&id.version), true).await,
                Err(ModelsError::NotFound(_)) if valid_segment(wanted) => models.load(wanted, None, true).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(handle) => {
                    first.get_or_insert_with(|| handle.info().card.name.clone());
                }
                Err(e) => tracing::error!(model = %wanted, error = %e, "skipping a model that cannot be served"),
            }
        }
        let default = config
            .default
            .or(if config.selection.is_empty() { None } else { first.clone() })
            .or_else(|| models.0.registry.default_name())
            .filter(|n| models.resolve(n, None).is_ok())
            .or(first);
        models.write().default = default;
        models
    }

    /// A server of model folders (each live under its card's name, the first the default), on a
    /// new engine; the registry is the first folder's parent. For tests, benchmarks and tools.
    pub async fn for_folders(dirs: &[PathBuf], config: EngineConfig, metrics: Metrics) -> Result<Models, ModelsError> {
        let engine = {
            let metrics = metrics.clone();
            tokio::task::spawn_blocking(move || Engine::start(config, metrics))
                .await
                .map_err(|e| EngineError::Inference(e.to_string()))??
        };
        let root = dirs.first().and_then(|d| d.parent()).unwrap_or(Path::new("."));
        let models = Models::empty(engine, Registry::new(root), metrics, &ModelsConfig::default());
        for dir in dirs {
            models.load_folder(dir).await?;
        }
        Ok(models)
    }

    fn empty(engine: Engine, registry: Registry, metrics: Metrics, config: &ModelsConfig) -> Models {
        Models(Arc::new(Inner {
            engine,
            registry,
            metrics,
            memory_budget: config.memory_budget,
            follower: config.follower,
            every_name: config.selection.is_empty(),
            table: RwLock::new(Table::default()),
            changes: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.0.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.0.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The name the unprefixed routes serve.
    pub fn default_name(&self) -> Option<String> {
        self.read().default.clone()
    }

    /// The loaded version `version` of `name`, or its live version.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<ModelHandle, ModelsError> {
        let table = self.read();
        let entry = table.names.get(name).filter(|e| e.live.is_some() || !e.pinned.is_empty());
        let Some(entry) = entry else {
            return Err(ModelsError::NotFound(format!("no model `{name}` is loaded")));
        };
        match version {
            None => {
                entry.live.clone().ok_or_else(|| ModelsError::NotFound(format!("model `{name}` has no live version")))
            }
            Some(v) => entry.get(v).cloned().ok_or_else(|| {
                let loaded: Vec<&str> =
                    entry.live.iter().chain(entry.pinned.values()).map(|h| h.info().card.version.as_str()).collect();
                ModelsError::NotFound(format!(
                    "version `{v}` of model `{name}` is not loaded (loaded: {})",
                    loaded.join(", ")
                ))
            }),
        }
    }

    /// The default model's live version.
    pub fn default_model(&self) -> Result<ModelHandle, ModelsError> {
        let name = self.default_name().ok_or_else(|| ModelsError::NotFound("no model is loaded".into()))?;
        self.resolve(&name, None)
    }

    /// Every loaded version, live ones first within a name.
    pub fn loaded(&self) -> Vec<(ModelHandle, bool)> {
        let table = self.read();
        let mut out = Vec::new();
        for entry in table.names.values() {
            out.extend(entry.live.iter().map(|h| (h.clone(), true)));
            out.extend(entry.pinned.values().map(|h| (h.clone(), false)));
        }
        out
    }

    /// Ready to score: every inference thread is up and at least one model is loaded.
    pub fn is_ready(&self) -> bool {
        self.0.engine.is_ready() && self.read().names.values().any(|e| e.live.is_some())
    }

    fn source(&self, wanted: &str) -> Result<Source, ModelsError> {
        let path = Path::new(wanted);
        if path.join(CARD_FILE).exists() {
            return Ok(Source::Folder(path.to_path_buf()));
        }
        match wanted.split_once('/') {
            Some((name, version)) if valid_segment(name) && valid_segment(version) => {
                Ok(Source::Id(ModelId { name: name.into(), version: version.into() }))
            }
            _ => Err(ModelsError::NotFound(format!("no model `{wanted}`"))),
        }
    }

    /// The version of `name` to make live when none is asked for: the recorded pointer if it
    /// exists on disk, else the latest version with a readable card.
    fn live_on_disk(&self, name: &str) -> Result<String, ModelsError> {
        let versions = self.0.registry.versions(name);
        if let Some(v) = self.0.registry.live_version(name) {
            if versions.iter().any(|(have, card)| *have == v && card.is_ok()) {
                return Ok(v);
            }
            tracing::warn!(name, version = %v, "the live pointer names a version that is not there; using the latest");
        }
        versions
            .into_iter()
            .rev()
            .find(|(_, card)| card.is_ok())
            .map(|(v, _)| v)
            .ok_or_else(|| ModelsError::NotFound(format!("no model `{name}` with a readable version")))
    }

    /// Loads `name/version` (default: its live version on disk). `live`: make it the name's live
    /// version (persisted, the previous live version unloaded unless pinned); otherwise it is
    /// pinned beside the live one.
    pub async fn load(&self, name: &str, version: Option<&str>, live: bool) -> Result<ModelHandle, ModelsError> {
        let _change = self.0.changes.lock().await;
        if !valid_segment(name) || version.is_some_and(|v| !valid_segment(v)) {
            return Err(ModelsError::NotFound(format!("no model `{name}`: names are letters, digits, '.', '_', '-'")));
        }
        let version = match version {
            Some(v) => v.to_string(),
            None => self.live_on_disk(name)?,
        };
        let id = ModelId { name: name.into(), version };
        let dir = self.0.registry.dir(&id).map_err(|e| ModelsError::NotFound(e.to_string()))?;
        if !dir.join(CARD_FILE).exists() {
            return Err(ModelsError::NotFound(format!("no model {id}")));
        }
        let existing = self.read().names.get(name).and_then(|e| e.get(&id.version).cloned());
        let handle = match existing {
            Some(h) => h,
            None => self.load_unit(&id, &dir).await?,
        };
        if live {
            self.make_live(&handle, true).await?;
        } else {
            let mut table = self.write();
            let entry = table.names.entry(name.into()).or_default();
            let is_live = entry.live.as_ref().is_some_and(|h| h.info().generation == handle.info().generation);
            if !is_live {
                entry.pinned.insert(id.version.clone(), handle.clone());
            }
            drop(table);
            self.update_gauges();
        }
        Ok(handle)
    }

    /// Loads a model folder outside the models folder, live under its card's name (not
    /// persisted: the folder is not in the registry).
    async fn load_folder(&self, dir: &Path) -> Result<ModelHandle, ModelsError> {
        let _change = self.0.changes.lock().await;
        let handle = self.0.engine.load(dir, None).await.map_err(|e| invalid(&dir.display().to_string(), e))?;
        self.make_live(&handle, false).await?;
        Ok(handle)
    }

    /// Checks the budget, loads, and records the outcome (loading, then loaded or failed).
    async fn load_unit(&self, id: &ModelId, dir: &Path) -> Result<ModelHandle, ModelsError> {
        let card = self.0.registry.versions(&id.name).into_iter().find(|(v, _)| *v == id.version).map(|(_, c)| c);
        let card: ModelCard = match card {
            Some(Ok(card)) => card,
            Some(Err(reason)) => return Err(self.failed(id, reason)),
            None => return Err(ModelsError::NotFound(format!("no model {id}"))),
        };
        if let Some(budget) = self.0.memory_budget {
            let needed = memory_estimate(&card, self.0.engine.config().workers);
            let used = self.0.engine.memory_bytes();
            if used + needed > budget {
                let mb = |b: u64| b as f64 / 1e6;
                return Err(ModelsError::MemoryBudget {
                    model: id.to_string(),
                    needed_mb: mb(needed),
                    used_mb: mb(used),
                    budget_mb: mb(budget),
                });
            }
        }
        self.write().names.entry(id.name.clone()).or_default().loading.insert(id.version.clone());
        let loaded = self.0.engine.load(dir, Some(id)).await;
        let mut table = self.write();
        let entry = table.names.entry(id.name.clone()).or_default();
        entry.loading.remove(&id.version);
        match loaded {
            Ok(handle) => {
                entry.failed.remove(&id.version);
                Ok(handle)
            }
            Err(e) => {
                drop(table);
                let reason = match &e {
                    EngineError::Store(s) => s.to_string(),
                    other => other.to_string(),
                };
                Err(self.failed(id, reason))
            }
        }
    }

    fn failed(&self, id: &ModelId, reason: String) -> ModelsError {
        tracing::warn!(model = %id, reason = %reason, "a model version cannot be loaded");
        self.0.metrics.model_load_failures.with_label_values(&[&id.name]).inc();
        self.write().names.entry(id.name.clone()).or_default().failed.insert(id.version.clone(), reason.clone());
        ModelsError::Invalid { model: id.to_string(), reason }
    }

    /// Routes the name to `handle`, persists the pointer (`persist`), and unloads the previous
    /// live version unless it is pinned. Requests already queued on the previous version finish
    /// on it.
    async fn make_live(&self, handle: &ModelHandle, persist: bool) -> Result<(), ModelsError> {
        let card = &handle.info().card;
        let id = ModelId { name: card.name.clone(), version: card.version.clone() };
        if persist && !self.0.follower {
            self.0.registry.set_live(&id).map_err(|e| ModelsError::Engine(EngineError::Store(e)))?;
        }
        let previous = {
            let mut table = self.write();
            let entry = table.names.entry(id.name.clone()).or_default();
            entry.pinned.remove(&id.version);
            let previous = entry.live.replace(handle.clone());
            if table.default.is_none() {
                table.default = Some(id.name.clone());
            }
            previous
        };
        let previous_version = previous.as_ref().map(|p| p.info().card.version.clone());
        self.0.metrics.set_live(&id.name, &id.version, previous_version.as_deref());
        if let Some(old) = previous.filter(|p| p.info().generation != handle.info().generation) {
            self.0.metrics.swaps.inc();
            self.0.engine.unload(&old).await;
        }
        self.update_gauges();
        tracing::info!(model = %id, "live");
        Ok(())
    }

    /// One poll of a follower: for each name it serves (and each name in the store, when it serves
    /// every name) whose live pointer names another version than the one served, load that
    /// version, then swap it in: the old one serves until the new one is loaded, and a version
    /// that fails to load leaves it serving (the failure shows in `status` and the metrics, and
    /// is not retried until the pointer moves). Pointers are written after their version folder
    /// is complete (write, then rename), so a pointer never names a partial folder.
    pub async fn follow_store(&self) {
        let registry = self.0.registry.clone();
        let mut names: BTreeSet<String> = self.read().names.keys().cloned().collect();
        let every_name = self.0.every_name;
        let wanted = tokio::task::spawn_blocking(move || {
            if every_name {
                names.extend(registry.names());
            }
            let live: Vec<(String, Option<String>)> =
                names.into_iter().map(|n| (n.clone(), registry.live_version(&n))).collect();
            (live, registry.default_name())
        })
        .await;
        let Ok((wanted, default)) = wanted else { return };
        for (name, pointer) in wanted {
            let Some(version) = pointer else { continue };
            let (served, failed) = {
                let table = self.read();
                let entry = table.names.get(&name);
                let served = entry.and_then(|e| e.live.as_ref()).map(|h| h.info().card.version.clone());
                (served, entry.is_some_and(|e| e.failed.contains_key(&version)))
            };
            let mut behind = served.as_deref() != Some(version.as_str());
            if behind && !failed {
                self.follow(&ModelId { name: name.clone(), version: version.clone() }).await;
                let table = self.read();
                let live = table.names.get(&name).and_then(|e| e.live.as_ref());
                behind = live.is_none_or(|h| h.info().card.version != version);
            }
            self.0.metrics.store_behind.with_label_values(&[&name]).set(i64::from(behind));
        }
        if let Some(name) = default.filter(|n| self.resolve(n, None).is_ok()) {
            self.write().default = Some(name);
        }
    }

    async fn follow(&self, id: &ModelId) {
        let _change = self.0.changes.lock().await;
        let Ok(dir) = self.0.registry.dir(id) else { return };
        let existing = self.read().names.get(&id.name).and_then(|e| e.get(&id.version).cloned());
        let handle = match existing {
            Some(h) => Ok(h),
            None => self.load_unit(id, &dir).await,
        };
        match handle {
            Ok(h) => {
                if let Err(e) = self.make_live(&h, false).await {
                    tracing::warn!(model = %id, error = %e, "following the store failed");
                }
            }
            // load_unit recorded the failure; the old version keeps serving.
            Err(e) => tracing::warn!(model = %id, error = %e, "the store's live version cannot be loaded"),
        }
    }

    /// Makes the loaded or on-disk version `id` its name's live version.
    pub async fn activate(&self, id: &ModelId) -> Result<ModelHandle, ModelsError> {
        self.load(&id.name, Some(&id.version), true).await
    }

    /// Unloads one version (not the live one while others serve the name), or the whole name
    /// (`version` None). Run-time only: a restart serves what the models folder and the flags say.
    pub async fn unload(&self, name: &str, version: Option<&str>) -> Result<Vec<String>, ModelsError> {
        let _change = self.0.changes.lock().await;
        let (handles, live_version) = {
            let mut table = self.write();
            let Some(entry) = table.names.get_mut(name) else {
                return Err(ModelsError::NotFound(format!("no model `{name}` is loaded")));
            };
            let live_version = entry.live.as_ref().map(|h| h.info().card.version.clone());
            let handles: Vec<ModelHandle> = match version {
                Some(v) if live_version.as_deref() == Some(v) => {
                    return Err(ModelsError::Conflict(format!(
                        "version {v} is the live version of `{name}`: activate another version first, or unload \
                         the name"
                    )))
                }
                Some(v) => match entry.pinned.remove(v) {
                    Some(h) => vec![h],
                    None => return Err(ModelsError::NotFound(format!("version `{v}` of `{name}` is not loaded"))),
                },
                None => {
                    let mut all: Vec<ModelHandle> = entry.live.take().into_iter().collect();
                    all.extend(std::mem::take(&mut entry.pinned).into_values());
                    all
                }
            };
            if entry.is_empty() || (entry.live.is_none() && entry.pinned.is_empty()) {
                table.names.remove(name);
                if table.default.as_deref() == Some(name) {
                    table.default = None;
                }
            }
            (handles, live_version)
        };
        if version.is_none() {
            self.0.metrics.forget_model(name, live_version.as_deref());
        }
        let mut unloaded = Vec::new();
        for h in handles {
            unloaded.push(h.info().card.version.clone());
            self.0.engine.unload(&h).await;
        }
        self.update_gauges();
        Ok(unloaded)
    }

    fn update_gauges(&self) {
        let loaded = self.loaded().len();
        self.0.metrics.models_loaded.set(loaded as i64);
        self.0.metrics.model_memory_bytes.set(self.0.engine.memory_bytes() as i64);
    }

    /// Every name on disk or loaded, with each version's state.
    pub fn status(&self) -> Vec<NameStatus> {
        let table = self.read();
        let mut names: BTreeSet<String> = self.0.registry.names().into_iter().collect();
        names.extend(table.names.keys().cloned());
        names
            .into_iter()
            .map(|name| {
                let entry = table.names.get(&name);
                let live = entry.and_then(|e| e.live.as_ref()).map(|h| h.info().card.version.clone());
                let mut versions: Vec<VersionStatus> = self
                    .0
                    .registry
                    .versions(&name)
                    .into_iter()
                    .map(|(version, card)| {
                        let state = match (entry, &card) {
                            (Some(e), _) if e.get(&version).is_some() => VersionState::Loaded,
                            (Some(e), _) if e.loading.contains(&version) => VersionState::Loading,
                            (Some(e), _) if e.failed.contains_key(&version) => {
                                VersionState::Unavailable { reason: e.failed[&version].clone() }
                            }
                            (_, Err(reason)) => VersionState::Unavailable { reason: reason.clone() },
                            _ => VersionState::Available,
                        };
                        VersionStatus {
                            live: live.as_deref() == Some(version.as_str()),
                            version,
                            state,
                            card: card.ok(),
                        }
                    })
                    .collect();
                // Loaded from a folder outside the models folder.
                for (h, is_live) in entry.into_iter().flat_map(|e| e.live.iter().map(|h| (h, true))) {
                    if !versions.iter().any(|v| v.version == h.info().card.version) {
                        versions.push(VersionStatus {
                            version: h.info().card.version.clone(),
                            live: is_live,
                            state: VersionState::Loaded,
                            card: Some(h.info().card.clone()),
                        });
                    }
                }
                let store_live = self.0.registry.live_version(&name);
                NameStatus {
                    default: table.default.as_deref() == Some(name.as_str()),
                    name,
                    live,
                    store_live,
                    versions,
                }
            })
            .collect()
    }
}

fn invalid(model: &str, e: EngineError) -> ModelsError {
    ModelsError::Invalid { model: model.into(), reason: e.to_string() }
}

#[derive(Debug)]
pub struct NameStatus {
    pub name: String,
    /// The version this replica serves.
    pub live: Option<String>,
    /// The version the store's live pointer names (a scorer follows it).
    pub store_live: Option<String>,
    pub default: bool,
    pub versions: Vec<VersionStatus>,
}

#[derive(Debug)]
pub struct VersionStatus {
    pub version: String,
    pub live: bool,
    pub state: VersionState,
    pub card: Option<ModelCard>,
}
