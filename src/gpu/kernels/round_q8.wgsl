// Activations rounded to int8 per block of 32 along each row (q8_block.wgsl, before this
// file, says how). The linears that follow read y instead of x.
//   x, y  [rows][k], k a multiple of 32
// Grid: (ceil(k / 32 / 64), rows), one invocation per block. Twin: gpu::twin::round_q8.

struct Params {
    k: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= p.k / 32u) {
        return;
    }
    let o = gid.y * p.k + b * 32u;
    var v: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) {
        v[i] = x[o + i];
    }
    v = round_block(v);
    for (var i = 0u; i < 32u; i++) {
        y[o + i] = v[i];
    }
}
