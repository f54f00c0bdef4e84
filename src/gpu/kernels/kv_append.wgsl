// Append a step's keys and values to the layer's GPU-resident cache, row r at position
// state.pos + r:
//   k, v    [rows][kv_heads][head_dim]
//   kcache, vcache  [kv_heads][max_ctx][head_dim]
// Grid: (ceil(kv_dim / 64), rows), one invocation per element of k. Twin: gpu::twin::kv_append.

struct Params {
    kv_dim: u32,
    head_dim: u32,
    max_ctx: u32,
}

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(5) var<storage, read_write> vcache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let r = gid.y;
    if (i >= p.kv_dim) {
        return;
    }
    let h = i / p.head_dim;
    let d = i % p.head_dim;
    let at = (h * p.max_ctx + state.pos + r) * p.head_dim + d;
    kcache[at] = k[r * p.kv_dim + i];
    vcache[at] = v[r * p.kv_dim + i];
}
