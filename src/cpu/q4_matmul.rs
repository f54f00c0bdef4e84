//! `MatMulNBits` (4-bit, blocks of 32 or a multiple of 32) as a tract op with our own kernel.
//!
//! Why: tract 0.23.9 maps `MatMulNBits` onto its Q4_0 block-quant format, which has SIMD kernels
//! on x86/ARM but only the generic scalar kernel on wasm32 (profiled: ~40 % of a wasm decode step
//! in `tract_linalg::generic::mmm::kernel`). On wasm this op replaces it; natively tract's own
//! AVX kernels stay in charge unless asked otherwise.
//!
//! Math: `y[m][n] = sum_b s[n][b] * sum_j q[n][b][j] * x[m][32b + j] - sum_b s[n][b] z[n][b] X[m][b]`
//! with `X[m][b]` the block sums of `x`: the zero point leaves the inner loop. Exact in f32 up
//! to summation order; the plain reference is `quant::reference::dequantize_q4` + a matmul.
//!
//! Activations: float (what onnxruntime computes unless the node says otherwise), or rounded
//! to int8 per 32-block (llama.cpp's q4_0 × q8_0, ~2x faster on wasm) where the node's
//! `accuracy_level` is 4 — onnxruntime's "int8 compute" — or the user asks for it everywhere
//! ([`Q4Activations`]).

use std::ops::Range;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::kernels::q4::Q4;
pub use super::rows::Activations;

/// The only block size the kernel handles; others fall back to tract's implementation.
pub use super::kernels::q4::BLOCK;

/// Weights of one `MatMulNBits` node, kept in their ONNX byte layout (block of 16 bytes: byte
/// `j` holds element `2j` low, `2j + 1` high).
#[derive(Debug)]
pub struct Q4Matrix {
    pub n: usize,
    pub k: usize,
    /// `[n][k / 32][16]`: the graph's own constant, shared rather than copied (the tied
    /// embedding gathers rows from the same tensor).
    pub packed: Arc<Tensor>,
    /// `[n][k / 32]` f32 or f16 ([`BlockFloats`]): the graph's constant, shared (no copy).
    pub scales: Arc<Tensor>,
    /// Zero point per block, `[n][k / 32]`; `None`: 8 everywhere (the `MatMulNBits` default).
    pub zero_points: Option<Vec<u8>>,
    /// The kernel variant ([`super::kernels::q4::best`] unless a test picks another).
    pub kernels: &'static Q4,
}

/// Activation rows from which [`Q4Matrix::matmul_q8`] runs the int8 GEMM ([`Q4Matrix::gemm_q8`]):
/// fewer rows (decode's one) go through the GEMV, which unpacks each weight block in registers
/// instead of into a panel that only one row would use.
pub const GEMM_MIN_ROWS: usize = 2;

/// Activation rows of one GEMM register tile.
pub const GEMM_TILE_ROWS: usize = 6;

impl Q4Matrix {
    /// From `MatMulNBits` tensors: `packed` `[n][nb][16]`, `scales` `[n * nb]`, zero points packed
    /// two per byte per row (`None`: 8).
    pub fn new(n: usize, k: usize, packed: Arc<Tensor>, scales: Arc<Tensor>, zero_points: Option<&[u8]>) -> TractResult<Self> {
        ensure!(k % BLOCK == 0, "K={k} is not a multiple of {BLOCK}");
        ensure!(packed.datum_type() == u8::datum_type(), "B must be uint8, got {:?}", packed.datum_type());
        let nb = k / BLOCK;
        ensure!(packed.len() == n * nb * BLOCK / 2, "B has {} bytes, expected {}", packed.len(), n * nb * BLOCK / 2);
        ensure!(packed.to_plain_array_view::<u8>()?.as_slice().is_some(), "B must be contiguous");
        let kept = [f32::datum_type(), f16::datum_type()].contains(&scales.datum_type());
        let scales = if kept { scales } else { Arc::new(scales.cast_to::<f32>()?.into_owned()) };
        ensure!(scales.len() == n * nb, "scales has {} values, expected {}", scales.len(), n * nb);
        BlockFloats::of(&scales)?;
        let zb = nb.div_ceil(2);
        if let Some(z) = zero_points {
            ensure!(z.len() == n * zb, "zero_points has {} bytes, expected {}", z.len(), n * zb);
        }
        let zero_points: Option<Vec<u8>> =
            zero_points.map(|z| (0..n * nb).map(|i| (z[(i / nb) * zb + (i % nb) / 2] >> (4 * (i % nb % 2))) & 0x0f).collect());
        Ok(Q4Matrix { n, k, packed, scales, zero_points, kernels: super::kernels::q4::best() })
    }

    /// [`Q4Matrix::new`] for `MatMulNBits` tensors of any block size that is a multiple of 32
    /// (K a multiple of 32 too): larger blocks are cut into 32-blocks that repeat their scale
    /// and zero point, the same values in the kernel's layout (a copy of B at load, exact).
    pub fn from_blocks(n: usize, k: usize, block: usize, packed: Arc<Tensor>, scales: Arc<Tensor>, zero_points: Option<&[u8]>) -> TractResult<Self> {
        if block == BLOCK {
            return Self::new(n, k, packed, scales, zero_points);
        }
        ensure!(block % BLOCK == 0 && k % BLOCK == 0, "block {block} / K={k} are not multiples of {BLOCK}");
        let (nb, nb32, per) = (k.div_ceil(block), k / BLOCK, block / BLOCK);
        let src = packed.to_plain_array_view::<u8>()?;
        let src = src.as_slice().context("B must be contiguous")?;
        ensure!(src.len() == n * nb * block / 2, "B has {} bytes, expected {}", src.len(), n * nb * block / 2);
        let sc = scales.cast_to::<f32>()?;
        let sc = sc.to_plain_array_view::<f32>()?;
        let sc = sc.as_slice().context("scales must be contiguous")?;
        ensure!(sc.len() == n * nb, "scales has {} values, expected {}", sc.len(), n * nb);
        let zb = nb.div_ceil(2);
        if let Some(z) = zero_points {
            ensure!(z.len() == n * zb, "zero_points has {} bytes, expected {}", z.len(), n * zb);
        }
        let mut b32 = Vec::with_capacity(n * k / 2);
        let mut s32 = Vec::with_capacity(n * nb32);
        let mut z32 = zero_points.map(|_| vec![0u8; n * nb32.div_ceil(2)]);
        for row in 0..n {
            for j in 0..nb32 {
                let (b, o) = (j / per, j % per);
                let at = (row * nb + b) * block / 2 + o * BLOCK / 2;
                b32.extend_from_slice(&src[at..at + BLOCK / 2]);
                s32.push(sc[row * nb + b]);
                if let (Some(z), Some(out)) = (zero_points, z32.as_mut()) {
                    let v = (z[row * zb + b / 2] >> (4 * (b % 2))) & 0x0f;
                    out[row * nb32.div_ceil(2) + j / 2] |= v << (4 * (j % 2));
                }
            }
        }
        let packed = Arc::new(Tensor::from_shape(&[b32.len()], &b32)?);
        let scales = Arc::new(Tensor::from_shape(&[s32.len()], &s32)?);
        Self::new(n, k, packed, scales, z32.as_deref())
    }

