//! `MatMulNBits` (4-bit, block 32) as a tract op with our own kernel.
//!
//! Why: tract 0.23.9 maps `MatMulNBits` onto its Q4_0 block-quant format, which has SIMD kernels
//! on x86/ARM but only the generic scalar kernel on wasm32 (profiled: ~40 % of a wasm decode step
//! in `tract_linalg::generic::mmm::kernel`). On wasm this op replaces it; natively tract's own
//! AVX kernels stay in charge unless asked otherwise.
//!
//! Math: `y[m][n] = sum_b s[n][b] * sum_j q[n][b][j] * x[m][32b + j] - sum_b s[n][b] z[n][b] X[m][b]`
//! with `X[m][b]` the block sums of `x`: the zero point leaves the inner loop. Exact in f32 up
//! to summation order; the plain reference is `quant::reference::dequantize_q4` + a matmul.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The only block size the kernel handles; others fall back to tract's implementation.
pub const BLOCK: usize = 32;

/// Weights of one `MatMulNBits` node, kept in their ONNX byte layout (block of 16 bytes: byte
/// `j` holds element `2j` low, `2j + 1` high).
#[derive(Debug)]
pub struct Q4Matrix {
    pub n: usize,
    pub k: usize,
    /// `[n][k / 32][16]`: the graph's own constant, shared rather than copied (the tied
    /// embedding gathers rows from the same tensor).
    pub packed: Arc<Tensor>,
    /// `[n][k / 32]`
    pub scales: Vec<f32>,
    /// `scale * zero_point` per block, `[n][k / 32]`.
    pub scaled_zeros: Vec<f32>,
}

impl Q4Matrix {
    /// From `MatMulNBits` tensors: `packed` `[n][nb][16]`, `scales` `[n * nb]`, zero points packed
    /// two per byte per row (`None`: 8).
    pub fn new(n: usize, k: usize, packed: Arc<Tensor>, scales: Vec<f32>, zero_points: Option<&[u8]>) -> TractResult<Self> {
        ensure!(k % BLOCK == 0, "K={k} is not a multiple of {BLOCK}");
        ensure!(packed.datum_type() == u8::datum_type(), "B must be uint8, got {:?}", packed.datum_type());
        let nb = k / BLOCK;
        ensure!(packed.len() == n * nb * BLOCK / 2, "B has {} bytes, expected {}", packed.len(), n * nb * BLOCK / 2);
        ensure!(packed.to_plain_array_view::<u8>()?.as_slice().is_some(), "B must be contiguous");
        ensure!(scales.len() == n * nb, "scales has {} values, expected {}", scales.len(), n * nb);
        let zb = nb.div_ceil(2);
        if let Some(z) = zero_points {
            ensure!(z.len() == n * zb, "zero_points has {} bytes, expected {}", z.len(), n * zb);
        }
        let scaled_zeros = (0..n * nb)
            .map(|i| {
                let (row, b) = (i / nb, i % nb);
                let zp = zero_points.map_or(8, |z| (z[row * zb + b / 2] >> (4 * (b % 2))) & 0x0f);
                zp as f32 * scales[i]
            })
            .collect();
        Ok(Q4Matrix { n, k, packed, scales, scaled_zeros })
    }

