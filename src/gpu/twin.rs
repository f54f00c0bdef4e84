//! Plain-Rust twins of the WGSL kernels in `kernels/`: the same computation, slow and
//! obviously right. Kernel tests run both on random shapes and compare.

use crate::backend::SampleParams;
use super::nbits::BlockWeight;

/// `gemv_nbits.wgsl`: `y[r][j] = sum_i x[r][i] * (q[j][i] - zp) * scale`, rows of `x` of
/// length `k`, summed per block and scaled as the kernel does (a float weight: one block, scale
/// 1, zero point 0); then `bias_nbits.wgsl`'s `+ bias[j]` where the weight has one.
pub fn gemv_nbits(w: &BlockWeight, x: &[f32]) -> Vec<f32> {
    let s = &w.spec;
    assert_eq!(x.len() % s.k, 0, "x holds whole rows of k");
    let mut y = Vec::with_capacity(x.len() / s.k * s.n);
    for xr in x.chunks_exact(s.k) {
        for j in 0..s.n {
            let mut acc = 0f32;
            for b in 0..s.blocks() {
                let zp = w.zero_point(j, b);
                let sum: f32 = (b * s.block_size..((b + 1) * s.block_size).min(s.k)).map(|i| (w.stored(j, i) - zp) * xr[i]).sum();
                acc += sum * w.scale(j, b);
            }
            if s.bias {
                acc += w.bias[j];
            }
            y.push(acc);
        }
    }
    y
}

/// `embed_nbits.wgsl`: row `token` of the table, dequantized.
pub fn embed_nbits(table: &BlockWeight, token: usize) -> Vec<f32> {
    (0..table.spec.k).map(|i| table.value(token, i)).collect()
}

/// `round_q8.wgsl`: each block of 32 of `x` rounded to int8 with its own scale `amax / 127`.
pub fn round_q8(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(32)
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (s, inv) = (amax / 127.0, if amax > 0.0 { 127.0 / amax } else { 0.0 });
            b.iter().map(move |v| (v * inv).round_ties_even() * s)
        })
        .collect()
}

/// `quantize_tensor.wgsl`: `x` quantized to uint8 with one scale and zero point over all of it
/// (ONNX `DynamicQuantizeLinear`, onnxruntime's scale 1 for an all-zero input), dequantized.
pub fn quantize_tensor(x: &[f32]) -> Vec<f32> {
    let (min, max) = x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let scale = if max == min { 1.0 } else { (max - min) / 255.0 };
    let zp = (-min / scale).round_ties_even().clamp(0.0, 255.0);
    x.iter().map(|v| (((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) - zp) * scale).collect()
}

/// `rms_norm.wgsl` over each row of `x` of length `g.len()`.
pub fn rms_norm(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    x.chunks_exact(g.len())
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(g).map(move |(v, w)| v * inv * w)
        })
        .collect()
}

/// The cos and sin tables `rope_kv.wgsl` reads, `[max_ctx][head_dim / 2]` each, with the
/// reference's angle `pos / theta^(2i / head_dim)`.
pub fn rope_tables(head_dim: usize, max_ctx: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(max_ctx * half);
    let mut sin = Vec::with_capacity(max_ctx * half);
    for pos in 0..max_ctx {
        for i in 0..half {
            let inv_freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
            let (s, c) = (pos as f32 * inv_freq).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    (cos, sin)
}

/// `rope_kv.wgsl`'s RoPE: rotate-half RoPE on every head of each row of `x` (`[rows][heads][head_dim]`),
/// row `r` at position `pos + r`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos: usize, theta: f32) {
    for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        rope_row(row, head_dim, pos + r, theta);
    }
}

fn rope_row(x: &mut [f32], head_dim: usize, pos: usize, theta: f32) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let inv_freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
            let (s, c) = (pos as f32 * inv_freq).sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * c - b * s;
            head[i + half] = b * c + a * s;
        }
    }
}

/// `rope_kv.wgsl`'s append (after its RoPE): write each row of `k` and `v` (`[rows][kv_heads][head_dim]`), row `r` at
/// position `pos + r` of caches laid out `[kv_heads][max_ctx][head_dim]`.
pub fn kv_append(s: AttnShape, k: &[f32], v: &[f32], kcache: &mut [f32], vcache: &mut [f32], pos: usize) {
    let (hd, kvd) = (s.head_dim, s.kv_heads * s.head_dim);
    for (i, (kk, vv)) in k.iter().zip(v).enumerate() {
        let (r, e) = (i / kvd, i % kvd);
        let at = ((e / hd) * s.max_ctx + pos + r) * hd + e % hd;
        kcache[at] = *kk;
        vcache[at] = *vv;
    }
}

/// Shapes of one attention.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_ctx: usize,
}

