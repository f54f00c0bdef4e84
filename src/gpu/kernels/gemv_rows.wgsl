// Block-quantized GEMV (decode) for big GPUs: y[r][j] = sum_i x[r][i] * (q[j][i] - zp) * scale,
// the weight read as nbits.wgsl says, as gemv_nbits.wgsl computes it, but laid out for memory
// throughput: a group of LANES invocations computes ROWS output rows (64 / LANES groups per
// workgroup), each invocation reading the rows 16 bytes at a time (a vec4<u32> of values: 32
// int4, 16 int8, 8 f16 or 4 f32 ones) against the matching x, loaded once as vec4<f32>s for
// the ROWS rows (x is read from cache 8 times as many bytes as int4 weights are from memory:
// ROWS divides that), so many wide loads are in flight per invocation instead of one 4-byte
// word. For weights whose rows are whole 16-byte chunks with
// no padding (k a multiple of the block and of 4, row bytes a multiple of 16:
// gpu::nbits::BlockSpec::rows_kernel_fits); gemv_nbits.wgsl takes the rest.
// Also the prefill's product over a chunk's state.rows rows of x: a workgroup takes XROWS of
// them (wid.z), each 16-byte chunk of the weight loaded once into registers for all XROWS
// (the weight read once per XROWS rows; ROWS * XROWS <= 16 sums per invocation).
// The lanes' shares are added by a barrier tree (gemv_rows_reduce_workgroup.wgsl) or, where
// the device has subgroups laid out over consecutive invocations, by shuffles
// (gemv_rows_reduce_subgroups.wgsl).
// With GLU, x is the feed-forward's activation of [gate | up] rows (each k wide; silu_mul.wgsl
// fused into the down projection): x[r][i] = silu(gate[r][i]) * up[r][i], computed as that
// kernel does where the chunk's x is loaded.
// With gemv_rows_x_norm.wgsl (NORM 1; gemv_rows_x.wgsl otherwise, NORM 0), x is the residual
// stream plus a projection, normalized as it is loaded (the add and RMSNorm before a decode
// step's q/k/v or gate/up product fused in; that file says how).
// Split weights as in gemv_nbits.wgsl (`row0`, `total`). Grid: ceil(n / (64 / LANES * ROWS))
// workgroups as x + y * nwg.x, ceil(rows / XROWS) as z.
// x and the weight's values are of the arithmetic type `hf` (arith_*.wgsl: f32, or f16 where
// the options ask and the device can), a chunk's products summed in it (f16 takes each value
// times its scale; f32 scales the chunk's sum once), the chunks' sums added in f32.
// Twin: gpu::twin::gemv_nbits (with GLU: of gpu::twin::silu_mul).

override LANES: u32 = 16u; // 4, 8, 16, 32 or 64
override ROWS: u32 = 1u; // output rows per lane group: 1, 2 or 4
override XROWS: u32 = 1u; // x rows per workgroup: 1, 2 or 4
override GLU: u32 = 0u; // 1: x is silu(gate) * up of [gate | up] rows

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> state: State;

const WG: u32 = 64u;

// With NORM: this invocation's sum of the squares of the x it loaded, and whether it writes
// the residual sum (gemv_rows_x_norm.wgsl).
var<private> sumsq: f32;
var<private> writes_sum: bool;
// Where a lane group's sum of squares goes among its sums to add (after the rows' sums).
fn sumsq_slot() -> u32 {
    return min(ROWS * XROWS, 15u);
}

// The x values of one chunk of row r from its vec4 `first`: 32 / BITS vec4s (8 for int4, 4
// int8, 2 f16, 1 f32), loaded once for the ROWS rows that use them.
fn load_x(r: u32, first: u32) -> array<vec4<hf>, 8> {
    var a: array<vec4<hf>, 8>;
    if (GLU == 1u) {
        // Rows of 2k: the gate's vec4s, then the up's k / 4 on.
        let g0 = r * p.k / 2u + first;
        for (var i = 0u; i < 32u / BITS; i++) {
            let g = x[g0 + i];
            a[i] = vec4<hf>(g / (vec4<f32>(1.0) + exp(-g)) * x[g0 + p.k / 4u + i]);
        }
        return a;
    }
    let x0 = r * p.k / 4u + first;
    for (var i = 0u; i < 32u / BITS; i++) {
        a[i] = vec4<hf>(normed_x(x0 + i, first + i));
    }
    return a;
}

// (q - zp) of a word's values in the arithmetic type, times the block's scale in f16 (there
// the scale goes in first, so sums are as large as the f32 ones: (q - zp) alone, up to 255
// for 8 bits, times x summed over a chunk could leave f16's range); in f32 the chunk's sum is
// scaled once instead.
fn dequant(q: vec4<hf>, z: vec4<hf>, s: hf) -> vec4<hf> {
    if (ARITH_F16) {
        return (q - z) * s;
    }
    return q - z;
}

