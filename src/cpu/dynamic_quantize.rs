//! ONNX `DynamicQuantizeLinear` as onnxruntime computes it (the op `quantize_dynamic` puts
//! before every `MatMulInteger`).
//!
//! Why not tract's: it divides by a zero scale when the input is all zeros (scale 0, where
//! onnxruntime defines 1), so the scale the graph multiplies its `MatMulInteger` result by
//! differs from onnxruntime's. Everything else — ties of `x / scale` and of the zero point to
//! even, the zero point clamped to `[0, 255]` — is the same; `tests/ort_files.rs` pins both
//! implementations' outputs bit for bit against onnxruntime's
//! (`dynamic_quantize_and_matmul_integer_round_as_onnxruntime`).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// `(scale, zero_point)` of `x`: its range widened to include 0, mapped onto `[0, 255]`.
pub fn scale_and_zero_point(x: &[f32]) -> (f32, u8) {
    let (min, max) = x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // onnxruntime's rule for an all-zero range (the ONNX formula would divide 0 by 0).
    let scale = if max == min { 1.0 } else { (max - min) / 255.0 };
    let zero_point = (-min / scale).clamp(0.0, 255.0).round_ties_even() as u8;
    (scale, zero_point)
}

/// `saturate(round_half_to_even(x / scale) + zero_point)`.
pub fn quantize(x: &[f32], scale: f32, zero_point: u8, y: &mut [u8]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = ((x / scale).round_ties_even() + zero_point as f32).clamp(0.0, 255.0) as u8;
    }
}

/// The typed op: `x` (f32, any shape) → `y` (u8, same shape), scalar `scale`, scalar `zero_point`.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct DynamicQuantize;

impl Op for DynamicQuantize {
    fn name(&self) -> StaticName {
        "EdgeLlmDynamicQuantizeLinear".into()
    }
    op_as_typed_op!();
}

impl EvalOp for DynamicQuantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let x = x.cast_to::<f32>()?;
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let (scale, zero_point) = scale_and_zero_point(xs);
        let mut y = vec![0u8; xs.len()];
        quantize(xs, scale, zero_point, &mut y);
        Ok(tvec!(Tensor::from_shape(x.shape(), &y)?.into_tvalue(), tensor0(scale).into_tvalue(), tensor0(zero_point).into_tvalue()))
    }
}

impl TypedOp for DynamicQuantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(u8::fact(inputs[0].shape.clone()), f32::scalar_fact(), u8::scalar_fact()))
    }

    as_op!();
}

/// ONNX-side expansion (type and shape rules as the ONNX op defines them).
#[derive(Debug, Clone)]
struct DynamicQuantizeLinear;

impl Expansion for DynamicQuantizeLinear {
    fn name(&self) -> StaticName {
        "DynamicQuantizeLinear(edge-llm)".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(3)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 3)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        s.equals(&outputs[0].datum_type, u8::datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[1].rank, 0)?;
        s.equals(&outputs[2].datum_type, u8::datum_type())?;
        s.equals(&outputs[2].rank, 0)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, DynamicQuantize, &[inputs[0]])
    }
}

fn build(_ctx: &ParsingContext, _node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(DynamicQuantizeLinear), vec![]))
}

/// Parse `DynamicQuantizeLinear` into [`DynamicQuantize`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert("DynamicQuantizeLinear", build);
}
