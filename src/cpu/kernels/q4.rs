//! The int4 `MatMulNBits` kernels (`cpu::q4_matmul`): block dot products for the GEMV, the
//! GEMM's panel unpacking and register tile. Layouts and math are described there.

/// Elements per quantization block.
pub const BLOCK: usize = 32;

/// One variant's int4 kernels.
#[derive(Debug, Clone, Copy)]
#[allow(clippy::type_complexity)] // kernel signatures, each written once, here
pub struct Q4 {
    /// `sum_b s[b] * sum_j q[b][j] * x[b][j]`, `x` de-interleaved per block.
    pub dot_row: fn(&[u8], &[f32], &[f32]) -> f32,
    /// [`Q4::dot_row`] for four activation rows (each weight block unpacked once).
    pub dot_rows4: fn(&[u8], &[f32], [&[f32]; 4]) -> [f32; 4],
    /// `sum_b sw[b] * sx[b] * sum_j q[b][j] * xq[b][j]` on int8 activations.
    pub dot_row_q8: fn(&[u8], &[f32], &[i8], &[f32]) -> f32,
    pub dot_rows4_q8: fn(&[u8], &[f32], [&[i8]; 4], [&[f32]; 4]) -> [f32; 4],
    /// [`Q4::dot_row_q8`] on activations rounded to 16 bits per block (`xq` de-interleaved).
    pub dot_row_q16: fn(&[u8], &[f32], &[i16], &[f32]) -> f32,
    pub dot_rows4_q16: fn(&[u8], &[f32], [&[i16]; 4], [&[f32]; 4]) -> [f32; 4],
    /// Four weight rows into the GEMM's i16 panel, zero points (default 8) subtracted.
    pub unpack_panel: fn([&[u8]; 4], Option<[&[u8]; 4]>, &mut [i16]),
    /// One GEMM register tile of `x.len()` (1 to 6) activation rows against a panel.
    pub gemm_tile: fn(&[i16], &[f32], &[&[i16]], &[&[f32]], &mut [[f32; 4]]),
    /// The GEMM on int8 activations with 8-bit dot products, where a variant has them
    /// (relaxed SIMD); else int8 rows take [`Q4::unpack_panel`] and [`Q4::gemm_tile`].
    pub gemm8: Option<Gemm8>,
}

/// The int8-activation GEMM on a panel of bytes: the weights' nibbles as they are (0..15, the
/// 7-bit operand of `i32x4.relaxed_dot_i8x16_i7x16_add_s`), zero points applied to the block's
/// integer sum as `sum q x - z sum x` (the same integer as the i16 panel's `sum (q - z) x`, so the
/// same floats as [`Q4::gemm_tile`]).
#[derive(Debug, Clone, Copy)]
#[allow(clippy::type_complexity)]
pub struct Gemm8 {
    /// Four weight rows' nibbles into the panel: block `b`, group `g` (elements `4g..4g + 3`),
    /// column `i`, element `e` at `panel[((8b + g) * 4 + i) * 4 + e]` (`nb * 128` bytes).
    pub unpack: fn([&[u8]; 4], &mut [u8]),
    /// One register tile of `x.len()` (1 to 6) int8 rows (natural order) against a panel:
    /// `zp[4b + i]` column `i`'s zero point in block `b`, `sw[4b + i]` its scale, `xsum[r][b]`
    /// row `r`'s block sums, `sx[r][b]` its block scales.
    pub tile: fn(&[u8], &[i32], &[f32], &[&[i8]], &[&[i32]], &[&[f32]], &mut [[f32; 4]]),
}

