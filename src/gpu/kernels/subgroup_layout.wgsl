// How the device lays subgroups over a 64-invocation workgroup (GpuContext's probe, once per
// device with subgroups): out[lid] is the subgroup's size where invocation lid is lane
// lid % size of the subgroup whose first lane is invocation lid - lid % size, else 0.
// gemv_rows_reduce_subgroups.wgsl is right only where every invocation says so.

@group(0) @binding(0) var<storage, read_write> out: array<u32, 64>;

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
) {
    let first = subgroupBroadcastFirst(lid);
    let laid = lane == lid % size && first == lid - lane;
    out[lid] = select(0u, size, laid);
}
