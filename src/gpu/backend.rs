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

use super::decode::{GpuLayer, GpuLlama, GpuWeights, ModelShapes, Pick, LINEARS};
use super::nbits::{Activations, BlockSpec, Field, GpuNBits, WeightShape, ZeroPointKind};
use super::GpuContext;
use crate::backend::{Backend, BackendInfo, KvSnapshot, Session, StepFuture};
use crate::backend::SampleParams;
use crate::model::LlamaConfig;
use crate::onnx::{ModelProto, NodeProto, OnnxType, TensorProto};
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
        super::decode::plan_chunk(cfg, context_len(cfg), max, super::decode::PREFILL_CHUNK).map(|_| ())
    }

    /// Bytes of weights a decode step reads (every linear and the head; the embedding gather
    /// reads one row), from the graph's initializers alone: what the auto probe scales its
    /// GEMV timings by.
    pub fn decode_bytes(cfg: &LlamaConfig, graph: &ModelProto) -> Result<u64> {
        Ok(Self::model_shapes(cfg, graph)?.decode_bytes())
    }

    /// The [`ModelShapes`] of the weights a load of `graph` binds (what `auto`'s probe and the
    /// load-time tuning estimate a decode step from: its bytes, its dispatches).
    pub fn model_shapes(cfg: &LlamaConfig, graph: &ModelProto) -> Result<ModelShapes> {
        let plan = plan(cfg, graph)?;
        let mut shapes = plan.weights.iter().map(|w| WeightShape { spec: w.spec, activations: w.activations });
        let layers = (0..cfg.num_layers)
            .map(|_| <[WeightShape; 7]>::try_from(shapes.by_ref().take(LINEARS.len()).collect::<Vec<_>>()).expect("the plan has seven linears per layer"))
            .collect();
        let embed = shapes.next().expect("the plan has the embedding");
        Ok(ModelShapes { layers, embed, head: shapes.next() })
    }

    /// Load `package`'s graph on the GPU: the linears, embedding and head [`plan`] finds
    /// (`MatMulNBits` 4 / 8 bits, f32 / f16 `MatMul`; edge-llm's, optimum's and onnxruntime's
    /// layouts), each tensor written to its GPU buffers as its shard arrives, a bounded number
    /// of rows at a time ([`UPLOAD_CHUNK`]), so no copy of the weights stays in (wasm) memory.
    /// Any other format is `UnsupportedBackend`, naming what the GPU backend lacks.
    pub async fn open<'a, B: Blob + 'a>(ctx: GpuContext, package: &mut Package<'a, B>, graph: &ModelProto) -> Result<Self> {
        let cfg = package.config().architecture.clone();
        let weights = load_weights(&ctx, &cfg, graph, package).await?;
        Ok(Self::new(GpuLlama::build(ctx, weights, context_len(&cfg))?))
    }

    /// Everything created, submitted, written and read back so far.
    pub fn counters(&self) -> super::GpuCounters {
        self.0.model.borrow().counters()
    }

    /// Compute dispatches a step of `rows` tokens records ([`GpuLlama::dispatches`]).
    pub fn dispatches(&self, rows: usize) -> usize {
        self.0.model.borrow().dispatches(rows)
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
        let f16 = self.0.model.borrow().computes_f16();
        BackendInfo { name: "webgpu", kv_cache: "gpu", reason: None, gpu_precision: Some(if f16 { "f16" } else { "f32" }) }
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
    /// last. With `chain`, a greedy one-token step runs through [`GpuLlama::step_greedy`].
    /// The caller holds [`Stepping`] (see [`GpuSession::own`]).
    #[allow(clippy::await_holding_refcell_ref)]
    async fn run(&mut self, tokens: &[u32], pick: Pick<'_>, chain: bool) -> Result<u32> {
        if tokens.is_empty() {
            return Err(Error::Inference("forward needs at least one token".into()));
        }
        // A lost device fails every call: say so before touching it.
        self.shared.model.borrow().context().check_device()?;
        self.own().await?;
        let mut model = self.shared.model.borrow_mut();
        // A greedy decode step may run the next few ahead in its submit, and take them later
        // (not one whose logits are read: they would be the last chained step's).
        let next = match (tokens, pick) {
            (&[t], Pick::Argmax) if chain => model.step_greedy(Some(t)).await?,
            (tokens, pick) => model.prefill_with(tokens, pick).await?,
        };
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
            self.run(tokens, Pick::Argmax, false).await?;
            self.shared.model.borrow().logits().await
        })
    }

    fn forward_argmax<'a>(&'a mut self, tokens: &'a [u32]) -> Option<StepFuture<'a, Result<u32>>> {
        Some(Box::pin(async move {
            let shared = self.shared.clone();
            let _step = Stepping::enter(&shared.stepping)?;
            self.run(tokens, Pick::Argmax, true).await
        }))
    }

    fn forward_sample<'a>(&'a mut self, tokens: &'a [u32], params: SampleParams, history: &'a [u32]) -> Option<StepFuture<'a, Result<u32>>> {
        Some(Box::pin(async move {
            let shared = self.shared.clone();
            let _step = Stepping::enter(&shared.stepping)?;
            self.run(tokens, Pick::Sample { params, history }, false).await
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
    /// int8 values (and zero points), held as uint8 `v + 128` (the sign bit flipped on the way):
    /// the kernels read unsigned bytes.
    I8,
}

impl Source {
    fn of_float(t: &TensorProto) -> Option<Source> {
        match t.data_type {
            x if x == OnnxType::Float as i32 => Some(Source::F32),
            x if x == OnnxType::Float16 as i32 => Some(Source::F16),
            _ => None,
        }
    }

    /// Bytes of one element in the file.
    fn size(self) -> usize {
        match self {
            Source::F32 => 4,
            Source::F16 => 2,
            Source::Bytes | Source::I8 => 1,
        }
    }
}

/// Where an initializer goes: a field of one of [`Plan::weights`].
#[derive(Debug, Clone, Copy)]
struct Dest {
    weight: usize,
    field: Field,
    source: Source,
    /// A MatMul's weight stored `[k][n]`, transposed to the kernels' rows on the way.
    transposed: bool,
    /// One value in the file for every row (a per-tensor scale or zero point).
    broadcast: bool,
    /// The file holds the values densely, `k` a row (a MatMul's or Gather's tensor), not in
    /// MatMulNBits' blocks.
    dense: bool,
}

impl Dest {
    fn new(weight: usize, field: Field, source: Source) -> Self {
        Dest { weight, field, source, transposed: false, broadcast: false, dense: false }
    }
}

/// A weight of the graph, as the GPU holds it.
struct Planned {
    name: String,
    spec: BlockSpec,
    /// How its node rounds its input first (see [`GpuNBits::activations`]).
    activations: Activations,
}

/// What the GPU backend reads from a graph, from its nodes and its initializers' names, shapes
/// and types: each layer's seven linears (in [`LINEARS`] order), the embedding, the untied
/// head, where each of their initializers goes, and the norms' names.
struct Plan {
    weights: Vec<Planned>,
    dests: HashMap<String, Dest>,
    norms: HashSet<String>,
}

fn elements(t: &TensorProto) -> usize {
    t.dims.iter().map(|d| (*d).max(0) as usize).product()
}

/// Operators whose arithmetic the GPU's Llama forward pass does not have (GELU, LayerNorm...):
/// a graph with one is another architecture, left to the CPU backend.
const FOREIGN_OPS: [&str; 9] = ["Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Tanh", "LayerNormalization", "SkipLayerNormalization", "Relu"];

/// Most nodes the plan follows back from a value to its constant (a malformed graph with a
/// cycle ends there).
const MAX_HOPS: usize = 16;

/// The graph seen by what the GPU plan asks of it.
struct Graph<'g> {
    inits: HashMap<&'g str, &'g TensorProto>,
    producers: HashMap<&'g str, &'g NodeProto>,
    consumers: HashMap<&'g str, Vec<&'g NodeProto>>,
}

/// A float weight a `MatMul` (or `Gather`) reads: its initializer, whether it is stored
/// `[k][n]` (a MatMul's B as is) rather than `[n][k]` (an embedding table, or a B that is
/// `Transpose(table)`).
struct FloatSource<'g> {
    init: &'g TensorProto,
    transposed: bool,
}