/// A variant's `gemm_tile::<R>` for the row count it is given: the tile stays a const-generic,
/// fully unrolled function; the match runs once per tile.
macro_rules! by_rows {
    ($m:ident) => {
        |panel, sw, x, sx, out| {
            let (x, sx): (&[&[i16]], &[&[f32]]) = (x, sx);
            let rows = |i: usize| x[i];
            let scales = |i: usize| sx[i];
            match x.len() {
                6 => out.copy_from_slice(&$m::gemm_tile::<6>(panel, sw, std::array::from_fn(rows), std::array::from_fn(scales))),
                5 => out.copy_from_slice(&$m::gemm_tile::<5>(panel, sw, std::array::from_fn(rows), std::array::from_fn(scales))),
                4 => out.copy_from_slice(&$m::gemm_tile::<4>(panel, sw, std::array::from_fn(rows), std::array::from_fn(scales))),
                3 => out.copy_from_slice(&$m::gemm_tile::<3>(panel, sw, std::array::from_fn(rows), std::array::from_fn(scales))),
                2 => out.copy_from_slice(&$m::gemm_tile::<2>(panel, sw, std::array::from_fn(rows), std::array::from_fn(scales))),
                _ => out.copy_from_slice(&$m::gemm_tile::<1>(panel, sw, [x[0]], [sx[0]])),
            }
        }
    };
}

/// The table of module `$m`'s kernels (every variant names them alike).
macro_rules! table {
    ($m:ident) => {
        Q4 {
            dot_row: $m::dot_row,
            dot_rows4: $m::dot_rows4,
            dot_row_q8: $m::dot_row_q8,
            dot_rows4_q8: $m::dot_rows4_q8,
            dot_row_q16: $m::dot_row_q16,
            dot_rows4_q16: $m::dot_rows4_q16,
            unpack_panel: $m::unpack_panel,
            gemm_tile: by_rows!($m),
            gemm8: None,
        }
    };
}

/// The compiled variants, slowest first.
pub static VARIANTS: &[super::Variant<Q4>] = &[
    super::Variant { name: "portable", kernels: table!(portable) },
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    super::Variant { name: "simd128", kernels: table!(simd128) },
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
    super::Variant {
        name: "relaxed-simd",
        kernels: Q4 {
            dot_row_q8: relaxed::dot_row_q8,
            dot_rows4_q8: relaxed::dot_rows4_q8,
            gemm8: Some(Gemm8 { unpack: relaxed::unpack_panel8, tile: relaxed::gemm_tile8 }),
            ..table!(simd128)
        },
    },
];

/// The fastest compiled variant.
pub fn best() -> &'static Q4 {
    super::pick(VARIANTS)
}

/// The reference.
pub mod portable {
    use super::BLOCK;

    /// Portable twin of the wasm SIMD kernel, summing in its order (four lanes, lane `l` taking
    /// elements `4i + l` of each half-block): the same float result as the browser, and four
    /// independent chains that LLVM vectorizes natively (one serial sum made eval-encoder's
    /// int4 MiniLM ~20x slower than fp32).
    pub fn dot_row(w: &[u8], s: &[f32], x: &[f32]) -> f32 {
        let mut acc = [0f32; 4];
        for (b, scale) in s.iter().enumerate() {
            let bytes = &w[b * 16..(b + 1) * 16];
            let xb = &x[b * BLOCK..(b + 1) * BLOCK];
            let mut sum = [0f32; 4];
            for (half, shift) in [(0, 0), (BLOCK / 2, 4)] {
                for i in 0..4 {
                    for (l, s) in sum.iter_mut().enumerate() {
                        *s += ((bytes[4 * i + l] >> shift) & 0x0f) as f32 * xb[half + 4 * i + l];
                    }
                }
            }
            for (a, s) in acc.iter_mut().zip(sum) {
                *a += s * scale;
            }
        }
        acc[0] + acc[1] + acc[2] + acc[3]
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

    /// `sum_b sw[b] * sx[b] * sum_j q[b][j] * xq[b][j]` on 16-bit activations (`xq`
    /// de-interleaved per block), the same floats as the SIMD twin: four lanes, lane `l` taking
    /// elements `8g + 2l` and `8g + 2l + 1` of each block (`i32x4.dot_i16x8_s`'s grouping). A
    /// lane's integer sum is at most 8 * 15 * 32767, exact in i32 and in f32 (< 2^24).
    pub fn dot_row_q16(w: &[u8], sw: &[f32], xq: &[i16], sx: &[f32]) -> f32 {
        let mut acc = [0f32; 4];
        for b in 0..sw.len() {
            let bytes = &w[b * 16..(b + 1) * 16];
            let xb = &xq[b * BLOCK..(b + 1) * BLOCK];
            let scale = sw[b] * sx[b];
            // Lane l of the SIMD dot products holds elements 2l, 2l + 1 of each group of 8.
            for (l, a) in acc.iter_mut().enumerate() {
                let mut d = 0i32;
                for g in 0..4 {
                    for e in 0..2 {
                        let j = 8 * g + 2 * l + e;
                        let byte = bytes[j % 16];
                        let q = if j < 16 { byte & 0x0f } else { byte >> 4 };
                        d += q as i32 * xb[j] as i32;
                    }
                }
                *a += d as f32 * scale;
            }
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3])
    }

