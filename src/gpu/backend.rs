//! The GPU model behind the [`Backend`] seam.
//!
//! [`GpuLlama`] holds one KV cache on the GPU. Sessions take turns on it: the session that
//! steps owns it; when another one steps, the owner's cache is read back to the host first
//! (kept until that session steps again or is dropped) and the stepping session's own cache
//! uploaded. The engine switches sessions only between turns (a chat turn that reuses a
//! prefix, a restored state), so decode steps never move the cache.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::decode::{GpuLayer, GpuLlama, GpuWeights, Pick, LINEARS};
use super::nbits::{BlockSpec, Field, GpuNBits, ZeroPointKind};
use super::GpuContext;
use crate::backend::{Backend, BackendInfo, KvSnapshot, Session, StepFuture};
use crate::backend::SampleParams;
use crate::model::LlamaConfig;
use crate::onnx::{ModelProto, OnnxType, TensorProto};
use crate::package::{shards, Blob, Package};
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

    /// Whether the GPU backend runs `graph`, from its initializers' names, shapes and types
    /// alone (no weights are read, so the CPU backend can still load the package when it does
    /// not). `Err` names what it lacks.
    pub fn supports(cfg: &LlamaConfig, graph: &ModelProto) -> Result<()> {
        plan(cfg, graph).map(|_| ())
    }

    /// Whether `graph`'s model fits an adapter with `limits`, from its initializers' shapes
    /// alone (no weights read): every weight split by rows into buffers the adapter binds, and
    /// the activations and KV cache for [`context_len`] positions. `Err` names what does not
    /// fit, and the limit.
    pub fn fits(cfg: &LlamaConfig, graph: &ModelProto, limits: &wgpu::Limits) -> Result<()> {
        let max = super::kernels::max_binding(limits);
        for w in plan(cfg, graph)?.weights {
            w.spec.row_ranges(&w.name, max)?;
        }
        super::decode::plan_chunk(cfg, context_len(cfg), max).map(|_| ())
    }

    /// Bytes of weights a decode step reads (every linear and the head; the embedding gather
    /// reads one row), from the graph's initializers alone: what the auto probe scales its
    /// GEMV timings by.
    pub fn decode_bytes(cfg: &LlamaConfig, graph: &ModelProto) -> Result<u64> {
        let reads = |w: &&Planned| w.name != EMBEDDING || cfg.tie_word_embeddings;
        Ok(plan(cfg, graph)?.weights.iter().filter(reads).map(|w| w.spec.gpu_bytes() as u64).sum())
    }

    /// Load `package`'s graph on the GPU: the block-quantized (`MatMulNBits`, 4 or 8 bits)
    /// linears, embedding and head of edge-llm's exporter layout, each tensor written to its
    /// GPU buffers as its shard arrives, a bounded number of rows at a time ([`UPLOAD_CHUNK`]),
    /// so no copy of the weights stays in (wasm) memory. Any other format is
    /// `UnsupportedBackend`, naming what the GPU backend lacks.
    pub async fn open<'a, B: Blob + 'a>(ctx: GpuContext, package: &mut Package<'a, B>, graph: &ModelProto) -> Result<Self> {
        let cfg = package.config().architecture.clone();
        let weights = load_weights(&ctx, &cfg, graph, package).await?;
        Ok(Self::new(GpuLlama::build(ctx, weights, context_len(&cfg))?))
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

/// Bytes a load holds of a tensor at a time on its way to the GPU (whole rows; at least one).
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// How a tensor's elements are stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    F32,
    F16,
    /// Bytes the GPU takes as they are (values; integer zero points, each row padded to words).
    Bytes,
}

/// Where an initializer goes: a field of one of [`Plan::weights`].
#[derive(Debug, Clone, Copy)]
struct Dest {
    weight: usize,
    field: Field,
    source: Source,
}

/// A block-quantized weight of the graph.
struct Planned {
    name: String,
    spec: BlockSpec,
    /// Its `MatMulNBits` node computes on int8 activations (see [`GpuNBits::int8_activations`]).
    int8_activations: bool,
}

