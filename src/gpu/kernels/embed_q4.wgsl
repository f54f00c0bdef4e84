// Embedding gather from the int4 table for a step's rows: out[r][i] = (q[tokens[r]][i] - zp) * scale,
// the table in the same MatMulNBits layout as gemv_q4.wgsl ([vocab][blocks][block/2] bytes, f32
// scales, optional packed zero points). tokens are state.tokens (written by the CPU for prompt
// tokens; tokens[0] by argmax.wgsl while decoding, so the picked token never leaves the GPU).
//   out     [rows][hidden]
// A table larger than the adapter's storage binding limit is split by rows (see gemv_q4.wgsl):
// each part is dispatched on its own and writes the rows whose token lies in its range.
// Grid: (ceil(hidden / 64), rows), one invocation per element. Twin: gpu::twin::embed_q4.

struct Params {
    n: u32, // this part's rows
    hidden: u32,
    block_size: u32,
    has_zp: u32,
    row0: u32, // its first row in the table
    vocab: u32, // the table's rows
}

struct State {
    pos: u32,
    rows: u32,
    tokens: array<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> packed: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<f32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let r = gid.y;
    if (i >= p.hidden) {
        return;
    }
    // The CPU checks prompt ids against the vocabulary; the clamp only keeps reads in bounds.
    let token = min(state.tokens[r], p.vocab - 1u);
    if (token < p.row0 || token >= p.row0 + p.n) {
        return; // another part's row
    }
    let row = token - p.row0;
    let blocks = (p.hidden + p.block_size - 1u) / p.block_size;
    let b = i / p.block_size;
    let word = packed[row * blocks * (p.block_size / 8u) + i / 8u];
    let q = f32((word >> ((i % 8u) * 4u)) & 0xfu);
    var zp = 8.0;
    if (p.has_zp != 0u) {
        let byte_index = row * ((blocks + 1u) / 2u) + b / 2u;
        let bits = (zps[byte_index / 4u] >> ((byte_index % 4u) * 8u)) & 0xffu;
        zp = f32((bits >> ((b % 2u) * 4u)) & 0xfu);
    }
    out[r * p.hidden + i] = (q - zp) * scales[row * blocks + b];
}
