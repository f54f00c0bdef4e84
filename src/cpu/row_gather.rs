//! `Gather` of plain tensors as byte copies, for the optimized plan.
//!
//! Why not tract's: its `Gather::eval` handles every datum type, block-quantized and packed
//! weights in one 51 KB wasm function (each type's copy loop inlined), and V8 optimizes it
//! during the first requests, since a decode step runs it (the embedding's rows, scales and zero
//! points): that one compile took 35 MB of compiler memory (14 MB at once) for 130 ms while the
//! KV cache and the rest of the engine were already resident, and it was where a 2-thread run's
//! process-tree RSS peaked (`--js-flags=--trace-wasm-compilation-times`; issue #16). With this op
//! no compile of a run needs more than 6 MB at once. Gathering rows of a plain tensor is the same
//! copy for every type with a fixed size, so one small loop over bytes does it. [`lean_gathers`]
//! swaps it in after tract's optimizer has finished, where the data is plain and its type a
//! fixed-size number; tract's op stays everywhere else (block-quantized data, strings, `TDim`s).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_hir::internal::*;

/// `data[.., indices, ..]` along `axis`, as ONNX and tract's `Gather` define it: the output's
/// shape is `data[..axis] ++ indices ++ data[axis + 1..]`; a negative index counts from the end;
/// one out of range is an error (not a trap).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RowGather {
    pub axis: usize,
}

impl Op for RowGather {
    fn name(&self) -> StaticName {
        "EdgeLlmRowGather".into()
    }
    op_as_typed_op!();
}

impl RowGather {
    fn output_shape<D: Clone>(&self, data: &[D], indices: &[D]) -> TractResult<TVec<D>> {
        ensure!(self.axis < data.len(), "Gather axis {} on a rank {} tensor", self.axis, data.len());
        Ok(data[..self.axis].iter().chain(indices).chain(&data[self.axis + 1..]).cloned().collect())
    }
}

impl EvalOp for RowGather {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (data, indices) = args_2!(inputs);
        let shape = self.output_shape(data.shape(), indices.shape())?;
        let indices = indices.cast_to::<i64>()?;
        let indices = indices.try_as_plain_ram()?;
        let indices = indices.as_slice::<i64>()?;
        let dt = data.datum_type();
        ensure!(dt.is_copy(), "EdgeLlmRowGather on {dt:?}");
        let rows = data.shape()[self.axis];
        let outer: usize = data.shape()[..self.axis].iter().product();
        let row_bytes = data.shape()[self.axis + 1..].iter().product::<usize>() * dt.size_of();
        let src = data.try_as_plain_ram()?;
        let src = src.as_bytes();
        // Every byte is written below before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized_dt(dt, &shape)? };
        let dst = out.as_bytes_mut();
        let mut at = 0;
        for o in 0..outer {
            let base = o * rows;
            for &i in indices {
                let row = if i < 0 { i + rows as i64 } else { i };
                ensure!((0..rows as i64).contains(&row), "Gather index {i} out of range for an axis of {rows}");
                let from = (base + row as usize) * row_bytes;
                dst[at..at + row_bytes].copy_from_slice(&src[from..from + row_bytes]);
                at += row_bytes;
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for RowGather {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(&*self.output_shape(&inputs[0].shape, &inputs[1].shape)?)))
    }

    as_op!();
}

/// Replace tract's `Gather` by [`RowGather`] wherever its data is a plain tensor of a
/// fixed-size type (and it does not convert: no `output_type`). Run on the optimized model, just
/// before it becomes a plan, so no later pass needs to know the op. Returns how many it replaced.
#[inline(never)]
pub fn lean_gathers(model: &mut TypedModel) -> TractResult<usize> {
    let mut swaps = Vec::new();
    for node in model.nodes() {
        let Some(g) = node.op_as::<Gather>() else { continue };
        let data = model.outlet_fact(node.inputs[0])?;
        let indices = model.outlet_fact(node.inputs[1])?;
        if g.output_type.is_none() && data.is_plain() && data.datum_type.is_copy() && indices.datum_type == i64::datum_type() {
            swaps.push((node.id, g.axis));
        }
    }
    for &(id, axis) in &swaps {
        model.node_mut(id).op = Box::new(RowGather { axis });
    }
    Ok(swaps.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ndarray::ArrayD;

    fn eval(op: &dyn EvalOp, data: &Tensor, indices: &Tensor) -> TractResult<Tensor> {
        let mut out = op.eval(&EvalContext::out_of_plan(), tvec![data.clone().into_tvalue(), indices.clone().into_tvalue()])?;
        Ok(out.remove(0).into_tensor())
    }

    /// The same outputs as tract's `Gather` for every axis, index rank and sign, on several types.
    #[test]
    fn row_gather_matches_tracts_gather() {
        let mut next = crate::test_rng(0x2545_f491);
        let shapes: [&[usize]; 4] = [&[5], &[4, 3], &[3, 5, 2], &[2, 3, 4, 2]];
        let index_shapes: [&[usize]; 4] = [&[], &[1], &[3], &[2, 2]];
        for shape in shapes {
            let len: usize = shape.iter().product();
            let values: Vec<f32> = (0..len).map(|_| next(1000) as f32 / 7.0 - 50.0).collect();
            let base = Tensor::from(ArrayD::from_shape_vec(shape.to_vec(), values).unwrap());
            for dt in [DatumType::F32, DatumType::F16, DatumType::U8, DatumType::I8, DatumType::I64] {
                let data = base.cast_to_dt(dt).unwrap().into_owned();
                for axis in 0..shape.len() {
                    for ishape in index_shapes {
                        let n: usize = ishape.iter().product();
                        let rows = shape[axis] as i64;
                        let idx: Vec<i64> = (0..n).map(|_| next(2 * rows as usize) as i64 - rows).collect();
                        let indices = Tensor::from(ArrayD::from_shape_vec(ishape.to_vec(), idx).unwrap());
                        let want = eval(&Gather::new(axis), &data, &indices).unwrap();
                        let got = eval(&RowGather { axis }, &data, &indices).unwrap();
                        assert_eq!(got, want, "{dt:?} shape {shape:?} axis {axis} indices {indices:?}");
                        let facts = [dt.fact(data.shape()), i64::fact(indices.shape())];
                        let fact = RowGather { axis }.output_facts(&[&facts[0], &facts[1]]).unwrap().remove(0);
                        assert_eq!(fact.shape.as_concrete(), Some(got.shape()));
                        assert_eq!(fact.datum_type, dt);
                    }
                }
            }
        }
    }

    #[test]
    fn row_gather_refuses_an_index_out_of_range() {
        let data = Tensor::from(ArrayD::from_shape_vec(vec![3, 2], vec![1f32, 2., 3., 4., 5., 6.]).unwrap());
        for bad in [3i64, -4] {
            let err = eval(&RowGather { axis: 0 }, &data, &tensor1(&[0i64, bad])).unwrap_err();
            assert!(format!("{err}").contains("out of range"), "{err}");
        }
    }
}