/// What the GPU backend reads from a graph, from its initializers' names, shapes and types:
/// each layer's seven linears (in [`LINEARS`] order), the embedding, the untied head, where
/// each of their initializers goes, and the norms' names.
struct Plan {
    weights: Vec<Planned>,
    dests: HashMap<String, Dest>,
    norms: HashSet<String>,
}

fn elements(t: &TensorProto) -> usize {
    t.dims.iter().map(|d| (*d).max(0) as usize).product()
}

fn plan(cfg: &LlamaConfig, graph: &ModelProto) -> Result<Plan> {
    let g = graph.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let inits: HashMap<&str, &TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    // `[n][k]` of each of `LINEARS`.
    let shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)];
    let mut wanted = Vec::new();
    let mut norms = HashSet::new();
    for l in 0..cfg.num_layers {
        let pre = format!("model.layers.{l}");
        wanted.extend(LINEARS.iter().zip(shapes).map(|(p, (n, k))| (format!("{pre}.{p}"), n, k)));
        norms.extend(NORMS.map(|p| format!("{pre}.{p}.weight")));
    }
    wanted.push((EMBEDDING.into(), cfg.vocab_size, h));
    if !cfg.tie_word_embeddings {
        wanted.push(("lm_head".into(), cfg.vocab_size, h));
    }
    norms.insert("model.norm.weight".into());
    // `accuracy_level` of the MatMulNBits node reading each B tensor (a tied table's: the head's).
    let levels: HashMap<&str, i64> = g
        .node
        .iter()
        .filter(|n| n.op_type == "MatMulNBits" && n.domain == crate::onnx::MS_DOMAIN)
        .filter_map(|n| Some((n.input.get(1)?.as_str(), n.attribute.iter().find(|a| a.name == "accuracy_level").map_or(0, |a| a.i))))
        .collect();
    let mut plan = Plan { weights: Vec::with_capacity(wanted.len()), dests: HashMap::new(), norms };
    for (name, n, k) in wanted {
        let (spec, data) = plan_weight(&inits, &name, n, k, plan.weights.len(), &mut plan.dests)?;
        // onnxruntime computes int8 only with integer (or no) zero points: float ones run on
        // float activations whatever the node asks (as the CPU backend, `cpu::q8_block_matmul`).
        let int8_activations = levels.get(data).copied() == Some(crate::onnx::ACCURACY_LEVEL_INT8) && spec.zero_points != ZeroPointKind::Float;
        if int8_activations && k % 32 != 0 {
            return Err(Error::UnsupportedBackend(format!("webgpu: `{name}` asks for int8 activations over k = {k}, not a multiple of 32")));
        }
        plan.weights.push(Planned { name, spec, int8_activations });
    }
    if let Some(n) = plan.norms.iter().find(|n| !inits.contains_key(n.as_str())) {
        return Err(missing_weight(n));
    }
    Ok(plan)
}

