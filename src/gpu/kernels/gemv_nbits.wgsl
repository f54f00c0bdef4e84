// Block-quantized GEMV (decode): y[r][j] = sum_i x[r][i] * (q[j][i] - zp[j][b]) * scale[j][b],
// b = i / block, the weight read as nbits.wgsl says (4 or 8 bits, dequantized on the fly, no
// re-layout at load).
// A weight larger than the adapter's storage binding limit is split by rows: each part is
// dispatched on its own, its buffers holding rows row0 .. row0 + n of the weight's `total`, and
// writes y[r][row0 + j] (y rows stay `total` wide).
// One workgroup per output j (2-D grid: j = wid.x + wid.y * nwg.x), one x row per wid.z.
// Twin: gpu::twin::gemv_nbits (over the whole weight).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

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
    let nb = blocks();
    let pw = per_word();
    // Blocks are whole words, so word w holds elements pw * w .. pw * w + pw - 1.
    let words_per_block = p.block_size / pw;
    let words = nb * words_per_block;
    let row_word = j * words;
    let xo = r * p.k;
    var acc = 0.0;
    for (var w = lid; w < words; w += WG) {
        let b = w / words_per_block;
        let zp = zero_point(j, b);
        let word = data[row_word + w];
        let e0 = w * pw;
        var s = 0.0;
        for (var t = 0u; t < pw; t++) {
            let e = e0 + t;
            if (e < p.k) {
                s += (quant(word, t) - zp) * x[xo + e];
            }
        }
        acc += s * block_scale(j, b);
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