    /// `out[m][n] = x[m] · w[n]` for `m` rows of `x` (`[m][k]`).
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        let (k, nb) = (self.k, self.k / BLOCK);
        let m = x.len() / k;
        // Per activation row: even/odd de-interleaved blocks (so the unpacked low and high
        // nibbles line up with contiguous activations) and block sums.
        let mut xd = vec![0f32; m * k];
        let mut xs = vec![0f32; m * nb];
        for r in 0..m {
            for b in 0..nb {
                let src = &x[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                let dst = &mut xd[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                for j in 0..BLOCK / 2 {
                    dst[j] = src[2 * j];
                    dst[BLOCK / 2 + j] = src[2 * j + 1];
                }
                xs[r * nb + b] = src.iter().sum();
            }
        }
        self.drive(m, &xs, out, |w, s, r, tile| {
            if tile == 4 {
                kernel::dot_rows4(w, s, [0, 1, 2, 3].map(|i| &xd[(r + i) * k..(r + i + 1) * k]))
            } else {
                [kernel::dot_row(w, s, &xd[r * k..(r + 1) * k]), 0.0, 0.0, 0.0]
            }
        })
    }

    /// The loop both variants share: every weight row against the activation rows, four at a
    /// time while four remain (each unpacked weight block then serves four rows), minus the
    /// zero-point term `sum_b scale * zp * sums[r][b]`. `dot(w_row, scales_row, r, tile)`
    /// returns `tile` (4 or 1) dot products starting at activation row `r`.
    ///
    /// Output columns (weight rows) are split across the CPU threads ([`super::threads`]), for
    /// decode (m = 1) and prefill alike; each part fills its own `[m][cols]` block.
    fn drive(&self, m: usize, sums: &[f32], out: &mut [f32], dot: impl Fn(&[u8], &[f32], usize, usize) -> [f32; 4] + Sync) -> TractResult<()> {
        let view = self.packed.to_plain_array_view::<u8>()?;
        let packed = view.as_slice().context("B must be contiguous")?;
        let n = self.n;
        if super::threads::parts(n, m * self.k) == 1 {
            self.drive_cols(packed, 0..n, m, sums, out, &dot);
            return Ok(());
        }
        let parts = super::threads::map_ranges(n, m * self.k, |cols| {
            let mut local = vec![0f32; m * cols.len()];
            self.drive_cols(packed, cols, m, sums, &mut local, &dot);
            local
        });
        for (cols, local) in parts {
            let w = cols.len();
            for r in 0..m {
                out[r * n + cols.start..r * n + cols.end].copy_from_slice(&local[r * w..(r + 1) * w]);
            }
        }
        Ok(())
    }

    /// [`Self::drive`] over weight rows `cols` into `out` (`[m][cols.len()]`).
    fn drive_cols(
        &self,
        packed: &[u8],
        cols: std::ops::Range<usize>,
        m: usize,
        sums: &[f32],
        out: &mut [f32],
        dot: &impl Fn(&[u8], &[f32], usize, usize) -> [f32; 4],
    ) {
        let nb = self.k / BLOCK;
        let width = cols.len();
        for (c, row) in cols.enumerate() {
            let w = &packed[row * nb * BLOCK / 2..(row + 1) * nb * BLOCK / 2];
            let s = &self.scales[row * nb..(row + 1) * nb];
            let z = &self.scaled_zeros[row * nb..(row + 1) * nb];
            let mut r = 0;
            while r < m {
                let tile = if r + 4 <= m { 4 } else { 1 };
                let dots = dot(w, s, r, tile);
                for (i, d) in dots.iter().take(tile).enumerate() {
                    let corr: f32 = z.iter().zip(&sums[(r + i) * nb..(r + i + 1) * nb]).map(|(a, b)| a * b).sum();
                    out[(r + i) * width + c] = d - corr;
                }
                r += tile;
            }
        }
    }
}

/// Activations of `m` rows quantized per 32-block to int8 (`x ≈ q * scale`, scale = amax / 127),
/// de-interleaved like the weights' nibbles, with `scale * sum(q)` per block.
pub struct Q8Activations {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub scaled_sums: Vec<f32>,
}

/// Quantize activations as the int8-activation kernel sees them; `reference` uses the same
/// function to model it.
pub fn quantize_activations(x: &[f32], k: usize) -> Q8Activations {
    let (m, nb) = (x.len() / k, k / BLOCK);
    let mut out = Q8Activations { q: vec![0; m * k], scales: vec![0.0; m * nb], scaled_sums: vec![0.0; m * nb] };
    for (blk, src) in x.chunks_exact(BLOCK).enumerate() {
        let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let dst = &mut out.q[blk * BLOCK..(blk + 1) * BLOCK];
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            let (e, o) = ((src[2 * j] * inv).round() as i8, (src[2 * j + 1] * inv).round() as i8);
            dst[j] = e;
            dst[BLOCK / 2 + j] = o;
            sum += e as i32 + o as i32;
        }
        out.scales[blk] = scale;
        out.scaled_sums[blk] = scale * sum as f32;
    }
    out
}

