//! CPU backend: a tract plan over a decoder-only ONNX graph in the HF/optimum KV-cache layout.
//!
//! One optimized plan with symbolic sequence (`S`) and past (`P`) lengths serves prefill and
//! every decode step. The session keeps the `present.*` tensors of a step and feeds them back
//! as `past_key_values.*` of the next, so the prompt is never recomputed.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::{Error, Result};

pub mod q4_matmul;
pub mod threads;

type Plan = Arc<TypedSimplePlan>;

fn inference_err(e: impl std::fmt::Display) -> Error {
    Error::Inference(format!("{e:#}"))
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

/// A loaded, optimized model. Cheap to share; each [`CpuSession`] holds its own KV cache.
pub struct CpuModel {
    plan: Plan,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// `(kv_heads, head_dim)` of each layer's cache, in layer order.
    kv_shape: (usize, usize),
    num_layers: usize,
    vocab_size: usize,
    /// The KV cache lives inside the plan's state (folded by tract-transformers).
    stateful: bool,
}

/// How to build the CPU plan.
#[derive(Debug, Clone)]
pub struct CpuOptions {
    /// Fold `past_key_values` / `present` into tract-transformers' in-graph KV cache and fuse
    /// attention patterns. Off: the session carries `present.*` into the next step's inputs.
    pub fold_kv_cache: bool,
    /// Run 4-bit block-32 `MatMulNBits` with edge-llm's kernel ([`q4_matmul`]) instead of
    /// tract's Q4_0 path. On by default on wasm32, where tract has no SIMD kernel for Q4_0.
    pub q4_kernel: bool,
    /// With `q4_kernel`: quantize activations to int8 per 32-block and use integer dot
    /// products (~2x faster on wasm, activation rounding ~0.4 %). On by default on wasm32.
    pub q4_int8_activations: bool,
    /// CPU threads (caller included) for the int4 kernel and tract's large matmuls; the pool
    /// is process-wide ([`threads`]), so this sets it for every model. `None` keeps the
    /// current count (default: `EDGE_LLM_THREADS`, else cores − 1, at least 1).
    pub threads: Option<usize>,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            fold_kv_cache: std::env::var("EDGE_LLM_FOLD_KV").is_ok_and(|v| v == "1"),
            q4_kernel: cfg!(target_arch = "wasm32") || std::env::var("EDGE_LLM_Q4_KERNEL").is_ok_and(|v| v == "1"),
            q4_int8_activations: cfg!(target_arch = "wasm32") || std::env::var("EDGE_LLM_Q4_INT8_ACT").is_ok_and(|v| v == "1"),
            threads: None,
        }
    }
}

impl CpuModel {
    /// Load an ONNX decoder from bytes and optimize it for batch 1.
    pub fn load(onnx: &[u8]) -> Result<Self> {
        Self::from_proto(crate::onnx::decode(onnx)?, &CpuOptions::default())
    }

