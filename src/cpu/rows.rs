//! What the row-wise matmul ops ([`super::q4_matmul`], [`super::q4_min_matmul`],
//! [`super::q8_block_matmul`], [`super::q8_matmul`]) share as tract ops: `[.., K]` in, `[.., N]`
//! out, every row independent of the others.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Input 0's `[.., K]` becomes `[.., n]`.
pub fn output_shape(input: &TypedFact, n: usize) -> TVec<TDim> {
    let mut shape: TVec<TDim> = input.shape.to_tvec();
    let last = shape.len() - 1;
    shape[last] = n.to_dim();
    shape
}

/// Input 0's leading axes pass through (rows are independent), K in, N out; other inputs are
/// disconnected.
pub fn axes_mapping(inputs: &[&TypedFact], outputs: &[&TypedFact]) -> TractResult<AxesMapping> {
    let mut mapping = AxesMapping::disconnected(inputs, outputs)?;
    for (axis, repr) in (0..inputs[0].rank() - 1).zip('A'..) {
        mapping = mapping.renaming((InOut::In(0), axis), repr)?.linking(repr, (InOut::Out(0), axis))?;
    }
    Ok(mapping)
}

/// Inference rules: output 0 has input 0's rank and leading axes, and `n` as its last axis.
pub fn rules<'r, 'p: 'r>(s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy], n: TDim) -> InferenceResult {
    s.given(&inputs[0].rank, move |s, rank| {
        let rank = rank as usize;
        s.equals(&outputs[0].rank, rank as i64)?;
        for ax in 0..rank - 1 {
            s.equals(&outputs[0].shape[ax], &inputs[0].shape[ax])?;
        }
        s.equals(&outputs[0].shape[rank - 1], n.clone())
    })
}

/// The float ops' `eval`: `x` (`[.., k]`, any float type) as contiguous f32 rows, `matmul(x,
/// out)` into `[.., n]`.
pub fn eval_f32(x: TValue, k: usize, n: usize, matmul: impl FnOnce(&[f32], &mut [f32]) -> TractResult<()>) -> TractResult<TVec<TValue>> {
    let x = x.cast_to::<f32>()?;
    let xs = x.to_plain_array_view::<f32>()?;
    let mut shape: TVec<usize> = x.shape().into();
    let last = shape.len() - 1;
    ensure!(shape[last] == k, "input has {} features, the weight expects {k}", shape[last]);
    shape[last] = n;
    let flat: Vec<f32>;
    let xv = match xs.as_slice() {
        Some(s) => s,
        None => {
            flat = xs.iter().copied().collect();
            &flat
        }
    };
    let mut out = vec![0f32; shape.iter().product()];
    matmul(xv, &mut out)?;
    Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
}

/// `impl TypedOp` for row-wise op `$op` whose output is `$dt` with `$n` columns (an expression
/// of `self`). A slice of the rows (e.g. only the last position's logits) slices the input
/// instead: tract's `PushSliceUp` then computes only the rows that are used.
macro_rules! typed_op {
    ($op:ty, $dt:ty, |$me:ident| $n:expr) => {
        impl TypedOp for $op {
            fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                let $me = self;
                Ok(tvec!(<$dt>::fact(super::rows::output_shape(inputs[0], $n))))
            }

            fn axes_mapping(&self, inputs: &[&TypedFact], outputs: &[&TypedFact]) -> TractResult<AxesMapping> {
                super::rows::axes_mapping(inputs, outputs)
            }

            #[allow(clippy::too_many_arguments)]
            fn slice(
                &self,
                patch: &mut TypedModelPatch,
                _model: &TypedModel,
                node: &TypedNode,
                _prefix: &str,
                inputs: &[OutletId],
                output_axis: usize,
                _start: &TDim,
                _end: &TDim,
            ) -> TractResult<Option<TVec<OutletId>>> {
                if output_axis + 1 >= node.outputs[0].fact.rank() {
                    return Ok(None);
                }
                patch.wire_node(&node.name, self.clone(), inputs).map(Some)
            }

            as_op!();
        }
    };
}
pub(crate) use typed_op;