impl<'g> Graph<'g> {
    #[inline(never)]
    fn new(g: &'g crate::onnx::GraphProto) -> Self {
        let mut graph = Graph { inits: g.initializer.iter().map(|t| (t.name.as_str(), t)).collect(), producers: HashMap::new(), consumers: HashMap::new() };
        for n in &g.node {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                graph.producers.insert(o.as_str(), n);
            }
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                graph.consumers.entry(i.as_str()).or_default().push(n);
            }
        }
        graph
    }

    /// The float initializer behind `value`, through `Cast`s to float and a 2-D `Transpose`
    /// (`transposed` says how a MatMul's B stores it: `[k][n]` as is).
    fn float_source(&self, mut value: &'g str, mut transposed: bool) -> std::result::Result<FloatSource<'g>, String> {
        for _ in 0..MAX_HOPS {
            if let Some(t) = self.inits.get(value) {
                return match Source::of_float(t) {
                    Some(_) if t.dims.len() == 2 => Ok(FloatSource { init: t, transposed }),
                    _ => Err(format!("`{value}` is a {:?} tensor of ONNX data type {}", t.dims, t.data_type)),
                };
            }
            let Some(n) = self.producers.get(value) else { return Err(format!("`{value}` is not a constant")) };
            match n.op_type.as_str() {
                "Cast" if attr(n, "to") == Some(OnnxType::Float as i64) => {}
                "Transpose" if matches!(ints_attr(n, "perm").as_deref(), None | Some([1, 0])) => transposed = !transposed,
                op => return Err(format!("`{value}` is computed by {op} (`{}`)", n.name)),
            }
            value = first(&n.input);
        }
        Err(format!("`{value}` is more than {MAX_HOPS} Casts / Transposes from a constant"))
    }

    /// `value`, or the value behind it through producers of `ops` (at most [`MAX_HOPS`]).
    fn through(&self, mut value: &'g str, ops: &[&str]) -> &'g str {
        for _ in 0..MAX_HOPS {
            match self.producers.get(value).filter(|p| ops.contains(&p.op_type.as_str())) {
                Some(p) => value = first(&p.input),
                None => break,
            }
        }
        value
    }

    /// The constant behind `value` through `Cast`, `Transpose` and `DequantizeLinear`.
    fn constant_behind(&self, value: &'g str) -> Option<&'g str> {
        Some(self.through(value, &["Cast", "Transpose", "DequantizeLinear"])).filter(|v| self.inits.contains_key(v))
    }

    /// The only node reading `value`, if it is a `op`.
    fn sole_user(&self, value: &str, op: &str) -> Option<&'g NodeProto> {
        match self.consumers.get(value).map(Vec::as_slice) {
            Some([n]) if n.op_type == op => Some(*n),
            _ => None,
        }
    }

    /// A `MatMulInteger`'s weight scale (a float constant, one or `n` values), as
    /// `quantize_dynamic` and edge-llm's int8 export write it: `Cast` of the product to float,
    /// then `Mul` by `Mul(x_scale, w_scale)`. Also the final `Mul` (a bias `Add` may follow).
    fn integer_scale(&self, node: &NodeProto, n: usize) -> std::result::Result<(&'g TensorProto, &'g NodeProto), String> {
        let shape = "not Cast → Mul(·, Mul(x_scale, w_scale)) after it";
        let cast = self.sole_user(first(&node.output), "Cast").ok_or(shape)?;
        let mul = self.sole_user(first(&cast.output), "Mul").ok_or(shape)?;
        let other = mul.input.iter().find(|i| *i != first(&cast.output)).ok_or(shape)?;
        let scales = self.producers.get(other.as_str()).filter(|p| p.op_type == "Mul").ok_or(shape)?;
        let w_scale = scales.input.iter().find_map(|i| self.inits.get(i.as_str()).copied()).ok_or(shape)?;
        if Source::of_float(w_scale).is_none() || !matches!(elements(w_scale), 1) && elements(w_scale) != n {
            return Err(format!("weight scale `{}` is not 1 or {n} floats", w_scale.name));
        }
        Ok((w_scale, mul))
    }

    /// How an int8 / uint8 embedding table is dequantized after its `Gather`: a
    /// `DequantizeLinear` with one scale and zero point (onnxruntime's `quantize_dynamic`), or
    /// `Cast` then `Mul` by the gathered row scales (edge-llm's int8 export).
    fn table_dequantization(&self, gather: &NodeProto) -> std::result::Result<(&'g TensorProto, Option<&'g TensorProto>), String> {
        let out = first(&gather.output);
        if let Some(dq) = self.sole_user(out, "DequantizeLinear") {
            let scale = dq.input.get(1).and_then(|i| self.inits.get(i.as_str()).copied()).ok_or("DequantizeLinear's scale is not a constant")?;
            let zero_point = dq.input.get(2).filter(|i| !i.is_empty()).map(|i| self.inits.get(i.as_str()).copied().ok_or("DequantizeLinear's zero point is not a constant")).transpose()?;
            return Ok((scale, zero_point));
        }
        let shape = "not DequantizeLinear, nor Cast → Mul by Gather(row scales) after it";
        let cast = self.sole_user(out, "Cast").ok_or(shape)?;
        let mul = self.sole_user(first(&cast.output), "Mul").ok_or(shape)?;
        let v = self.through(mul.input.iter().find(|i| *i != first(&cast.output)).ok_or(shape)?, &["Unsqueeze", "Reshape"]);
        let g = self.producers.get(v).filter(|p| p.op_type == "Gather" && p.input.get(1) == gather.input.get(1)).ok_or(shape)?;
        let scale = self.inits.get(g.input[0].as_str()).copied().ok_or(shape)?;
        Ok((scale, None))
    }

    /// A float initializer `[n]` added to `node`'s output by the only node reading it (a
    /// linear's bias, as exporters write it after a MatMul).
    fn bias_after(&self, node: &NodeProto, n: usize) -> Option<&'g TensorProto> {
        let users = self.consumers.get(node.output.first()?.as_str())?;
        let [add] = users.as_slice() else { return None };
        if add.op_type != "Add" {
            return None;
        }
        let other = add.input.iter().find(|i| *i != first(&node.output))?;
        self.inits.get(other.as_str()).copied().filter(|t| Source::of_float(t).is_some() && elements(t) == n && t.dims.len() == 1)
    }
}