impl Q4Matrix {
    /// [`Q4Matrix::matmul`] with activations quantized to int8 per 32-block and integer dot
    /// products (the llama.cpp q4_0 × q8_0 scheme): about twice the speed on wasm SIMD128, at
    /// the cost of activation rounding (relative error ~0.4 % per element).
    pub fn matmul_q8(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        let (k, nb) = (self.k, self.k / BLOCK);
        let m = x.len() / k;
        let a = quantize_activations(x, k);
        self.drive(m, &a.scaled_sums, out, |w, s, r, tile| {
            let q = |i: usize| &a.q[(r + i) * k..(r + i + 1) * k];
            let sx = |i: usize| &a.scales[(r + i) * nb..(r + i + 1) * nb];
            if tile == 4 {
                kernel::dot_rows4_q8(w, s, [0, 1, 2, 3].map(q), [0, 1, 2, 3].map(sx))
            } else {
                [kernel::dot_row_q8(w, s, q(0), sx(0)), 0.0, 0.0, 0.0]
            }
        })
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod kernel {
    use core::arch::wasm32::*;

    use super::BLOCK;

    /// `sum_b s[b] * sum_j q[b][j] * x[b][j]`, x de-interleaved per block.
    pub fn dot_row(w: &[u8], s: &[f32], x: &[f32]) -> f32 {
        let nb = s.len();
        assert!(w.len() >= nb * BLOCK / 2 && x.len() >= nb * BLOCK);
        let mask = u8x16_splat(0x0f);
        let mut acc = f32x4_splat(0.0);
        // SAFETY: every load reads inside `w` / `x`, whose lengths are asserted above.
        unsafe {
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            for b in 0..nb {
                let bytes = v128_load(wp.add(b * 16) as *const v128);
                let lo = v128_and(bytes, mask);
                let hi = u8x16_shr(bytes, 4);
                let xb = xp.add(b * BLOCK);
                let mut sum = f32x4_splat(0.0);
                for (half, q) in [(0usize, lo), (16, hi)] {
                    let a = u16x8_extend_low_u8x16(q);
                    let c = u16x8_extend_high_u8x16(q);
                    let parts = [
                        u32x4_extend_low_u16x8(a),
                        u32x4_extend_high_u16x8(a),
                        u32x4_extend_low_u16x8(c),
                        u32x4_extend_high_u16x8(c),
                    ];
                    for (i, p) in parts.into_iter().enumerate() {
                        let xv = v128_load(xb.add(half + 4 * i) as *const v128);
                        sum = f32x4_add(sum, f32x4_mul(f32x4_convert_u32x4(p), xv));
                    }
                }
                acc = f32x4_add(acc, f32x4_mul(sum, f32x4_splat(*s.get_unchecked(b))));
            }
        }
        hsum(acc)
    }

    fn hsum(v: v128) -> f32 {
        f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v) + f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v)
    }

    /// One block's integer dot product `sum q * x` as i32x4 partial sums. Products are at most
    /// 15 * 127, four summed per i16 lane before widening: no overflow.
    #[inline(always)]
    unsafe fn block_dot_q8(lo: v128, hi: v128, xp: *const i8) -> v128 {
        let xe = v128_load(xp as *const v128);
        let xo = v128_load(xp.add(16) as *const v128);
        let a = i16x8_add(i16x8_extmul_low_i8x16(lo, xe), i16x8_extmul_high_i8x16(lo, xe));
        let b = i16x8_add(i16x8_extmul_low_i8x16(hi, xo), i16x8_extmul_high_i8x16(hi, xo));
        i32x4_extadd_pairwise_i16x8(i16x8_add(a, b))
    }

