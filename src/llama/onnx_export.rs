//! Export a Llama decoder to ONNX in the HF/optimum KV-cache layout:
//!
//! inputs  `input_ids` i64 `[batch, seq]`, `attention_mask` i64 `[batch, past + seq]`,
//!         `position_ids` i64 `[batch, seq]`, `past_key_values.{i}.key|value` f32
//!         `[batch, kv_heads, past, head_dim]`
//! outputs `logits` f32 `[batch, seq, vocab]`, `present.{i}.key|value` f32
//!         `[batch, kv_heads, past + seq, head_dim]`
//!
//! Built from primitive ops the way optimum exports them (RMSNorm as Pow/ReduceMean/…,
//! rotate-half RoPE, GQA by Expand), so runtimes see what users feed them. Linear layers are
//! written in the precision asked for: fp32 `MatMul`, fp16 weights + `Cast`, int8
//! `DynamicQuantizeLinear` + `MatMulInteger` (as onnxruntime's `quantize_dynamic` emits) or
//! int4 `com.microsoft::MatMulNBits`.

use super::{LayerWeights, LlamaConfig, LlamaWeights};
use crate::onnx::{attr_f, attr_i, attr_ints, Dim, GraphBuilder, ModelProto, OnnxType, MS_DOMAIN};
use crate::quant::{reference as qref, Precision};

/// Metadata key under which the exporter stores the [`LlamaConfig`] as JSON.
pub const CONFIG_METADATA_KEY: &str = "edge_llm.llama_config";

/// How to store the weights.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Precision of the decoder layers' linear weights.
    pub linear: Precision,
    /// Precision of the output projection (lm_head). When it differs from fp32 the head is
    /// written untied, as its own quantized tensor.
    pub lm_head: Precision,
    /// Precision of the token embedding table: fp32, fp16, int8 (per row) or int4 (blocks
    /// along the hidden size). With a tied int4 head, embedding and head share one tensor.
    pub embedding: Precision,
    /// Block size along K for int4.
    pub block_size: usize,
    /// Symmetric int4 (zero point 8) or asymmetric (per-block zero points).
    pub symmetric: bool,
    /// Which graph layout to write.
    pub layout: KvLayout,
    /// How int8 weights are stored and computed.
    pub int8_format: Int8Format,
    /// int4: choose each block's scale and zero point by error search
    /// ([`qref::quantize_q4_search`]) instead of round-to-nearest over the block's range.
    pub q4_search: bool,
    /// int4 linear layers with float zero points ([`crate::quant::Q4MinWeight`], `q * scale +
    /// min` per block, fit by least squares) instead of `symmetric` / integer zero points. The
    /// int4 token embedding (and a head tied to it) keeps `symmetric` / `q4_search`.
    pub q4_min: bool,
    /// With `q4_search` or `q4_min`: mean squared activation per input channel by linear name (see
    /// `calibrate`), weighting each block's error; a linear without an entry is unweighted.
    pub importance: Option<std::sync::Arc<std::collections::BTreeMap<String, Vec<f32>>>>,
    /// Mixed precision: `(pattern, precision)`; the first pattern contained in a linear's name
    /// (e.g. `model.layers.0.`, `mlp.down_proj`) decides its precision instead of `linear`.
    pub overrides: Vec<(String, Precision)>,
    /// int4 and 8-bit linears: mark each `MatMulNBits` `accuracy_level = 4`, i.e. compute with
    /// activations rounded to int8 blocks (onnxruntime's int8 compute, edge-llm's fast wasm
    /// kernel). Off: float activations, onnxruntime's default.
    pub int8_activations: bool,
    /// Store the scales (and float zero points) of every `MatMulNBits` weight and quantized
    /// embedding table as fp16 initializers behind a `Cast` to float, as GGUF stores Q4_1 and
    /// Q8_0 blocks: 2 bytes per block instead of 4 (SmolLM2: 13 MB less at int4 with float
    /// zero points, which is what fits its 8-bit head under the 100 MB bundle).
    pub f16_scales: bool,
    /// The 8-bit head (tied or not) computes with int8 activations (`accuracy_level = 4`). Off:
    /// float activations; SmolLM2's demo reply flips on the head's input rounding
    /// (docs/quality.md), so both packer formats that use an 8-bit head (int8, the int4 recipe)
    /// turn it off.
    pub head_int8_activations: bool,
}

/// The two int8 formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Format {
    /// `com.microsoft::MatMulNBits` with `bits = 8`, block 32, `accuracy_level = 4`: int8
    /// weights and activations, each with a scale per 32 (llama.cpp's q8_0 × q8_0); a tied
    /// head shares the embedding's tensor. edge-llm's default.
    Block32,
    /// onnxruntime `quantize_dynamic`'s: per-channel int8 weights, `DynamicQuantizeLinear`
    /// (one scale per activation tensor) + `MatMulInteger`. Loses much more on small models.
    DynamicPerTensor,
}

/// The two decoder layouts users bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// HF optimum: `position_ids` input, attention from plain ONNX ops, `past_key_values.*`
    /// concatenated with the new keys/values into `present.*`.
    Optimum,
    /// onnxruntime-genai's model builder: no `position_ids`; `GroupQueryAttention` (rotary
    /// inside, from cos/sin caches, positions from `seqlens_k`), `SimplifiedLayerNormalization`
    /// and `SkipSimplifiedLayerNormalization` (com.microsoft).
    Genai,
}

