//! CPU backend: a tract plan over a decoder-only ONNX graph in the HF/optimum KV-cache layout.
//!
//! One optimized plan with symbolic sequence (`S`) and past (`P`) lengths serves prefill and
//! every decode step. The session keeps the `present.*` tensors of a step and feeds them back
//! as `past_key_values.*` of the next, so the prompt is never recomputed.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

pub use crate::backend::KvSnapshot;
pub use backend::CpuBackend;
use crate::{Error, Result};

pub mod attention;
mod backend;
pub mod kernels;
pub(crate) mod detached;
pub mod dynamic_quantize;
pub(crate) mod import;
pub mod q4_matmul;
pub mod q4_min_matmul;
pub mod q8_block_matmul;
pub mod q8_matmul;
mod row_gather;
mod rows;
pub mod threads;

type Plan = Arc<TypedSimplePlan>;

fn inference_err(e: impl std::fmt::Display) -> Error {
    Error::Inference(format!("{e:#}"))
}

/// The value of `outlet` when it is a constant, or a stateless op over constants: the `Cast`
/// of fp16 scales (`ExportOptions::f16_scales`), which tract folds at load only under 4 MiB,
/// while the weight kernels need their scales when they are wired.
pub(crate) fn const_value(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Arc<Tensor>>> {
    if let Some(k) = &model.outlet_fact(outlet)?.konst {
        return Ok(Some(k.clone()));
    }
    let node = model.node(outlet.node);
    if node.inputs.is_empty() {
        return Ok(None);
    }
    let mut inputs = tvec![];
    for i in &node.inputs {
        match const_value(model, *i)? {
            Some(t) => inputs.push(t.into_tvalue()),
            None => return Ok(None),
        }
    }
    Ok(node.op.eval_out_of_plan(inputs)?.map(|mut out| out.swap_remove(outlet.slot).into_arc_tensor()))
}

/// What a graph input or output is, by its HF/optimum name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    InputIds,
    AttentionMask,
    PositionIds,
    /// `past_key_values.{layer}.key|value` / `present.{layer}.key|value`; bool = is value.
    Kv(usize, bool),
    Logits,
}

fn classify(name: &str) -> Option<Port> {
    match name {
        "input_ids" => return Some(Port::InputIds),
        "attention_mask" => return Some(Port::AttentionMask),
        "position_ids" => return Some(Port::PositionIds),
        "logits" => return Some(Port::Logits),
        _ => {}
    }
    let rest = name.strip_prefix("past_key_values.").or_else(|| name.strip_prefix("present."))?;
    let (layer, kind) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    match kind {
        "key" => Some(Port::Kv(layer, false)),
        "value" => Some(Port::Kv(layer, true)),
        _ => None,
    }
}

/// One optimized plan and the meaning of its inputs and outputs.
struct Variant {
    plan: Plan,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// With a folded cache: the plan nodes whose op state holds KV cache.
    folded_kv: Vec<FoldedKv>,
}

/// How a plan's KV cache is folded into its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// Explicit `past_key_values.*` inputs and `present.*` outputs.
    None,
    /// HF/optimum layout: tract-transformers' folding, then [`attention::fuse`].
    Optimum,
    /// onnxruntime-genai layout: [`attention::fuse_genai`].
    Genai,
}

impl Variant {
    /// Optimize `model` (input facts set) into a runnable plan.
    fn build(model: InferenceModel, fold: Fold, last_logits_only: bool, num_layers: usize) -> Result<Self> {
        let invalid = |e: TractError| Error::InvalidModel(format!("{e:#}"));
        let mut typed = model.into_typed().map_err(invalid)?;
        if activations_in_f16(&typed) {
            // onnxruntime's CPU provider computes an fp16 graph's arithmetic in f32 and gives
            // the tokens of the same graph converted to f32 (192 of 192 on SmolLM2's fp16 files,
            // README "Files from other tools"); tract's f16 kernels accumulate in f16 (emulated
            // on wasm, slower too). f16 weights are widened once at load: twice their bytes.
            use tract_onnx::tract_core::transform::ModelTransform;
            tract_onnx::tract_core::floats::FloatPrecisionTranslator::new(f16::datum_type(), f32::datum_type())
                .transform(&mut typed)
                .map_err(invalid)?;
        }
        if last_logits_only {
            slice_last_position(&mut typed).map_err(invalid)?;
        }
        let mut typed = typed.into_decluttered().map_err(invalid)?;
        // `EDGE_LLM_KV_CONCAT=1` (native A/B runs) keeps tract-transformers' concatenating cache.
        let concat = std::env::var("EDGE_LLM_KV_CONCAT").is_ok_and(|v| v == "1");
        if fold == Fold::Optimum {
            // tract-transformers: KV inputs/outputs become in-graph state, RoPE / softmax /
            // attention patterns become fused ops.
            let t = tract_onnx::tract_core::transform::get_transform("transformers_detect_all")
                .map_err(invalid)?
                .ok_or_else(|| Error::Inference("tract-transformers is not linked in".into()))?;
            t.transform(&mut typed).map_err(invalid)?;
            // Its cache still concatenates each step; ours grows in place.
            if !concat {
                attention::fuse(&mut typed).map_err(invalid)?;
            }
        }
        if fold == Fold::Genai {
            attention::fuse_genai(&mut typed).map_err(invalid)?;
        }
        let mut typed = typed.into_optimized().map_err(invalid)?;
        row_gather::lean_gathers(&mut typed).map_err(invalid)?;
        // Ports of the final graph: folding removes the KV inputs and outputs.
        let port_of = |name: &str, what: &str| {
            classify(name).ok_or_else(|| Error::InvalidModel(format!("unexpected model {what} `{name}`")))
        };
        let inputs = typed.inputs.iter().map(|i| port_of(&typed.node(i.node).name, "input")).collect::<Result<Vec<_>>>()?;
        let outputs = typed
            .outputs
            .iter()
            .map(|o| {
                let label = typed.outlet_label(*o).map(str::to_string).unwrap_or_else(|| typed.node(o.node).name.clone());
                port_of(&label, "output")
            })
            .collect::<Result<Vec<_>>>()?;
        // Instantiated in crates/tract-once (compiled for size): it runs once per load.
        let plan = edge_llm_tract_once::into_runnable(typed).map_err(inference_err)?;
        let stateful = !inputs.iter().any(|p| matches!(p, Port::Kv(..)));
        let folded_kv = if stateful && num_layers > 0 { folded_kv_nodes(&plan, num_layers)? } else { Vec::new() };
        Ok(Variant { plan, inputs, outputs, folded_kv })
    }
}