    pub fn dot_rows4_q16(w: &[u8], sw: &[f32], xq: [&[i16]; 4], sx: [&[f32]; 4]) -> [f32; 4] {
        [0, 1, 2, 3].map(|r| dot_row_q16(w, sw, xq[r], sx[r]))
    }

    pub fn unpack_panel(w: [&[u8]; 4], zps: Option<[&[u8]; 4]>, panel: &mut [i16]) {
        for (i, row) in w.iter().enumerate() {
            for (b, bytes) in row.chunks_exact(16).enumerate() {
                let z = zps.map_or(8, |z| z[i][b] as i16);
                for (p, byte) in bytes.iter().enumerate() {
                    panel[((b * 16 + p) * 4 + i) * 2] = (byte & 0x0f) as i16 - z;
                    panel[((b * 16 + p) * 4 + i) * 2 + 1] = (byte >> 4) as i16 - z;
                }
            }
        }
    }

    pub fn gemm_tile<const R: usize>(panel: &[i16], sw: &[f32], x: [&[i16]; R], sx: [&[f32]; R]) -> [[f32; 4]; R] {
        let mut out = [[0f32; 4]; R];
        for (b, blk) in panel.chunks_exact(128).take(sw.len() / 4).enumerate() {
            for r in 0..R {
                let xb = &x[r][b * BLOCK..(b + 1) * BLOCK];
                let mut d = [0i32; 4];
                // Panel index (p * 4 + i) * 2 + e: column i, element 2p + e. Fixed-trip loops
                // (not j / 8, j / 2 % 4 per element) so LLVM unrolls and vectorizes them:
                // with the div/mod form eval-encoder ran int4 MiniLM 50x slower than fp32.
                for p in 0..BLOCK / 2 {
                    for (i, di) in d.iter_mut().enumerate() {
                        *di += blk[(p * 4 + i) * 2] as i32 * xb[2 * p] as i32 + blk[(p * 4 + i) * 2 + 1] as i32 * xb[2 * p + 1] as i32;
                    }
                }
                for i in 0..4 {
                    out[r][i] += d[i] as f32 * (sw[b * 4 + i] * sx[r][b]);
                }
            }
        }
        out
    }
}