impl ExportOptions {
    pub fn fp32() -> Self {
        ExportOptions {
            linear: Precision::F32,
            lm_head: Precision::F32,
            embedding: Precision::F32,
            block_size: 32,
            symmetric: true,
            layout: KvLayout::Optimum,
            int8_format: Int8Format::Block32,
            q4_search: false,
            q4_min: false,
            importance: None,
            overrides: Vec::new(),
            int8_activations: true,
            f16_scales: false,
            head_int8_activations: true,
        }
    }
    /// The same weights in onnxruntime-genai's layout.
    pub fn genai(self) -> Self {
        ExportOptions { layout: KvLayout::Genai, ..self }
    }
    pub fn fp16() -> Self {
        ExportOptions { linear: Precision::F16, lm_head: Precision::F16, embedding: Precision::F16, ..Self::fp32() }
    }
    /// int8 as onnxruntime's `quantize_dynamic` writes it ([`Int8Format::DynamicPerTensor`]).
    pub fn int8() -> Self {
        ExportOptions { linear: Precision::Int8, lm_head: Precision::Int8, embedding: Precision::Int8, int8_format: Int8Format::DynamicPerTensor, ..Self::fp32() }
    }
    /// int8 weights in blocks of 32 ([`Int8Format::Block32`]) on float activations, edge-llm's
    /// format (the packer's default): with every layer's input rounded to int8 blocks as well
    /// (`int8_activations`, `--int8-activations`) SmolLM2 loses its demo answer (docs/quality.md).
    pub fn int8_block() -> Self {
        ExportOptions { int8_format: Int8Format::Block32, int8_activations: false, head_int8_activations: false, ..Self::int8() }
    }
    pub fn int4(block_size: usize, symmetric: bool) -> Self {
        ExportOptions { linear: Precision::Int4, lm_head: Precision::Int4, embedding: Precision::Int4, block_size, symmetric, ..Self::fp32() }
    }
    /// The packer's default int4 recipe (measured in docs/quality.md, scripts/quality-table.sh):
    /// int4 linears with float zero points and f16 scales and zero points (`q4_min`,
    /// `f16_scales`), the scale search on, and an 8-bit block embedding and head (one tensor
    /// when tied) on float activations.
    pub fn int4_recipe(block_size: usize) -> Self {
        ExportOptions {
            embedding: Precision::Int8,
            lm_head: Precision::Int8,
            q4_search: true,
            q4_min: true,
            f16_scales: true,
            head_int8_activations: false,
            ..Self::int4(block_size, false)
        }
    }
    /// `(int8_activations, head_int8_activations)` for the packer's `--int8-activations`, the
    /// same for `import-gguf` and `quantize`: with the block int8 format, an int8 model's 8-bit
    /// layers and any 8-bit head compute on float activations unless `int8_activations` asks
    /// for int8 ones (SmolLM2's demo reply flips on that rounding, docs/quality.md); int4 layers,
    /// and 8-bit overrides in an int4 model, keep int8 activations (`accuracy_level = 4`).
    pub fn packer_activations(precision: Precision, format: Int8Format, int8_activations: bool) -> (bool, bool) {
        let block = format == Int8Format::Block32;
        let layers = if precision == Precision::Int8 && block { int8_activations } else { true };
        (layers, !block || int8_activations)
    }
}

/// The graph plus the fp32 weights it effectively computes with (quantize-dequantize round
/// trips applied), so the reference forward pass can check it exactly.
pub struct Exported {
    pub model: ModelProto,
    pub effective: LlamaWeights,
}