/// Whether values computed from the model's inputs are f16 anywhere: an fp16 graph. f16
/// constants alone (fp16 quantization scales) do not count.
#[inline(never)]
fn activations_in_f16(model: &TypedModel) -> bool {
    let Ok(order) = model.eval_order() else { return false };
    let mut from_inputs = vec![false; model.nodes.len()];
    for id in order {
        let node = &model.nodes[id];
        from_inputs[id] = model.inputs.iter().any(|i| i.node == id) || node.inputs.iter().any(|i| from_inputs[i.node]);
        if from_inputs[id] && node.outputs.iter().any(|o| o.fact.datum_type == f16::datum_type()) {
            return true;
        }
    }
    false
}

/// tract-linalg registers its portable (`generic`) matmul kernels through `inventory`
/// constructors, and a linker keeps a constructor only when something else in its object file
/// is used. Built without LTO in several codegen units (the threaded package's test profile),
/// nothing used `generic::mmm`: its kernels, the only f16 ones on wasm, were never registered,
/// and fp16 files failed to load (`EinSumMatMul: suitable.len() > 0`). Reading one of those
/// kernels links the file, and with it every kernel it registers.
fn link_generic_kernels() {
    std::hint::black_box(tract_linalg::generic::mmm::generic_f16_4x4.name.len());
}

/// tract's ONNX loader with edge-llm's kernels registered as `options` asks (the 8-bit
/// `MatMulNBits` one always: tract has none).
pub fn onnx_with_kernels(options: &CpuOptions, q4_kernel: bool) -> tract_onnx::Onnx {
    link_generic_kernels();
    let mut onnx = tract_onnx::onnx();
    dynamic_quantize::register(&mut onnx);
    if q4_kernel {
        q4_matmul::register(&mut onnx, options.q4_activations);
    }
    // After the q4 kernel: it takes the formats no other builder has, then hands on the rest.
    let mode = if q4_kernel { 1 + options.q4_activations.index() } else { 0 };
    q8_block_matmul::register(&mut onnx, mode);
    if options.q8_kernel {
        q8_matmul::register(&mut onnx);
    }
    onnx
}

/// A loaded, optimized model. Cheap to share; each [`CpuSession`] holds its own KV cache.
pub struct CpuModel {
    /// Serves every step (HF/optimum layout), or only the first prompt (onnxruntime-genai).
    main: Variant,
    /// onnxruntime-genai layout: the one-token step against a non-empty cache.
    decode: Option<Variant>,
    /// `(kv_heads, head_dim)` of each layer's cache, in layer order.
    kv_shape: (usize, usize),
    num_layers: usize,
    vocab_size: usize,
    /// The KV cache lives inside the plan's state (folded by tract-transformers).
    stateful: bool,
    /// See [`CpuOptions::last_logits_only`].
    last_logits_only: bool,
    /// The graph quantizes activations with one scale over the whole input
    /// (`DynamicQuantizeLinear`, onnxruntime's `quantize_dynamic`): a prompt runs in one piece,
    /// as onnxruntime runs it, since a scale over a chunk of it is another computation.
    whole_prompt: bool,
}

