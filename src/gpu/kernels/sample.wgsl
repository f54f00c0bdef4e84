// Sampling on the GPU: generate::sample_with (repetition penalty, temperature, top-k, top-p,
// then the pick with the uniform number r the CPU drew from the engine's seeded generator)
// without the logits leaving the GPU. state.tokens[0] = the token (u32 max when a logit is
// not finite), which the decode step reads back (4 bytes) and the next step embeds.
//
// The CPU sorts the candidates by scaled logit, highest first, equal ones by id. Here each gets
// a key: its scaled logit's bits mapped so that unsigned order is f32::total_cmp's. A prefix of
// the sorted order is then "keys above v, and keys equal to v with ids up to b", a pair (v, b)
// found by bisection over the counts or probability weights of such prefixes (32 steps over v,
// then log2(n) over b among v's ties): top-k is the shortest prefix counting k, top-p the
// shortest whose weight reaches top_p of the kept weight, the pick the shortest whose weight
// exceeds r times it (its last candidate). No sort and no candidate list: each step is one
// strided sweep over the vocabulary and a tree reduction. One workgroup of 256.
// Twin: gpu::twin::sample (these sums in this order); generate::sample_with sums in sorted order.

struct Opts {
    n: u32,
    // Temperature 0: the first candidate (argmax, lowest id on ties), no number drawn.
    greedy: u32,
    // 0: off.
    top_k: u32,
    // 1: off.
    top_p: f32,
    // 1 / temperature (1 when greedy).
    inv_temperature: f32,
    // 1: off; else logits of seen ids are divided by it when positive (times 1 / penalty),
    // multiplied when not.
    penalty: f32,
    inv_penalty: f32,
    r: f32,
}

// gpu::decode's step state, { pos, rows, tokens[] }, up to tokens[0].
struct State {
    pos: u32,
    rows: u32,
    token: u32,
}

@group(0) @binding(0) var<storage, read> o: Opts;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
// Bit i: id i is in the history the penalty applies to.
@group(0) @binding(2) var<storage, read> seen: array<u32>;
// Scratch, [n] each: the candidates' keys and weights exp(z - max).
@group(0) @binding(3) var<storage, read_write> keys: array<u32>;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: State;

const WG: u32 = 256u;
const ALL: u32 = 0xffffffffu;
var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;

