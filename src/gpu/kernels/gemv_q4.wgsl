// int4 block GEMV (decode): y[r][j] = sum_i x[r][i] * (q[j][i] - zp[j][b]) * scale[j][b], b = i / block.
// Weights in com.microsoft::MatMulNBits layout, dequantized on the fly (no re-layout at load):
//   packed  [n][blocks][block/2] bytes, byte t of a block = element 2t (low nibble) | 2t+1 (high)
//   scales  [n][blocks] f32
//   zps     [n][ceil(blocks/2)] bytes, two 4-bit zero points per byte, low nibble first
//           (read only when has_zp = 1; otherwise zp = 8, symmetric)
// A weight larger than the adapter's storage binding limit is split by rows: each part is
// dispatched on its own, its buffers holding rows row0 .. row0 + n of the weight's `total`, and
// writes y[r][row0 + j] (y rows stay `total` wide).
// One workgroup per output j (2-D grid: j = wid.x + wid.y * nwg.x), one x row per wid.z.
// Twin: gpu::twin::gemv_q4 (over the whole weight).

struct Params {
    n: u32, // this part's rows
    k: u32,
    block_size: u32,
    has_zp: u32,
    row0: u32, // its first row in the weight
    total: u32, // the weight's rows (y's row length)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> packed: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<f32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

fn zero_point(j: u32, b: u32, blocks: u32) -> f32 {
    if (p.has_zp == 0u) {
        return 8.0;
    }
    let byte_index = j * ((blocks + 1u) / 2u) + b / 2u;
    let bits = (zps[byte_index / 4u] >> ((byte_index % 4u) * 8u)) & 0xffu;
    return f32((bits >> ((b % 2u) * 4u)) & 0xfu);
}

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
    let blocks = (p.k + p.block_size - 1u) / p.block_size;
    // 8 nibbles per u32 word; blocks are whole words, so word w holds elements 8w .. 8w+7.
    let words_per_block = p.block_size / 8u;
    let words = blocks * words_per_block;
    let row_word = j * words;
    let xo = r * p.k;
    var acc = 0.0;
    for (var w = lid; w < words; w += WG) {
        let b = w / words_per_block;
        let scale = scales[j * blocks + b];
        let zp = zero_point(j, b, blocks);
        let word = packed[row_word + w];
        let e0 = w * 8u;
        var s = 0.0;
        for (var t = 0u; t < 8u; t++) {
            let e = e0 + t;
            if (e < p.k) {
                s += (f32((word >> (4u * t)) & 0xfu) - zp) * x[xo + e];
            }
        }
        acc += s * scale;
    }
    partial[lid] = acc;
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
