// Block-quantized GEMM (prefill): y[r][j] = sum_i x[r][i] * (q[j][i] - zp[j][b]) * scale[j][b]
// for the m = state.rows rows of a prefill chunk at once:
//   x  [m][k],  y  [m][n];  the weight read as nbits.wgsl says, bindings 0..5 of
//   gemv_nbits.wgsl, plus the step state at binding 6 for m (the grid is sized for m when the
//   step is recorded).
// A part of a weight split by rows (see gemv_nbits.wgsl) writes y[r][row0 + j], y rows `total` wide.
// Tiled: a workgroup of 64 computes a 32 (rows) x 32 (outputs) tile, staging 32-wide k slices
// of x and of the dequantized weights in workgroup memory so each weight value is read once
// per 32 rows instead of once per row; each invocation accumulates a 4 x 4 sub-tile. The
// slices are stored k-major with rows padded to 33 ([kk][row], [kk][out]): the inner loop's
// reads at one kk are then consecutive words across invocations and the stores' stride 33
// words, so neither lands many invocations on one memory bank (row-major, every read of a
// kk was 32 words apart: one bank).
// The slices hold values of the arithmetic type (`hf`, arith_*.wgsl: f32, or f16 where the
// options ask and the device can), and each 32-wide slice's products are summed in it before
// they are added to the tile's f32 sums.
// Grid: (ceil(n / 32), ceil(m / 32)). Twin: gpu::twin::gemv_nbits (it takes any number of rows).

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> state: State;

const T: u32 = 32u;
const S: u32 = 33u; // a slice's row stride: T padded
var<workgroup> xs: array<hf, 1056>; // [kk][row], rows S apart
var<workgroup> ws: array<hf, 1056>; // [kk][out]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m = state.rows;
    let j0 = wid.x * T;
    let r0 = wid.y * T;
    let pw = per_word();
    let wpr = words_per_row();
    let tr = (lid / 8u) * 4u; // this invocation's 4 rows within the tile
    let tj = (lid % 8u) * 4u; // and 4 outputs
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += T) {
        // x tile: 1024 values, 16 per invocation; zero past m or k.
        for (var e = lid; e < 1024u; e += 64u) {
            let r = r0 + e / T;
            let i = k0 + e % T;
            var v = 0.0;
            if (r < m && i < p.k) {
                v = x[r * p.k + i];
            }
            xs[(e % T) * S + e / T] = hf(v);
        }
        // Weight tile: 32 outputs x a 32-wide k slice (`bits` words each: 4 of 8 int4 values,
        // 8 of 4 int8 ones).
        for (var e = lid; e < T * BITS; e += 64u) {
            let jj = e / BITS;
            let j = j0 + jj;
            let wword = k0 / pw + e % BITS; // word within the row
            let kk = (e % BITS) * pw;
            if (j < p.n && wword < wpr) {
                let word = data[j * wpr + wword];
                let b = (wword * pw) / BLOCK;
                let scale = block_scale(j, b);
                let zp = zero_point(j, b);
                for (var t = 0u; t < pw; t++) {
                    ws[(kk + t) * S + jj] = hf((quant(word, t) - zp) * scale);
                }
            } else {
                for (var t = 0u; t < pw; t++) {
                    ws[(kk + t) * S + jj] = 0.0;
                }
            }
        }
        workgroupBarrier();
        var part: array<hf, 16>;
        for (var i = 0u; i < 16u; i++) {
            part[i] = 0.0;
        }
        for (var kk = 0u; kk < T; kk++) {
            var a: array<hf, 4>;
            var w: array<hf, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[kk * S + tr + i];
                w[i] = ws[kk * S + tj + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var jx = 0u; jx < 4u; jx++) {
                    part[i * 4u + jx] += a[i] * w[jx];
                }
            }
        }
        for (var i = 0u; i < 16u; i++) {
            acc[i] += f32(part[i]);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var jx = 0u; jx < 4u; jx++) {
            let r = r0 + tr + i;
            let j = j0 + tj + jx;
            if (r < m && j < p.n) {
                y[r * p.total + p.row0 + j] = acc[i * 4u + jx];
            }
        }
    }
}
