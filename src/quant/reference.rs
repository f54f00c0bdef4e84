//! Slow, obviously-right quantizers and dequantizers. Fast paths are tested against these.

use super::{Q4Weight, Q8Weight};

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
    let nb = k.div_ceil(block_size);
    let mut packed = vec![0u8; n * nb * block_size / 2];
    let mut scales = Vec::with_capacity(n * nb);
    let mut zps = Vec::with_capacity(n * nb);
    for row in 0..n {
        for b in 0..nb {
            let start = b * block_size;
            let end = (start + block_size).min(k);
            let vals = &w[row * k + start..row * k + end];
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
            scales.push(scale);
            zps.push(zp);
            let base = (row * nb + b) * block_size / 2;
            for (i, v) in vals.iter().enumerate() {
                let q = ((v / scale).round() + zp as f32).clamp(0.0, 15.0) as u8;
                packed[base + i / 2] |= if i % 2 == 0 { q } else { q << 4 };
            }
            // Padding past k stays at q = 0; with zp it dequantizes to a finite value that
            // multiplies nothing, since activations are only k long.
        }
    }
    Q4Weight { n, k, block_size, packed, scales, zero_points: if symmetric { None } else { Some(zps) } }
}

/// Activations as the int8-activation q4 kernel sees them: per block of 32 along each row of
/// length `k`, `round(x / s) * s` with `s = amax / 127`.
pub fn q8_block_round_trip(x: &[f32], k: usize) -> Vec<f32> {
    assert!(k % 32 == 0 && x.len() % k == 0, "rows of k = {k} in blocks of 32");
    x.chunks_exact(32)
        .flat_map(|b| {
            let s = b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            b.iter().map(move |v| (v * inv).round() * s).collect::<Vec<_>>()
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
