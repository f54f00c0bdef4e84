//! What the row-wise matmul ops ([`super::q4_matmul`], [`super::q4_min_matmul`],
//! [`super::q8_block_matmul`], [`super::q8_matmul`]) share as tract ops: `[.., K]` in, `[.., N]`
//! out, every row independent of the others.

use std::sync::Arc;

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

/// The float ops' rules: one output, of input 0's type, `[.., n]`.
pub fn float_rules<'r, 'p: 'r>(s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy], n: usize) -> InferenceResult {
    check_output_arity(outputs, 1)?;
    s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
    rules(s, inputs, outputs, n.to_dim())
}

/// Input `i` of a `MatMulNBits` node being wired, which must be a constant (`what` names it).
pub fn weight(model: &TypedModel, inputs: &[OutletId], i: usize, what: &str) -> TractResult<Arc<Tensor>> {
    super::const_value(model, inputs[i])?.with_context(|| format!("MatMulNBits: {what} must be a constant"))
}

/// The float ops' `eval`: `x` (`[.., k]`, any float type) as contiguous f32 rows, `matmul(x,
/// out)` into `[.., n]`.
fn eval_f32(x: TValue, k: usize, n: usize, matmul: impl FnOnce(&[f32], &mut [f32]) -> TractResult<()>) -> TractResult<TVec<TValue>> {
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

/// What a float row-wise op multiplies its weights with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// The f32 activations.
    Float,
    /// Activations rounded per 32-block to 16 bits (relative error 2^-16 of each block's
    /// largest value): integer kernels on float inputs. Kernels without such a path compute in f32.
    Int16,
    /// Rounded per 32-block to int8 (onnxruntime's `accuracy_level` 4, llama.cpp's q8_0).
    Int8,
}

/// A weight matrix of a float row-wise op ([`FloatRowsOp`]).
pub trait FloatRows: std::fmt::Debug + Send + Sync + 'static {
    /// The op's name in tract's plan.
    const OP: &'static str;
    /// `(k, n)`.
    fn dims(&self) -> (usize, usize);
    /// `out[m][n] = x[m] · w[n]` for the rows of `x` (`[m][k]`) on `activations`.
    fn run(&self, x: &[f32], out: &mut [f32], activations: Activations) -> TractResult<()>;
}

/// The typed op of a float row-wise matmul, `[.., K] f32 -> [.., N] f32`, over weights `M`.
#[derive(Debug)]
pub struct FloatRowsOp<M> {
    pub w: Arc<M>,
    pub activations: Activations,
}

impl<M> Clone for FloatRowsOp<M> {
    fn clone(&self) -> Self {
        FloatRowsOp { w: self.w.clone(), activations: self.activations }
    }
}

impl<M> PartialEq for FloatRowsOp<M> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.w, &other.w) && self.activations == other.activations
    }
}
impl<M> Eq for FloatRowsOp<M> {}

impl<M: FloatRows> Op for FloatRowsOp<M> {
    fn name(&self) -> StaticName {
        M::OP.into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let (k, n) = self.w.dims();
        Ok(vec![format!("N={n} K={k} activations: {:?}", self.activations)])
    }
    op_as_typed_op!();
}

impl<M: FloatRows> EvalOp for FloatRowsOp<M> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (k, n) = self.w.dims();
        eval_f32(args_1!(inputs), k, n, |x, out| self.w.run(x, out, self.activations))
    }
}

impl<M: FloatRows> TypedOp for FloatRowsOp<M> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(output_shape(inputs[0], self.w.dims().1))))
    }

    fn axes_mapping(&self, inputs: &[&TypedFact], outputs: &[&TypedFact]) -> TractResult<AxesMapping> {
        axes_mapping(inputs, outputs)
    }

    /// A slice of the rows (e.g. only the last position's logits) slices the input instead:
    /// tract's `PushSliceUp` then computes only the rows that are used.
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

/// Deterministic test data: weights `[n][k]` in `[-1, 1) + shift` and activations `[m][k]` in `[-1, 1)`.
#[cfg(test)]
pub fn test_data(n: usize, k: usize, m: usize, shift: f32) -> (Vec<f32>, Vec<f32>) {
    let w = (0..n * k).map(|i| ((i * 7919 % 263) as f32 / 131.0) - 1.0 + shift).collect();
    let x = (0..m * k).map(|i| ((i * 104729 % 199) as f32 / 99.0) - 1.0).collect();
    (w, x)
}