/// The MatMulNBits weight `name` (`[n][k]`): B `{name}.weight_Q4` or `_Q8` (`[n][blocks][block
/// * bits / 8]` uint8), scales `{name}.weight_scales` (f32 or f16) or `_scales_f16`, and zero
/// points if any, `{name}.weight_zero_points` (uint8, f32 or f16) or `_zero_points_f16`.
/// Returns the spec and B's name.
fn plan_weight<'g>(inits: &HashMap<&str, &'g TensorProto>, name: &str, n: usize, k: usize, index: usize, dests: &mut HashMap<String, Dest>) -> Result<(BlockSpec, &'g str)> {
    let find = |suffixes: &[&str]| suffixes.iter().find_map(|s| inits.get(format!("{name}.{s}").as_str()).copied());
    let (data, bits) = match (find(&["weight_Q4"]), find(&["weight_Q8"])) {
        (Some(t), _) => (t, 4),
        (None, Some(t)) => (t, 8),
        (None, None) => return Err(missing_weight(&format!("{name}.weight_Q4"))),
    };
    let bad = |what: String| Error::UnsupportedBackend(format!("webgpu: `{}` is not a [{n}][{k}] MatMulNBits weight ({what})", data.name));
    let float = |t: &TensorProto| match t.data_type {
        x if x == OnnxType::Float as i32 => Some(Source::F32),
        x if x == OnnxType::Float16 as i32 => Some(Source::F16),
        _ => None,
    };
    let &[dn, blocks, block_bytes] = &data.dims[..] else { return Err(bad(format!("dims {:?}", data.dims))) };
    let (blocks, block_size) = (blocks.max(0) as usize, block_bytes.max(0) as usize * 8 / bits);
    if dn.max(0) as usize != n || block_size == 0 || k.div_ceil(block_size) != blocks || data.data_type != OnnxType::Uint8 as i32 {
        return Err(bad(format!("dims {:?}, ONNX data type {}", data.dims, data.data_type)));
    }
    let scales = find(&["weight_scales", "weight_scales_f16"]).ok_or_else(|| missing_weight(&format!("{name}.weight_scales")))?;
    let scale_source = float(scales).filter(|_| elements(scales) == n * blocks).ok_or_else(|| bad(format!("scales `{}` are not {} floats", scales.name, n * blocks)))?;
    let mut spec = BlockSpec { n, k, bits, block_size, zero_points: ZeroPointKind::Middle, f16_params: scale_source == Source::F16 };
    dests.insert(data.name.clone(), Dest { weight: index, field: Field::Data, source: Source::Bytes });
    dests.insert(scales.name.clone(), Dest { weight: index, field: Field::Scales, source: scale_source });
    if let Some(z) = find(&["weight_zero_points", "weight_zero_points_f16"]) {
        let source = match float(z) {
            Some(s) if elements(z) == n * blocks => {
                spec.zero_points = ZeroPointKind::Float;
                // f16 on the GPU only when both are f16 in the file (exact).
                spec.f16_params &= s == Source::F16;
                s
            }
            None if z.data_type == OnnxType::Uint8 as i32 => {
                spec.zero_points = ZeroPointKind::Int;
                if elements(z) != n * spec.int_zero_point_row_bytes() {
                    return Err(bad(format!("zero points `{}` hold {} bytes", z.name, elements(z))));
                }
                Source::Bytes
            }
            _ => return Err(bad(format!("zero points `{}`: ONNX data type {}, {} values", z.name, z.data_type, elements(z)))),
        };
        dests.insert(z.name.clone(), Dest { weight: index, field: Field::ZeroPoints, source });
    }
    Ok((spec, data.name.as_str()))
}

/// An inline initializer's bytes as the file's element type stores them (`raw_data`, or the
/// typed field: f32 `float_data`, f16 and uint8 in `int32_data`).
fn inline_bytes(t: &TensorProto) -> Cow<'_, [u8]> {
    if !t.raw_data.is_empty() {
        return Cow::Borrowed(&t.raw_data);
    }
    Cow::Owned(match t.data_type {
        x if x == OnnxType::Float as i32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        x if x == OnnxType::Float16 as i32 => t.int32_data.iter().flat_map(|v| (*v as u16).to_le_bytes()).collect(),
        _ => t.int32_data.iter().map(|v| *v as u8).collect(),
    })
}

/// Write one tensor of `length` bytes, read through `read`, into its field of `w`:
/// [`UPLOAD_CHUNK`] bytes of rows at a time, widened (f16 to f32 where the GPU holds f32) or
/// padded (integer zero points, f16 rows) to the GPU's layout on the way.
fn write_tensor(ctx: &GpuContext, name: &str, w: &GpuNBits, d: Dest, length: usize, read: &dyn Fn(usize, &mut [u8])) -> Result<()> {
    let spec = w.spec;
    let file_row = match (d.field, d.source) {
        (Field::Data, _) => spec.row_bytes(Field::Data),
        (_, Source::F32) => spec.blocks() * 4,
        (_, Source::F16) => spec.blocks() * 2,
        (_, Source::Bytes) => spec.int_zero_point_row_bytes(),
    };
    if length != spec.n * file_row {
        return Err(Error::InvalidModel(format!("`{name}` holds {length} bytes, not the {} its shape says", spec.n * file_row)));
    }
    let gpu_row = spec.row_bytes(d.field);
    let rows_per = (UPLOAD_CHUNK / gpu_row.max(1)).max(1);
    let (mut file, mut gpu) = (Vec::new(), Vec::new());
    for r0 in (0..spec.n).step_by(rows_per) {
        let rows = rows_per.min(spec.n - r0);
        file.resize(rows * file_row, 0);
        read(r0 * file_row, &mut file);
        if d.source == Source::F16 && !spec.f16_params {
            gpu.clear();
            gpu.extend(file.chunks_exact(2).flat_map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32().to_le_bytes()));
        } else if gpu_row != file_row {
            gpu.clear();
            for row in file.chunks_exact(file_row) {
                gpu.extend_from_slice(row);
                gpu.resize(gpu.len() + gpu_row - file_row, 0);
            }
        } else {
            w.write(ctx, d.field, r0, &file);
            continue;
        }
        w.write(ctx, d.field, r0, &gpu);
    }
    Ok(())
}

fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    crate::onnx::float_values(t)
        .ok_or_else(|| Error::UnsupportedBackend(format!("webgpu: `{}` has ONNX data type {}, not float or float16", t.name, t.data_type)))
}

/// The embedding table's name (also the head when tied).
const EMBEDDING: &str = "model.embed_tokens";

/// A decoder layer's norms by edge-llm's exporter's names (`model.layers.{l}.{name}`): what
/// [`plan`] looks for beside [`LINEARS`].
const NORMS: [&str; 2] = ["input_layernorm", "post_attention_layernorm"];

fn missing_weight(name: &str) -> Error {
    Error::UnsupportedBackend(format!(
        "webgpu: the graph has no `{name}`: the GPU backend runs block-quantized (MatMulNBits int4 / int8) models in edge-llm's layout"
    ))
}

/// The Llama in `graph` on the GPU: buffers for every weight [`plan`] finds, filled as their
/// tensors are read (inline ones from the graph, external ones from `package`'s shards as they
/// arrive); the norms kept on the host.
async fn load_weights<'a, B: Blob + 'a>(ctx: &GpuContext, cfg: &LlamaConfig, graph: &ModelProto, package: &mut Package<'a, B>) -> Result<GpuWeights> {
    let plan = plan(cfg, graph)?;
    let g = graph.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let gpu = plan
        .weights
        .iter()
        .map(|w| GpuNBits::allocate(ctx, &w.name, w.spec).map(|g| GpuNBits { int8_activations: w.int8_activations, ..g }))
        .collect::<Result<Vec<_>>>()?;
    let mut norms: HashMap<String, Vec<f32>> = HashMap::new();
    for t in g.initializer.iter().filter(|t| t.external_data.is_empty()) {
        if let Some(d) = plan.dests.get(&t.name) {
            let bytes = inline_bytes(t);
            write_tensor(ctx, &t.name, &gpu[d.weight], *d, bytes.len(), &|at, buf: &mut [u8]| buf.copy_from_slice(&bytes[at..at + buf.len()]))?;
        } else if plan.norms.contains(&t.name) {
            norms.insert(t.name.clone(), floats(t)?);
        }
    }
    if package.is_packed() {
        shards::consume_external_from(g, package, |i, length, read| {
            let t = &g.initializer[i];
            if let Some(d) = plan.dests.get(&t.name) {
                write_tensor(ctx, &t.name, &gpu[d.weight], *d, length, read)?;
            } else if plan.norms.contains(&t.name) {
                let mut raw_data = vec![0; length];
                read(0, &mut raw_data);
                let t = TensorProto { name: t.name.clone(), data_type: t.data_type, dims: t.dims.clone(), raw_data, ..Default::default() };
                norms.insert(t.name.clone(), floats(&t)?);
            }
            Ok(())
        })
        .await?;
    }
    let mut norm = |name: &str| norms.remove(name).ok_or_else(|| missing_weight(name));
    let mut gpu = gpu.into_iter();
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let linears: Vec<GpuNBits> = gpu.by_ref().take(LINEARS.len()).collect();
        let Ok(linears) = <[GpuNBits; 7]>::try_from(linears) else { unreachable!("the plan has seven linears per layer") };
        let pre = format!("model.layers.{l}");
        layers.push(GpuLayer { attn_norm: norm(&format!("{pre}.input_layernorm.weight"))?, linears, ffn_norm: norm(&format!("{pre}.post_attention_layernorm.weight"))? });
    }
    let embed = gpu.next().expect("the plan has the embedding");
    Ok(GpuWeights { cfg: cfg.clone(), embed, layers, final_norm: norm("model.norm.weight")?, lm_head: gpu.next() })
}