// Word t of a chunk against the chunk's x (`xa`): sum of (q - zp) * x over its values (times
// the scale `s` in f16), in the arithmetic type (arith_*.wgsl).
fn word_dot(w: u32, xa: array<vec4<hf>, 8>, t: u32, zp: f32, s: hf) -> hf {
    let z = vec4<hf>(hf(zp));
    if (BITS == 4u) {
        let lo = vec4<hf>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
        let hi = vec4<hf>((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
        return dot(dequant(lo, z, s), xa[2u * t]) + dot(dequant(hi, z, s), xa[2u * t + 1u]);
    }
    // 8 bits: four values, one vec4 of x.
    let q = vec4<hf>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
    return dot(dequant(q, z, s), xa[t]);
}

// What a sum of word_dot's is still multiplied by: the scale in f32, 1 where f16 took it.
fn sum_scale(scale: f32) -> f32 {
    if (ARITH_F16) {
        return 1.0;
    }
    return scale;
}

// Chunk c (`ch`, 16 bytes) of the part's row j against its x (`xa`). Float weights are always
// multiplied in f32 (only kernels over 4- and 8-bit weights take arith_f16.wgsl).
fn chunk_dot(ch: vec4<u32>, j: u32, c: u32, xa: array<vec4<hf>, 8>) -> f32 {
    if (BITS == 32u) {
        return dot(bitcast<vec4<f32>>(ch), vec4<f32>(xa[0]));
    }
    if (BITS == 16u) {
        let a = vec4<f32>(unpack2x16float(ch.x), unpack2x16float(ch.y));
        let b = vec4<f32>(unpack2x16float(ch.z), unpack2x16float(ch.w));
        return dot(a, vec4<f32>(xa[0])) + dot(b, vec4<f32>(xa[1]));
    }
    let pw = per_word();
    if (BLOCK >= 4u * pw) {
        // The chunk lies in one block (BLOCK is a multiple of 4 words then).
        let b = c * 4u * pw / BLOCK;
        let zp = zero_point(j, b);
        let scale = block_scale(j, b);
        let h = hf(scale);
        let s = word_dot(ch.x, xa, 0u, zp, h) + word_dot(ch.y, xa, 1u, zp, h) + word_dot(ch.z, xa, 2u, zp, h) + word_dot(ch.w, xa, 3u, zp, h);
        return f32(s) * sum_scale(scale);
    }
    // Blocks shorter than a chunk (int4 blocks of 16: two per chunk): word by word.
    var acc = 0.0;
    for (var t = 0u; t < 4u; t++) {
        let b = (c * 4u + t) * pw / BLOCK;
        let scale = block_scale(j, b);
        acc += f32(word_dot(ch[t], xa, t, zero_point(j, b), hf(scale))) * sum_scale(scale);
    }
    return acc;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Lane group g of the workgroup computes rows j0 .. j0 + ROWS, for x rows r0 .. r0 + nx.
    let j0 = ((wid.x + wid.y * nwg.x) * (WG / LANES) + lid / LANES) * ROWS;
    let lane = lid % LANES;
    let r0 = wid.z * XROWS;
    writes_sum = (wid.x + wid.y * nwg.x == 0u) && (lid < LANES);
    let nx = min(XROWS, state.rows - min(r0, state.rows));
    var s: array<f32, 16>; // [x row][row]
    let chunks = words_per_row() / 4u;
    if (j0 < p.n) {
        for (var c = lane; c < chunks; c += LANES) {
            var ch: array<vec4<u32>, 4>;
            for (var q = 0u; q < ROWS; q++) {
                if (j0 + q < p.n) {
                    ch[q] = data[(j0 + q) * chunks + c];
                }
            }
            // Constant bounds and guards, not `t < nx`: the loops unroll and s stays in registers.
            for (var t = 0u; t < XROWS; t++) {
                if (t >= nx) {
                    break;
                }
                let xa = load_x(r0 + t, c * (32u / BITS));
                for (var q = 0u; q < ROWS; q++) {
                    if (j0 + q < p.n) {
                        s[t * ROWS + q] += chunk_dot(ch[q], j0 + q, c, xa);
                    }
                }
            }
        }
    }
    if (NORM == 1u) {
        s[sumsq_slot()] = sumsq;
    }
    // The lane group's shares added (gemv_rows_reduce_*.wgsl), the sums in its first lane.
    let sums = reduce_lanes(s, lid);
    let scale = row_scale(sums[sumsq_slot()]);
    if (lane == 0u) {
        for (var t = 0u; t < XROWS; t++) {
            for (var q = 0u; q < ROWS; q++) {
                if (t < nx && j0 + q < p.n) {
                    y[(r0 + t) * p.total + p.row0 + j0 + q] = sums[t * ROWS + q] * scale;
                }
            }
        }
    }
}
