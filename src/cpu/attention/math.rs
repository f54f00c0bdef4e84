//! The attention math over a [`KvCache`]: masks, the softmax and grouped-query attention of
//! query rows against the cached keys and values, through the `kernels::attention` variant
//! the cache holds.

use super::kv_cache::{KvCache, PAGE_ROWS};

/// The attention mask of one query row: additive f32 (f32's floor hides a key), bool, or
/// causal (the first `n` keys are visible).
#[derive(Clone, Copy)]
pub(super) enum Mask<'a> {
    Additive(&'a [f32]),
    Keep(&'a [bool]),
    Causal(usize),
}

/// `e^x` for `x <= 0`, written so that LLVM vectorizes a loop over it (no libm call): Cody-Waite
/// reduction to `2^n · e^r` with `|r| <= ln2/2` and a degree-6 Taylor polynomial (relative
/// error ~2e-7). Below -87 (where f32 `e^x` is denormal or 0) it is exactly 0, as `exp(-inf)` is.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.max(-87.0);
    // Round to nearest through the float mantissa (vectorizes, unlike `round`).
    let n = (xc * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// Scale and mask one row of raw scores, then make it the softmax's numerators
/// `e^(x - max)`; returns `1 / sum`, or 0 when every key is hidden (the row's output is then 0).
fn softmax_row(scores: &mut [f32], scale: f32, mask: Mask) -> f32 {
    match mask {
        Mask::Additive(m) => scores
            .iter_mut()
            .zip(m)
            .for_each(|(x, m)| *x = *x * scale + m),
        Mask::Keep(m) => scores
            .iter_mut()
            .zip(m)
            .for_each(|(x, k)| *x = if *k { *x * scale } else { f32::NEG_INFINITY }),
        Mask::Causal(n) => scores
            .iter_mut()
            .enumerate()
            .for_each(|(t, x)| *x = if t < n { *x * scale } else { f32::NEG_INFINITY }),
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    if max <= -1e30 {
        scores.fill(0.0);
        return 0.0;
    }
    let mut acc = [0f32; 8];
    let mut chunks = scores.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp_nonpositive(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    1.0 / sum
}

impl KvCache {
    /// Attention of `q` (`[kv_heads][group][s][head_dim]`, the last `s` positions of the cache)
    /// over the live rows, for query rows `rows`; writes `[kv_heads][group][rows][head_dim]`.
    /// A prompt's rows go four at a time, so each key and value is read once per four rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &self,
        q: &[f32],
        group: usize,
        s: usize,
        rows: std::ops::Range<usize>,
        mask: Mask,
        mask_rows: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let (d, t_len, kernels) = (self.head_dim, self.len, self.kernels);
        let n_rows = rows.len();
        let mask_of = |row: usize| {
            let at = if mask_rows == 1 { 0 } else { row } * t_len;
            match mask {
                Mask::Additive(m) => Mask::Additive(&m[at..][..t_len]),
                Mask::Keep(m) => Mask::Keep(&m[at..][..t_len]),
                // Row `row` of the `s` new ones sits at position `t_len - s + row`.
                Mask::Causal(_) => Mask::Causal(t_len - s + row + 1),
            }
        };
        // Query heads (`head * group + g`) split across the CPU threads, each writing its own
        // `[rows][head_dim]` of `out` the same whichever thread runs it (a prompt's attention was
        // a serial part of a 2-thread prefill).
        let per_head = n_rows * d;
        let heads = self.kv_heads * group;
        let split = crate::cpu::threads::split_units(heads, per_head, 2 * n_rows * t_len * d, &mut out[..heads * per_head], |qheads, out| {
            let mut scores = vec![0f32; 4 * t_len];
            let mut acc = vec![0f32; 4 * d];
            for qh in qheads.clone() {
                let head = qh / group;
                let q_of = |row: usize| &q[(qh * s + row) * d..][..d];
                let mut first = 0;
                while first < n_rows {
                    let block = if n_rows - first >= 4 { 4 } else { 1 };
                    let row = rows.start + first;
                    for page in 0..self.live_pages() {
                        let keys = self.page_rows(page, head, false);
                        let (at, n) = (page * PAGE_ROWS, keys.len() / d);
                        if block == 4 {
                            (kernels.qk_rows4)(std::array::from_fn(|i| q_of(row + i)), keys, d, n, &mut scores[at..], t_len);
                        } else {
                            (kernels.qk_row)([q_of(row)], keys, d, n, &mut scores[at..], t_len);
                        }
                    }
                    for i in 0..block {
                        let inv = softmax_row(&mut scores[i * t_len..][..t_len], scale, mask_of(row + i));
                        scores[i * t_len..][..t_len].iter_mut().for_each(|p| *p *= inv);
                    }
                    acc[..block * d].fill(0.0);
                    for page in 0..self.live_pages() {
                        let values = self.page_rows(page, head, true);
                        let (at, n) = (page * PAGE_ROWS, values.len() / d);
                        match (block, d % 16) {
                            (4, _) => (kernels.pv_rows4)(&scores[at..], t_len, values, d, n, &mut acc),
                            (_, 0) => (kernels.pv_row16)(&scores[at..], t_len, values, d, n, &mut acc),
                            _ => (kernels.pv_row4)(&scores[at..], t_len, values, d, n, &mut acc),
                        }
                    }
                    let at = ((qh - qheads.start) * n_rows + first) * d;
                    out[at..][..block * d].copy_from_slice(&acc[..block * d]);
                    first += block;
                }
            }
            Ok(())
        });
        split.expect("attention heads cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::kernels;
    use super::super::test_values as values;
    use super::*;

    /// Plain f64 attention of query row `row` (absolute position `pos`) against keys `0..=pos`.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d: usize,
        pos: usize,
        scale: f32,
        hidden: &dyn Fn(usize) -> bool,
    ) -> Vec<f32> {
        let scores: Vec<f64> = (0..=pos)
            .map(|t| {
                if hidden(t) {
                    f64::NEG_INFINITY
                } else {
                    (0..d)
                        .map(|i| q[i] as f64 * k[t * d + i] as f64)
                        .sum::<f64>()
                        * scale as f64
                }
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return vec![0.0; d];
        }
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..d)
            .map(|i| {
                (0..=pos)
                    .map(|t| e[t] / sum * v[t * d + i] as f64)
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn exp_matches_libm() {
        for i in 0..=100_000 {
            let x = -90.0 * i as f32 / 100_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            if x < -87.0 {
                assert_eq!(got, 0.0);
            } else {
                assert!(
                    (got - want).abs() <= want * 1e-6,
                    "exp({x}) = {got}, want {want}"
                );
            }
        }
    }

    /// Grouped-query attention over a growing cache — a 7-row prompt, single rows and chunks that
    /// cross pages, with a
    /// causal additive mask (f32's floor), a bool mask hiding every third key, and the
    /// last-row-only form — against plain f64 attention.
    /// Every kernel variant; the variants' outputs must also be equal bit for bit (they round
    /// the same operations in the same order).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn attention_matches_plain_attention() {
        let (h, g, d, scale) = (2usize, 3usize, 16usize, 0.25f32);
        let mut first: Vec<Vec<f32>> = Vec::new();
        let runs = kernels::attention::VARIANTS.iter().flat_map(|v| [(v, false, false), (v, true, false), (v, false, true)]);
        for (run, (variant, keep_mask, last_only)) in runs.enumerate() {
            let mut cache = KvCache::new(h, d);
            cache.kernels = &variant.kernels;
            let (mut ks, mut vs) = (vec![Vec::new(); h], vec![Vec::new(); h]);
            for (step, s) in [7usize, 1, 1, 4, 1, 60, 1, 70, 1].into_iter().enumerate() {
                let past = cache.len();
                let q = values(h * g * s * d, 100 + step as u64);
                let k = values(h * s * d, 200 + step as u64);
                let v = values(h * s * d, 300 + step as u64);
                cache.push(&k, &v, s).unwrap();
                for head in 0..h {
                    ks[head].extend_from_slice(&k[head * s * d..][..s * d]);
                    vs[head].extend_from_slice(&v[head * s * d..][..s * d]);
                }
                let t = past + s;
                let hidden =
                    |row: usize, key: usize| key > past + row || (keep_mask && key % 3 == 2);
                let additive: Vec<f32> = (0..s * t)
                    .map(|i| if hidden(i / t, i % t) { f32::MIN } else { 0.0 })
                    .collect();
                let keep: Vec<bool> = (0..s * t).map(|i| !hidden(i / t, i % t)).collect();
                let mask = if keep_mask {
                    Mask::Keep(&keep)
                } else {
                    Mask::Additive(&additive)
                };
                let rows = if last_only { s - 1..s } else { 0..s };
                let mut out = vec![f32::NAN; h * g * rows.len() * d];
                cache.attend(&q, g, s, rows.clone(), mask, s, scale, &mut out);
                if run < 3 {
                    first.push(out.clone());
                } else {
                    assert!(first[run % 3 * 9 + step] == out, "{} differs from the portable reference at step {step}", variant.name);
                }
                for head in 0..h {
                    for gi in 0..g {
                        for (r, row) in rows.clone().enumerate() {
                            let q_row = &q[((head * g + gi) * s + row) * d..][..d];
                            let want =
                                naive(q_row, &ks[head], &vs[head], d, past + row, scale, &|key| {
                                    hidden(row, key)
                                });
                            let got = &out[((head * g + gi) * rows.len() + r) * d..][..d];
                            for (a, b) in got.iter().zip(&want) {
                                assert!(
                                    (a - b).abs() < 1e-5,
                                    "{} step {step} head {head} group {gi} row {row}: {a} vs {b}", variant.name
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_row_with_every_key_hidden_is_zero() {
        let (h, g, d) = (1, 2, 8);
        for v in kernels::attention::VARIANTS {
            let mut cache = KvCache::new(h, d);
            cache.kernels = &v.kernels;
            cache.push(&values(3 * d, 1), &values(3 * d, 2), 3).unwrap();
            let mask = vec![f32::MIN; 3];
            let mut out = vec![f32::NAN; g * d];
            cache.attend(&values(g * d, 3), g, 1, 0..1, Mask::Additive(&mask), 1, 1.0, &mut out);
            assert!(out.iter().all(|x| *x == 0.0), "{}", v.name);
        }
    }
}