    pub fn scales(&self) -> TractResult<BlockFloats<'_>> {
        BlockFloats::of(&self.scales)
    }

    /// `scale * zero_point` of each block of weight row `row` into `out` (`k / 32` values):
    /// computed per row rather than stored (it would be as big as the scales).
    fn scaled_zeros(&self, row: usize, scales: &[f32], out: &mut [f32]) {
        let nb = out.len();
        for (b, (o, s)) in out.iter_mut().zip(scales).enumerate() {
            *o = self.zero_points.as_ref().map_or(8, |z| z[row * nb + b]) as f32 * s;
        }
    }

    fn packed_bytes(&self) -> TractResult<&[u8]> {
        self.packed.to_plain_array_view::<u8>()?.to_slice().context("B must be contiguous")
    }

    /// `out[m][n] = x[m] · w[n]` for `m` rows of `x` (`[m][k]`).
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        self.matmul_with_term(x, out, None)
    }

    /// [`Q4Matrix::matmul`] plus `sum_b term[n][b] * X[m][b]` (`term` `[n][k / 32]`, `X` the
    /// activation rows' block sums): [`super::q4_min_matmul`]'s float zero points. The GEMV
    /// driver folds it into its own zero-point correction, column by column on the thread that
    /// computes the column.
    pub fn matmul_with_term(&self, x: &[f32], out: &mut [f32], term: Option<ZeroPointTerm<'_>>) -> TractResult<()> {
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
        super::threads::split_columns(self.n, m, m * k, out, |cols, out, ld| {
            self.drive(m, &xs, cols, out, ld, term, |w, s, r, tile| {
                if tile == 4 {
                    (self.kernels.dot_rows4)(w, s, [0, 1, 2, 3].map(|i| &xd[(r + i) * k..(r + i + 1) * k]))
                } else {
                    [(self.kernels.dot_row)(w, s, &xd[r * k..(r + 1) * k]), 0.0, 0.0, 0.0]
                }
            })
        })
    }

    /// The GEMV loop: weight rows `cols` against the activation rows, four at a time while four
    /// remain (each unpacked weight block then serves four rows), minus the zero-point term
    /// `sum_b (scale * zp - term[col][b]) * sums[r][b]` (`term`: see [`Q4Matrix::matmul_with_term`]).
    /// `dot(w_row, scales_row, r, tile)` returns `tile` (4 or 1) dot products starting at
    /// activation row `r`. Writes `out[r * ld + (col - cols.start)]`.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        &self,
        m: usize,
        sums: &[f32],
        cols: Range<usize>,
        out: &mut [f32],
        ld: usize,
        term: Option<ZeroPointTerm<'_>>,
        dot: impl Fn(&[u8], &[f32], usize, usize) -> [f32; 4],
    ) -> TractResult<()> {
        let nb = self.k / BLOCK;
        let packed = self.packed_bytes()?;
        let scales = self.scales()?;
        // Per row: its scales as f32 (widened when f16), its zero-point correction, its term.
        // On the stack up to K = 8192: a decode step calls this ~2,500 times (every share of
        // every split), and on the threaded build every allocation takes the allocator's lock.
        let (mut stack, mut heap) = ([0f32; 3 * 256], Vec::new());
        let scratch: &mut [f32] = if nb <= 256 {
            &mut stack[..3 * nb]
        } else {
            heap.resize(3 * nb, 0.0);
            &mut heap
        };
        let (z, rest) = scratch.split_at_mut(nb);
        let (s_row, t_row) = rest.split_at_mut(nb);
        let quads = sums_in_quads(sums, m, nb);
        for row in cols.clone() {
            let w = &packed[row * nb * BLOCK / 2..(row + 1) * nb * BLOCK / 2];
            let s = match (scales, term) {
                // f16 scales and zero points, widened and combined in one pass.
                (BlockFloats::F16(sh), Some(ZeroPointTerm::ZeroPoints(zh))) if self.zero_points.is_none() => {
                    half_row(&sh[row * nb..(row + 1) * nb], &zh[row * nb..(row + 1) * nb], s_row, z);
                    &*s_row
                }
                _ => {
                    let s = scales.row(row, nb, s_row);
                    self.scaled_zeros(row, s, z);
                    if let Some(t) = term {
                        for (zb, tb) in z.iter_mut().zip(t.row(row, s, t_row)) {
                            *zb -= tb;
                        }
                    }
                    s
                }
            };
            let mut r = 0;
            while r < m {
                let tile = if r + 4 <= m { 4 } else { 1 };
                let dots = dot(w, s, r, tile);
                let corr = if tile == 4 {
                    dot4_in_lanes(z, &quads[r / 4 * nb * 4..][..nb * 4])
                } else {
                    [dot_in_lanes(z, &sums[r * nb..(r + 1) * nb]), 0.0, 0.0, 0.0]
                };
                for (i, d) in dots.iter().take(tile).enumerate() {
                    out[(r + i) * ld + row - cols.start] = d - corr[i];
                }
                r += tile;
            }
        }
        Ok(())
    }
}

/// Per-block floats `[n][k / 32]` (scales, float zero points) as the graph holds them: f32, or
/// f16 as a compact file stores them (edge-llm's int4 recipe, GGUF imports), kept so: half the
/// bytes (SmolLM2 int4: 13 MB less, issue #16), widened a row at a time where the kernels read
/// them ([`f16_to_f32`], exact).
#[derive(Debug, Clone, Copy)]
pub enum BlockFloats<'a> {
    F32(&'a [f32]),
    /// f16 bits.
    F16(&'a [u16]),
}

impl<'a> BlockFloats<'a> {
    /// A contiguous f32 or f16 tensor's values.
    pub fn of(t: &'a Tensor) -> TractResult<Self> {
        if t.datum_type() == f16::datum_type() {
            let v = t.to_plain_array_view::<f16>()?;
            let v = v.to_slice().context("per-block values must be contiguous")?;
            Ok(BlockFloats::F16(half::slice::HalfFloatSliceExt::reinterpret_cast(v)))
        } else {
            let v = t.to_plain_array_view::<f32>()?;
            Ok(BlockFloats::F32(v.to_slice().context("per-block values must be contiguous")?))
        }
    }

    pub fn len(&self) -> usize {
        match self {
            BlockFloats::F32(v) => v.len(),
            BlockFloats::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            BlockFloats::F32(v) => v[i],
            BlockFloats::F16(v) => f16_to_f32(v[i]),
        }
    }

    /// Row `row` of `[..][nb]`: the f32 values themselves, or the f16 ones widened into
    /// `scratch` (`nb` long).
    pub fn row<'b>(self, row: usize, nb: usize, scratch: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            BlockFloats::F32(v) => &v[row * nb..(row + 1) * nb],
            BlockFloats::F16(v) => {
                for (d, &h) in scratch.iter_mut().zip(&v[row * nb..(row + 1) * nb]) {
                    *d = f16_to_f32(h);
                }
                scratch
            }
        }
    }
}

/// f16 bits to the same value in f32, for every input (subnormals, infinities and NaNs too; a
/// unit test checks all 65,536 against `half`), without a branch so that a row's loop
/// vectorizes: exponent and mantissa moved to f32's places, rebiased by a multiplication by
/// 2^112 (exact, and a subnormal f16 comes out normal), infinities and NaNs given f32's
/// all-ones exponent, the sign put back.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let mag = h & 0x7fff;
    let v = (f32::from_bits(mag << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let special = if mag >= 0x7c00 { 0x7f80_0000 } else { 0 };
    f32::from_bits(v | special | ((h & 0x8000) << 16))
}

/// One weight row of f16 scales `sh` and f16 float zero points `zh`: `s` the scales widened,
/// `z = 8 * s - (8 - zf) * s`, the drive's zero-point correction; the same floats as widening
/// ([`BlockFloats::row`]), `scaled_zeros` and subtracting [`ZeroPointTerm::row`] in turn.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn half_row(sh: &[u16], zh: &[u16], s: &mut [f32], z: &mut [f32]) {
    half_row_scalar(sh, zh, s, z)
}

fn half_row_scalar(sh: &[u16], zh: &[u16], s: &mut [f32], z: &mut [f32]) {
    for (((s, z), &sh), &zh) in s.iter_mut().zip(z.iter_mut()).zip(sh).zip(zh) {
        *s = f16_to_f32(sh);
        *z = 8.0 * *s - (8.0 - f16_to_f32(zh)) * *s;
    }
}

