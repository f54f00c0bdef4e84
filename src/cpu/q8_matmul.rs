//! `MatMulInteger` with a constant 2-D weight as a tract op with our own kernel.
//!
//! Why: tract 0.23.9 lowers `MatMulInteger` to a quantized einsum whose i32 GEMV has no SIMD
//! kernel on wasm32 and re-packs per call (measured: SmolLM2-135M int8 decodes at ~1 tok/s
//! natively). This op keeps `MatMulInteger`'s exact semantics — an i32 result the graph then
//! casts and scales — and only changes how it is computed.
//!
//! Math: `y[m][n] = sum_k (a[m][k] - za) * (b[k][n] - zb[n])`. The weight is stored transposed
//! as i8 `w[n][k] = b[k][n] - o` (`o` = 128 for u8 weights, 0 for i8) so that it always fits a
//! byte, and `y[m][n] = sum_k a'[m][k] * w[n][k] + (o - zb[n]) * sum_k a'[m][k]` with
//! `a' = a - za` (i16): exact in i32 for K < 2^15.

use std::ops::Range;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::kernels::q8::Q8;

/// A constant `MatMulInteger` weight, transposed and offset to i8.
#[derive(Debug)]
pub struct Q8Matrix {
    pub n: usize,
    pub k: usize,
    /// `[n][k]` i8: `b[k][n] - offset`. Shared with the graph's constant when the weight was
    /// stored transposed as it was loaded ([`transposed_weight`]), so never held twice.
    w: Arc<Tensor>,
    /// `offset - zb[n]` per output column.
    pub correction: Vec<i32>,
    /// The kernel variant ([`super::kernels::q8::best`] unless a test picks another).
    pub kernels: &'static Q8,
}

/// `B` (`[k][n]`, read a row at a time by `row(kk, dst)`) as the `[n][k]` i8 matrix the kernel
/// reads: `b - 128` for u8, `b` for i8. Nothing the size of `B` is allocated but the result.
pub fn transposed_weight(k: usize, n: usize, is_u8: bool, mut row: impl FnMut(usize, &mut [u8])) -> TractResult<Tensor> {
    let mut t = Tensor::zero::<i8>(&[n, k])?;
    // SAFETY: `t` is an i8 tensor.
    let w = unsafe { t.as_slice_mut_unchecked::<i8>() };
    let mut buf = vec![0u8; n];
    let flip = if is_u8 { 0x80 } else { 0 };
    for kk in 0..k {
        row(kk, &mut buf);
        for (c, v) in buf.iter().enumerate() {
            // u8 - 128 is the top bit flipped; i8 keeps its bits.
            w[c * k + kk] = (*v ^ flip) as i8;
        }
    }
    Ok(t)
}

impl Q8Matrix {
    /// The kernel's `[n][k]` i8 weights.
    pub fn w(&self) -> &[i8] {
        // SAFETY: `from_transposed` checked that `w` is an i8 tensor.
        unsafe { self.w.as_slice_unchecked::<i8>() }
    }

    /// From a weight already in the kernel's layout ([`transposed_weight`]; `offset` 128 if
    /// it was u8, 0 if i8) and `B`'s zero point in `B`'s original type.
    pub fn from_transposed(w: Arc<Tensor>, offset: i32, zero_point: Option<&Tensor>) -> TractResult<Self> {
        ensure!(w.rank() == 2 && w.datum_type() == DatumType::I8, "a transposed weight must be 2-D i8, got {:?} {:?}", w.datum_type(), w.shape());
        let (n, k) = (w.shape()[0], w.shape()[1]);
        ensure!(k < 1 << 15, "K={k} too large for i32 accumulation");
        let zb = zero_points(zero_point, if offset == 128 { DatumType::U8 } else { DatumType::I8 }, n)?;
        Ok(Q8Matrix { n, k, w, correction: zb.iter().map(|z| offset - z).collect(), kernels: super::kernels::q8::best() })
    }

    /// From `MatMulInteger`'s `B` (`[k][n]`, i8 or u8) and its zero point (scalar or `[n]`).
    pub fn new(b: &Tensor, zero_point: Option<&Tensor>) -> TractResult<Self> {
        ensure!(b.rank() == 2, "B must be 2-D, got {:?}", b.shape());
        let (k, n) = (b.shape()[0], b.shape()[1]);
        let offset = match b.datum_type() {
            DatumType::I8 => 0,
            DatumType::U8 => 128,
            dt => bail!("B must be int8 or uint8, got {dt:?}"),
        };
        let bytes = b.as_bytes();
        let w = transposed_weight(k, n, offset == 128, |kk, dst| dst.copy_from_slice(&bytes[kk * n..(kk + 1) * n]))?;
        Self::from_transposed(Arc::new(w), offset, zero_point)
    }