/// wasm SIMD128.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod simd128 {
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

    pub(super) fn hsum(v: v128) -> f32 {
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
        // SAFETY: `block_dot_q8` reads one block of 32 int8 at the pointer it is given.
        hsum(unsafe { int_rows::<i8, 1>(w, sw, [xq], [sx], |lo, hi, xp| block_dot_q8(lo, hi, xp)) }[0])
    }

    pub fn dot_rows4_q8(w: &[u8], sw: &[f32], xq: [&[i8]; 4], sx: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: as in `dot_row_q8`.
        unsafe { int_rows::<i8, 4>(w, sw, xq, sx, |lo, hi, xp| block_dot_q8(lo, hi, xp)) }.map(hsum)
    }

    /// The integer-activation GEMV loop over `R` activation rows: each weight block's nibbles
    /// (`lo`, `hi`) unpacked once, `block(lo, hi, x)` giving one row's integer partial sums for
    /// the block at `x`, scaled by `sw[b] * sx[r][b]` and added per lane. Returns the lanes.
    ///
    /// # Safety
    /// `block` must read at most one block (32 values) at the pointer it is given.
    #[inline(always)]
    pub(super) unsafe fn int_rows<X, const R: usize>(w: &[u8], sw: &[f32], xq: [&[X]; R], sx: [&[f32]; R], block: impl Fn(v128, v128, *const X) -> v128) -> [v128; R] {
        let nb = sw.len();
        assert!(w.len() >= nb * BLOCK / 2 && xq.iter().all(|r| r.len() >= nb * BLOCK) && sx.iter().all(|r| r.len() >= nb));
        let mask = u8x16_splat(0x0f);
        let mut acc = [f32x4_splat(0.0); R];
        // SAFETY: loads stay inside `w` and `xq[r]` (one block each), whose lengths are asserted above.
        unsafe {
            for b in 0..nb {
                let bytes = v128_load(w.as_ptr().add(b * 16) as *const v128);
                let (lo, hi) = (v128_and(bytes, mask), u8x16_shr(bytes, 4));
                let swb = *sw.get_unchecked(b);
                for r in 0..R {
                    let d = block(lo, hi, xq[r].as_ptr().add(b * BLOCK));
                    let scale = f32x4_splat(swb * *sx[r].get_unchecked(b));
                    acc[r] = f32x4_add(acc[r], f32x4_mul(f32x4_convert_i32x4(d), scale));
                }
            }
        }
        acc
    }

    /// One block's integer dot product on 16-bit activations as i32x4 partial sums (lane `l`:
    /// elements `8g + 2l`, `8g + 2l + 1` of the de-interleaved block, `g` in 0..4). Products are
    /// at most 15 * 32767, eight per lane: no overflow, and exact in f32 (< 2^24).
    #[inline(always)]
    unsafe fn block_dot_q16(lo: v128, hi: v128, xp: *const i16) -> v128 {
        let x = |i: usize| v128_load(xp.add(8 * i) as *const v128);
        let a = i32x4_dot_i16x8(u16x8_extend_low_u8x16(lo), x(0));
        let b = i32x4_dot_i16x8(u16x8_extend_high_u8x16(lo), x(1));
        let c = i32x4_dot_i16x8(u16x8_extend_low_u8x16(hi), x(2));
        let d = i32x4_dot_i16x8(u16x8_extend_high_u8x16(hi), x(3));
        i32x4_add(i32x4_add(a, b), i32x4_add(c, d))
    }

    /// `sum_b sw[b] * sx[b] * sum_j q[b][j] * xq[b][j]` on 16-bit activations.
    pub fn dot_row_q16(w: &[u8], sw: &[f32], xq: &[i16], sx: &[f32]) -> f32 {
        // SAFETY: `block_dot_q16` reads one block of 32 i16 at the pointer it is given.
        hsum2(unsafe { int_rows::<i16, 1>(w, sw, [xq], [sx], |lo, hi, xp| block_dot_q16(lo, hi, xp)) }[0])
    }

    pub fn dot_rows4_q16(w: &[u8], sw: &[f32], xq: [&[i16]; 4], sx: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: as in `dot_row_q16`.
        unsafe { int_rows::<i16, 4>(w, sw, xq, sx, |lo, hi, xp| block_dot_q16(lo, hi, xp)) }.map(hsum2)
    }

    /// `(l0 + l1) + (l2 + l3)`, the portable twin's order.
    fn hsum2(v: v128) -> f32 {
        (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v)) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
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

    /// Four weight rows (`w[i]`: `nb` blocks of 16 bytes) into the GEMM panel (layout in
    /// [`crate::cpu::q4_matmul::Q4Matrix::gemm_q8`]), zero points subtracted.
    pub fn unpack_panel(w: [&[u8]; 4], zps: Option<[&[u8]; 4]>, panel: &mut [i16]) {
        let nb = w[0].len() / 16;
        assert!(w.iter().all(|r| r.len() >= nb * 16) && panel.len() >= nb * 128);
        assert!(zps.is_none_or(|z| z.iter().all(|r| r.len() >= nb)));
        // SAFETY: loads stay inside `w[i]` (asserted), stores inside `panel` (asserted).
        unsafe {
            let out = panel.as_mut_ptr() as *mut v128;
            for b in 0..nb {
                let z = match zps {
                    None => i16x8_splat(8),
                    Some(z) => {
                        let [z0, z1, z2, z3] = [0, 1, 2, 3].map(|i| *z[i].get_unchecked(b) as i16);
                        i16x8(z0, z0, z1, z1, z2, z2, z3, z3)
                    }
                };
                for (h, e) in element_bytes(w, b).into_iter().enumerate() {
                    // 16-bit lanes are element pairs: interleave columns 0/1 and 2/3, then the two.
                    let a = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(e[0], e[1]);
                    let a2 = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(e[0], e[1]);
                    let c = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(e[2], e[3]);
                    let c2 = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(e[2], e[3]);
                    let quads = [
                        i32x4_shuffle::<0, 4, 1, 5>(a, c),
                        i32x4_shuffle::<2, 6, 3, 7>(a, c),
                        i32x4_shuffle::<0, 4, 1, 5>(a2, c2),
                        i32x4_shuffle::<2, 6, 3, 7>(a2, c2),
                    ];
                    for (j, u) in quads.into_iter().enumerate() {
                        let p = b * 16 + h * 8 + 2 * j;
                        v128_store(out.add(p), i16x8_sub(u16x8_extend_low_u8x16(u), z));
                        v128_store(out.add(p + 1), i16x8_sub(u16x8_extend_high_u8x16(u), z));
                    }
                }
            }
        }
    }

    /// Block `b` of four weight rows (16 bytes each, at `w[i][16b..]`) as each column's 32
    /// nibbles in element order, one byte each (byte `p` of a row holds elements `2p`, `2p + 1`):
    /// `[elements 0..15, elements 16..31]` per column.
    ///
    /// # Safety
    /// Every `w[i]` holds at least `16 (b + 1)` bytes.
    #[inline(always)]
    pub(super) unsafe fn element_bytes(w: [&[u8]; 4], b: usize) -> [[v128; 4]; 2] {
        let mask = u8x16_splat(0x0f);
        let mut first = [u8x16_splat(0); 4];
        let mut second = [u8x16_splat(0); 4];
        for i in 0..4 {
            // SAFETY: the caller's bound.
            let bytes = unsafe { v128_load(w[i].as_ptr().add(b * 16) as *const v128) };
            let (lo, hi) = (v128_and(bytes, mask), u8x16_shr(bytes, 4));
            first[i] = i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(lo, hi);
            second[i] = i8x16_shuffle::<8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31>(lo, hi);
        }
        [first, second]
    }

    /// `R` activation rows (i16, natural order) against a four-column panel:
    /// `out[r][i] = sum_b sw[4b + i] * sx[r][b] * sum_j panel(b, j, i) * x[r][32b + j]`.
    /// Products are at most 15 * 127 and a block sums 32: exact in i32.
    #[inline(always)]
    pub fn gemm_tile<const R: usize>(panel: &[i16], sw: &[f32], x: [&[i16]; R], sx: [&[f32]; R]) -> [[f32; 4]; R] {
        let nb = sw.len() / 4;
        assert!(panel.len() >= nb * 128 && x.iter().all(|r| r.len() >= nb * BLOCK) && sx.iter().all(|r| r.len() >= nb));
        let mut acc = [f32x4_splat(0.0); R];
        // SAFETY: loads stay inside `panel`, `sw`, `x[r]` and `sx[r]`, whose lengths are asserted above.
        unsafe {
            let pp = panel.as_ptr() as *const v128;
            for b in 0..nb {
                let mut d = [i32x4_splat(0); R];
                for p in 0..BLOCK / 2 {
                    let w = v128_load(pp.add(b * 16 + p));
                    for r in 0..R {
                        let pair = v128_load32_splat(x[r].as_ptr().add(b * BLOCK + 2 * p) as *const u32);
                        d[r] = i32x4_add(d[r], i32x4_dot_i16x8(w, pair));
                    }
                }
                let s = v128_load(sw.as_ptr().add(4 * b) as *const v128);
                for r in 0..R {
                    let scale = f32x4_mul(s, f32x4_splat(*sx[r].get_unchecked(b)));
                    acc[r] = f32x4_add(acc[r], f32x4_mul(f32x4_convert_i32x4(d[r]), scale));
                }
            }
        }
        acc.map(|v| [f32x4_extract_lane::<0>(v), f32x4_extract_lane::<1>(v), f32x4_extract_lane::<2>(v), f32x4_extract_lane::<3>(v)])
    }
}