/// How to build the CPU plan.
#[derive(Debug, Clone)]
pub struct CpuOptions {
    /// Keep the KV cache in the plan's state, growing in place ([`attention::KvAttention`];
    /// on by default, `EDGE_LLM_FOLD_KV=0` turns it off natively). Off: the session carries
    /// `present.*` into the next step's `past_key_values.*` inputs.
    pub fold_kv_cache: bool,
    /// Run 4-bit block-32 `MatMulNBits` with edge-llm's kernel ([`q4_matmul`]) instead of
    /// tract's Q4_0 path. On by default on wasm32, where tract has no SIMD kernel for Q4_0;
    /// natively also whenever a node's scales are not exact in f16, which Q4_0 stores them in
    /// ([`q4_matmul::scales_need_f32`]).
    pub q4_kernel: bool,
    /// With `q4_kernel`: which nodes quantize activations to int8 per 32-block and use integer
    /// dot products (~2x faster on wasm, activation rounding ~0.4 %), and how the others compute.
    /// Default [`q4_matmul::Q4Activations::AsModel`]: int8 where `accuracy_level` is 4, as
    /// onnxruntime does, 16-bit blocks elsewhere (`EDGE_LLM_Q4_INT8_ACT=1`: int8 on all of them;
    /// `EDGE_LLM_Q4_EXACT=1`: f32 elsewhere, [`q4_matmul::Q4Activations::AsModelExact`]).
    pub q4_activations: q4_matmul::Q4Activations,
    /// Compute the logits of the last new position only (all a generator samples from): the
    /// head, the final norm and as much of the last layer as depends on that row alone run on
    /// one row instead of the whole prompt. [`CpuSession::forward_all`] then fails.
    pub last_logits_only: bool,
    /// Run `MatMulInteger` with a constant weight through edge-llm's kernel ([`q8_matmul`]):
    /// tract's quantized einsum has no SIMD i32 kernel on wasm. On by default on wasm32.
    pub q8_kernel: bool,
    /// CPU threads (caller included) for the int4/int8 kernels and tract's large matmuls; the
    /// pool is process-wide ([`threads`]), so this sets it for every model. `None` keeps the
    /// current count (default: `EDGE_LLM_THREADS`, else cores − 1, at least 1).
    pub threads: Option<usize>,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            fold_kv_cache: !std::env::var("EDGE_LLM_FOLD_KV").is_ok_and(|v| v == "0"),
            q4_kernel: cfg!(target_arch = "wasm32") || std::env::var("EDGE_LLM_Q4_KERNEL").is_ok_and(|v| v == "1"),
            q4_activations: if std::env::var("EDGE_LLM_Q4_INT8_ACT").is_ok_and(|v| v == "1") {
                q4_matmul::Q4Activations::Int8
            } else if std::env::var("EDGE_LLM_Q4_EXACT").is_ok_and(|v| v == "1") {
                q4_matmul::Q4Activations::AsModelExact
            } else {
                q4_matmul::Q4Activations::AsModel
            },
            last_logits_only: false,
            q8_kernel: cfg!(target_arch = "wasm32") || std::env::var("EDGE_LLM_Q8_KERNEL").is_ok_and(|v| v == "1"),
            threads: None,
        }
    }
}

impl CpuModel {
    /// Load an ONNX decoder from bytes and optimize it for batch 1.
    pub fn load(onnx: &[u8]) -> Result<Self> {
        Self::from_proto(crate::onnx::decode(onnx)?, &CpuOptions::default())
    }

    /// Load a packed model: the graph (its weights as external data) and `shards`, which gives
    /// each verified weight shard by name when it is needed; shards are consumed as their
    /// weights become tensors (see [`detach_weights`]).
    pub fn from_packed<B: crate::package::Blob>(
        proto: tract_onnx::pb::ModelProto,
        shards: impl FnMut(&str) -> Result<B>,
        options: &CpuOptions,
    ) -> Result<Self> {
        crate::package::at_once(Self::from_shards(proto, &mut crate::package::ShardFn(shards), options))
    }

    /// [`CpuModel::from_packed`] with shards that may still be downloading: each is awaited
    /// when its weights are reached, and dropped once they are tensors.
    pub(crate) async fn from_shards<B: crate::package::Blob>(
        mut proto: tract_onnx::pb::ModelProto,
        shards: &mut impl crate::package::ShardSource<B>,
        options: &CpuOptions,
    ) -> Result<Self> {
        import::prepare(&mut proto)?;
        let graph = proto.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
        let transpose = q8_transposes(Some(graph), options);
        let mut external = Vec::new();
        crate::package::shards::consume_external_from(graph, shards, |i, length, read| {
            let init = &graph.initializer[i];
            external.push((i, weight_tensor(init, length, transpose.get(&init.name), read)?));
            Ok(())
        })
        .await?;
        let (weights, table) = detach_weights(&mut proto, external, &transpose)?;
        Self::build(proto, weights, table, options)
    }

    /// Load a decoded ONNX model whose weights are all in memory.
    pub fn from_proto(mut proto: tract_onnx::pb::ModelProto, options: &CpuOptions) -> Result<Self> {
        import::prepare(&mut proto)?;
        let transpose = q8_transposes(proto.graph.as_ref(), options);
        let (weights, table) = detach_weights(&mut proto, Vec::new(), &transpose)?;
        Self::build(proto, weights, table, options)
    }