    /// `out[r * ld + (col - cols.start)] = y[r][col]` for `a` = `m` rows of `a - za` (`[m][k]`).
    pub fn matmul(&self, a: &[i16], cols: Range<usize>, out: &mut [i32], ld: usize) -> TractResult<()> {
        let k = self.k;
        ensure!(a.len() % k.max(1) == 0, "activations are not rows of K={k}");
        ensure!(cols.end <= self.n, "columns {cols:?} outside N={}", self.n);
        let m = if k == 0 { 0 } else { a.len() / k };
        ensure!(m == 0 || out.len() >= (m - 1) * ld + cols.len(), "output too small");
        let sums: Vec<i32> = a.chunks_exact(k.max(1)).map(|r| r.iter().map(|v| *v as i32).sum()).collect();
        let weights = self.w();
        for col in cols.clone() {
            let w = &weights[col * k..(col + 1) * k];
            let corr = self.correction[col];
            let mut r = 0;
            while r < m {
                let x = |i: usize| &a[(r + i) * k..(r + i + 1) * k];
                if r + 4 <= m {
                    let dots = (self.kernels.dot_rows4)(w, [x(0), x(1), x(2), x(3)]);
                    for (i, d) in dots.iter().enumerate() {
                        out[(r + i) * ld + col - cols.start] = d + corr * sums[r + i];
                    }
                    r += 4;
                } else {
                    out[r * ld + col - cols.start] = (self.kernels.dot_row)(w, x(0)) + corr * sums[r];
                    r += 1;
                }
            }
        }
        Ok(())
    }
}

/// The `MatMulInteger` weights this op will claim, by initializer name: `(k, n, is_u8)`. Each
/// is stored transposed as it is loaded ([`transposed_weight`]), so the graph's constant is the
/// kernel's matrix: the weights are never held twice, not even while the graph is optimized.
/// Only a 2-D u8/i8 initializer used by that one node alone, with a scalar or per-column zero
/// point, qualifies.
pub(crate) fn weights_to_transpose(graph: &tract_onnx::pb::GraphProto) -> std::collections::HashMap<String, (usize, usize, bool)> {
    use std::collections::HashMap;
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for name in graph.node.iter().flat_map(|n| n.input.iter()).chain(graph.output.iter().map(|o| &o.name)) {
        *uses.entry(name.as_str()).or_default() += 1;
    }
    let init = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let mut out = HashMap::new();
    for node in graph.node.iter().filter(|n| n.op_type == "MatMulInteger" && (n.domain.is_empty() || n.domain == "ai.onnx")) {
        let Some(b) = node.input.get(1).and_then(|b| init(b)) else { continue };
        let is_u8 = match b.data_type {
            2 => true,  // UINT8
            3 => false, // INT8
            _ => continue,
        };
        let zp_ok = node.input.get(3).filter(|z| !z.is_empty()).is_none_or(|z| init(z).is_some_and(|t| t.dims.len() <= 1));
        if b.dims.len() == 2 && b.dims.iter().all(|d| *d > 0) && zp_ok && uses.get(b.name.as_str()) == Some(&1) {
            out.insert(b.name.clone(), (b.dims[0] as usize, b.dims[1] as usize, is_u8));
        }
    }
    out
}

/// `B`'s zero point (scalar or `[n]`, of type `dt`) as one value per column.
fn zero_points(zero_point: Option<&Tensor>, dt: DatumType, n: usize) -> TractResult<Vec<i32>> {
    let Some(z) = zero_point else { return Ok(vec![0; n]) };
    ensure!(z.datum_type() == dt, "B's zero point must have B's type ({dt:?}), got {:?}", z.datum_type());
    let z: Vec<i32> = match dt {
        DatumType::I8 => z.to_plain_array_view::<i8>()?.iter().map(|v| *v as i32).collect(),
        _ => z.to_plain_array_view::<u8>()?.iter().map(|v| *v as i32).collect(),
    };
    match z.len() {
        1 => Ok(vec![z[0]; n]),
        len if len == n => Ok(z),
        len => bail!("B's zero point has {len} values, expected 1 or {n}"),
    }
}

/// The typed op: `A [.., K]` (u8 or i8) and its scalar zero point → `[.., N]` i32.
#[derive(Debug, Clone)]
pub struct Q8MatMul {
    pub w: Arc<Q8Matrix>,
}

impl PartialEq for Q8MatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.w, &other.w)
    }
}
impl Eq for Q8MatMul {}

impl Op for Q8MatMul {
    fn name(&self) -> StaticName {
        "EdgeLlmQ8MatMul".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("N={} K={}", self.w.n, self.w.k)])
    }
    op_as_typed_op!();
}