/// wasm relaxed SIMD (the `relaxed-simd` builds, `pkg/relaxed/` and `pkg/threads-relaxed/`):
/// the int8-activation GEMV's block dot product as two `i32x4.relaxed_dot_i8x16_i7x16_add_s`,
/// and the int8-activation GEMM ([`super::Gemm8`]) on them; the rest [`simd128`]'s. The nibbles
/// (0..15) are the 7-bit operand, where every engine's result is defined and the same; a lane
/// sums a pair of products per half-block (at most 2 * 15 * 128 before the i32 add, no i16
/// saturation on any lowering). In the GEMV only the lanes' grouping differs from [`simd128`]
/// (lane `l` takes elements `4l..4l + 3` of each half-block): the block sums are the same
/// integers. A module using these instructions fails validation where relaxed SIMD is missing,
/// so this is its own build, which `auto.js` picks after a tiny relaxed module both validates
/// and computes the standard's result.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
pub mod relaxed {
    use core::arch::wasm32::*;

    use super::simd128::{element_bytes, hsum, int_rows};
    use super::BLOCK;

    /// [`super::simd128`]'s `block_dot_q8` with relaxed dot products.
    #[inline]
    #[target_feature(enable = "relaxed-simd")]
    unsafe fn block_dot_q8(lo: v128, hi: v128, xp: *const i8) -> v128 {
        // SAFETY: the caller's pointer holds one block of 32 int8.
        let (xe, xo) = unsafe { (v128_load(xp as *const v128), v128_load(xp.add(16) as *const v128)) };
        i32x4_relaxed_dot_i8x16_i7x16_add(xo, hi, i32x4_relaxed_dot_i8x16_i7x16_add(xe, lo, i32x4_splat(0)))
    }

