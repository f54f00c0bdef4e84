//! Slow, obviously-right quantizers and dequantizers. Fast paths are tested against these.

use super::{Q4MinWeight, Q4Weight, Q8BlockWeight, Q8Weight};

/// Quantize `w[n][k]` to symmetric int8 blocks of 32 along k (`MatMulNBits`, 8 bits):
/// `scale = amax / 127`, `q = round(w / scale) + 128`. `k` must be a multiple of 32.
pub fn quantize_q8_block(w: &[f32], n: usize, k: usize) -> Q8BlockWeight {
    const BS: usize = 32;
    assert_eq!(w.len(), n * k, "weight length must be n * k");
    assert!(k % BS == 0, "k must be a multiple of {BS}");
    let mut q = Vec::with_capacity(n * k);
    let mut scales = Vec::with_capacity(n * k / BS);
    for block in w.chunks_exact(BS) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if amax == 0.0 { 1.0 } else { amax / 127.0 };
        scales.push(scale);
        q.extend(block.iter().map(|v| ((v / scale).round().clamp(-127.0, 127.0) + 128.0) as u8));
    }
    Q8BlockWeight { n, k, block_size: BS, q, scales }
}

pub fn dequantize_q8_block(w: &Q8BlockWeight) -> Vec<f32> {
    w.q.chunks_exact(w.block_size).zip(&w.scales).flat_map(|(b, s)| b.iter().map(move |q| (*q as f32 - 128.0) * s)).collect()
}

/// Quantize `w[n][k]` to per-row symmetric int8.
pub fn quantize_q8(w: &[f32], n: usize, k: usize) -> Q8Weight {
    assert_eq!(w.len(), n * k, "weight length must be n * k");
    let mut q = Vec::with_capacity(n * k);
    let mut scales = Vec::with_capacity(n);
    for row in w.chunks_exact(k) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if amax == 0.0 { 1.0 } else { amax / 127.0 };
        scales.push(scale);
        q.extend(row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    }
    Q8Weight { n, k, q, scales }
}

pub fn dequantize_q8(w: &Q8Weight) -> Vec<f32> {
    w.q.chunks_exact(w.k)
        .zip(&w.scales)
        .flat_map(|(row, s)| row.iter().map(move |q| *q as f32 * s))
        .collect()
}

/// Quantize `w[n][k]` to 4-bit blocks of `block_size` along k. Symmetric uses `zp = 8` and
/// `scale = amax / 7`; asymmetric maps each block's `[min, max]` (widened to include 0) onto 0..=15.
pub fn quantize_q4(w: &[f32], n: usize, k: usize, block_size: usize, symmetric: bool) -> Q4Weight {
    assert_eq!(w.len(), n * k, "weight length must be n * k");
    assert!(block_size >= 16 && block_size.is_power_of_two(), "block size must be a power of two >= 16");
    let (packed, scales, zps) = quantize_q4_blocks(w, n, k, block_size, None, |vals, _, codes| {
        let raw_scale = if symmetric {
            let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 { 1.0 } else { amax / 7.0 }
        } else {
            let lo = vals.iter().fold(0f32, |m, v| m.min(*v));
            let hi = vals.iter().fold(0f32, |m, v| m.max(*v));
            if hi > lo { (hi - lo) / 15.0 } else { 1.0 }
        };
        // tract's Q4_0 kernels keep scales in f16: store exactly what will be used, rounded
        // up so the block's extremes still fit in 0..=15.
        let scale = round_up_to_f16(raw_scale);
        let zp = if symmetric {
            8u8
        } else {
            let lo = vals.iter().fold(0f32, |m, v| m.min(*v));
            (-lo / scale).round().clamp(0.0, 15.0) as u8
        };
        for (c, v) in codes.iter_mut().zip(vals) {
            *c = ((v / scale).round() + zp as f32).clamp(0.0, 15.0) as u8;
        }
        // Padding past k stays at q = 0; with zp it dequantizes to a finite value that
        // multiplies nothing, since activations are only k long.
        (scale, zp)
    });
    Q4Weight { n, k, block_size, packed, scales, zero_points: if symmetric { None } else { Some(zps) } }
}

