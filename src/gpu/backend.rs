//! The GPU model behind the [`Backend`] seam.
//!
//! [`GpuLlama`] holds one KV cache on the GPU. Sessions take turns on it: the session that
//! steps owns it; when another one steps, the owner's cache is read back to the host first
//! (kept until that session steps again or is dropped) and the stepping session's own cache
//! uploaded. The engine switches sessions only between turns (a chat turn that reuses a
//! prefix, a restored state), so decode steps never move the cache.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use super::decode::{GpuLlama, Pick, Q4Layer, Q4Llama};
use super::GpuContext;
use crate::backend::{Backend, BackendInfo, KvSnapshot, Session, StepFuture};
use crate::backend::SampleParams;
use crate::model::LlamaConfig;
use crate::onnx::{ModelProto, OnnxType, TensorProto};
use crate::package::{shards, Blob, Package};
use crate::quant::Q4Weight;
use crate::{Error, Result};

/// Most tokens a GPU session holds: the KV cache is allocated for this many at load (SmolLM2:
/// 30 layers × 2 × 192 × 2048 × 4 B = 94 MB).
pub const GPU_MAX_CONTEXT: usize = 2048;

/// Positions the GPU backend allocates a model's cache for.
pub fn context_len(cfg: &LlamaConfig) -> usize {
    cfg.max_position_embeddings.min(GPU_MAX_CONTEXT)
}

struct Shared {
    model: RefCell<GpuLlama>,
    /// The session whose cache is on the GPU.
    owner: Cell<Option<u64>>,
    /// Caches of sessions that are not the owner, read back when they lost the GPU.
    parked: RefCell<HashMap<u64, KvSnapshot>>,
    next_id: Cell<u64>,
    /// A step is in flight (see [`Stepping`]).
    stepping: Cell<bool>,
    layout: (usize, usize, usize),
    vocab: usize,
}

/// A [`GpuLlama`] as a [`Backend`].
pub struct GpuBackend(Rc<Shared>);

impl GpuBackend {
    pub fn new(model: GpuLlama) -> Self {
        let cfg = model.config().clone();
        GpuBackend(Rc::new(Shared {
            model: RefCell::new(model),
            owner: Cell::new(None),
            parked: RefCell::default(),
            next_id: Cell::new(0),
            stepping: Cell::new(false),
            layout: (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim),
            vocab: cfg.vocab_size,
        }))
    }

    /// Whether the GPU backend runs `graph`, from its initializers' names alone (no weights are
    /// read, so the CPU backend can still load the package when it does not). `Err` names
    /// what it lacks.
    pub fn supports(cfg: &LlamaConfig, graph: &ModelProto) -> Result<()> {
        let g = graph.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
        let names: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut needed = vec!["model.embed_tokens.weight_Q4".to_string(), "model.norm.weight".to_string()];
        for l in 0..cfg.num_layers {
            needed.extend(LINEARS.map(|p| format!("model.layers.{l}.{p}.weight_Q4")));
            needed.extend(NORMS.map(|p| format!("model.layers.{l}.{p}.weight")));
        }
        if !cfg.tie_word_embeddings {
            needed.push("lm_head.weight_Q4".into());
        }
        match needed.iter().find(|n| !names.contains(n.as_str())) {
            Some(n) => Err(missing_weight(n)),
            None => Ok(()),
        }
    }

    /// Whether `graph`'s model fits an adapter with `limits`, from its initializers' shapes
    /// alone (no weights read): every int4 weight split by rows into buffers the adapter binds,
    /// and the activations and KV cache for [`context_len`] positions. `Err` names what does
    /// not fit, and the limit.
    pub fn fits(cfg: &LlamaConfig, graph: &ModelProto, limits: &wgpu::Limits) -> Result<()> {
        let max = super::kernels::max_binding(limits);
        let g = graph.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
        for t in &g.initializer {
            // MatMulNBits B, `[n][blocks][block / 2]` bytes.
            if let (Some(name), &[n, blocks, half]) = (t.name.strip_suffix(".weight_Q4"), &t.dims[..]) {
                let (n, blocks, block) = (n.max(0) as usize, blocks.max(0) as usize, 2 * half.max(0) as usize);
                super::kernels::q4_row_ranges(name, n, blocks * block, block, max)?;
            }
        }
        super::decode::plan_chunk(cfg, context_len(cfg), max).map(|_| ())
    }

