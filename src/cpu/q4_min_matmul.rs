//! 4-bit `MatMulNBits` with float zero points (`zero_points` of the activations' type, as
//! onnxruntime allows): `w = (q - zf) * s = q * s + min`, llama.cpp Q4_1's form
//! ([`crate::quant::Q4MinWeight`]). tract 0.23.9 reads only uint8 zero points.
//!
//! Computed as the symmetric int4 kernel ([`Q4Matrix`], zero point 8) plus a per-block term:
//! `(q - zf) * s = (q - 8) * s + (8 - zf) * s`, so `y = y8 + sum_b c[n][b] * X[m][b]` with
//! `c = (8 - zf) * s` and `X` the block sums of the activations (rounded to int8 when the
//! product rounds them). The packed nibbles stay the graph's tensor (shared with a tied
//! embedding's `Gather`).

use std::ops::Range;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::q4_matmul::{Activations, BlockFloats, Q4Matrix, ZeroPointTerm, BLOCK};

/// The weights: the nibbles as a symmetric [`Q4Matrix`] and the zero-point term per block.
#[derive(Debug)]
pub struct Q4MinMatrix {
    pub q4: Q4Matrix,
    /// `[n][k / 32]`: f32 `(8 - zf) * s` (the graph's tensor when the loader computed it in place
    /// of the zero points, [`zero_point_terms_in_place`]), or, with f16 scales and zero points (a
    /// compact file's, kept so: issue #16), the f16 zero points themselves, the term computed a
    /// row at a time from them ([`ZeroPointTerm`]).
    pub correction: Arc<Tensor>,
}

/// The node attribute that says a 4-bit float-zero-point `MatMulNBits`' input 3 already holds
/// `(8 - zf) * s` (set by [`zero_point_terms_in_place`] on the loader's own copy of the graph,
/// never in a file).
pub const ZERO_POINT_TERM_ATTR: &str = "edge_llm_zero_point_term";

impl Q4MinMatrix {
    /// From the graph's tensors. f16 zero points beside f16 scales stay as they are; otherwise
    /// the term is computed here, in f32.
    pub fn new(n: usize, k: usize, packed: Arc<Tensor>, scales: Arc<Tensor>, zero_points: Arc<Tensor>) -> TractResult<Self> {
        let q4 = Q4Matrix::new(n, k, packed, scales, None)?;
        ensure!(zero_points.len() == q4.scales.len(), "zero_points has {} values, expected {}", zero_points.len(), q4.scales.len());
        if zero_points.datum_type() == f16::datum_type() && q4.scales.datum_type() == f16::datum_type() {
            return Ok(Q4MinMatrix { q4, correction: zero_points });
        }
        let zf = zero_points.cast_to::<f32>()?;
        let zf = zf.to_plain_array_view::<f32>()?;
        let s = q4.scales()?;
        let correction: tract_ndarray::Array1<f32> = zf.iter().enumerate().map(|(i, z)| (8.0 - z) * s.get(i)).collect();
        let correction = Arc::new(correction.into_tensor());
        Ok(Q4MinMatrix { q4, correction })
    }

    /// From the zero-point term `(8 - zf) * s` itself (f32, `[n][k / 32]` values), shared.
    pub fn from_term(n: usize, k: usize, packed: Arc<Tensor>, scales: Arc<Tensor>, term: Arc<Tensor>) -> TractResult<Self> {
        let q4 = Q4Matrix::new(n, k, packed, scales, None)?;
        ensure!(term.datum_type() == f32::datum_type(), "the zero-point term must be f32, got {:?}", term.datum_type());
        ensure!(term.len() == q4.scales.len(), "the zero-point term has {} values, expected {}", term.len(), q4.scales.len());
        ensure!(term.to_plain_array_view::<f32>()?.as_slice().is_some(), "the zero-point term must be contiguous");
        Ok(Q4MinMatrix { q4, correction: term })
    }

