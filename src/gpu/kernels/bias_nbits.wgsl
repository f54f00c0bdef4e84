// A linear's bias, added after its product over a step's rows: y[r][row0 + j] += bias[j] for the
// part's rows j < n (y rows `total` wide), the part's parameters as gemv_nbits.wgsl binds them
// (nbits.wgsl's Params, restated: this kernel reads no weight).
// Grid: (ceil(n / 64), rows), one invocation per output. Twin: gpu::twin::gemv_nbits (adds the
// bias last).

struct Params {
    n: u32,
    k: u32,
    block_size: u32,
    zp_mode: u32,
    row0: u32,
    total: u32,
    bits: u32,
    f16_params: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.n) {
        return;
    }
    let i = gid.y * p.total + p.row0 + j;
    y[i] += bias[j];
}
