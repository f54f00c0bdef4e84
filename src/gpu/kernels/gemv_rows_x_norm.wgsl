// gemv_rows.wgsl with the residual add and the RMSNorm before the product fused in, with XROWS
// 1 (each workgroup's one row of x; the engine binds it for a decode step's row, the tests
// run it over several): x is the residual stream and `resid` the projection to
// add to it, so the product is of (x + resid) * gain, and each output row's sum is multiplied
// once the lanes are added by 1 / sqrt(mean((x + resid)^2) + EPS) (norm.wgsl's arithmetic;
// the factor is the row's, so it commutes with the product). Every lane group sums the squares
// of the x it loads (all of the row: its lanes cover every chunk), and the first lane group of
// the first workgroup also writes x + resid to `x_sum`, the residual stream the layer goes on
// with (x itself is read by every workgroup, so the sum goes to another buffer). Twin:
// gpu::twin::add, gpu::twin::rms_norm, then gpu::twin::gemv_nbits.

const NORM: u32 = 1u;
override EPS: f32 = 1e-5;

@group(0) @binding(7) var<storage, read> resid: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> gain: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> x_sum: array<vec4<f32>>;

fn normed_x(at: u32, i: u32) -> vec4<f32> {
    let v = x[at] + resid[at];
    sumsq += dot(v, v);
    if (writes_sum) {
        x_sum[at] = v;
    }
    return v * gain[i];
}

fn row_scale(sumsq: f32) -> f32 {
    return 1.0 / sqrt(sumsq / f32(p.k) + EPS);
}