    /// The term as the kernels take it.
    pub fn term(&self) -> TractResult<ZeroPointTerm<'_>> {
        Ok(match BlockFloats::of(&self.correction)? {
            BlockFloats::F32(t) => ZeroPointTerm::Term(t),
            BlockFloats::F16(z) => ZeroPointTerm::ZeroPoints(z),
        })
    }

    pub fn matmul(&self, x: &[f32], out: &mut [f32], activations: Activations) -> TractResult<()> {
        debug_assert_eq!(x.len() % self.q4.k, 0);
        let term = Some(self.term()?);
        match activations {
            Activations::Int8 => self.q4.matmul_int_with_term::<i8>(x, out, term),
            Activations::Int16 => self.q4.matmul_int_with_term::<i16>(x, out, term),
            Activations::Float => self.q4.matmul_with_term(x, out, term),
        }
    }
}

/// `out[r * ld + (j - cols.start)] += sum_b term[j][b] * sums[r][b]` for the columns `j` in
/// `cols`, each sum in block order from -0.0 (as `Iterator::sum` does, so every output is the same
/// float as [`add_zero_point_term_rows`]'s), four activation rows at a time in SIMD lanes
/// ([`super::q4_matmul::dot4_in_lanes`]). `scales`: the weight's, for a term computed per row.
///
/// `quads`: `sums` regrouped ([`super::q4_matmul::sums_in_quads`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn add_zero_point_term(out: &mut [f32], ld: usize, cols: Range<usize>, term: ZeroPointTerm<'_>, scales: BlockFloats<'_>, sums: &[f32], quads: &[f32], nb: usize) {
    let m = sums.len() / nb.max(1);
    let r0 = m / 4 * 4;
    let (mut s_row, mut t_row) = (vec![0f32; nb], vec![0f32; nb]);
    for j in cols.clone() {
        let t = term.row(j, scales.row(j, nb, &mut s_row), &mut t_row);
        for (q, quad) in quads.chunks_exact((nb * 4).max(1)).enumerate() {
            for (i, a) in super::q4_matmul::dot4_in_lanes(t, quad).iter().enumerate() {
                out[(q * 4 + i) * ld + j - cols.start] += a;
            }
        }
        let at = (r0 * ld).min(out.len());
        add_zero_point_term_rows(&mut out[at..], ld, j - cols.start, t, &sums[r0 * nb..], nb);
    }
}

/// [`add_zero_point_term`] for one column (`t` its term, `c` its place in `out`'s rows), one
/// activation row at a time.
fn add_zero_point_term_rows(out: &mut [f32], ld: usize, c: usize, t: &[f32], sums: &[f32], nb: usize) {
    for (r, xs) in sums.chunks_exact(nb).enumerate() {
        out[r * ld + c] += t.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
    }
}

/// The typed op: `[.., K] f32 -> [.., N] f32`.
pub type Q4MinMatMul = super::rows::FloatRowsOp<Q4MinMatrix>;

impl super::rows::FloatRows for Q4MinMatrix {
    const OP: &'static str = "EdgeLlmQ4MinMatMul";
    fn dims(&self) -> (usize, usize) {
        (self.q4.k, self.q4.n)
    }
    fn run(&self, x: &[f32], out: &mut [f32], activations: Activations) -> TractResult<()> {
        self.matmul(x, out, activations)
    }
}

/// ONNX-side expansion: reads the constant weights and wires [`Q4MinMatMul`].
#[derive(Debug, Clone)]
pub(super) struct MatMulNBitsQ4Min {
    pub k: usize,
    pub n: usize,
    pub activations: Activations,
    /// Input 3 holds `(8 - zf) * s`, not the zero points ([`ZERO_POINT_TERM_ATTR`]).
    pub zero_point_term: bool,
}

impl Expansion for MatMulNBitsQ4Min {
    fn name(&self) -> StaticName {
        "MatMulNBits4FloatZp(edge-llm)".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        super::rows::float_rules(s, inputs, outputs, self.n)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize, what: &str| super::rows::weight(model, inputs, i, what);
        let w = if self.zero_point_term {
            Q4MinMatrix::from_term(self.n, self.k, konst(1, "B")?, konst(2, "scales")?, konst(3, "zero_points")?)?
        } else {
            Q4MinMatrix::new(self.n, self.k, konst(1, "B")?, konst(2, "scales")?, konst(3, "zero_points")?)?
        };
        let x = if model.outlet_fact(inputs[0])?.datum_type == f32::datum_type() {
            inputs[0]
        } else {
            model.wire_node(format!("{prefix}.cast"), tract_onnx::tract_core::ops::cast::cast(f32::datum_type()), &[inputs[0]])?[0]
        };
        model.wire_node(prefix, Q4MinMatMul { w: Arc::new(w), activations: self.activations }, &[x])
    }
}