    fn build(
        proto: tract_onnx::pb::ModelProto,
        weights: Vec<(String, Arc<Tensor>)>,
        table: detached::DetachedWeights,
        options: &CpuOptions,
    ) -> Result<Self> {
        check_ops(&proto)?;
        let whole_prompt = proto.graph.as_ref().is_some_and(|g| g.node.iter().any(|n| n.op_type == "DynamicQuantizeLinear"));
        if let Some(n) = options.threads {
            threads::configure(n);
        }
        let q4_kernel = options.q4_kernel || q4_matmul::scales_need_f32(&proto, &weights);
        let onnx = onnx_with_kernels(options, q4_kernel);
        let mut model = detached::while_parsing(table, || onnx.model_for_proto_model(&proto)).map_err(|e| Error::InvalidModel(format!("{e:#}")))?;
        drop(proto);
        restore_constants(&mut model, weights)?;
        let s = model.symbols.sym("S");
        let p = model.symbols.sym("P");
        let mut inputs = Vec::new();
        let mut kv_shape = None;
        let mut num_layers = 0;
        for ix in 0..model.inputs.len() {
            let name = model.node(model.inputs[ix].node).name.clone();
            let port = classify(&name)
                .filter(|p| *p != Port::Logits)
                .ok_or_else(|| Error::InvalidModel(format!("unexpected model input `{name}`")))?;
            if let Port::Kv(layer, _) = port {
                let declared = model.input_fact(ix).map_err(inference_err)?;
                let dims: Vec<Option<usize>> = (0..4)
                    .map(|d| declared.shape.dim(d).and_then(|f| f.concretize()).and_then(|t| t.to_usize().ok()))
                    .collect();
                let (Some(kvh), Some(hd)) = (dims[1], dims[3]) else {
                    return Err(Error::InvalidModel(format!("input `{name}` must declare fixed kv-head and head-dim sizes")));
                };
                kv_shape = Some((kvh, hd));
                num_layers = num_layers.max(layer + 1);
            }
            inputs.push(port);
        }
        for needed in [Port::InputIds, Port::AttentionMask] {
            if !inputs.contains(&needed) {
                return Err(Error::InvalidModel(format!("model lacks the {needed:?} input")));
            }
        }
        // onnxruntime-genai's layout: positions come from the attention mask inside
        // GroupQueryAttention, whose tract implementation wants either an empty cache (a first
        // prompt) or a single new token: one plan for each.
        let genai = model.nodes().iter().any(|n| n.op.name() == "GroupQueryAttention");
        if !genai && !inputs.contains(&Port::PositionIds) {
            return Err(Error::InvalidModel("model lacks the PositionIds input (and has no GroupQueryAttention)".into()));
        }
        let kv = kv_shape.unwrap_or((0, 0));
        let shapes = |seq: TDim, past: TDim| {
            let model = &model;
            let inputs = &inputs;
            move || -> Result<InferenceModel> {
                let mut m = model.clone();
                for (ix, port) in inputs.iter().enumerate() {
                    let fact = match port {
                        Port::InputIds | Port::PositionIds => InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), seq.clone()]),
                        Port::AttentionMask => InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), past.clone() + seq.clone()]),
                        Port::Kv(..) => InferenceFact::dt_shape(f32::datum_type(), tvec![1.to_dim(), kv.0.to_dim(), past.clone(), kv.1.to_dim()]),
                        Port::Logits => unreachable!("filtered above"),
                    };
                    m.set_input_fact(ix, fact).map_err(inference_err)?;
                }
                Ok(m)
            }
        };
        let (main, decode) = if genai {
            let prefill = shapes(s.to_dim(), 0.to_dim())()?;
            let decode = shapes(1.to_dim(), p.to_dim())()?;
            let last = options.last_logits_only;
            let fold = if options.fold_kv_cache { Fold::Genai } else { Fold::None };
            let main = Variant::build(prefill, fold, last, num_layers)?;
            let decode = Variant::build(decode, fold, last, num_layers)?;
            if main.folded_kv.is_empty() != decode.folded_kv.is_empty() {
                return Err(Error::InvalidModel("the KV cache folds in one plan and not the other".into()));
            }
            (main, Some(decode))
        } else {
            let fold = if options.fold_kv_cache { Fold::Optimum } else { Fold::None };
            (Variant::build(shapes(s.to_dim(), p.to_dim())()?, fold, options.last_logits_only, num_layers)?, None)
        };
        drop(model);
        let logits_ix = main
            .outputs
            .iter()
            .position(|p| *p == Port::Logits)
            .ok_or_else(|| Error::InvalidModel("model has no `logits` output".into()))?;
        let vocab_size = main
            .plan
            .model()
            .output_fact(logits_ix)
            .ok()
            .and_then(|f| f.shape.last().and_then(|d| d.to_usize().ok()))
            .ok_or_else(|| Error::InvalidModel("logits must have a fixed vocabulary dimension".into()))?;
        let stateful = !main.inputs.iter().any(|p| matches!(p, Port::Kv(..)));
        Ok(CpuModel {
            main,
            decode,
            kv_shape: kv,
            num_layers,
            vocab_size,
            stateful,
            last_logits_only: options.last_logits_only,
            whole_prompt,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// How many nodes of each op kind the main plan runs (diagnostics and tests).
    pub fn plan_ops(&self) -> std::collections::BTreeMap<String, usize> {
        let mut ops = std::collections::BTreeMap::new();
        for node in self.main.plan.model().nodes() {
            *ops.entry(node.op.name().to_string()).or_insert(0) += 1;
        }
        ops
    }

    /// The plan that runs a step after `past` cached tokens, and whether it is the
    /// onnxruntime-genai decode plan.
    fn variant(&self, past: usize) -> (&Variant, bool) {
        match &self.decode {
            Some(decode) if past > 0 => (decode, true),
            _ => (&self.main, false),
        }
    }

    /// A state of `variant`'s plan holding `snapshot`'s cache (folded plans only).
    fn state_from(&self, variant: &Variant, snapshot: &KvSnapshot) -> Result<TypedSimpleState> {
        let mut state = variant.plan.spawn().map_err(inference_err)?;
        for kv in &variant.folded_kv {
            let op_state = state.op_states[kv.node].as_mut().expect("recorded nodes have a state");
            let mut tensors = snapshot.tensors[kv.slots()].iter().cloned();
            op_state.load_from(&mut state.turn_state, &mut tensors).map_err(inference_err)?;
        }
        Ok(state)
    }

    /// A fresh conversation state.
    pub fn session(self: &Arc<Self>) -> CpuSession {
        CpuSession { model: self.clone(), past: Vec::new(), len: 0, state: None }
    }

    /// Whether the KV cache lives in the plan's state (see [`CpuOptions::fold_kv_cache`]).
    pub fn kv_cache_folded(&self) -> bool {
        self.stateful
    }

    /// `(layers, kv_heads, head_dim)` of the KV cache.
    pub fn kv_layout(&self) -> (usize, usize, usize) {
        (self.num_layers, self.kv_shape.0, self.kv_shape.1)
    }

    /// A session that continues from `snapshot` (taken from a session of a model with the
    /// same KV layout), in either KV mode.
    pub fn session_from(self: &Arc<Self>, snapshot: &KvSnapshot) -> Result<CpuSession> {
        let (layers, kvh, hd) = self.kv_layout();
        if snapshot.tensors.len() != 2 * layers
            || snapshot.tensors.iter().any(|t| t.shape() != [1, kvh, snapshot.len, hd] || t.datum_type() != f32::datum_type())
        {
            return Err(Error::InvalidState("KV cache shape does not match this model".into()));
        }
        let mut session = self.session();
        if snapshot.len == 0 {
            return Ok(session);
        }
        if self.stateful {
            let (variant, decode) = self.variant(snapshot.len);
            session.state = Some((self.state_from(variant, snapshot)?, decode));
        } else {
            session.past = snapshot.tensors.clone();
        }
        session.len = snapshot.len;
        Ok(session)
    }
}

/// A plan node whose op state holds KV cache: one layer's key or value cache
/// (tract-transformers' `DynKeyValueCache`), or both ([`attention::KvAttention`]).
#[derive(Debug, Clone, Copy)]
struct FoldedKv {
    node: usize,
    layer: usize,
    /// `Some(is_value)` for a single cache, `None` for a key + value pair.
    single: Option<bool>,
}

impl FoldedKv {
    /// Indexes into [`KvSnapshot::tensors`] of the tensors this state saves, in order.
    fn slots(&self) -> std::ops::Range<usize> {
        match self.single {
            Some(is_v) => 2 * self.layer + is_v as usize..2 * self.layer + is_v as usize + 1,
            None => 2 * self.layer..2 * self.layer + 2,
        }
    }
}

/// The plan nodes of a folded-KV plan whose state is KV cache.
#[inline(never)]
fn folded_kv_nodes(plan: &Plan, num_layers: usize) -> Result<Vec<FoldedKv>> {
    let state = plan.spawn().map_err(inference_err)?;
    let mut found = Vec::new();
    let mut tensors = 0;
    for (node, op_state) in state.op_states.iter().enumerate() {
        let Some((name, _)) = op_state.as_ref().and_then(|s| s.init_tensor_fact()) else { continue };
        let Some(Port::Kv(layer, is_v)) = classify(&name) else {
            return Err(Error::InvalidModel(format!("unexpected state `{name}` in the folded plan")));
        };
        let pair = plan.model().node(node).op_is::<attention::KvAttention>();
        found.push(FoldedKv { node, layer, single: (!pair).then_some(is_v) });
        tensors += if pair { 2 } else { 1 };
    }
    if tensors != 2 * num_layers {
        return Err(Error::InvalidModel(format!("folded plan holds {tensors} KV caches, expected {}", 2 * num_layers)));
    }
    Ok(found)
}

/// Initializers at least this big are turned into tensors before tract parses the graph.
const DETACH_BYTES: usize = 1024;

/// The rank of `name` if it is a constant of the graph being parsed: an initializer, or a
/// weight [`detach_weights`] turned into an input until the parse is done ([`detached`]).
pub(crate) fn constant_rank(graph: Option<&tract_onnx::pb::GraphProto>, name: &str) -> Option<usize> {
    match graph?.initializer.iter().find(|t| t.name == name) {
        Some(t) => Some(t.dims.len()),
        None => detached::get(name).map(|w| w.rank),
    }
}

/// The numeric (non-bool) tract type of ONNX `data_type`, whose raw bytes are a tensor as is.
fn raw_numeric(data_type: i32) -> Option<DatumType> {
    let dt = DatumType::try_from(tract_onnx::pb::tensor_proto::DataType::try_from(data_type).ok()?).ok()?;
    (dt.is_number() && dt != DatumType::Bool).then_some(dt)
}

/// The `MatMulInteger` weights to store as the int8 kernel's matrix as they load (none
/// without the kernel): see [`q8_matmul::weights_to_transpose`].
#[inline(never)]
fn q8_transposes(graph: Option<&tract_onnx::pb::GraphProto>, options: &CpuOptions) -> HashMap<String, (usize, usize, bool)> {
    match graph {
        Some(g) if options.q8_kernel => q8_matmul::weights_to_transpose(g),
        _ => HashMap::new(),
    }
}

/// A tract tensor of initializer `t`, whose `length` raw little-endian bytes `read(at, dst)`
/// copies out from `at`: as declared, or, when `transposed` gives its `(k, n, is_u8)`, as the
/// int8 kernel's `[n][k]` matrix ([`q8_matmul::transposed_weight`]).
#[inline(never)]
fn weight_tensor(
    t: &tract_onnx::pb::TensorProto,
    length: usize,
    transposed: Option<&(usize, usize, bool)>,
    mut read: impl FnMut(usize, &mut [u8]),
) -> Result<Tensor> {
    let (dt, shape) = raw_layout(t, length)?;
    if let Some(&(k, n, is_u8)) = transposed {
        return q8_matmul::transposed_weight(k, n, is_u8, |kk, dst| read(kk * n, dst)).map_err(inference_err);
    }
    let mut tensor = Tensor::zero_dt(dt, &shape).map_err(|e| Error::InvalidModel(format!("initializer `{}`: {e:#}", t.name)))?;
    read(0, tensor.as_bytes_mut());
    Ok(tensor)
}

/// `t`'s type and shape, checked to take exactly `bytes` raw bytes.
fn raw_layout(t: &tract_onnx::pb::TensorProto, bytes: usize) -> Result<(DatumType, Vec<usize>)> {
    use tract_onnx::pb::tensor_proto::DataType;
    let bad = |why: String| Error::InvalidModel(format!("initializer `{}`: {why}", t.name));
    let dt = DataType::try_from(t.data_type).map_err(|_| bad(format!("unknown data type {}", t.data_type)))?;
    let dt = DatumType::try_from(dt).map_err(|e| bad(format!("{e}")))?;
    if raw_numeric(t.data_type).is_none() {
        return Err(bad(format!("{dt:?} weights cannot be stored as raw data here")));
    }
    let shape = t.dims.iter().map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))).collect::<Result<Vec<_>>>()?;
    let expected = shape.iter().try_fold(dt.size_of(), |n, &d| n.checked_mul(d));
    if expected != Some(bytes) {
        return Err(bad(format!("{bytes} bytes of data for shape {shape:?} of {dt:?}")));
    }
    Ok((dt, shape))
}

