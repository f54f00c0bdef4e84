//! The graph rewriter: finds each layer's attention block (the folded HF/optimum form, or
//! onnxruntime-genai's `GroupQueryAttention`) and replaces it with one [`KvAttention`].

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::internal::*;
use tract_transformers::ops::dyn_kv_cache::DynKeyValueCache;
use tract_transformers::ops::scaled_masked_softmax::ScaledMaskedSoftmax;

use super::kv_cache::HEAD_DIM_MULTIPLE;
use super::KvAttention;

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
#[inline(never)]
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
        edge_llm_tract_once::apply(patch, model)?;
        fused += 1;
    }
    if fused > 0 {
        *model = edge_llm_tract_once::into_compact(std::mem::take(model))?;
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
#[inline(never)]
pub fn fuse_genai(model: &mut TypedModel) -> TractResult<usize> {
    use tract_onnx::tract_core::ops::array::TypedConcat;
    use tract_transformers::ops::sdpa::Sdpa;
    let port = |model: &TypedModel, o: OutletId| {
        let label = model.outlet_label(o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone());
        match super::super::classify(&label) {
            Some(super::super::Port::Kv(layer, is_v)) => Some((layer, is_v)),
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
        edge_llm_tract_once::apply(patch, model)?;
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
        *model = edge_llm_tract_once::into_compact(std::mem::take(model))?;
    }
    Ok(count)
}
