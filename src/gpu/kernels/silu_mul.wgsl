// SwiGLU activation over a step's rows: out[r][i] = silu(gate[r][i]) * up[r][i],
// silu(g) = g / (1 + exp(-g)), rows of length n, gate and up side by side in gate_up
// ([rows][2n]: the two products written into one row).
// Grid: (ceil(n / 64), rows). Twin: gpu::twin::silu_mul.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.n) {
        return;
    }
    let at = gid.y * 2u * p.n + gid.x;
    let g = gate_up[at];
    out[gid.y * p.n + gid.x] = g / (1.0 + exp(-g)) * gate_up[at + p.n];
}