/// The detached weights were graph inputs for the parser ([`detach_weights`]); make them
/// constants again. Nodes are found through one name map (a search per weight was quadratic).
///
/// Why the load's passes are `#[inline(never)]` (here, in `import`, `q4_min_matmul`, the
/// attention fusions, the GPU backend's planner and the tokenizer's file scan): V8 optimizes
/// (TurboFan) any wasm function whose loops run long, even one that never runs again, and with
/// its callees inlined each one-shot load function was a 17–37 KB body whose compile allocated
/// 12–29 MB for 50–100 ms while the load ended (`--js-flags=--trace-wasm-compilation-times`,
/// issue #16's process-tree peak). Kept apart, only the pass that loops is optimized, and it is
/// small.
#[inline(never)]
fn restore_constants(model: &mut InferenceModel, weights: Vec<(String, Arc<Tensor>)>) -> Result<()> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for n in model.nodes() {
        ids.entry(n.name.as_str()).or_insert(n.id);
    }
    let ids: Vec<usize> = weights
        .iter()
        .map(|(name, _)| ids.get(name.as_str()).copied().ok_or_else(|| Error::InvalidModel(format!("No node found for name: \"{name}\""))))
        .collect::<Result<_>>()?;
    for (id, (_, tensor)) in ids.iter().copied().zip(weights) {
        let fact = TypedFact::try_from(tensor.clone()).map_err(inference_err)?;
        let konst = tract_onnx::tract_hir::ops::konst::Const::new(tensor).map_err(inference_err)?;
        let node = model.node_mut(id);
        node.op = konst.into();
        node.outputs[0].fact = fact.into();
    }
    let constants: std::collections::HashSet<usize> = ids.into_iter().collect();
    model.inputs.retain(|o| !constants.contains(&o.node));
    Ok(())
}

