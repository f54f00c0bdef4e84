// gemv_nbits.wgsl's entry point without subgroups: the 64 shares added by a barrier tree.

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let j = wid.x + wid.y * nwg.x;
    if (j >= p.n) {
        return; // whole workgroup: j is uniform
    }
    let r = wid.z;
    partial[lid] = row_partial(j, r, lid);
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        y[r * p.total + p.row0 + j] = partial[0];
    }
}
