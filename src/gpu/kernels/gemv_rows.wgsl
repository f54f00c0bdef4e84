// Block-quantized GEMV (decode) for big GPUs: y[r][j] = sum_i x[r][i] * (q[j][i] - zp) * scale,
// the weight read as nbits.wgsl says, as gemv_nbits.wgsl computes it, but laid out for memory
// throughput: LANES invocations per output row, 64 / LANES rows per workgroup, and each
// invocation reads its row 16 bytes at a time (a vec4<u32> of values: 32 int4, 16 int8, 8 f16
// or 4 f32 ones) with the matching x as vec4<f32>, so many wide loads are in flight per
// invocation instead of one 4-byte word. For weights whose rows are whole 16-byte chunks with
// no padding (k a multiple of the block and of 4, row bytes a multiple of 16:
// gpu::nbits::BlockSpec::rows_kernel_fits); gemv_nbits.wgsl takes the rest.
// Split weights as in gemv_nbits.wgsl (`row0`, `total`). Grid: ceil(n / (64 / LANES))
// workgroups as x + y * nwg.x, one x row per wid.z.
// Twin: gpu::twin::gemv_nbits.

override LANES: u32 = 16u; // 4, 8, 16, 32 or 64

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> zps: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// Word w of a row, at x's vec4 index xv (its first value's): sum of (q - zp) * x over the
// word's values.
fn word_dot(w: u32, xv: u32, zp: f32) -> f32 {
    let z = vec4<f32>(zp);
    if (BITS == 4u) {
        let lo = vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
        let hi = vec4<f32>((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
        return dot(lo - z, x[xv]) + dot(hi - z, x[xv + 1u]);
    }
    // 8 bits: four values, one vec4 of x.
    let q = vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
    return dot(q - z, x[xv]);
}

// Chunk c (16 bytes) of the part's row j against x row r (vec4 index xo of its start).
fn chunk_dot(j: u32, c: u32, xo: u32) -> f32 {
    let ch = data[j * (words_per_row() / 4u) + c];
    if (BITS == 32u) {
        return dot(bitcast<vec4<f32>>(ch), x[xo + c]);
    }
    if (BITS == 16u) {
        let a = vec4<f32>(unpack2x16float(ch.x), unpack2x16float(ch.y));
        let b = vec4<f32>(unpack2x16float(ch.z), unpack2x16float(ch.w));
        return dot(a, x[xo + 2u * c]) + dot(b, x[xo + 2u * c + 1u]);
    }
    let pw = per_word();
    let xv = xo + c * pw; // vec4 index of the chunk's first value: c * 4 * pw / 4
    let step = pw / 4u; // x vec4s per word
    if (BLOCK >= 4u * pw) {
        // The chunk lies in one block (BLOCK is a multiple of 4 words then).
        let b = c * 4u * pw / BLOCK;
        let zp = zero_point(j, b);
        let s = word_dot(ch.x, xv, zp) + word_dot(ch.y, xv + step, zp) + word_dot(ch.z, xv + 2u * step, zp) + word_dot(ch.w, xv + 3u * step, zp);
        return s * block_scale(j, b);
    }
    // Blocks shorter than a chunk (int4 blocks of 16: two per chunk): word by word.
    var acc = 0.0;
    for (var t = 0u; t < 4u; t++) {
        let b = (c * 4u + t) * pw / BLOCK;
        acc += word_dot(ch[t], xv + t * step, zero_point(j, b)) * block_scale(j, b);
    }
    return acc;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let j = (wid.x + wid.y * nwg.x) * (WG / LANES) + lid / LANES;
    let lane = lid % LANES;
    let r = wid.z;
    var s = 0.0;
    if (j < p.n) {
        let chunks = words_per_row() / 4u;
        let xo = r * p.k / 4u;
        for (var c = lane; c < chunks; c += LANES) {
            s += chunk_dot(j, c, xo);
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lane == 0u && j < p.n) {
        y[r * p.total + p.row0 + j] = partial[lid];
    }
}
