// gemv_rows.wgsl's reduction on devices with subgroups: a butterfly of subgroupShuffleXor over
// the lane group, no workgroup memory and no barrier; every lane ends with the sums. Right only
// where a lane group's LANES consecutive invocations are consecutive lanes of one subgroup:
// WGSL does not promise that layout, so GpuContext picks this file only after its probe saw
// the device lay subgroups over consecutive invocations, and for LANES up to the adapter's
// smallest subgroup (natively: naga takes the builtins under wgpu's SUBGROUP feature). With
// NORM, the lane group's sum of squares is added too (the slot after its rows' sums).

fn reduce_lanes(s: array<f32, 16>, lid: u32) -> array<f32, 16> {
    var out = s;
    for (var m = LANES / 2u; m > 0u; m /= 2u) {
        for (var i = 0u; i < ROWS * XROWS + NORM; i++) {
            out[i] += subgroupShuffleXor(out[i], m);
        }
    }
    return out;
}
