//! The seam between the engine and what computes logits.
//!
//! [`crate::generate::Engine`] owns everything a backend does not: the tokenizer, sampling,
//! stop rules, saved states, statistics and OTA. A [`Backend`] owns a model's weights on its
//! device and hands out [`Session`]s, each one conversation's KV cache. Today: the CPU
//! backend ([`crate::cpu::CpuBackend`], tract plus edge-llm's kernels). The WebGPU backend
//! plugs in here.
//!
//! A step is asynchronous because a GPU's result can only be read after the browser's event
//! loop has run: [`Session::forward`] returns a future. The CPU's future is ready when it is
//! first polled, so [`ready`] runs it without an executor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use tract_onnx::prelude::{TValue, Tensor};

use crate::{Error, Result};

/// A boxed future that may hold borrowed data and need not be `Send` (WebGPU's are not).
pub type StepFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Which engine computes a model. `Auto` picks one at load and says why ([`BackendInfo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendKind {
    #[default]
    Wasm,
    Webgpu,
    Auto,
}

impl BackendKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "wasm" | "cpu" => Ok(BackendKind::Wasm),
            "webgpu" | "gpu" => Ok(BackendKind::Webgpu),
            "auto" => Ok(BackendKind::Auto),
            other => Err(Error::InvalidOption { option: "backend", reason: format!("`{other}` is not one of wasm, webgpu, auto") }),
        }
    }
}

/// What a loaded backend is, for `stats()`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendInfo {
    /// `"wasm"` (the CPU backend, also natively) or `"webgpu"`.
    pub name: &'static str,
    /// Where the KV cache lives: `"folded"` (in the CPU plan's state), `"explicit"`
    /// (past/present tensors) or `"gpu"`.
    pub kv_cache: &'static str,
    /// Why this backend was chosen, when the caller asked for `auto`.
    pub reason: Option<String>,
    /// The GPU's products over 4- and 8-bit weights: `"f16"` where some of them run in f16
    /// (the options asked, the device has `shader-f16`, a load that timed both found f16 faster,
    /// and the model has such a weight on float activations: [`crate::gpu::Precision`]), else
    /// `"f32"`; `None` on the CPU.
    pub gpu_precision: Option<&'static str>,
}

/// One step's sampling: the options and the uniform number in `[0, 1)` the step draws (0 at
/// temperature 0, which draws none). `generate::sample_with` picks the token on the CPU; a backend that
/// samples on its device (the GPU's `sample.wgsl`) takes the same parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub uniform: f32,
}

/// A model loaded on one device.
pub trait Backend {
    fn info(&self) -> BackendInfo;
    /// Logits per position.
    fn vocab_size(&self) -> usize;
    /// The KV cache's `(layers, kv_heads, head_dim)`: what saved states must match.
    fn kv_layout(&self) -> (usize, usize, usize);
    /// A fresh conversation.
    fn session(&self) -> Box<dyn Session>;
    /// A conversation continuing from `kv` (a snapshot of a session with the same layout).
    fn session_from(&self, kv: &KvSnapshot) -> Result<Box<dyn Session>>;
    /// Whether a step's future is ready when first polled (the CPU; wgpu natively), so the
    /// synchronous [`crate::Generation::step`] can run it. A browser's GPU readback is not.
    fn steps_are_sync(&self) -> bool {
        true
    }
    /// The GPU device the backend runs on, if any (apps may watch it; tests destroy it).
    fn gpu_device(&self) -> Option<wgpu::Device> {
        None
    }
    /// How many nodes of each op kind the backend runs (diagnostics; empty where not a graph).
    fn plan_ops(&self) -> std::collections::BTreeMap<String, usize> {
        Default::default()
    }
}

/// One conversation's KV cache on a backend.
pub trait Session {
    /// Tokens in the cache.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The cache as host tensors (shared, not copied, where the backend keeps them on the host).
    fn snapshot(&self) -> Result<KvSnapshot>;
    /// Run `tokens` after the cached ones; resolves to the logits of the last position.
    fn forward<'a>(&'a mut self, tokens: &'a [u32]) -> StepFuture<'a, Result<Vec<f32>>>;
    /// [`Session::forward`] that picks the greedy next token on the device (lowest id on
    /// ties, as [`crate::generate::argmax`]) and reads back only that id; `None` where the
    /// backend has no such path (the engine then takes the logits).
    fn forward_argmax<'a>(&'a mut self, _tokens: &'a [u32]) -> Option<StepFuture<'a, Result<u32>>> {
        None
    }
    /// [`Session::forward`] that samples the next token on the device as
    /// [`crate::generate::sample_with`] does with `params` (the repetition penalty over
    /// `history`), reading back only its id; `None` where the backend has no such path.
    fn forward_sample<'a>(&'a mut self, _tokens: &'a [u32], _params: SampleParams, _history: &'a [u32]) -> Option<StepFuture<'a, Result<u32>>> {
        None
    }
}

/// The value of a future that needs no event loop (the CPU backend's), or `None` when it
/// is waiting for one (a GPU readback in a browser).
pub fn ready<T>(f: impl Future<Output = T>) -> Option<T> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// A session's KV cache: for each layer, key then value, `[1, kv_heads, len, head_dim]` f32.
/// Cloning shares the tensors.
#[derive(Debug, Clone, Default)]
pub struct KvSnapshot {
    pub len: usize,
    /// Indexed `2 * layer + is_value`.
    pub tensors: Vec<TValue>,
}

fn tensor_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidState(format!("KV tensor: {e:#}"))
}

impl KvSnapshot {
    /// Build from raw f32 values in the layout above (`data[i]` is tensor `i`).
    pub fn from_f32(len: usize, kv_heads: usize, head_dim: usize, data: Vec<Vec<f32>>) -> Result<Self> {
        let tensors = data
            .into_iter()
            .map(|v| Tensor::from_shape(&[1, kv_heads, len, head_dim], &v).map(TValue::from).map_err(tensor_err))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvSnapshot { len, tensors })
    }

    /// The first `len` positions.
    pub fn truncated(&self, len: usize) -> Result<Self> {
        if len >= self.len {
            return Ok(self.clone());
        }
        let tensors = self.tensors.iter().map(|t| t.slice(2, 0, len).map(TValue::from).map_err(tensor_err)).collect::<Result<Vec<_>>>()?;
        Ok(KvSnapshot { len, tensors })
    }

    /// Tensor `i`'s values, contiguous.
    pub fn values(&self, i: usize) -> Result<&[f32]> {
        self.tensors[i].try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(tensor_err)
    }
}
