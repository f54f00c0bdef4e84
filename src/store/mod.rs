//! The shard cache: a content-addressed key-value store (key = a file's SHA-256) plus one
//! record per cached model version. Backends (IndexedDB, the file system, memory, an app's own)
//! only move bytes; what to keep, share and evict is decided here, in plain Rust.
//!
//! Invariants every backend keeps: `put` is atomic (an interrupted write leaves no entry), a
//! model record is written only after all of its shards, and the store is never trusted: the
//! loader re-hashes every shard it reads back (see `loader`).

mod memory;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

pub use memory::MemoryStore;

use crate::package::Blob;


/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// The origin's storage quota is exhausted (`QuotaExceededError`).
    Quota(String),
    Failed(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Quota(m) => write!(f, "storage quota exceeded: {m}"),
            StoreError::Failed(m) => write!(f, "store failed: {m}"),
        }
    }
}

/// `navigator.storage.estimate()`: bytes used and allowed for this origin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StorageEstimate {
    pub usage: f64,
    pub quota: f64,
}

/// One cached model version: its manifest and the hashes of its files, written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRecord {
    /// Primary key: `model_id@model_version`.
    pub key: String,
    pub model_sha256: String,
    pub model_id: String,
    pub model_version: String,
    /// Where the manifest came from, so a later offline load of the same URL finds it.
    pub manifest_url: Option<String>,
    pub manifest_json: String,
    /// SHA-256 of every file, in manifest order.
    pub shards: Vec<String>,
    pub total_bytes: f64,
    /// Milliseconds since the epoch when the record was written.
    pub stored_at: f64,
    /// When an OTA rollback left this version (ms since the epoch): updates to it are skipped,
    /// also after a reload. Loading it with `Engine.load` writes a new record without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<f64>,
}

