//! A Llama decode step on the GPU: int4 weights (MatMulNBits layout) and the KV cache stay
//! resident; buffers, pipelines and bind groups are made once in [`GpuLlama::load`]; a step
//! writes at most 8 bytes (token and position), submits one command buffer and reads back
//! only the 4-byte token the GPU's argmax picked.

use super::context::{GpuContext, GpuCounters};
use super::kernels::{self, f32_bytes, AttnBuffers, Dispatch, GpuQ4, Pipelines};
use super::twin::{self, AttnShape};
use crate::backend::KvSnapshot;
#[cfg(feature = "tools")]
use crate::llama::{LayerWeights, LlamaWeights};
use crate::model::LlamaConfig;
#[cfg(feature = "tools")]
use crate::quant::reference as qref;
use crate::quant::Q4Weight;
use crate::{Error, Result};

/// One decoder layer with int4 linear weights (`[out][in]`, blocks along `in`).
#[derive(Debug, Clone)]
pub struct Q4Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Q4Weight,
    pub wk: Q4Weight,
    pub wv: Q4Weight,
    pub wo: Q4Weight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Q4Weight,
    pub w_up: Q4Weight,
    pub w_down: Q4Weight,
}

/// A Llama decoder with int4 linears and an int4 embedding table (the head too when tied):
/// what the exporter's `ExportOptions::int4` writes into MatMulNBits initializers.
#[derive(Debug, Clone)]
pub struct Q4Llama {
    pub cfg: LlamaConfig,
    pub embed: Q4Weight,
    pub layers: Vec<Q4Layer>,
    pub final_norm: Vec<f32>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Q4Weight>,
}

#[cfg(feature = "tools")]
impl Q4Llama {
    /// Quantize fp32 weights exactly as `llama::onnx_export` does for `ExportOptions::int4`.
    pub fn quantize(cfg: &LlamaConfig, w: &LlamaWeights, block_size: usize, symmetric: bool) -> Self {
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let q4 = |m: &[f32], n: usize, k: usize| qref::quantize_q4(m, n, k, block_size, symmetric);
        Q4Llama {
            cfg: cfg.clone(),
            embed: q4(&w.embed, cfg.vocab_size, h),
            layers: w
                .layers
                .iter()
                .map(|l| Q4Layer {
                    attn_norm: l.attn_norm.clone(),
                    wq: q4(&l.wq, q, h),
                    wk: q4(&l.wk, kv, h),
                    wv: q4(&l.wv, kv, h),
                    wo: q4(&l.wo, h, q),
                    ffn_norm: l.ffn_norm.clone(),
                    w_gate: q4(&l.w_gate, i, h),
                    w_up: q4(&l.w_up, i, h),
                    w_down: q4(&l.w_down, h, i),
                })
                .collect(),
            final_norm: w.final_norm.clone(),
            lm_head: w.lm_head.as_ref().map(|m| q4(m, cfg.vocab_size, h)),
        }
    }

    /// The fp32 weights these int4 tensors stand for (the reference forward pass's input).
    pub fn dequantized(&self) -> LlamaWeights {
        let d = qref::dequantize_q4;
        LlamaWeights {
            embed: d(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    attn_norm: l.attn_norm.clone(),
                    wq: d(&l.wq),
                    wk: d(&l.wk),
                    wv: d(&l.wv),
                    wo: d(&l.wo),
                    ffn_norm: l.ffn_norm.clone(),
                    w_gate: d(&l.w_gate),
                    w_up: d(&l.w_up),
                    w_down: d(&l.w_down),
                })
                .collect(),
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.as_ref().map(d),
        }
    }
}

/// The resident model and its per-step command list.
pub struct GpuLlama {
    ctx: GpuContext,
    pipes: Pipelines,
    cfg: LlamaConfig,
    max_ctx: usize,
    /// `{ token: u32, pos: u32 }`, read by embed/rope/kv_append/attention, token written by argmax.
    state: wgpu::Buffer,
    token_readback: wgpu::Buffer,
    logits: wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    /// Each layer's key and value cache, `[kv_heads][max_ctx][head_dim]` f32.
    kv_cache: Vec<[wgpu::Buffer; 2]>,
    /// Everything the bind groups refer to, owned for the model's lifetime.
    _weights: Vec<GpuQ4>,
    _buffers: Vec<wgpu::Buffer>,
    pos: usize,
}

