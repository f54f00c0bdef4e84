// Sampling on the GPU: generate::sample_with (repetition penalty, temperature, top-k, top-p,
// then the pick with the uniform number r the CPU drew from the engine's seeded generator)
// without the logits leaving the GPU. state.tokens[0] = the token (u32 max when a logit is
// not finite), which the decode step reads back (4 bytes) and the next step embeds.
//
// The CPU sorts the candidates by scaled logit, highest first, equal ones by id. Here each gets
// a key: its scaled logit's bits mapped so that unsigned order is f32::total_cmp's. A prefix of
// the sorted order is then "keys above v, and keys equal to v with ids up to b", a pair (v, b).
// Top-k's is found by radix selection (the k-th highest key: four sweeps, each a 256-bucket
// histogram of the next 8 bits among the keys that share the bits found so far; counts are
// exact, so this is a bisection's answer), top-p's and the pick's by the same radix walk over
// the probability weights of such prefixes (weighed_key: 3 bits a round from 8 buckets' weight
// sums; then log2(n) bisection steps over b among v's ties, rarely needed): top-k is the
// shortest prefix counting k, top-p the shortest whose weight reaches top_p of the kept weight,
// the pick the shortest whose weight exceeds r times it (its last candidate).
// After the first of top-k and top-p, the kept candidates' ids are compacted in order
// (kept_ids), and every later sweep runs over them alone: top-k 40 leaves 40 of SmolLM2's
// 49152. No sort: each step is one strided sweep over the candidates and a tree reduction.
// One workgroup of 256.
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
// Scratch, [n] each: every candidate's key and weight exp(z - max); after the first narrowing,
// the kept candidates' ids in order (their keys and weights read through them).
@group(0) @binding(3) var<storage, read_write> keys: array<u32>;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: State;
@group(0) @binding(6) var<storage, read_write> kept_ids: array<u32>;

const WG: u32 = 256u;
const ALL: u32 = 0xffffffffu;
var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;
var<workgroup> hist: array<atomic<u32>, 256>;
// Radix selection's (bits found, count still needed), written by lane 0.
var<workgroup> found: vec2<u32>;
// weighed_key's: 8 buckets' lane sums, [bucket][lane]; the weight above the bucket found.
var<workgroup> buckets: array<f32, 2048>;
var<workgroup> found_above: f32;
// Bit d: bucket d holds a candidate (this round).
var<workgroup> nonempty: atomic<u32>;

// The candidates the sweeps run over (the same in every lane): all n, ids implicit, until the
// first narrowing compacts the kept ones.
var<private> m: u32;
var<private> compacted: bool;

fn id_at(j: u32) -> u32 {
    if (compacted) {
        return kept_ids[j];
    }
    return j;
}

fn key_at(j: u32) -> u32 {
    return keys[id_at(j)];
}

