//! An in-memory [`ShardStore`], with an optional byte quota: the native tests' backend and a
//! model for the JS ones.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use super::{ModelRecord, ShardStore, StorageEstimate, StoreError};
use crate::package::Blob;

#[derive(Default)]
pub struct MemoryStore<B> {
    shards: RefCell<BTreeMap<String, B>>,
    models: RefCell<BTreeMap<String, ModelRecord>>,
    /// Bytes of shards allowed; `put` beyond it fails with [`StoreError::Quota`].
    pub quota: Option<u64>,
    /// Counters the tests read.
    pub gets: Cell<usize>,
    pub puts: Cell<usize>,
}

impl<B: Blob + Clone> MemoryStore<B> {
    pub fn new() -> Self {
        MemoryStore { shards: Default::default(), models: Default::default(), quota: None, gets: Cell::new(0), puts: Cell::new(0) }
    }

    pub fn with_quota(quota: u64) -> Self {
        MemoryStore { quota: Some(quota), ..Self::new() }
    }

    pub fn usage(&self) -> u64 {
        self.shards.borrow().values().map(Blob::len).sum()
    }

    /// Replace a stored shard's bytes (tests: simulate corruption on disk).
    pub fn tamper(&self, sha256: &str, blob: B) {
        self.shards.borrow_mut().insert(sha256.into(), blob);
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.shards.borrow().contains_key(sha256)
    }
}

impl<B: Blob + Clone> ShardStore for MemoryStore<B> {
    type Blob = B;

    async fn get(&self, sha256: &str) -> Result<Option<B>, StoreError> {
        self.gets.set(self.gets.get() + 1);
        Ok(self.shards.borrow().get(sha256).cloned())
    }

    async fn put(&self, sha256: &str, blob: &B) -> Result<(), StoreError> {
        self.puts.set(self.puts.get() + 1);
        if let Some(q) = self.quota {
            if self.usage() + blob.len() > q {
                return Err(StoreError::Quota(format!("{} more bytes do not fit in {q}", blob.len())));
            }
        }
        self.shards.borrow_mut().insert(sha256.into(), blob.clone());
        Ok(())
    }

    async fn delete(&self, sha256: &str) -> Result<(), StoreError> {
        self.shards.borrow_mut().remove(sha256);
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.shards.borrow().keys().cloned().collect())
    }

    async fn models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        Ok(self.models.borrow().values().cloned().collect())
    }

    async fn put_model(&self, record: &ModelRecord) -> Result<(), StoreError> {
        self.models.borrow_mut().insert(record.key.clone(), record.clone());
        Ok(())
    }

    async fn delete_model(&self, key: &str) -> Result<(), StoreError> {
        self.models.borrow_mut().remove(key);
        Ok(())
    }

    async fn estimate(&self) -> Option<StorageEstimate> {
        self.quota.map(|q| StorageEstimate { usage: self.usage() as f64, quota: q as f64 })
    }
}