/// Emits linear layers and embeddings in a chosen precision; shared by [`export`] and the
/// packer's `quantize` (which rewrites an existing graph).
pub(crate) struct Ctx<'a> {
    pub(crate) g: GraphBuilder,
    opts: &'a ExportOptions,
    /// Names of the `axes` constants, made once.
    axes_last: String,
    axes_1: String,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(mut g: GraphBuilder, opts: &'a ExportOptions) -> Self {
        let axes_last = g.const_ints(&[-1]);
        let axes_1 = g.const_ints(&[1]);
        Ctx { g, opts, axes_last, axes_1 }
    }

    /// `x @ w^T` with `w` given `[n][k]`; returns the output and the dequantized weight.
    pub(crate) fn linear(&mut self, x: &str, name: &str, w: &[f32], n: usize, k: usize, p: Precision) -> (String, Vec<f32>) {
        let p = self.opts.overrides.iter().find(|(pat, _)| name.contains(pat.as_str())).map_or(p, |(_, o)| *o);
        let g = &mut self.g;
        let transposed = || -> Vec<f32> {
            let mut t = vec![0f32; n * k];
            for o in 0..n {
                for i in 0..k {
                    t[i * n + o] = w[o * k + i];
                }
            }
            t
        };
        match p {
            Precision::F32 => {
                let wn = g.init_f32(&format!("{name}.weight"), &[k, n], &transposed());
                (g.node("MatMul", &[x, &wn], vec![]), w.to_vec())
            }
            Precision::F16 => {
                let wn = g.init_f16(&format!("{name}.weight"), &[k, n], &transposed());
                let wf = g.node("Cast", &[&wn], vec![attr_i("to", OnnxType::Float as i64)]);
                let eff = w.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
                (g.node("MatMul", &[x, &wf], vec![]), eff)
            }
            Precision::Int8 if self.opts.int8_format == Int8Format::Block32 && k % 32 == 0 => {
                let q = self.quantize_q8_block(w, n, k);
                let init = self.q8_block_initializers(name, &q);
                let int8_activations = if name == "lm_head" { self.opts.head_int8_activations } else { self.opts.int8_activations };
                (self.matmul_nbits8(x, &init, n, k, int8_activations), qref::dequantize_q8_block(&q))
            }
            Precision::Int8 => {
                let q = qref::quantize_q8(w, n, k);
                let mut qt = vec![0i8; n * k];
                for o in 0..n {
                    for i in 0..k {
                        qt[i * n + o] = q.q[o * k + i];
                    }
                }
                let wq = g.init_i8(&format!("{name}.weight_quantized"), &[k, n], &qt);
                let ws = g.init_f32(&format!("{name}.weight_scale"), &[n], &q.scales);
                let dq = g.node_multi("", "DynamicQuantizeLinear", &[x], 3, vec![]);
                let acc = g.node("MatMulInteger", &[&dq[0], &wq, &dq[2]], vec![]);
                let accf = g.node("Cast", &[&acc], vec![attr_i("to", OnnxType::Float as i64)]);
                let scale = g.node("Mul", &[&dq[1], &ws], vec![]);
                (g.node("Mul", &[&accf, &scale], vec![]), qref::dequantize_q8(&q))
            }
            Precision::Int4 => {
                let (init, eff) = self.q4_store(name, w, n, k);
                (self.matmul_nbits(x, &init, n, k), eff)
            }
        }
    }

    /// `w[n][k]` as int4 `MatMulNBits` initializers named after `name`, quantized as the options
    /// ask; returns (B, scales, zero points) and the dequantized weights.
    pub(crate) fn q4_store(&mut self, name: &str, w: &[f32], n: usize, k: usize) -> ((String, String, Option<String>), Vec<f32>) {
        if !self.opts.q4_min {
            let q = self.quantize_q4(name, w, n, k);
            return (self.q4_initializers(name, &q), qref::dequantize_q4(&q));
        }
        let imp = self.opts.importance.as_ref().and_then(|m| m.get(name)).filter(|v| v.len() == k);
        let mut q = qref::quantize_q4_min(w, n, k, self.opts.block_size, imp.map(|v| v.as_slice()));
        if self.opts.f16_scales {
            q = qref::q4_min_f16(w, &q);
        }
        let nb = q.k.div_ceil(q.block_size);
        let zp = self.init_scales(&format!("{name}.weight_zero_points"), &q.zero_points);
        let b = self.g.init_u8(&format!("{name}.weight_Q4"), &[q.n, nb, q.block_size / 2], q.packed.clone());
        let s = self.init_scales(&format!("{name}.weight_scales"), &q.scales);
        ((b, s, Some(zp)), qref::dequantize_q4_min(&q))
    }

    /// `w[n][k]` to int4 as the options ask (round-to-nearest or searched scales).
    pub(crate) fn quantize_q4(&self, name: &str, w: &[f32], n: usize, k: usize) -> crate::quant::Q4Weight {
        if self.opts.q4_search {
            let imp = self.opts.importance.as_ref().and_then(|m| m.get(name)).filter(|v| v.len() == k);
            qref::quantize_q4_search(w, n, k, self.opts.block_size, self.opts.symmetric, imp.map(|v| v.as_slice()))
        } else {
            qref::quantize_q4(w, n, k, self.opts.block_size, self.opts.symmetric)
        }
    }

    /// Store `q` as 8-bit `MatMulNBits` initializers named after `name`: (B `[n][k/32][32]`, scales).
    pub(crate) fn q8_block_initializers(&mut self, name: &str, q: &crate::quant::Q8BlockWeight) -> (String, String) {
        let nb = q.k / q.block_size;
        let b = self.g.init_u8(&format!("{name}.weight_Q8"), &[q.n, nb, q.block_size], q.q.clone());
        let s = self.init_scales(&format!("{name}.weight_scales"), &q.scales);
        (b, s)
    }

    /// `w[n][k]` as 8-bit blocks (scales rounded to f16 with `f16_scales`) and its dequantized values.
    pub(crate) fn quantize_q8_block(&self, w: &[f32], n: usize, k: usize) -> crate::quant::Q8BlockWeight {
        let q = qref::quantize_q8_block(w, n, k);
        if self.opts.f16_scales { qref::q8_block_f16(w, &q) } else { q }
    }

    /// A flat f32 parameter tensor (scales, float zero points): an f32 initializer, or with
    /// `f16_scales` an f16 one cast to float (values must be f16-exact: the quantizers round them).
    fn init_scales(&mut self, name: &str, v: &[f32]) -> String {
        if !self.opts.f16_scales {
            return self.g.init_f32(name, &[v.len()], v);
        }
        debug_assert!(v.iter().all(|x| half::f16::from_f32(*x).to_f32() == *x), "{name}: not f16-exact");
        let h = self.g.init_f16(&format!("{name}_f16"), &[v.len()], v);
        self.g.node("Cast", &[&h], vec![attr_i("to", OnnxType::Float as i64)])
    }

    pub(crate) fn matmul_nbits8(&mut self, x: &str, init: &(String, String), n: usize, k: usize, int8_activations: bool) -> String {
        let mut attrs = vec![attr_i("K", k as i64), attr_i("N", n as i64), attr_i("bits", 8), attr_i("block_size", 32)];
        if int8_activations {
            attrs.push(attr_i("accuracy_level", 4));
        }
        self.g.node_multi(MS_DOMAIN, "MatMulNBits", &[x, init.0.as_str(), init.1.as_str()], 1, attrs).remove(0)
    }

    /// Embedding rows `ids` of an 8-bit table stored for `MatMulNBits` (`[n][k/32][32]` u8),
    /// dequantized in-graph: `(q - 128) * scale`.
    pub(crate) fn gather_q8_block(&mut self, ids: &str, init: &(String, String), k: usize) -> String {
        let nb = k / 32;
        let rows = self.g.node("Gather", &[&init.0, ids], vec![attr_i("axis", 0)]); // [b, s, nb, 32]
        let f = self.g.node("Cast", &[&rows], vec![attr_i("to", OnnxType::Float as i64)]);
        let c128 = self.g.const_f32(128.0);
        let centered = self.g.node("Sub", &[&f, &c128], vec![]);
        // Scales: gather `id * nb + j` from the flat `[n * nb]` tensor (no reshaped copy).
        let nbc = self.g.const_ints(&[nb as i64]);
        let base = self.g.node("Mul", &[ids, &nbc], vec![]);
        let al = self.axes_last.clone();
        let base = self.g.node("Unsqueeze", &[&base, &al], vec![]);
        let offs = self.g.const_ints(&(0..nb as i64).collect::<Vec<_>>());
        let idx = self.g.node("Add", &[&base, &offs], vec![]);
        let sc = self.g.node("Gather", &[&init.1, &idx], vec![attr_i("axis", 0)]); // [b, s, nb]
        let sc = self.g.node("Unsqueeze", &[&sc, &al], vec![]);
        let deq = self.g.node("Mul", &[&centered, &sc], vec![]);
        let flat = self.g.const_ints(&[0, 0, k as i64]);
        self.g.node("Reshape", &[&deq, &flat], vec![])
    }

    /// Store `q` as `MatMulNBits` initializers named after `name`: (B, scales, zero points).
    pub(crate) fn q4_initializers(&mut self, name: &str, q: &crate::quant::Q4Weight) -> (String, String, Option<String>) {
        let nb = q.blocks_per_row();
        let zp = q.packed_zero_points().map(|zp| {
            let len = zp.len();
            self.g.init_u8(&format!("{name}.weight_zero_points"), &[len], zp)
        });
        let b = self.g.init_u8(&format!("{name}.weight_Q4"), &[q.n, nb, q.block_size / 2], q.packed.clone());
        // The int4 quantizers round scales to f16 already (tract's kernels compute with f16 scales).
        let s = self.init_scales(&format!("{name}.weight_scales"), &q.scales);
        (b, s, zp)
    }

    pub(crate) fn matmul_nbits(&mut self, x: &str, init: &(String, String, Option<String>), n: usize, k: usize) -> String {
        let mut inputs = vec![x, init.0.as_str(), init.1.as_str()];
        if let Some(zp) = &init.2 {
            inputs.push(zp);
        }
        let mut attrs = vec![
            attr_i("K", k as i64),
            attr_i("N", n as i64),
            attr_i("bits", 4),
            attr_i("block_size", self.opts.block_size as i64),
        ];
        if self.opts.int8_activations {
            attrs.push(attr_i("accuracy_level", crate::onnx::ACCURACY_LEVEL_INT8));
        }
        self.g.node_multi(MS_DOMAIN, "MatMulNBits", &inputs, 1, attrs).remove(0)
    }

    /// `[..., m]` packed nibbles (u8) -> `[..., 2m]` values as f32, low nibble first.
    /// Integer Mod/Div (opset 10) rather than BitwiseAnd (opset 18) so onnxruntime runs it too.
    fn unpack_nibbles(&mut self, packed: &str, m: usize) -> String {
        let wide = self.g.node("Cast", &[packed], vec![attr_i("to", OnnxType::Int32 as i64)]);
        let sixteen = self.g.const_i32(16);
        let lo = self.g.node("Mod", &[&wide, &sixteen], vec![]);
        let hi = self.g.node("Div", &[&wide, &sixteen], vec![]);
        let al = self.axes_last.clone();
        let lo = self.g.node("Unsqueeze", &[&lo, &al], vec![]);
        let hi = self.g.node("Unsqueeze", &[&hi, &al], vec![]);
        let pair = self.g.node("Concat", &[&lo, &hi], vec![attr_i("axis", -1)]);
        let f = self.g.node("Cast", &[&pair], vec![attr_i("to", OnnxType::Float as i64)]);
        // [..., m, 2] -> [..., 2m]: keep every leading dim, merge the last two.
        let shape = self.g.node("Shape", &[&f], vec![]);
        let (z, two_back) = (self.g.const_ints(&[0]), self.g.const_ints(&[-2]));
        let lead = self.g.node("Slice", &[&shape, &z, &two_back], vec![]);
        let last = self.g.const_ints(&[2 * m as i64]);
        let to = self.g.node("Concat", &[&lead, &last], vec![attr_i("axis", 0)]);
        self.g.node("Reshape", &[&f, &to], vec![])
    }

    /// Embedding rows `ids` of an int4 table stored for `MatMulNBits`, dequantized in-graph.
    pub(crate) fn gather_q4(&mut self, ids: &str, init: &(String, String, Option<String>), n: usize, k: usize) -> String {
        let bs = self.opts.block_size;
        let nb = k.div_ceil(bs);
        let rows = self.g.node("Gather", &[&init.0, ids], vec![attr_i("axis", 0)]); // [b, s, nb, bs/2]
        let q = self.unpack_nibbles(&rows, bs / 2); // [b, s, nb, bs]
        // Scales stay the flat `[n * nb]` tensor MatMulNBits reads: gather `id * nb + j`
        // rather than reshaping the constant (tract would copy the whole table every step).
        let nbc = self.g.const_ints(&[nb as i64]);
        let base = self.g.node("Mul", &[ids, &nbc], vec![]);
        let al = self.axes_last.clone();
        let base = self.g.node("Unsqueeze", &[&base, &al], vec![]); // [b, s, 1]
        let offs = self.g.const_ints(&(0..nb as i64).collect::<Vec<_>>());
        let idx = self.g.node("Add", &[&base, &offs], vec![]); // [b, s, nb]
        let sc = self.g.node("Gather", &[&init.1, &idx], vec![attr_i("axis", 0)]); // [b, s, nb]
        let zero = match &init.2 {
            None => self.g.const_f32(8.0),
            Some(zp) => {
                let zb = nb.div_ceil(2);
                let z2 = self.g.const_ints(&[n as i64, zb as i64]);
                let zps = self.g.node("Reshape", &[zp, &z2], vec![]);
                let zr = self.g.node("Gather", &[&zps, ids], vec![attr_i("axis", 0)]); // [b, s, zb]
                let z = self.unpack_nibbles(&zr, zb); // [b, s, 2 zb]
                let (st, en, ax) = (self.g.const_ints(&[0]), self.g.const_ints(&[nb as i64]), self.g.const_ints(&[-1]));
                let z = self.g.node("Slice", &[&z, &st, &en, &ax], vec![]);
                let al = self.axes_last.clone();
                self.g.node("Unsqueeze", &[&z, &al], vec![])
            }
        };
        let al = self.axes_last.clone();
        let sc = self.g.node("Unsqueeze", &[&sc, &al], vec![]);
        let centered = self.g.node("Sub", &[&q, &zero], vec![]);
        let deq = self.g.node("Mul", &[&centered, &sc], vec![]);
        let flat = self.g.const_ints(&[0, 0, (nb * bs) as i64]);
        let x = self.g.node("Reshape", &[&deq, &flat], vec![]);
        if nb * bs == k {
            return x;
        }
        let (st, en, ax) = (self.g.const_ints(&[0]), self.g.const_ints(&[k as i64]), self.g.const_ints(&[-1]));
        self.g.node("Slice", &[&x, &st, &en, &ax], vec![])
    }

    /// SwiGLU MLP of layer `pre` on `xn`: `down(silu(gate(xn)) * up(xn))`; returns the output
    /// and the dequantized gate, up and down weights.
    fn mlp(&mut self, xn: &str, pre: &str, lw: &LayerWeights, cfg: &LlamaConfig, p: Precision) -> (String, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (gt, eg) = self.linear(xn, &format!("{pre}.mlp.gate_proj"), &lw.w_gate, i, h, p);
        let (up, eu) = self.linear(xn, &format!("{pre}.mlp.up_proj"), &lw.w_up, i, h, p);
        let sg = self.g.node("Sigmoid", &[&gt], vec![]);
        let silu = self.g.node("Mul", &[&gt, &sg], vec![]);
        let act = self.g.node("Mul", &[&silu, &up], vec![]);
        let (down, ed) = self.linear(&act, &format!("{pre}.mlp.down_proj"), &lw.w_down, h, i, p);
        (down, eg, eu, ed)
    }

    fn rms_norm(&mut self, x: &str, name: &str, w: &[f32], eps: f32) -> String {
        let two = self.g.const_f32(2.0);
        let epsc = self.g.const_f32(eps);
        let wn = self.g.init_f32(&format!("{name}.weight"), &[w.len()], w);
        let sq = self.g.node("Pow", &[x, &two], vec![]);
        let mean = self.g.node("ReduceMean", &[&sq], vec![attr_ints("axes", &[-1]), attr_i("keepdims", 1)]);
        let var = self.g.node("Add", &[&mean, &epsc], vec![]);
        let std = self.g.node("Sqrt", &[&var], vec![]);
        let inv = self.g.node("Reciprocal", &[&std], vec![]);
        let normed = self.g.node("Mul", &[x, &inv], vec![]);
        self.g.node("Mul", &[&wn, &normed], vec![])
    }

    /// `[B, S, heads * hd]` -> `[B, heads, S, hd]`
    fn split_heads(&mut self, x: &str, heads: usize, hd: usize) -> String {
        let shape = self.g.const_ints(&[0, 0, heads as i64, hd as i64]);
        let r = self.g.node("Reshape", &[x, &shape], vec![]);
        self.g.node("Transpose", &[&r], vec![attr_ints("perm", &[0, 2, 1, 3])])
    }

    /// `x * cos + rotate_half(x) * sin` on `[B, H, S, hd]`.
    fn rope(&mut self, x: &str, cos: &str, sin: &str, hd: usize) -> String {
        let half = (hd / 2) as i64;
        let axis = self.g.const_ints(&[-1]);
        let (z, h, e) = (self.g.const_ints(&[0]), self.g.const_ints(&[half]), self.g.const_ints(&[hd as i64]));
        let x1 = self.g.node("Slice", &[x, &z, &h, &axis], vec![]);
        let x2 = self.g.node("Slice", &[x, &h, &e, &axis], vec![]);
        let nx2 = self.g.node("Neg", &[&x2], vec![]);
        let rot = self.g.node("Concat", &[&nx2, &x1], vec![attr_i("axis", -1)]);
        let a = self.g.node("Mul", &[x, cos], vec![]);
        let b = self.g.node("Mul", &[&rot, sin], vec![]);
        self.g.node("Add", &[&a, &b], vec![])
    }

    /// `[B, kvh, T, hd]` -> `[B, kvh * group, T, hd]`
    fn repeat_kv(&mut self, x: &str, group: usize, heads: usize, hd: usize) -> String {
        if group == 1 {
            return x.into();
        }
        let ax = self.g.const_ints(&[2]);
        let u = self.g.node("Unsqueeze", &[x, &ax], vec![]);
        let shape = self.g.const_ints(&[1, 1, group as i64, 1, 1]);
        let e = self.g.node("Expand", &[&u, &shape], vec![]);
        let to = self.g.const_ints(&[0, heads as i64, -1, hd as i64]);
        self.g.node("Reshape", &[&e, &to], vec![])
    }
}