// Unsigned order of keys = f32::total_cmp order of values (-0 below +0).
fn key_of(z: f32) -> u32 {
    let b = bitcast<u32>(z);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// Candidate i with key k is in the prefix (v, b): keys above v, or equal to v with id <= b.
fn within(k: u32, i: u32, v: u32, b: u32) -> bool {
    return k > v || (k == v && i <= b);
}

// The sum of every lane's x, in every lane. Lanes touch only their own ids (i = lid + 256 j)
// in the buffers, so only these reductions synchronise.
fn sum_all(lid: u32, x: f32) -> f32 {
    red_f[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if (lid < s) {
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    let total = workgroupUniformLoad(&red_f[0]);
    // No lane may start the next reduction before every lane has read this one.
    workgroupBarrier();
    return total;
}

fn reduce_u(lid: u32, x: u32, take_max: bool) -> u32 {
    red_u[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if (lid < s) {
            let a = red_u[lid];
            let b = red_u[lid + s];
            red_u[lid] = select(min(a, b), max(a, b), take_max);
        }
        workgroupBarrier();
    }
    let total = workgroupUniformLoad(&red_u[0]);
    workgroupBarrier();
    return total;
}

// The weight (with `count`: the number) of the candidates in prefix (v, b) and in the kept
// prefix (lv, lb).
fn mass(lid: u32, v: u32, b: u32, lv: u32, lb: u32, count: bool) -> f32 {
    var s = 0.0;
    for (var i = lid; i < o.n; i += WG) {
        let k = keys[i];
        if (within(k, i, v, b) && within(k, i, lv, lb)) {
            s += select(weights[i], 1.0, count);
        }
    }
    return sum_all(lid, s);
}

fn reaches(m: f32, goal: f32, strict: bool) -> bool {
    return select(m >= goal, m > goal, strict);
}

struct Prefix {
    v: u32,
    b: u32,
    found: bool,
}

// The shortest prefix, within the kept prefix (lv, lb), whose weight (count) reaches `goal`
// (exceeds it, with `strict`); not found when all the kept candidates do not. Sums over
// candidates >= 0 in a fixed order grow with the set (rounding is monotonic), so bisection holds.
fn shortest(lid: u32, lv: u32, lb: u32, goal: f32, count: bool, strict: bool) -> Prefix {
    if (!reaches(mass(lid, 0u, ALL, lv, lb, count), goal, strict)) {
        return Prefix(lv, lb, false);
    }
    // The largest v whose prefix "keys >= v" reaches it, bit by bit from the top.
    var v = 0u;
    for (var bit = 32u; bit > 0u; bit--) {
        let c = v | (1u << (bit - 1u));
        if (reaches(mass(lid, c, ALL, lv, lb, count), goal, strict)) {
            v = c;
        }
    }
    // The keys above v fall short: add v's candidates in id order, the fewest that reach it.
    // The answer b is the id of the last one added: v's only candidate, usually (one sweep
    // instead of log2(n)).
    let only = only_id(lid, v, lv, lb);
    if (only != ALL) {
        return Prefix(v, only, true);
    }
    var lo = 0u;
    var hi = o.n - 1u;
    while (lo < hi) {
        let mid = lo + (hi - lo) / 2u;
        if (reaches(mass(lid, v, mid, lv, lb, count), goal, strict)) {
            hi = mid;
        } else {
            lo = mid + 1u;
        }
    }
    return Prefix(v, lo, true);
}

// The id of the one candidate of key v within the kept prefix (lv, lb), or ALL when there are
// several.
fn only_id(lid: u32, v: u32, lv: u32, lb: u32) -> u32 {
    var count = 0.0;
    var first = ALL;
    for (var i = lid; i < o.n; i += WG) {
        if (keys[i] == v && within(v, i, lv, lb)) {
            count += 1.0;
            first = min(first, i);
        }
    }
    let total = sum_all(lid, count);
    first = reduce_u(lid, first, false);
    return select(ALL, first, total == 1.0);
}

// The lowest (with `last`: highest) id of key v within the kept prefix (lv, lb).
fn id_of(lid: u32, v: u32, lv: u32, lb: u32, last: bool) -> u32 {
    var best = select(ALL, 0u, last);
    for (var i = lid; i < o.n; i += WG) {
        if (keys[i] == v && within(v, i, lv, lb)) {
            best = select(min(best, i), max(best, i), last);
        }
    }
    return reduce_u(lid, best, last);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    var kmax = 0u;
    var bad = 0u;
    for (var i = lid; i < o.n; i += WG) {
        var l = logits[i];
        // Exponent all ones: inf or NaN (WGSL has no isnan, and may assume none).
        bad |= u32((bitcast<u32>(l) & 0x7f800000u) == 0x7f800000u);
        if (o.penalty != 1.0 && ((seen[i >> 5u] >> (i & 31u)) & 1u) != 0u) {
            l = select(l * o.penalty, l * o.inv_penalty, l > 0.0);
        }
        var k = key_of(l * o.inv_temperature);
        if (o.greedy != 0u && (k == 0x7fffffffu)) {
            // argmax compares with >, so -0 ties +0 (the lower id wins).
            k = 0x80000000u;
        }
        keys[i] = k;
        kmax = max(kmax, k);
    }
    let flagged = reduce_u(lid, bad, true);
    kmax = reduce_u(lid, kmax, true);
    var token = ALL;
    if (flagged != 0u) {
        token = ALL;
    } else if (o.greedy != 0u) {
        token = id_of(lid, kmax, 0u, ALL, false);
    } else {
        let zmax = value_of(kmax);
        for (var i = lid; i < o.n; i += WG) {
            weights[i] = exp(value_of(keys[i]) - zmax);
        }
        // The kept prefix: everything, then top-k's, then top-p's.
        var lv = 0u;
        var lb = ALL;
        if (o.top_k > 0u && o.top_k < o.n) {
            let p = shortest(lid, lv, lb, f32(o.top_k), true, false);
            lv = p.v;
            lb = p.b;
        }
        if (o.top_p < 1.0) {
            let total = mass(lid, 0u, ALL, lv, lb, false);
            let p = shortest(lid, lv, lb, o.top_p * total, false, false);
            lv = p.v;
            lb = p.b;
        }
        let kept = mass(lid, 0u, ALL, lv, lb, false);
        let p = shortest(lid, lv, lb, o.r * kept, false, true);
        if (p.found) {
            token = p.b;
        } else if (lb != ALL) {
            // r * kept rounded up to all of it: the last kept candidate (as the CPU).
            token = lb;
        } else {
            var kmin = ALL;
            for (var i = lid; i < o.n; i += WG) {
                kmin = min(kmin, keys[i]);
            }
            kmin = reduce_u(lid, kmin, false);
            token = id_of(lid, kmin, 0u, ALL, true);
        }
    }
    if (lid == 0u) {
        state.token = token;
    }
}