/// A key-value store for shards and model records. Methods are async because every real
/// backend is; none may hold a partially written entry visible to `get`.
#[allow(async_fn_in_trait)]
pub trait ShardStore {
    type Blob: Blob;
    async fn get(&self, sha256: &str) -> Result<Option<Self::Blob>, StoreError>;
    async fn put(&self, sha256: &str, blob: &Self::Blob) -> Result<(), StoreError>;
    async fn delete(&self, sha256: &str) -> Result<(), StoreError>;
    /// Every stored shard hash.
    async fn keys(&self) -> Result<Vec<String>, StoreError>;
    async fn models(&self) -> Result<Vec<ModelRecord>, StoreError>;
    async fn put_model(&self, record: &ModelRecord) -> Result<(), StoreError>;
    async fn delete_model(&self, key: &str) -> Result<(), StoreError>;
    async fn estimate(&self) -> Option<StorageEstimate> {
        None
    }
    /// Drop what interrupted writes left behind (the file store's temporary files).
    async fn sweep(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A shard name: 64 lower-case hex digits (a SHA-256). A name from a record or a backend that
/// is not one is never passed to a store (a planted record naming `../../x` deletes nothing).
pub fn is_shard_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Delete every shard that no model record names (left by loads that were aborted or ran out
/// of quota) and what interrupted writes left. Returns how many shards were deleted. The
/// loader runs this after each load it cached; a load running in another tab at that moment
/// loses the shards it has stored so far (it goes on from memory, and a later load fetches
/// them again).
pub async fn collect_garbage<S: ShardStore>(store: &S) -> Result<usize, StoreError> {
    store.sweep().await?;
    let records = store.models().await?;
    let before = store.keys().await?;
    let n = before.len();
    drop_unreferenced(store, &records, before).await?;
    Ok(n.saturating_sub(store.keys().await?.len()))
}

/// The record key of a model version.
pub fn record_key(model_id: &str, model_version: &str) -> String {
    format!("{model_id}@{model_version}")
}

/// Remember that the cached version `key` (with `model_sha256`) was rolled back. Returns whether
/// its record was found.
pub async fn mark_rolled_back<S: ShardStore>(store: &S, key: &str, model_sha256: &str, at: f64) -> Result<bool, StoreError> {
    let Some(mut r) = store.models().await?.into_iter().find(|r| r.key == key && r.model_sha256 == model_sha256) else { return Ok(false) };
    r.rolled_back_at = Some(at);
    store.put_model(&r).await?;
    Ok(true)
}

/// Whether the version `key` with `model_sha256` was rolled back (see [`mark_rolled_back`]).
pub async fn was_rolled_back<S: ShardStore>(store: &S, key: &str, model_sha256: &str) -> Result<bool, StoreError> {
    Ok(store.models().await?.iter().any(|r| r.key == key && r.model_sha256 == model_sha256 && r.rolled_back_at.is_some()))
}

/// A cached model as `listCachedModels()` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedModel {
    pub key: String,
    pub model_id: String,
    pub model_version: String,
    pub model_sha256: String,
    pub manifest_url: Option<String>,
    pub total_bytes: f64,
    pub stored_at: f64,
    /// Every shard the record names is still in the store.
    pub complete: bool,
}

/// Every model record, newest first, with whether all its shards are still present.
pub async fn list_models<S: ShardStore>(store: &S) -> Result<Vec<CachedModel>, StoreError> {
    let keys: HashSet<String> = store.keys().await?.into_iter().collect();
    let mut out: Vec<CachedModel> = store
        .models()
        .await?
        .into_iter()
        .map(|r| CachedModel {
            complete: r.shards.iter().all(|s| keys.contains(s)),
            key: r.key,
            model_id: r.model_id,
            model_version: r.model_version,
            model_sha256: r.model_sha256,
            manifest_url: r.manifest_url,
            total_bytes: r.total_bytes,
            stored_at: r.stored_at,
        })
        .collect();
    out.sort_by(|a, b| b.stored_at.total_cmp(&a.stored_at));
    Ok(out)
}

/// Delete the records of `model_id` (one version, or all when `model_version` is `None`) and
/// every shard no remaining record uses. Returns how many records were deleted.
pub async fn delete_model<S: ShardStore>(store: &S, model_id: &str, model_version: Option<&str>) -> Result<usize, StoreError> {
    let records = store.models().await?;
    let (doomed, kept): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.model_id == model_id && model_version.is_none_or(|v| v == r.model_version));
    for r in &doomed {
        store.delete_model(&r.key).await?;
    }
    let shards: Vec<String> = doomed.iter().flat_map(|r| r.shards.iter().cloned()).collect();
    drop_unreferenced(store, &kept, shards).await?;
    Ok(doomed.len())
}

/// Keep the `keep` newest versions of `model_id` (the current one and the rollback target, for
/// OTA updates) and delete the older ones. Returns how many records were deleted.
pub async fn evict_old_versions<S: ShardStore>(store: &S, model_id: &str, keep: usize) -> Result<usize, StoreError> {
    let mut mine: Vec<ModelRecord> = store.models().await?.into_iter().filter(|r| r.model_id == model_id).collect();
    mine.sort_by(|a, b| b.stored_at.total_cmp(&a.stored_at));
    let mut n = 0;
    for r in mine.into_iter().skip(keep) {
        n += delete_model(store, model_id, Some(&r.model_version)).await?;
    }
    Ok(n)
}

/// Delete those of `candidates` that no record in `records` names.
pub(crate) async fn drop_unreferenced<S: ShardStore>(store: &S, records: &[ModelRecord], candidates: Vec<String>) -> Result<(), StoreError> {
    let used: HashSet<&String> = records.iter().flat_map(|r| r.shards.iter()).collect();
    let mut seen = HashSet::new();
    for sha in candidates {
        if is_shard_name(&sha) && !used.contains(&sha) && seen.insert(sha.clone()) {
            store.delete(&sha).await?;
        }
    }
    Ok(())
}
