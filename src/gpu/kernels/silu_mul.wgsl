// SwiGLU activation over a step's rows: out[r][i] = silu(gate[r][i]) * up[r][i],
// silu(g) = g / (1 + exp(-g)), rows of length n, gate and up side by side in gate_up
// ([rows][2n]: the two products written into one row).
// Grid: (ceil(n / 64), rows). Twin: gpu::twin::silu_mul.
// With ROUND_Q8 (n a multiple of 32), one invocation per block of 32 of a row, rounded to int8
// after as round_q8.wgsl rounds it (q8_block.wgsl, before this file): the down projection's
// input where its node asks for int8 activations, in the same dispatch. Grid: (ceil(n / 32 /
// 64), rows). Twin: then gpu::twin::round_q8.

override ROUND_Q8: u32 = 0u;

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn silu_mul(at: u32) -> f32 {
    let g = gate_up[at];
    return g / (1.0 + exp(-g)) * gate_up[at + p.n];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (ROUND_Q8 == 1u) {
        if (gid.x >= p.n / 32u) {
            return;
        }
        var v: array<f32, 32>;
        for (var i = 0u; i < 32u; i++) {
            v[i] = silu_mul(gid.y * 2u * p.n + gid.x * 32u + i);
        }
        v = round_block(v);
        for (var i = 0u; i < 32u; i++) {
            out[gid.y * p.n + gid.x * 32u + i] = v[i];
        }
        return;
    }
    if (gid.x >= p.n) {
        return;
    }
    out[gid.y * p.n + gid.x] = silu_mul(gid.y * 2u * p.n + gid.x);
}