    /// Load `package`'s graph on the GPU: int4 `MatMulNBits` linears and embedding in edge-llm's
    /// exporter layout (`ExportOptions::int4`); any other format is `UnsupportedBackend`,
    /// naming what the GPU backend lacks.
    pub async fn open<'a, B: Blob + 'a>(ctx: GpuContext, package: &mut Package<'a, B>, graph: &ModelProto) -> Result<Self> {
        let weights = q4_llama(&package.config().architecture.clone(), graph, package).await?;
        Ok(Self::new(GpuLlama::load(ctx, &weights, context_len(&weights.cfg))?))
    }

    /// Everything created, submitted, written and read back so far.
    pub fn counters(&self) -> super::GpuCounters {
        self.0.model.borrow().counters()
    }

    fn session_with(&self, kv: KvSnapshot) -> GpuSession {
        let id = self.0.next_id.get();
        self.0.next_id.set(id + 1);
        let len = kv.len;
        self.0.parked.borrow_mut().insert(id, kv);
        GpuSession { shared: self.0.clone(), id, len }
    }
}

impl Backend for GpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo { name: "webgpu", kv_cache: "gpu", reason: None }
    }

    fn vocab_size(&self) -> usize {
        self.0.vocab
    }

    fn gpu_device(&self) -> Option<wgpu::Device> {
        Some(self.0.model.borrow().context().device().clone())
    }

    fn steps_are_sync(&self) -> bool {
        !cfg!(target_arch = "wasm32")
    }

    fn kv_layout(&self) -> (usize, usize, usize) {
        self.0.layout
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(self.session_with(KvSnapshot::default()))
    }

    fn session_from(&self, kv: &KvSnapshot) -> Result<Box<dyn Session>> {
        let (layers, _, _) = self.0.layout;
        if kv.len > 0 && kv.tensors.len() != 2 * layers {
            return Err(Error::InvalidState("KV cache shape does not match this model".into()));
        }
        Ok(Box::new(self.session_with(kv.clone())))
    }
}

/// One conversation on a [`GpuBackend`].
pub struct GpuSession {
    shared: Rc<Shared>,
    id: u64,
    len: usize,
}

impl Drop for GpuSession {
    fn drop(&mut self) {
        self.shared.parked.borrow_mut().remove(&self.id);
        if self.shared.owner.get() == Some(self.id) {
            self.shared.owner.set(None);
        }
    }
}

impl GpuSession {
    /// Put this session's cache on the GPU, parking the owner's. The caller holds [`Stepping`],
    /// so the model's borrows across the readback's `await` cannot meet another.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn own(&self) -> Result<()> {
        let s = &self.shared;
        if s.owner.get() == Some(self.id) {
            return Ok(());
        }
        if let Some(other) = s.owner.get() {
            let kv = s.model.borrow().download_kv().await?;
            s.parked.borrow_mut().insert(other, kv);
            s.owner.set(None);
        }
        let kv = s.parked.borrow_mut().remove(&self.id).unwrap_or_default();
        let mut model = s.model.borrow_mut();
        if kv.len == 0 {
            model.reset();
        } else {
            model.upload_kv(&kv)?;
        }
        s.owner.set(Some(self.id));
        Ok(())
    }

    /// Run `tokens` (a chunk of them per submit); returns the token the GPU picked after the
    /// last.
    /// The caller holds [`Stepping`] (see [`GpuSession::own`]).
    #[allow(clippy::await_holding_refcell_ref)]
    async fn run(&mut self, tokens: &[u32], pick: Pick<'_>) -> Result<u32> {
        if tokens.is_empty() {
            return Err(Error::Inference("forward needs at least one token".into()));
        }
        // A lost device fails every call: say so before touching it.
        self.shared.model.borrow().context().check_device()?;
        self.own().await?;
        let next = self.shared.model.borrow_mut().prefill_with(tokens, pick).await?;
        self.len += tokens.len();
        Ok(next)
    }
}