    /// `sum_b sw[b] * sx[b] * sum_j q[b][j] * xq[b][j]`.
    pub fn dot_row_q8(w: &[u8], sw: &[f32], xq: &[i8], sx: &[f32]) -> f32 {
        let nb = sw.len();
        assert!(w.len() >= nb * BLOCK / 2 && xq.len() >= nb * BLOCK && sx.len() >= nb);
        let mask = u8x16_splat(0x0f);
        let mut acc = f32x4_splat(0.0);
        // SAFETY: loads stay inside `w` and `xq`, whose lengths are asserted above.
        unsafe {
            for b in 0..nb {
                let bytes = v128_load(w.as_ptr().add(b * 16) as *const v128);
                let d = block_dot_q8(v128_and(bytes, mask), u8x16_shr(bytes, 4), xq.as_ptr().add(b * BLOCK));
                let scale = f32x4_splat(*sw.get_unchecked(b) * *sx.get_unchecked(b));
                acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(d), scale));
            }
        }
        hsum(acc)
    }

    pub fn dot_rows4_q8(w: &[u8], sw: &[f32], xq: [&[i8]; 4], sx: [&[f32]; 4]) -> [f32; 4] {
        let nb = sw.len();
        assert!(w.len() >= nb * BLOCK / 2 && xq.iter().all(|r| r.len() >= nb * BLOCK) && sx.iter().all(|r| r.len() >= nb));
        let mask = u8x16_splat(0x0f);
        let mut acc = [f32x4_splat(0.0); 4];
        // SAFETY: loads stay inside `w` and `xq[i]`, whose lengths are asserted above.
        unsafe {
            for b in 0..nb {
                let bytes = v128_load(w.as_ptr().add(b * 16) as *const v128);
                let (lo, hi) = (v128_and(bytes, mask), u8x16_shr(bytes, 4));
                let swb = *sw.get_unchecked(b);
                for r in 0..4 {
                    let d = block_dot_q8(lo, hi, xq[r].as_ptr().add(b * BLOCK));
                    let scale = f32x4_splat(swb * *sx[r].get_unchecked(b));
                    acc[r] = f32x4_add(acc[r], f32x4_mul(f32x4_convert_i32x4(d), scale));
                }
            }
        }
        acc.map(hsum)
    }

    /// [`dot_row`] for four activation rows at once: each weight block is unpacked once.
    pub fn dot_rows4(w: &[u8], s: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
        let nb = s.len();
        assert!(w.len() >= nb * BLOCK / 2 && x.iter().all(|r| r.len() >= nb * BLOCK));
        let mask = u8x16_splat(0x0f);
        let mut acc = [f32x4_splat(0.0); 4];
        // SAFETY: every load reads inside `w` / `x[i]`, whose lengths are asserted above.
        unsafe {
            let wp = w.as_ptr();
            let xp = x.map(|r| r.as_ptr());
            for b in 0..nb {
                let bytes = v128_load(wp.add(b * 16) as *const v128);
                let mut q = [f32x4_splat(0.0); 8];
                for (h, nib) in [v128_and(bytes, mask), u8x16_shr(bytes, 4)].into_iter().enumerate() {
                    let a = u16x8_extend_low_u8x16(nib);
                    let c = u16x8_extend_high_u8x16(nib);
                    q[4 * h] = f32x4_convert_u32x4(u32x4_extend_low_u16x8(a));
                    q[4 * h + 1] = f32x4_convert_u32x4(u32x4_extend_high_u16x8(a));
                    q[4 * h + 2] = f32x4_convert_u32x4(u32x4_extend_low_u16x8(c));
                    q[4 * h + 3] = f32x4_convert_u32x4(u32x4_extend_high_u16x8(c));
                }
                let scale = f32x4_splat(*s.get_unchecked(b));
                for r in 0..4 {
                    let xb = xp[r].add(b * BLOCK);
                    let mut sum = f32x4_mul(q[0], v128_load(xb as *const v128));
                    for (i, qi) in q.iter().enumerate().skip(1) {
                        sum = f32x4_add(sum, f32x4_mul(*qi, v128_load(xb.add(4 * i) as *const v128)));
                    }
                    acc[r] = f32x4_add(acc[r], f32x4_mul(sum, scale));
                }
            }
        }
        acc.map(hsum)
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod kernel {
    use super::BLOCK;

    /// Portable twin of the wasm SIMD kernel.
    pub fn dot_row(w: &[u8], s: &[f32], x: &[f32]) -> f32 {
        let mut total = 0f32;
        for (b, scale) in s.iter().enumerate() {
            let bytes = &w[b * 16..(b + 1) * 16];
            let xb = &x[b * BLOCK..(b + 1) * BLOCK];
            let mut sum = 0f32;
            for (j, byte) in bytes.iter().enumerate() {
                sum += (byte & 0x0f) as f32 * xb[j] + (byte >> 4) as f32 * xb[BLOCK / 2 + j];
            }
            total += sum * scale;
        }
        total
    }

    pub fn dot_rows4(w: &[u8], s: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
        x.map(|r| dot_row(w, s, r))
    }

    pub fn dot_row_q8(w: &[u8], sw: &[f32], xq: &[i8], sx: &[f32]) -> f32 {
        let mut total = 0f32;
        for b in 0..sw.len() {
            let bytes = &w[b * 16..(b + 1) * 16];
            let xb = &xq[b * BLOCK..(b + 1) * BLOCK];
            let d: i32 = bytes
                .iter()
                .enumerate()
                .map(|(j, byte)| (byte & 0x0f) as i32 * xb[j] as i32 + (byte >> 4) as i32 * xb[BLOCK / 2 + j] as i32)
                .sum();
            total += d as f32 * (sw[b] * sx[b]);
        }
        total
    }

    pub fn dot_rows4_q8(w: &[u8], sw: &[f32], xq: [&[i8]; 4], sx: [&[f32]; 4]) -> [f32; 4] {
        [0, 1, 2, 3].map(|r| dot_row_q8(w, sw, xq[r], sx[r]))
    }
}

/// The typed op: `[.., K] f32 -> [.., N] f32`.
#[derive(Debug, Clone)]
pub struct Q4MatMul {
    pub w: Arc<Q4Matrix>,
    /// Quantize activations to int8 per block ([`Q4Matrix::matmul_q8`]).
    pub int8_activations: bool,
}

impl PartialEq for Q4MatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.w, &other.w) && self.int8_activations == other.int8_activations
    }
}
impl Eq for Q4MatMul {}

