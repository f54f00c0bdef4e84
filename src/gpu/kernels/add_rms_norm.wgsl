// Residual add, then RMSNorm of the sum, over a step's rows (one dispatch for the two):
// s[r][i] = x[r][i] + t[r][i]; out[r][i] = s[r][i] / sqrt(mean(s[r]^2) + eps) * g[i]. The sum
// goes to another buffer than x (the residual stream alternates between two, as where the
// add and norm are fused into the GEMV after them: gemv_rows_x_norm.wgsl). One workgroup per
// row r (norm.wgsl's reduction); each invocation normalizes the elements it summed, so no
// invocation reads another's writes to s. The same arithmetic in the same order as the add and
// rms_norm.wgsl: bit-identical. Twin: gpu::twin::add, then gpu::twin::rms_norm.
// With ROUND_Q8 (p.n a multiple of 32), out is then rounded to int8 per block of 32 as
// round_q8.wgsl rounds it (q8_out.wgsl, before this file): the rounding the linears after
// a norm ask for (accuracy_level = 4), in the same dispatch. Twin: then gpu::twin::round_q8.

override ROUND_Q8: u32 = 0u;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.n;
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let v = x[base + i] + t[base + i];
        s[base + i] = v;
        acc += v * v;
    }
    let inv = inv_rms(acc, lid);
    for (var i = lid; i < p.n; i += WG) {
        out[base + i] = s[base + i] * inv * g[i];
    }
    if (ROUND_Q8 == 1u) {
        round_out(base, p.n, lid);
    }
}
