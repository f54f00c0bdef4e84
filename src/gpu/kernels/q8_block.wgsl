// A block of 32 activations rounded to int8 as a MatMulNBits node with accuracy_level = 4
// computes (onnxruntime's int8 compute; the CPU backend's int8 kernels): s = amax / 127 and
// y = round(x * 127 / amax) * s (ties to even; 0 for an all-zero block). Shared by
// round_q8.wgsl and add_rms_norm.wgsl's ROUND_Q8, so both round alike. Twin: gpu::twin::round_q8.

// a / b as IEEE division rounds it (WGSL's `/` may be 2.5 ulp off; SwiftShader's is a product
// with the reciprocal): the quotient corrected by its fma residual, as the CPU computes it.
fn div(a: f32, b: f32) -> f32 {
    let q = a / b;
    return fma(fma(-q, b, a), 1.0 / b, q);
}

fn round_block(x: array<f32, 32>) -> array<f32, 32> {
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        amax = max(amax, abs(x[i]));
    }
    let s = div(amax, 127.0);
    var inv = 0.0;
    if (amax > 0.0) {
        inv = div(127.0, amax);
    }
    var y: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) {
        y[i] = round(x[i] * inv) * s;
    }
    return y;
}
