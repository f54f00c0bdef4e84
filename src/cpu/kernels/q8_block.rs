//! The 8-bit block `MatMulNBits` kernels (`cpu::q8_block_matmul`): one weight row's block dot
//! products, on int8 or f32 activations. Weights are u8 with the zero point 128 (`q ^ 0x80` as i8).

/// Elements per quantization block.
pub const BLOCK: usize = 32;

/// One variant's kernels.
#[derive(Debug)]
#[allow(clippy::type_complexity)] // kernel signatures, each written once, here
pub struct Q8Block {
    /// `sum_b sw[b] * sx[b] * sum_j (w[b][j] - 128) * xq[b][j]`.
    pub dot_q8: fn(&[u8], &[f32], &[i8], &[f32]) -> f32,
    /// `sum_b sw[b] * sum_j (w[b][j] - 128) * x[b][j]`.
    pub dot_f32: fn(&[u8], &[f32], &[f32]) -> f32,
    /// [`Q8Block::dot_q8`] on activations rounded to 16 bits per block (natural order).
    pub dot_q16: fn(&[u8], &[f32], &[i16], &[f32]) -> f32,
}

/// The compiled variants, slowest first.
pub static VARIANTS: &[super::Variant<Q8Block>] = &[
    super::Variant { name: "portable", kernels: Q8Block { dot_q8: portable::dot_q8, dot_f32: portable::dot_f32, dot_q16: portable::dot_q16 } },
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    super::Variant { name: "simd128", kernels: Q8Block { dot_q8: simd128::dot_q8, dot_f32: simd128::dot_f32, dot_q16: simd128::dot_q16 } },
];

/// The fastest compiled variant.
pub fn best() -> &'static Q8Block {
    super::pick(VARIANTS)
}

/// The reference: plain loops (LLVM vectorizes them natively).
pub mod portable {
    use super::BLOCK;

    pub fn dot_q8(w: &[u8], sw: &[f32], xq: &[i8], sx: &[f32]) -> f32 {
        let mut acc = 0f32;
        for (b, (s, t)) in sw.iter().zip(sx).enumerate() {
            let (wb, xb) = (&w[b * BLOCK..(b + 1) * BLOCK], &xq[b * BLOCK..(b + 1) * BLOCK]);
            let d: i32 = wb.iter().zip(xb).map(|(w, x)| ((*w ^ 0x80) as i8 as i32) * (*x as i32)).sum();
            acc += d as f32 * (s * t);
        }
        acc
    }

    /// The SIMD twin's floats: four lanes, lane `l` taking elements `8g + 2l` and `8g + 2l + 1`
    /// of each block (`i32x4.dot_i16x8_s`'s grouping), each lane's integer sum (at most
    /// 8 * 128 * 32767, within i32) converted to f32, scaled and added per lane.
    pub fn dot_q16(w: &[u8], sw: &[f32], xq: &[i16], sx: &[f32]) -> f32 {
        let mut acc = [0f32; 4];
        for (b, (s, t)) in sw.iter().zip(sx).enumerate() {
            let (wb, xb) = (&w[b * BLOCK..(b + 1) * BLOCK], &xq[b * BLOCK..(b + 1) * BLOCK]);
            for (l, a) in acc.iter_mut().enumerate() {
                let d: i32 = (0..4).flat_map(|g| [8 * g + 2 * l, 8 * g + 2 * l + 1]).map(|j| ((wb[j] ^ 0x80) as i8 as i32) * xb[j] as i32).sum();
                *a += d as f32 * (s * t);
            }
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3])
    }

    /// Sums in the SIMD128 kernel's order (four lanes, lane `l` taking elements `4i + l`): the
    /// browser's float result, and independent chains LLVM vectorizes (a serial sum does not).
    pub fn dot_f32(w: &[u8], sw: &[f32], x: &[f32]) -> f32 {
        let mut acc = [0f32; 4];
        for (b, s) in sw.iter().enumerate() {
            let (wb, xb) = (&w[b * BLOCK..(b + 1) * BLOCK], &x[b * BLOCK..(b + 1) * BLOCK]);
            let mut sum = [0f32; 4];
            for i in 0..BLOCK / 4 {
                for (l, v) in sum.iter_mut().enumerate() {
                    *v += ((wb[4 * i + l] ^ 0x80) as i8 as f32) * xb[4 * i + l];
                }
            }
            for (a, v) in acc.iter_mut().zip(sum) {
                *a += v * s;
            }
        }
        acc[0] + acc[1] + acc[2] + acc[3]
    }
}