impl Op for Q4MatMul {
    fn name(&self) -> StaticName {
        "EdgeLlmQ4MatMul".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("N={} K={} block={BLOCK}", self.w.n, self.w.k)])
    }
    op_as_typed_op!();
}

impl EvalOp for Q4MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let x = x.cast_to::<f32>()?;
        let xs = x.to_plain_array_view::<f32>()?;
        let mut shape: TVec<usize> = x.shape().into();
        let last = shape.len() - 1;
        ensure!(shape[last] == self.w.k, "input has {} features, the weight expects {}", shape[last], self.w.k);
        shape[last] = self.w.n;
        let flat: Vec<f32>;
        let xv = match xs.as_slice() {
            Some(s) => s,
            None => {
                flat = xs.iter().copied().collect();
                &flat
            }
        };
        let mut out = vec![0f32; shape.iter().product()];
        if self.int8_activations {
            self.w.matmul_q8(xv, &mut out)?;
        } else {
            self.w.matmul(xv, &mut out)?;
        }
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for Q4MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        let last = shape.len() - 1;
        shape[last] = self.w.n.to_dim();
        Ok(tvec!(f32::fact(&shape)))
    }
    as_op!();
}

/// ONNX-side expansion: reads the constant weights and wires [`Q4MatMul`].
#[derive(Debug, Clone)]
struct MatMulNBitsQ4 {
    k: usize,
    n: usize,
    has_zp: bool,
    int8_activations: bool,
}

impl Expansion for MatMulNBitsQ4 {
    fn name(&self) -> StaticName {
        "MatMulNBits(edge-llm)".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        let n = self.n.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            s.equals(&outputs[0].rank, rank as i64)?;
            for ax in 0..rank - 1 {
                s.equals(&outputs[0].shape[ax], &inputs[0].shape[ax])?;
            }
            s.equals(&outputs[0].shape[rank - 1], n.clone())
        })?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize, what: &str| -> TractResult<Arc<Tensor>> {
            model.outlet_fact(inputs[i])?.konst.clone().with_context(|| format!("MatMulNBits: {what} must be a constant"))
        };
        let b = konst(1, "B")?;
        let scales = konst(2, "scales")?.cast_to::<f32>()?.into_owned();
        let zp = if self.has_zp { Some(konst(3, "zero_points")?) } else { None };
        let zp_bytes = match &zp {
            Some(t) => Some(t.to_plain_array_view::<u8>()?.iter().copied().collect::<Vec<u8>>()),
            None => None,
        };
        let w = Q4Matrix::new(
            self.n,
            self.k,
            b,
            scales.to_plain_array_view::<f32>()?.iter().copied().collect(),
            zp_bytes.as_deref(),
        )?;
        let x = if model.outlet_fact(inputs[0])?.datum_type == f32::datum_type() {
            inputs[0]
        } else {
            model.wire_node(format!("{prefix}.cast"), tract_onnx::tract_core::ops::cast::cast(f32::datum_type()), &[inputs[0]])?[0]
        };
        model.wire_node(prefix, Q4MatMul { w: Arc::new(w), int8_activations: self.int8_activations }, &[x])
    }
}

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `MatMulNBits` builder, for the nodes the kernel does not cover.
static FALLBACK: std::sync::OnceLock<Builder> = std::sync::OnceLock::new();

