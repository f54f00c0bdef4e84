// Greedy pick on the GPU: state.tokens[0] = index of the largest logit, the lowest index on
// ties (as generate::argmax). A decode step then reads back only these 4 bytes, and
// the next step's embedding gather reads the token without a CPU round trip.
// One workgroup of 256. Twin: generate::argmax.

struct Params {
    n: u32,
}

// gpu::decode's step state, { pos, rows, tokens[] }, up to tokens[0].
struct State {
    pos: u32,
    rows: u32,
    token: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: State;

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.n; i += WG) {
        let v = logits[i];
        if (v > bv || bi == 0xffffffffu) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let ov = best_v[lid + stride];
            let oi = best_i[lid + stride];
            let mine = best_i[lid];
            if (oi != 0xffffffffu && (mine == 0xffffffffu || ov > best_v[lid] || (ov == best_v[lid] && oi < mine))) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        state.token = best_i[0];
    }
}