/// wasm SIMD128.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod simd128 {
    use core::arch::wasm32::*;

    use super::BLOCK;

    fn hsum(v: v128) -> f32 {
        f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v) + f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v)
    }

    pub fn dot_q8(w: &[u8], sw: &[f32], xq: &[i8], sx: &[f32]) -> f32 {
        let nb = sw.len();
        assert!(w.len() >= nb * BLOCK && xq.len() >= nb * BLOCK && sx.len() >= nb);
        let flip = u8x16_splat(0x80);
        let mut acc = f32x4_splat(0.0);
        // SAFETY: every load reads inside `w` / `xq`, whose lengths are asserted above.
        unsafe {
            for b in 0..nb {
                let mut d = i32x4_splat(0);
                for h in [0, 16] {
                    let wv = v128_xor(v128_load(w.as_ptr().add(b * BLOCK + h) as *const v128), flip);
                    let xv = v128_load(xq.as_ptr().add(b * BLOCK + h) as *const v128);
                    // |w * x| <= 128 * 127: each i16 product fits; pairs are summed in i32.
                    d = i32x4_add(d, i32x4_extadd_pairwise_i16x8(i16x8_extmul_low_i8x16(wv, xv)));
                    d = i32x4_add(d, i32x4_extadd_pairwise_i16x8(i16x8_extmul_high_i8x16(wv, xv)));
                }
                let s = f32x4_splat(*sw.get_unchecked(b) * *sx.get_unchecked(b));
                acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(d), s));
            }
        }
        hsum(acc)
    }

    pub fn dot_q16(w: &[u8], sw: &[f32], xq: &[i16], sx: &[f32]) -> f32 {
        let nb = sw.len();
        assert!(w.len() >= nb * BLOCK && xq.len() >= nb * BLOCK && sx.len() >= nb);
        let flip = u8x16_splat(0x80);
        let mut acc = f32x4_splat(0.0);
        // SAFETY: every load reads inside `w` / `xq`, whose lengths are asserted above.
        unsafe {
            for b in 0..nb {
                let mut d = i32x4_splat(0);
                for h in [0, 16] {
                    let wv = v128_xor(v128_load(w.as_ptr().add(b * BLOCK + h) as *const v128), flip);
                    let xp = xq.as_ptr().add(b * BLOCK + h);
                    d = i32x4_add(d, i32x4_dot_i16x8(i16x8_extend_low_i8x16(wv), v128_load(xp as *const v128)));
                    d = i32x4_add(d, i32x4_dot_i16x8(i16x8_extend_high_i8x16(wv), v128_load(xp.add(8) as *const v128)));
                }
                let s = f32x4_splat(*sw.get_unchecked(b) * *sx.get_unchecked(b));
                acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(d), s));
            }
        }
        (f32x4_extract_lane::<0>(acc) + f32x4_extract_lane::<1>(acc)) + (f32x4_extract_lane::<2>(acc) + f32x4_extract_lane::<3>(acc))
    }

    pub fn dot_f32(w: &[u8], sw: &[f32], x: &[f32]) -> f32 {
        let nb = sw.len();
        assert!(w.len() >= nb * BLOCK && x.len() >= nb * BLOCK);
        let flip = u8x16_splat(0x80);
        let mut acc = f32x4_splat(0.0);
        // SAFETY: every load reads inside `w` / `x`, whose lengths are asserted above.
        unsafe {
            for b in 0..nb {
                let mut sum = f32x4_splat(0.0);
                for h in [0, 16] {
                    let wv = v128_xor(v128_load(w.as_ptr().add(b * BLOCK + h) as *const v128), flip);
                    let (lo, hi) = (i16x8_extend_low_i8x16(wv), i16x8_extend_high_i8x16(wv));
                    let parts = [i32x4_extend_low_i16x8(lo), i32x4_extend_high_i16x8(lo), i32x4_extend_low_i16x8(hi), i32x4_extend_high_i16x8(hi)];
                    for (i, p) in parts.into_iter().enumerate() {
                        let xv = v128_load(x.as_ptr().add(b * BLOCK + h + 4 * i) as *const v128);
                        sum = f32x4_add(sum, f32x4_mul(f32x4_convert_i32x4(p), xv));
                    }
                }
                acc = f32x4_add(acc, f32x4_mul(sum, f32x4_splat(*sw.get_unchecked(b))));
            }
        }
        hsum(acc)
    }
}
