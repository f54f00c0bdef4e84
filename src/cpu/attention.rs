//! Attention over a KV cache that grows in place.
//!
//! Why: in the HF/optimum layout `present = Concat(past, new)`, so every decode step copies the
//! whole cache into a fresh tensor, and tract-transformers' folded cache (`DynKeyValueCache`)
//! does the same inside the plan; the attention matmuls then pack the whole cache once more.
//! At 1,000 tokens of SmolLM2 context that is 2 × 46 MB moved per generated token.
//!
//! [`fuse`] replaces each layer's `{DynKeyValueCache(K), DynKeyValueCache(V), EinSum(Q·Kᵀ),
//! ScaledMaskedSoftmax, EinSum(P·V)}` (the folded form of the optimum attention block) with one
//! stateful [`KvAttention`] op; [`fuse_genai`] does the same for onnxruntime-genai's
//! `GroupQueryAttention`. Its state ([`KvCache`]) keeps K and V in fixed-size pages, writes each
//! step's new rows once and reads the cache where it lies: no row of the past is copied again.
//! It computes grouped-query attention directly (query head `h` reads KV head `h / group`), with
//! the graph's own mask (or causal) and scale. A block that does not match exactly is left to
//! tract as it was.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::internal::*;
use tract_transformers::ops::dyn_kv_cache::{DynKeyValueCache, DynKeyValueCacheState};
use tract_transformers::ops::scaled_masked_softmax::ScaledMaskedSoftmax;

use super::kernels::{self, attention::Attention};

/// Fused KV-cache append + scaled masked grouped-query attention of one layer.
///
/// Inputs: `q` `[1, kv_heads, group, S, D]`, `k_new` and `v_new` `[1, kv_heads, S, D]`, and the
/// mask `[.., S | 1, P + S]` (additive f32, or bool where false hides a key). Output
/// `[1, kv_heads, group, S | 1, D]` f32: every query row, or the last one only.
#[derive(Clone, Debug, PartialEq)]
pub struct KvAttention {
    /// The state name (the key cache's `past_key_values.{layer}.key`).
    pub name: String,
    /// `[1, kv_heads, P, D]`: the past-length symbol resolves off it.
    pub past_fact: TypedFact,
    pub scale: f32,
    /// Compute the last query row only (the graph slices the rest away).
    pub last_row_only: bool,
    /// No mask input: new row `r` sees the cached keys and new keys `0..=r`.
    pub causal: bool,
}

impl Eq for KvAttention {}

impl Op for KvAttention {
    fn name(&self) -> StaticName {
        "KvAttention".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale={}, last_row_only={}, causal={}",
            self.scale, self.last_row_only, self.causal
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for KvAttention {
    not_out_of_plan!();
    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        let dim = |ax: usize| self.past_fact.shape[ax].to_usize();
        Ok(Some(Box::new(KvAttentionState {
            op: self.clone(),
            cache: KvCache::new(dim(1)?, dim(3)?),
        })))
    }
}

impl TypedOp for KvAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 4 - self.causal as usize,
            "KvAttention takes q, k_new, v_new and a mask unless causal"
        );
        ensure!(inputs[0].rank() == 5 && inputs[1].rank() == 4 && inputs[2].rank() == 4);
        let mut shape = inputs[0].shape.to_tvec();
        if self.last_row_only {
            shape[3] = 1.to_dim();
        }
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// The kernels take head sizes that are a multiple of this (two f32x4 lanes per step).
const HEAD_DIM_MULTIPLE: usize = 8;

/// Rows per [`KvCache`] page.
pub const PAGE_ROWS: usize = 32;

/// One layer's keys and values in pages of [`PAGE_ROWS`] positions, `[kv_heads][PAGE_ROWS]
/// [head_dim]` each. Appending fills the last page and adds pages; a row, once written, never
/// moves, and every page has the same size, so a page freed with a conversation is reused
/// whole (a heap that never shrinks, as wasm's, does not fragment into growing buffers).
#[derive(Clone, Debug)]
pub struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    pages: Vec<Page>,
    /// The kernel variant ([`kernels::attention::best`] unless a test picks another).
    kernels: &'static Attention,
}