/// How many times each value is read: by a node's inputs, or as a graph output.
fn reader_counts(graph: &tract_onnx::pb::GraphProto) -> std::collections::HashMap<&str, usize> {
    let mut readers = std::collections::HashMap::new();
    for name in graph.node.iter().flat_map(|n| &n.input).chain(graph.output.iter().map(|o| &o.name)) {
        *readers.entry(name.as_str()).or_default() += 1;
    }
    readers
}

/// A 4-bit block-32 `MatMulNBits` with float zero points (input 3, no `g_idx` or bias): the
/// nodes [`Q4MinMatrix`] runs.
fn is_float_zero_point_q4(node: &tract_onnx::pb::NodeProto) -> bool {
    let attr_i = |name: &str, default: i64| node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i);
    let present = |i: usize| node.input.get(i).is_some_and(|s| !s.is_empty());
    node.op_type == "MatMulNBits" && attr_i("bits", 4) == 4 && attr_i("block_size", 0) == BLOCK as i64 && present(3) && !present(4) && !present(5)
}

/// For each 4-bit block-32 `MatMulNBits` with float zero points whose scales and zero points
/// are f16 initializers, each read only through its own widening `Cast` that only this node
/// reads (edge-llm's compact int4 recipe, GGUF Q4_1 imports): the node reads the f16
/// initializers themselves and the `Cast`s go, so the loader keeps them f16 and [`Q4MinMatrix`]
/// widens a row at a time as it computes ([`ZeroPointTerm::ZeroPoints`]): 4 bytes per block
/// instead of 8 for f32 scales and term (SmolLM2 int4: 13 MB, issue #16), the same values.
/// Returns how many nodes now read f16.
#[inline(never)]
pub(super) fn read_f16_params_directly(graph: &mut tract_onnx::pb::GraphProto) -> usize {
    use std::collections::HashMap;
    use tract_onnx::pb::tensor_proto::DataType;
    // A subgraph (If, Loop, Scan) may read an outer value without naming it as an input.
    if graph.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())) {
        return 0;
    }
    let f16_inits: std::collections::HashSet<&str> =
        graph.initializer.iter().filter(|i| i.data_type == DataType::Float16 as i32).map(|i| i.name.as_str()).collect();
    let readers = reader_counts(graph);
    // Widening casts of an f16 initializer read by nothing else: output -> (node index, initializer).
    let widening: HashMap<&str, (usize, &str)> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.op_type == "Cast"
                && n.domain.is_empty()
                && n.attribute.iter().any(|a| a.name == "to" && a.i == DataType::Float as i64)
                && n.input.len() == 1
                && n.output.len() == 1
                && f16_inits.contains(n.input[0].as_str())
                && readers.get(n.input[0].as_str()) == Some(&1)
                && readers.get(n.output[0].as_str()) == Some(&1)
        })
        .map(|(i, n)| (n.output[0].as_str(), (i, n.input[0].as_str())))
        .collect();
    let mut rewired = Vec::new();
    for (ix, node) in graph.node.iter().enumerate() {
        if !is_float_zero_point_q4(node) {
            continue;
        }
        if let (Some(&(cs, s)), Some(&(cz, z))) = (widening.get(node.input[2].as_str()), widening.get(node.input[3].as_str())) {
            if cs != cz {
                rewired.push((ix, cs, s.to_string(), cz, z.to_string()));
            }
        }
    }
    let mut dropped = std::collections::HashSet::new();
    for (ix, cs, s, cz, z) in &rewired {
        graph.node[*ix].input[2] = s.clone();
        graph.node[*ix].input[3] = z.clone();
        dropped.extend([*cs, *cz]);
    }
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        !dropped.contains(&(i - 1))
    });
    rewired.len()
}

