//! Plain-Rust twins of the WGSL kernels in `kernels/`: the same computation, slow and
//! obviously right. Kernel tests run both on random shapes and compare.

use crate::quant::Q4Weight;

/// `gemv_q4.wgsl`: `y[r][j] = sum_i x[r][i] * (q[j][i] - zp) * scale`, rows of `x` of length `w.k`.
pub fn gemv_q4(w: &Q4Weight, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len() % w.k, 0, "x holds whole rows of k");
    let nb = w.blocks_per_row();
    let mut y = Vec::with_capacity(x.len() / w.k * w.n);
    for xr in x.chunks_exact(w.k) {
        for j in 0..w.n {
            let mut acc = 0f32;
            for b in 0..nb {
                let scale = w.scales[j * nb + b];
                let zp = w.zero_points.as_ref().map_or(8.0, |z| z[j * nb + b] as f32);
                let mut s = 0f32;
                for t in 0..w.block_size {
                    let i = b * w.block_size + t;
                    if i < w.k {
                        s += (nibble(w, j, b, t) as f32 - zp) * xr[i];
                    }
                }
                acc += s * scale;
            }
            y.push(acc);
        }
    }
    y
}

/// Element `t` of block `b` of row `j` (MatMulNBits: low nibble first).
fn nibble(w: &Q4Weight, j: usize, b: usize, t: usize) -> u8 {
    let byte = w.packed[(j * w.blocks_per_row() + b) * w.block_size / 2 + t / 2];
    if t % 2 == 0 { byte & 0x0f } else { byte >> 4 }
}

/// `embed_q4.wgsl`: row `token` of the int4 table, dequantized.
pub fn embed_q4(table: &Q4Weight, token: usize) -> Vec<f32> {
    let nb = table.blocks_per_row();
    (0..table.k)
        .map(|i| {
            let (b, t) = (i / table.block_size, i % table.block_size);
            let zp = table.zero_points.as_ref().map_or(8.0, |z| z[token * nb + b] as f32);
            (nibble(table, token, b, t) as f32 - zp) * table.scales[token * nb + b]
        })
        .collect()
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

/// The cos and sin tables `rope.wgsl` reads, `[max_ctx][head_dim / 2]` each, with the
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

/// `rope.wgsl`: rotate-half RoPE on every head of each row of `x` (`[rows][heads][head_dim]`),
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

/// `kv_append.wgsl`: write each row of `k` and `v` (`[rows][kv_heads][head_dim]`), row `r` at
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