#[derive(Clone, Debug)]
struct Page {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        KvCache { kv_heads, head_dim, len: 0, pages: Vec::new(), kernels: kernels::attention::best() }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the allocated pages hold.
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE_ROWS
    }

    fn page_len(&self) -> usize {
        self.kv_heads * PAGE_ROWS * self.head_dim
    }

    /// Append `s` rows given as `[kv_heads][s][head_dim]` keys and values.
    pub fn push(&mut self, k: &[f32], v: &[f32], s: usize) -> TractResult<()> {
        let (h, d) = (self.kv_heads, self.head_dim);
        ensure!(k.len() == h * s * d && v.len() == h * s * d, "KV cache: new rows have the wrong size");
        let mut done = 0;
        while done < s {
            let (page, at) = (self.len / PAGE_ROWS, self.len % PAGE_ROWS);
            if page == self.pages.len() {
                let n = self.page_len();
                let mut page = Page { k: Vec::new(), v: Vec::new() };
                for buf in [&mut page.k, &mut page.v] {
                    buf.try_reserve_exact(n).map_err(|_| format_err!("KV cache: cannot allocate {} bytes", n * 4))?;
                    buf.resize(n, 0.0);
                }
                self.pages.push(page);
            }
            let rows = (PAGE_ROWS - at).min(s - done);
            let p = &mut self.pages[page];
            for head in 0..h {
                let dst = (head * PAGE_ROWS + at) * d..(head * PAGE_ROWS + at + rows) * d;
                let src = (head * s + done) * d..(head * s + done + rows) * d;
                p.k[dst.clone()].copy_from_slice(&k[src.clone()]);
                p.v[dst].copy_from_slice(&v[src]);
            }
            self.len += rows;
            done += rows;
        }
        Ok(())
    }

    /// Live keys (`value = false`) or values of `head` in `page`, `[rows][head_dim]`.
    fn page_rows(&self, page: usize, head: usize, value: bool) -> &[f32] {
        let p = &self.pages[page];
        let rows = (self.len - page * PAGE_ROWS).min(PAGE_ROWS);
        &(if value { &p.v } else { &p.k })[head * PAGE_ROWS * self.head_dim..][..rows * self.head_dim]
    }

    /// Pages holding live rows.
    fn live_pages(&self) -> usize {
        self.len.div_ceil(PAGE_ROWS)
    }

    /// The live keys or values as a `[1, kv_heads, len, head_dim]` tensor (a copy).
    pub fn to_tensor(&self, value: bool) -> TractResult<Tensor> {
        let mut data = Vec::with_capacity(self.kv_heads * self.len * self.head_dim);
        for head in 0..self.kv_heads {
            for page in 0..self.live_pages() {
                data.extend_from_slice(self.page_rows(page, head, value));
            }
        }
        Tensor::from_shape(&[1, self.kv_heads, self.len, self.head_dim], &data)
    }

    /// Replace the contents with `k` and `v` (`[1, kv_heads, len, head_dim]`).
    pub fn load(&mut self, k: &Tensor, v: &Tensor) -> TractResult<()> {
        let (h, d) = (self.kv_heads, self.head_dim);
        ensure!(
            k.shape() == v.shape() && k.rank() == 4 && k.shape()[1] == h && k.shape()[3] == d,
            "KV cache: bad state shape {:?}",
            k.shape()
        );
        let (k, v) = (k.cast_to::<f32>()?, v.cast_to::<f32>()?);
        *self = KvCache::new(h, d);
        self.push(k.try_as_plain_ram()?.as_slice::<f32>()?, v.try_as_plain_ram()?.as_slice::<f32>()?, k.shape()[2])
    }

    /// Where each page's keys live (tests: rows never move).
    #[cfg(test)]
    fn page_addresses(&self) -> Vec<usize> {
        self.pages.iter().map(|p| p.k.as_ptr() as usize).collect()
    }
}