/// A node's first input or output name, "" (no value) when it has none.
fn first(names: &[String]) -> &str {
    names.first().map_or("", String::as_str)
}

fn attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn ints_attr(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
}

/// The linear a node computes by its names: `model.layers.{l}.{LINEARS entry}` from its
/// weight's initializer (edge-llm's exporter: `….weight_Q4`, `….weight`), or from the node's
/// own name (optimum's export and onnxruntime's tools keep torch's module path:
/// `/model/layers.0/self_attn/q_proj/MatMul`, `…/MatMul_Q4`).
// Out of line, as the CPU load's passes are (`cpu::restore_constants` says why).
#[inline(never)]
fn linear_keys(gr: &Graph<'_>, n: &NodeProto) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(b) = n.input.get(1) {
        // The constant behind B (edge-llm's f16 weights are `Cast(init)`).
        let b = gr.through(b, &["Cast", "Transpose"]);
        let b = b.trim_end_matches("_Q4").trim_end_matches("_Q8").trim_end_matches("_quantized");
        keys.push(b.strip_suffix(".weight").unwrap_or(b).to_string());
    }
    let parts: Vec<&str> = n.name.trim_start_matches('/').split('/').collect();
    if let [path @ .., last] = parts.as_slice() {
        if last.starts_with("MatMul") && !path.is_empty() {
            keys.push(path.join("."));
        }
    }
    keys
}