    /// `sum_b sw[b] * sx[b] * sum_j q[b][j] * xq[b][j]`.
    #[target_feature(enable = "relaxed-simd")]
    pub fn dot_row_q8(w: &[u8], sw: &[f32], xq: &[i8], sx: &[f32]) -> f32 {
        // SAFETY: `block_dot_q8` reads one block of 32 int8 at the pointer it is given.
        hsum(unsafe { int_rows::<i8, 1>(w, sw, [xq], [sx], |lo, hi, xp| block_dot_q8(lo, hi, xp)) }[0])
    }

    #[target_feature(enable = "relaxed-simd")]
    pub fn dot_rows4_q8(w: &[u8], sw: &[f32], xq: [&[i8]; 4], sx: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: as in `dot_row_q8`.
        unsafe { int_rows::<i8, 4>(w, sw, xq, sx, |lo, hi, xp| block_dot_q8(lo, hi, xp)) }.map(hsum)
    }

    /// Four weight rows' nibbles into [`super::Gemm8`]'s byte panel: per block, each column's
    /// elements as bytes (as [`super::simd128::unpack_panel`] orders them), read as u32 lanes of
    /// four elements and transposed so one vector holds a group of four elements of the four
    /// columns.
    pub fn unpack_panel8(w: [&[u8]; 4], panel: &mut [u8]) {
        let nb = w[0].len() / 16;
        assert!(w.iter().all(|r| r.len() >= nb * 16) && panel.len() >= nb * 128);
        // SAFETY: loads stay inside `w[i]` and stores inside `panel` (both asserted).
        unsafe {
            let out = panel.as_mut_ptr() as *mut v128;
            for b in 0..nb {
                for (h, q) in element_bytes(w, b).into_iter().enumerate() {
                    let t0 = i32x4_shuffle::<0, 4, 1, 5>(q[0], q[1]);
                    let t1 = i32x4_shuffle::<2, 6, 3, 7>(q[0], q[1]);
                    let t2 = i32x4_shuffle::<0, 4, 1, 5>(q[2], q[3]);
                    let t3 = i32x4_shuffle::<2, 6, 3, 7>(q[2], q[3]);
                    let g = out.add(b * 8 + h * 4);
                    v128_store(g, i32x4_shuffle::<0, 1, 4, 5>(t0, t2));
                    v128_store(g.add(1), i32x4_shuffle::<2, 3, 6, 7>(t0, t2));
                    v128_store(g.add(2), i32x4_shuffle::<0, 1, 4, 5>(t1, t3));
                    v128_store(g.add(3), i32x4_shuffle::<2, 3, 6, 7>(t1, t3));
                }
            }
        }
    }

