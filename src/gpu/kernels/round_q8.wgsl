// Activations rounded to int8 per block of 32 along each row, as a MatMulNBits node with
// accuracy_level = 4 computes (onnxruntime's int8 compute; the CPU backend's int8 kernels):
// per block, s = amax / 127 and y = round(x * 127 / amax) * s (ties to even; 0 for an all-zero
// block). The linears that follow read y instead of x.
//   x, y  [rows][k], k a multiple of 32
// Grid: (ceil(k / 32 / 64), rows), one invocation per block. Twin: gpu::twin::round_q8.

struct Params {
    k: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// a / b as IEEE division rounds it (WGSL's `/` may be 2.5 ulp off; SwiftShader's is a product
// with the reciprocal): the quotient corrected by its fma residual, as the CPU computes it.
fn div(a: f32, b: f32) -> f32 {
    let q = a / b;
    return fma(fma(-q, b, a), 1.0 / b, q);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= p.k / 32u) {
        return;
    }
    let o = gid.y * p.k + b * 32u;
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        amax = max(amax, abs(x[o + i]));
    }
    let s = div(amax, 127.0);
    var inv = 0.0;
    if (amax > 0.0) {
        inv = div(127.0, amax);
    }
    for (var i = 0u; i < 32u; i++) {
        y[o + i] = round(x[o + i] * inv) * s;
    }
}