/// Build the ONNX graph for `cfg` / `w` stored as `opts` asks.
pub fn export(cfg: &LlamaConfig, w: &LlamaWeights, opts: &ExportOptions) -> Exported {
    let mut cx = Ctx::new(GraphBuilder::default(), opts);
    let (h, hd, kvh) = (cfg.hidden_size, cfg.head_dim, cfg.num_kv_heads);
    let (b, s, p, t) = (Dim::Named("batch_size"), Dim::Named("sequence_length"), Dim::Named("past_sequence_length"), Dim::Named("total_sequence_length"));

    let ids = cx.g.input("input_ids", OnnxType::Int64, &[b.clone(), s.clone()]);
    let mask_in = cx.g.input("attention_mask", OnnxType::Int64, &[b.clone(), t.clone()]);
    let genai = opts.layout == KvLayout::Genai;
    let pos = (!genai).then(|| cx.g.input("position_ids", OnnxType::Int64, &[b.clone(), s.clone()]));
    let mut past = Vec::new();
    for l in 0..cfg.num_layers {
        let dims = [b.clone(), Dim::Fixed(kvh as i64), p.clone(), Dim::Fixed(hd as i64)];
        let k = cx.g.input(&format!("past_key_values.{l}.key"), OnnxType::Float, &dims);
        let v = cx.g.input(&format!("past_key_values.{l}.value"), OnnxType::Float, &dims);
        past.push((k, v));
    }

    let mut eff = w.clone();
    // The int4 embedding table, reused as the head when tied.
    let mut shared_q4 = None;
    // The same for an 8-bit block table.
    let mut shared_q8 = None;
    // Token embedding.
    let x = match opts.embedding {
        Precision::F32 => {
            let e = cx.g.init_f32("model.embed_tokens.weight", &[cfg.vocab_size, h], &w.embed);
            cx.g.node("Gather", &[&e, &ids], vec![attr_i("axis", 0)])
        }
        Precision::F16 => {
            let e = cx.g.init_f16("model.embed_tokens.weight", &[cfg.vocab_size, h], &w.embed);
            eff.embed = w.embed.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
            let g = cx.g.node("Gather", &[&e, &ids], vec![attr_i("axis", 0)]);
            cx.g.node("Cast", &[&g], vec![attr_i("to", OnnxType::Float as i64)])
        }
        Precision::Int4 => {
            // Integer zero points even with `q4_min`: float ones would add 4 bytes per block of
            // the 28 M-weight table (3.5 MB for SmolLM2, past the 100 MB bundle).
            let q = cx.quantize_q4("model.embed_tokens", &w.embed, cfg.vocab_size, h);
            eff.embed = qref::dequantize_q4(&q);
            let init = cx.q4_initializers("model.embed_tokens", &q);
            let x = cx.gather_q4(&ids, &init, cfg.vocab_size, h);
            shared_q4 = Some(init);
            x
        }
        Precision::Int8 if opts.int8_format == Int8Format::Block32 && h % 32 == 0 => {
            let q = cx.quantize_q8_block(&w.embed, cfg.vocab_size, h);
            eff.embed = qref::dequantize_q8_block(&q);
            let init = cx.q8_block_initializers("model.embed_tokens", &q);
            let x = cx.gather_q8_block(&ids, &init, h);
            shared_q8 = Some(init);
            x
        }
        Precision::Int8 => {
            let q = qref::quantize_q8(&w.embed, cfg.vocab_size, h);
            eff.embed = qref::dequantize_q8(&q);
            let e = cx.g.init_i8("model.embed_tokens.weight_quantized", &[cfg.vocab_size, h], &q.q);
            let sc = cx.g.init_f32("model.embed_tokens.weight_scale", &[cfg.vocab_size], &q.scales);
            let gq = cx.g.node("Gather", &[&e, &ids], vec![attr_i("axis", 0)]);
            let gf = cx.g.node("Cast", &[&gq], vec![attr_i("to", OnnxType::Float as i64)]);
            let gs = cx.g.node("Gather", &[&sc, &ids], vec![attr_i("axis", 0)]);
            let al = cx.axes_last.clone();
            let gs = cx.g.node("Unsqueeze", &[&gs, &al], vec![]);
            cx.g.node("Mul", &[&gf, &gs], vec![])
        }
    };

    let (mut presents, xn) = if let Some(pos) = pos {
        optimum_layers(&mut cx, cfg, w, &mut eff, x, &pos, &mask_in, &past)
    } else {
        genai_layers(&mut cx, cfg, w, &mut eff, x, &mask_in, &past)
    };
    let tied_fp32 = cfg.tie_word_embeddings && opts.lm_head == Precision::F32 && opts.embedding == Precision::F32;
    let logits = if let (true, Precision::Int4, Some(init)) = (cfg.tie_word_embeddings, opts.lm_head, &shared_q4) {
        // One int4 tensor serves both the embedding gather and the head matmul.
        eff.lm_head = Some(eff.embed.clone());
        let init = init.clone();
        cx.matmul_nbits(&xn, &init, cfg.vocab_size, h)
    } else if let (true, Precision::Int8, Some(init)) = (cfg.tie_word_embeddings, opts.lm_head, &shared_q8) {
        eff.lm_head = Some(eff.embed.clone());
        let init = init.clone();
        cx.matmul_nbits8(&xn, &init, cfg.vocab_size, h, opts.head_int8_activations)
    } else if tied_fp32 {
        // As optimum exports a tied head: MatMul against the transposed embedding.
        let et = cx.g.node("Transpose", &["model.embed_tokens.weight"], vec![attr_ints("perm", &[1, 0])]);
        cx.g.node("MatMul", &[&xn, &et], vec![])
    } else {
        let (lg, eh) = cx.linear(&xn, "lm_head", w.lm_head(), cfg.vocab_size, h, opts.lm_head);
        eff.lm_head = Some(eh);
        lg
    };
    cx.g.output(&logits, "logits", OnnxType::Float, &[b.clone(), s.clone(), Dim::Fixed(cfg.vocab_size as i64)]);
    for (l, (k, v)) in presents.drain(..).enumerate() {
        let dims = [b.clone(), Dim::Fixed(kvh as i64), t.clone(), Dim::Fixed(hd as i64)];
        cx.g.output(&k, &format!("present.{l}.key"), OnnxType::Float, &dims);
        cx.g.output(&v, &format!("present.{l}.value"), OnnxType::Float, &dims);
    }
    let meta = [(CONFIG_METADATA_KEY, serde_json::to_string(cfg).expect("config serializes"))];
    Exported { model: cx.g.finish("llama", &meta), effective: eff }
}

