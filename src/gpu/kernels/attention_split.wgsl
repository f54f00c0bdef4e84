// attention.wgsl's causal grouped-query attention split over positions, for the engine's
// decode steps deep in a context (gpu::decode's split_from; it runs any rows, as the tests do):
// row r sits at position state.pos + r and attends to positions 0..=pos + r.
//   q       [rows][q_row]: a row's queries [heads][head_dim] first (the q, k, v products
//           side by side: q_row = (heads + 2 kv_heads) head_dim)
//   kcache, vcache  [kv_heads][max_ctx][head_dim];  query head h reads kv head h / group
//   part    [rows][heads][splits][head_dim + 2] f32: each split's unnormalized sum of values,
//           then its largest score and its sum of exponentials (attention_combine.wgsl adds
//           the splits into the output)
// Split-K ("flash decoding"): a workgroup takes SPLIT positions of one row for GN query heads
// of one kv head (GN divides the group, at most 8: a pipeline constant, so the loops over the
// heads unroll and their sums stay in registers), so each key and value it loads serves all of
// them (a decode step reads the cache once per kv head, not once per query head), and a long
// context spreads over many workgroups (decode has one row: one workgroup per head would leave
// a GPU idle). Grid: (heads / GN, rows, splits = ceil(max_ctx / SPLIT)); splits past a row's
// length return at once. With ROPE (a decode step) RoPE and the cache append are fused in
// (attention_bindings.wgsl): the split holding the row's own position takes its key and value
// from the row. Twin: gpu::twin::attention (the sums run in another order: the test
// allows 2e-5).

// Params, State and bindings 0-4: attention_bindings.wgsl.
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<storage, read> cos_t: array<f32>;
@group(0) @binding(7) var<storage, read> sin_t: array<f32>;

const WG: u32 = 64u;
// Positions a workgroup takes (one an invocation for the scores).
const SPLIT: u32 = 64u;
// Query heads a workgroup serves (at most 8); heads are at most 256 wide (kernels.rs checks).
override GN: u32 = 1u;

// The queries, scaled; then each head's scores, exponentials once the split's max is known.
var<workgroup> qs: array<f32, 2048>;
var<workgroup> sc: array<f32, 512>;
var<workgroup> wmax: array<f32, 8>;

// Position j's scores (sc[g * SPLIT + j]) for the GN heads in qs against the cached key at
// `ko`, or with `own` the row's new one: four dimensions an iteration into four sums
// (independent loads in flight together).
fn split_scores(ko: u32, j: u32, own: bool) {
    let hd = p.head_dim;
    let hd4 = hd - hd % 4u;
    var acc = array<vec4<f32>, 8>();
    for (var d = 0u; d < hd4; d += 4u) {
        let kv = key4(ko, d, own);
        for (var g = 0u; g < GN; g++) {
            let qa = g * hd + d;
            acc[g] = fma(vec4<f32>(qs[qa], qs[qa + 1u], qs[qa + 2u], qs[qa + 3u]), kv, acc[g]);
        }
    }
    for (var g = 0u; g < GN; g++) {
        var v = (acc[g].x + acc[g].y) + (acc[g].z + acc[g].w);
        for (var d = hd4; d < hd; d++) {
            v += qs[g * hd + d] * key1(ko, d, own);
        }
        sc[g * SPLIT + j] = v;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Query heads h0..h0 + GN, all of kv head h0 / group.
    let h0 = wid.x * GN;
    let kvh = h0 / (p.heads / p.kv_heads);
    let r = wid.y;
    let s = wid.z;
    // Causal: this row sees itself and everything before it, nothing after.
    let len = state.pos + r + 1u;
    let t0 = s * SPLIT;
    if (t0 >= len) {
        return;
    }
    let n = min(SPLIT, len - t0);
    let hd = p.head_dim;
    let kv_base = (kvh * p.max_ctx + t0) * hd;

    // With ROPE the row's own position (the last) is this split's last where the split
    // reaches the row's end: its key and value from the row, the others' from the cache.
    let fresh = ROPE == 1u && t0 + n == len;
    let nc = n - select(0u, 1u, fresh);

    let qo = r * p.q_row + h0 * hd;
    for (var i = lid; i < GN * hd; i += WG) {
        if (ROPE == 1u) {
            qs[i] = rotated(qo + i / hd * hd, i % hd, len - 1u) * p.scale;
        } else {
            qs[i] = q[qo + i] * p.scale;
        }
    }
    if (fresh) {
        fresh_kv(r, kvh, lid, h0 % (p.heads / p.kv_heads) == 0u);
    }
    workgroupBarrier();

    // One position an invocation: its key against every query head (with ROPE the row's own
    // key, the split's last where it holds it, from kn).
    if (lid < nc) {
        split_scores(kv_base + lid * hd, lid, false);
    } else if (lid < n) {
        split_scores(0u, lid, true);
    }
    workgroupBarrier();

    // Each head's largest score in the split, then its exponentials and their sum.
    if (lid < GN) {
        var m = -3.4e38;
        for (var j = 0u; j < n; j++) {
            m = max(m, sc[lid * SPLIT + j]);
        }
        wmax[lid] = m;
    }
    workgroupBarrier();
    for (var i = lid; i < GN * SPLIT; i += WG) {
        let j = i % SPLIT;
        if (j < n) {
            sc[i] = exp(sc[i] - wmax[i / SPLIT]);
        }
    }
    workgroupBarrier();
    let pw = hd + 2u;
    let po = ((r * p.heads + h0) * p.splits + s) * pw;
    if (lid < GN) {
        var l = 0.0;
        for (var j = 0u; j < n; j++) {
            l += sc[lid * SPLIT + j];
        }
        let at = po + lid * p.splits * pw + hd;
        part[at] = wmax[lid];
        part[at + 1u] = l;
    }

    // The values: one dimension an invocation, four positions an iteration into four sums per
    // head; each value loaded once for every head.
    let n4 = nc - nc % 4u;
    for (var d = lid; d < hd; d += WG) {
        // Zeroed explicitly: Chromium 156's WebGPU on SwiftShader kept the previous iteration's sums in
        // a bare `var acc: array<...>;` declared inside the loop.
        var acc = array<vec4<f32>, 8>();
        var vo = kv_base + d;
        for (var j = 0u; j < n4; j += 4u) {
            let v = vec4<f32>(vcache[vo], vcache[vo + hd], vcache[vo + 2u * hd], vcache[vo + 3u * hd]);
            for (var g = 0u; g < GN; g++) {
                let a = g * SPLIT + j;
                acc[g] = fma(vec4<f32>(sc[a], sc[a + 1u], sc[a + 2u], sc[a + 3u]), v, acc[g]);
            }
            vo += 4u * hd;
        }
        for (var g = 0u; g < GN; g++) {
            var tail = 0.0;
            for (var j = n4; j < nc; j++) {
                tail += sc[g * SPLIT + j] * vcache[kv_base + j * hd + d];
            }
            if (fresh) {
                tail += sc[g * SPLIT + nc] * vn[d];
            }
            part[po + g * p.splits * pw + d] = (acc[g].x + acc[g].y) + (acc[g].z + acc[g].w) + tail;
        }
    }
}
