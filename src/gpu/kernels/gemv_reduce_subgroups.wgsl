// gemv_nbits.wgsl's entry point where the device has subgroups (natively: naga takes the
// builtins under wgpu's SUBGROUP feature, without an `enable` directive): each subgroup adds its shares with subgroupAdd, its first lane keeps the
// sum, one barrier, and invocation 0 adds those. WGSL does not say how subgroups map onto
// local_invocation_index, so every invocation writes its slot (0 but on a subgroup's lane 0)
// and invocation 0 reads all 64: right for any subgroup size and layout.

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let j = wid.x + wid.y * nwg.x;
    if (j >= p.n) {
        return; // whole workgroup: j is uniform
    }
    let r = wid.z;
    let sum = subgroupAdd(row_partial(j, r, lid));
    partial[lid] = select(0.0, sum, lane == 0u);
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) {
            total += partial[i];
        }
        y[r * p.total + p.row0 + j] = total;
    }
}