/// [`quantize_q4`] with each block's scale (and zero point) chosen to minimise the block's
/// squared error, weighted per input channel by `importance` (`[k]`, e.g. mean squared
/// activations from calibration, AWQ's statistic; `None`: uniform). For every candidate scale
/// on a grid around the range-based one, and the zero points next to the range-based one, the
/// codes are rounded, the scale refit by weighted least squares to those codes, and the error
/// of the f16-rounded result compared. A grid point of 1.0 reproduces round-to-nearest, so the
/// result is never worse than it (under the same weighting).
pub fn quantize_q4_search(w: &[f32], n: usize, k: usize, block_size: usize, symmetric: bool, importance: Option<&[f32]>) -> Q4Weight {
    assert_eq!(w.len(), n * k, "weight length must be n * k");
    assert!(block_size >= 16 && block_size.is_power_of_two(), "block size must be a power of two >= 16");
    if let Some(imp) = importance {
        assert_eq!(imp.len(), k, "importance must have k values");
    }
    let (packed, scales, zps) = quantize_q4_blocks(w, n, k, block_size, importance, |vals, imp, codes| {
        let (scale, zp) = search_block(vals, imp, symmetric);
        for (c, v) in codes.iter_mut().zip(vals) {
            *c = code(*v, scale, zp);
        }
        (scale, zp)
    });
    Q4Weight { n, k, block_size, packed, scales, zero_points: if symmetric { None } else { Some(zps) } }
}