/// The graph's Llama as the GPU holds it, from its nodes and initializers alone (no weights
/// read): each linear found by name ([`linear_keys`]) and read through its node — `MatMulNBits`
/// (4 or 8 bits, any zero points, a bias) or a float `MatMul` (f32 / f16
/// weights, `Cast` and `Transpose` followed, a bias `Add` after it); the embedding `Gather`'s
/// table, block-quantized by edge-llm's names or float; the head (the linear writing
/// `logits`), tied when it reads the embedding's table.
fn plan(cfg: &LlamaConfig, graph: &ModelProto) -> Result<Plan> {
    let g = graph.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    if let Some(n) = g.node.iter().find(|n| FOREIGN_OPS.contains(&n.op_type.as_str())) {
        return Err(Error::UnsupportedBackend(format!("webgpu: the graph computes {} (`{}`), which the GPU backend's Llama does not", n.op_type, n.name)));
    }
    let gr = Graph::new(g);
    let linear_ops = ["MatMul", "MatMulNBits", "MatMulInteger"];
    let mut linears: HashMap<String, &NodeProto> = HashMap::new();
    for n in g.node.iter().filter(|n| linear_ops.contains(&n.op_type.as_str())) {
        for key in linear_keys(&gr, n) {
            linears.entry(key).or_insert(n);
        }
    }
    let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    // `[n][k]` of each of `LINEARS`.
    let shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)];
    let mut plan = Plan { weights: Vec::new(), dests: HashMap::new(), norms: HashSet::new() };
    for l in 0..cfg.num_layers {
        let pre = format!("model.layers.{l}");
        for (p, (n, k)) in LINEARS.iter().zip(shapes) {
            let name = format!("{pre}.{p}");
            let node = linears.get(&name).ok_or_else(|| missing_weight(&format!("{name} (a MatMul / MatMulNBits)")))?;
            plan_linear(&gr, &mut plan, node, name, n, k)?;
        }
        plan.norms.extend(NORMS.map(|p| format!("{pre}.{p}.weight")));
    }
    plan.norms.insert("model.norm.weight".into());
    // The embedding: block-quantized by edge-llm's names, or the float table a Gather of the
    // token ids reads.
    let embed_at = plan.weights.len();
    if let Ok((spec, _)) = plan_weight(&gr.inits, EMBEDDING, cfg.vocab_size, h, embed_at, &mut plan.dests) {
        plan.weights.push(Planned { name: EMBEDDING.into(), spec, activations: Activations::Float });
    } else {
        let gather = g
            .node
            .iter()
            .find(|n| n.op_type == "Gather" && n.input.get(1).is_some_and(|i| i == "input_ids"))
            .ok_or_else(|| missing_weight(&format!("{EMBEDDING} (a Gather of `input_ids`)")))?;
        match gr.inits.get(gather.input[0].as_str()).filter(|t| is_int8(t)) {
            Some(table) => {
                let (scale, zero_point) = gr.table_dequantization(gather).map_err(|why| unsupported_node(gather, &why))?;
                let w = Q8Rows { data: table, scale, zero_point, transposed: false };
                plan_q8_rows(&mut plan, EMBEDDING.into(), w, cfg.vocab_size, h, None, Activations::Float)?;
            }
            None => {
                let table = gr.float_source(&gather.input[0], false).map_err(|why| unsupported_node(gather, &why))?;
                plan_float(&mut plan, EMBEDDING.into(), table, cfg.vocab_size, h, None)?;
            }
        }
    }
    // The head: the linear that writes the logits (through `Identity` / `Cast`), else by its
    // name, else the linear reading the embedding's table.
    let writer = gr.producers.get(gr.through("logits", &["Identity", "Cast"])).filter(|n| linear_ops.contains(&n.op_type.as_str())).copied();
    let head = writer
        .or_else(|| linears.get("lm_head").or_else(|| linears.get(EMBEDDING)).copied())
        .ok_or_else(|| missing_weight("lm_head (the MatMul writing `logits`)"))?;
    let before = plan.weights.len();
    plan_linear(&gr, &mut plan, head, "lm_head".into(), cfg.vocab_size, h)?;
    if plan.weights.len() == before {
        // Tied: it read the embedding's table (`plan_linear` added nothing); the table's
        // kernels compute as the head's node asks.
        plan.weights[embed_at].activations = activations(&gr, head, &plan.weights[embed_at].spec);
    }
    if let Some(n) = plan.norms.iter().find(|n| !gr.inits.contains_key(n.as_str())) {
        return Err(missing_weight(n));
    }
    Ok(plan)
}

