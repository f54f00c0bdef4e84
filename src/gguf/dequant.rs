//! ggml tensor types: block layouts of every type (so any file's data extents can be checked)
//! and dequantizers to f32 for the ones the importer reads. Block layouts and element order
//! follow ggml's reference `dequantize_row_*` exactly; each has a test on a hand-built block.

use half::{bf16, f16};

use super::err;
use crate::Result;

/// A ggml tensor type, numbered as in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;

impl GgmlType {
    pub fn from_u32(v: u32) -> Result<Self> {
        use GgmlType::*;
        Ok(match v {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            other => return Err(err(format!("unknown ggml tensor type {other}"))),
        })
    }

    /// The number the file stores for this type.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    /// `(elements per block, bytes per block)`, as ggml's type traits.
    pub fn block_layout(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 | IQ4_NL => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            MXFP4 => (32, 17),
            Q2_K => (QK_K, 84),
            Q3_K => (QK_K, 110),
            Q4_K => (QK_K, 144),
            Q5_K => (QK_K, 176),
            Q6_K => (QK_K, 210),
            Q8_K => (QK_K, 292),
            IQ2_XXS => (QK_K, 66),
            IQ2_XS => (QK_K, 74),
            IQ3_XXS => (QK_K, 98),
            IQ1_S => (QK_K, 50),
            IQ3_S => (QK_K, 110),
            IQ2_S => (QK_K, 82),
            IQ4_XS => (QK_K, 136),
            IQ1_M => (QK_K, 56),
            TQ1_0 => (QK_K, 54),
            TQ2_0 => (QK_K, 66),
        }
    }

    /// Whether [`dequantize`] reads this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `n` elements of type `ty` stored in `data` (which must be exactly their size) as f32.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let (block, size) = ty.block_layout();
    if n % block != 0 || (n / block).checked_mul(size) != Some(data.len()) {
        return Err(err(format!("{ty:?}: {} bytes cannot hold {n} elements", data.len())));
    }
    if !ty.can_dequantize() {
        return Err(err(format!("tensor type {ty:?} is not supported by the importer")));
    }
    let mut out = Vec::with_capacity(n);
    for b in data.chunks_exact(size) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(f16_at(b, 0)),
            GgmlType::BF16 => out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q4_0 => q4_0(b, &mut out),
            GgmlType::Q4_1 => q4_1(b, &mut out),
            GgmlType::Q5_0 => q5(b, false, &mut out),
            GgmlType::Q5_1 => q5(b, true, &mut out),
            GgmlType::Q8_0 => q8_0(b, 2, &mut out),
            // Q8_1 is Q8_0 with an extra f16 (sum of the block) before the quants.
            GgmlType::Q8_1 => q8_0(b, 4, &mut out),
            GgmlType::Q2_K => q2_k(b, &mut out),
            GgmlType::Q3_K => q3_k(b, &mut out),
            GgmlType::Q4_K => q4_k(b, &mut out),
            GgmlType::Q5_K => q5_k(b, &mut out),
            GgmlType::Q6_K => q6_k(b, &mut out),
            GgmlType::Q8_K => q8_k(b, &mut out),
            _ => unreachable!("checked by can_dequantize"),
        }
    }
    Ok(out)
}

/// `d: f16, qs: [u8; 16]`; `qs[j]`'s low nibble is element `j`, its high nibble element `j + 16`.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|q| ((q & 0xf) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// `d: f16, m: f16, qs: [u8; 16]`; element = `q * d + m`, nibbles as Q4_0.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|q| (q & 0xf) as f32 * d + m));
    out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
}

/// Q5_0 `d, qh: u32, qs: [u8; 16]` (element = `(q - 16) * d`) and Q5_1 `d, m, qh, qs`
/// (element = `q * d + m`). Bit `j` of `qh` is the fifth bit of element `j`.
fn q5(b: &[u8], with_min: bool, out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let (m, at) = if with_min { (f16_at(b, 2), 4) } else { (0.0, 2) };
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let qs = &b[at + 4..at + 20];
    let value = |q: u32| if with_min { q as f32 * d + m } else { (q as i32 - 16) as f32 * d };
    for (j, q) in qs.iter().enumerate() {
        out.push(value((*q as u32 & 0xf) | (((qh >> j) & 1) << 4)));
    }
    for (j, q) in qs.iter().enumerate() {
        out.push(value((*q as u32 >> 4) | (((qh >> (j + 16)) & 1) << 4)));
    }
}

/// `d: f16, [extra header], qs: [i8; 32]`.
fn q8_0(b: &[u8], header: usize, out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[header..header + 32].iter().map(|q| *q as i8 as f32 * d));
}

