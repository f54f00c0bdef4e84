// Rotate-half RoPE (HF / NeoX) in place on a step's rows, row r at position state.pos + r:
//   x       [rows][heads][head_dim]
//   a = x[i], b = x[i + half]:  x[i] = a*cos - b*sin,  x[i + half] = b*cos + a*sin
// cos/sin come from a table computed on the CPU ([max_ctx][half] each, as the ONNX
// exporter's cos_cache/sin_cache), because WGSL sin/cos lose precision far from 0.
// Grid: (ceil(heads * half / 64), rows), one invocation per (head, i < half) of a row.
// Twin: gpu::twin::rope.

struct Params {
    heads: u32,
    head_dim: u32,
}

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let t = gid.x;
    let r = gid.y;
    if (t >= p.heads * half) {
        return;
    }
    let h = t / half;
    let i = t % half;
    let pos = state.pos + r;
    let c = cos_t[pos * half + i];
    let s = sin_t[pos * half + i];
    let ia = (r * p.heads + h) * p.head_dim + i;
    let a = x[ia];
    let b = x[ia + half];
    x[ia] = a * c - b * s;
    x[ia + half] = b * c + a * s;
}