/// `a - za` as i16 for u8 / i8 `a`.
fn centered(a: &Tensor, za: &Tensor) -> TractResult<Vec<i16>> {
    ensure!(za.len() == 1, "A's zero point must be a scalar, got shape {:?}", za.shape());
    Ok(match a.datum_type() {
        DatumType::U8 => {
            let z = za.cast_to::<u8>()?.to_plain_array_view::<u8>()?.iter().next().copied().unwrap_or(0) as i16;
            a.to_plain_array_view::<u8>()?.iter().map(|v| *v as i16 - z).collect()
        }
        DatumType::I8 => {
            let z = za.cast_to::<i8>()?.to_plain_array_view::<i8>()?.iter().next().copied().unwrap_or(0) as i16;
            a.to_plain_array_view::<i8>()?.iter().map(|v| *v as i16 - z).collect()
        }
        dt => bail!("A must be int8 or uint8, got {dt:?}"),
    })
}

impl EvalOp for Q8MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, za) = args_2!(inputs);
        let mut shape: TVec<usize> = a.shape().into();
        let last = shape.len() - 1;
        ensure!(shape[last] == self.w.k, "A has {} columns, B has {} rows", shape[last], self.w.k);
        shape[last] = self.w.n;
        let x = centered(&a, &za)?;
        let mut out = vec![0i32; shape.iter().product()];
        let (n, m) = (self.w.n, x.len() / self.w.k);
        super::threads::split_columns(n, m, m * self.w.k, &mut out, |cols, out, ld| self.w.matmul(&x, cols, out, ld))?;
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for Q8MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(i32::fact(super::rows::output_shape(inputs[0], self.w.n))))
    }

    fn axes_mapping(&self, inputs: &[&TypedFact], outputs: &[&TypedFact]) -> TractResult<AxesMapping> {
        super::rows::axes_mapping(inputs, outputs)
    }

    as_op!();
}

/// ONNX-side expansion for a `MatMulInteger` whose `B` (and zero point) are initializers.
#[derive(Debug, Clone)]
struct MatMulIntegerConst {
    a_zero_point: Option<usize>,
    b_zero_point: Option<usize>,
    /// `B` was stored transposed as it was loaded: `Some(offset)` (128 from u8, 0 from i8).
    b_transposed: Option<i32>,
}

impl Expansion for MatMulIntegerConst {
    fn name(&self) -> StaticName {
        "MatMulInteger(edge-llm)".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, i32::datum_type())?;
        let n_axis = if self.b_transposed.is_some() { 0 } else { 1 };
        s.given(&inputs[1].shape, move |s, b| super::rows::rules(s, inputs, outputs, b[n_axis].clone()))
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize| -> TractResult<Arc<Tensor>> {
            model.outlet_fact(inputs[i])?.konst.clone().context("MatMulInteger: B and its zero point must be constants")
        };
        let b = konst(1)?;
        let zb = self.b_zero_point.map(konst).transpose()?;
        let w = match self.b_transposed {
            Some(offset) => Q8Matrix::from_transposed(b, offset, zb.as_deref())?,
            None => Q8Matrix::new(&b, zb.as_deref())?,
        };
        let za = match self.a_zero_point {
            Some(i) => inputs[i],
            None => model.add_const(format!("{prefix}.a_zero_point"), tensor0(0u8))?,
        };
        model.wire_node(prefix, Q8MatMul { w: Arc::new(w) }, &[inputs[0], za])
    }
}

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `MatMulInteger` builder, for the nodes this op does not cover.
static FALLBACK: std::sync::OnceLock<Builder> = std::sync::OnceLock::new();

fn build(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let present = |i: usize| node.input.get(i).filter(|s| !s.is_empty());
    // Claim the node only when B (and its zero point) are 2-D / small constants of the graph
    // (initializers, or weights detached while the graph is parsed).
    let rank = |name: &String| super::constant_rank(ctx.model.graph.as_ref(), name);
    let b_ok = present(1).and_then(rank) == Some(2);
    let zb_ok = present(3).is_none_or(|name| rank(name).is_some_and(|r| r <= 1));
    if !(b_ok && zb_ok) {
        let fallback = FALLBACK.get().context("tract's MatMulInteger builder was not registered")?;
        return fallback(ctx, node);
    }
    let b_transposed = match present(1).and_then(|b| super::detached::get(b)).map(|w| w.layout) {
        Some(super::detached::Layout::TransposedFromU8) => Some(128),
        Some(super::detached::Layout::TransposedFromI8) => Some(0),
        _ => None,
    };
    let op = MatMulIntegerConst {
        a_zero_point: present(2).map(|_| 2),
        b_zero_point: present(3).map(|_| if present(2).is_some() { 3 } else { 2 }),
        b_transposed,
    };
    Ok((expand(op), vec![]))
}

/// Route `MatMulInteger` nodes with a constant 2-D `B` to [`Q8MatMul`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    if let Some(original) = onnx.op_register.0.get("MatMulInteger") {
        FALLBACK.get_or_init(|| *original);
        onnx.op_register.insert("MatMulInteger", build);
    }
}