/// `attention.wgsl`: each query row of `q` (`[rows][heads][head_dim]`), row `r` at position
/// `pos + r`, against cache entries `0..=pos + r` (causal); query head `h` uses kv head
/// `h / (heads / kv_heads)`.
pub fn attention(s: AttnShape, q: &[f32], kcache: &[f32], vcache: &[f32], pos: usize) -> Vec<f32> {
    q.chunks_exact(s.heads * s.head_dim).enumerate().flat_map(|(r, qr)| attention_row(s, qr, kcache, vcache, pos + r)).collect()
}

fn attention_row(s: AttnShape, q: &[f32], kcache: &[f32], vcache: &[f32], pos: usize) -> Vec<f32> {
    let hd = s.head_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    let group = s.heads / s.kv_heads;
    let mut out = vec![0f32; s.heads * hd];
    for h in 0..s.heads {
        let base = (h / group) * s.max_ctx * hd;
        let qh = &q[h * hd..(h + 1) * hd];
        let scores: Vec<f32> = (0..=pos)
            .map(|t| kcache[base + t * hd..base + (t + 1) * hd].iter().zip(qh).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = scores.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        for d in 0..hd {
            let acc: f32 = exps.iter().enumerate().map(|(t, e)| e * vcache[base + t * hd + d]).sum();
            out[h * hd + d] = acc / sum;
        }
    }
    out
}

/// `silu_mul.wgsl`
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

/// `add.wgsl`
pub fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Lanes of `sample.wgsl`'s workgroup: its sums run in this many strided partial sums, then a
/// tree, and the twin adds in that order.
pub const SAMPLE_LANES: usize = 256;

/// `sample.wgsl`'s parameters from a step's [`SampleParams`] over `n` logits: what the CPU
/// writes before the step (8 words).
pub fn sample_opts(n: usize, p: &SampleParams) -> [u32; 8] {
    let greedy = p.temperature == 0.0;
    let inv_t = if greedy { 1.0 } else { 1.0 / p.temperature };
    let top_k = p.top_k.min(u32::MAX as usize) as u32;
    [n as u32, greedy as u32, top_k, p.top_p.to_bits(), inv_t.to_bits(), p.repetition_penalty.to_bits(), (1.0 / p.repetition_penalty).to_bits(), p.uniform.to_bits()]
}

/// Unsigned order of keys = `f32::total_cmp` order of values.
fn key_of(z: f32) -> u32 {
    let b = z.to_bits();
    if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 }
}

fn value_of(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 { k & 0x7fff_ffff } else { !k })
}

/// `sample.wgsl`'s first sweep: each candidate's key (its penalized, scaled logit), or `None`
/// when a logit is not finite. `seen`: the ids the penalty applies to.
pub fn sample_keys(logits: &[f32], history: &[u32], p: &SampleParams) -> Option<Vec<u32>> {
    if logits.iter().any(|l| !l.is_finite()) {
        return None;
    }
    let o = sample_opts(logits.len(), p);
    let (greedy, inv_t, rp, inv_rp) = (o[1] != 0, f32::from_bits(o[4]), p.repetition_penalty, f32::from_bits(o[6]));
    let mut seen = vec![false; logits.len()];
    history.iter().filter(|t| (**t as usize) < logits.len()).for_each(|t| seen[*t as usize] = true);
    Some(
        logits
            .iter()
            .zip(&seen)
            .map(|(&l, &s)| {
                let l = if rp != 1.0 && s { if l > 0.0 { l * inv_rp } else { l * rp } } else { l };
                let k = key_of(l * inv_t);
                if greedy && k == 0x7fff_ffff { 0x8000_0000 } else { k }
            })
            .collect(),
    )
}

/// `sample.wgsl`'s weights, `exp(z - max)` (with the CPU's `exp`; the GPU's differs by ULPs).
pub fn sample_weights(keys: &[u32]) -> Vec<f32> {
    let zmax = value_of(keys.iter().copied().max().unwrap_or(0));
    keys.iter().map(|k| (value_of(*k) - zmax).exp()).collect()
}

