//! Saved conversation state: the KV cache, the tokens in it and, when saved mid-generation,
//! what that generation needs to go on exactly as if it had never been interrupted.
//!
//! Byte layout (version 1, little-endian):
//!
//! | bytes | what |
//! | --- | --- |
//! | 8 | magic `EDGELLMS` |
//! | 4 | format version (u32) |
//! | 32 | model fingerprint ([`super::Engine::fingerprint`]) |
//! | 4 | header length `h` (u32) |
//! | h | header, JSON: KV layout, token count, dtype, the unfinished generation if any |
//! | 4·n | the `n` tokens in the cache (u32) |
//! | 4·2·L·H·n·D | the cache in its native dtype (f32): per layer key then value, `[H, n, D]` |
//! | 32 | SHA-256 of everything before |

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::sync::{Arc, Mutex};

use super::GenerateOptions;
use crate::backend::{KvSnapshot, Session};
use crate::tokenizer::IncrementalDecoder;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"EDGELLMS";
pub const VERSION: u32 = 1;
const FIXED: usize = 8 + 4 + 32 + 4;
const HASH: usize = 32;

/// A conversation that can continue: the cache and the tokens it holds. Cheap to clone (the
/// cache is shared, not copied).
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    pub(crate) kv: KvSource,
    /// Exactly the tokens in `kv`, in order.
    pub(crate) tokens: Vec<u32>,
    /// Set while a generation is unfinished.
    pub(crate) resume: Option<Resume>,
}

impl SessionState {
    /// Tokens in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Whether an unfinished generation can be resumed from this state.
    pub fn can_resume(&self) -> bool {
        self.resume.is_some()
    }
}

/// Where a conversation's KV cache is: a snapshot (restored, or resumed from), or the live
/// session of the generation that made it. A generation publishes its state after every token;
/// holding the session there instead of a snapshot keeps that free, and the cache is copied
/// out only when asked for (a save, a chat turn that reuses it).
#[derive(Clone)]
pub(crate) enum KvSource {
    Saved(KvSnapshot),
    Live(LiveSession),
}

impl Default for KvSource {
    fn default() -> Self {
        KvSource::Saved(KvSnapshot::default())
    }
}

impl std::fmt::Debug for KvSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvSource::Saved(s) => write!(f, "Saved({} positions)", s.len),
            KvSource::Live(_) => write!(f, "Live"),
        }
    }
}

impl KvSource {
    /// The first `len` positions of the cache, as tensors.
    pub(crate) fn snapshot(&self, len: usize) -> Result<KvSnapshot> {
        match self {
            KvSource::Saved(s) => s.truncated(len),
            KvSource::Live(session) => with_live(session, |s| s.snapshot())??.truncated(len),
        }
    }
}

/// A generation's session, shared with the state it publishes. `None` while a step that
/// waits for an event loop (a GPU readback) has it.
pub(crate) type LiveSession = Arc<Mutex<Option<Box<dyn Session>>>>;

fn busy() -> Error {
    Error::InvalidState("the conversation is in the middle of a step".into())
}

/// `f` of the live session, or `InvalidState` while a step has it.
pub(crate) fn with_live<T>(s: &LiveSession, f: impl FnOnce(&dyn Session) -> T) -> Result<T> {
    s.lock().expect("not poisoned").as_deref().map(f).ok_or_else(busy)
}

/// Take the live session for a step (put it back after).
pub(crate) fn take_live(s: &LiveSession) -> Result<Box<dyn Session>> {
    s.lock().expect("not poisoned").take().ok_or_else(busy)
}

/// An unfinished generation, beyond the cache: its options, sampler and stream position.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Resume {
    pub options: GenerateOptions,
    pub rng_state: u64,
    /// The last sampled token: returned to the caller, not yet run through the model.
    pub next_token: u32,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub detok: IncrementalDecoder,
    /// Text held back as a possible stop-string prefix.
    pub pending: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    tokens: usize,
    dtype: String,
    resume: Option<Resume>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::InvalidState(reason.into())
}