/// [`half_row`] in wasm SIMD128, four blocks at a time ([`f16_to_f32`]'s steps in lanes): the
/// scalar loop cost 8 % of command 1's decode in Chromium.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn half_row(sh: &[u16], zh: &[u16], s: &mut [f32], z: &mut [f32]) {
    use core::arch::wasm32::*;
    let n = sh.len().min(zh.len()).min(s.len()).min(z.len());
    let widen = |h: v128| {
        let mag = v128_and(h, u32x4_splat(0x7fff));
        let v = f32x4_mul(i32x4_shl(mag, 13), f32x4_splat(f32::from_bits(0x7780_0000)));
        let special = v128_and(u32x4_ge(mag, u32x4_splat(0x7c00)), u32x4_splat(0x7f80_0000));
        v128_or(v128_or(v, special), i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
    };
    let (eight, mut i) = (f32x4_splat(8.0), 0);
    // SAFETY: every 8-byte load reads `sh` / `zh` at `i..i + 4` and every 16-byte store writes
    // `s` / `z` at `i..i + 4`, with `i + 4 <= n`, no longer than any of them.
    unsafe {
        while i + 4 <= n {
            let sv = widen(u32x4_extend_low_u16x8(v128_load64_zero(sh.as_ptr().add(i) as *const u64)));
            let zf = widen(u32x4_extend_low_u16x8(v128_load64_zero(zh.as_ptr().add(i) as *const u64)));
            v128_store(s.as_mut_ptr().add(i) as *mut v128, sv);
            v128_store(z.as_mut_ptr().add(i) as *mut v128, f32x4_sub(f32x4_mul(eight, sv), f32x4_mul(f32x4_sub(eight, zf), sv)));
            i += 4;
        }
    }
    half_row_scalar(&sh[i..n], &zh[i..n], &mut s[i..n], &mut z[i..n]);
}

/// The float zero points' per-block term `(8 - zf) * s` ([`super::q4_min_matmul`]), `[n][k / 32]`.
#[derive(Debug, Clone, Copy)]
pub enum ZeroPointTerm<'a> {
    /// Computed at load (f32).
    Term(&'a [f32]),
    /// The zero points themselves (f16 bits), the term computed a row at a time from them and
    /// the row's scales: the same f32 arithmetic, so the same values as [`ZeroPointTerm::Term`].
    ZeroPoints(&'a [u16]),
}

impl<'a> ZeroPointTerm<'a> {
    /// Row `row`'s term for that row's scales `s` (computed into `scratch`, `s.len()` long).
    pub fn row<'b>(self, row: usize, s: &[f32], scratch: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        let nb = s.len();
        match self {
            ZeroPointTerm::Term(t) => &t[row * nb..(row + 1) * nb],
            ZeroPointTerm::ZeroPoints(z) => {
                for ((d, &zf), s) in scratch.iter_mut().zip(&z[row * nb..(row + 1) * nb]).zip(s) {
                    *d = (8.0 - f16_to_f32(zf)) * s;
                }
                &scratch[..nb]
            }
        }
    }
}

/// Block sums of activation rows (`[m][nb]`) regrouped for [`dot4_in_lanes`]: rows `4q..4q + 4`
/// of block `b` at `[(q * nb + b) * 4..][..4]`; rows after the last whole four are left out.
pub(super) fn sums_in_quads(sums: &[f32], m: usize, nb: usize) -> Vec<f32> {
    let mut t = vec![0f32; m / 4 * 4 * nb];
    for r in 0..m / 4 * 4 {
        for b in 0..nb {
            t[((r / 4) * nb + b) * 4 + r % 4] = sums[r * nb + b];
        }
    }
    t
}

/// `c · row_i` for the four rows of one quad of [`sums_in_quads`], one row per SIMD lane, each
/// summed from -0.0 in block order: the same floats as `c.iter().zip(row_i).map(|(a, b)| a * b)
/// .sum::<f32>()`, four at once. The zero-point terms' one-row sums were 11 % (symmetric int4's
/// `drive`) and 9 % (float zero points) of a 42-token prefill of SmolLM2 int4 in Node.
pub(super) fn dot4_in_lanes(c: &[f32], quad: &[f32]) -> [f32; 4] {
    let mut acc = [-0.0f32; 4];
    for (cb, xs) in c.iter().zip(quad.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] += cb * xs[i];
        }
    }
    acc
}

/// An integer type activations are rounded to per 32-block (`x ≈ q * scale`, scale =
/// amax / [`BlockInt::LEVELS`]): `i8` (onnxruntime's int8 compute, llama.cpp's q8_0; relative
/// error ~0.4 % of the block's largest value) or `i16` (2^-16 of it: float activations for the
/// int4 kernels at integer speed, [`Activations::Int16`]).
pub trait BlockInt: Copy + Default + Send + Sync + 'static {
    /// Largest magnitude.
    const LEVELS: f32;
    /// A value [`quantize_block_i16`] rounded within this type's levels.
    fn from_i16(v: i16) -> Self;
    /// The GEMV kernels of `k` on this type: one activation row, four.
    #[allow(clippy::type_complexity)]
    fn gemv(k: &Q4) -> (fn(&[u8], &[f32], &[Self], &[f32]) -> f32, fn(&[u8], &[f32], [&[Self]; 4], [&[f32]; 4]) -> [f32; 4]);
}

impl BlockInt for i8 {
    const LEVELS: f32 = 127.0;
    fn from_i16(v: i16) -> Self {
        v as i8
    }
    fn gemv(k: &Q4) -> (fn(&[u8], &[f32], &[i8], &[f32]) -> f32, fn(&[u8], &[f32], [&[i8]; 4], [&[f32]; 4]) -> [f32; 4]) {
        (k.dot_row_q8, k.dot_rows4_q8)
    }
}

impl BlockInt for i16 {
    const LEVELS: f32 = 32767.0;
    fn from_i16(v: i16) -> Self {
        v
    }
    fn gemv(k: &Q4) -> (fn(&[u8], &[f32], &[i16], &[f32]) -> f32, fn(&[u8], &[f32], [&[i16]; 4], [&[f32]; 4]) -> [f32; 4]) {
        (k.dot_row_q16, k.dot_rows4_q16)
    }
}

/// `a · b` summed in four independent lanes (lane `l`: elements `4i + l`), then `(l0 + l1) +
/// (l2 + l3)`: one serial chain of adds was latency-bound (a decode step makes ~155,000 of these
/// sums of 18–48 products).
fn dot_in_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        acc[i % 4] += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Activations of `m` rows rounded per 32-block to `T` ([`BlockInt`]), de-interleaved like the
/// weights' nibbles, with `scale * sum(q)` per block (the GEMV's form).
pub struct BlockActivations<T> {
    pub q: Vec<T>,
    pub scales: Vec<f32>,
    pub scaled_sums: Vec<f32>,
}

/// Int8 activations ([`quantize_activations`]).
pub type Q8Activations = BlockActivations<i8>;

/// One 32-block's int8 quantization: `(scale, multiplier)`, both 0 for an all-zero block, as
/// onnxruntime's MLAS quantizes a MatMulNBits row for its int8 compute (`QuantizeARow_CompInt8`):
/// the multiplier is `127 / amax` in one division, not `1 / (amax / 127)` — the two differ by an
/// ulp for some amax, enough to move a value that lands on a half to the other integer.
pub fn q8_block_scale(src: &[f32]) -> (f32, f32) {
    block_scale(src, i8::LEVELS)
}

/// [`q8_block_scale`] for `levels` each side of zero.
///
/// The maximum is a compare, not `f32::max`: on wasm32 that is a call to libm's `fmaxf` per
/// element (wasm's `f32.max` propagates NaN, Rust's ignores it), and the call was 1/3 of
/// `quantize_rows`' time in a Node profile of prefill. A NaN compares false and is skipped, as
/// `max` skips it: the same value for every input.
pub fn block_scale(src: &[f32], levels: f32) -> (f32, f32) {
    let amax = src.iter().fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a });
    (amax / levels, if amax > 0.0 { levels / amax } else { 0.0 })
}

