//! The attention kernels (`cpu::attention`): scores of query rows against a page of keys, and
//! the probability-weighted sum of a page of values, written once over the [`F4`] vector type
//! and instantiated per variant.

use super::f4::{self, F4};

/// One variant's kernels: the tile shapes `KvCache::attend` uses.
#[derive(Debug)]
#[allow(clippy::type_complexity)] // kernel signatures, each written once, here
pub struct Attention {
    /// [`qk_scores`] for four query rows, two keys at a time.
    pub qk_rows4: fn([&[f32]; 4], &[f32], usize, usize, &mut [f32], usize),
    /// [`qk_scores`] for one query row, four keys at a time.
    pub qk_row: fn([&[f32]; 1], &[f32], usize, usize, &mut [f32], usize),
    /// [`pv`] for four rows, eight lanes at a time (`d` a multiple of 8).
    pub pv_rows4: fn(&[f32], usize, &[f32], usize, usize, &mut [f32]),
    /// [`pv`] for one row, sixteen lanes at a time (`d` a multiple of 16).
    pub pv_row16: fn(&[f32], usize, &[f32], usize, usize, &mut [f32]),
    /// [`pv`] for one row, four lanes at a time.
    pub pv_row4: fn(&[f32], usize, &[f32], usize, usize, &mut [f32]),
}

const fn table<V: F4>() -> Attention {
    Attention { qk_rows4: qk_scores::<V, 4, 2>, qk_row: qk_scores::<V, 1, 4>, pv_rows4: pv::<V, 4, 2>, pv_row16: pv::<V, 1, 4>, pv_row4: pv::<V, 1, 1> }
}

/// The compiled variants, slowest first.
pub static VARIANTS: &[super::Variant<Attention>] = &[
    super::Variant { name: "portable", kernels: table::<f4::Portable>() },
    #[cfg(target_arch = "x86_64")]
    super::Variant { name: "sse2", kernels: table::<f4::Sse2>() },
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    super::Variant { name: "simd128", kernels: table::<f4::Simd128>() },
];

/// The fastest compiled variant.
pub fn best() -> &'static Attention {
    super::pick(VARIANTS)
}

/// Raw scores `x[r] · keys[t]` of `R` query rows against `T` keys at a time, for every key;
/// `out[r * stride + t]`. `d` (the head size) must be a multiple of 4.
pub fn qk_scores<V: F4, const R: usize, const T: usize>(x: [&[f32]; R], keys: &[f32], d: usize, n_keys: usize, out: &mut [f32], stride: usize) {
    let full = n_keys / T * T;
    for t0 in (0..full).step_by(T) {
        let mut acc = [[V::zero(); T]; R];
        for c in (0..d).step_by(4) {
            let k: [V; T] = std::array::from_fn(|j| V::load(&keys[(t0 + j) * d + c..]));
            for r in 0..R {
                let q = V::load(&x[r][c..]);
                for j in 0..T {
                    acc[r][j] = acc[r][j].mul_add(q, k[j]);
                }
            }
        }
        for r in 0..R {
            for j in 0..T {
                out[r * stride + t0 + j] = acc[r][j].sum();
            }
        }
    }
    for t in full..n_keys {
        for r in 0..R {
            let mut acc = V::zero();
            for c in (0..d).step_by(4) {
                acc = acc.mul_add(V::load(&x[r][c..]), V::load(&keys[t * d + c..]));
            }
            out[r * stride + t] = acc.sum();
        }
    }
}

/// `out[r] += sum_t p[r * stride + t] · values[t]` for `R` rows, `C` lanes of four at a time;
/// `d` must be a multiple of `4 C`.
pub fn pv<V: F4, const R: usize, const C: usize>(p: &[f32], stride: usize, values: &[f32], d: usize, n_keys: usize, out: &mut [f32]) {
    for c0 in (0..d).step_by(4 * C) {
        let mut acc: [[V; C]; R] = std::array::from_fn(|r| std::array::from_fn(|j| V::load(&out[r * d + c0 + 4 * j..])));
        for t in 0..n_keys {
            let row = &values[t * d + c0..][..4 * C];
            let v: [V; C] = std::array::from_fn(|j| V::load(&row[4 * j..]));
            for r in 0..R {
                let w = V::splat(p[r * stride + t]);
                for j in 0..C {
                    acc[r][j] = acc[r][j].mul_add(w, v[j]);
                }
            }
        }
        for r in 0..R {
            for j in 0..C {
                acc[r][j].store(&mut out[r * d + c0 + 4 * j..]);
            }
        }
    }
}
