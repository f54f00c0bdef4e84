//! The `MatMulInteger` kernels (`cpu::q8_matmul`): i8 weight rows against i16 activation
//! rows, exact in i32.

/// One variant's kernels.
#[derive(Debug)]
pub struct Q8 {
    /// One row's `sum_k x[k] * w[k]`.
    pub dot_row: fn(&[i8], &[i16]) -> i32,
    /// Four rows' `sum_k x[r][k] * w[k]` (each weight widened once).
    pub dot_rows4: fn(&[i8], [&[i16]; 4]) -> [i32; 4],
}

/// The compiled variants, slowest first.
pub static VARIANTS: &[super::Variant<Q8>] = &[
    super::Variant { name: "portable", kernels: Q8 { dot_row: portable::dot_row, dot_rows4: portable::dot_rows4 } },
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    super::Variant { name: "simd128", kernels: Q8 { dot_row: simd128::dot_row, dot_rows4: simd128::dot_rows4 } },
];

/// The fastest compiled variant.
pub fn best() -> &'static Q8 {
    super::pick(VARIANTS)
}

/// The reference.
pub mod portable {
    pub fn dot_rows4(w: &[i8], x: [&[i16]; 4]) -> [i32; 4] {
        x.map(|r| dot_row(w, r))
    }

    pub fn dot_row(w: &[i8], x: &[i16]) -> i32 {
        w.iter().zip(x).map(|(a, b)| *a as i32 * *b as i32).sum()
    }
}

/// wasm SIMD128.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod simd128 {
    use core::arch::wasm32::*;

    /// Four rows' `sum_k x[r][k] * w[k]`; 16 weights widened once per four rows.
    pub fn dot_rows4(w: &[i8], x: [&[i16]; 4]) -> [i32; 4] {
        let k = w.len();
        assert!(x.iter().all(|r| r.len() >= k));
        let body = k - k % 16;
        let mut acc = [i32x4_splat(0); 4];
        // SAFETY: loads stay below `body` <= len of `w` and of every `x[r]` (asserted).
        unsafe {
            for j in (0..body).step_by(16) {
                let wv = v128_load(w.as_ptr().add(j) as *const v128);
                let (lo, hi) = (i16x8_extend_low_i8x16(wv), i16x8_extend_high_i8x16(wv));
                for r in 0..4 {
                    let xp = x[r].as_ptr().add(j);
                    let d = i32x4_add(i32x4_dot_i16x8(lo, v128_load(xp as *const v128)), i32x4_dot_i16x8(hi, v128_load(xp.add(8) as *const v128)));
                    acc[r] = i32x4_add(acc[r], d);
                }
            }
        }
        let mut out = acc.map(|v| i32x4_extract_lane::<0>(v) + i32x4_extract_lane::<1>(v) + i32x4_extract_lane::<2>(v) + i32x4_extract_lane::<3>(v));
        for (o, xr) in out.iter_mut().zip(x) {
            *o += (body..k).map(|j| w[j] as i32 * xr[j] as i32).sum::<i32>();
        }
        out
    }

    /// One row's `sum_k x[k] * w[k]`.
    pub fn dot_row(w: &[i8], x: &[i16]) -> i32 {
        let k = w.len();
        assert!(x.len() >= k);
        let body = k - k % 16;
        let mut acc = i32x4_splat(0);
        // SAFETY: loads stay below `body` <= len of `w` and `x` (asserted).
        unsafe {
            for j in (0..body).step_by(16) {
                let wv = v128_load(w.as_ptr().add(j) as *const v128);
                let xp = x.as_ptr().add(j);
                acc = i32x4_add(acc, i32x4_dot_i16x8(i16x8_extend_low_i8x16(wv), v128_load(xp as *const v128)));
                acc = i32x4_add(acc, i32x4_dot_i16x8(i16x8_extend_high_i8x16(wv), v128_load(xp.add(8) as *const v128)));
            }
        }
        let tail: i32 = (body..k).map(|j| w[j] as i32 * x[j] as i32).sum();
        i32x4_extract_lane::<0>(acc) + i32x4_extract_lane::<1>(acc) + i32x4_extract_lane::<2>(acc) + i32x4_extract_lane::<3>(acc) + tail
    }
}