/// For each 4-bit `MatMulNBits` with float zero points whose scales and zero points are
/// detached f32 weights (through an `Identity` the loader left of a widening `Cast`) read by that
/// node alone: overwrite the zero points with the kernel's term `(8 - zf) * s` and mark the node
/// ([`ZERO_POINT_TERM_ATTR`]). [`Q4MinMatrix`] then shares that tensor instead of computing a
/// second one beside it (SmolLM2 int4: 13.3 MB less at the load's peak, issue #16). Same f32
/// arithmetic as [`Q4MinMatrix::new`], so the same values. `tensors[i]` is initializer `i`'s.
#[inline(never)]
pub(super) fn zero_point_terms_in_place(graph: &mut tract_onnx::pb::GraphProto, tensors: &mut [Option<Tensor>]) -> crate::Result<()> {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    let readers = reader_counts(graph);
    let identity_of: HashMap<&str, &str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Identity" && n.input.len() == 1 && n.output.len() == 1)
        .map(|n| (n.output[0].as_str(), n.input[0].as_str()))
        .collect();
    // The initializer behind `name`: itself, or the input of the Identity that outputs it.
    fn source<'a>(identity_of: &HashMap<&'a str, &'a str>, name: &'a str) -> &'a str {
        identity_of.get(name).copied().unwrap_or(name)
    }
    // That initializer, if `name` is all that reads it and one node all that reads `name`.
    let sole_source = |name: &str| -> Option<usize> {
        let src = source(&identity_of, name);
        (readers.get(name) == Some(&1) && readers.get(src) == Some(&1)).then(|| index.get(src).copied()).flatten()
    };
    let mut marked = Vec::new();
    for (ix, node) in graph.node.iter().enumerate() {
        if !is_float_zero_point_q4(node) {
            continue;
        }
        let (Some(zi), Some(&si)) = (sole_source(&node.input[3]), index.get(source(&identity_of, &node.input[2]))) else {
            continue;
        };
        let f32_len = |t: &Option<Tensor>| t.as_ref().filter(|t| t.datum_type() == DatumType::F32).map(|t| t.len());
        if zi == si || f32_len(&tensors[zi]).is_none() || f32_len(&tensors[zi]) != f32_len(&tensors[si]) {
            continue;
        }
        let mut zp = tensors[zi].take().expect("checked above");
        {
            let err = |e: TractError| crate::Error::InvalidModel(format!("{e:#}"));
            let s = tensors[si].as_ref().expect("checked above").to_plain_array_view::<f32>().map_err(err)?;
            let mut z = zp.to_plain_array_view_mut::<f32>().map_err(err)?;
            for (z, s) in z.iter_mut().zip(s.iter()) {
                *z = (8.0 - *z) * s;
            }
        }
        tensors[zi] = Some(zp);
        marked.push(ix);
    }
    for ix in marked {
        graph.node[ix].attribute.push(tract_onnx::pb::AttributeProto { name: ZERO_POINT_TERM_ATTR.into(), i: 1, r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32, ..Default::default() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::reference::{dequantize_q4_min, q8_block_round_trip, quantize_q4_min};

    /// Rows four at a time in lanes give the same floats as the one-row loop (signed zeros
    /// included), for row counts with and without leftovers.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn zero_point_term_in_lanes_is_the_row_loop_bit_for_bit() {
        let (n, nb) = (7, 18);
        // f16 scales and zero points (the term computed per row from them) and the f32 term
        // computed at load from the same values.
        let zf: Vec<half::f16> = (0..n * nb).map(|i| half::f16::from_f32((i * 37 % 29) as f32 * 0.55 - 0.3)).collect();
        let s16: Vec<half::f16> = (0..n * nb).map(|i| half::f16::from_f32(((i * 13 % 17) as f32 - 8.0) * 0.0123)).collect();
        let term: Vec<f32> = zf.iter().zip(&s16).map(|(z, s)| (8.0 - z.to_f32()) * s.to_f32()).collect();
        let s32: Vec<f32> = s16.iter().map(|s| s.to_f32()).collect();
        let bits = |v: &[half::f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();
        let (zf, s16) = (bits(&zf), bits(&s16));
        let terms = [
            (ZeroPointTerm::Term(&term), BlockFloats::F32(&s32)),
            (ZeroPointTerm::ZeroPoints(&zf), BlockFloats::F16(&s16)),
        ];
        for m in [1, 3, 4, 5, 8, 11] {
            let (_, sums) = crate::cpu::rows::test_data(n, nb, m, 0.3);
            let mut sums = sums;
            sums[0] = -0.0; // a -0.0 product in a row's sum
            let base: Vec<f32> = (0..m * n).map(|i| if i % 5 == 0 { -0.0 } else { i as f32 * 0.37 - 3.0 }).collect();
            // The plain loop: one row and one column at a time, summed in block order.
            let mut rows = base.clone();
            for r in 0..m {
                for j in 0..n {
                    rows[r * n + j] += term[j * nb..(j + 1) * nb].iter().zip(&sums[r * nb..(r + 1) * nb]).map(|(a, b)| a * b).sum::<f32>();
                }
            }
            let quads = crate::cpu::q4_matmul::sums_in_quads(&sums, m, nb);
            for (t, scales) in terms {
                let mut lanes = base.clone();
                add_zero_point_term(&mut lanes, n, 0..n, t, scales, &sums, &quads, nb);
                assert_eq!(lanes.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), rows.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "m={m} {t:?}");
                // Shares of columns, each in its own `[m][cols.len()]` block (a thread's), give the same.
                let mut shares = base.clone();
                for cols in [0..3, 3..n] {
                    let w = cols.len();
                    let mut local: Vec<f32> = (0..m).flat_map(|r| base[r * n + cols.start..r * n + cols.end].to_vec()).collect();
                    add_zero_point_term(&mut local, w, cols.clone(), t, scales, &sums, &quads, nb);
                    for r in 0..m {
                        shares[r * n + cols.start..r * n + cols.end].copy_from_slice(&local[r * w..(r + 1) * w]);
                    }
                }
                assert_eq!(shares.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), rows.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "m={m}, shares");
            }
        }
    }

    /// Every variant of the int4 kernels it runs on (`cpu::kernels::q4`), f32, 16-bit and int8
    /// activations, on one row (the GEMV) and three and six (the GEMM), with f32 scales and zero
    /// points (the term computed at load) and f16 ones (kept, the term computed per row).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn kernel_matches_dequantize_then_matmul() {
        use crate::quant::reference::block_round_trip;
        // K = 96 and 224 (three blocks, seven).
        for (m, f16s, k) in [1, 3, 6].into_iter().flat_map(|m| [(m, false, 96), (m, true, 96), (m, true, 224)]) {
            let n = 5;
            let (w, x) = crate::cpu::rows::test_data(n, k, m, 0.3);
            let mut q = quantize_q4_min(&w, n, k, 32, None);
            let t = |v: &[f32]| {
                if f16s {
                    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                    Arc::new(Tensor::from_shape(&[v.len()], &h).unwrap())
                } else {
                    Arc::new(Tensor::from_shape(&[v.len()], v).unwrap())
                }
            };
            let (scales, zero_points) = (t(&q.scales), t(&q.zero_points));
            if f16s {
                let widen = |t: &Tensor| t.cast_to::<f32>().unwrap().to_plain_array_view::<f32>().unwrap().iter().copied().collect();
                (q.scales, q.zero_points) = (widen(&scales), widen(&zero_points));
            }
            let deq = dequantize_q4_min(&q);
            let packed = Arc::new(Tensor::from_shape(&[q.packed.len()], &q.packed).unwrap());
            let mut mat = Q4MinMatrix::new(n, k, packed, scales, zero_points).unwrap();
            assert_eq!(mat.correction.datum_type() == f16::datum_type(), f16s, "f16 zero points are kept");
            for v in crate::cpu::kernels::q4::VARIANTS {
                for acts in [Activations::Float, Activations::Int16, Activations::Int8] {
                    mat.q4.kernels = &v.kernels;
                    let mut out = vec![0f32; m * n];
                    mat.matmul(&x, &mut out, acts).unwrap();
                    // With rounded activations both terms see the rounded x (onnxruntime's int8 compute).
                    let xr = match acts {
                        Activations::Float => x.clone(),
                        Activations::Int16 => block_round_trip(&x, k, 32767.0),
                        Activations::Int8 => q8_block_round_trip(&x, k),
                    };
                    for r in 0..m {
                        for c in 0..n {
                            let want: f32 = (0..k).map(|i| xr[r * k + i] * deq[c * k + i]).sum();
                            assert!((out[r * n + c] - want).abs() < 1e-3, "{} {acts:?} m={m} f16={f16s} [{r}][{c}] {} vs {want}", v.name, out[r * n + c]);
                        }
                    }
                }
            }
        }
    }
}