/// `v * multiplier` to int8 with ties to even, as MLAS (`_mm512_roundscale_ps(_MM_ROUND_NEAREST)`)
/// and wasm's `f32.nearest` do (`f32::round` rounds ties away from zero and is a libm call on wasm).
#[inline]
pub fn round_q8(v: f32) -> i8 {
    v.round_ties_even() as i8
}

/// Quantize activations as the int8-activation GEMV sees them; `reference` uses the same
/// rounding (`quant::reference::q8_block_round_trip`) to model it.
pub fn quantize_activations(x: &[f32], k: usize) -> Q8Activations {
    quantize_activations_to(x, k)
}

/// [`quantize_activations`] to any [`BlockInt`]: each block rounded by the GEMM's
/// [`quantize_block_i16`] (one rounding for both, SIMD128 in wasm), then de-interleaved.
pub fn quantize_activations_to<T: BlockInt>(x: &[f32], k: usize) -> BlockActivations<T> {
    let (m, nb) = (x.len() / k, k / BLOCK);
    let mut out = BlockActivations { q: vec![T::default(); m * k], scales: vec![0.0; m * nb], scaled_sums: vec![0.0; m * nb] };
    let mut block = [0i16; BLOCK];
    for (blk, src) in x.chunks_exact(BLOCK).enumerate() {
        let scale = quantize_block_i16(src, &mut block, T::LEVELS);
        let dst = &mut out.q[blk * BLOCK..(blk + 1) * BLOCK];
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            let (e, o) = (block[2 * j], block[2 * j + 1]);
            dst[j] = T::from_i16(e);
            dst[BLOCK / 2 + j] = T::from_i16(o);
            sum += e as i32 + o as i32;
        }
        out.scales[blk] = scale;
        out.scaled_sums[blk] = scale * sum as f32;
    }
    out
}

/// Activation rows for the integer GEMM: the same values as [`quantize_activations_to`] (int8
/// or int16), in natural order and as i16 (the kernel multiplies i16 pairs), `[m][k]`; scales
/// `[m][k / 32]`.
pub struct IntRows {
    pub q: Vec<i16>,
    pub scales: Vec<f32>,
    /// Whether every value fits int8 (rounded to 127 levels): the 8-bit GEMM may run them.
    pub int8: bool,
    /// The 8-bit GEMM's operands ([`IntRows::bytes`]), made once before the columns are split
    /// across threads: made in every chunk's call instead (a prefill's split cuts each matmul
    /// into ~15 chunks), they held relaxed-SIMD prefill to ×1.11 at 2 threads.
    pub bytes: Option<IntBytes>,
}

/// [`IntRows`] in int8 as the 8-bit GEMM reads them: the values as bytes, `[m][k]`, and each
/// block's integer sum, `[m][k / 32]`.
pub struct IntBytes {
    pub q: Vec<i8>,
    pub sums: Vec<i32>,
}

impl IntRows {
    /// The rows as [`IntBytes`] (meaningful when [`IntRows::int8`]).
    pub fn bytes(&self) -> IntBytes {
        IntBytes { q: self.q.iter().map(|&v| v as i8).collect(), sums: self.q.chunks_exact(BLOCK).map(|b| b.iter().map(|&v| v as i32).sum()).collect() }
    }

    /// Each block's `scale * sum(q)`, as [`BlockActivations`]' `scaled_sums`.
    pub fn scaled_sums(&self) -> Vec<f32> {
        self.q.chunks_exact(BLOCK).zip(&self.scales).map(|(q, s)| s * q.iter().map(|&v| v as i32).sum::<i32>() as f32).collect()
    }
}

/// Int8 rows for the GEMM.
pub fn quantize_rows(x: &[f32], k: usize) -> IntRows {
    quantize_rows_to::<i8>(x, k)
}

/// [`quantize_rows`] to `T`'s levels.
pub fn quantize_rows_to<T: BlockInt>(x: &[f32], k: usize) -> IntRows {
    let (m, nb) = (x.len() / k, k / BLOCK);
    let mut out = IntRows { q: vec![0; m * k], scales: vec![0.0; m * nb], int8: T::LEVELS <= 127.0, bytes: None };
    for (blk, src) in x.chunks_exact(BLOCK).enumerate() {
        out.scales[blk] = quantize_block_i16(src, &mut out.q[blk * BLOCK..(blk + 1) * BLOCK], T::LEVELS);
    }
    out
}

/// One 32-block rounded to `levels` (127: int8, 32767: int16): `dst[j] = round(src[j] * inv)`
/// with [`block_scale`]'s multiplier, ties to even; returns the scale. Every activation
/// quantizer of the CPU kernels rounds through it ([`quantize_rows_to`],
/// [`quantize_activations_to`], `q8_block_matmul::quantize_blocks`).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
pub(super) fn quantize_block_i16(src: &[f32], dst: &mut [i16], levels: f32) -> f32 {
    let (scale, inv) = block_scale(src, levels);
    for (d, v) in dst.iter_mut().zip(src) {
        *d = (v * inv).round_ties_even() as i16;
    }
    scale
}

/// [`quantize_block_i16`] in wasm SIMD128, the same values: the scalar loop was 11 % of a
/// 42-token prefill in Node (5 ns per element). `f32x4.pmax` skips a NaN as the compare in
/// [`block_scale`] does; `f32x4.nearest` rounds ties to even as `round_ties_even`; the products
/// are within ±levels (at most 32767) or NaN, which `trunc_sat` makes 0 as `as i16` does, so the
/// saturating narrow changes nothing.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(super) fn quantize_block_i16(src: &[f32], dst: &mut [i16], levels: f32) -> f32 {
    use core::arch::wasm32::*;
    assert!(src.len() == BLOCK && dst.len() == BLOCK);
    // SAFETY: eight 4-lane loads of the 32 `src` values and four 8-lane stores into the 32 `dst`
    // values, whose lengths are asserted above.
    unsafe {
        let sp = src.as_ptr() as *const v128;
        let v: [v128; 8] = std::array::from_fn(|i| v128_load(sp.add(i)));
        let m = v.iter().fold(f32x4_splat(0.0), |a, x| f32x4_pmax(a, f32x4_abs(*x)));
        let lanes = [f32x4_extract_lane::<0>(m), f32x4_extract_lane::<1>(m), f32x4_extract_lane::<2>(m), f32x4_extract_lane::<3>(m)];
        let (scale, inv) = block_scale(&lanes, levels);
        let inv = f32x4_splat(inv);
        let q = v.map(|x| i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(x, inv))));
        let dp = dst.as_mut_ptr() as *mut v128;
        for i in 0..4 {
            v128_store(dp.add(i), i16x8_narrow_i32x4(q[2 * i], q[2 * i + 1]));
        }
        scale
    }
}

impl Q4Matrix {
    /// [`Q4Matrix::matmul`] with activations quantized to int8 per 32-block and integer dot
    /// products (the llama.cpp q4_0 × q8_0 scheme): about twice the speed on wasm SIMD128, at
    /// the cost of activation rounding (relative error ~0.4 % per element). One row (decode)
    /// takes the GEMV, several (prefill) the GEMM; both compute the same integers.
    pub fn matmul_q8(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        self.matmul_int_with_term::<i8>(x, out, None)
    }

    /// [`Q4Matrix::matmul_q8`] on activations rounded to 16 bits per 32-block instead: the
    /// integer kernels' speed (prefill ~1.9x the f32 kernel on wasm), within 2^-16 of each
    /// block's largest activation of the float product.
    pub fn matmul_q16(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        self.matmul_int_with_term::<i16>(x, out, None)
    }