impl Session for GpuSession {
    fn len(&self) -> usize {
        self.len
    }

    fn snapshot(&self) -> Result<KvSnapshot> {
        if self.shared.owner.get() != Some(self.id) {
            return Ok(self.shared.parked.borrow().get(&self.id).cloned().unwrap_or_default());
        }
        let model = self.shared.model.try_borrow().map_err(|_| another_step())?;
        // Natively the readback completes when polled; in a browser it waits for the event loop.
        crate::backend::ready(model.download_kv()).unwrap_or_else(|| {
            Err(Error::UnsupportedBackend("webgpu: reading the KV cache back needs the event loop".into()))
        })
    }

    #[allow(clippy::await_holding_refcell_ref)] // under `Stepping`
    fn forward<'a>(&'a mut self, tokens: &'a [u32]) -> StepFuture<'a, Result<Vec<f32>>> {
        Box::pin(async move {
            let shared = self.shared.clone();
            let _step = Stepping::enter(&shared.stepping)?;
            self.run(tokens, Pick::Argmax).await?;
            self.shared.model.borrow().logits().await
        })
    }

    fn forward_argmax<'a>(&'a mut self, tokens: &'a [u32]) -> Option<StepFuture<'a, Result<u32>>> {
        Some(Box::pin(async move {
            let shared = self.shared.clone();
            let _step = Stepping::enter(&shared.stepping)?;
            self.run(tokens, Pick::Argmax).await
        }))
    }

    fn forward_sample<'a>(&'a mut self, tokens: &'a [u32], params: SampleParams, history: &'a [u32]) -> Option<StepFuture<'a, Result<u32>>> {
        Some(Box::pin(async move {
            let shared = self.shared.clone();
            let _step = Stepping::enter(&shared.stepping)?;
            self.run(tokens, Pick::Sample { params, history }).await
        }))
    }
}

fn another_step() -> Error {
    Error::InvalidState("webgpu: another generation's step is running on this engine; await it first".into())
}

/// Holds the GPU for one step. A step keeps the model's buffers borrowed while it waits for
/// its readback, which in a browser spans event-loop turns: a second generation stepping
/// meanwhile (two streams on one engine) is refused by name instead of meeting that borrow.
struct Stepping<'a>(&'a Cell<bool>);

impl<'a> Stepping<'a> {
    fn enter(flag: &'a Cell<bool>) -> Result<Self> {
        if flag.replace(true) {
            return Err(another_step());
        }
        Ok(Stepping(flag))
    }
}

impl Drop for Stepping<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Every initializer of `graph` by name: inline ones borrowed, external ones read from
/// `package`'s shards into their `raw_data`.
async fn initializers<'g, 'a, B: Blob + 'a>(graph: &'g ModelProto, package: &mut Package<'a, B>) -> Result<HashMap<String, Cow<'g, TensorProto>>> {
    let g = graph.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let mut out: HashMap<String, Cow<'g, TensorProto>> = g.initializer.iter().map(|t| (t.name.clone(), Cow::Borrowed(t))).collect();
    if package.is_packed() {
        shards::consume_external_from(g, package, |i, length, read| {
            let mut raw_data = vec![0; length];
            read(0, &mut raw_data);
            let t = &g.initializer[i];
            out.insert(t.name.clone(), Cow::Owned(TensorProto { name: t.name.clone(), data_type: t.data_type, dims: t.dims.clone(), raw_data, ..Default::default() }));
            Ok(())
        })
        .await?;
    }
    Ok(out)
}

fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    crate::onnx::float_values(t)
        .ok_or_else(|| Error::UnsupportedBackend(format!("webgpu: `{}` has ONNX data type {}, not float or float16", t.name, t.data_type)))
}

/// A graph's initializers, taken by name as the GPU layout needs them.
struct Initializers<'g>(HashMap<String, Cow<'g, TensorProto>>);