/// `scales: [u8; 16], qs: [u8; 64], d, dmin`; 16 sub-blocks of 16 with 4-bit scale and min.
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xf) as f32, dmin * (sc >> 4) as f32);
                out.extend(q[part * 16..part * 16 + 16].iter().map(|v| dl * ((v >> shift) & 3) as f32 - ml));
            }
        }
    }
}

/// `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12] (16 6-bit values), d`.
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let d = f16_at(b, 108);
    let mut aux = [0u32; 4];
    for (i, a) in aux.iter_mut().take(3).enumerate() {
        *a = u32::from_le_bytes([b[96 + 4 * i], b[97 + 4 * i], b[98 + 4 * i], b[99 + 4 * i]]);
    }
    let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
    aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
    aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
    aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
    let scales: Vec<i32> = aux.iter().flat_map(|a| a.to_le_bytes()).map(|s| s as i8 as i32 - 32).collect();
    let (mut is, mut m) = (0, 1u8);
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in part * 16..part * 16 + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let high = if hmask[l] & m != 0 { 0 } else { 4 };
                    out.push(dl * (low - high) as f32);
                }
            }
            m <<= 1;
        }
    }
}

/// Scale and min `j` (of 8, 6 bits each) packed in Q4_K / Q5_K's 12 `scales` bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `d, dmin, scales: [u8; 12], qs: [u8; 128]`: 8 sub-blocks of 32; in each 64-element chunk
/// the low nibbles of 32 bytes come first, then their high nibbles.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for c in 0..4 {
        let q = &qs[c * 32..c * 32 + 32];
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1, d2, m2) = (d * s1 as f32, dmin * m1 as f32, d * s2 as f32, dmin * m2 as f32);
        out.extend(q.iter().map(|v| d1 * (v & 0xf) as f32 - m1));
        out.extend(q.iter().map(|v| d2 * (v >> 4) as f32 - m2));
    }
}