/// Serialise `state` for the model with `fingerprint` and KV layout `(layers, kv_heads, head_dim)`.
pub fn encode(state: &SessionState, fingerprint: &[u8; 32], layout: (usize, usize, usize)) -> Result<Vec<u8>> {
    let (layers, kv_heads, head_dim) = layout;
    let n = state.tokens.len();
    let kv = state.kv.snapshot(n)?;
    if n > 0 && kv.len != n {
        return Err(bad(format!("the cache holds {} positions, the state {n} tokens", kv.len)));
    }
    let header = Header { layers, kv_heads, head_dim, tokens: n, dtype: "f32".into(), resume: state.resume.clone() };
    let header = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    let kv_values = 2 * layers * kv_heads * n * head_dim;
    let mut out = Vec::with_capacity(FIXED + header.len() + 4 * n + 4 * kv_values + HASH);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for t in &state.tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    if n > 0 {
        for i in 0..2 * layers {
            for v in kv.values(i)? {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    Ok(out)
}

/// What a restored state must fit: the model's KV layout `(layers, kv_heads, head_dim)`, its
/// context length and vocabulary size. The checksum has no key (anyone can recompute it), so
/// every header field is checked against these before anything is allocated from it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub layout: (usize, usize, usize),
    pub context: usize,
    pub vocab: usize,
}

/// `4·n` token bytes plus `4·2·L·H·n·D` cache bytes, in u64 and checked: on wasm32 a usize
/// product of a forged `n` wraps to a small number that passes a length check.
fn payload_bytes(n: u64, (layers, kv_heads, head_dim): (usize, usize, usize)) -> Option<u64> {
    let per_token = 2u64.checked_mul(layers as u64)?.checked_mul(kv_heads as u64)?.checked_mul(head_dim as u64)?.checked_add(1)?;
    n.checked_mul(per_token)?.checked_mul(4)
}

/// Parse bytes written by [`encode`], checking format, checksum, model, layout, context and
/// vocabulary; a state that passes can be resumed without panicking.
pub fn decode(bytes: &[u8], fingerprint: &[u8; 32], limits: Limits) -> Result<SessionState> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not an edge-llm state (bad magic)"));
    }
    if bytes.len() < FIXED + HASH {
        return Err(bad(format!("truncated: {} bytes", bytes.len())));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(format!("format version {version}; this runtime reads version {VERSION}")));
    }
    let (body, hash) = bytes.split_at(bytes.len() - HASH);
    if Sha256::digest(body).as_slice() != hash {
        return Err(bad("checksum mismatch: the state is corrupt or truncated"));
    }
    if body[12..44] != fingerprint[..] {
        return Err(bad("the state was saved by a different model"));
    }
    let header_len = u32::from_le_bytes(body[44..48].try_into().expect("4 bytes")) as usize;
    let header_bytes = FIXED.checked_add(header_len).and_then(|end| body.get(FIXED..end)).ok_or_else(|| bad("header runs past the end"))?;
    let header: Header = serde_json::from_slice(header_bytes).map_err(|e| bad(format!("header: {e}")))?;
    let layout = limits.layout;
    let (layers, kv_heads, head_dim) = layout;
    if (header.layers, header.kv_heads, header.head_dim) != layout {
        return Err(bad(format!(
            "KV layout {}x{}x{} does not match the model's {layers}x{kv_heads}x{head_dim}",
            header.layers, header.kv_heads, header.head_dim
        )));
    }
    if header.dtype != "f32" {
        return Err(bad(format!("KV dtype `{}` is not supported", header.dtype)));
    }
    let n = header.tokens;
    if n > limits.context {
        return Err(bad(format!("{n} tokens do not fit the model's context of {}", limits.context)));
    }
    if let Some(r) = &header.resume {
        check_resume(r, limits.vocab)?;
    }
    let rest = &body[FIXED + header_len..];
    if payload_bytes(n as u64, layout) != Some(rest.len() as u64) {
        return Err(bad(format!("{} payload bytes do not hold {n} tokens of this model's cache", rest.len())));
    }
    // Sizes are now known to fit in `rest`, so this arithmetic cannot overflow.
    let per_tensor = kv_heads * n * head_dim;
    let (tok_bytes, kv_bytes) = rest.split_at(4 * n);
    let tokens: Vec<u32> = tok_bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    if let Some(t) = tokens.iter().find(|t| **t as usize >= limits.vocab) {
        return Err(bad(format!("token {t} is outside the vocabulary")));
    }
    let data: Vec<Vec<f32>> = if n == 0 {
        vec![Vec::new(); 2 * layers]
    } else {
        kv_bytes
            .chunks_exact(4 * per_tensor)
            .map(|t| t.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
            .collect()
    };
    let kv = KvSnapshot::from_f32(n, kv_heads, head_dim, data)?;
    Ok(SessionState { kv: KvSource::Saved(kv), tokens, resume: header.resume })
}

/// The unfinished generation's fields: options valid, every token id in the vocabulary, the
/// detokenizer's offsets inside its ids.
fn check_resume(r: &Resume, vocab: usize) -> Result<()> {
    r.options.validate().map_err(|e| bad(format!("saved options: {e}")))?;
    let outside = |t: &u32| *t as usize >= vocab;
    if outside(&r.next_token) || r.detok.ids().iter().any(outside) {
        return Err(bad("a saved token id is outside the vocabulary"));
    }
    r.detok.check().map_err(bad)
}
