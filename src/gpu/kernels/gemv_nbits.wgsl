// Block-quantized GEMV (decode): y[r][j] = sum_i x[r][i] * (q[j][i] - zp[j][b]) * scale[j][b],
// b = i / block, the weight read as nbits.wgsl says (4 or 8 bits, dequantized on the fly, no
// re-layout at load).
// A weight larger than the adapter's storage binding limit is split by rows: each part is
// dispatched on its own, its buffers holding rows row0 .. row0 + n of the weight's `total`, and
// writes y[r][row0 + j] (y rows stay `total` wide).
// One workgroup per output j (2-D grid: j = wid.x + wid.y * nwg.x), one x row per wid.z; each
// invocation sums a strided share of the row (`row_partial`), then the workgroup adds the 64
// shares: a barrier tree (gemv_reduce_workgroup.wgsl) or, where the adapter has subgroups,
// subgroupAdd (gemv_reduce_subgroups.wgsl).
// Twin: gpu::twin::gemv_nbits (over the whole weight).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// Invocation lid's share of output j for x row r: words lid, lid + 64, ... of the row.
fn row_partial(j: u32, r: u32, lid: u32) -> f32 {
    let nb = blocks();
    let pw = per_word();
    // Blocks are whole words, so word w holds elements pw * w .. pw * w + pw - 1.
    let words_per_block = BLOCK / pw;
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
    return acc;
}