    /// [`Q4Matrix::matmul_q8`] / [`Q4Matrix::matmul_q16`] (`T`) plus `term` as in
    /// [`Q4Matrix::matmul_with_term`], on the rounded activations' block sums (`scale * sum(q)`:
    /// the zero-point term sees the activations the product used, as onnxruntime's int8 compute
    /// and the reference do; unrounded sums there were a 0.24 logit error). The GEMM adds it to
    /// each share of columns on the thread that computed it.
    pub fn matmul_int_with_term<T: BlockInt>(&self, x: &[f32], out: &mut [f32], term: Option<ZeroPointTerm<'_>>) -> TractResult<()> {
        let (k, m) = (self.k, x.len() / self.k);
        // Output columns are split across the CPU threads ([`super::threads`]); each column is
        // computed the same whichever thread owns it.
        if m >= GEMM_MIN_ROWS {
            let mut rows = quantize_rows_to::<T>(x, k);
            if rows.int8 && self.kernels.gemm8.is_some() {
                rows.bytes = Some(rows.bytes());
            }
            // Only the float zero points' term reads the block sums (the panel holds `q - zp`),
            // regrouped once for every share of columns.
            let sums = term.map(|_| {
                let sums = rows.scaled_sums();
                let quads = sums_in_quads(&sums, m, k / BLOCK);
                (sums, quads)
            });
            super::threads::split_columns(self.n, m, m * k, out, |cols, out, ld| {
                self.gemm_q8(&rows, cols.clone(), out, ld)?;
                if let (Some(t), Some((sums, quads))) = (term, &sums) {
                    super::q4_min_matmul::add_zero_point_term(out, ld, cols, t, self.scales()?, sums, quads, k / BLOCK);
                }
                Ok(())
            })
        } else {
            let acts = quantize_activations_to::<T>(x, k);
            super::threads::split_columns(self.n, m, m * k, out, |cols, out, ld| self.gemv_int(&acts, cols, out, ld, term))
        }
    }

    /// Output columns `cols` of the int8 GEMV (each weight block unpacked in registers for up
    /// to four activation rows), written to `out[r * ld + (col - cols.start)]`.
    pub fn gemv_q8(&self, a: &Q8Activations, cols: Range<usize>, out: &mut [f32], ld: usize) -> TractResult<()> {
        self.gemv_int(a, cols, out, ld, None)
    }

    /// [`Q4Matrix::gemv_q8`] on any [`BlockInt`] activations, plus `term` as in
    /// [`Q4Matrix::matmul_with_term`].
    pub fn gemv_int<T: BlockInt>(&self, a: &BlockActivations<T>, cols: Range<usize>, out: &mut [f32], ld: usize, term: Option<ZeroPointTerm<'_>>) -> TractResult<()> {
        let (k, nb) = (self.k, self.k / BLOCK);
        ensure!(a.q.len() % k == 0 && a.scales.len() * BLOCK == a.q.len(), "activations are not rows of K={k}");
        ensure!(cols.end <= self.n, "columns {cols:?} outside N={}", self.n);
        let m = a.q.len() / k;
        ensure!(m == 0 || out.len() >= (m - 1) * ld + cols.len(), "output too small");
        let (dot_row, dot_rows4) = T::gemv(self.kernels);
        self.drive(m, &a.scaled_sums, cols, out, ld, term, |w, s, r, tile| {
            let q = |i: usize| &a.q[(r + i) * k..(r + i + 1) * k];
            let sx = |i: usize| &a.scales[(r + i) * nb..(r + i + 1) * nb];
            if tile == 4 {
                dot_rows4(w, s, [0, 1, 2, 3].map(q), [0, 1, 2, 3].map(sx))
            } else {
                [dot_row(w, s, q(0), sx(0)), 0.0, 0.0, 0.0]
            }
        })
    }

    /// Output columns `cols` of the integer GEMM (int8 or int16 activations), written to
    /// `out[r * ld + (col - cols.start)]`. A block's integer sum is at most 32 * 15 * 32767
    /// (< 2^24): exact in i32 and in f32.
    ///
    /// Four weight rows at a time are unpacked once into a panel of i16 (`q - zero_point`, so
    /// the block's dot product is exact in integers) that stays in L1 while every activation
    /// row runs through it, [`GEMM_TILE_ROWS`] rows per register tile. Panel layout: block `b`,
    /// pair `p` (elements `2p`, `2p + 1`), column `i`: `panel[((16b + p) * 4 + i) * 2 + e]`, so one
    /// `i32x4.dot_i16x8_s` of a panel vector with a broadcast activation pair gives the four
    /// columns' partial sums in its four lanes.
    pub fn gemm_q8(&self, a: &IntRows, cols: Range<usize>, out: &mut [f32], ld: usize) -> TractResult<()> {
        let (k, nb) = (self.k, self.k / BLOCK);
        ensure!(a.q.len() % k == 0 && a.scales.len() * BLOCK == a.q.len(), "activations are not rows of K={k}");
        ensure!(cols.end <= self.n, "columns {cols:?} outside N={}", self.n);
        let m = a.q.len() / k;
        ensure!(m == 0 || out.len() >= (m - 1) * ld + cols.len(), "output too small");
        let packed = self.packed_bytes()?;
        let row_bytes = nb * BLOCK / 2;
        let weights = move |col: [usize; 4]| col.map(|j| &packed[j * row_bytes..(j + 1) * row_bytes]);
        let row = |r: usize, rows: usize, i: usize| r + i.min(rows - 1);
        if let (true, Some(g8)) = (a.int8, self.kernels.gemm8) {
            // The 8-bit GEMM: the nibbles as bytes, each block's integer sum corrected by
            // `z * sum x` (the integer the i16 panel gives, so the same floats).
            // Made here only when the caller did not ([`IntRows::bytes`]).
            let made;
            let IntBytes { q: x, sums: xsum } = match &a.bytes {
                Some(b) => b,
                None => {
                    made = a.bytes();
                    &made
                }
            };
            // The panel, and its columns' zero points (`zp[4b + i]`, 8 without).
            let unpack = |col: [usize; 4], (panel, zp): &mut (Vec<u8>, Vec<i32>)| {
                (g8.unpack)(weights(col), panel);
                if let Some(z) = &self.zero_points {
                    for b in 0..nb {
                        for (i, j) in col.iter().enumerate() {
                            zp[b * 4 + i] = z[j * nb + b] as i32;
                        }
                    }
                }
            };
            let tile = |(panel, zp): &(Vec<u8>, Vec<i32>), sw: &[f32], r: usize, rows: usize, out: &mut [[f32; 4]]| {
                let xr: [&[i8]; GEMM_TILE_ROWS] = std::array::from_fn(|i| &x[row(r, rows, i) * k..][..k]);
                let xs: [&[i32]; GEMM_TILE_ROWS] = std::array::from_fn(|i| &xsum[row(r, rows, i) * nb..][..nb]);
                let sx: [&[f32]; GEMM_TILE_ROWS] = std::array::from_fn(|i| &a.scales[row(r, rows, i) * nb..][..nb]);
                (g8.tile)(panel, zp, sw, &xr[..rows], &xs[..rows], &sx[..rows], out);
            };
            return self.panel_tiles(m, cols, out, ld, (vec![0u8; nb * 128], vec![8i32; nb * 4]), unpack, tile);
        }
        let unpack = |col: [usize; 4], panel: &mut Vec<i16>| {
            let zps = self.zero_points.as_ref().map(|z| col.map(|j| &z[j * nb..(j + 1) * nb]));
            (self.kernels.unpack_panel)(weights(col), zps, panel);
        };
        let tile = |panel: &Vec<i16>, sw: &[f32], r: usize, rows: usize, out: &mut [[f32; 4]]| {
            let x: [&[i16]; GEMM_TILE_ROWS] = std::array::from_fn(|i| &a.q[row(r, rows, i) * k..][..k]);
            let sx: [&[f32]; GEMM_TILE_ROWS] = std::array::from_fn(|i| &a.scales[row(r, rows, i) * nb..][..nb]);
            (self.kernels.gemm_tile)(panel, sw, &x[..rows], &sx[..rows], out);
        };
        self.panel_tiles(m, cols, out, ld, vec![0i16; nb * BLOCK * 4], unpack, tile)
    }

