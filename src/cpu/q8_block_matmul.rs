//! `MatMulNBits` with `bits = 8`, block 32 (int8 weights, one f32 scale per 32 along K) as a
//! tract op with our own kernel: edge-llm's int8 format.
//!
//! Why this format: per-tensor activation rounding (`DynamicQuantizeLinear` before
//! `MatMulInteger`, onnxruntime's `quantize_dynamic`) costs SmolLM2-135M +66 % perplexity and
//! its answer to the demo question; per-block scales on both sides (llama.cpp's q8_0 × q8_0)
//! keep int8 within a fraction of a percent (`edge-llm-pack eval`). onnxruntime runs the same
//! file (`MatMulNBits` 8-bit, contrib op), and tract 0.23.9 has no 8-bit `MatMulNBits`: this
//! op is registered on every build, by the dispatcher at the end of this file (which also
//! routes 4-bit nodes with float zero points to [`super::q4_min_matmul`]).
//!
//! Math: `y[m][n] = sum_b s[n][b] * sum_j (q[n][b][j] - zp[n][b]) * x[m][32b + j]`. Weights stay
//! the graph's u8 tensor (shared with a tied embedding's `Gather`); `q - 128` is `q ^ 0x80` as
//! i8, and `(128 - zp) * s * sum(x in block)` carries any zero point other than 128. With
//! `accuracy_level = 4` (onnxruntime: int8 compute) activations are quantized per 32-block to
//! int8 (`scale = amax / 127`) and blocks are integer dot products; otherwise activations stay
//! f32. The plain reference is `quant::reference::dequantize_q8_block` + a matmul.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::kernels::q8_block::Q8Block;
use super::q4_matmul::{Activations, Q4Activations};

/// The block size the kernel handles (and the exporter writes).
pub use super::kernels::q8_block::BLOCK;

/// Weights of one 8-bit `MatMulNBits` node.
#[derive(Debug)]
pub struct Q8BlockMatrix {
    pub n: usize,
    pub k: usize,
    /// `[n][k / 32][32]` u8, the graph's constant (shared, not copied).
    pub packed: Arc<Tensor>,
    /// `[n][k / 32]` f32: the graph's constant, shared (no copy) when it is already f32 (the
    /// SmolLM2 head's 3.5 MB were held twice).
    pub scales: Arc<Tensor>,
    /// `(128 - zp) * scale` per block, when some zero point is not 128.
    pub zero_terms: Option<Vec<f32>>,
    /// The kernel variant ([`super::kernels::q8_block::best`] unless a test picks another).
    pub kernels: &'static Q8Block,
}

impl Q8BlockMatrix {
    pub fn new(n: usize, k: usize, packed: Arc<Tensor>, scales: Arc<Tensor>, zero_points: Option<&[u8]>) -> TractResult<Self> {
        ensure!(k % BLOCK == 0, "K={k} is not a multiple of {BLOCK}");
        ensure!(packed.datum_type() == u8::datum_type(), "B must be uint8, got {:?}", packed.datum_type());
        ensure!(packed.len() == n * k, "B has {} bytes, expected {}", packed.len(), n * k);
        ensure!(packed.to_plain_array_view::<u8>()?.as_slice().is_some(), "B must be contiguous");
        let nb = k / BLOCK;
        let scales = if scales.datum_type() == f32::datum_type() { scales } else { Arc::new(scales.cast_to::<f32>()?.into_owned()) };
        ensure!(scales.len() == n * nb, "scales has {} values, expected {}", scales.len(), n * nb);
        ensure!(scales.to_plain_array_view::<f32>()?.as_slice().is_some(), "scales must be contiguous");
        let zero_terms = match zero_points {
            Some(z) => {
                ensure!(z.len() == n * nb, "zero_points has {} bytes, expected {}", z.len(), n * nb);
                let s = scales.to_plain_array_view::<f32>()?;
                z.iter().any(|z| *z != 128).then(|| z.iter().zip(s.iter()).map(|(z, s)| (128.0 - *z as f32) * s).collect())
            }
            None => None,
        };
        Ok(Q8BlockMatrix { n, k, packed, scales, zero_terms, kernels: super::kernels::q8_block::best() })
    }

    fn bytes(&self) -> TractResult<&[u8]> {
        self.packed.to_plain_array_view::<u8>()?.to_slice().context("B must be contiguous")
    }

