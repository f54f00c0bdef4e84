// RMSNorm's row reduction, shared by rms_norm.wgsl and add_rms_norm.wgsl (each is this file
// followed by its own): one 64-invocation workgroup per row of `p.n` values, each invocation
// summing the squares of its strided share, then a tree over the workgroup.

struct Params {
    n: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// 1 / sqrt(mean(row^2) + eps), from each invocation's sum of squares `acc` (every invocation
// of the workgroup calls it: it has barriers).
fn inv_rms(acc: f32, lid: u32) -> f32 {
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    return 1.0 / sqrt(partial[0] / f32(p.n) + p.eps);
}
