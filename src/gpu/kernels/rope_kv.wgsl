// Rotate-half RoPE of a step's queries and keys, and the keys and values appended to the
// layer's GPU-resident cache, in one dispatch (the decode step's were three: RoPE on q, on k,
// then the append), row r at position state.pos + r:
//   qkv     [rows][q | k | v]: a row's q [heads][head_dim], then k and v [kv_heads][head_dim]
//           (the q, k, v products side by side); q and k rotated in place
//   kcache, vcache  [kv_heads][max_ctx][head_dim]   the rotated k and v at the row's position
// a = x[i], b = x[i + half]:  x[i] = a*cos - b*sin,  x[i + half] = b*cos + a*sin, cos/sin from
// the CPU's table ([max_ctx][half] each), because WGSL sin/cos lose precision far from 0.
// Grid: (ceil((heads + kv_heads) * half / 64), rows), one invocation per
// (head, i < half) of q, then of k. Twin: gpu::twin::rope on q and k, then gpu::twin::kv_append.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_ctx: u32,
}

// q, k and v of a row: (heads + 2 kv_heads) head_dim values.
fn row_len() -> u32 {
    return (p.heads + 2u * p.kv_heads) * p.head_dim;
}

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(6) var<storage, read_write> vcache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let r = gid.y;
    let nq = p.heads * half;
    if (gid.x >= nq + p.kv_heads * half) {
        return;
    }
    let pos = state.pos + r;
    let on_q = gid.x < nq;
    let t = select(gid.x - nq, gid.x, on_q);
    let h = t / half;
    let i = t % half;
    let c = cos_t[pos * half + i];
    let s = sin_t[pos * half + i];
    let row = r * row_len();
    if (on_q) {
        let ia = row + h * p.head_dim + i;
        let a = qkv[ia];
        let b = qkv[ia + half];
        qkv[ia] = a * c - b * s;
        qkv[ia + half] = b * c + a * s;
        return;
    }
    let kv_dim = p.kv_heads * p.head_dim;
    let ia = row + p.heads * p.head_dim + h * p.head_dim + i;
    let a = qkv[ia];
    let b = qkv[ia + half];
    let ra = a * c - b * s;
    let rb = b * c + a * s;
    qkv[ia] = ra;
    qkv[ia + half] = rb;
    let at = (h * p.max_ctx + pos) * p.head_dim + i;
    kcache[at] = ra;
    kcache[at + half] = rb;
    vcache[at] = qkv[ia + kv_dim];
    vcache[at + half] = qkv[ia + kv_dim + half];
}
