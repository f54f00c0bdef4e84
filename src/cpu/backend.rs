//! The CPU model behind the [`Backend`] seam: each session's step runs synchronously, so its
//! future is ready at once.

use std::sync::Arc;

use super::{CpuModel, CpuSession, KvSnapshot};
use crate::backend::{Backend, BackendInfo, Session, StepFuture};
use crate::Result;

/// A [`CpuModel`] as a [`Backend`].
pub struct CpuBackend(pub Arc<CpuModel>);

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo { name: "wasm", kv_cache: if self.0.kv_cache_folded() { "folded" } else { "explicit" }, reason: None, gpu_precision: None }
    }

    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }

    fn kv_layout(&self) -> (usize, usize, usize) {
        self.0.kv_layout()
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(self.0.session())
    }

    fn session_from(&self, kv: &KvSnapshot) -> Result<Box<dyn Session>> {
        Ok(Box::new(self.0.session_from(kv)?))
    }

    fn plan_ops(&self) -> std::collections::BTreeMap<String, usize> {
        self.0.plan_ops()
    }
}

impl Session for CpuSession {
    fn len(&self) -> usize {
        CpuSession::len(self)
    }

    fn snapshot(&self) -> Result<KvSnapshot> {
        CpuSession::snapshot(self)
    }

    fn forward<'a>(&'a mut self, tokens: &'a [u32]) -> StepFuture<'a, Result<Vec<f32>>> {
        let logits = CpuSession::forward(self, tokens);
        Box::pin(std::future::ready(logits))
    }
}
