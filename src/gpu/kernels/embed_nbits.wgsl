// Embedding gather from a block-quantized table for a step's rows:
// out[r][i] = (q[tokens[r]][i] - zp) * scale, the table read as nbits.wgsl says
// ([vocab][hidden], p.k = hidden, p.total = vocab). tokens are state.tokens (written by the CPU
// for prompt tokens; tokens[0] by argmax.wgsl while decoding, so the picked token never leaves
// the GPU).
//   out     [rows][hidden]
// A table larger than the adapter's storage binding limit is split by rows (see
// gemv_nbits.wgsl): each part is dispatched on its own and writes the rows whose token lies in
// its range.
// Grid: (ceil(hidden / 64), rows), one invocation per element. Twin: gpu::twin::embed_nbits.

struct State {
    pos: u32,
    rows: u32,
    tokens: array<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let r = gid.y;
    if (i >= p.k) {
        return;
    }
    // The CPU checks prompt ids against the vocabulary; the clamp only keeps reads in bounds.
    let token = min(state.tokens[r], p.total - 1u);
    if (token < p.row0 || token >= p.row0 + p.n) {
        return; // another part's row
    }
    let row = token - p.row0;
    let b = i / BLOCK;
    let pw = per_word();
    let word = data[row * words_per_row() + i / pw];
    out[r * p.k + i] = (quant(word, i % pw) - zero_point(row, b)) * block_scale(row, b);
}
