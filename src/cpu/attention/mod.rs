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
//!
//! Files: this one holds the tract op and its state; `kv_cache` the paged storage; `math` the
//! masks, softmax and attention over the cache; `fuse` the graph rewriter.

mod fuse;
mod kv_cache;
mod math;

pub use fuse::{fuse, fuse_genai};
pub use kv_cache::{KvCache, PAGE_ROWS};
use kv_cache::HEAD_DIM_MULTIPLE;
use math::Mask;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_transformers::ops::dyn_kv_cache::DynKeyValueCacheState;


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

/// Deterministic values in [-1, 1) (the child modules' tests).
#[cfg(test)]
fn test_values(n: usize, seed: u64) -> Vec<f32> {
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