/// tract's ONNX parser turns every initializer into a tensor while the protobuf still holds
/// its bytes, so at its peak a model is in memory twice. Instead, each large weight becomes a
/// tract tensor here, one at a time (its protobuf bytes or shard slice released right after),
/// and the graph declares it as a typed input until [`CpuModel::build`] puts it back as a
/// constant. `external` holds the already-built tensors of external-data initializers, by index.
///
/// The weights named in `transposed` ([`q8_matmul::weights_to_transpose`]) are stored as the
/// int8 kernel's `[n][k]` matrix (those in `external` already are): their declared type and
/// shape change with them. Returns the tensors and their side table ([`detached`]).
#[allow(clippy::type_complexity)]
#[inline(never)]
fn detach_weights(
    proto: &mut tract_onnx::pb::ModelProto,
    external: Vec<(usize, Tensor)>,
    transposed: &HashMap<String, (usize, usize, bool)>,
) -> Result<(Vec<(String, Arc<Tensor>)>, detached::DetachedWeights)> {
    use tract_onnx::pb::{tensor_proto::DataType, tensor_shape_proto, type_proto, TensorShapeProto, TypeProto, ValueInfoProto};
    let graph = proto.graph.as_mut().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let mut tensors: Vec<Option<Tensor>> = (0..graph.initializer.len()).map(|_| None).collect();
    for (i, t) in external {
        tensors[i] = Some(t);
    }
    // Before the widening below: these f16 scales and zero points stay f16.
    q4_min_matmul::read_f16_params_directly(graph);
    let read_as_f32 = f16_read_as_f32(graph);
    let mut widened = std::collections::HashSet::new();
    for (i, init) in graph.initializer.iter_mut().enumerate() {
        if tensors[i].is_none() && init.raw_data.len() >= DETACH_BYTES && raw_numeric(init.data_type).is_some() {
            let raw = std::mem::take(&mut init.raw_data);
            let read = |at: usize, dst: &mut [u8]| dst.copy_from_slice(&raw[at..at + dst.len()]);
            tensors[i] = Some(weight_tensor(init, raw.len(), transposed.get(&init.name), read)?);
        }
        // Widened one at a time, each f16 copy dropped at once: left to the graph, tract's
        // analysis evaluates every `Cast` while all the f16 tensors are still held (SmolLM2
        // int4's f16 scales and zero points: 15 MB of f16 beside 30 MB of f32 at the load's
        // peak, issue #16).
        if let Some(t) = tensors[i].as_mut().filter(|t| t.datum_type() == DatumType::F16 && read_as_f32.contains(&init.name)) {
            *t = t.cast_to_dt(DatumType::F32).map_err(inference_err)?.into_owned();
            init.data_type = DataType::Float as i32;
            widened.insert(init.name.clone());
        }
    }
    for node in &mut graph.node {
        if node.op_type == "Cast" && node.input.first().is_some_and(|i| widened.contains(i)) {
            node.op_type = "Identity".into();
            node.attribute.clear();
        }
    }
    q4_min_matmul::zero_point_terms_in_place(graph, &mut tensors)?;
    // Detached weights are (re)declared as typed inputs, as the tensors they now are (a
    // transposed weight is `[n][k]` int8), and listed in the side table.
    let detached: std::collections::HashSet<String> =
        graph.initializer.iter().zip(&tensors).filter(|(_, t)| t.is_some()).map(|(i, _)| i.name.clone()).collect();
    graph.input.retain(|i| !detached.contains(&i.name));
    let mut weights = Vec::new();
    let mut table = detached::DetachedWeights::new();
    let mut kept = Vec::new();
    for (init, tensor) in std::mem::take(&mut graph.initializer).into_iter().zip(tensors) {
        let Some(tensor) = tensor else {
            kept.push(init);
            continue;
        };
        let (elem_type, layout) = match transposed.get(&init.name) {
            Some(&(_, _, true)) => (DataType::Int8 as i32, detached::Layout::TransposedFromU8),
            Some(&(_, _, false)) => (DataType::Int8 as i32, detached::Layout::TransposedFromI8),
            None => (init.data_type, detached::Layout::Declared),
        };
        table.insert(init.name.clone(), detached::DetachedWeight { rank: tensor.rank(), layout });
        let dims = tensor
            .shape()
            .iter()
            .map(|&d| tensor_shape_proto::Dimension { value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)), ..Default::default() })
            .collect();
        graph.input.push(ValueInfoProto {
            name: init.name.clone(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type, shape: Some(TensorShapeProto { dim: dims }) })),
                ..Default::default()
            }),
            ..Default::default()
        });
        weights.push((init.name, Arc::new(tensor)));
    }
    graph.initializer = kept;
    Ok((weights, table))
}