impl Initializers<'_> {
    fn take(&mut self, name: &str) -> Result<TensorProto> {
        self.0.remove(name).map(Cow::into_owned).ok_or_else(|| missing_weight(name))
    }

    fn norm(&mut self, name: &str) -> Result<Vec<f32>> {
        floats(&self.take(&format!("{name}.weight"))?)
    }

    /// The int4 `MatMulNBits` weight `name` (`[n][k]`): B `[n][blocks][block/2]` as is, scales,
    /// and the packed uint8 zero points unpacked to one per block.
    fn q4(&mut self, name: &str, n: usize, k: usize) -> Result<Q4Weight> {
        let packed = self.take(&format!("{name}.weight_Q4"))?.raw_data;
        let scales = floats(&self.take(&format!("{name}.weight_scales"))?)?;
        let blocks = scales.len() / n.max(1);
        let bad = || Error::UnsupportedBackend(format!("webgpu: `{name}` is not an int4 [{n}][{k}] MatMulNBits weight"));
        if blocks == 0 || scales.len() != n * blocks || packed.len() % (n * blocks) != 0 {
            return Err(bad());
        }
        let block_size = packed.len() / (n * blocks) * 2;
        if k.div_ceil(block_size) != blocks {
            return Err(bad());
        }
        let zero_points = match self.0.remove(&format!("{name}.weight_zero_points")) {
            None => None,
            Some(z) if z.data_type == OnnxType::Uint8 as i32 && z.raw_data.len() == n * blocks.div_ceil(2) => {
                Some(Q4Weight::unpack_zero_points(&z.raw_data, n, blocks))
            }
            Some(_) => return Err(Error::UnsupportedBackend(format!("webgpu: `{name}` has float zero points; the GPU kernels take uint8 ones"))),
        };
        Ok(Q4Weight { n, k, block_size, packed, scales, zero_points })
    }
}

/// A decoder layer's int4 linears, in [`Q4Layer`]'s order, and its norms, by edge-llm's
/// exporter's names (`model.layers.{l}.{name}`): what [`GpuBackend::supports`] looks for and
/// [`q4_llama`] reads.
const LINEARS: [&str; 7] = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
const NORMS: [&str; 2] = ["input_layernorm", "post_attention_layernorm"];

fn missing_weight(name: &str) -> Error {
    Error::UnsupportedBackend(format!("webgpu: the graph has no `{name}`: the GPU backend runs int4 models in edge-llm's layout"))
}

/// The int4 Llama in `graph`, by edge-llm's exporter's initializer names.
async fn q4_llama<'a, B: Blob + 'a>(cfg: &LlamaConfig, graph: &ModelProto, package: &mut Package<'a, B>) -> Result<Q4Llama> {
    let mut w = Initializers(initializers(graph, package).await?);
    let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    // `[n][k]` of each of `LINEARS`.
    let shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)];
    for l in 0..cfg.num_layers {
        let pre = format!("model.layers.{l}");
        let linears: Vec<Q4Weight> = LINEARS.iter().zip(shapes).map(|(p, (n, k))| w.q4(&format!("{pre}.{p}"), n, k)).collect::<Result<_>>()?;
        let Ok([wq, wk, wv, wo, w_gate, w_up, w_down]) = <[Q4Weight; 7]>::try_from(linears) else { unreachable!("seven linears") };
        let [attn_norm, ffn_norm] = NORMS.map(|p| w.norm(&format!("{pre}.{p}")));
        layers.push(Q4Layer { attn_norm: attn_norm?, wq, wk, wv, wo, ffn_norm: ffn_norm?, w_gate, w_up, w_down });
    }
    Ok(Q4Llama {
        cfg: cfg.clone(),
        embed: w.q4("model.embed_tokens", cfg.vocab_size, h)?,
        layers,
        final_norm: w.norm("model.norm")?,
        lm_head: if cfg.tie_word_embeddings { None } else { Some(w.q4("lm_head", cfg.vocab_size, h)?) },
    })
}
