//! 4-bit `MatMulNBits` with float zero points (`zero_points` of the activations' type, as
//! onnxruntime allows): `w = (q - zf) * s = q * s + min`, llama.cpp Q4_1's form
//! ([`crate::quant::Q4MinWeight`]). tract 0.23.9 reads only uint8 zero points.
//!
//! Computed as the symmetric int4 kernel ([`Q4Matrix`], zero point 8) plus a per-block term:
//! `(q - zf) * s = (q - 8) * s + (8 - zf) * s`, so `y = y8 + sum_b c[n][b] * X[m][b]` with
//! `c = (8 - zf) * s` and `X` the block sums of the activations (rounded to int8 when the
//! product rounds them). The packed nibbles stay the graph's tensor (shared with a tied
//! embedding's `Gather`).

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::q4_matmul::{Q4Matrix, BLOCK};

/// The weights: the nibbles as a symmetric [`Q4Matrix`] and the zero-point term per block.
#[derive(Debug)]
pub struct Q4MinMatrix {
    pub q4: Q4Matrix,
    /// `[n][k / 32]`: `(8 - zf) * s`.
    pub correction: Vec<f32>,
}

impl Q4MinMatrix {
    pub fn new(n: usize, k: usize, packed: Arc<Tensor>, scales: Arc<Tensor>, zero_points: &Tensor) -> TractResult<Self> {
        let zf = zero_points.cast_to::<f32>()?;
        let zf: Vec<f32> = zf.to_plain_array_view::<f32>()?.iter().copied().collect();
        let q4 = Q4Matrix::new(n, k, packed, scales, None)?;
        let nb = k / BLOCK;
        ensure!(zf.len() == n * nb, "zero_points has {} values, expected {}", zf.len(), n * nb);
        let s = q4.scales.cast_to::<f32>()?;
        let s = s.to_plain_array_view::<f32>()?;
        let correction = zf.iter().zip(s.iter()).map(|(z, s)| (8.0 - z) * s).collect();
        Ok(Q4MinMatrix { q4, correction })
    }

    pub fn matmul(&self, x: &[f32], out: &mut [f32], int8_activations: bool) -> TractResult<()> {
        let (k, n, nb) = (self.q4.k, self.q4.n, self.q4.k / BLOCK);
        // The zero-point term takes the block sums of the activations the product used: with
        // int8 activations those of the rounded ones (`scale * sum(q)`), as onnxruntime's int8
        // compute and the reference do; unrounded sums there were the 0.24 logit error.
        let sums: Vec<f32> = if int8_activations {
            self.q4.matmul_q8(x, out)?;
            super::q4_matmul::quantize_activations(x, k).scaled_sums
        } else {
            self.q4.matmul(x, out)?;
            x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
        };
        for (r, row) in out.chunks_exact_mut(n).enumerate() {
            let xs = &sums[r * nb..(r + 1) * nb];
            for (y, c) in row.iter_mut().zip(self.correction.chunks_exact(nb)) {
                *y += c.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        debug_assert_eq!(x.len() % k, 0);
        Ok(())
    }
}

/// The typed op: `[.., K] f32 -> [.., N] f32`.
pub type Q4MinMatMul = super::rows::FloatRowsOp<Q4MinMatrix>;

impl super::rows::FloatRows for Q4MinMatrix {
    const OP: &'static str = "EdgeLlmQ4MinMatMul";
    fn dims(&self) -> (usize, usize) {
        (self.q4.k, self.q4.n)
    }
    fn run(&self, x: &[f32], out: &mut [f32], int8_activations: bool) -> TractResult<()> {
        self.matmul(x, out, int8_activations)
    }
}

/// ONNX-side expansion: reads the constant weights and wires [`Q4MinMatMul`].
#[derive(Debug, Clone)]
pub(super) struct MatMulNBitsQ4Min {
    pub k: usize,
    pub n: usize,
    pub int8_activations: bool,
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
        let zero_points: Arc<Tensor> = konst(3, "zero_points")?;
        let w = Q4MinMatrix::new(self.n, self.k, konst(1, "B")?, konst(2, "scales")?, &zero_points)?;
        let x = if model.outlet_fact(inputs[0])?.datum_type == f32::datum_type() {
            inputs[0]
        } else {
            model.wire_node(format!("{prefix}.cast"), tract_onnx::tract_core::ops::cast::cast(f32::datum_type()), &[inputs[0]])?[0]
        };
        model.wire_node(prefix, Q4MinMatMul { w: Arc::new(w), int8_activations: self.int8_activations }, &[x])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::reference::{dequantize_q4_min, q8_block_round_trip, quantize_q4_min};

    /// Every variant of the int4 kernels it runs on (`cpu::kernels::q4`), f32 and int8 activations.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn kernel_matches_dequantize_then_matmul() {
        let (n, k, m) = (5, 96, 3);
        let (w, x) = crate::cpu::rows::test_data(n, k, m, 0.3);
        let q = quantize_q4_min(&w, n, k, 32, None);
        let deq = dequantize_q4_min(&q);
        let t = |v: &[f32]| Arc::new(Tensor::from_shape(&[v.len()], v).unwrap());
        let packed = Arc::new(Tensor::from_shape(&[q.packed.len()], &q.packed).unwrap());
        let mut mat = Q4MinMatrix::new(n, k, packed, t(&q.scales), &t(&q.zero_points)).unwrap();
        for (v, int8) in crate::cpu::kernels::q4::VARIANTS.iter().flat_map(|v| [(v, false), (v, true)]) {
            mat.q4.kernels = &v.kernels;
            let mut out = vec![0f32; m * n];
            mat.matmul(&x, &mut out, int8).unwrap();
            // With int8 activations both terms see the rounded x (the reference's int8 compute).
            let xr = if int8 { q8_block_round_trip(&x, k) } else { x.clone() };
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = (0..k).map(|i| xr[r * k + i] * deq[c * k + i]).sum();
                    assert!((out[r * n + c] - want).abs() < 1e-3, "{} int8={int8} [{r}][{c}] {} vs {want}", v.name, out[r * n + c]);
                }
            }
        }
    }
}