    /// `out[m][n] = x[m] · w[n]` for the rows of `x` (`[m][k]`) on `activations` (rounded per
    /// 32-block first unless `Float`).
    pub fn matmul(&self, x: &[f32], out: &mut [f32], activations: Activations) -> TractResult<()> {
        let (k, nb) = (self.k, self.k / BLOCK);
        let m = x.len() / k;
        ensure!(x.len() == m * k && out.len() == m * self.n, "shapes: x {} values, out {} for K={k} N={}", x.len(), out.len(), self.n);
        let w = self.bytes()?;
        let scales = self.scales.to_plain_array_view::<f32>()?;
        let scales = scales.as_slice().context("scales must be contiguous")?;
        let acts = (activations == Activations::Int8).then(|| quantize_blocks(x));
        let acts16 = (activations == Activations::Int16).then(|| super::q4_matmul::quantize_rows_to::<i16>(x, k));
        // Block sums of x, for the zero-point term (of the rounded x when it is rounded).
        let sums: Vec<f32> = match (&self.zero_terms, &acts, &acts16) {
            (None, _, _) => Vec::new(),
            (Some(_), Some((q, s)), _) => q.chunks_exact(BLOCK).zip(s).map(|(b, s)| s * b.iter().map(|v| *v as i32).sum::<i32>() as f32).collect(),
            (Some(_), None, Some(rows)) => rows.scaled_sums(),
            (Some(_), None, None) => x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect(),
        };
        super::threads::split_columns(self.n, m, m * k, out, |cols, out, ld| {
            for (c, col) in cols.clone().enumerate() {
                let (wr, sw) = (&w[col * k..(col + 1) * k], &scales[col * nb..(col + 1) * nb]);
                for r in 0..m {
                    let mut y = match (&acts, &acts16) {
                        (Some((q, s)), _) => (self.kernels.dot_q8)(wr, sw, &q[r * k..(r + 1) * k], &s[r * nb..(r + 1) * nb]),
                        (None, Some(a)) => (self.kernels.dot_q16)(wr, sw, &a.q[r * k..(r + 1) * k], &a.scales[r * nb..(r + 1) * nb]),
                        (None, None) => (self.kernels.dot_f32)(wr, sw, &x[r * k..(r + 1) * k]),
                    };
                    if let Some(z) = &self.zero_terms {
                        y += z[col * nb..(col + 1) * nb].iter().zip(&sums[r * nb..(r + 1) * nb]).map(|(a, b)| a * b).sum::<f32>();
                    }
                    out[r * ld + c] = y;
                }
            }
            Ok(())
        })
    }
}

/// `x` quantized per 32-block: `(q, scales)` with `x ≈ q * scale`, `scale = amax / 127` (0 for
/// an all-zero block), rounded as onnxruntime's int8 compute rounds
/// ([`super::q4_matmul::q8_block_scale`]); the same as `quant::reference::q8_block_round_trip`.
pub fn quantize_blocks(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; x.len()];
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    let mut block = [0i16; BLOCK];
    for (src, dst) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)) {
        scales.push(super::q4_matmul::quantize_block_i16(src, &mut block, <i8 as super::q4_matmul::BlockInt>::LEVELS));
        for (d, v) in dst.iter_mut().zip(block) {
            *d = v as i8;
        }
    }
    (q, scales)
}

/// The typed op: `[.., K] f32 -> [.., N] f32`.
pub type Q8BlockMatMul = super::rows::FloatRowsOp<Q8BlockMatrix>;

impl super::rows::FloatRows for Q8BlockMatrix {
    const OP: &'static str = "EdgeLlmQ8BlockMatMul";
    fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }
    fn run(&self, x: &[f32], out: &mut [f32], activations: Activations) -> TractResult<()> {
        self.matmul(x, out, activations)
    }
}

/// ONNX-side expansion: reads the constant weights and wires [`Q8BlockMatMul`].
#[derive(Debug, Clone)]
struct MatMulNBitsQ8 {
    k: usize,
    n: usize,
    has_zp: bool,
    activations: Activations,
}

