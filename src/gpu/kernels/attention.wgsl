// Causal attention, grouped-query heads, over the GPU-resident KV cache, for a step's query
// rows: row r sits at position state.pos + r and attends to positions 0..=pos+r (the cache
// already holds the step's own keys and values: rope_kv.wgsl runs first). Decode is the
// one-row case; a prefill chunk runs all its rows in one dispatch.
//   q       [rows][q_row]: a row's queries [heads][head_dim] first (the q, k, v products
//           side by side: q_row = (heads + 2 kv_heads) head_dim)
//   kcache, vcache  [kv_heads][max_ctx][head_dim];  query head h reads kv head h / (heads / kv_heads)
//   scores  [rows][heads][max_ctx] scratch (a workgroup only touches its own row and head)
//   out     [rows][heads][head_dim]
// Softmax inside: scores, max, exp and sum, then the weighted sum of values.
// Grid: (heads, rows), one workgroup of 64 per (query head, row). Twin: gpu::twin::attention.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_ctx: u32,
    scale: f32,
    q_row: u32,
}

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kcache: array<f32>;
@group(0) @binding(4) var<storage, read> vcache: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

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

    var m = -3.4e38;
    for (var t = lid; t < len; t += WG) {
        let ko = kv_base + t * p.head_dim;
        var s = 0.0;
        for (var d = 0u; d < p.head_dim; d++) {
            s += q[qo + d] * kcache[ko + d];
        }
        s *= p.scale;
        scores[so + t] = s;
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

    for (var d = lid; d < p.head_dim; d += WG) {
        var acc = 0.0;
        for (var t = 0u; t < len; t++) {
            acc += scores[so + t] * vcache[kv_base + t * p.head_dim + d];
        }
        out[(r * p.heads + h) * p.head_dim + d] = acc * inv;
    }
}