/// How `node` rounds its input: a `MatMulNBits` to int8 blocks where `accuracy_level` is 4
/// with integer or no zero points (onnxruntime computes int8 only then; float zero points run
/// on float activations whatever the node asks, as the CPU backend, `cpu::q8_block_matmul`);
/// a `MatMulInteger` to uint8 over the tensor, as the `DynamicQuantizeLinear` feeding it.
fn activations(gr: &Graph<'_>, node: &NodeProto, spec: &BlockSpec) -> Activations {
    let int8_blocks = node.op_type == "MatMulNBits" && attr(node, "accuracy_level") == Some(crate::onnx::ACCURACY_LEVEL_INT8) && !spec.is_float() && spec.zero_points != ZeroPointKind::Float;
    match (int8_blocks, dynamically_quantized(gr, node)) {
        (true, _) => Activations::Int8Blocks,
        (_, true) => Activations::Uint8Tensor,
        _ => Activations::Float,
    }
}

/// Whether `node` is a `MatMulInteger` whose input a `DynamicQuantizeLinear` rounds
/// (onnxruntime's `quantize_dynamic`): uint8 over the whole tensor.
fn dynamically_quantized(gr: &Graph<'_>, node: &NodeProto) -> bool {
    node.op_type == "MatMulInteger" && node.input.first().and_then(|a| gr.producers.get(a.as_str())).is_some_and(|p| p.op_type == "DynamicQuantizeLinear")
}

fn unsupported_node(n: &NodeProto, why: &str) -> Error {
    Error::UnsupportedBackend(format!("webgpu: {} `{}` reads a weight the GPU backend cannot hold ({why})", n.op_type, n.name))
}