impl Expansion for MatMulNBitsQ8 {
    fn name(&self) -> StaticName {
        "MatMulNBits8(edge-llm)".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        super::rows::float_rules(s, inputs, outputs, self.n)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize, what: &str| super::rows::weight(model, inputs, i, what);
        let b = konst(1, "B")?;
        let scales = konst(2, "scales")?;
        let zp = if self.has_zp { Some(konst(3, "zero_points")?) } else { None };
        ensure!(zp.as_ref().is_none_or(|z| z.datum_type() == u8::datum_type()), "MatMulNBits 8-bit: zero_points must be uint8");
        let zp_bytes = zp.as_ref().map(|t| t.to_plain_array_view::<u8>().map(|v| v.iter().copied().collect::<Vec<u8>>())).transpose()?;
        let w = Q8BlockMatrix::new(self.n, self.k, b, scales, zp_bytes.as_deref())?;
        let x = if model.outlet_fact(inputs[0])?.datum_type == f32::datum_type() {
            inputs[0]
        } else {
            model.wire_node(format!("{prefix}.cast"), tract_onnx::tract_core::ops::cast::cast(f32::datum_type()), &[inputs[0]])?[0]
        };
        model.wire_node(prefix, Q8BlockMatMul { w: Arc::new(w), activations: self.activations }, &[x])
    }
}

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// The `MatMulNBits` builder each [`register`] found in place, by mode (0: tract's own; `1 + i`:
/// the q4 kernel's with [`Q4Activations::ALL`]`[i]`). A fn pointer carries no state, so there
/// is one entry point per mode; each mode always finds the same builder before it.
static NEXT: [std::sync::OnceLock<Builder>; 5] = [const { std::sync::OnceLock::new() }; 5];

fn build_0(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, 0)
}
fn build_1(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, 1)
}
fn build_2(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, 2)
}
fn build_3(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, 3)
}
fn build_4(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, 4)
}

/// Element type of graph tensor `name` (an initializer, a weight the loader declared as a
/// typed input, or either through a `Cast` or `Identity`).
fn elem_type(ctx: &ParsingContext, name: &str) -> Option<i32> {
    let g = ctx.model.graph.as_ref()?;
    if let Some(t) = g.initializer.iter().find(|t| t.name == name) {
        return Some(t.data_type);
    }
    // fp16 scales / zero points cast to float (`ExportOptions::f16_scales`).
    if let Some(cast) = g.node.iter().find(|n| n.op_type == "Cast" && n.output.first().is_some_and(|o| o == name)) {
        return cast.attribute.iter().find(|a| a.name == "to").map(|a| a.i as i32);
    }
    // Such a Cast the loader widened (its f16 weight read as f32, `cpu::detach_weights`).
    if let Some(id) = g.node.iter().find(|n| n.op_type == "Identity" && n.output.first().is_some_and(|o| o == name)) {
        return elem_type(ctx, id.input.first()?);
    }
    let vi = g.input.iter().find(|i| i.name == name)?;
    match vi.r#type.as_ref()?.value.as_ref()? {
        tract_onnx::pb::type_proto::Value::TensorType(t) => Some(t.elem_type),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn build(ctx: &ParsingContext, node: &NodeProto, mode: usize) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    use tract_onnx::pb::tensor_proto::DataType;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let block: usize = node.get_attr("block_size")?;
    let present = |i: usize| node.input.get(i).is_some_and(|s| !s.is_empty());
    let float_zp = present(3) && matches!(elem_type(ctx, &node.input[3]).and_then(|t| DataType::try_from(t).ok()), Some(DataType::Float | DataType::Float16));
    if bits == 8 {
        ensure!(block == BLOCK && k % BLOCK == 0 && !present(4) && !present(5), "MatMulNBits 8-bit: only block_size {BLOCK}, K a multiple of it, no g_idx or bias (got block_size {block}, K {k})");
        // onnxruntime: accuracy_level 4 computes with int8 activations.
        // As the node's `accuracy_level` asks whatever the mode (int8 or float); the float ones
        // on 16-bit blocks under the default mode, as the int4 nodes.
        let activations = match (super::q4_matmul::int8_level(node)?, mode) {
            (true, _) => Activations::Int8,
            (false, m) if m == 1 + Q4Activations::AsModel.index() => Activations::Int16,
            (false, _) => Activations::Float,
        };
        return Ok((expand(MatMulNBitsQ8 { k, n, has_zp: present(3), activations }), vec![]));
    }
    if bits == 4 && float_zp {
        ensure!(block == BLOCK && k % BLOCK == 0 && !present(4) && !present(5), "MatMulNBits 4-bit with float zero points: only block_size {BLOCK}, K a multiple of it, no g_idx or bias");
        // Int8 activations only when forced: onnxruntime 1.32 computes float zero points on
        // float activations whatever `accuracy_level` says (tests/ort_compat.rs). Mode 0 (no q4
        // kernel) computes in f32.
        let activations = match mode.checked_sub(1) {
            Some(i) => Q4Activations::ALL[i].for_node(false),
            None => super::rows::Activations::Float,
        };
        let zero_point_term = node.get_attr_opt::<i64>(super::q4_min_matmul::ZERO_POINT_TERM_ATTR)?.unwrap_or(0) == 1;
        return Ok((expand(super::q4_min_matmul::MatMulNBitsQ4Min { k, n, activations, zero_point_term }), vec![]));
    }
    let next = NEXT[mode].get().context("the previous MatMulNBits builder was not registered")?;
    next(ctx, node)
}