type Presents = Vec<(String, String)>;

/// Decoder layers in the HF/optimum layout: RoPE from `position_ids`, attention from plain
/// ONNX ops. Returns the `present.*` values and the final-normed hidden states.
#[allow(clippy::too_many_arguments)]
fn optimum_layers(
    cx: &mut Ctx,
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    eff: &mut LlamaWeights,
    mut x: String,
    pos: &str,
    mask_in: &str,
    past: &[(String, String)],
) -> (Presents, String) {
    let (h, hd, nh, kvh) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
    // RoPE tables from position_ids: [B, 1, S, hd].
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / hd as f32)).collect();
    let inv = cx.g.init_f32("rope.inv_freq", &[hd / 2], &inv_freq);
    let posf = cx.g.node("Cast", &[pos], vec![attr_i("to", OnnxType::Float as i64)]);
    let al = cx.axes_last.clone();
    let posu = cx.g.node("Unsqueeze", &[&posf, &al], vec![]);
    let freqs = cx.g.node("Mul", &[&posu, &inv], vec![]);
    let emb = cx.g.node("Concat", &[&freqs, &freqs], vec![attr_i("axis", -1)]);
    let a1 = cx.axes_1.clone();
    let cos = cx.g.node("Cos", &[&emb], vec![]);
    let cos = cx.g.node("Unsqueeze", &[&cos, &a1], vec![]);
    let sin = cx.g.node("Sin", &[&emb], vec![]);
    let sin = cx.g.node("Unsqueeze", &[&sin, &a1], vec![]);

    // Additive causal + padding mask: [B, 1, S, T].
    let mshape = cx.g.node("Shape", &[mask_in], vec![]);
    let one_idx = cx.g.const_i64(&[1]);
    let total = cx.g.node("Gather", &[&mshape, &one_idx], vec![attr_i("axis", 0)]);
    let (zero, one) = (cx.g.const_i64(&[0]), cx.g.const_i64(&[1]));
    let kpos = cx.g.node("Range", &[&zero, &total, &one], vec![]);
    let qpos = cx.g.node("Unsqueeze", &[pos, &al], vec![]);
    let future = cx.g.node("Greater", &[&kpos, &qpos], vec![]);
    let causal = cx.g.node("Not", &[&future], vec![]);
    let am = cx.g.node("Cast", &[mask_in], vec![attr_i("to", OnnxType::Bool as i64)]);
    let am = cx.g.node("Unsqueeze", &[&am, &a1], vec![]);
    let allowed = cx.g.node("And", &[&causal, &am], vec![]);
    let (z, neg) = (cx.g.const_f32(0.0), cx.g.const_f32(f32::MIN));
    let mask = cx.g.node("Where", &[&allowed, &z, &neg], vec![]);
    let mask = cx.g.node("Unsqueeze", &[&mask, &a1], vec![]);

    let scale = cx.g.const_f32(1.0 / (hd as f32).sqrt());
    let group = nh / kvh;
    let mut presents = Vec::new();
    for (l, lw) in w.layers.iter().enumerate() {
        let pre = format!("model.layers.{l}");
        let p = cx.opts.linear;
        let xn = cx.rms_norm(&x, &format!("{pre}.input_layernorm"), &lw.attn_norm, cfg.rms_norm_eps);
        let (q, eq) = cx.linear(&xn, &format!("{pre}.self_attn.q_proj"), &lw.wq, cfg.q_dim(), h, p);
        let (k, ek) = cx.linear(&xn, &format!("{pre}.self_attn.k_proj"), &lw.wk, cfg.kv_dim(), h, p);
        let (v, ev) = cx.linear(&xn, &format!("{pre}.self_attn.v_proj"), &lw.wv, cfg.kv_dim(), h, p);
        let q = cx.split_heads(&q, nh, hd);
        let k = cx.split_heads(&k, kvh, hd);
        let v = cx.split_heads(&v, kvh, hd);
        let q = cx.rope(&q, &cos, &sin, hd);
        let k = cx.rope(&k, &cos, &sin, hd);
        let k_all = cx.g.node("Concat", &[&past[l].0, &k], vec![attr_i("axis", 2)]);
        let v_all = cx.g.node("Concat", &[&past[l].1, &v], vec![attr_i("axis", 2)]);
        presents.push((k_all.clone(), v_all.clone()));
        let kr = cx.repeat_kv(&k_all, group, nh, hd);
        let vr = cx.repeat_kv(&v_all, group, nh, hd);
        let kt = cx.g.node("Transpose", &[&kr], vec![attr_ints("perm", &[0, 1, 3, 2])]);
        let scores = cx.g.node("MatMul", &[&q, &kt], vec![]);
        let scores = cx.g.node("Mul", &[&scores, &scale], vec![]);
        let scores = cx.g.node("Add", &[&scores, &mask], vec![]);
        let probs = cx.g.node("Softmax", &[&scores], vec![attr_i("axis", -1)]);
        let o = cx.g.node("MatMul", &[&probs, &vr], vec![]);
        let o = cx.g.node("Transpose", &[&o], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let flat = cx.g.const_ints(&[0, 0, cfg.q_dim() as i64]);
        let o = cx.g.node("Reshape", &[&o, &flat], vec![]);
        let (o, eo) = cx.linear(&o, &format!("{pre}.self_attn.o_proj"), &lw.wo, h, cfg.q_dim(), p);
        x = cx.g.node("Add", &[&x, &o], vec![]);

        let xn = cx.rms_norm(&x, &format!("{pre}.post_attention_layernorm"), &lw.ffn_norm, cfg.rms_norm_eps);
        let (down, eg, eu, ed) = cx.mlp(&xn, &pre, lw, cfg, p);
        x = cx.g.node("Add", &[&x, &down], vec![]);
        let el = &mut eff.layers[l];
        (el.wq, el.wk, el.wv, el.wo, el.w_gate, el.w_up, el.w_down) = (eq, ek, ev, eo, eg, eu, ed);
    }

    let xn = cx.rms_norm(&x, "model.norm", &w.final_norm, cfg.rms_norm_eps);
    (presents, xn)
}