/// Add the weight `node` computes `name` with (`[n][k]`) to `plan`; nothing when it is a table
/// the plan already holds (a head tied to the embedding).
#[inline(never)]
fn plan_linear(gr: &Graph<'_>, plan: &mut Plan, node: &NodeProto, name: String, n: usize, k: usize) -> Result<()> {
    let index = plan.weights.len();
    // Input `i`'s constant, through `Cast`s (edge-llm's recipe stores f16 scales and zero
    // points and casts them to float in the graph).
    let input = |i: usize| {
        node.input.get(i).filter(|s| !s.is_empty()).map(|s| {
            let v = gr.through(s, &["Cast"]);
            gr.inits.get(v).copied().ok_or_else(|| unsupported_node(node, &format!("input {i} `{s}` is not a constant")))
        })
    };
    match node.op_type.as_str() {
        "MatMulNBits" if node.domain == crate::onnx::MS_DOMAIN => {
            let data = input(1).ok_or_else(|| unsupported_node(node, "no B"))??;
            if plan.dests.get(&data.name).is_some_and(|d| d.field == Field::Data) {
                return Ok(()); // tied
            }
            let scales = input(2).ok_or_else(|| unsupported_node(node, "no scales"))??;
            let zero_points = input(3).transpose()?;
            let bits = attr(node, "bits").unwrap_or(4).max(0) as usize;
            let mut spec = plan_nbits(NBitsTensors { data, scales, zero_points }, bits, n, k, index, &mut plan.dests)?;
            // `cpu::import::prepare` (run by the packer and by `Engine::open_async` before any
            // backend reads the graph) drops a trivial `g_idx` and refuses any other.
            if node.input.get(4).is_some_and(|g| !g.is_empty()) {
                return Err(unsupported_node(node, "a g_idx input: the graph was not prepared (`cpu::import::prepare` drops a trivial one, refuses others)"));
            }
            if let Some(bias) = input(5).transpose()? {
                add_bias(plan, &mut spec, bias, index)?;
            }
            let activations = activations(gr, node, &spec);
            if activations == Activations::Int8Blocks && k % 32 != 0 {
                return Err(Error::UnsupportedBackend(format!("webgpu: `{name}` asks for int8 activations over k = {k}, not a multiple of 32")));
            }
            plan.weights.push(Planned { name, spec, activations });
            Ok(())
        }
        "MatMul" => {
            let b = node.input.get(1).ok_or_else(|| unsupported_node(node, "no B"))?;
            if gr.constant_behind(b).is_some_and(|c| plan.dests.contains_key(c)) {
                return Ok(()); // tied (a table dequantized in the graph, onnxruntime's int8)
            }
            let w = gr.float_source(b, true).map_err(|why| unsupported_node(node, &why))?;
            if plan.dests.contains_key(&w.init.name) {
                return Ok(()); // tied
            }
            plan_float(plan, name, w, n, k, gr.bias_after(node, n))
        }
        "MatMulInteger" => {
            if !dynamically_quantized(gr, node) {
                return Err(unsupported_node(node, "its input is not a DynamicQuantizeLinear's"));
            }
            let data = input(1).ok_or_else(|| unsupported_node(node, "no B"))??;
            let (scale, scaled) = gr.integer_scale(node, n).map_err(|why| unsupported_node(node, &why))?;
            let w = Q8Rows { data, scale, zero_point: input(3).transpose()?, transposed: true };
            plan_q8_rows(plan, name, w, n, k, gr.bias_after(scaled, n), Activations::Uint8Tensor)
        }
        op => Err(unsupported_node(node, &format!("{op} is not a linear the GPU backend computes"))),
    }
}

/// A float weight `[n][k]` (stored so, or `[k][n]` where `w.transposed`), and its bias.
fn plan_float(plan: &mut Plan, name: String, w: FloatSource<'_>, n: usize, k: usize, bias: Option<&TensorProto>) -> Result<()> {
    let dims = if w.transposed { [k, n] } else { [n, k] };
    let source = Source::of_float(w.init).expect("a float source");
    if w.init.dims.iter().map(|d| (*d).max(0) as usize).ne(dims) {
        return Err(Error::UnsupportedBackend(format!("webgpu: `{}` is {:?}, not the {dims:?} `{name}` takes", w.init.name, w.init.dims)));
    }
    let index = plan.weights.len();
    let mut spec = BlockSpec::float(n, k, if source == Source::F16 { 16 } else { 32 });
    plan.dests.insert(w.init.name.clone(), Dest { transposed: w.transposed, dense: true, ..Dest::new(index, Field::Data, source) });
    if let Some(b) = bias {
        add_bias(plan, &mut spec, b, index)?;
    }
    plan.weights.push(Planned { name, spec, activations: Activations::Float });
    Ok(())
}

fn is_int8(t: &TensorProto) -> bool {
    t.data_type == OnnxType::Int8 as i32 || t.data_type == OnnxType::Uint8 as i32
}

/// An 8-bit weight quantized per tensor or per output (one scale, and zero point, for all rows
/// or one per row): `MatMulInteger`'s B, a quantized embedding table.
struct Q8Rows<'g> {
    data: &'g TensorProto,
    scale: &'g TensorProto,
    zero_point: Option<&'g TensorProto>,
    /// Stored `[k][n]` (a MatMul's B), not `[n][k]`.
    transposed: bool,
}