fn build_f32(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, false)
}

fn build_int8(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, true)
}

fn build(ctx: &ParsingContext, node: &NodeProto, int8_activations: bool) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let block: usize = node.get_attr("block_size")?;
    let present = |i: usize| node.input.get(i).is_some_and(|s| !s.is_empty());
    if bits != 4 || block != BLOCK || k % BLOCK != 0 || present(4) || present(5) {
        let fallback = FALLBACK.get().context("tract's MatMulNBits builder was not registered")?;
        return fallback(ctx, node);
    }
    Ok((expand(MatMulNBitsQ4 { k, n, has_zp: present(3), int8_activations }), vec![]))
}

/// Route 4-bit, block-32 `MatMulNBits` nodes to [`Q4MatMul`]; anything else (other bit widths
/// or block sizes, g_idx, bias) keeps tract's own implementation.
pub fn register(onnx: &mut tract_onnx::Onnx, int8_activations: bool) {
    if let Some(original) = onnx.op_register.0.get("MatMulNBits") {
        FALLBACK.get_or_init(|| *original);
        onnx.op_register.insert("MatMulNBits", if int8_activations { build_int8 } else { build_f32 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::reference::{dequantize_q4, quantize_q4};

    /// Deterministic weights `[n][k]` quantized to int4, their dequantization, the kernel's
    /// matrix, and activations `[m][k]`.
    fn fixture(n: usize, k: usize, m: usize, sym: bool) -> (Vec<f32>, Vec<f32>, Q4Matrix) {
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 263) as f32 / 131.0) - 1.0).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 199) as f32 / 99.0) - 1.0).collect();
        let q = quantize_q4(&w, n, k, 32, sym);
        let packed = Arc::new(Tensor::from_shape(&[q.packed.len()], &q.packed).unwrap());
        let mat = Q4Matrix::new(n, k, packed, q.scales.clone(), q.packed_zero_points().as_deref()).unwrap();
        (x, dequantize_q4(&q), mat)
    }

    /// `x · w[c]` over row `r`.
    fn dot(x: &[f32], deq: &[f32], k: usize, r: usize, c: usize) -> f32 {
        (0..k).map(|i| x[r * k + i] * deq[c * k + i]).sum()
    }

    #[test]
    fn int8_activation_path_matches_its_reference() {
        let (n, k, m) = (5, 64, 6);
        for sym in [true, false] {
            let (x, deq, mat) = fixture(n, k, m, sym);
            let mut out = vec![0f32; m * n];
            mat.matmul_q8(&x, &mut out).unwrap();
            let xr = crate::quant::reference::q8_block_round_trip(&x, k);
            for r in 0..m {
                for c in 0..n {
                    let (want, exact) = (dot(&xr, &deq, k, r, c), dot(&x, &deq, k, r, c));
                    assert!((out[r * n + c] - want).abs() < 1e-4, "sym={sym} [{r}][{c}] {} vs {want}", out[r * n + c]);
                    assert!((out[r * n + c] - exact).abs() < 0.05, "activation rounding too large");
                }
            }
        }
    }

    #[test]
    fn matches_dequantize_then_matmul() {
        let (n, k, m) = (7, 96, 6);
        for sym in [true, false] {
            let (x, deq, mat) = fixture(n, k, m, sym);
            let mut out = vec![0f32; m * n];
            mat.matmul(&x, &mut out).unwrap();
            for r in 0..m {
                for c in 0..n {
                    let want = dot(&x, &deq, k, r, c);
                    assert!((out[r * n + c] - want).abs() < 1e-4, "sym={sym} [{r}][{c}] {} vs {want}", out[r * n + c]);
                }
            }
        }
    }
}