    /// The GEMM's loops, whatever the panel: four output columns at a time (a partial last group
    /// repeats its last column; only `width` lanes are stored), `unpack` fills the panel for
    /// them, their block scales go to `sw` (`sw[4b + i]`), then `tile(panel, sw, r, rows, out)`
    /// computes activation rows `r..r + rows` ([`GEMM_TILE_ROWS`] at most) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn panel_tiles<P>(
        &self,
        m: usize,
        cols: Range<usize>,
        out: &mut [f32],
        ld: usize,
        mut panel: P,
        mut unpack: impl FnMut([usize; 4], &mut P),
        tile: impl Fn(&P, &[f32], usize, usize, &mut [[f32; 4]]),
    ) -> TractResult<()> {
        let nb = self.k / BLOCK;
        let scales = self.scales()?;
        let mut sw = vec![0f32; nb * 4];
        for c in cols.clone().step_by(4) {
            let width = (cols.end - c).min(4);
            let col = [0, 1, 2, 3].map(|i| c + i.min(width - 1));
            unpack(col, &mut panel);
            for b in 0..nb {
                for (i, j) in col.iter().enumerate() {
                    sw[b * 4 + i] = scales.get(j * nb + b);
                }
            }
            let oc = c - cols.start;
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(GEMM_TILE_ROWS);
                let mut t = [[0f32; 4]; GEMM_TILE_ROWS];
                tile(&panel, &sw, r, rows, &mut t[..rows]);
                for (i, t) in t[..rows].iter().enumerate() {
                    out[(r + i) * ld + oc..(r + i) * ld + oc + width].copy_from_slice(&t[..width]);
                }
                r += rows;
            }
        }
        Ok(())
    }
}

/// The typed op: `[.., K] f32 -> [.., N] f32`.
pub type Q4MatMul = super::rows::FloatRowsOp<Q4Matrix>;

impl super::rows::FloatRows for Q4Matrix {
    const OP: &'static str = "EdgeLlmQ4MatMul";
    fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }
    fn run(&self, x: &[f32], out: &mut [f32], activations: Activations) -> TractResult<()> {
        match activations {
            Activations::Int8 => self.matmul_q8(x, out),
            Activations::Int16 => self.matmul_q16(x, out),
            Activations::Float => self.matmul(x, out),
        }
    }
}

/// ONNX-side expansion: reads the constant weights and wires [`Q4MatMul`] (+ the bias).
#[derive(Debug, Clone)]
struct MatMulNBitsQ4 {
    k: usize,
    n: usize,
    block: usize,
    /// Positions of the optional inputs among the node's non-empty ones.
    zp_input: Option<usize>,
    bias_input: Option<usize>,
    activations: Activations,
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
        super::rows::float_rules(s, inputs, outputs, self.n)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize, what: &str| super::rows::weight(model, inputs, i, what);
        let b = konst(1, "B")?;
        let scales = konst(2, "scales")?;
        let zp = match self.zp_input {
            Some(i) => Some(konst(i, "zero_points")?),
            None => None,
        };
        let zp_bytes = match &zp {
            Some(t) => Some(t.to_plain_array_view::<u8>()?.iter().copied().collect::<Vec<u8>>()),
            None => None,
        };
        let w = Q4Matrix::from_blocks(self.n, self.k, self.block, b, scales, zp_bytes.as_deref())?;
        let x = if model.outlet_fact(inputs[0])?.datum_type == f32::datum_type() {
            inputs[0]
        } else {
            model.wire_node(format!("{prefix}.cast"), tract_onnx::tract_core::ops::cast::cast(f32::datum_type()), &[inputs[0]])?[0]
        };
        let y = model.wire_node(prefix, Q4MatMul { w: Arc::new(w), activations: self.activations }, &[x])?;
        match self.bias_input {
            None => Ok(y),
            Some(i) => {
                let bias = model.wire_node(format!("{prefix}.bias_cast"), tract_onnx::tract_core::ops::cast::cast(f32::datum_type()), &[inputs[i]])?;
                tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast(
                    format!("{prefix}.bias"),
                    model,
                    tract_onnx::tract_core::ops::math::add(),
                    &[y[0], bias[0]],
                )
            }
        }
    }
}

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `MatMulNBits` builder, for the nodes the kernel does not cover.
static FALLBACK: std::sync::OnceLock<Builder> = std::sync::OnceLock::new();

/// Which activations a `MatMulNBits` node runs on with the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Q4Activations {
    /// As the node asks: int8 blocks where its `accuracy_level` is 4 (onnxruntime's int8
    /// compute); elsewhere the float product, computed on activations rounded to 16 bits per
    /// 32-block ([`Activations::Int16`]: the integer kernels' speed, within 2^-16 of each block's
    /// largest activation; `tests/ort_files.rs` holds onnxruntime's tokens on it).
    #[default]
    AsModel,
    /// [`Q4Activations::AsModel`] with the float nodes computed in f32 (the float kernel,
    /// about half the speed): the numbers onnxruntime computes, up to summation order.
    AsModelExact,
    /// Int8 blocks on every node (faster; activation rounding ~0.4 %).
    Int8,
    /// Float on every node, in f32.
    Float,
}

impl Q4Activations {
    /// Every mode, in [`Q4Activations::index`] order.
    pub const ALL: [Q4Activations; 4] = [Q4Activations::AsModel, Q4Activations::AsModelExact, Q4Activations::Int8, Q4Activations::Float];

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&m| m == self).unwrap_or(0)
    }

    /// What a node runs on: `int8_level` when its `accuracy_level` asks for int8 compute
    /// (onnxruntime honours it for integer zero points only: float zero points pass false).
    pub fn for_node(self, int8_level: bool) -> Activations {
        match (self, int8_level) {
            (Q4Activations::Int8, _) | (Q4Activations::AsModel | Q4Activations::AsModelExact, true) => Activations::Int8,
            (Q4Activations::AsModel, false) => Activations::Int16,
            (Q4Activations::AsModelExact | Q4Activations::Float, false) | (Q4Activations::Float, true) => Activations::Float,
        }
    }
}

/// `node`'s `accuracy_level` asks for int8 compute.
pub(super) fn int8_level(node: &NodeProto) -> TractResult<bool> {
    Ok(node.get_attr_opt::<i64>("accuracy_level")?.unwrap_or(0) == crate::onnx::ACCURACY_LEVEL_INT8)
}

fn build_as_model(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, Q4Activations::AsModel.for_node(int8_level(node)?))
}

fn build_as_model_exact(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, Q4Activations::AsModelExact.for_node(int8_level(node)?))
}

fn build_f32(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, Activations::Float)
}

fn build_int8(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, Activations::Int8)
}

fn build(ctx: &ParsingContext, node: &NodeProto, activations: Activations) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k: usize = node.get_attr("K")?;
    let n: usize = node.get_attr("N")?;
    let bits: usize = node.get_attr_opt("bits")?.unwrap_or(4);
    let block: usize = node.get_attr("block_size")?;
    let present = |i: usize| node.input.get(i).is_some_and(|s| !s.is_empty());
    // tract wires only the non-empty inputs: an optional input's position counts those before it.
    let position = |i: usize| present(i).then(|| (0..i).filter(|&j| present(j)).count());
    if bits != 4 || block % BLOCK != 0 || k % BLOCK != 0 || present(4) {
        let fallback = FALLBACK.get().context("tract's MatMulNBits builder was not registered")?;
        return fallback(ctx, node);
    }
    let op = MatMulNBitsQ4 { k, n, block, zp_input: position(3), bias_input: position(5), activations };
    Ok((expand(op), vec![]))
}