/// Route 8-bit `MatMulNBits` nodes to [`Q8BlockMatMul`] and 4-bit ones with float zero points
/// to [`super::q4_min_matmul::Q4MinMatMul`]; every other node goes to the builder registered
/// before (tract's, or the q4 kernel's: call this after `q4_matmul::register`). `mode`: 0
/// without the q4 kernel, `1 + Q4Activations::index()` with it.
pub fn register(onnx: &mut tract_onnx::Onnx, mode: usize) {
    if let Some(previous) = onnx.op_register.0.get("MatMulNBits") {
        NEXT[mode].get_or_init(|| *previous);
        onnx.op_register.insert("MatMulNBits", [build_0, build_1, build_2, build_3, build_4][mode]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::q8_block::VARIANTS;
    use crate::quant::reference::{dequantize_q8_block, q8_block_round_trip, quantize_q8_block};

    /// Every kernel variant, f32, 16-bit and int8 activations.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn kernel_matches_dequantize_then_matmul() {
        let (n, k, m) = (5, 96, 3);
        let (w, x) = crate::cpu::rows::test_data(n, k, m, 0.0);
        let q = quantize_q8_block(&w, n, k);
        let deq = dequantize_q8_block(&q);
        let packed = Arc::new(Tensor::from_shape(&[q.q.len()], &q.q).unwrap());
        let mut mat = Q8BlockMatrix::new(n, k, packed, Arc::new(tract_ndarray::arr1(&q.scales).into_tensor()), None).unwrap();
        let mut q16s: Vec<Vec<f32>> = vec![];
        for (v, acts) in VARIANTS.iter().flat_map(|v| [Activations::Float, Activations::Int16, Activations::Int8].map(|a| (v, a))) {
            mat.kernels = &v.kernels;
            let xr = match acts {
                Activations::Float => x.clone(),
                Activations::Int16 => crate::quant::reference::block_round_trip(&x, k, 32767.0),
                Activations::Int8 => q8_block_round_trip(&x, k),
            };
            let mut out = vec![0f32; m * n];
            mat.matmul(&x, &mut out, acts).unwrap();
            if acts == Activations::Int16 {
                q16s.push(out.clone());
            }
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = (0..k).map(|i| xr[r * k + i] * deq[c * k + i]).sum();
                    assert!((out[r * n + c] - want).abs() < 1e-3, "{} {acts:?} [{r}][{c}] {} vs {want}", v.name, out[r * n + c]);
                }
            }
        }
        assert!(q16s.windows(2).all(|w| w[0] == w[1]), "the 16-bit variants give different floats");
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn zero_points_other_than_128_are_honoured() {
        let (n, k) = (2, 64);
        let q: Vec<u8> = (0..n * k).map(|i| (i * 37 % 256) as u8).collect();
        let zp = [100u8, 128, 140, 7];
        let scales = [0.5f32, 0.25, 0.125, 1.0];
        let x: Vec<f32> = (0..k).map(|i| i as f32 / 10.0 - 3.0).collect();
        let mut mat = Q8BlockMatrix::new(n, k, Arc::new(Tensor::from_shape(&[n * k], &q).unwrap()), Arc::new(tract_ndarray::arr1(&scales).into_tensor()), Some(&zp)).unwrap();
        for v in VARIANTS {
            mat.kernels = &v.kernels;
            let mut out = vec![0f32; n];
            mat.matmul(&x, &mut out, Activations::Float).unwrap();
            for c in 0..n {
                let want: f32 = (0..k).map(|i| (q[c * k + i] as f32 - zp[c * 2 + i / 32] as f32) * scales[c * 2 + i / 32] * x[i]).sum();
                assert!((out[c] - want).abs() < 1e-3, "{}: {} vs {want}", v.name, out[c]);
            }
        }
    }
}
