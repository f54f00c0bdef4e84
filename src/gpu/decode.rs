//! The Llama forward pass on the GPU: int4 weights (MatMulNBits layout) and the KV cache stay
//! resident; buffers, pipelines and bind groups are made once in [`GpuLlama::load`], sized for
//! steps of up to [`PREFILL_CHUNK`] tokens. A decode step writes 8 bytes (position and row
//! count), submits one command buffer and reads back only the 4-byte token the GPU picked
//! (argmax, or `sample.wgsl` with the step's 32 bytes of sampling options and, with a
//! repetition penalty, the history bitmap's changed words); a prompt runs a chunk of tokens per
//! submit (GEMM linears, causal attention over the chunk's rows) and reads back only the last
//! chunk's token.

use super::context::{GpuContext, GpuCounters};
use super::kernels::{self, f32_bytes, AttnBuffers, Dispatch, Pipelines, Rope, RopeKvBuffers};
use super::nbits::{Activations, BlockSpec, BlockWeight, GpuNBits, NormInput, WeightShape, ZeroPointKind};
use super::twin::{self, AttnShape};
use crate::backend::KvSnapshot;
use crate::backend::SampleParams;
#[cfg(feature = "tools")]
use crate::llama::{LayerWeights, LlamaWeights};
use crate::model::LlamaConfig;
#[cfg(feature = "tools")]
use crate::quant::reference as qref;
use crate::{Error, Result};

/// One decoder layer with block-quantized linear weights (`[out][in]`, blocks along `in`).
#[derive(Debug, Clone)]
pub struct QuantLayer {
    pub attn_norm: Vec<f32>,
    pub wq: BlockWeight,
    pub wk: BlockWeight,
    pub wv: BlockWeight,
    pub wo: BlockWeight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: BlockWeight,
    pub w_up: BlockWeight,
    pub w_down: BlockWeight,
}

impl QuantLayer {
    /// The seven linears, in [`GpuLayer::linears`]' order.
    fn linears(&self) -> [&BlockWeight; 7] {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.w_gate, &self.w_up, &self.w_down]
    }
}

/// A Llama decoder on the host with block-quantized linears and embedding table (the head too
/// when tied): what the exporter writes into MatMulNBits initializers.
#[derive(Debug, Clone)]
pub struct QuantLlama {
    pub cfg: LlamaConfig,
    pub embed: BlockWeight,
    pub layers: Vec<QuantLayer>,
    pub final_norm: Vec<f32>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<BlockWeight>,
}

impl QuantLlama {
    /// Every weight on the GPU.
    pub fn upload(&self, ctx: &GpuContext) -> Result<GpuWeights> {
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(l, lw)| {
                let linears = lw.linears().iter().zip(LINEARS).map(|(w, name)| GpuNBits::upload(ctx, &format!("layers.{l}.{name}"), w)).collect::<Result<Vec<_>>>()?;
                let Ok(linears) = <[GpuNBits; 7]>::try_from(linears) else { unreachable!("seven linears") };
                Ok(GpuLayer { attn_norm: lw.attn_norm.clone(), linears, ffn_norm: lw.ffn_norm.clone() })
            })
            .collect::<Result<_>>()?;
        Ok(GpuWeights {
            cfg: self.cfg.clone(),
            embed: GpuNBits::upload(ctx, "embed_tokens", &self.embed)?,
            layers,
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.as_ref().map(|w| GpuNBits::upload(ctx, "lm_head", w)).transpose()?,
        })
    }
}

/// A decoder layer's linears by edge-llm's exporter's names (`model.layers.{l}.{name}`), in
/// [`GpuLayer::linears`]' order: what the GPU loader looks for, and the buffers' labels.
pub(super) const LINEARS: [&str; 7] = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

/// A decoder layer's weights on the GPU, its norms on the host (they are uploaded with the
/// step's buffers).
pub struct GpuLayer {
    pub attn_norm: Vec<f32>,
    /// q, k, v, o, gate, up, down.
    pub linears: [GpuNBits; 7],
    pub ffn_norm: Vec<f32>,
}

/// A Llama's weights on the GPU: what [`GpuLlama::build`] runs.
pub struct GpuWeights {
    pub cfg: LlamaConfig,
    pub embed: GpuNBits,
    pub layers: Vec<GpuLayer>,
    pub final_norm: Vec<f32>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<GpuNBits>,
}