/// Whether a block-32 `MatMulNBits` node of `proto` has scales that f16 cannot hold exactly.
/// tract's Q4_0 path stores scales as f16, which changes such a file's numbers (onnxruntime's
/// quantizers write f32 scales: logits moved by ~1e-2 and greedy tokens departed on the
/// tiny asymmetric file); the kernel keeps f32. edge-llm's exporter rounds its scales to f16,
/// so its files stay on tract's faster native path. `weights`: the detached initializers.
pub fn scales_need_f32(proto: &tract_onnx::pb::ModelProto, weights: &[(String, Arc<Tensor>)]) -> bool {
    let Some(graph) = proto.graph.as_ref() else { return false };
    let inexact = |v: f32| half::f16::from_f32(v).to_f32() != v;
    graph.node.iter().filter(|n| n.op_type == "MatMulNBits").any(|node| {
        let block = node.attribute.iter().find(|a| a.name == "block_size").map(|a| a.i);
        let Some(name) = node.input.get(2).filter(|_| block == Some(BLOCK as i64)) else { return false };
        if let Some((_, t)) = weights.iter().find(|(n, _)| n == name) {
            return t.to_plain_array_view::<f32>().is_ok_and(|s| s.iter().any(|&v| inexact(v)));
        }
        graph.initializer.iter().find(|t| &t.name == name).is_some_and(|t| {
            let raw = t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            t.data_type == tract_onnx::pb::tensor_proto::DataType::Float as i32 && raw.chain(t.float_data.iter().copied()).any(inexact)
        })
    })
}

