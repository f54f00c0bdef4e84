// Causal attention, grouped-query heads, over the GPU-resident KV cache, for a step's query
// rows: row r sits at position state.pos + r and attends to positions 0..=pos+r (the cache
// already holds the step's own keys and values: rope_kv.wgsl runs first; or, for a decode
// step, ROPE fuses it in: attention_bindings.wgsl). Decode is the one-row case; a prefill
// chunk runs all its rows in one dispatch.
//   q       [rows][q_row]: a row's queries [heads][head_dim] first (the q, k, v products
//           side by side: q_row = (heads + 2 kv_heads) head_dim)
//   kcache, vcache  [kv_heads][max_ctx][head_dim];  query head h reads kv head h / (heads / kv_heads)
//   scores  [rows][heads][max_ctx] scratch (a workgroup only touches its own row and head)
//   out     [rows][heads][head_dim]
// Softmax inside: scores, max, exp and sum, then the weighted sum of values.
// Grid: (heads, rows), one workgroup of 64 per (query head, row). Twin: gpu::twin::attention
// (the sums run in another order: the test allows 2e-5).
// With ROUND_Q8 (head_dim a multiple of 32), the head's output is then rounded to int8 per
// block of 32 as round_q8.wgsl rounds it (q8_out.wgsl, before this file): the output
// projection's input where its node asks for int8 activations, in the same dispatch.

override ROUND_Q8: u32 = 0u;

// Params, State and bindings 0-4: attention_bindings.wgsl.
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> cos_t: array<f32>;
@group(0) @binding(8) var<storage, read> sin_t: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;
// With ROPE: the head's rotated queries (heads up to 256 wide then).
var<workgroup> qh: array<f32, 256>;

fn query(qo: u32, d: u32) -> f32 {
    if (ROPE == 1u) {
        return qh[d];
    }
    return q[qo + d];
}

// The row's scaled score against the cached key at `ko`, or with `own` its new one: four
// dimensions an iteration into four sums (independent loads in flight together, as in the
// values' sum below).
fn score(qo: u32, ko: u32, own: bool) -> f32 {
    let hd4 = p.head_dim - p.head_dim % 4u;
    var acc = vec4<f32>(0.0);
    for (var d = 0u; d < hd4; d += 4u) {
        let qv = vec4<f32>(query(qo, d), query(qo, d + 1u), query(qo, d + 2u), query(qo, d + 3u));
        acc = fma(qv, key4(ko, d, own), acc);
    }
    var s = (acc.x + acc.y) + (acc.z + acc.w);
    for (var d = hd4; d < p.head_dim; d++) {
        s += query(qo, d) * key1(ko, d, own);
    }
    return s * p.scale;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let r = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    // Causal: this row sees itself and everything before it, nothing after.
    let len = state.pos + r + 1u;
    let qo = r * p.q_row + h * p.head_dim;
    let kv_base = kvh * p.max_ctx * p.head_dim;
    let so = (r * p.heads + h) * p.max_ctx;

    // With ROPE the last position is the row's own: its key and value from the row, the
    // positions before it from the cache.
    let cached = len - ROPE;
    if (ROPE == 1u) {
        for (var i = lid; i < p.head_dim; i += WG) {
            qh[i] = rotated(qo, i, len - 1u);
        }
        fresh_kv(r, kvh, lid, h % (p.heads / p.kv_heads) == 0u);
    }

    // Each invocation's positions' scores.
    var m = -3.4e38;
    for (var t = lid; t < cached; t += WG) {
        let s = score(qo, kv_base + t * p.head_dim, false);
        scores[so + t] = s;
        m = max(m, s);
    }
    if (ROPE == 1u && lid == (len - 1u) % WG) {
        let s = score(qo, 0u, true);
        scores[so + len - 1u] = s;
        m = max(m, s);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            red[lid] = max(red[lid], red[lid + stride]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();

    var sum = 0.0;
    for (var t = lid; t < len; t += WG) {
        let e = exp(scores[so + t] - mx);
        scores[so + t] = e;
        sum += e;
    }
    red[lid] = sum;
    // The exp'd scores written above are read by other invocations below.
    storageBarrier();
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];

    // Four positions an iteration into four sums: their loads are independent, so they can be
    // in flight together (one sum's chain would wait on each load in turn).
    let hd = p.head_dim;
    let len4 = cached - cached % 4u;
    for (var d = lid; d < hd; d += WG) {
        var acc = vec4<f32>(0.0);
        var vo = kv_base + d;
        for (var t = 0u; t < len4; t += 4u) {
            let sc = vec4<f32>(scores[so + t], scores[so + t + 1u], scores[so + t + 2u], scores[so + t + 3u]);
            let v = vec4<f32>(vcache[vo], vcache[vo + hd], vcache[vo + 2u * hd], vcache[vo + 3u * hd]);
            acc = fma(sc, v, acc);
            vo += 4u * hd;
        }
        var tail = 0.0;
        for (var t = len4; t < cached; t++) {
            tail += scores[so + t] * vcache[kv_base + t * hd + d];
        }
        if (ROPE == 1u) {
            tail += scores[so + len - 1u] * vn[d];
        }
        out[(r * p.heads + h) * hd + d] = ((acc.x + acc.y) + (acc.z + acc.w) + tail) * inv;
    }
    if (ROUND_Q8 == 1u) {
        round_out((r * p.heads + h) * hd, hd, lid);
    }
}