/// `w` (`[n][k]`) as a MatMulNBits-layout 8-bit weight with one block per row: the values
/// transposed to rows as they stream, int8 ones held as `v + 128`, a per-tensor scale and
/// zero point repeated for every row; uint8 values without a zero point have 0, int8 ones 0
/// (held as 128, the 8-bit middle).
fn plan_q8_rows(plan: &mut Plan, name: String, w: Q8Rows<'_>, n: usize, k: usize, bias: Option<&TensorProto>, activations: Activations) -> Result<()> {
    let bad = |what: String| Error::UnsupportedBackend(format!("webgpu: `{}` is not an 8-bit [{n}][{k}] weight ({what})", w.data.name));
    let dims = if w.transposed { [k, n] } else { [n, k] };
    if !is_int8(w.data) || w.data.dims.iter().map(|d| (*d).max(0) as usize).ne(dims) {
        return Err(bad(format!("{:?}, ONNX data type {}", w.data.dims, w.data.data_type)));
    }
    let values = if w.data.data_type == OnnxType::Int8 as i32 { Source::I8 } else { Source::Bytes };
    let count = |t: &TensorProto| match elements(t) {
        1 => Ok(true),
        c if c == n => Ok(false),
        c => Err(bad(format!("`{}` holds {c} values, not 1 or {n}", t.name))),
    };
    let scale_source = Source::of_float(w.scale).ok_or_else(|| bad(format!("scale `{}` has ONNX data type {}", w.scale.name, w.scale.data_type)))?;
    let index = plan.weights.len();
    let zero_points = if w.zero_point.is_some() || values == Source::Bytes { ZeroPointKind::Int } else { ZeroPointKind::Middle };
    let mut spec = BlockSpec { n, k, bits: 8, block_size: k.div_ceil(8).max(2) * 8, zero_points, f16_params: false, bias: false };
    plan.dests.insert(w.data.name.clone(), Dest { transposed: w.transposed, dense: true, ..Dest::new(index, Field::Data, values) });
    plan.dests.insert(w.scale.name.clone(), Dest { broadcast: count(w.scale)?, ..Dest::new(index, Field::Scales, scale_source) });
    if let Some(z) = w.zero_point {
        if z.data_type != w.data.data_type {
            return Err(bad(format!("zero point `{}` has ONNX data type {}", z.name, z.data_type)));
        }
        plan.dests.insert(z.name.clone(), Dest { broadcast: count(z)?, ..Dest::new(index, Field::ZeroPoints, values) });
    }
    if let Some(b) = bias {
        add_bias(plan, &mut spec, b, index)?;
    }
    plan.weights.push(Planned { name, spec, activations });
    Ok(())
}

fn add_bias(plan: &mut Plan, spec: &mut BlockSpec, bias: &TensorProto, index: usize) -> Result<()> {
    let source = Source::of_float(bias).filter(|_| elements(bias) == spec.n).ok_or_else(|| {
        Error::UnsupportedBackend(format!("webgpu: bias `{}` is not {} floats ({:?}, ONNX data type {})", bias.name, spec.n, bias.dims, bias.data_type))
    })?;
    spec.bias = true;
    plan.dests.insert(bias.name.clone(), Dest::new(index, Field::Bias, source));
    Ok(())
}

/// The block-quantized weight `name` (`[n][k]`) by edge-llm's exporter's initializer names
/// (`{name}.weight_Q4` / `_Q8`, `weight_scales[_f16]`, `weight_zero_points[_f16]`): its spec,
/// its initializers' destinations recorded in `dests` as weight `index`, and the name of its
/// data initializer.
fn plan_weight<'g>(inits: &HashMap<&str, &'g TensorProto>, name: &str, n: usize, k: usize, index: usize, dests: &mut HashMap<String, Dest>) -> Result<(BlockSpec, &'g str)> {
    let find = |suffixes: &[&str]| suffixes.iter().find_map(|s| inits.get(format!("{name}.{s}").as_str()).copied());
    let (data, bits) = match (find(&["weight_Q4"]), find(&["weight_Q8"])) {
        (Some(t), _) => (t, 4),
        (None, Some(t)) => (t, 8),
        (None, None) => return Err(missing_weight(&format!("{name}.weight_Q4"))),
    };
    let scales = find(&["weight_scales", "weight_scales_f16"]).ok_or_else(|| missing_weight(&format!("{name}.weight_scales")))?;
    let spec = plan_nbits(NBitsTensors { data, scales, zero_points: find(&["weight_zero_points", "weight_zero_points_f16"]) }, bits, n, k, index, dests)?;
    Ok((spec, data.name.as_str()))
}

/// A MatMulNBits weight's initializers.
struct NBitsTensors<'g> {
    data: &'g TensorProto,
    scales: &'g TensorProto,
    zero_points: Option<&'g TensorProto>,
}