fn weight_at(j: u32) -> f32 {
    return weights[id_at(j)];
}

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
    for (var j = lid; j < m; j += WG) {
        let k = key_at(j);
        let i = id_at(j);
        if (within(k, i, v, b) && within(k, i, lv, lb)) {
            s += select(weight_at(j), 1.0, count);
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
fn shortest(lid: u32, lv: u32, lb: u32, goal: f32, strict: bool) -> Prefix {
    if (!reaches(mass(lid, 0u, ALL, lv, lb, false), goal, strict)) {
        return Prefix(lv, lb, false);
    }
    return ties(lid, weighed_key(lid, lv, lb, goal, strict), lv, lb, goal, false, strict);
}

// The largest v whose prefix "keys >= v" (within the kept prefix) weighs enough, found 3 bits a
// round from the top (11 rounds; the bisection took 32): each lane sums its candidates' weights
// into 8 buckets by the next 3 bits of their keys (among the keys that share the bits found so
// far), the buckets' lane sums are added in a tree, and lane 0 adds the buckets from the top
// to what lies above them until the sum reaches the goal: that bucket's bits are found, and
// what lay above it is carried to the next round. Sums of weights >= 0 in a fixed order grow
// with the set, so the bucket is the bisection's (up to the rounding of these sums).
fn weighed_key(lid: u32, lv: u32, lb: u32, goal: f32, strict: bool) -> u32 {
    var prefix = 0u;
    var above = 0.0;
    for (var round = 0u; round < 11u; round++) {
        let shift = 30u - 3u * round;
        // Each lane sums into its own column of the buckets. (The first form, a private array
        // indexed by the bucket and a signed countdown loop with `continue` below, gave wrong
        // picks on SwiftShader, right ones on llvmpipe; which of the two was not isolated.)
        for (var d = 0u; d < 8u; d++) {
            buckets[d * WG + lid] = 0.0;
        }
        var seen_here = 0u;
        for (var j = lid; j < m; j += WG) {
            let k = key_at(j);
            // Round 0 takes every key (a shift by 33 is not WGSL).
            if (within(k, id_at(j), lv, lb) && (round == 0u || (k >> (shift + 3u)) == (prefix >> (shift + 3u)))) {
                let d = (k >> shift) & 7u;
                buckets[d * WG + lid] += weight_at(j);
                seen_here |= 1u << d;
            }
        }
        atomicOr(&nonempty, seen_here);
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s /= 2u) {
            if (lid < s) {
                for (var d = 0u; d < 8u; d++) {
                    buckets[d * WG + lid] += buckets[d * WG + lid + s];
                }
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            // The highest bucket whose sum with those above reaches the goal; where rounding
            // (these sums are not the last round's) leaves none, the lowest holding a
            // candidate, so that v is always a candidate's key.
            let held = atomicLoad(&nonempty);
            atomicStore(&nonempty, 0u);
            var sum = above;
            var pick = 8u;
            var pick_above = above;
            for (var e = 0u; e < 8u; e++) {
                let d = 7u - e;
                if (((held >> d) & 1u) != 0u) {
                    let next = sum + buckets[d * WG];
                    pick = d;
                    pick_above = sum;
                    if (reaches(next, goal, strict)) {
                        break;
                    }
                    sum = next;
                }
            }
            found = vec2<u32>(prefix | (pick << shift), 0u);
            found_above = pick_above;
        }
        prefix = workgroupUniformLoad(&found).x;
        above = workgroupUniformLoad(&found_above);
        // Lane 0 writes them and every lane the buckets only after all have read.
        workgroupBarrier();
    }
    return prefix;
}

// The keys above v fall short of `goal` and the keys from v on reach it: add v's candidates in
// id order, the fewest that reach it. The answer b is the id of the last one added: v's only
// candidate, usually (one sweep instead of log2(n)).
fn ties(lid: u32, v: u32, lv: u32, lb: u32, goal: f32, count: bool, strict: bool) -> Prefix {
    let only = only_id(lid, v, lv, lb);
    if (only != ALL) {
        return Prefix(v, only, true);
    }
    // Between v's first and last candidates (where the sums' rounding leaves none reaching it,
    // the last: b is always a candidate of v).
    var lo = id_of(lid, v, lv, lb, false);
    var hi = id_of(lid, v, lv, lb, true);
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
    for (var j = lid; j < m; j += WG) {
        let i = id_at(j);
        if (key_at(j) == v && within(v, i, lv, lb)) {
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
    for (var j = lid; j < m; j += WG) {
        let i = id_at(j);
        if (key_at(j) == v && within(v, i, lv, lb)) {
            best = select(min(best, i), max(best, i), last);
        }
    }
    return reduce_u(lid, best, last);
}

// The k-th highest key among the candidates (k >= 1, counting equal keys each): the largest v
// with k keys >= v, which the bisection over counts would find. Radix selection from the top
// byte: a histogram of the next 8 bits of the keys that share the bits found so far, then lane
// 0 walks it down from 255 to the bucket where the count reaches what is still needed.
fn kth_key(lid: u32, k: u32) -> u32 {
    var prefix = 0u;
    var need = k;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var j = lid; j < m; j += WG) {
            let key = key_at(j);
            // Round 0 takes every key (a shift by 32 is not WGSL).
            if (round == 0u || (key >> (shift + 8u)) == (prefix >> (shift + 8u))) {
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var above = 0u;
            var d = 255u;
            loop {
                let c = atomicLoad(&hist[d]);
                if (above + c >= need || d == 0u) {
                    break;
                }
                above += c;
                d -= 1u;
            }
            found = vec2<u32>(prefix | (d << shift), need - above);
        }
        let f = workgroupUniformLoad(&found);
        // Lane 0 writes `found` and every lane clears `hist` only after all have read.
        workgroupBarrier();
        prefix = f.x;
        need = f.y;
    }
    return prefix;
}

// Compact the ids of the candidates within the kept prefix (lv, lb), in order, into kept_ids:
// each lane takes a contiguous run of the candidates, counts its kept ones, and writes them
// from its offset (a scan of the counts). Afterwards the sweeps run over them.
fn compact(lid: u32, lv: u32, lb: u32) {
    let per = (m + WG - 1u) / WG;
    let lo = min(lid * per, m);
    let hi = min(lo + per, m);
    var count = 0u;
    for (var j = lo; j < hi; j++) {
        count += u32(within(keys[j], j, lv, lb));
    }
    // Inclusive scan of the counts (Hillis-Steele).
    red_u[lid] = count;
    workgroupBarrier();
    for (var s = 1u; s < WG; s *= 2u) {
        var add = 0u;
        if (lid >= s) {
            add = red_u[lid - s];
        }
        workgroupBarrier();
        red_u[lid] += add;
        workgroupBarrier();
    }
    var at = red_u[lid] - count;
    let total = workgroupUniformLoad(&red_u[WG - 1u]);
    workgroupBarrier();
    for (var j = lo; j < hi; j++) {
        if (within(keys[j], j, lv, lb)) {
            kept_ids[at] = j;
            at++;
        }
    }
    // The writes seen by every lane before any reads them.
    storageBarrier();
    m = total;
    compacted = true;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    m = o.n;
    compacted = false;
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
        // (A uniform local: `compacted`, a private variable, may not steer barriers.)
        let top_k_on = o.top_k > 0u && o.top_k < o.n;
        if (top_k_on) {
            let p = ties(lid, kth_key(lid, o.top_k), lv, lb, f32(o.top_k), true, false);
            lv = p.v;
            lb = p.b;
            compact(lid, lv, lb);
        }
        if (o.top_p < 1.0) {
            let total = mass(lid, 0u, ALL, lv, lb, false);
            let p = shortest(lid, lv, lb, o.top_p * total, false);
            lv = p.v;
            lb = p.b;
            if (!top_k_on) {
                compact(lid, lv, lb);
            }
        }
        let kept = mass(lid, 0u, ALL, lv, lb, false);
        let p = shortest(lid, lv, lb, o.r * kept, true);
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