/// `d, dmin, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`: Q4_K plus a fifth bit per
/// element, bit `2c` (low nibbles) and `2c + 1` (high nibbles) of `qh[l]` in chunk `c`.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for c in 0..4 {
        let q = &qs[c * 32..c * 32 + 32];
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1, d2, m2) = (d * s1 as f32, dmin * m1 as f32, d * s2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            out.push(d1 * ((q[l] & 0xf) + if qh[l] & u1 != 0 { 16 } else { 0 }) as f32 - m1);
        }
        for l in 0..32 {
            out.push(d2 * ((q[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 }) as f32 - m2);
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d`: 6-bit quants minus 32, 16 sub-blocks
/// of 16 with signed 8-bit scales.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let mut y = [0f32; QK_K];
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
    out.extend_from_slice(&y);
}

/// `d: f32, qs: [i8; 256], bsums: [i16; 16]` (the sums are only for dot products).
fn q8_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    out.extend(b[4..4 + QK_K].iter().map(|q| *q as i8 as f32 * d));
}

/// Quantize `x` (length a multiple of 32) to ggml's Q8_0, as `quantize_row_q8_0_ref`.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// Quantize `x` (length a multiple of 32) to ggml's Q4_0, as `quantize_row_q4_0_ref`: the
/// value of largest magnitude maps to -8.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for blk in x.chunks_exact(32) {
        let max = blk.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
    }
    out
}

/// Quantize `x` (length a multiple of 32) to ggml's Q4_1, as `quantize_row_q4_1_ref`.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 20);
    for blk in x.chunks_exact(32) {
        let min = blk.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let max = blk.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(f16::from_f32(min).to_le_bytes());
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
    }
    out
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // tests index expected values by element number
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn type_ids_round_trip() {
        for id in 0..64 {
            if let Ok(t) = GgmlType::from_u32(id) {
                assert_eq!(t.id(), id);
            }
        }
        assert!(GgmlType::from_u32(4).is_err());
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], 31).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], 32).is_err());
        assert!(dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).is_err());
        assert!(dequantize(GgmlType::F32, &[0; 4], usize::MAX).is_err());
    }

    #[test]
    fn floats() {
        let x = [1.5f32, -2.0, 0.0, 65504.0];
        let f32b: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &f32b, 4).unwrap(), x);
        let f16b: Vec<u8> = x.iter().flat_map(|v| h(*v)).collect();
        assert_eq!(dequantize(GgmlType::F16, &f16b, 4).unwrap(), x);
        // bf16 is the top half of an f32.
        let bf: Vec<u8> = [1.5f32, -2.0, 0.0, 3.0].iter().flat_map(|v| [v.to_le_bytes()[2], v.to_le_bytes()[3]]).collect();
        assert_eq!(dequantize(GgmlType::BF16, &bf, 4).unwrap(), [1.5, -2.0, 0.0, 3.0]);
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut b = h(0.5).to_vec();
        // qs[j] = low nibble j, high nibble 15 - j.
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5, "element {j}");
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 0.5, "element {}", j + 16);
        }
    }

    #[test]
    fn q4_1_nibble_order_and_min() {
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.25 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q5_0_and_q5_1_high_bits() {
        // Fifth bit set for elements 3 and 20 only.
        let qh: u32 = (1 << 3) | (1 << 20);
        let qs: Vec<u8> = (0..16u8).map(|j| j | (j << 4)).collect();
        let mut b = h(2.0).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend(&qs);
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        for j in 0..32 {
            let q = (j % 16) as f32 + if j == 3 || j == 20 { 16.0 } else { 0.0 };
            assert_eq!(y[j], (q - 16.0) * 2.0, "element {j}");
        }
        let mut b = h(2.0).to_vec();
        b.extend(h(0.5));
        b.extend(qh.to_le_bytes());
        b.extend(&qs);
        let y = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        for j in 0..32 {
            let q = (j % 16) as f32 + if j == 3 || j == 20 { 16.0 } else { 0.0 };
            assert_eq!(y[j], q * 2.0 + 0.5, "element {j}");
        }
    }

    #[test]
    fn q8_0_and_q8_1() {
        let mut b = h(0.125).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert!(y.iter().enumerate().all(|(j, v)| *v == (j as f32 - 16.0) * 0.125));
        let mut b1 = h(0.125).to_vec();
        b1.extend(h(99.0));
        b1.extend(&b[2..]);
        assert_eq!(dequantize(GgmlType::Q8_1, &b1, 32).unwrap(), y);
    }

    #[test]
    fn q8_k() {
        let mut b = 0.5f32.to_le_bytes().to_vec();
        b.extend((0..256).map(|j| (j as u8).wrapping_sub(128)));
        b.extend([0u8; 32]);
        let y = dequantize(GgmlType::Q8_K, &b, 256).unwrap();
        assert!(y.iter().enumerate().all(|(j, v)| *v == ((j as u8).wrapping_sub(128) as i8) as f32 * 0.5));
    }

    /// Pack 8 (scale, min) 6-bit pairs the way ggml's `quantize_row_q4_K_ref` does.
    fn pack_k4(ls: [u8; 8], lm: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                s[j] = ls[j];
                s[j + 4] = lm[j];
            } else {
                s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
                s[j - 4] |= (ls[j] >> 4) << 6;
                s[j] |= (lm[j] >> 4) << 6;
            }
        }
        s
    }

    #[test]
    fn q4_k_and_q5_k_sub_blocks() {
        let ls = [1, 2, 3, 40, 5, 63, 17, 33];
        let lm = [0, 7, 63, 2, 50, 1, 9, 31];
        let scales = pack_k4(ls, lm);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &scales), (ls[j], lm[j]));
        }
        let qs: Vec<u8> = (0..128).map(|i| ((i * 7) % 16) as u8 | ((((i * 3) % 16) as u8) << 4)).collect();
        let (d, dmin) = (0.5f32, 0.25f32);
        let mut b = h(d).to_vec();
        b.extend(h(dmin));
        b.extend(scales);
        b.extend(&qs);
        let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
        // Element e: chunk c = e / 64; within it the first 32 are low nibbles of qs[32c + l].
        let nib = |e: usize| {
            let (c, r) = (e / 64, e % 64);
            let q = qs[32 * c + r % 32];
            if r < 32 { q & 0xf } else { q >> 4 }
        };
        for e in 0..256 {
            let sub = e / 32;
            let want = d * ls[sub] as f32 * nib(e) as f32 - dmin * lm[sub] as f32;
            assert_eq!(y[e], want, "Q4_K element {e}");
        }
        // Q5_K: fifth bit of element e is bit (2c + (r >= 32)) of qh[r % 32].
        let qh: Vec<u8> = (0..32).map(|l| (l * 37 % 256) as u8).collect();
        let mut b = h(d).to_vec();
        b.extend(h(dmin));
        b.extend(scales);
        b.extend(&qh);
        b.extend(&qs);
        let y = dequantize(GgmlType::Q5_K, &b, 256).unwrap();
        for e in 0..256 {
            let (c, r) = (e / 64, e % 64);
            let bit = 2 * c + usize::from(r >= 32);
            let q = nib(e) as f32 + if qh[r % 32] >> bit & 1 == 1 { 16.0 } else { 0.0 };
            let sub = e / 32;
            assert_eq!(y[e], d * ls[sub] as f32 * q - dmin * lm[sub] as f32, "Q5_K element {e}");
        }
    }

    #[test]
    fn q6_k_element_order() {
        // Choose the 6-bit value of every element, then pack as quantize_row_q6_K_ref.
        let q: Vec<u8> = (0..256).map(|e| ((e * 5 + 3) % 64) as u8).collect();
        let sc: Vec<i8> = (0..16).map(|i| i as i8 * 3 - 20).collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for half in 0..2 {
            for l in 0..32 {
                let base = half * 128;
                let (q1, q2, q3, q4) = (q[base + l], q[base + l + 32], q[base + l + 64], q[base + l + 96]);
                ql[half * 64 + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
                ql[half * 64 + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
                qh[half * 32 + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(sc.iter().map(|s| *s as u8));
        b.extend(h(0.5));
        let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        for e in 0..256 {
            assert_eq!(y[e], 0.5 * sc[e / 16] as f32 * (q[e] as i32 - 32) as f32, "element {e}");
        }
    }

    #[test]
    fn q2_k_element_order() {
        // 2-bit value of element e lives in qs[32 * (e / 128) + e % 32] at shift 2 * ((e % 128) / 32).
        let q: Vec<u8> = (0..256).map(|e| ((e * 7 + e / 5) % 4) as u8).collect();
        let mut qs = [0u8; 64];
        for (e, v) in q.iter().enumerate() {
            qs[32 * (e / 128) + e % 32] |= v << (2 * ((e % 128) / 32));
        }
        let scales: Vec<u8> = (0..16u8).map(|i| (i % 16) | (((15 - i) % 16) << 4)).collect();
        let mut b = scales.clone();
        b.extend(qs);
        b.extend(h(0.5));
        b.extend(h(0.125));
        let y = dequantize(GgmlType::Q2_K, &b, 256).unwrap();
        for e in 0..256 {
            let s = scales[e / 16];
            let want = 0.5 * (s & 0xf) as f32 * q[e] as f32 - 0.125 * (s >> 4) as f32;
            assert_eq!(y[e], want, "element {e}");
        }
    }

    #[test]
    fn q3_k_element_order() {
        // 3-bit signed value (-4..=3) of element e: low 2 bits as Q2_K, high bit in hmask
        // (set means +4 not subtracted), bit (e / 32) of hmask[e % 32].
        let v: Vec<i32> = (0..256).map(|e: i32| e * 3 % 8 - 4).collect();
        let (mut qs, mut hmask) = ([0u8; 64], [0u8; 32]);
        for (e, x) in v.iter().enumerate() {
            let u = (x + 4) as u8;
            qs[32 * (e / 128) + e % 32] |= (u & 3) << (2 * ((e % 128) / 32));
            if u & 4 != 0 {
                hmask[e % 32] |= 1 << (e / 32);
            }
        }
        // 16 6-bit scales (stored +32), packed as quantize_row_q3_K_ref.
        let ls: Vec<u8> = (0..16).map(|i| (i * 4 + 1) as u8).collect();
        let mut sc = [0u8; 12];
        for (j, l) in ls.iter().enumerate() {
            if j < 8 {
                sc[j] = l & 0xf;
            } else {
                sc[j - 8] |= (l & 0xf) << 4;
            }
            sc[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
        }
        let mut b = hmask.to_vec();
        b.extend(qs);
        b.extend(sc);
        b.extend(h(0.25));
        let y = dequantize(GgmlType::Q3_K, &b, 256).unwrap();
        for e in 0..256 {
            assert_eq!(y[e], 0.25 * (ls[e / 16] as i32 - 32) as f32 * v[e] as f32, "element {e}");
        }
    }

    #[test]
    fn quantizers_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 30.0) / 7.0).collect();
        for (ty, q) in [
            (GgmlType::Q8_0, quantize_q8_0(&x)),
            (GgmlType::Q4_0, quantize_q4_0(&x)),
            (GgmlType::Q4_1, quantize_q4_1(&x)),
        ] {
            let y = dequantize(ty, &q, 64).unwrap();
            for blk in 0..2 {
                let s = &x[blk * 32..blk * 32 + 32];
                let range = s.iter().fold(0f32, |m, v| m.max(v.abs())) * 2.0;
                let levels = if ty == GgmlType::Q8_0 { 254.0 } else { 15.0 };
                for j in 0..32 {
                    let e = (y[blk * 32 + j] - s[j]).abs();
                    assert!(e <= range / levels * 0.51 + 1e-3, "{ty:?} element {j}: {} vs {}", y[blk * 32 + j], s[j]);
                }
            }
        }
    }
}