/// A MatMulNBits weight `[n][k]` of `bits` from its B (`data`, uint8 `[n][blocks][block
/// bytes]`), scales and zero points: its spec, and where each tensor goes.
fn plan_nbits(t: NBitsTensors<'_>, bits: usize, n: usize, k: usize, index: usize, dests: &mut HashMap<String, Dest>) -> Result<BlockSpec> {
    let NBitsTensors { data, scales, zero_points } = t;
    let bad = |what: String| Error::UnsupportedBackend(format!("webgpu: `{}` is not a [{n}][{k}] MatMulNBits weight ({what})", data.name));
    let &[dn, blocks, block_bytes] = &data.dims[..] else { return Err(bad(format!("dims {:?}", data.dims))) };
    let (dn, blocks, block_bytes) = (dn.max(0) as usize, blocks.max(0) as usize, block_bytes.max(0) as usize);
    if !matches!(bits, 4 | 8) {
        return Err(bad(format!("{bits} bits; the kernels take 4 or 8")));
    }
    let block_size = block_bytes * 8 / bits;
    if dn != n || block_size == 0 || k.div_ceil(block_size) != blocks || data.data_type != OnnxType::Uint8 as i32 {
        return Err(bad(format!("dims {:?}, ONNX data type {}", data.dims, data.data_type)));
    }
    let scale_source = Source::of_float(scales).filter(|_| elements(scales) == n * blocks).ok_or_else(|| bad(format!("scales `{}` are not {} floats", scales.name, n * blocks)))?;
    let mut spec = BlockSpec { n, k, bits, block_size, zero_points: ZeroPointKind::Middle, f16_params: scale_source == Source::F16, bias: false };
    dests.insert(data.name.clone(), Dest::new(index, Field::Data, Source::Bytes));
    dests.insert(scales.name.clone(), Dest::new(index, Field::Scales, scale_source));
    if let Some(z) = zero_points {
        let source = match Source::of_float(z) {
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
        dests.insert(z.name.clone(), Dest::new(index, Field::ZeroPoints, source));
    }
    Ok(spec)
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
/// [`UPLOAD_CHUNK`] bytes of rows at a time, transposed (a MatMul's `[k][n]` float weight),
/// widened (f16 to f32 where the GPU holds f32) or padded (integer zero points, f16 rows) to
/// the GPU's layout on the way.
fn write_tensor(ctx: &GpuContext, name: &str, w: &GpuNBits, d: Dest, length: usize, read: &dyn Fn(usize, &mut [u8])) -> Result<()> {
    let field = d.field;
    let spec = w.spec;
    let es = d.source.size();
    let file_row = match (field, d.source) {
        (Field::Data, _) if d.dense => spec.k * es,
        (Field::Data, _) => spec.row_bytes(Field::Data),
        (Field::Bias, _) => es,
        (_, Source::F32) => spec.blocks() * 4,
        (_, Source::F16) => spec.blocks() * 2,
        (_, Source::Bytes | Source::I8) => spec.int_zero_point_row_bytes(),
    };
    let file_rows = if d.broadcast { 1 } else { spec.n };
    if length != file_rows * file_row {
        return Err(Error::InvalidModel(format!("`{name}` holds {length} bytes, not the {} its shape says", file_rows * file_row)));
    }
    // f16 stays f16 where the GPU holds it so: a float weight's values, f16 scales.
    let widen = d.source == Source::F16 && !(field == Field::Data || spec.f16_params && field != Field::Bias);
    let gpu_row = spec.row_bytes(field);
    let rows_per = (UPLOAD_CHUNK / gpu_row.max(1)).max(1);
    let (mut file, mut gpu, mut column) = (Vec::new(), Vec::new(), Vec::new());
    for r0 in (0..spec.n).step_by(rows_per) {
        let rows = rows_per.min(spec.n - r0);
        file.resize(rows * file_row, 0);
        if d.broadcast {
            let mut one = vec![0; file_row];
            read(0, &mut one);
            file = one.repeat(rows);
        } else if d.transposed {
            // Row i of the file holds element i of every output row.
            column.resize(rows * es, 0);
            for i in 0..spec.k {
                read((i * spec.n + r0) * es, &mut column);
                for (r, v) in column.chunks_exact(es).enumerate() {
                    file[r * file_row + i * es..][..es].copy_from_slice(v);
                }
            }
        } else {
            read(r0 * file_row, &mut file);
        }
        if d.source == Source::I8 {
            file.iter_mut().for_each(|b| *b ^= 0x80);
        }
        if widen {
            gpu.clear();
            gpu.extend(file.chunks_exact(2).flat_map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32().to_le_bytes()));
        } else if gpu_row != file_row {
            gpu.clear();
            for row in file.chunks_exact(file_row) {
                gpu.extend_from_slice(row);
                gpu.resize(gpu.len() + gpu_row - file_row, 0);
            }
        } else {
            w.write(ctx, field, r0, &file);
            continue;
        }
        w.write(ctx, field, r0, &gpu);
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
        "webgpu: the graph has no `{name}`: the GPU backend runs Llama decoders in edge-llm's, optimum's and onnxruntime's layouts (MatMulNBits int4 / int8, f32 / f16 MatMul)"
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
        .map(|w| GpuNBits::allocate(ctx, &w.name, w.spec).map(|g| GpuNBits { activations: w.activations, ..g }))
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