/// The 4-bit blocks of `w[n][k]` along k, packed two codes per byte (padding past k at code 0):
/// `fit(vals, importance, codes)` fits one block, writes one code per value and returns the
/// block's stored scale and zero point. Rows are shared out across the machine's cores (one
/// thread on wasm32, where std has none): a row's blocks depend on that row alone, so the
/// result is the same for any split (the packer's import spent ~95 s of a 2-core machine's first
/// run here on one core; issue #16).
fn quantize_q4_blocks<Z: Send>(w: &[f32], n: usize, k: usize, block_size: usize, importance: Option<&[f32]>, fit: impl Fn(&[f32], &[f32], &mut [u8]) -> (f32, Z) + Sync) -> (Vec<u8>, Vec<f32>, Vec<Z>) {
    let nb = k.div_ceil(block_size);
    let rows = |range: std::ops::Range<usize>| {
        let mut packed = vec![0u8; range.len() * nb * block_size / 2];
        let mut scales = Vec::with_capacity(range.len() * nb);
        let mut zps = Vec::with_capacity(range.len() * nb);
        let ones = vec![1f32; block_size];
        let mut codes = vec![0u8; block_size];
        for (r, row) in range.enumerate() {
            for b in 0..nb {
                let start = b * block_size;
                let end = (start + block_size).min(k);
                let vals = &w[row * k + start..row * k + end];
                let imp = importance.map_or(&ones[..vals.len()], |i| &i[start..end]);
                let (scale, zp) = fit(vals, imp, &mut codes[..vals.len()]);
                scales.push(scale);
                zps.push(zp);
                let base = (r * nb + b) * block_size / 2;
                for (i, q) in codes[..vals.len()].iter().enumerate() {
                    packed[base + i / 2] |= if i % 2 == 0 { *q } else { *q << 4 };
                }
            }
        }
        (packed, scales, zps)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n);
    #[cfg(target_arch = "wasm32")]
    let threads = 1;
    if threads <= 1 {
        return rows(0..n);
    }
    let per = n.div_ceil(threads);
    let parts: Vec<_> = std::thread::scope(|s| {
        let rows = &rows;
        let handles: Vec<_> = (0..n).step_by(per).map(|r0| s.spawn(move || rows(r0..(r0 + per).min(n)))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let mut out = (Vec::with_capacity(n * nb * block_size / 2), Vec::with_capacity(n * nb), Vec::with_capacity(n * nb));
    for (p, s, z) in parts {
        out.0.extend(p);
        out.1.extend(s);
        out.2.extend(z);
    }
    out
}

fn code(v: f32, scale: f32, zp: u8) -> u8 {
    if scale == 0.0 {
        return zp;
    }
    ((v / scale).round() + zp as f32).clamp(0.0, 15.0) as u8
}

fn block_error(vals: &[f32], imp: &[f32], scale: f32, zp: u8) -> f64 {
    vals.iter().zip(imp).map(|(v, a)| {
        let e = (*v - (code(*v, scale, zp) as f32 - zp as f32) * scale) as f64;
        *a as f64 * e * e
    }).sum()
}

/// Best `(scale, zero point)` of one block, the scale rounded to f16 (what tract's kernels use).
fn search_block(vals: &[f32], imp: &[f32], symmetric: bool) -> (f32, u8) {
    let lo = vals.iter().fold(0f32, |m, v| m.min(*v));
    let hi = vals.iter().fold(0f32, |m, v| m.max(*v));
    let amax = lo.abs().max(hi);
    if amax == 0.0 {
        return (1.0, if symmetric { 8 } else { 0 });
    }
    let base = if symmetric { amax / 7.0 } else { (hi - lo) / 15.0 };
    let f16 = |s: f32| half::f16::from_f32(s).to_f32();
    let mut best = (f64::INFINITY, 1.0f32, 8u8);
    let consider = |s: f32, zp: u8, best: &mut (f64, f32, u8)| {
        let s = f16(s);
        if s > 0.0 && s.is_finite() {
            let e = block_error(vals, imp, s, zp);
            if e < best.0 {
                *best = (e, s, zp);
            }
        }
    };
    // Round-to-nearest's own choice (see [`quantize_q4`]) is always a candidate.
    let rtn = round_up_to_f16(base);
    consider(rtn, if symmetric { 8 } else { (-lo / rtn).round().clamp(0.0, 15.0) as u8 }, &mut best);
    for step in 0..=24 {
        let t = 0.76 + 0.02 * step as f32;
        let s = base * t;
        let zs: Vec<u8> = if symmetric {
            vec![8]
        } else {
            let z = -lo / s;
            [z.floor(), z.round(), z.ceil()].iter().map(|z| z.clamp(0.0, 15.0) as u8).collect()
        };
        for zp in zs {
            consider(s, zp, &mut best);
            // Refit the scale to these codes: argmin_s sum a (v - s (q - zp))^2.
            let (mut num, mut den) = (0f64, 0f64);
            for (v, a) in vals.iter().zip(imp) {
                let c = code(*v, s, zp) as f64 - zp as f64;
                num += *a as f64 * *v as f64 * c;
                den += *a as f64 * c * c;
            }
            if den > 0.0 {
                consider((num / den) as f32, zp, &mut best);
            }
        }
    }
    (best.1, best.2)
}

/// Quantize `w[n][k]` to 4-bit blocks with float zero points ([`Q4MinWeight`]): per block,
/// `w ≈ q * scale + min` with `(scale, min)` fit by weighted least squares to the block's codes,
/// from several starting ranges (as llama.cpp's `make_qkx` quantizers do), keeping the least
/// (importance-weighted) squared error. A block already on a 16-level grid (a Q4_1 block) is
/// found exactly from the first start (its own min and max).
pub fn quantize_q4_min(w: &[f32], n: usize, k: usize, block_size: usize, importance: Option<&[f32]>) -> Q4MinWeight {
    assert_eq!(w.len(), n * k, "weight length must be n * k");
    assert!(block_size >= 16 && block_size.is_power_of_two(), "block size must be a power of two >= 16");
    let (packed, scales, zero_points) = quantize_q4_blocks(w, n, k, block_size, importance, |vals, imp, codes| {
        let (scale, min) = fit_min_block(vals, imp);
        for (c, v) in codes.iter_mut().zip(vals) {
            *c = min_code(*v, scale, min);
        }
        if scale > 0.0 { (scale, -min / scale) } else { (1.0, -min) }
    });
    Q4MinWeight { n, k, block_size, packed, scales, zero_points }
}

fn min_code(v: f32, scale: f32, min: f32) -> u8 {
    if scale <= 0.0 {
        return 0;
    }
    ((v - min) / scale).round().clamp(0.0, 15.0) as u8
}

/// `(scale, min)` of one block; scale 0 for a constant block (then every value is `min`).
fn fit_min_block(vals: &[f32], imp: &[f32]) -> (f32, f32) {
    let lo = vals.iter().fold(f32::INFINITY, |m, v| m.min(*v));
    let hi = vals.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    if hi <= lo {
        return (0.0, lo);
    }
    let err = |s: f32, m: f32| -> f64 {
        vals.iter().zip(imp).map(|(v, a)| {
            let e = (*v - (min_code(*v, s, m) as f32 * s + m)) as f64;
            *a as f64 * e * e
        }).sum()
    };
    let mut best = ((hi - lo) / 15.0, lo);
    let mut best_err = err(best.0, best.1);
    // Starts: the full range, then ranges narrowed from either end.
    for step in 0..12 {
        for (a, b) in [(0.0f32, 0.02 * step as f32), (0.02 * step as f32, 0.0)] {
            let (m0, s0) = (lo + a * (hi - lo), (hi - lo) * (1.0 - a - b) / 15.0);
            if s0 <= 0.0 {
                continue;
            }
            let (mut s, mut m) = (s0, m0);
            for _ in 0..3 {
                // Least squares of v ≈ s q + m over the codes of (s, m).
                let (mut sa, mut sq, mut sqq, mut sv, mut sqv) = (0f64, 0f64, 0f64, 0f64, 0f64);
                for (v, w) in vals.iter().zip(imp) {
                    let (q, w, v) = (min_code(*v, s, m) as f64, *w as f64, *v as f64);
                    sa += w;
                    sq += w * q;
                    sqq += w * q * q;
                    sv += w * v;
                    sqv += w * q * v;
                }
                let det = sa * sqq - sq * sq;
                if det <= 0.0 {
                    break;
                }
                let (ns, nm) = (((sa * sqv - sq * sv) / det) as f32, ((sqq * sv - sq * sqv) / det) as f32);
                if !(ns > 0.0 && ns.is_finite() && nm.is_finite()) {
                    break;
                }
                let e = err(ns, nm);
                if e < best_err {
                    (best, best_err) = ((ns, nm), e);
                }
                (s, m) = (ns, nm);
            }
            let e = err(s0, m0);
            if e < best_err {
                (best, best_err) = ((s0, m0), e);
            }
        }
    }
    best
}

/// `q` (quantized from `w`) with its scales and zero points rounded to f16, as a compact file
/// stores them (GGUF's Q4_1 keeps its scale and min in f16 too), every code re-chosen for the
/// rounded values.
pub fn q4_min_f16(w: &[f32], q: &Q4MinWeight) -> Q4MinWeight {
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    let nb = q.k.div_ceil(q.block_size);
    let (scales, zero_points): (Vec<f32>, Vec<f32>) = q.scales.iter().zip(&q.zero_points).map(|(s, z)| (f16(*s), f16(*z))).unzip();
    let mut packed = vec![0u8; q.packed.len()];
    for row in 0..q.n {
        for i in 0..q.k {
            let (b, j) = (row * nb + i / q.block_size, i % q.block_size);
            let c = (w[row * q.k + i] / scales[b] + zero_points[b]).round().clamp(0.0, 15.0) as u8;
            packed[b * q.block_size / 2 + j / 2] |= if j % 2 == 0 { c } else { c << 4 };
        }
    }
    Q4MinWeight { packed, scales, zero_points, ..q.clone() }
}

/// `q` (quantized from `w`) with its scales rounded to f16 (GGUF's Q8_0 form), every code
/// re-chosen for the rounded scale.
pub fn q8_block_f16(w: &[f32], q: &Q8BlockWeight) -> Q8BlockWeight {
    let scales: Vec<f32> = q.scales.iter().map(|s| half::f16::from_f32(*s).to_f32()).collect();
    let codes = w.chunks_exact(q.block_size).zip(&scales).flat_map(|(b, s)| b.iter().map(move |v| ((v / s).round().clamp(-127.0, 127.0) + 128.0) as u8));
    Q8BlockWeight { q: codes.collect(), scales, ..q.clone() }
}

pub fn dequantize_q4_min(w: &Q4MinWeight) -> Vec<f32> {
    let nb = w.k.div_ceil(w.block_size);
    let mut out = Vec::with_capacity(w.n * w.k);
    for row in 0..w.n {
        for i in 0..w.k {
            let (b, j) = (i / w.block_size, i % w.block_size);
            let byte = w.packed[(row * nb + b) * w.block_size / 2 + j / 2];
            let q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            out.push((q as f32 - w.zero_points[row * nb + b]) * w.scales[row * nb + b]);
        }
    }
    out
}

/// Activations as the int8-activation q4 kernel sees them: per block of 32 along each row of
/// length `k`, `round(x · 127 / amax) · amax / 127`, ties to even (onnxruntime's rounding).
pub fn q8_block_round_trip(x: &[f32], k: usize) -> Vec<f32> {
    assert!(k % 32 == 0 && x.len() % k == 0, "rows of k = {k} in blocks of 32");
    x.chunks_exact(32)
        .flat_map(|b| {
            let (s, inv) = crate::cpu::q4_matmul::q8_block_scale(b);
            b.iter().map(move |v| crate::cpu::q4_matmul::round_q8(v * inv) as f32 * s).collect::<Vec<_>>()
        })
        .collect()
}

/// [`q8_block_round_trip`] for `levels` each side of zero (32767: the kernels' 16-bit
/// activations, `cpu::q4_matmul::BlockInt`).
pub fn block_round_trip(x: &[f32], k: usize, levels: f32) -> Vec<f32> {
    assert!(k % 32 == 0 && x.len() % k == 0, "rows of k = {k} in blocks of 32");
    x.chunks_exact(32)
        .flat_map(|b| {
            let (s, inv) = crate::cpu::q4_matmul::block_scale(b, levels);
            b.iter().map(move |v| (v * inv).round_ties_even() * s).collect::<Vec<_>>()
        })
        .collect()
}

/// The smallest f16 value >= `v` (for positive, finite `v`), as f32.
fn round_up_to_f16(v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    if h.to_f32() >= v { h.to_f32() } else { half::f16::from_bits(h.to_bits() + 1).to_f32() }
}

pub fn dequantize_q4(w: &Q4Weight) -> Vec<f32> {
    let nb = w.blocks_per_row();
    let mut out = Vec::with_capacity(w.n * w.k);
    for row in 0..w.n {
        for i in 0..w.k {
            let b = i / w.block_size;
            let j = i % w.block_size;
            let byte = w.packed[(row * nb + b) * w.block_size / 2 + j / 2];
            let q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            let zp = w.zero_points.as_ref().map_or(8, |z| z[row * nb + b]);
            out.push((q as f32 - zp as f32) * w.scales[row * nb + b]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, k: usize) -> Vec<f32> {
        (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect()
    }

    #[test]
    fn q8_error_is_within_half_a_step() {
        let w = ramp(4, 64);
        let q = quantize_q8(&w, 4, 64);
        let d = dequantize_q8(&q);
        for (row, (a, b)) in w.chunks(64).zip(d.chunks(64)).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= q.scales[row] * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn q4_error_is_within_half_a_step_both_modes() {
        let w = ramp(3, 96);
        for sym in [true, false] {
            let q = quantize_q4(&w, 3, 96, 32, sym);
            assert_eq!(q.packed.len(), 3 * 3 * 16);
            let d = dequantize_q4(&q);
            for (i, (x, y)) in w.iter().zip(&d).enumerate() {
                let s = q.scales[i / 32];
                assert!((x - y).abs() <= s * 0.5 + 1e-5, "sym={sym} i={i} {x} vs {y}");
            }
        }
    }

    #[test]
    fn q4_search_is_never_worse_than_round_to_nearest() {
        let w: Vec<f32> = (0..4 * 128).map(|i| (((i * 7919) % 263) as f32 / 131.0 - 1.0).powi(3) + 0.3).collect();
        for sym in [true, false] {
            let err = |d: &[f32]| w.iter().zip(d).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
            let rtn = err(&dequantize_q4(&quantize_q4(&w, 4, 128, 32, sym)));
            let searched = err(&dequantize_q4(&quantize_q4_search(&w, 4, 128, 32, sym, None)));
            assert!(searched <= rtn * 1.0001, "sym={sym}: {searched} > {rtn}");
            assert!(searched < rtn * 0.95, "sym={sym}: the search found nothing better ({searched} vs {rtn})");
        }
    }

    #[test]
    fn f16_parameters_keep_a_gguf_block_and_stay_within_half_a_step() {
        // A Q4_1 block (f16 scale and min) keeps its values within a rounding of f16 zero points.
        let (d, m) = (half::f16::from_f32(0.0123).to_f32(), half::f16::from_f32(-0.0871).to_f32());
        let w: Vec<f32> = (0..2 * 64).map(|i| ((i * 7) % 16) as f32 * d + m * (1 + i / 64) as f32).collect();
        let q = q4_min_f16(&w, &quantize_q4_min(&w, 2, 64, 32, None));
        assert!(q.scales.iter().chain(&q.zero_points).all(|v| half::f16::from_f32(*v).to_f32() == *v));
        for (a, b) in w.iter().zip(dequantize_q4_min(&q)) {
            assert!((a - b).abs() <= d * 0.01, "{a} vs {b}");
        }
        // Arbitrary weights: the f16 parameters cost next to nothing over f32 ones.
        let w: Vec<f32> = (0..4 * 128).map(|i| (((i * 7919) % 263) as f32 / 131.0 - 1.0).powi(3) + 0.3).collect();
        let err = |d: &[f32]| w.iter().zip(d).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        let q32 = quantize_q4_min(&w, 4, 128, 32, None);
        let (e32, e16) = (err(&dequantize_q4_min(&q32)), err(&dequantize_q4_min(&q4_min_f16(&w, &q32))));
        assert!(e16 <= e32 * 1.02, "{e16} vs {e32}");
        let q8 = q8_block_f16(&w, &quantize_q8_block(&w, 4, 128));
        assert!(q8.scales.iter().all(|v| half::f16::from_f32(*v).to_f32() == *v));
        for (i, (a, b)) in w.iter().zip(dequantize_q8_block(&q8)).enumerate() {
            assert!((a - b).abs() <= q8.scales[i / 32] * 0.5 + 1e-6, "i={i} {a} vs {b}");
        }
    }

    #[test]
    fn q4_min_reproduces_a_q4_1_block_exactly() {
        // Blocks on a Q4_1 grid (f16 scale and min, codes 0..=15, every code used).
        let (d, m) = (half::f16::from_f32(0.0123).to_f32(), half::f16::from_f32(-0.0871).to_f32());
        let w: Vec<f32> = (0..2 * 64).map(|i| ((i * 7) % 16) as f32 * d + m * (1 + i / 64) as f32).collect();
        let q = quantize_q4_min(&w, 2, 64, 32, None);
        for (a, b) in w.iter().zip(dequantize_q4_min(&q)) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
        // And on arbitrary weights it beats integer zero points.
        let w: Vec<f32> = (0..4 * 128).map(|i| (((i * 7919) % 263) as f32 / 131.0 - 1.0).powi(3) + 0.3).collect();
        let err = |d: &[f32]| w.iter().zip(d).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        let int_zp = err(&dequantize_q4(&quantize_q4_search(&w, 4, 128, 32, false, None)));
        assert!(err(&dequantize_q4_min(&quantize_q4_min(&w, 4, 128, 32, None))) < int_zp);
    }

    #[test]
    fn q8_block_round_trips_within_half_a_step() {
        let w = ramp(3, 64);
        let q = quantize_q8_block(&w, 3, 64);
        let d = dequantize_q8_block(&q);
        for (i, (x, y)) in w.iter().zip(&d).enumerate() {
            assert!((x - y).abs() <= q.scales[i / 32] * 0.5 + 1e-6);
        }
    }

    #[test]
    fn q4_zero_points_pack_two_per_byte() {
        let w = ramp(2, 96);
        let q = quantize_q4(&w, 2, 96, 32, false);
        let packed = q.packed_zero_points().unwrap();
        assert_eq!(packed.len(), 2 * 2);
        let zp = q.zero_points.as_ref().unwrap();
        assert_eq!(packed[0] & 0x0f, zp[0]);
        assert_eq!(packed[0] >> 4, zp[1]);
        assert_eq!(packed[1] & 0x0f, zp[2]);
    }
}
