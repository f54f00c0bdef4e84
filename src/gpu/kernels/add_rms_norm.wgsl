// Residual add, then RMSNorm of the sum, over a step's rows (one dispatch for the two):
// x[r][i] += t[r][i]; y[r][i] = x[r][i] / sqrt(mean(x[r]^2) + eps) * g[i]. One workgroup per
// row r (norm.wgsl's reduction); each invocation normalizes the elements it summed, so no
// invocation reads another's writes to x. The same arithmetic in the same order as the add and
// rms_norm.wgsl: bit-identical. Twin: gpu::twin::add, then gpu::twin::rms_norm.

@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.n;
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let v = x[base + i] + t[base + i];
        x[base + i] = v;
        acc += v * v;
    }
    let inv = inv_rms(acc, lid);
    for (var i = lid; i < p.n; i += WG) {
        y[base + i] = x[base + i] * inv * g[i];
    }
}
