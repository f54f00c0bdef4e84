// What both attention kernels (attention.wgsl, attention_split.wgsl) bind first: the shape,
// the step state, the queries and the layer's cache (kernels.rs: attention_params); and what
// both do with RoPE fused in (ROPE).
//
// With ROPE = 1 (a decode step: one row), rope_kv.wgsl's work is done here instead of in a
// dispatch of its own: the queries and the kv head's new key are rotated as it rotates them
// (its tables, cos_t and sin_t, bound after each kernel's own buffers), the key and value at
// the row's own position are taken from the row (kn, vn) rather than from the cache, and one
// workgroup per kv head (its first query head's, in the split holding the position) appends
// them to the cache for the steps after. With ROPE = 0 the cache already holds them
// (rope_kv.wgsl ran: a prefill chunk), and the queries are read as they are.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_ctx: u32,
    scale: f32,
    q_row: u32,
    // attention_split.wgsl's splits a row (attention.wgsl: unused).
    splits: u32,
}

// 1: RoPE and the cache append fused in (below), a pipeline constant so that without it the
// kernels are as they were.
override ROPE: u32 = 0u;

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> q: array<f32>;
// Written only with p.rope, at the row's own position, which no other workgroup reads.
@group(0) @binding(3) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(4) var<storage, read_write> vcache: array<f32>;

// With ROPE: the row's new key, rotated, and its value, for the workgroup's kv head.
var<workgroup> kn: array<f32, 256>;
var<workgroup> vn: array<f32, 256>;

// Element i of the head at `base` in the q, k, v row, rotated for position `pos` as
// rope_kv.wgsl rotates it: a = x[j], b = x[j + half], j = i % half;
// x[j] = a*cos - b*sin, x[j + half] = b*cos + a*sin.
fn rotated(base: u32, i: u32, pos: u32) -> f32 {
    let half = p.head_dim / 2u;
    let j = i % half;
    let c = cos_t[pos * half + j];
    let s = sin_t[pos * half + j];
    let a = q[base + j];
    let b = q[base + j + half];
    if (i < half) {
        return a * c - b * s;
    }
    return b * c + a * s;
}

// Row r's new key (rotated) and value of kv head kvh into kn and vn, and with `append` into
// the cache at the row's position. Every invocation calls it (a barrier ends it).
fn fresh_kv(r: u32, kvh: u32, lid: u32, append: bool) {
    let pos = state.pos + r;
    let ko = r * p.q_row + (p.heads + kvh) * p.head_dim;
    let vo = ko + p.kv_heads * p.head_dim;
    let at = (kvh * p.max_ctx + pos) * p.head_dim;
    for (var i = lid; i < p.head_dim; i += WG) {
        let k = rotated(ko, i, pos);
        let v = q[vo + i];
        kn[i] = k;
        vn[i] = v;
        if (append) {
            kcache[at + i] = k;
            vcache[at + i] = v;
        }
    }
    workgroupBarrier();
}

// Four dimensions from d of a key: the cached one at `ko`, or with `own` the row's new one.
fn key4(ko: u32, d: u32, own: bool) -> vec4<f32> {
    if (own) {
        return vec4<f32>(kn[d], kn[d + 1u], kn[d + 2u], kn[d + 3u]);
    }
    return vec4<f32>(kcache[ko + d], kcache[ko + d + 1u], kcache[ko + d + 2u], kcache[ko + d + 3u]);
}

fn key1(ko: u32, d: u32, own: bool) -> f32 {
    if (own) {
        return kn[d];
    }
    return kcache[ko + d];
}
