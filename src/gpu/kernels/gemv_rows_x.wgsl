// gemv_rows.wgsl's x as the buffer holds it (or, with GLU, silu(gate) * up of it): no norm.
// gemv_rows_x_norm.wgsl is the other choice.

const NORM: u32 = 0u;

// x's vec4 `at` (the i-th of its row).
fn normed_x(at: u32, i: u32) -> vec4<f32> {
    return x[at];
}

// What a row's sums are multiplied by.
fn row_scale(sumsq: f32) -> f32 {
    return 1.0;
}