/// The attention mask of one query row: additive f32 (f32's floor hides a key), bool, or
/// causal (the first `n` keys are visible).
#[derive(Clone, Copy)]
enum Mask<'a> {
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
    fn attend(
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
        let mut scores = vec![0f32; 4 * t_len];
        let mut acc = vec![0f32; 4 * d];
        let mask_of = |row: usize| {
            let at = if mask_rows == 1 { 0 } else { row } * t_len;
            match mask {
                Mask::Additive(m) => Mask::Additive(&m[at..][..t_len]),
                Mask::Keep(m) => Mask::Keep(&m[at..][..t_len]),
                // Row `row` of the `s` new ones sits at position `t_len - s + row`.
                Mask::Causal(_) => Mask::Causal(t_len - s + row + 1),
            }
        };
        for head in 0..self.kv_heads {
            for g in 0..group {
                let q_of = |row: usize| &q[((head * group + g) * s + row) * d..][..d];
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
                    let at = ((head * group + g) * n_rows + first) * d;
                    out[at..][..block * d].copy_from_slice(&acc[..block * d]);
                    first += block;
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
struct KvAttentionState {
    op: KvAttention,
    cache: KvCache,
}

impl KvAttentionState {
    fn live_shape(&self) -> [usize; 4] {
        [1, self.cache.kv_heads, self.cache.len, self.cache.head_dim]
    }
}

impl OpState for KvAttentionState {
    fn init_tensor_fact(&self) -> Option<(String, TypedFact)> {
        Some((self.op.name.clone(), self.op.past_fact.clone()))
    }

    fn has_init_tensor_fact(&self) -> bool {
        true
    }

    fn resolve_symbols(&mut self, state: &mut TurnState) -> TractResult<()> {
        DynKeyValueCacheState::resolve_symbols(
            state,
            self.op.past_fact.clone(),
            Some(&self.live_shape()),
        )
    }

    /// The cache as two tensors, keys then values (copied out once, not per step).
    fn save_to(&self, states: &mut Vec<TValue>) -> TractResult<()> {
        states.push(self.cache.to_tensor(false)?.into_tvalue());
        states.push(self.cache.to_tensor(true)?.into_tvalue());
        Ok(())
    }

    fn load_from(
        &mut self,
        state: &mut TurnState,
        states: &mut dyn Iterator<Item = TValue>,
    ) -> TractResult<()> {
        let k = states.next().context("KvAttention: missing key state")?;
        let v = states.next().context("KvAttention: missing value state")?;
        self.cache.load(&k, &v)?;
        self.resolve_symbols(state)
    }

    fn eval(
        &mut self,
        _ctx: &EvalContext,
        _op: &dyn Op,
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        let mut inputs = inputs.into_iter();
        let (Some(q), Some(k_new), Some(v_new)) = (inputs.next(), inputs.next(), inputs.next()) else {
            bail!("KvAttention: missing inputs")
        };
        let mask = inputs.next();
        let (h, d) = (self.cache.kv_heads, self.cache.head_dim);
        let (group, s) = (q.shape()[2], q.shape()[3]);
        ensure!(q.shape() == [1, h, group, s, d], "KvAttention: q {:?}", q.shape());
        ensure!(d % HEAD_DIM_MULTIPLE == 0, "KvAttention: head size {d} is not a multiple of {HEAD_DIM_MULTIPLE}");
        ensure!(k_new.shape() == [1, h, s, d] && v_new.shape() == k_new.shape(), "KvAttention: new keys {:?}", k_new.shape());
        let f = |t: &TValue| -> TractResult<Tensor> { Ok(t.cast_to::<f32>()?.into_owned()) };
        let (q, k_new, v_new) = (f(&q)?, f(&k_new)?, f(&v_new)?);
        self.cache.push(k_new.try_as_plain_ram()?.as_slice::<f32>()?, v_new.try_as_plain_ram()?.as_slice::<f32>()?, s)?;
        let t_len = self.cache.len;
        let mask_f32;
        let (m, mask_rows) = match &mask {
            None => (Mask::Causal(0), 1),
            Some(mask) => {
                let m_shape = mask.shape();
                let (mask_rows, mask_cols) = (m_shape[m_shape.len() - 2], m_shape[m_shape.len() - 1]);
                ensure!(
                    mask_cols == t_len && (mask_rows == s || mask_rows == 1) && mask.len() == mask_rows * mask_cols,
                    "KvAttention: mask {m_shape:?} for {s} new and {t_len} cached positions"
                );
                if mask.datum_type() == bool::datum_type() {
                    (Mask::Keep(mask.try_as_plain_ram()?.as_slice::<bool>()?), mask_rows)
                } else {
                    mask_f32 = mask.cast_to::<f32>()?;
                    (Mask::Additive(mask_f32.try_as_plain_ram()?.as_slice::<f32>()?), mask_rows)
                }
            }
        };
        let rows = if self.op.last_row_only {
            s - 1..s
        } else {
            0..s
        };
        let mut out = vec![0f32; h * group * rows.len() * d];
        self.cache.attend(
            q.try_as_plain_ram()?.as_slice::<f32>()?,
            group,
            s,
            rows.clone(),
            m,
            mask_rows,
            self.op.scale,
            &mut out,
        );
        Ok(tvec!(Tensor::from_shape(
            &[1, h, group, rows.len(), d],
            &out
        )?
        .into_tvalue()))
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        bail!("KvAttention keeps one conversation")
    }
}

/// Follow `outlet` back through single-consumer reshapes (no axis moves); returns the first
/// outlet that is not one.
fn through_reshapes_back(model: &TypedModel, mut outlet: OutletId) -> OutletId {
    loop {
        let node = model.node(outlet.node);
        let reshape = node
            .op_as::<AxisOp>()
            .is_some_and(|op| !matches!(op, AxisOp::Move(..)));
        if !reshape || node.outputs[0].successors.len() != 1 {
            return outlet;
        }
        outlet = node.inputs[0];
    }
}

/// Whether `axis` sits at `input0`/`input1`/`output` positions exactly as given.
fn at(axis: &Axis, input0: Option<usize>, input1: Option<usize>, output: Option<usize>) -> bool {
    let pos = |v: &TVec<usize>| v.first().copied();
    single_positions(axis)
        && pos(&axis.inputs[0]) == input0
        && pos(&axis.inputs[1]) == input1
        && pos(&axis.outputs[0]) == output
}

/// Whether a mask is `[.., rows, keys]` with every leading axis of size 1 (one mask for all
/// heads), the form [`KvAttention`] reads.
fn mask_is_per_row(fact: &TypedFact) -> bool {
    fact.rank() >= 2 && fact.shape.iter().rev().skip(2).all(|d| *d == 1.to_dim())
}

/// Whether the axis appears at most once in each input and output.
fn single_positions(axis: &Axis) -> bool {
    axis.inputs
        .iter()
        .chain(axis.outputs.iter())
        .all(|p| p.len() <= 1)
}

/// The matched block of one layer, ready to be replaced.
struct Block {
    q: OutletId,
    k_new: OutletId,
    v_new: OutletId,
    mask: OutletId,
    op: KvAttention,
    /// The `P·V` einsum whose output the fused op takes over.
    pv: usize,
    /// For each output axis of `pv`, the canonical axis `[batch, kv_head, group, row, dim]`.
    out_axes: Vec<usize>,
}

fn match_block(model: &TypedModel, sms_id: usize) -> TractResult<Option<Block>> {
    let sms = model.node(sms_id);
    let Some(sms_op) = sms.op_as::<ScaledMaskedSoftmax>() else {
        return Ok(None);
    };
    if sms_op.post_softmax_mask || sms_op.scale.len() != 1 || sms.outputs[0].successors.len() != 1 {
        return Ok(None);
    }
    let scale = sms_op.scale.cast_to_scalar::<f32>()?;
    let mask = sms.inputs[1];
    if !mask_is_per_row(model.outlet_fact(mask)?) {
        return Ok(None);
    }
    // Q·Kᵀ: canonical [1, kvh, g, s, d] · [1, kvh, t, d] -> [1, kvh, g, s, t].
    let qk = model.node(through_reshapes_back(model, sms.inputs[0]).node);
    let Some(qk_op) = qk.op_as::<EinSum>() else {
        return Ok(None);
    };
    if qk.inputs.len() != 2 || qk_op.q_params.is_some() || qk.outputs[0].successors.len() != 1 {
        return Ok(None);
    }
    let kc_node = model.node(qk.inputs[1].node);
    let Some(kc) = kc_node.op_as::<DynKeyValueCache>() else {
        return Ok(None);
    };
    if kc.axis != 2 || kc_node.outputs[0].successors.len() != 1 || kc.past_sequence_fact.rank() != 4
    {
        return Ok(None);
    }
    // Fixed kv-head count and a head size the kernels take (a multiple of 8).
    let past = &kc.past_sequence_fact.shape;
    if past[1].to_usize().is_err() || past[3].to_usize().map_or(true, |d| d % HEAD_DIM_MULTIPLE != 0) {
        return Ok(None);
    }
    let q_rank = model.outlet_fact(qk.inputs[0])?.rank();
    if q_rank != 5 || qk_op.axes.rank(InOut::Out(0)) != 5 {
        return Ok(None);
    }
    let canonical_qk = [
        (Some(0), Some(0), Some(0)),
        (Some(1), Some(1), Some(1)),
        (Some(2), None, Some(2)),
        (Some(3), None, Some(3)),
        (Some(4), Some(3), None),
        (None, Some(2), Some(4)),
    ];
    let axes: Vec<&Axis> = qk_op.axes.iter_all_axes().collect();
    if axes.len() != 6
        || !canonical_qk
            .iter()
            .all(|(a, b, o)| axes.iter().any(|ax| at(ax, *a, *b, *o)))
    {
        return Ok(None);
    }
    // Softmax output to P·V, through reshapes and at most one slice keeping the last row.
    let mut outlet = OutletId::new(sms_id, 0);
    let mut last_row_only = false;
    let pv = loop {
        let succ = model.outlet_successors(outlet);
        if succ.len() != 1 {
            return Ok(None);
        }
        let node = model.node(succ[0].node);
        if let Some(op) = node.op_as::<AxisOp>() {
            if matches!(op, AxisOp::Move(..)) {
                return Ok(None);
            }
        } else if let Some(slice) = node.op_as::<Slice>() {
            let fact = model.outlet_fact(outlet)?;
            let rows = &fact.shape[fact.rank() - 2];
            if last_row_only
                || slice.axis != fact.rank() - 2
                || slice.end != *rows
                || slice.start != rows.clone() - 1
            {
                return Ok(None);
            }
            last_row_only = true;
        } else if node.op_is::<EinSum>() && succ[0].slot == 0 {
            break node;
        } else {
            return Ok(None);
        }
        if node.outputs[0].successors.len() != 1 {
            return Ok(None);
        }
        outlet = OutletId::new(node.id, 0);
    };
    let pv_op = pv.op_as::<EinSum>().expect("checked above");
    if pv.inputs.len() != 2
        || pv_op.q_params.is_some()
        || model.outlet_fact(pv.inputs[0])?.rank() != 5
    {
        return Ok(None);
    }
    let vc_node = model.node(pv.inputs[1].node);
    let Some(vc) = vc_node.op_as::<DynKeyValueCache>() else {
        return Ok(None);
    };
    if vc.axis != 2 || vc_node.outputs[0].successors.len() != 1 {
        return Ok(None);
    }
    // P·V: [1, kvh, g, s, t] · [1, kvh, t, d]; the output may order or drop (size-1) axes.
    let mut out_axes = vec![usize::MAX; pv_op.axes.rank(InOut::Out(0))];
    let out_fact = model.outlet_fact(OutletId::new(pv.id, 0))?;
    for ax in pv_op.axes.iter_all_axes() {
        if !single_positions(ax) {
            return Ok(None);
        }
        let (a, b, o) = (
            ax.inputs[0].first().copied(),
            ax.inputs[1].first().copied(),
            ax.outputs[0].first().copied(),
        );
        let canonical = match (a, b) {
            (Some(0), Some(0)) => 0,
            (Some(1), Some(1)) => 1,
            (Some(2), None) => 2,
            (Some(3), None) => 3,
            (None, Some(3)) => 4,
            (Some(4), Some(2)) if o.is_none() => continue, // the summed key position
            _ => return Ok(None),
        };
        match o {
            Some(o) => out_axes[o] = canonical,
            // A dropped axis must be of size 1, or the einsum summed it.
            None if canonical == 0 || (canonical == 3 && last_row_only) => {}
            None => {
                let fact = model.outlet_fact(if canonical == 4 {
                    pv.inputs[1]
                } else {
                    pv.inputs[0]
                })?;
                let pos = if canonical == 4 { 3 } else { canonical };
                if fact.shape[pos] != 1.to_dim() {
                    return Ok(None);
                }
            }
        }
    }
    if out_axes.contains(&usize::MAX) || out_fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let op = KvAttention {
        name: kc.name.clone(),
        past_fact: kc.past_sequence_fact.clone(),
        scale,
        last_row_only,
        causal: false,
    };
    Ok(Some(Block {
        q: qk.inputs[0],
        k_new: kc_node.inputs[0],
        v_new: vc_node.inputs[0],
        mask,
        op,
        pv: pv.id,
        out_axes,
    }))
}

/// Replace every matching attention block of a model folded by tract-transformers with
/// [`KvAttention`]; returns how many were fused.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let candidates: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<ScaledMaskedSoftmax>())
        .map(|n| n.id)
        .collect();
    let mut fused = 0;
    for sms in candidates {
        let Some(block) = match_block(model, sms)? else {
            continue;
        };
        let name = model.node(block.pv).name.clone();
        let mut patch = TypedModelPatch::default();
        let taps = patch.taps(model, &[block.q, block.k_new, block.v_new, block.mask])?;
        let mut out = patch.wire_node(format!("{name}.kv_attention"), block.op, &taps)?[0];
        // Canonical [1, kvh, g, s, d] to the einsum's output layout: drop the axes it does
        // not have (size 1), then move the rest into its order.
        let mut current: Vec<usize> = (0..5).collect();
        for axis in (0..5).rev() {
            if !block.out_axes.contains(&axis) {
                out = patch.wire_node(
                    format!("{name}.kv_attention.rm{axis}"),
                    AxisOp::Rm(axis),
                    &[out],
                )?[0];
                current.remove(axis);
            }
        }
        for (to, want) in block.out_axes.iter().enumerate() {
            let from = current
                .iter()
                .position(|c| c == want)
                .expect("every kept axis is present");
            if from != to {
                out = patch.wire_node(
                    format!("{name}.kv_attention.mv{from}_{to}"),
                    AxisOp::Move(from, to),
                    &[out],
                )?[0];
                let a = current.remove(from);
                current.insert(to, a);
            }
        }
        patch.shunt_outside(model, OutletId::new(block.pv, 0), out)?;
        patch.apply(model)?;
        fused += 1;
    }
    if fused > 0 {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(fused)
}

/// One layer's side (key or value) of an onnxruntime-genai attention, as tract-onnx expands it.
struct GenaiSide {
    new: OutletId,
    /// The `past_key_values.*` input to drop.
    past: usize,
    /// The index of the `present.*` output to drop.
    present: usize,
    layer: usize,
}

/// onnxruntime-genai's `GroupQueryAttention` as tract-onnx expands it: `Sdpa(q, Concat(past_k,
/// k), Concat(past_v, v)[, mask])` whose concats are the `present.*` outputs (the one-token
/// plan), or `Sdpa(q, k, v)` with `k` and `v` the outputs (the first-prompt plan, whose past is
/// empty). Each becomes a [`KvAttention`], and the layer's past inputs and present outputs go:
/// the cache lives in the plan's state. All layers or none: returns how many were fused.
pub fn fuse_genai(model: &mut TypedModel) -> TractResult<usize> {
    use tract_onnx::tract_core::ops::array::TypedConcat;
    use tract_transformers::ops::sdpa::Sdpa;
    let port = |model: &TypedModel, o: OutletId| {
        let label = model.outlet_label(o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone());
        match super::classify(&label) {
            Some(super::Port::Kv(layer, is_v)) => Some((layer, is_v)),
            _ => None,
        }
    };
    let side = |model: &TypedModel, outlet: OutletId, is_v: bool| -> TractResult<Option<GenaiSide>> {
        let Some(present) = model.outputs.iter().position(|o| *o == outlet) else { return Ok(None) };
        let Some((layer, v)) = port(model, outlet) else { return Ok(None) };
        if v != is_v {
            return Ok(None);
        }
        let node = model.node(outlet.node);
        if let Some(concat) = node.op_as::<TypedConcat>() {
            let past = node.inputs[0].node;
            if concat.axis == 2 && node.inputs.len() == 2 && model.inputs.contains(&node.inputs[0]) && port(model, node.inputs[0]) == Some((layer, is_v)) {
                return Ok(Some(GenaiSide { new: node.inputs[1], past, present, layer }));
            }
            return Ok(None);
        }
        // The first-prompt plan: the past input is empty and unused.
        let past = model.inputs.iter().find(|i| port(model, **i) == Some((layer, is_v)));
        match past {
            Some(p) if model.outlet_fact(*p)?.shape[2] == 0.to_dim() => Ok(Some(GenaiSide { new: outlet, past: p.node, present, layer })),
            _ => Ok(None),
        }
    };
    let mut blocks = Vec::new();
    let sdpas: Vec<usize> = model.nodes().iter().filter(|n| n.op_is::<Sdpa>()).map(|n| n.id).collect();
    for id in &sdpas {
        let node = model.node(*id);
        let op = node.op_as::<Sdpa>().expect("filtered");
        let (Some(k), Some(v)) = (side(model, node.inputs[1], false)?, side(model, node.inputs[2], true)?) else { return Ok(0) };
        let (q_fact, past_fact) = (model.outlet_fact(node.inputs[0])?, model.outlet_fact(OutletId::new(k.past, 0))?.clone());
        let (Ok(heads), Ok(kv_heads), Ok(d)) = (q_fact.shape[1].to_usize(), past_fact.shape[1].to_usize(), past_fact.shape[3].to_usize()) else {
            return Ok(0);
        };
        let mask = node.inputs.get(3).copied();
        if k.layer != v.layer || q_fact.rank() != 4 || heads % kv_heads != 0 || d % HEAD_DIM_MULTIPLE != 0 || (mask.is_none() && !op.is_causal) {
            return Ok(0);
        }
        if let Some(m) = mask {
            if !mask_is_per_row(model.outlet_fact(m)?) {
                return Ok(0);
            }
        }
        let scale = match &op.scale {
            Some(t) => t.cast_to_scalar::<f32>()?,
            None => 1.0 / (d as f32).sqrt(),
        };
        let name = format!("past_key_values.{}.key", k.layer);
        let fused = KvAttention { name, past_fact, scale, last_row_only: false, causal: mask.is_none() };
        blocks.push((*id, k, v, mask, fused, heads, kv_heads));
    }
    let count = blocks.len();
    let (mut drop_inputs, mut drop_outputs) = (Vec::new(), Vec::new());
    for (id, k, v, mask, fused, heads, kv_heads) in blocks {
        let node = model.node(id);
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let mut wires = vec![node.inputs[0], k.new, v.new];
        wires.extend(mask);
        let taps = patch.taps(model, &wires)?;
        let group = heads / kv_heads;
        let q = patch.wire_node(format!("{name}.q_groups"), AxisOp::Reshape(1, tvec![heads.to_dim()], tvec![kv_heads.to_dim(), group.to_dim()]), &[taps[0]])?[0];
        let mut inputs = taps.clone();
        inputs[0] = q;
        let out = patch.wire_node(format!("{name}.kv_attention"), fused, &inputs)?[0];
        let out = patch.wire_node(format!("{name}.heads"), AxisOp::Reshape(1, tvec![kv_heads.to_dim(), group.to_dim()], tvec![heads.to_dim()]), &[out])?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), out)?;
        patch.apply(model)?;
        drop_inputs.extend([k.past, v.past]);
        drop_outputs.extend([model.outputs[k.present], model.outputs[v.present]]);
    }
    model.inputs.retain(|i| !drop_inputs.contains(&i.node));
    for o in &drop_outputs {
        model.outlet_labels.remove(o);
    }
    model.outputs.retain(|o| !drop_outputs.contains(o));
    for past in drop_inputs {
        let dummy = model.create_dummy();
        let node = model.node_mut(past);
        node.outputs[0].successors.clear();
        node.op = dummy;
    }
    if count > 0 {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

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
    fn cache_pages_never_move_and_keep_their_rows() {
        let (h, d) = (2, 8);
        let mut cache = KvCache::new(h, d);
        let mut all_k = vec![Vec::new(); h];
        let mut addresses = Vec::new();
        for step in 0..1000 {
            let s = if step == 0 { 70 } else { 1 + step as usize % 3 };
            let k = values(h * s * d, step);
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            cache.push(&k, &v, s).unwrap();
            for head in 0..h {
                all_k[head].extend_from_slice(&k[head * s * d..][..s * d]);
            }
            // Appending never moves a written row: earlier pages stay where they were.
            let now = cache.page_addresses();
            assert_eq!(now[..addresses.len()], addresses[..]);
            addresses = now;
            assert_eq!(cache.capacity(), cache.len().div_ceil(PAGE_ROWS) * PAGE_ROWS);
        }
        let t = cache.to_tensor(false).unwrap();
        let flat = t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        assert_eq!(flat, all_k.concat());
        let v = cache.to_tensor(true).unwrap();
        assert!(v.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().zip(&flat).all(|(a, b)| *a == -b));
        let mut reloaded = KvCache::new(h, d);
        reloaded.load(&t, &v).unwrap();
        assert_eq!(reloaded.to_tensor(false).unwrap(), t);
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