/// Route 4-bit `MatMulNBits` nodes whose blocks and K are multiples of 32 to [`Q4MatMul`];
/// anything else (other bit widths, g_idx) keeps tract's own implementation.
pub fn register(onnx: &mut tract_onnx::Onnx, activations: Q4Activations) {
    if let Some(original) = onnx.op_register.0.get("MatMulNBits") {
        FALLBACK.get_or_init(|| *original);
        let builder: Builder = match activations {
            Q4Activations::AsModel => build_as_model,
            Q4Activations::AsModelExact => build_as_model_exact,
            Q4Activations::Int8 => build_int8,
            Q4Activations::Float => build_f32,
        };
        onnx.op_register.insert("MatMulNBits", builder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::q4::VARIANTS;
    use crate::quant::reference::{dequantize_q4, quantize_q4};

    /// The one-pass f16 row (SIMD128 on wasm) gives the floats of the three-pass one, for row
    /// lengths with and without a tail.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn half_row_is_the_widened_row_bit_for_bit() {
        for nb in [1, 4, 7, 18, 48] {
            let sh: Vec<u16> = (0..nb as u32).map(|i| (i * 7919 % 65536) as u16 & 0xbfff).collect();
            let zh: Vec<u16> = (0..nb as u32).map(|i| half::f16::from_f32((i * 37 % 29) as f32 * 0.55 - 0.3).to_bits()).collect();
            let (mut s, mut z) = (vec![0f32; nb], vec![0f32; nb]);
            half_row(&sh, &zh, &mut s, &mut z);
            let (mut s2, mut t2) = (vec![0f32; nb], vec![0f32; nb]);
            let s2 = BlockFloats::F16(&sh).row(0, nb, &mut s2).to_vec();
            let t2 = ZeroPointTerm::ZeroPoints(&zh).row(0, &s2, &mut t2);
            let z2: Vec<f32> = s2.iter().zip(t2).map(|(s, t)| 8.0 * s - t).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!((bits(&s), bits(&z)), (bits(&s2), bits(&z2)), "nb={nb}");
        }
    }

    /// Every f16 widens to the value `half` gives (NaNs to NaNs of the same sign).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn f16_widening_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let (got, want) = (f16_to_f32(h), half::f16::from_bits(h).to_f32());
            if want.is_nan() {
                assert!(got.is_nan() && got.is_sign_negative() == want.is_sign_negative(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
        // A row at a time, as the kernels read them.
        let bits: Vec<u16> = (0..40u16).map(|i| i * 611 ^ if i % 3 == 0 { 0x8000 } else { 0 }).collect();
        let mut scratch = [0f32; 8];
        let row = BlockFloats::F16(&bits).row(2, 8, &mut scratch);
        assert_eq!(row, &bits[16..24].iter().map(|&h| half::f16::from_bits(h).to_f32()).collect::<Vec<_>>()[..]);
    }

    /// Deterministic weights `[n][k]` quantized to int4, their dequantization, the kernel's
    /// matrix, and activations `[m][k]`.
    fn fixture(n: usize, k: usize, m: usize, sym: bool) -> (Vec<f32>, Vec<f32>, Q4Matrix) {
        fixture_with(n, k, m, sym, false)
    }

    /// [`fixture`], the scales kept in f16 when `f16s` (as edge-llm's bundles and GGUF imports
    /// hold them; the dequantization uses the rounded scales).
    fn fixture_with(n: usize, k: usize, m: usize, sym: bool, f16s: bool) -> (Vec<f32>, Vec<f32>, Q4Matrix) {
        let (w, x) = crate::cpu::rows::test_data(n, k, m, 0.0);
        let mut q = quantize_q4(&w, n, k, 32, sym);
        let scales = if f16s {
            let h: Vec<half::f16> = q.scales.iter().map(|&s| half::f16::from_f32(s)).collect();
            q.scales = h.iter().map(|s| s.to_f32()).collect();
            Tensor::from_shape(&[h.len()], &h).unwrap()
        } else {
            tract_ndarray::arr1(&q.scales).into_tensor()
        };
        let packed = Arc::new(Tensor::from_shape(&[q.packed.len()], &q.packed).unwrap());
        let mat = Q4Matrix::new(n, k, packed, Arc::new(scales), q.packed_zero_points().as_deref()).unwrap();
        (x, dequantize_q4(&q), mat)
    }

    /// `x · w[c]` over row `r`.
    fn dot(x: &[f32], deq: &[f32], k: usize, r: usize, c: usize) -> f32 {
        (0..k).map(|i| x[r * k + i] * deq[c * k + i]).sum()
    }

    /// A variant's 8-bit GEMM (relaxed SIMD's `Gemm8`) gives the i16 panel's floats bit for
    /// bit: every tile height (1 to 13 rows), symmetric and zero-point weights, column ranges
    /// that start mid-group and end in a partial group, activations at int8's extremes; its
    /// operands made by the call or before it.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn gemm8_is_the_i16_panel_bit_for_bit() {
        let relaxed = cfg!(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"));
        assert_eq!(VARIANTS.iter().any(|v| v.kernels.gemm8.is_some()), relaxed, "only the relaxed-SIMD build has an 8-bit GEMM");
        for v in VARIANTS.iter().filter(|v| v.kernels.gemm8.is_some()) {
            let without: &'static Q4 = Box::leak(Box::new(Q4 { gemm8: None, ..v.kernels }));
            for (sym, m, cols) in [(true, 2, 0..7), (false, 6, 1..7), (false, 13, 2..5), (true, 7, 0..4), (false, 1, 3..6)] {
                let (n, k) = (7, 96);
                let (mut x, _, mut mat) = fixture(n, k, m, sym);
                x[0] = 1e3; // a block whose other values round to few levels, one at 127
                *x.last_mut().unwrap() = -1e3;
                let a = quantize_rows(&x, k);
                assert!(a.int8 && a.q.contains(&127) && a.q.contains(&-127));
                let mut got = vec![0f32; m * cols.len()];
                let mut want = got.clone();
                mat.kernels = &v.kernels;
                mat.gemm_q8(&a, cols.clone(), &mut got, cols.len()).unwrap();
                // The operands made once before a split ([`IntRows::bytes`]) give the same.
                let mut pre = got.clone();
                let a_pre = IntRows { bytes: Some(a.bytes()), ..quantize_rows(&x, k) };
                mat.gemm_q8(&a_pre, cols.clone(), &mut pre, cols.len()).unwrap();
                mat.kernels = without;
                mat.gemm_q8(&a, cols.clone(), &mut want, cols.len()).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!((bits(&got), bits(&pre)), (bits(&want), bits(&want)), "{} sym={sym} m={m} cols={cols:?}", v.name);
            }
        }
    }

    /// Every kernel variant: the GEMV on one row (plus a 4-row tile and a remainder), the
    /// GEMM on six, against the dequantized weights on the int8-rounded activations, with f32
    /// and f16 scales.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn int8_activation_path_matches_its_reference() {
        for v in VARIANTS {
            // f32 scales on K = 64, f16 ones (widened a row at a time) on K = 224.
            for (sym, m, f16s, k) in [(true, 1), (false, 1), (true, 6), (false, 6)].into_iter().flat_map(|(s, m)| [(s, m, false, 64), (s, m, true, 224)]) {
                let n = 5;
                let (x, deq, mut mat) = fixture_with(n, k, m, sym, f16s);
                mat.kernels = &v.kernels;
                let mut out = vec![0f32; m * n];
                mat.matmul_q8(&x, &mut out).unwrap();
                let xr = crate::quant::reference::q8_block_round_trip(&x, k);
                for r in 0..m {
                    for c in 0..n {
                        let (want, exact) = (dot(&xr, &deq, k, r, c), dot(&x, &deq, k, r, c));
                        assert!((out[r * n + c] - want).abs() < 1e-4, "{} sym={sym} [{r}][{c}] {} vs {want}", v.name, out[r * n + c]);
                        assert!((out[r * n + c] - exact).abs() < 0.05 * k as f32 / 64.0, "{}: activation rounding too large", v.name);
                    }
                }
                // The GEMV's 4-row tile and its single-row remainder.
                let mut gemv = vec![0f32; m * n];
                mat.gemv_q8(&quantize_activations(&x, k), 0..n, &mut gemv, n).unwrap();
                assert!(gemv.iter().zip(&out).all(|(a, b)| (a - b).abs() < 1e-4), "{}: GEMV and GEMM disagree", v.name);
            }
        }
    }

    /// The GEMM over every row-tile remainder, a partial last column group and column ranges
    /// that start mid-group, against the dequantized weights on the int8-rounded activations.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn int8_gemm_matches_its_reference_on_column_ranges() {
        for v in VARIANTS {
            for (n, k, m) in [(4, 32, 2), (9, 64, 5), (13, 96, 7), (8, 32, 9)] {
                for sym in [true, false] {
                    let (x, deq, mut mat) = fixture(n, k, m, sym);
                    mat.kernels = &v.kernels;
                    let xr = crate::quant::reference::q8_block_round_trip(&x, k);
                    let a = quantize_rows(&x, k);
                    for cols in [0..n, 1..n, 0..n - 1, 3..n.min(6)] {
                        let ld = cols.len() + 2;
                        let mut out = vec![f32::NAN; m * ld];
                        mat.gemm_q8(&a, cols.clone(), &mut out, ld).unwrap();
                        for r in 0..m {
                            for (j, c) in cols.clone().enumerate() {
                                let (want, got) = (dot(&xr, &deq, k, r, c), out[r * ld + j]);
                                assert!((got - want).abs() < 1e-4, "{} n={n} k={k} m={m} sym={sym} cols={cols:?} [{r}][{c}] {got} vs {want}", v.name);
                            }
                            assert!(out[r * ld + cols.len()..(r + 1) * ld].iter().all(|v| v.is_nan()), "{}: wrote past the range", v.name);
                        }
                    }
                }
            }
        }
    }

    /// 16-bit activations, every variant: the GEMV (one row; four-row tiles and a remainder)
    /// and the GEMM (several rows) against the dequantized weights on the 16-bit-rounded
    /// activations, and within 2^-15 of each block's largest activation of the float product;
    /// the portable GEMV and the SIMD one give the same floats.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn int16_activation_path_matches_its_reference() {
        let (n, k) = (9, 96);
        let mut gemvs: Vec<Vec<f32>> = vec![];
        for v in VARIANTS {
            for (sym, m) in [(true, 1), (false, 1), (true, 7), (false, 7)] {
                let (x, deq, mut mat) = fixture(n, k, m, sym);
                mat.kernels = &v.kernels;
                let mut out = vec![0f32; m * n];
                mat.matmul_q16(&x, &mut out).unwrap();
                let xr = crate::quant::reference::block_round_trip(&x, k, i16::LEVELS);
                for r in 0..m {
                    for c in 0..n {
                        let (want, exact) = (dot(&xr, &deq, k, r, c), dot(&x, &deq, k, r, c));
                        assert!((out[r * n + c] - want).abs() < 1e-4, "{} sym={sym} [{r}][{c}] {} vs {want}", v.name, out[r * n + c]);
                        // |x| <= 1 and |w| <= 1 here: rounding moves each product by <= 2^-16.
                        assert!((out[r * n + c] - exact).abs() < k as f32 / 65536.0 + 1e-5, "{}: activation rounding too large", v.name);
                    }
                }
                let mut gemv = vec![0f32; m * n];
                mat.gemv_int(&quantize_activations_to::<i16>(&x, k), 0..n, &mut gemv, n, None).unwrap();
                assert!(gemv.iter().zip(&out).all(|(a, b)| (a - b).abs() < 1e-4), "{}: GEMV and GEMM disagree", v.name);
                if m == 7 && sym {
                    gemvs.push(gemv);
                }
            }
        }
        assert!(gemvs.windows(2).all(|w| w[0] == w[1]), "the GEMV variants give different floats");
    }

    /// The largest products a block can hold (nibbles 0 and 15; 16-bit activations at ±32767,
    /// 8-bit ones at -128 and 127) stay exact in every variant: against the same sums in f64.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn int_blocks_at_full_scale_are_exact() {
        let k = 64;
        let s = [1.0f32, 1.0];
        let x16: Vec<i16> = (0..k).map(|i| if i % 3 == 0 { -32767 } else { 32767 }).collect();
        let x8: Vec<i8> = (0..k).map(|i| if i % 3 == 0 { -128 } else { 127 }).collect();
        for w in [vec![0xffu8; k / 2], (0..k / 2).map(|i| if i % 2 == 0 { 0x0f } else { 0xf0 }).collect()] {
            let q = |i: usize| if i % 32 < 16 { w[i / 32 * 16 + i % 16] & 0x0f } else { w[i / 32 * 16 + i % 16] >> 4 } as f64;
            let want16: f64 = x16.iter().enumerate().map(|(i, &v)| q(i) * v as f64).sum();
            let want8: f64 = x8.iter().enumerate().map(|(i, &v)| q(i) * v as f64).sum();
            for v in VARIANTS {
                assert_eq!((v.kernels.dot_row_q16)(&w, &s, &x16, &[1.0, 1.0]) as f64, want16, "{}", v.name);
                let got = (v.kernels.dot_rows4_q16)(&w, &s, [&x16, &x16, &x16, &x16], [&[1.0, 1.0]; 4]);
                assert!(got.iter().all(|&g| g as f64 == want16), "{}: {got:?}", v.name);
                assert_eq!((v.kernels.dot_row_q8)(&w, &s, &x8, &[1.0, 1.0]) as f64, want8, "{}", v.name);
                let got = (v.kernels.dot_rows4_q8)(&w, &s, [&x8, &x8, &x8, &x8], [&[1.0, 1.0]; 4]);
                assert!(got.iter().all(|&g| g as f64 == want8), "{}: {got:?}", v.name);
            }
        }
    }

    /// Float activations, every variant: four-row tiles and the single-row remainder.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn matches_dequantize_then_matmul() {
        let (n, k, m) = (7, 96, 6);
        for v in VARIANTS {
            for sym in [true, false] {
                let (x, deq, mut mat) = fixture(n, k, m, sym);
                mat.kernels = &v.kernels;
                let mut out = vec![0f32; m * n];
                mat.matmul(&x, &mut out).unwrap();
                for r in 0..m {
                    for c in 0..n {
                        let want = dot(&x, &deq, k, r, c);
                        assert!((out[r * n + c] - want).abs() < 1e-4, "{} sym={sym} [{r}][{c}] {} vs {want}", v.name, out[r * n + c]);
                    }
                }
            }
        }
    }
}