/// f16 initializers that every node reads through `Cast(to = FLOAT)` and that are not graph
/// outputs: a compact file's scales and zero points (`ExportOptions::f16_scales`, as GGUF stores
/// its blocks), which [`detach_weights`] widens as it reads them.
#[inline(never)]
fn f16_read_as_f32(graph: &tract_onnx::pb::GraphProto) -> std::collections::HashSet<String> {
    use tract_onnx::pb::tensor_proto::DataType;
    let mut names: std::collections::HashSet<String> =
        graph.initializer.iter().filter(|i| i.data_type == DataType::Float16 as i32).map(|i| i.name.clone()).collect();
    let to_f32 = |n: &tract_onnx::pb::NodeProto| {
        n.op_type == "Cast" && n.domain.is_empty() && n.attribute.iter().any(|a| a.name == "to" && a.i == DataType::Float as i64)
    };
    let mut read = std::collections::HashSet::new();
    // A subgraph (If, Loop, Scan) may read an outer initializer without naming it as an input.
    if graph.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())) {
        return read;
    }
    for node in &graph.node {
        for (ix, input) in node.input.iter().enumerate() {
            if names.contains(input) {
                if ix == 0 && to_f32(node) {
                    read.insert(input.clone());
                } else {
                    names.remove(input);
                }
            }
        }
    }
    for output in &graph.output {
        names.remove(&output.name);
    }
    names.retain(|n| read.contains(n));
    names
}

/// Make the `logits` output `[1, S, V]` its last position `[1, 1, V]`; decluttering pushes the
/// slice up through every op that treats positions independently (tract's `PushSliceUp`).
#[inline(never)]
fn slice_last_position(model: &mut TypedModel) -> TractResult<()> {
    for ix in 0..model.outputs.len() {
        let outlet = model.outputs[ix];
        let name = model.outlet_label(outlet).map(str::to_string).unwrap_or_else(|| model.node(outlet.node).name.clone());
        if classify(&name) != Some(Port::Logits) {
            continue;
        }
        let len = model.outlet_fact(outlet)?.shape[1].clone();
        let slice = tract_onnx::tract_core::ops::array::Slice { axis: 1, start: len.clone() - 1, end: len };
        let last = model.wire_node(format!("{name}.last_position"), slice, &[outlet])?[0];
        model.outlet_labels.remove(&outlet);
        model.set_outlet_label(last, name)?;
        model.outputs[ix] = last;
    }
    Ok(())
}

/// Names of ONNX operators tract cannot load, checked before loading so the error can name
/// the node instead of failing deep inside type inference.
#[inline(never)]
fn check_ops(proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    let onnx = tract_onnx::onnx();
    let graph = proto.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    for node in &graph.node {
        if !onnx.op_register.0.contains_key(&node.op_type) {
            return Err(Error::UnsupportedOp { op: node.op_type.clone(), node: node.name.clone() });
        }
    }
    Ok(())
}

/// Most prompt tokens [`CpuSession::forward`] runs at once.
pub const PREFILL_CHUNK: usize = 64;

/// One conversation's KV cache over a shared [`CpuModel`].
pub struct CpuSession {
    model: Arc<CpuModel>,
    /// `present.*` of the last step, indexed `2 * layer + is_value`.
    past: Vec<TValue>,
    len: usize,
    /// The plan's state when the KV cache is folded into it, and whether it is the
    /// onnxruntime-genai decode plan's.
    state: Option<(TypedSimpleState, bool)>,
}

