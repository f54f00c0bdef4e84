// gemv_rows.wgsl's reduction without subgroups: each lane group's shares added by a barrier
// tree in workgroup memory; the sums are right in the group's first lane. With NORM, the lane
// group's sum of squares is added too (the slot after its rows' sums).

var<workgroup> partial: array<f32, 1024>; // [x row][row of the group][invocation]: 16 x 64

fn reduce_lanes(s: array<f32, 16>, lid: u32) -> array<f32, 16> {
    for (var i = 0u; i < ROWS * XROWS + NORM; i++) {
        partial[i * WG + lid] = s[i];
    }
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lid % LANES < stride) {
            for (var i = 0u; i < ROWS * XROWS + NORM; i++) {
                partial[i * WG + lid] += partial[i * WG + lid + stride];
            }
        }
        workgroupBarrier();
    }
    var out: array<f32, 16>;
    for (var i = 0u; i < ROWS * XROWS + NORM; i++) {
        out[i] = partial[i * WG + lid];
    }
    return out;
}