/// Decoder layers as onnxruntime-genai's builder writes them: `GroupQueryAttention` with
/// rotary inside (cos/sin caches indexed by position, positions from `seqlens_k`), RMS norms as
/// `SimplifiedLayerNormalization` / `SkipSimplifiedLayerNormalization` carrying the residual.
fn genai_layers(
    cx: &mut Ctx,
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    eff: &mut LlamaWeights,
    x: String,
    mask_in: &str,
    past: &[(String, String)],
) -> (Presents, String) {
    let (h, hd, nh, kvh) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
    let eps = vec![attr_f("epsilon", cfg.rms_norm_eps)];
    // seqlens_k = sum(attention_mask) - 1 (int32 [B]); total_sequence_length (int32 scalar).
    let a1 = cx.axes_1.clone();
    let sum = cx.g.node("ReduceSum", &[mask_in, &a1], vec![attr_i("keepdims", 0)]);
    let one = cx.g.const_i64(&[1]);
    let last = cx.g.node("Sub", &[&sum, &one], vec![]);
    let seqlens = cx.g.node("Cast", &[&last], vec![attr_i("to", OnnxType::Int32 as i64)]);
    let shape = cx.g.node("Shape", &[mask_in], vec![]);
    let one_scalar = cx.g.const_i64_scalar(1);
    let total = cx.g.node("Gather", &[&shape, &one_scalar], vec![attr_i("axis", 0)]);
    let total = cx.g.node("Cast", &[&total], vec![attr_i("to", OnnxType::Int32 as i64)]);
    // cos/sin caches `[max_positions, hd / 2]`.
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..cfg.max_position_embeddings {
        for i in 0..hd / 2 {
            let a = p as f32 / cfg.rope_theta.powf((2 * i) as f32 / hd as f32);
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = cx.g.init_f32("cos_cache", &[cfg.max_position_embeddings, hd / 2], &cos);
    let sin = cx.g.init_f32("sin_cache", &[cfg.max_position_embeddings, hd / 2], &sin);

    let mut presents = Vec::new();
    // The residual stream and the output of the last block not yet added to it.
    let (mut residual, mut pending): (String, Option<String>) = (x, None);
    let norm = |cx: &mut Ctx, residual: &mut String, pending: Option<String>, name: &str, wn: &[f32]| -> String {
        let wn = cx.g.init_f32(&format!("{name}.weight"), &[wn.len()], wn);
        match pending {
            None => cx.g.node("SimplifiedLayerNormalization", &[residual.as_str(), &wn], [attr_i("axis", -1)].into_iter().chain(eps.clone()).collect()),
            Some(block_out) => {
                let outs = cx.g.node_multi_opt(MS_DOMAIN, "SkipSimplifiedLayerNormalization", &[&block_out, residual.as_str(), &wn], &[true, false, false, true], eps.clone());
                *residual = outs[3].clone();
                outs[0].clone()
            }
        }
    };
    for (l, lw) in w.layers.iter().enumerate() {
        let pre = format!("model.layers.{l}");
        let p = cx.opts.linear;
        let xn = norm(cx, &mut residual, pending.take(), &format!("{pre}.input_layernorm"), &lw.attn_norm);
        let (q, eq) = cx.linear(&xn, &format!("{pre}.self_attn.q_proj"), &lw.wq, cfg.q_dim(), h, p);
        let (k, ek) = cx.linear(&xn, &format!("{pre}.self_attn.k_proj"), &lw.wk, cfg.kv_dim(), h, p);
        let (v, ev) = cx.linear(&xn, &format!("{pre}.self_attn.v_proj"), &lw.wv, cfg.kv_dim(), h, p);
        let attrs = vec![
            attr_i("num_heads", nh as i64),
            attr_i("kv_num_heads", kvh as i64),
            attr_i("do_rotary", 1),
            attr_i("rotary_interleaved", 0),
            attr_i("local_window_size", -1),
        ];
        let ins = [q.as_str(), &k, &v, &past[l].0, &past[l].1, &seqlens, &total, &cos, &sin];
        let outs = cx.g.node_multi(MS_DOMAIN, "GroupQueryAttention", &ins, 3, attrs);
        presents.push((outs[1].clone(), outs[2].clone()));
        let (o, eo) = cx.linear(&outs[0], &format!("{pre}.self_attn.o_proj"), &lw.wo, h, cfg.q_dim(), p);
        let xn = norm(cx, &mut residual, Some(o), &format!("{pre}.post_attention_layernorm"), &lw.ffn_norm);
        let (down, eg, eu, ed) = cx.mlp(&xn, &pre, lw, cfg, p);
        pending = Some(down);
        let el = &mut eff.layers[l];
        (el.wq, el.wk, el.wv, el.wo, el.w_gate, el.w_up, el.w_down) = (eq, ek, ev, eo, eg, eu, ed);
    }
    let xn = norm(cx, &mut residual, pending.take(), "model.norm", &w.final_norm);
    (presents, xn)
}