    /// Load a decoded ONNX model whose weights are all in memory (see `manifest::assemble`).
    pub fn from_proto(proto: tract_onnx::pb::ModelProto, options: &CpuOptions) -> Result<Self> {
        check_ops(&proto)?;
        if let Some(n) = options.threads {
            threads::configure(n);
        }
        let mut onnx = tract_onnx::onnx();
        if options.q4_kernel {
            q4_matmul::register(&mut onnx, options.q4_int8_activations);
        }
        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| Error::InvalidModel(format!("{e:#}")))?;
        drop(proto);
        let s = model.symbols.sym("S");
        let p = model.symbols.sym("P");
        let mut inputs = Vec::new();
        let mut kv_shape = None;
        // Inputs are classified twice: here to set their facts, and after optimization, where
        // folding the KV cache may have removed some.
        let mut num_layers = 0;
        for ix in 0..model.inputs.len() {
            let name = model.node(model.inputs[ix].node).name.clone();
            let port = classify(&name)
                .filter(|p| *p != Port::Logits)
                .ok_or_else(|| Error::InvalidModel(format!("unexpected model input `{name}`")))?;
            let fact = match port {
                Port::InputIds | Port::PositionIds => {
                    InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), s.to_dim()])
                }
                Port::AttentionMask => {
                    InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), p.to_dim() + s.to_dim()])
                }
                Port::Kv(layer, _) => {
                    let declared = model.input_fact(ix).map_err(inference_err)?;
                    let dims: Vec<Option<usize>> = (0..4)
                        .map(|d| declared.shape.dim(d).and_then(|f| f.concretize()).and_then(|t| t.to_usize().ok()))
                        .collect();
                    let (Some(kvh), Some(hd)) = (dims[1], dims[3]) else {
                        return Err(Error::InvalidModel(format!(
                            "input `{name}` must declare fixed kv-head and head-dim sizes"
                        )));
                    };
                    kv_shape = Some((kvh, hd));
                    num_layers = num_layers.max(layer + 1);
                    InferenceFact::dt_shape(f32::datum_type(), tvec![1.to_dim(), kvh.to_dim(), p.to_dim(), hd.to_dim()])
                }
                Port::Logits => unreachable!("filtered above"),
            };
            model.set_input_fact(ix, fact).map_err(inference_err)?;
            inputs.push(port);
        }
        for needed in [Port::InputIds, Port::AttentionMask, Port::PositionIds] {
            if !inputs.contains(&needed) {
                return Err(Error::InvalidModel(format!("model lacks the {needed:?} input")));
            }
        }
        let invalid = |e: TractError| Error::InvalidModel(format!("{e:#}"));
        let mut typed = model.into_typed().and_then(|m| m.into_decluttered()).map_err(invalid)?;
        if options.fold_kv_cache {
            // tract-transformers: KV inputs/outputs become in-graph state, RoPE / softmax /
            // attention patterns become fused ops.
            let t = tract_onnx::tract_core::transform::get_transform("transformers_detect_all")
                .map_err(invalid)?
                .ok_or_else(|| Error::Inference("tract-transformers is not linked in".into()))?;
            t.transform(&mut typed).map_err(invalid)?;
        }
        let typed = typed.into_optimized().map_err(invalid)?;
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
        let logits_ix = outputs
            .iter()
            .position(|p| *p == Port::Logits)
            .ok_or_else(|| Error::InvalidModel("model has no `logits` output".into()))?;
        let vocab_size = typed
            .output_fact(logits_ix)
            .ok()
            .and_then(|f| f.shape.last().and_then(|d| d.to_usize().ok()))
            .ok_or_else(|| Error::InvalidModel("logits must have a fixed vocabulary dimension".into()))?;
        let stateful = !inputs.iter().any(|p| matches!(p, Port::Kv(..)));
        let plan = typed.into_runnable().map_err(inference_err)?;
        Ok(CpuModel { plan, inputs, outputs, kv_shape: kv_shape.unwrap_or((0, 0)), num_layers, vocab_size, stateful })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// A fresh conversation state.
    pub fn session(self: &Arc<Self>) -> CpuSession {
        CpuSession { model: self.clone(), past: Vec::new(), len: 0, state: None }
    }
}

/// Names of ONNX operators tract cannot load, checked before loading so the error can name
/// the node instead of failing deep inside type inference.
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

/// One conversation's KV cache over a shared [`CpuModel`].
pub struct CpuSession {
    model: Arc<CpuModel>,
    /// `present.*` of the last step, indexed `2 * layer + is_value`.
    past: Vec<TValue>,
    len: usize,
    /// The plan's state when the KV cache is folded into it.
    state: Option<TypedSimpleState>,
}

impl CpuSession {
    /// Number of tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        let logits = self.run(tokens)?;
        let view = logits.to_plain_array_view::<f32>().map_err(inference_err)?;
        Ok(view.iter().copied().collect())
    }

    /// Run `tokens` after the cached ones; returns the logits of the last position.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let logits = self.run(tokens)?;
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
        let ids: Vec<i64> = tokens.iter().map(|t| *t as i64).collect();
        let pos: Vec<i64> = (past..past + n).map(|p| p as i64).collect();
        let mask = vec![1i64; past + n];
        let (kvh, hd) = m.kv_shape;
        let mut inputs: TVec<TValue> = tvec![];
        for port in &m.inputs {
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
            if self.state.is_none() {
                self.state = Some(m.plan.spawn().map_err(inference_err)?);
            }
            self.state.as_mut().expect("set above").run(inputs).map_err(inference_err)?
        } else {
            m.plan.run(inputs).map_err(inference_err)?
        };
        let mut logits = None;
        let mut present = vec![None; 2 * m.num_layers];
        for (port, value) in m.outputs.iter().zip(outputs) {
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
