//! A remote model store (S3-compatible object storage, through `object_store`) mirrored to and
//! from the local models folder. Keys follow the local layout: `<prefix>/<name>/<version>/`
//! holding `model.safetensors` and `card.json`, `<prefix>/<name>/live.json` and
//! `<prefix>/default.json`. A writer uploads a version's weights, then its card, then the
//! pointers; S3 reads are consistent after writes, so a reader that sees a pointer finds the
//! whole version. Readers download into a hidden temporary folder and rename it into place, so
//! the local folder never holds half a version either.
use super::registry::{valid_segment, ModelId, DEFAULT_FILE, LIVE_FILE};
use super::{Registry, CARD_FILE, WEIGHTS_FILE};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("store URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("local models folder: {0}")]
    Local(String),
}

#[derive(Deserialize)]
struct LivePointer {
    version: String,
}

#[derive(Deserialize)]
struct DefaultPointer {
    name: String,
}

/// Pointer reads in flight at once during a poll.
const POINTER_READS: usize = 16;

async fn get(store: &dyn ObjectStore, key: &Key) -> Result<Option<Vec<u8>>, RemoteError> {
    match store.get(key).await {
        Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub struct RemoteStore {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    url: String,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore").field("url", &self.url).finish()
    }
}

impl RemoteStore {
    /// `s3://bucket/prefix` (credentials, region and endpoint from the usual `AWS_*` variables,
    /// e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for MinIO or another S3-compatible server), or
    /// `memory:///` (in-process, for tests).
    pub fn open(url: &str) -> Result<RemoteStore, RemoteError> {
        let bad = |message: String| RemoteError::Url { url: url.into(), message };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "s3" | "s3a" | "memory") {
            return Err(bad("only s3:// (S3-compatible object storage) and memory:/// are supported".into()));
        }
        let aws = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) = object_store::parse_url_opts(&parsed, aws).map_err(|e| bad(e.to_string()))?;
        Ok(RemoteStore { store: Arc::from(store), prefix, url: url.into() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, parts: &[&str]) -> Key {
        parts.iter().fold(self.prefix.clone(), |k, p| k.join(*p))
    }

    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, RemoteError> {
        get(self.store.as_ref(), key).await
    }

    /// Each name's live pointer, read concurrently (a poll costs one round trip per
    /// `POINTER_READS` names, not one per name).
    async fn live_versions(&self, names: &[String]) -> Result<Vec<Option<String>>, RemoteError> {
        let limit = Arc::new(tokio::sync::Semaphore::new(POINTER_READS));
        let mut reads = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let (store, key, limit) = (self.store.clone(), self.key(&[name, LIVE_FILE]), limit.clone());
            reads.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, get(store.as_ref(), &key).await)
            });
        }
        let mut out = vec![None; names.len()];
        while let Some(done) = reads.join_next().await {
            let (i, bytes) = done.map_err(|e| RemoteError::Local(e.to_string()))?;
            out[i] = bytes?.and_then(|b| serde_json::from_slice::<LivePointer>(&b).ok()).map(|p| p.version);
        }
        Ok(out)
    }

    /// The folder names directly under `key`, valid as model names or versions.
    async fn children(&self, key: &Key) -> Result<Vec<String>, RemoteError> {
        let listed = self.store.list_with_delimiter(Some(key)).await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|n| valid_segment(n))
            .collect())
    }

    async fn live_version(&self, name: &str) -> Result<Option<String>, RemoteError> {
        let bytes = self.get(&self.key(&[name, LIVE_FILE])).await?;
        Ok(bytes.and_then(|b| serde_json::from_slice::<LivePointer>(&b).ok()).map(|p| p.version))
    }

    /// Uploads what the local folder has and the store lacks: each version (weights, then
    /// card), then each live pointer and the default name where they differ. Returns what it
    /// uploaded.
    pub async fn push(&self, local: &Registry) -> Result<Vec<String>, RemoteError> {
        let mut pushed = Vec::new();
        let listed = {
            let local = local.clone();
            tokio::task::spawn_blocking(move || local.list()).await.map_err(|e| RemoteError::Local(e.to_string()))?
        };
        let mut remote_versions = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (id, _) in &listed {
            if !remote_versions.contains_key(&id.name) {
                let versions = self.children(&self.key(&[&id.name])).await?;
                remote_versions.insert(id.name.clone(), versions);
            }
            if remote_versions[&id.name].contains(&id.version)
                && self.store.head(&self.key(&[&id.name, &id.version, CARD_FILE])).await.is_ok()
            {
                continue;
            }
            let dir = local.dir(id).map_err(|e| RemoteError::Local(e.to_string()))?;
            for file in [WEIGHTS_FILE, CARD_FILE] {
                let bytes = tokio::fs::read(dir.join(file))
                    .await
                    .map_err(|e| RemoteError::Local(format!("{}: {e}", dir.join(file).display())))?;
                self.store.put(&self.key(&[&id.name, &id.version, file]), PutPayload::from(bytes)).await?;
            }
            pushed.push(id.to_string());
        }
        let names: std::collections::BTreeSet<&String> = listed.iter().map(|(id, _)| &id.name).collect();
        for name in names {
            // Only a pointer to a version uploaded above (a newer one waits for the next push).
            let Some(live) = local.live_version(name) else { continue };
            let uploaded = listed.iter().any(|(id, _)| id.name == *name && id.version == live);
            if uploaded && self.live_version(name).await?.as_deref() != Some(live.as_str()) {
                let body = serde_json::json!({ "version": live }).to_string();
                self.store.put(&self.key(&[name, LIVE_FILE]), PutPayload::from(body)).await?;
                pushed.push(format!("{name}/{LIVE_FILE} -> {live}"));
            }
        }
        if let Some(default) = local.default_name() {
            let remote = self.get(&self.key(&[DEFAULT_FILE])).await?;
            let remote = remote.and_then(|b| serde_json::from_slice::<DefaultPointer>(&b).ok()).map(|p| p.name);
            if remote.as_deref() != Some(default.as_str()) {
                let body = serde_json::json!({ "name": default }).to_string();
                self.store.put(&self.key(&[DEFAULT_FILE]), PutPayload::from(body)).await?;
                pushed.push(format!("{DEFAULT_FILE} -> {default}"));
            }
        }
        Ok(pushed)
    }

    /// Downloads what the store names and the local folder lacks: each name's live version (and,
    /// with `every_version`, all its versions), then the live pointers and the default name.
    /// Returns what it downloaded.
    pub async fn pull(&self, local: &Registry, every_version: bool) -> Result<Vec<String>, RemoteError> {
        let mut pulled = Vec::new();
        let names = self.children(&self.prefix).await?;
        let pointers = self.live_versions(&names).await?;
        for (name, live) in names.into_iter().zip(pointers) {
            let versions =
                if every_version { self.children(&self.key(&[&name])).await? } else { live.iter().cloned().collect() };
            for version in versions {
                let id = ModelId { name: name.clone(), version };
                let dir = local.dir(&id).map_err(|e| RemoteError::Local(e.to_string()))?;
                if dir.join(CARD_FILE).exists() || !self.download(&id, &dir).await? {
                    continue;
                }
                pulled.push(id.to_string());
            }
            if let Some(v) = live.filter(|v| local.live_version(&name).as_deref() != Some(v.as_str())) {
                let id = ModelId { name: name.clone(), version: v };
                if local.dir(&id).is_ok_and(|d| d.join(CARD_FILE).exists()) {
                    local.set_live(&id).map_err(|e| RemoteError::Local(e.to_string()))?;
                    pulled.push(format!("{name}/{LIVE_FILE} -> {}", id.version));
                }
            }
        }
        let remote = self.get(&self.key(&[DEFAULT_FILE])).await?;
        if let Some(d) = remote.and_then(|b| serde_json::from_slice::<DefaultPointer>(&b).ok()) {
            if local.default_name().as_deref() != Some(d.name.as_str()) && valid_segment(&d.name) {
                local.set_default_name(&d.name).map_err(|e| RemoteError::Local(e.to_string()))?;
            }
        }
        Ok(pulled)
    }

    /// One version into `dir`, through a hidden temporary folder; false when the store has no
    /// complete version there (no card yet).
    async fn download(&self, id: &ModelId, dir: &std::path::Path) -> Result<bool, RemoteError> {
        let Some(card) = self.get(&self.key(&[&id.name, &id.version, CARD_FILE])).await? else { return Ok(false) };
        let Some(weights) = self.get(&self.key(&[&id.name, &id.version, WEIGHTS_FILE])).await? else {
            return Ok(false);
        };
        let parent = dir.parent().unwrap_or(dir);
        let tmp = parent.join(format!(".{}.tmp-pull-{}", id.version, std::process::id()));
        let local = |e: std::io::Error| RemoteError::Local(format!("{}: {e}", tmp.display()));
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await.map_err(local)?;
        tokio::fs::write(tmp.join(WEIGHTS_FILE), &weights).await.map_err(local)?;
        tokio::fs::write(tmp.join(CARD_FILE), &card).await.map_err(local)?;
        tokio::fs::rename(&tmp, dir).await.map_err(local)?;
        Ok(true)
    }
}