/// `sample.wgsl`'s selection from its keys and weights (which a test may take from the GPU,
/// making the comparison exact).
pub fn sample_pick(keys: &[u32], weights: &[f32], p: &SampleParams) -> u32 {
    const ALL: u32 = u32::MAX;
    let n = keys.len();
    let o = sample_opts(n, p);
    let within = |k: u32, i: u32, v: u32, b: u32| k > v || (k == v && i <= b);
    let id_of = |v: u32, last: bool| {
        let ids = (0..n).filter(|&i| keys[i] == v).map(|i| i as u32);
        if last { ids.max() } else { ids.min() }.unwrap_or(0)
    };
    let kmax = keys.iter().copied().max().unwrap_or(0);
    if o[1] != 0 {
        return id_of(kmax, false);
    }
    // The candidates the sums run over, (key, weight, id): all of them, then after the first
    // narrowing (top-k's, or top-p's without top-k) the kept ones in id order.
    let mut list: Vec<(u32, f32, u32)> = (0..n).map(|i| (keys[i], weights[i], i as u32)).collect();
    // Strided lane sums over the list's positions, then the tree, as `sum_all`.
    let mass = |list: &[(u32, f32, u32)], v: u32, b: u32, lv: u32, lb: u32, count: bool| -> f32 {
        let mut red: Vec<f32> = (0..SAMPLE_LANES)
            .map(|lane| {
                let mut s = 0f32;
                for &(k, w, i) in list.iter().skip(lane).step_by(SAMPLE_LANES) {
                    if within(k, i, v, b) && within(k, i, lv, lb) {
                        s += if count { 1.0 } else { w };
                    }
                }
                s
            })
            .collect();
        let mut s = SAMPLE_LANES / 2;
        while s > 0 {
            for l in 0..s {
                red[l] += red[l + s];
            }
            s /= 2;
        }
        red[0]
    };
    let reaches = |m: f32, target: f32, strict: bool| if strict { m > target } else { m >= target };
    // `weighed_key`: 3 bits of v a round from the top, each from 8 buckets' weight sums (lane
    // sums in position order, then a tree per bucket) added from the top bucket down to the
    // weight above them.
    let weighed_key = |list: &[(u32, f32, u32)], lv: u32, lb: u32, target: f32, strict: bool| -> u32 {
        let (mut prefix, mut above) = (0u32, 0f32);
        for round in 0..11u32 {
            let shift = 30 - 3 * round;
            let mut red = vec![[0f32; 8]; SAMPLE_LANES];
            let mut held = 0u32;
            for (j, &(k, w, i)) in list.iter().enumerate() {
                if within(k, i, lv, lb) && (round == 0 || k >> (shift + 3) == prefix >> (shift + 3)) {
                    red[j % SAMPLE_LANES][((k >> shift) & 7) as usize] += w;
                    held |= 1 << ((k >> shift) & 7);
                }
            }
            let mut s = SAMPLE_LANES / 2;
            while s > 0 {
                for l in 0..s {
                    for d in 0..8 {
                        red[l][d] += red[l + s][d];
                    }
                }
                s /= 2;
            }
            // The highest bucket reaching the goal, else the lowest holding a candidate.
            let (mut sum, mut pick, mut pick_above) = (above, 8u32, above);
            for d in (0..8u32).rev().filter(|d| held >> d & 1 != 0) {
                let next = sum + red[0][d as usize];
                (pick, pick_above) = (d, sum);
                if reaches(next, target, strict) {
                    break;
                }
                sum = next;
            }
            prefix |= pick << shift;
            above = pick_above;
        }
        prefix
    };
    // Top-k's v by bisection over counts: exact in any order, so the kernel's radix selection
    // of the k-th highest key finds this same v.
    let shortest = |list: &[(u32, f32, u32)], lv: u32, lb: u32, target: f32, count: bool, strict: bool| -> Option<(u32, u32)> {
        if !reaches(mass(list, 0, ALL, lv, lb, count), target, strict) {
            return None;
        }
        let v = if count {
            let mut v = 0u32;
            for bit in (0..32).rev() {
                let c = v | (1 << bit);
                if reaches(mass(list, c, ALL, lv, lb, count), target, strict) {
                    v = c;
                }
            }
            v
        } else {
            weighed_key(list, lv, lb, target, strict)
        };
        // Between v's first and last candidates.
        let ids = || list.iter().filter(|&&(k, _, i)| k == v && within(k, i, lv, lb)).map(|t| t.2);
        let (mut lo, mut hi) = (ids().min().unwrap_or(0), ids().max().unwrap_or(0));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if reaches(mass(list, v, mid, lv, lb, count), target, strict) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some((v, lo))
    };
    let keep = |list: &mut Vec<(u32, f32, u32)>, lv: u32, lb: u32| list.retain(|&(k, _, i)| within(k, i, lv, lb));
    let (top_k, top_p, r) = (o[2], f32::from_bits(o[3]), f32::from_bits(o[7]));
    let (mut lv, mut lb) = (0, ALL);
    let top_k_on = top_k > 0 && (top_k as usize) < n;
    if top_k_on {
        (lv, lb) = shortest(&list, lv, lb, top_k as f32, true, false).expect("n >= k candidates count k");
        keep(&mut list, lv, lb);
    }
    if top_p < 1.0 {
        let total = mass(&list, 0, ALL, lv, lb, false);
        (lv, lb) = shortest(&list, lv, lb, top_p * total, false, false).unwrap_or((lv, lb));
        if !top_k_on {
            keep(&mut list, lv, lb);
        }
    }
    let kept = mass(&list, 0, ALL, lv, lb, false);
    match shortest(&list, lv, lb, r * kept, false, true) {
        Some((_, b)) => b,
        None if lb != ALL => lb,
        None => id_of(keys.iter().copied().min().unwrap_or(0), true),
    }
}

/// `sample.wgsl`: the token, or `None` when a logit is not finite.
pub fn sample(logits: &[f32], history: &[u32], p: &SampleParams) -> Option<u32> {
    let keys = sample_keys(logits, history, p)?;
    let weights = if p.temperature == 0.0 { vec![0.0; keys.len()] } else { sample_weights(&keys) };
    Some(sample_pick(&keys, &weights, p))
}