#[cfg(feature = "tools")]
impl QuantLlama {
    /// A model of `cfg`'s shapes with int4 block-32 symmetric weights of seeded random values
    /// (scales small enough that activations stay finite): what `bench-gpu --synthetic`
    /// times, since a decode step's time does not depend on the weights' values and no file
    /// has to reach the machine.
    pub fn synthetic(cfg: &LlamaConfig, seed: u64) -> Self {
        use super::nbits::{BlockSpec, ZeroPointKind, ZeroPoints};
        let mut state = seed;
        let mut weight = |n: usize, k: usize| {
            let spec = BlockSpec { n, k, bits: 4, block_size: 32, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false };
            let mut data = vec![0u8; n * spec.row_bytes(super::nbits::Field::Data)];
            for chunk in data.chunks_mut(8) {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let bytes = (z ^ (z >> 31)).to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            let scale = 0.5 / (8.0 * (k as f32).sqrt());
            BlockWeight { spec, data, scales: vec![scale; n * spec.blocks()], zero_points: ZeroPoints::Middle, bias: Vec::new() }
        };
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let embed = weight(cfg.vocab_size, h);
        let layers = (0..cfg.num_layers)
            .map(|_| QuantLayer {
                attn_norm: vec![1.0; h],
                wq: weight(q, h),
                wk: weight(kv, h),
                wv: weight(kv, h),
                wo: weight(h, q),
                ffn_norm: vec![1.0; h],
                w_gate: weight(i, h),
                w_up: weight(i, h),
                w_down: weight(h, i),
            })
            .collect();
        let lm_head = (!cfg.tie_word_embeddings).then(|| weight(cfg.vocab_size, h));
        QuantLlama { cfg: cfg.clone(), embed, layers, final_norm: vec![1.0; h], lm_head }
    }

    /// Bytes of weights a decode step reads: every linear and the head (the embedding only
    /// where it is the head: its gather reads one row).
    pub fn decode_bytes(&self) -> u64 {
        self.shapes().decode_bytes()
    }

    /// Its weights' [`ModelShapes`] (float activations).
    pub fn shapes(&self) -> ModelShapes {
        let shape = |w: &BlockWeight| WeightShape { spec: w.spec, activations: Activations::Float };
        ModelShapes { layers: self.layers.iter().map(|l| l.linears().map(shape)).collect(), embed: shape(&self.embed), head: self.lm_head.as_ref().map(shape) }
    }

    /// Quantize fp32 weights to int4 exactly as `llama::onnx_export` does for `ExportOptions::int4`.
    pub fn quantize(cfg: &LlamaConfig, w: &LlamaWeights, block_size: usize, symmetric: bool) -> Self {
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let q4 = |m: &[f32], n: usize, k: usize| BlockWeight::from(qref::quantize_q4(m, n, k, block_size, symmetric));
        QuantLlama {
            cfg: cfg.clone(),
            embed: q4(&w.embed, cfg.vocab_size, h),
            layers: w
                .layers
                .iter()
                .map(|l| QuantLayer {
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

    /// The fp32 weights these tensors stand for (the reference forward pass's input).
    pub fn dequantized(&self) -> LlamaWeights {
        let d = BlockWeight::dequantized;
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

/// What a decode step reads and records, known before a load binds anything: each layer's
/// linears (q, k, v, o, gate, up, down), the embedding table and the untied head, each as a
/// [`WeightShape`]. `auto`'s probe and the load-time tuning estimate a step from it.
#[derive(Debug, Clone)]
pub struct ModelShapes {
    pub layers: Vec<[WeightShape; 7]>,
    pub embed: WeightShape,
    pub head: Option<WeightShape>,
}

impl ModelShapes {
    /// A model of `cfg`'s shapes whose every weight is int4 in symmetric blocks of `block`
    /// (`QuantLlama::quantize`'s, the synthetic models' of `bench-gpu`).
    pub fn int4(cfg: &LlamaConfig, block: usize) -> Self {
        let w = |n: usize, k: usize| WeightShape {
            spec: BlockSpec { n, k, bits: 4, block_size: block, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false },
            activations: Activations::Float,
        };
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let layer = [w(q, h), w(kv, h), w(kv, h), w(h, q), w(i, h), w(i, h), w(h, i)];
        ModelShapes { layers: vec![layer; cfg.num_layers], embed: w(cfg.vocab_size, h), head: (!cfg.tie_word_embeddings).then(|| w(cfg.vocab_size, h)) }
    }

    /// Bytes of weights a decode step reads: every linear's and the head's (the embedding's
    /// where it is the head; its gather reads one row).
    pub fn decode_bytes(&self) -> u64 {
        let linears: usize = self.layers.iter().flatten().map(|w| w.spec.gpu_bytes()).sum();
        (linears + self.head.unwrap_or(self.embed).spec.gpu_bytes()) as u64
    }

    /// Compute dispatches a greedy decode step records on `ctx` (`cfg` gives the heads' width),
    /// as [`GpuLlama::build`] binds them (`GpuLlama::dispatches(1)` after a load; the dispatch
    /// test checks they agree on every format), short of a context deep enough for the
    /// attention to split. Per layer: q, k and v as one product where they stack
    /// ([`WeightShape::stack`]), gate and up too; each residual add with its norm inside the
    /// products after it where the context fuses norms ([`GpuContext::fuses_norm`]) and every
    /// one of them can ([`WeightShape::fuses`]), else on its own (rounding int8 blocks where
    /// their nodes ask for them), then a per-tensor rounding where they ask for it; the attention with RoPE and the cache append fused in (heads wider
    /// than [`kernels::ATTENTION_MAX_HEAD_DIM`]: RoPE with the append on its own first;
    /// rounding int8 blocks for the output linear where its heads are whole blocks); the
    /// output linear after a rounding the attention did not do; down with SiLU·mul fused into its input where it can,
    /// else after `silu_mul` (rounding int8 blocks) and a per-tensor rounding; every product one dispatch per part, and its
    /// bias one more. Then the embedding gather (a dispatch per part) before, and after, the
    /// last add with the final norm as one with the head as the layers' products, and the
    /// pick. An int4 model whose weights stack: 7 a layer and 4 (SmolLM2-135M: 214), 5 a
    /// layer and 3 with the norms fused (153), 8 and 4 with the per-row GEMV, which fuses
    /// nothing. A prefill chunk runs all of those on their own (9 a layer and 5).
    pub fn decode_dispatches(&self, cfg: &LlamaConfig, ctx: &GpuContext) -> usize {
        let max = kernels::max_binding(ctx.limits());
        let product = |w: &WeightShape| w.product_dispatches(max);
        // After a norm, int8 blocks are rounded by the norm's dispatch; per tensor on its own.
        let normed = |ws: &[WeightShape]| {
            let products: usize = ws.iter().map(product).sum();
            match ctx.fuses_norm() && ws.iter().all(|w| w.fuses(ctx)) {
                true => products,
                false => 1 + ws.iter().any(|w| w.activations == Activations::Uint8Tensor) as usize + products,
            }
        };
        let stacked = |ws: &[WeightShape]| {
            let parts: Vec<(WeightShape, usize)> = ws.iter().map(|w| (*w, w.parts(max))).collect();
            WeightShape::stack(&parts, max).map_or_else(|| ws.to_vec(), |s| vec![s])
        };
        let attention = 1 + (cfg.head_dim > kernels::ATTENTION_MAX_HEAD_DIM) as usize;
        let layer = |&[q, k, v, o, gate, up, down]: &[WeightShape; 7]| {
            let down = if down.fuses(ctx) { product(&down) } else { 1 + (down.activations == Activations::Uint8Tensor) as usize + product(&down) };
            // The attention rounds o's int8 blocks where a head is whole blocks.
            let round_o = o.activations == Activations::Uint8Tensor || (o.activations == Activations::Int8Blocks && cfg.head_dim % 32 != 0);
            normed(&stacked(&[q, k, v])) + attention + round_o as usize + product(&o) + normed(&stacked(&[gate, up])) + down
        };
        let head = self.head.unwrap_or(self.embed);
        self.embed.parts(max) + self.layers.iter().map(layer).sum::<usize>() + normed(&[head]) + 1
    }
}

/// Most prompt tokens one prefill submit runs (a chunk; longer prompts take several; fewer
/// where the adapter's binding limit requires, see [`plan_chunk`]). The activation buffers are
/// sized for it at load, the attention scratch too (`[chunk][heads]
/// [max_ctx]` f32: SmolLM2 at 2048 positions, 4.7 MB). The CPU path's `cpu::PREFILL_CHUNK`.
pub const PREFILL_CHUNK: usize = 64;

/// Most prompt tokens one step takes for a model that quantizes activations per tensor
/// (`DynamicQuantizeLinear` before `MatMulInteger`): its scale must see the whole prompt, as
/// onnxruntime's run (and the CPU backend's) does, so prompts up to this long run in one step;
/// longer ones get a scale per chunk of this many. Bounded for attention's scores buffer
/// (`[rows][heads][max_ctx]` f32: SmolLM2 at 2048 positions, 37.7 MB).
pub const WHOLE_PROMPT_CHUNK: usize = 512;

/// Byte offset of `tokens` in the step state `{ pos: u32, rows: u32, tokens: [u32; chunk] }`
/// every kernel reads: the CPU writes `pos` and `rows` each step (and a prompt chunk's
/// tokens); argmax.wgsl writes its pick to `tokens[0]`, which the next decode step embeds.
const TOKENS_AT: u64 = 8;

/// One kernel of the forward pass, bound once at load.
enum Op {
    Run(Dispatch),
    /// One dispatch per part of a weight split by rows (the embedding gather).
    Parts(Vec<Dispatch>),
    /// A linear layer bound both ways: the GEMV for one row (decode), the tiled GEMM (each
    /// weight read once per 32 rows) for a prefill chunk; a dispatch per part of the weight.
    Linear { gemv: Vec<Dispatch>, gemm: Vec<Dispatch> },
    /// RoPE with the cache append, and the attention, bound three ways: for a prefill chunk
    /// `rope_kv.wgsl` then one workgroup per query head and row (`prefill`); for a decode step
    /// one workgroup per query head with RoPE and the append fused in (`fused`; heads wider
    /// than [`kernels::ATTENTION_MAX_HEAD_DIM`] have none and run the prefill's two), or, where
    /// its context reaches `split_from` positions, split over positions (RoPE fused) and added
    /// (`split`: [`kernels::attention_split`]).
    Attention { prefill: [Dispatch; 2], fused: Option<Dispatch>, split: Option<[Dispatch; 2]>, split_from: usize },
}

impl Op {
    /// The split attention's dispatches, where a step of `rows` tokens from position `pos` runs
    /// them.
    fn split_at(&self, rows: usize, pos: usize) -> Option<&[Dispatch; 2]> {
        match self {
            Op::Attention { split: Some(split), split_from, .. } if rows == 1 && pos + 1 >= *split_from => Some(split),
            _ => None,
        }
    }

    /// The dispatches of a step of `rows` tokens from position `pos`.
    fn for_step(&self, rows: usize, pos: usize) -> &[Dispatch] {
        if let Some(split) = self.split_at(rows, pos) {
            return split;
        }
        match self {
            Op::Run(d) => std::slice::from_ref(d),
            Op::Parts(d) => d,
            Op::Linear { gemv, .. } if rows == 1 => gemv,
            Op::Linear { gemm, .. } => gemm,
            Op::Attention { fused: Some(fused), .. } if rows == 1 => std::slice::from_ref(fused),
            Op::Attention { prefill, .. } => prefill,
        }
    }
}

/// Rows of a prefill chunk the adapter's binding limit `max` allows (at most `most` and
/// `max_ctx`): every activation buffer holds a chunk's rows. Checks the buffers sized by
/// the context too (a layer's KV cache, the logits); what does not fit even for one row is
/// `UnsupportedBackend`, naming the buffer and the limit.
pub fn plan_chunk(cfg: &LlamaConfig, max_ctx: usize, max: u64, most: usize) -> Result<usize> {
    let too_big = |what: &str, bytes: u64| {
        Error::UnsupportedBackend(format!(
            "webgpu: {what} takes {bytes} bytes, more than the adapter binds as one storage buffer ({max} bytes: maxStorageBufferBindingSize / maxBufferSize)"
        ))
    };
    let fixed = [
        ("a layer's key or value cache", cfg.kv_dim() * max_ctx),
        ("the logits", cfg.vocab_size),
        ("the RoPE table", max_ctx * cfg.head_dim / 2),
    ];
    for (what, floats) in fixed {
        if floats as u64 * 4 > max {
            return Err(too_big(what, floats as u64 * 4));
        }
    }
    // f32 values per row of the widest chunk buffer: activations, or attention's scores.
    // (q, k and v side by side; gate and up side by side.)
    let row = [cfg.hidden_size, cfg.q_dim() + 2 * cfg.kv_dim(), 2 * cfg.intermediate_size, cfg.num_heads * max_ctx].into_iter().max().unwrap_or(1) as u64 * 4;
    if row > max {
        return Err(too_big("one row of the activations", row));
    }
    Ok(most.min(max_ctx).min((max / row) as usize))
}

/// How a step chooses the next token on the GPU.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// `argmax.wgsl`: the largest logit, lowest id on ties.
    Argmax,
    /// `sample.wgsl`: `generate::sample_with`'s choice with `params` (its uniform
    /// number drawn on the CPU), the repetition penalty over `history`.
    Sample { params: SampleParams, history: &'a [u32] },
}

/// The resident model and its command lists.
pub struct GpuLlama {
    ctx: GpuContext,
    pipes: Pipelines,
    cfg: LlamaConfig,
    max_ctx: usize,
    chunk: usize,
    /// The step state (see [`TOKENS_AT`]).
    state: wgpu::Buffer,
    token_readback: wgpu::Buffer,
    /// The residual stream `[chunk][hidden]`, and its last row, copied out for a chunk's head
    /// (a step of one row writes it the sum of the last add).
    x: wgpu::Buffer,
    x_last: wgpu::Buffer,
    logits: wgpu::Buffer,
    /// Embedding and every layer, for a step's rows.
    body: Vec<Op>,
    /// After a chunk of rows: the last layer's residual add for every row (none without
    /// layers), then, on the last row copied to `x_last`, the final norm (`rms_norm`).
    final_add: Option<Dispatch>,
    final_norm: Dispatch,
    /// After a step of one row (a decode step): the last add and the final norm as one
    /// (`add_rms_norm` of the stream's row, its sum written to `x_last`; for a head on int8
    /// blocks, rounded by it too).
    final_add_norm: Dispatch,
    /// The head's rounding where its linear asks: after a chunk's norm, and after a row's
    /// where that does not round (`row_rounds`: per tensor).
    head_round: Option<Dispatch>,
    row_rounds: bool,
    /// The head's GEMV after either norm, on one row.
    head: Vec<Dispatch>,
    /// Where the context fuses norms and the head's GEMV can: for a step of one row, the head
    /// GEMV with the last add and the final norm in it, in place of `final_add_norm` and `head`.
    head_fused: Option<Vec<Dispatch>>,
    argmax: Dispatch,
    sample: Dispatch,
    /// `sample.wgsl`'s options (written each sampled step) and the penalty's history bitmap,
    /// with the host's copy of what the GPU holds (a step writes only the words that changed).
    sample_opts: wgpu::Buffer,
    seen: wgpu::Buffer,
    seen_host: Vec<u32>,
    /// Each layer's key and value cache, `[kv_heads][max_ctx][head_dim]` f32.
    kv_cache: Vec<[wgpu::Buffer; 2]>,
    /// The weights the bind groups refer to, owned for the model's lifetime (q, k and v stacked
    /// into one where they can be; gate and up).
    _weights: Vec<GpuNBits>,
    /// Each loaded weight's parts, in load order (see [`GpuLlama::weight_parts`]).
    parts: Vec<usize>,
    _buffers: Vec<wgpu::Buffer>,
    pos: usize,
    /// Greedy steps a decode submit chains beyond the one asked for
    /// ([`super::GpuOptions::decode_ahead`]), and the `(position, rows)` words each copies into
    /// the step state.
    ahead: usize,
    ahead_state: Option<wgpu::Buffer>,
    /// Greedy steps run ahead of the caller, in order: the token each fed and the token picked
    /// after it; their cache entries follow `pos`. Anything but the step feeding the first
    /// one's token drops them.
    chain: std::collections::VecDeque<(u32, u32)>,
}

impl GpuLlama {
    /// Upload `w` and [`GpuLlama::build`] on it.
    pub fn load(ctx: GpuContext, w: &QuantLlama, max_ctx: usize) -> Result<Self> {
        let uploaded = w.upload(&ctx)?;
        Self::build(ctx, uploaded, max_ctx)
    }

    /// Build every buffer, pipeline and bind group a step needs over weights already on the
    /// GPU, for contexts of up to `max_ctx` tokens and steps of up to [`PREFILL_CHUNK`] tokens.
    pub fn build(ctx: GpuContext, w: GpuWeights, max_ctx: usize) -> Result<Self> {
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
        let per_tensor = w.layers.iter().flat_map(|l| &l.linears).chain(w.lm_head.iter()).any(|l| l.activations == Activations::Uint8Tensor);
        let most = if per_tensor { WHOLE_PROMPT_CHUNK } else { PREFILL_CHUNK };
        let chunk = plan_chunk(&cfg, max_ctx, kernels::max_binding(ctx.limits()), most)?;
        // `n` f32 per row, for a chunk's rows.
        let rows = |n: usize| (chunk * n * 4) as u64;
        let mut pipes = Pipelines::default();
        let mut bufs: Vec<wgpu::Buffer> = Vec::new();
        let mut weights: Vec<GpuNBits> = Vec::new();
        // Each loaded weight's parts (before stacking), in load order.
        let mut parts: Vec<usize> = Vec::new();
        let mut body = Vec::new();
        let mut kv_cache = Vec::new();

        let state = ctx.storage("state", TOKENS_AT + 4 * chunk as u64)?;
        // The residual stream: the embedding lands in the first; each residual add writes its
        // sum to the other (the product after it reads one while a workgroup writes the
        // other: `gemv_rows_x_norm.wgsl`), so the stream alternates between the two.
        let stream = [ctx.storage("x", rows(h))?, ctx.storage("x_alt", rows(h))?];
        let mut cur = 0;
        // What the first layer's attention norm adds to the embedding (no projection before it):
        // every layer's norm is then the same residual add and norm.
        let zeros = ctx.storage("zeros", rows(h))?;
        let xn = ctx.storage("x_norm", rows(h))?;
        // A row's q, k and v side by side (one product where their weights stack).
        let qkv_row = qd + 2 * kvd;
        let qkv = ctx.storage("qkv", rows(qkv_row))?;
        let attn = ctx.storage("attn", rows(qd))?;
        let tmp = ctx.storage("proj", rows(h))?;
        // Inputs rounded to int8 blocks, for linears that compute on them.
        let (xn_q, attn_q, act_q) = (ctx.storage("x_norm_q8", rows(h))?, ctx.storage("attn_q8", rows(qd))?, ctx.storage("act_q8", rows(inter))?);
        // A row's gate and up side by side.
        let gate_up = ctx.storage("gate_up", rows(2 * inter))?;
        let act = ctx.storage("act", rows(inter))?;
        let scores = ctx.storage("scores", rows(cfg.num_heads * max_ctx))?;
        let x_last = ctx.storage("x_last", (h * 4) as u64)?;
        // The head's one row, for a kernel that reads the row count from a step state.
        let head_state = ctx.storage_init("head_state", &[0u32, 1].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())?;
        let logits = ctx.storage("logits", (vocab * 4) as u64)?;
        let (cos, sin) = twin::rope_tables(hd, max_ctx, cfg.rope_theta);
        let cos = ctx.storage_init("rope_cos", &f32_bytes(&cos))?;
        let sin = ctx.storage_init("rope_sin", &f32_bytes(&sin))?;
        let shape = AttnShape { heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, head_dim: hd, max_ctx };
        // Heads up to ATTENTION_MAX_HEAD_DIM wide: a decode step's attention does RoPE and the
        // cache append itself, and may split; wider ones run rope_kv and the whole kernel.
        let fuses_rope = hd <= kernels::ATTENTION_MAX_HEAD_DIM;
        // The split attention's scratch, for a decode step's one row, where a step can reach
        // the split (none on a CPU rasterizer, whose default never splits: nothing made for it).
        let split_from = ctx.attention_split_from();
        let part = match fuses_rope && split_from <= max_ctx {
            true => Some(ctx.storage("attention_part", (kernels::attention_part_floats(shape) * 4) as u64)?),
            false => None,
        };

        let GpuWeights { embed, layers, final_norm, lm_head: head_w, .. } = w;
        body.push(Op::Parts(embed.embed(&ctx, &mut pipes, &state, &stream[0])));
        let mut first = true;
        let layer_count = layers.len();
        for lw in layers {
            let [wq, wk, wv, wo, wg, wu, wd] = lw.linears;
            let attn_norm = ctx.storage_init("attn_norm", &f32_bytes(&lw.attn_norm))?;
            let ffn_norm = ctx.storage_init("ffn_norm", &f32_bytes(&lw.ffn_norm))?;
            let kc = ctx.storage("k_cache", (kvd * max_ctx * 4) as u64)?;
            let vc = ctx.storage("v_cache", (kvd * max_ctx * 4) as u64)?;
            let eps = cfg.rms_norm_eps;
            // Where a linear's node asks for rounded activations, its input is rounded first
            // (once for the linears sharing it) and it reads the rounded copy; after a norm or
            // SiLU·mul (`by_producer`), int8 blocks are rounded by that dispatch itself.
            let mut round = |users: &[&GpuNBits], k: usize, from: &wgpu::Buffer, to: &wgpu::Buffer, by_producer: bool| -> Result<Option<Op>> {
                let mut kinds = users.iter().map(|w| w.activations).filter(|a| *a != Activations::Float);
                let Some(kind) = kinds.next() else { return Ok(None) };
                if kinds.any(|a| a != kind) {
                    return Err(Error::UnsupportedBackend("webgpu: linears reading one input round it differently".into()));
                }
                Ok(match kind {
                    Activations::Uint8Tensor => Some(Op::Run(kernels::quantize_tensor(&ctx, &mut pipes, k, &state, from, to))),
                    _ if by_producer => None,
                    _ => Some(Op::Run(kernels::round_q8(&ctx, &mut pipes, k, from, to))),
                })
            };
            // The attention rounds its heads' int8 blocks for o where they are whole blocks.
            let attention_rounds = wo.activations == Activations::Int8Blocks && hd % 32 == 0;
            let (round_qkv, round_o) = (round(&[&wq, &wk, &wv], h, &xn, &xn_q, true)?, round(&[&wo], qd, &attn, &attn_q, attention_rounds)?);
            let (round_gate_up, round_down) = (round(&[&wg, &wu], h, &xn, &xn_q, true)?, round(&[&wd], inter, &act, &act_q, true)?);
            let linear = |pipes: &mut Pipelines, w: &GpuNBits, x: &wgpu::Buffer, rounded: &wgpu::Buffer, y: &wgpu::Buffer| {
                let x = if w.activations != Activations::Float { rounded } else { x };
                Op::Linear { gemv: w.gemv(&ctx, pipes, &state, x, y), gemm: w.gemm(&ctx, pipes, &state, x, y) }
            };
            // Linears reading the norm of the residual stream plus `tmp` (the sum written to
            // the stream's other buffer): where the context fuses norms, a decode step's GEMVs
            // with the add and norm fused in where every one of them can (one dispatch less),
            // else `add_rms_norm.wgsl` first (a prefill chunk always), then the rounding where
            // they ask for it: int8 blocks by the norm's dispatch (into the rounded copy).
            let normed = |pipes: &mut Pipelines, ws: &[GpuNBits], norm: NormInput, rounding: Option<Op>, y: &wgpu::Buffer| -> Vec<Op> {
                let separate = match ws.iter().any(|w| w.activations == Activations::Int8Blocks) {
                    true => kernels::add_rms_norm_q8(&ctx, pipes, h, norm, &xn_q),
                    false => kernels::add_rms_norm(&ctx, pipes, h, norm, &xn),
                };
                let fused: Option<Vec<Vec<Dispatch>>> = match ctx.fuses_norm() {
                    true => ws.iter().map(|w| w.gemv_norm(&ctx, pipes, &state, norm, y)).collect(),
                    false => None,
                };
                match fused {
                    Some(fused) => {
                        let mut before = Some(separate);
                        let gemm = |w: &GpuNBits, pipes: &mut Pipelines, before: Option<Dispatch>| before.into_iter().chain(w.gemm(&ctx, pipes, &state, &xn, y)).collect();
                        ws.iter().zip(fused).map(|(w, gemv)| Op::Linear { gemv, gemm: gemm(w, pipes, before.take()) }).collect()
                    }
                    None => std::iter::once(Op::Run(separate)).chain(rounding).chain(ws.iter().map(|w| linear(pipes, w, &xn, &xn_q, y))).collect(),
                }
            };
            parts.extend([&wq, &wk, &wv, &wo, &wg, &wu, &wd].map(|w| w.parts.len()));
            // q, k and v as one weight where they stack (one product), else each writing its
            // columns of the row; gate and up alike.
            let qkv_w = match GpuNBits::stacked(&ctx, "qkv", &[&wq, &wk, &wv])? {
                Some(w) => vec![w],
                None => vec![wq.placed(&ctx, 0, qkv_row), wk.placed(&ctx, qd, qkv_row), wv.placed(&ctx, qd + kvd, qkv_row)],
            };
            let gate_up_w = match GpuNBits::stacked(&ctx, "gate_up", &[&wg, &wu])? {
                Some(w) => vec![w],
                None => vec![wg.placed(&ctx, 0, 2 * inter), wu.placed(&ctx, inter, 2 * inter)],
            };
            drop((wq, wk, wv, wg, wu));
            let lo = linear(&mut pipes, &wo, &attn, &attn_q, &tmp);
            // The down projection: its GEMV reads SiLU(gate)·up straight from the gate and up
            // products where it can (a float-input rows GEMV: one dispatch less a decode step);
            // a prefill chunk, and any other GEMV, runs silu_mul.wgsl first (rounding to int8
            // blocks where down asks for them).
            let silu = match wd.activations {
                Activations::Int8Blocks => kernels::silu_mul_q8(&ctx, &mut pipes, inter, &gate_up, &act_q),
                _ => kernels::silu_mul(&ctx, &mut pipes, inter, &gate_up, &act),
            };
            let glu = if wd.activations == Activations::Float { wd.gemv_glu(&ctx, &mut pipes, &state, &gate_up, &tmp) } else { None };
            let down: Vec<Op> = match glu {
                Some(gemv) => vec![Op::Linear { gemv, gemm: std::iter::once(silu).chain(wd.gemm(&ctx, &mut pipes, &state, &act, &tmp)).collect() }],
                None => std::iter::once(Op::Run(silu)).chain(round_down).chain([linear(&mut pipes, &wd, &act, &act_q, &tmp)]).collect(),
            };
            let attn_out = if attention_rounds { &attn_q } else { &attn };
            let attn_bufs = |scratch| AttnBuffers { state: &state, q: &qkv, kcache: &kc, vcache: &vc, scratch, out: attn_out, cos: &cos, sin: &sin };
            // The attention norm with the previous layer's last residual add (the first layer's
            // adds zeros to the embedding), then q, k and v.
            let resid = if first { &zeros } else { &tmp };
            let norm = NormInput { x: &stream[cur], resid, gain: &attn_norm, x_sum: &stream[1 - cur], eps };
            body.extend(normed(&mut pipes, &qkv_w, norm, round_qkv, &qkv));
            cur = 1 - cur;
            first = false;
            let rope_bufs = RopeKvBuffers { state: &state, cos: &cos, sin: &sin, qkv: &qkv, kcache: &kc, vcache: &vc };
            let prefill = [kernels::rope_kv(&ctx, &mut pipes, shape, rope_bufs), kernels::attention_with(&ctx, &mut pipes, shape, attn_bufs(&scores), Rope::Before, attention_rounds)];
            let fused = fuses_rope.then(|| kernels::attention_with(&ctx, &mut pipes, shape, attn_bufs(&scores), Rope::Fused, attention_rounds));
            let split = part.as_ref().map(|part| kernels::attention_split_with(&ctx, &mut pipes, shape, attn_bufs(part), Rope::Fused, attention_rounds));
            body.push(Op::Attention { prefill, fused, split, split_from });
            body.extend(round_o);
            body.push(lo);
            let norm = NormInput { x: &stream[cur], resid: &tmp, gain: &ffn_norm, x_sum: &stream[1 - cur], eps };
            body.extend(normed(&mut pipes, &gate_up_w, norm, round_gate_up, &gate_up));
            cur = 1 - cur;
            // Its residual add runs in the next layer's norm, the last layer's below.
            body.extend(down);
            weights.extend(qkv_w.into_iter().chain([wo]).chain(gate_up_w).chain([wd]));
            bufs.extend([attn_norm, ffn_norm]);
            kv_cache.push([kc, vc]);
        }
        // The last layer's residual add and the final norm: for a chunk, the add over its rows,
        // then the norm of the last (copied to `x_last`); a decode step's row is the chunk's
        // only one, read in place: the add and norm as one (the sum lands in `x_last`), or,
        // where the context fuses norms, inside the head's GEMV.
        let final_gain = ctx.storage_init("final_norm", &f32_bytes(&final_norm))?;
        let eps = cfg.rms_norm_eps;
        let final_add = (layer_count > 0).then(|| kernels::add(&ctx, &mut pipes, h, &stream[cur], &tmp));
        let final_norm = kernels::rms_norm(&ctx, &mut pipes, h, eps, &x_last, &final_gain, &xn);
        let row_norm = NormInput { x: &stream[cur], resid: if layer_count > 0 { &tmp } else { &zeros }, gain: &final_gain, x_sum: &x_last, eps };
        let head_weight = head_w.as_ref().unwrap_or(&embed);
        // A head on int8 blocks: the one-row norm rounds its output itself (a chunk's head
        // rounds the norm of its last row after it).
        let final_add_norm = match head_weight.activations {
            Activations::Int8Blocks => kernels::add_rms_norm_q8(&ctx, &mut pipes, h, row_norm, &xn_q),
            _ => kernels::add_rms_norm(&ctx, &mut pipes, h, row_norm, &xn),
        };
        let head_fused = match ctx.fuses_norm() {
            true => head_weight.gemv_norm(&ctx, &mut pipes, &head_state, row_norm, &logits),
            false => None,
        };
        // The head runs on the last row only (`x_last`): a per-tensor rounding sees that row.
        let (head_round, head_in) = match head_weight.activations {
            Activations::Float => (None, &xn),
            Activations::Int8Blocks => (Some(kernels::round_q8(&ctx, &mut pipes, h, &xn, &xn_q)), &xn_q),
            Activations::Uint8Tensor => (Some(kernels::quantize_tensor(&ctx, &mut pipes, h, &head_state, &xn, &xn_q)), &xn_q),
        };
        let row_rounds = head_weight.activations == Activations::Uint8Tensor;
        let head = head_weight.gemv(&ctx, &mut pipes, &head_state, head_in, &logits);
        let argmax = kernels::argmax(&ctx, &mut pipes, vocab, &logits, &state);
        let sample_opts = ctx.storage("sample_opts", 32)?;
        let seen_host = kernels::seen_bitmap(vocab, &[]);
        let seen = ctx.storage("seen", (seen_host.len() * 4) as u64)?;
        let (keys, sample_weights) = (ctx.storage("sample_keys", (vocab * 4) as u64)?, ctx.storage("sample_weights", (vocab * 4) as u64)?);
        let kept_ids = ctx.storage("sample_kept_ids", (vocab * 4) as u64)?;
        let sb = kernels::SampleBuffers { opts: &sample_opts, logits: &logits, seen: &seen, keys: &keys, weights: &sample_weights, state: &state, kept_ids: &kept_ids };
        let sample = kernels::sample(&ctx, &mut pipes, sb);
        parts.extend(std::iter::once(&embed).chain(head_w.iter()).map(|w| w.parts.len()));
        weights.push(embed);
        weights.extend(head_w);
        bufs.extend([head_state, zeros, xn, xn_q, attn_q, act_q, qkv, attn, tmp, gate_up, act, scores, cos, sin, final_gain, keys, sample_weights, kept_ids]);
        bufs.extend(part);
        // The stream's buffer the last layer's add ends in: the head reads its last row.
        let [x, other] = stream;
        let (x, other) = if cur == 0 { (x, other) } else { (other, x) };
        bufs.push(other);
        let ahead = ctx.decode_ahead();
        let token_readback = ctx.readback("token", 4 * (1 + ahead) as u64);
        let ahead_state = match ahead {
            0 => None,
            n => Some(ctx.storage("ahead_state", 8 * n as u64)?),
        };
        Ok(GpuLlama {
            ctx,
            pipes,
            cfg,
            max_ctx,
            chunk,
            state,
            token_readback,
            x,
            x_last,
            logits,
            body,
            final_add,
            final_norm,
            final_add_norm,
            head_round,
            row_rounds,
            head,
            head_fused,
            argmax,
            sample,
            sample_opts,
            seen,
            seen_host,
            kv_cache,
            _weights: weights,
            parts,
            _buffers: bufs,
            pos: 0,
            ahead,
            ahead_state,
            chain: Default::default(),
        })
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

    /// Whether any of this model's products runs in f16: the context computes in f16
    /// ([`GpuContext::f16`]) and some 4- or 8-bit weight is on float activations (a model
    /// whose every node rounds its input to int8 keeps exact f32 products).
    pub fn computes_f16(&self) -> bool {
        self.pipes.computes_f16()
    }

    /// Tokens in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forget the context (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.chain.clear();
    }

    /// Most tokens the cache holds.
    pub fn max_context(&self) -> usize {
        self.max_ctx
    }

    /// Most tokens one prefill submit runs.
    pub fn prefill_chunk(&self) -> usize {
        self.chunk
    }

    /// Compute dispatches a step of `rows` tokens records (with the head and the greedy pick):
    /// on a GPU each is a launch and a barrier, the fixed cost a small model's decode step pays.
    pub fn dispatches(&self, rows: usize) -> usize {
        self.body.iter().map(|op| op.for_step(rows, 0).len()).sum::<usize>() + self.head_for(rows).len() + 1
    }

    /// The head's dispatches after a step of `rows` rows, without the pick (a chunk's: the add
    /// over its rows, and after the copy of the last, the norm and the head).
    fn head_for(&self, rows: usize) -> Vec<&Dispatch> {
        match (&self.head_fused, rows) {
            (Some(fused), 1) => fused.iter().collect(),
            (None, 1) => std::iter::once(&self.final_add_norm).chain(self.head_round.iter().filter(|_| self.row_rounds)).chain(&self.head).collect(),
            _ => self.final_add.iter().chain([&self.final_norm]).chain(&self.head_round).chain(&self.head).collect(),
        }
    }

    /// Whether a decode step from position `pos` runs the attention split over positions.
    pub fn splits_attention(&self, pos: usize) -> bool {
        self.body.iter().any(|op| op.split_at(1, pos).is_some())
    }

    /// The buffers (row ranges) each int4 weight is split into to fit the adapter's binding
    /// limit, in load order: each layer's seven linears, the embedding, the untied head.
    pub fn weight_parts(&self) -> Vec<usize> {
        self.parts.clone()
    }

    /// Record the forward pass for `rows` tokens from `pos` (the state already written); with
    /// `head`, then the final norm, head and the pick on the last row and the copy of the
    /// picked token to the readback buffer's `slot`th word.
    fn record(&self, enc: &mut wgpu::CommandEncoder, rows: usize, pos: usize, head: Option<(&Pick, u64)>) {
        let body = self.body.iter().flat_map(|op| op.for_step(rows, pos));
        let Some((pick, slot)) = head else {
            return self.pipes.record(enc, body, rows as u32);
        };
        let pick = match pick {
            Pick::Argmax => &self.argmax,
            Pick::Sample { .. } => &self.sample,
        };
        match rows {
            // One row: the head reads the stream's row, in the same pass.
            1 => self.pipes.record(enc, body.chain(self.head_for(1)).chain([pick]), 1),
            _ => {
                self.pipes.record(enc, body.chain(&self.final_add), rows as u32);
                let row = (self.cfg.hidden_size * 4) as u64;
                enc.copy_buffer_to_buffer(&self.x, (rows as u64 - 1) * row, &self.x_last, 0, row);
                self.pipes.record(enc, std::iter::once(&self.final_norm).chain(&self.head_round).chain(&self.head).chain([pick]), 1);
            }
        }
        enc.copy_buffer_to_buffer(&self.state, TOKENS_AT, &self.token_readback, 4 * slot, 4);
    }

    /// [`GpuLlama::record`] from the cache's position, as one submit.
    fn submit(&self, rows: usize, head: Option<&Pick>) {
        let mut enc = self.ctx.encoder();
        self.record(&mut enc, rows, self.pos, head.map(|p| (p, 0)));
        self.ctx.submit(enc);
    }

    /// The first `n` picked tokens the readback holds.
    async fn read_tokens(&self, n: usize) -> Result<Vec<u32>> {
        let raw = self.ctx.read(&self.token_readback, 4 * n as u64).await?;
        raw.chunks_exact(4)
            .map(|w| match u32::from_le_bytes([w[0], w[1], w[2], w[3]]) {
                // sample.wgsl's mark for a logit that is not finite (the CPU path's check).
                u32::MAX => Err(Error::Inference("model produced NaN or infinite logits".into())),
                t => Ok(t),
            })
            .collect()
    }

    async fn read_token(&self) -> Result<u32> {
        Ok(self.read_tokens(1).await?[0])
    }

    /// Write what `pick` reads: for sampling, its 8 option words, and with a repetition penalty
    /// the words of the history bitmap that changed since the last sampled step (a decode step:
    /// at most the one word of the previous token).
    fn prepare(&mut self, pick: &Pick) {
        let Pick::Sample { params, history } = pick else { return };
        let words = super::twin::sample_opts(self.cfg.vocab_size, params);
        self.ctx.write(&self.sample_opts, 0, &words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>());
        if params.repetition_penalty == 1.0 {
            return;
        }
        let seen = kernels::seen_bitmap(self.cfg.vocab_size, history);
        let changed = |i: &usize| seen[*i] != self.seen_host[*i];
        if let (Some(first), Some(last)) = ((0..seen.len()).find(changed), (0..seen.len()).rev().find(changed)) {
            let bytes: Vec<u8> = seen[first..=last].iter().flat_map(|w| w.to_le_bytes()).collect();
            self.ctx.write(&self.seen, (first * 4) as u64, &bytes);
        }
        self.seen_host = seen;
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
        self.chain.clear();
        Ok(())
    }

    /// Run `tokens` after the cached ones and return the greedy next token: chunks of up to
    /// [`GpuLlama::prefill_chunk`] tokens, each one write (position, rows, token ids) and one
    /// submit; only the last chunk runs the head, and only its 4-byte token is read back.
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<u32> {
        self.prefill_with(tokens, Pick::Argmax).await
    }

    /// [`GpuLlama::prefill`] with the next token chosen by `pick`.
    pub async fn prefill_with(&mut self, tokens: &[u32], pick: Pick<'_>) -> Result<u32> {
        if tokens.is_empty() {
            return Err(Error::InvalidOption { option: "prompt", reason: "empty".into() });
        }
        if let Some(t) = tokens.iter().find(|t| **t as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidOption { option: "token", reason: format!("id {t} is outside the vocabulary of {}", self.cfg.vocab_size) });
        }
        let end = self.pos + tokens.len();
        if end > self.max_ctx {
            return Err(Error::ContextOverflow { needed: end, max: self.max_ctx });
        }
        // This step overwrites the cache entries of any steps run ahead.
        self.chain.clear();
        let last = (tokens.len() - 1) / self.chunk;
        for (i, chunk) in tokens.chunks(self.chunk).enumerate() {
            let words = [self.pos as u32, chunk.len() as u32].into_iter().chain(chunk.iter().copied());
            self.ctx.write(&self.state, 0, &words.flat_map(u32::to_le_bytes).collect::<Vec<u8>>());
            if i == last {
                self.prepare(&pick);
            }
            // Queue writes land before the next submit, so chunks need no wait in between.
            self.submit(chunk.len(), (i == last).then_some(&pick));
            self.pos += chunk.len();
        }
        self.read_token().await
    }

    /// Run one token through every layer and return the greedy next token. `Some(id)` feeds a
    /// prompt token; `None` feeds the token the previous step picked, without it leaving the GPU
    /// (with [`super::GpuOptions::decode_ahead`], chained: [`GpuLlama::step_greedy`]).
    pub async fn step(&mut self, token: Option<u32>) -> Result<u32> {
        self.step_with(token, Pick::Argmax).await
    }

    /// [`GpuLlama::step`] with the next token chosen by `pick`.
    pub async fn step_with(&mut self, token: Option<u32>, pick: Pick<'_>) -> Result<u32> {
        match (token, pick) {
            (Some(t), pick) => self.prefill_with(&[t], pick).await,
            (None, Pick::Argmax) => self.step_greedy(None).await,
            // After steps run ahead the state holds the last one's pick: feed the one returned.
            (None, pick) => match self.chain.front() {
                Some(&(fed, _)) => self.prefill_with(&[fed], pick).await,
                None => self.step_on_device(None, pick, 0).await.map(|picks| picks[0]),
            },
        }
    }

    /// A decode step feeding `token` (`None`: the token the previous step left in the step
    /// state), and `ahead` greedy steps chained after it in the same submit (each embeds the
    /// token the one before picked: per chained step a copy of its 8-byte position into the
    /// step state, its dispatches and a 4-byte copy of its pick); every pick, read back
    /// together.
    async fn step_on_device(&mut self, token: Option<u32>, pick: Pick<'_>, ahead: usize) -> Result<Vec<u32>> {
        if self.pos == 0 && token.is_none() {
            return Err(Error::InvalidOption { option: "token", reason: "the first step needs a prompt token".into() });
        }
        if let Some(t) = token.filter(|t| *t as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidOption { option: "token", reason: format!("id {t} is outside the vocabulary of {}", self.cfg.vocab_size) });
        }
        if self.pos + ahead >= self.max_ctx {
            return Err(Error::ContextOverflow { needed: self.pos + ahead + 1, max: self.max_ctx });
        }
        self.chain.clear();
        let pos = self.pos;
        let words: Vec<u32> = [pos as u32, 1].into_iter().chain(token).collect();
        self.ctx.write(&self.state, 0, &words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>());
        self.prepare(&pick);
        let mut enc = self.ctx.encoder();
        self.record(&mut enc, 1, pos, Some((&pick, 0)));
        if let Some(ahead_state) = self.ahead_state.as_ref().filter(|_| ahead > 0) {
            let words: Vec<u8> = (1..=ahead).flat_map(|j| [(pos + j) as u32, 1]).flat_map(u32::to_le_bytes).collect();
            self.ctx.write(ahead_state, 0, &words);
            for j in 1..=ahead {
                enc.copy_buffer_to_buffer(ahead_state, 8 * (j as u64 - 1), &self.state, 0, 8);
                self.record(&mut enc, 1, pos + j, Some((&Pick::Argmax, j as u64)));
            }
        }
        self.ctx.submit(enc);
        self.pos += 1;
        self.read_tokens(1 + ahead).await
    }

    /// A greedy decode step at the next position, feeding `token` (`None`: the token the
    /// previous step picked, left on the GPU), with up to [`super::GpuOptions::decode_ahead`]
    /// more chained in its submit ([`GpuLlama::step_on_device`]: one readback for all). Returns
    /// the pick after the token fed; a following call feeding that pick (or `None`) returns the
    /// next chained one without touching the GPU (its cache entry is already written), as long
    /// as nothing else ran: any other step, a reset or an upload drops what is left of the
    /// chain, and [`GpuLlama::logits`] are the last chained step's. Without `decode_ahead` (a
    /// CPU rasterizer's default) one step a submit, as [`GpuLlama::step`].
    pub async fn step_greedy(&mut self, token: Option<u32>) -> Result<u32> {
        if let Some(&(fed, next)) = self.chain.front() {
            if token.is_none_or(|t| t == fed) {
                self.chain.pop_front();
                self.pos += 1;
                return Ok(next);
            }
        }
        let ahead = self.ahead.min(self.max_ctx.saturating_sub(self.pos + 1));
        let picks = self.step_on_device(token, Pick::Argmax, ahead).await?;
        self.chain = picks.windows(2).map(|w| (w[0], w[1])).collect();
        Ok(picks[0])
    }

    /// Greedy steps run ahead of the caller and not yet taken ([`GpuLlama::step_greedy`]).
    pub fn chained(&self) -> usize {
        self.chain.len()
    }

    /// The last step's logits (tests and callers that ask; allocates a readback buffer): after
    /// chained greedy steps ([`GpuLlama::step_greedy`]), the last chained one's.
    pub async fn logits(&self) -> Result<Vec<f32>> {
        kernels::download_f32(&self.ctx, &self.logits, self.cfg.vocab_size).await
    }

    /// Greedy decoding from a fresh context, as `llama::reference::greedy`.
    pub async fn greedy(&mut self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>> {
        self.reset();
        let mut next = self.prefill(prompt).await?;
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
