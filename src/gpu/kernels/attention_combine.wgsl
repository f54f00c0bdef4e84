// The splits of attention.wgsl into each row's output: a split's sum of values o_s, largest
// score m_s and sum of exponentials l_s (its exponentials relative to m_s) give
//   out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s,  M = max_s m_s,
// over the splits that hold positions of the row (ceil(len / SPLIT), len = pos + r + 1).
//   part  [rows][heads][splits][head_dim + 2];  out  [rows][heads][head_dim]
// Grid: (heads, rows), one workgroup of 64 per (query head, row), an invocation per dimension.
// With ROUND_Q8 (head_dim a multiple of 32), the head's output is then rounded to int8 per
// block of 32 as round_q8.wgsl rounds it (q8_out.wgsl, before this file), as attention.wgsl's.

override ROUND_Q8: u32 = 0u;

struct Params {
    heads: u32,
    head_dim: u32,
    splits: u32,
    split: u32,
}

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> part: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let r = wid.y;
    let len = state.pos + r + 1u;
    let used = (len + p.split - 1u) / p.split;
    let hd = p.head_dim;
    let pw = hd + 2u;
    let base = (r * p.heads + h) * p.splits * pw;
    var mx = -3.4e38;
    for (var s = 0u; s < used; s++) {
        mx = max(mx, part[base + s * pw + hd]);
    }
    var den = 0.0;
    for (var s = 0u; s < used; s++) {
        den += exp(part[base + s * pw + hd] - mx) * part[base + s * pw + hd + 1u];
    }
    let inv = 1.0 / den;
    for (var d = lid; d < hd; d += 64u) {
        var acc = 0.0;
        for (var s = 0u; s < used; s++) {
            acc += exp(part[base + s * pw + hd] - mx) * part[base + s * pw + d];
        }
        out[(r * p.heads + h) * hd + d] = acc * inv;
    }
    if (ROUND_Q8 == 1u) {
        round_out((r * p.heads + h) * hd, hd, lid);
    }
}