impl CpuSession {
    /// Number of tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The KV cache as it is now (shares the tensors; no copy).
    pub fn snapshot(&self) -> Result<KvSnapshot> {
        if self.len == 0 {
            let (layers, kvh, hd) = self.model.kv_layout();
            let empty = Tensor::zero::<f32>(&[1, kvh, 0, hd]).map_err(inference_err)?;
            return Ok(KvSnapshot { len: 0, tensors: vec![empty.into(); 2 * layers] });
        }
        if let Some((state, decode)) = &self.state {
            let variant = if *decode { self.model.decode.as_ref().expect("decode state of a decode plan") } else { &self.model.main };
            let mut tensors = vec![None; 2 * self.model.num_layers];
            for kv in &variant.folded_kv {
                let mut out = Vec::with_capacity(2);
                let op_state = state.op_states[kv.node].as_ref().expect("recorded nodes have a state");
                op_state.save_to(&mut out).map_err(inference_err)?;
                if out.len() != kv.slots().len() {
                    return Err(Error::Inference("folded KV cache state has the wrong number of tensors".into()));
                }
                for (slot, t) in kv.slots().zip(out) {
                    tensors[slot] = Some(t);
                }
            }
            let tensors = tensors.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| Error::Inference("folded KV cache incomplete".into()))?;
            return Ok(KvSnapshot { len: self.len, tensors });
        }
        Ok(KvSnapshot { len: self.len, tensors: self.past.clone() })
    }

    /// Forget the conversation.
    pub fn reset(&mut self) {
        self.past.clear();
        self.len = 0;
        self.state = None;
    }

    /// Run `tokens` after the cached ones; returns the logits of every new position
    /// (`tokens.len() * vocab`, row-major).
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if self.model.last_logits_only && tokens.len() > 1 {
            return Err(Error::Inference("forward_all needs a model built without `last_logits_only`".into()));
        }
        let mut all = Vec::with_capacity(tokens.len() * self.model.vocab_size);
        for part in self.steps(tokens) {
            let logits = self.run(part)?;
            all.extend(logits.to_plain_array_view::<f32>().map_err(inference_err)?.iter().copied());
        }
        Ok(all)
    }

    /// How `tokens` are fed, at most [`PREFILL_CHUNK`] per run; with the onnxruntime-genai
    /// layout a prompt goes in whole into an empty cache, then one token per run; a graph that
    /// quantizes activations per tensor takes them in one run (see `CpuModel::whole_prompt`).
    fn steps<'t>(&self, tokens: &'t [u32]) -> Vec<&'t [u32]> {
        match (&self.model.decode, self.len) {
            (Some(_), 0) => vec![tokens],
            (Some(_), _) => tokens.chunks(1).collect(),
            (None, _) if self.model.whole_prompt => vec![tokens],
            (None, _) => tokens.chunks(PREFILL_CHUNK).collect(),
        }
    }

    /// Run `tokens` after the cached ones; returns the logits of the last position. Long
    /// prompts run in chunks of [`PREFILL_CHUNK`] tokens, which bounds activation memory (and,
    /// in a model built without `last_logits_only`, the logits of every position: `vocab × 4`
    /// bytes each, ~100 MB for a 500-token prompt with a 49k vocabulary).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let steps = self.steps(tokens);
        let Some((last, before)) = steps.split_last() else {
            return Err(Error::Inference("forward needs at least one token".into()));
        };
        for part in before {
            self.run(part)?;
        }
        let logits = self.run(last)?;
        let v = self.model.vocab_size;
        let view = logits.to_plain_array_view::<f32>().map_err(inference_err)?;
        let flat = view.as_slice().ok_or_else(|| Error::Inference("logits not contiguous".into()))?;
        Ok(flat[flat.len() - v..].to_vec())
    }

    fn run(&mut self, tokens: &[u32]) -> Result<TValue> {
        if tokens.is_empty() {
            return Err(Error::Inference("forward needs at least one token".into()));
        }
        let m = &self.model;
        let (n, past) = (tokens.len(), self.len);
        let (v, decode) = m.variant(past);
        let ids: Vec<i64> = tokens.iter().map(|t| *t as i64).collect();
        let pos: Vec<i64> = (past..past + n).map(|p| p as i64).collect();
        let mask = vec![1i64; past + n];
        let (kvh, hd) = m.kv_shape;
        let mut inputs: TVec<TValue> = tvec![];
        for port in &v.inputs {
            let t: TValue = match port {
                Port::InputIds => Tensor::from_shape(&[1, n], &ids).map_err(inference_err)?.into(),
                Port::PositionIds => Tensor::from_shape(&[1, n], &pos).map_err(inference_err)?.into(),
                Port::AttentionMask => Tensor::from_shape(&[1, past + n], &mask).map_err(inference_err)?.into(),
                Port::Kv(layer, is_v) => match self.past.get(2 * layer + *is_v as usize) {
                    Some(t) => t.clone(),
                    None => Tensor::zero::<f32>(&[1, kvh, 0, hd]).map_err(inference_err)?.into(),
                },
                Port::Logits => unreachable!("not an input"),
            };
            inputs.push(t);
        }
        let outputs = if m.stateful {
            // onnxruntime-genai: the first decode step moves the cache from the prompt plan's
            // state into the decode plan's (once per conversation).
            match &self.state {
                None => self.state = Some((v.plan.spawn().map_err(inference_err)?, decode)),
                Some((_, d)) if *d != decode => {
                    let snapshot = self.snapshot()?;
                    self.state = Some((m.state_from(v, &snapshot)?, decode));
                }
                Some(_) => {}
            }
            self.state.as_mut().expect("set above").0.run(inputs).map_err(inference_err)?
        } else {
            v.plan.run(inputs).map_err(inference_err)?
        };
        let mut logits = None;
        let mut present = vec![None; 2 * m.num_layers];
        for (port, value) in v.outputs.iter().zip(outputs) {
            match port {
                Port::Logits => logits = Some(value),
                Port::Kv(layer, is_v) => present[2 * layer + *is_v as usize] = Some(value),
                _ => {}
            }
        }
        self.past = present.into_iter().collect::<Option<Vec<_>>>().unwrap_or_default();
        self.len += n;
        logits.ok_or_else(|| Error::Inference("no logits".into()))
    }
}
