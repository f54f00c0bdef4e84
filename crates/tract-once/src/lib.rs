//! tract's generic graph code that edge-llm calls once per model load, instantiated here.
//!
//! Rust compiles a generic function at the opt-level of the crate that instantiates it. Called
//! from edge-llm (opt-level 3, for its kernels) `ModelPatch::apply` and `SimplePlan::new` each
//! became a second, inlined copy of 22–24 KB of wasm beside tract-core's own ("s", 8–12 KB),
//! and V8 optimizes them while the load ends: 9–11 MB of compiler memory each, on top of the
//! model in memory (issue #16). Instantiated in this crate (opt-level "s" in the workspace's
//! release profile, like tract-core) they are compiled as tract-core's are; they run once per
//! load, so their speed does not matter.

use std::sync::Arc;
use tract_core::internal::*;
use tract_core::plan::SimplePlan;

/// `patch.apply(model)`.
#[inline(never)]
pub fn apply(patch: TypedModelPatch, model: &mut TypedModel) -> TractResult<()> {
    patch.apply(model)
}

/// `model.into_compact()`.
#[inline(never)]
pub fn into_compact(model: TypedModel) -> TractResult<TypedModel> {
    model.into_compact()
}

/// `model.into_runnable()`: the model's execution plan.
#[inline(never)]
pub fn into_runnable(model: TypedModel) -> TractResult<Arc<SimplePlan<TypedFact, Box<dyn TypedOp>>>> {
    model.into_runnable()
}