impl GpuLlama {
    /// Upload `w` and build every buffer, pipeline and bind group a step needs, for contexts
    /// of up to `max_ctx` tokens.
    pub fn load(ctx: GpuContext, w: &Q4Llama, max_ctx: usize) -> Result<Self> {
        let cfg = w.cfg.clone();
        if max_ctx == 0 || max_ctx > cfg.max_position_embeddings {
            return Err(Error::InvalidOption {
                option: "maxContext",
                reason: format!("{max_ctx} is not in 1..={}", cfg.max_position_embeddings),
            });
        }
        if cfg.num_kv_heads == 0 || cfg.num_heads % cfg.num_kv_heads != 0 || cfg.head_dim % 2 != 0 {
            return Err(Error::InvalidModel(format!(
                "{} heads over {} kv heads of dim {} cannot run grouped-query attention",
                cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
            )));
        }
        let (h, qd, kvd, inter, vocab, hd) =
            (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size, cfg.vocab_size, cfg.head_dim);
        let f = |n: usize| (n * 4) as u64;
        let mut pipes = Pipelines::default();
        let mut bufs: Vec<wgpu::Buffer> = Vec::new();
        let mut weights: Vec<GpuQ4> = Vec::new();
        let mut dispatches = Vec::new();
        let mut kv_cache = Vec::new();

        let state = ctx.storage("state", 8)?;
        let x = ctx.storage("x", f(h))?;
        let xn = ctx.storage("x_norm", f(h))?;
        let q = ctx.storage("q", f(qd))?;
        let k = ctx.storage("k", f(kvd))?;
        let v = ctx.storage("v", f(kvd))?;
        let attn = ctx.storage("attn", f(qd))?;
        let tmp = ctx.storage("proj", f(h))?;
        let gate = ctx.storage("gate", f(inter))?;
        let up = ctx.storage("up", f(inter))?;
        let act = ctx.storage("act", f(inter))?;
        let logits = ctx.storage("logits", f(vocab))?;
        let scores = ctx.storage("scores", f(cfg.num_heads * max_ctx))?;
        let (cos, sin) = twin::rope_tables(hd, max_ctx, cfg.rope_theta);
        let cos = ctx.storage_init("rope_cos", &f32_bytes(&cos))?;
        let sin = ctx.storage_init("rope_sin", &f32_bytes(&sin))?;
        let shape = AttnShape { heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, head_dim: hd, max_ctx };

        let embed = GpuQ4::upload(&ctx, "embed_tokens", &w.embed)?;
        dispatches.push(embed.embed(&ctx, &mut pipes, &state, &x));
        for (l, lw) in w.layers.iter().enumerate() {
            let up4 = |name: &str, m: &Q4Weight| GpuQ4::upload(&ctx, &format!("layers.{l}.{name}"), m);
            let (wq, wk, wv, wo) = (up4("q_proj", &lw.wq)?, up4("k_proj", &lw.wk)?, up4("v_proj", &lw.wv)?, up4("o_proj", &lw.wo)?);
            let (wg, wu, wd) = (up4("gate_proj", &lw.w_gate)?, up4("up_proj", &lw.w_up)?, up4("down_proj", &lw.w_down)?);
            let attn_norm = ctx.storage_init("attn_norm", &f32_bytes(&lw.attn_norm))?;
            let ffn_norm = ctx.storage_init("ffn_norm", &f32_bytes(&lw.ffn_norm))?;
            let kc = ctx.storage("k_cache", f(kvd * max_ctx))?;
            let vc = ctx.storage("v_cache", f(kvd * max_ctx))?;
            let eps = cfg.rms_norm_eps;
            dispatches.extend([
                kernels::rms_norm(&ctx, &mut pipes, h, eps, 1, &x, &attn_norm, &xn),
                wq.gemv(&ctx, &mut pipes, &xn, &q, 1),
                wk.gemv(&ctx, &mut pipes, &xn, &k, 1),
                wv.gemv(&ctx, &mut pipes, &xn, &v, 1),
                kernels::rope(&ctx, &mut pipes, cfg.num_heads, hd, &state, &cos, &sin, &q),
                kernels::rope(&ctx, &mut pipes, cfg.num_kv_heads, hd, &state, &cos, &sin, &k),
                kernels::kv_append(&ctx, &mut pipes, kvd, hd, max_ctx, &state, &k, &v, &kc, &vc),
                kernels::attention(&ctx, &mut pipes, shape, AttnBuffers { state: &state, q: &q, kcache: &kc, vcache: &vc, scores: &scores, out: &attn }),
                wo.gemv(&ctx, &mut pipes, &attn, &tmp, 1),
                kernels::add(&ctx, &mut pipes, h, &x, &tmp),
                kernels::rms_norm(&ctx, &mut pipes, h, eps, 1, &x, &ffn_norm, &xn),
                wg.gemv(&ctx, &mut pipes, &xn, &gate, 1),
                wu.gemv(&ctx, &mut pipes, &xn, &up, 1),
                kernels::silu_mul(&ctx, &mut pipes, inter, &gate, &up, &act),
                wd.gemv(&ctx, &mut pipes, &act, &tmp, 1),
                kernels::add(&ctx, &mut pipes, h, &x, &tmp),
            ]);
            weights.extend([wq, wk, wv, wo, wg, wu, wd]);
            bufs.extend([attn_norm, ffn_norm]);
            kv_cache.push([kc, vc]);
        }
        let final_norm = ctx.storage_init("final_norm", &f32_bytes(&w.final_norm))?;
        dispatches.push(kernels::rms_norm(&ctx, &mut pipes, h, cfg.rms_norm_eps, 1, &x, &final_norm, &xn));
        let head = match &w.lm_head {
            Some(m) => Some(GpuQ4::upload(&ctx, "lm_head", m)?),
            None => None,
        };
        dispatches.push(head.as_ref().unwrap_or(&embed).gemv(&ctx, &mut pipes, &xn, &logits, 1));
        dispatches.push(kernels::argmax(&ctx, &mut pipes, vocab, &logits, &state));
        weights.push(embed);
        weights.extend(head);
        bufs.extend([x, xn, q, k, v, attn, tmp, gate, up, act, scores, cos, sin, final_norm]);
        let token_readback = ctx.readback("token", 4);
        Ok(GpuLlama { ctx, pipes, cfg, max_ctx, state, token_readback, logits, dispatches, kv_cache, _weights: weights, _buffers: bufs, pos: 0 })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    pub fn counters(&self) -> GpuCounters {
        self.ctx.counters()
    }

    /// Tokens in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forget the context (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Most tokens the cache holds.
    pub fn max_context(&self) -> usize {
        self.max_ctx
    }

    /// The first `self.pos()` positions of the cache, as the engine's host tensors (one
    /// readback per layer and kind).
    pub async fn download_kv(&self) -> Result<KvSnapshot> {
        let (kvh, hd, len) = (self.cfg.num_kv_heads, self.cfg.head_dim, self.pos);
        let mut data = Vec::with_capacity(2 * self.kv_cache.len());
        for buf in self.kv_cache.iter().flatten() {
            let all = kernels::download_f32(&self.ctx, buf, kvh * self.max_ctx * hd).await?;
            data.push((0..kvh).flat_map(|h| all[h * self.max_ctx * hd..][..len * hd].iter().copied()).collect());
        }
        KvSnapshot::from_f32(len, kvh, hd, data)
    }

    /// Replace the cache with `kv` (a snapshot of this layout); the next step continues after it.
    pub fn upload_kv(&mut self, kv: &KvSnapshot) -> Result<()> {
        let (kvh, hd) = (self.cfg.num_kv_heads, self.cfg.head_dim);
        if kv.len > self.max_ctx {
            return Err(Error::ContextOverflow { needed: kv.len, max: self.max_ctx });
        }
        if kv.tensors.len() != 2 * self.kv_cache.len() {
            return Err(Error::InvalidState("KV cache shape does not match this model".into()));
        }
        for (i, buf) in self.kv_cache.iter().flatten().enumerate() {
            let v = kv.values(i)?;
            if v.len() != kvh * kv.len * hd {
                return Err(Error::InvalidState("KV cache shape does not match this model".into()));
            }
            for h in 0..kvh {
                let at = (h * self.max_ctx * hd * 4) as u64;
                self.ctx.write(buf, at, &f32_bytes(&v[h * kv.len * hd..][..kv.len * hd]));
            }
        }
        self.pos = kv.len;
        Ok(())
    }

    /// Run one token through every layer and return the greedy next token. `Some(id)` feeds a
    /// prompt token; `None` feeds the token the previous step picked, without it leaving the GPU.
    pub async fn step(&mut self, token: Option<u32>) -> Result<u32> {
        if self.pos >= self.max_ctx {
            return Err(Error::ContextOverflow { needed: self.pos + 1, max: self.max_ctx });
        }
        let pos = self.pos as u32;
        match token {
            Some(t) if t as usize >= self.cfg.vocab_size => {
                return Err(Error::InvalidOption { option: "token", reason: format!("id {t} is outside the vocabulary of {}", self.cfg.vocab_size) })
            }
            Some(t) => self.ctx.write(&self.state, 0, &[t.to_le_bytes(), pos.to_le_bytes()].concat()),
            None if self.pos == 0 => {
                return Err(Error::InvalidOption { option: "token", reason: "the first step needs a prompt token".into() })
            }
            None => self.ctx.write(&self.state, 4, &pos.to_le_bytes()),
        }
        let mut enc = self.ctx.encoder();
        self.pipes.record(&mut enc, &self.dispatches);
        enc.copy_buffer_to_buffer(&self.state, 0, &self.token_readback, 0, 4);
        self.ctx.submit(enc);
        let raw = self.ctx.read(&self.token_readback, 4).await?;
        self.pos += 1;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    /// The last step's logits (tests and callers that ask; allocates a readback buffer).
    pub async fn logits(&self) -> Result<Vec<f32>> {
        kernels::download_f32(&self.ctx, &self.logits, self.cfg.vocab_size).await
    }

    /// Greedy decoding from a fresh context, as `llama::reference::greedy`.
    pub async fn greedy(&mut self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>> {
        self.reset();
        let mut next = None;
        for t in prompt {
            next = Some(self.step(Some(*t)).await?);
        }
        let Some(mut next) = next else {
            return Err(Error::InvalidOption { option: "prompt", reason: "empty".into() });
        };
        let mut out = Vec::with_capacity(max_new);
        for i in 0..max_new {
            out.push(next);
            if i + 1 < max_new {
                next = self.step(None).await?;
            }
        }
        Ok(out)
    }
}