    /// [`super::Gemm8::tile`]: the tile for `x.len()` rows (the match runs once per tile).
    #[allow(clippy::type_complexity)]
    #[target_feature(enable = "relaxed-simd")]
    pub fn gemm_tile8(panel: &[u8], zp: &[i32], sw: &[f32], x: &[&[i8]], xsum: &[&[i32]], sx: &[&[f32]], out: &mut [[f32; 4]]) {
        macro_rules! rows {
            ($r:literal) => {
                out.copy_from_slice(&tile8::<$r>(panel, zp, sw, std::array::from_fn(|i| x[i]), std::array::from_fn(|i| xsum[i]), std::array::from_fn(|i| sx[i])))
            };
        }
        match x.len() {
            6 => rows!(6),
            5 => rows!(5),
            4 => rows!(4),
            3 => rows!(3),
            2 => rows!(2),
            _ => rows!(1),
        }
    }

    /// `R` int8 rows against a byte panel. A lane adds four products of at most 127 * 15 per
    /// relaxed dot product, 32 per block: exact in i32, as is `z * sum x`.
    #[inline]
    #[target_feature(enable = "relaxed-simd")]
    fn tile8<const R: usize>(panel: &[u8], zp: &[i32], sw: &[f32], x: [&[i8]; R], xsum: [&[i32]; R], sx: [&[f32]; R]) -> [[f32; 4]; R] {
        let nb = sw.len() / 4;
        assert!(panel.len() >= nb * 128 && zp.len() >= nb * 4 && x.iter().all(|r| r.len() >= nb * BLOCK));
        assert!(xsum.iter().all(|r| r.len() >= nb) && sx.iter().all(|r| r.len() >= nb));
        let mut acc = [f32x4_splat(0.0); R];
        // SAFETY: loads stay inside `panel`, `zp`, `sw`, `x[r]`, `xsum[r]` and `sx[r]` (asserted).
        unsafe {
            let pp = panel.as_ptr() as *const v128;
            for b in 0..nb {
                let mut d = [i32x4_splat(0); R];
                for g in 0..8 {
                    let w = v128_load(pp.add(b * 8 + g));
                    for r in 0..R {
                        let xg = v128_load32_splat(x[r].as_ptr().add(b * BLOCK + 4 * g) as *const u32);
                        d[r] = i32x4_relaxed_dot_i8x16_i7x16_add(xg, w, d[r]);
                    }
                }
                let z = v128_load(zp.as_ptr().add(4 * b) as *const v128);
                let s = v128_load(sw.as_ptr().add(4 * b) as *const v128);
                for r in 0..R {
                    let exact = i32x4_sub(d[r], i32x4_mul(z, i32x4_splat(*xsum[r].get_unchecked(b))));
                    let scale = f32x4_mul(s, f32x4_splat(*sx[r].get_unchecked(b)));
                    acc[r] = f32x4_add(acc[r], f32x4_mul(f32x4_convert_i32x4(exact), scale));
                }
            }
        }
        acc.map(|v| [f32x4_extract_lane::<0>(v), f32x4_extract_lane::<1>(v), f32x4_extract_lane::<2>(v), f32x4_extract_lane::<3>(v)])
    }
}
