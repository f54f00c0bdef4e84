//! Fixes applied to an ONNX decoder's protobuf before tract parses it, so that files as
//! third-party tools write them (optimum's export, onnxruntime's `quantize_dynamic`,
//! `MatMulNBitsQuantizer` and float16 converter) load unchanged. Each fix keeps the file's
//! arithmetic exactly; none of them needs the weights twice in memory.

use tract_onnx::pb::{self, tensor_proto::DataType, tensor_shape_proto::dimension, ModelProto, NodeProto, TensorProto};

use crate::onnx::{attr_i, float_values, ACCURACY_LEVEL_INT8, MS_DOMAIN};
use crate::{Error, Result};

/// Every fix below, in order. Call before the weights are detached (the int4 rewrite reads
/// and replaces initializers).
pub(crate) fn prepare(proto: &mut ModelProto) -> Result<()> {
    let graph = proto.graph.as_mut().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    forget_symbolic_value_info(graph);
    widen_f16_interface(graph);
    let nbits = rewrite_int4_dequantize(graph)?;
    check_g_idx(graph)?;
    if nbits && !proto.opset_import.iter().any(|o| o.domain == MS_DOMAIN) {
        proto.opset_import.push(pb::OperatorSetIdProto { domain: MS_DOMAIN.into(), version: 1 });
    }
    Ok(())
}

/// Shape annotations of intermediate values (`value_info`, written by onnx's shape inference
/// in `quantize_dynamic` and the float16 converter) name the producer's symbols:
/// `batch_size`, `sequence_length + past_sequence_length`. The engine pins the batch to 1 and
/// names the lengths `S` and `P`, and tract takes `batch_size` for a different symbol, so
/// the two facts cannot be unified ("Impossible to unify Sym(batch_size) with Val(1)"). Such
/// dimensions become unknown (tract infers them from the graph); fixed sizes and element
/// types stay as the file declares them.
#[inline(never)]
fn forget_symbolic_value_info(graph: &mut pb::GraphProto) {
    for info in &mut graph.value_info {
        let Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(t)), .. }) = &mut info.r#type else { continue };
        let Some(shape) = &mut t.shape else { continue };
        for d in &mut shape.dim {
            if matches!(d.value, Some(dimension::Value::DimParam(_))) {
                d.value = None;
            }
        }
    }
}

/// float16 graph inputs and outputs (onnxruntime's float16 converter without
/// `keep_io_types`: fp16 logits, fp16 `past_key_values` / `present`) become float32 ones with a
/// `Cast` inside, since the engine feeds and keeps its cache in f32. f16 → f32 → f16 is exact,
/// so the graph still computes in f16 and its cache still holds f16 values.
#[inline(never)]
fn widen_f16_interface(graph: &mut pb::GraphProto) {
    use pb::type_proto::Value;
    let f16 = |v: &pb::ValueInfoProto| matches!(&v.r#type, Some(pb::TypeProto { value: Some(Value::TensorType(t)), .. }) if t.elem_type == DataType::Float16 as i32);
    let set_f32 = |v: &mut pb::ValueInfoProto| {
        if let Some(pb::TypeProto { value: Some(Value::TensorType(t)), .. }) = &mut v.r#type {
            t.elem_type = DataType::Float as i32;
        }
    };
    let cast = |from: &str, to: &str, dt: DataType| NodeProto {
        op_type: "Cast".into(),
        name: format!("{to}.edge_llm_cast"),
        input: vec![from.into()],
        output: vec![to.into()],
        attribute: vec![attr_i("to", dt as i64)],
        ..Default::default()
    };
    let initializers: std::collections::HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    let mut front = Vec::new();
    for input in graph.input.iter_mut().filter(|i| f16(i) && !initializers.contains(&i.name)) {
        let inner = format!("{}.f16", input.name);
        for n in &mut graph.node {
            n.input.iter_mut().filter(|s| **s == input.name).for_each(|s| *s = inner.clone());
        }
        front.push(cast(&input.name, &inner, DataType::Float16));
        set_f32(input);
    }
    for output in graph.output.iter_mut().filter(|o| f16(o)) {
        let inner = format!("{}.f16", output.name);
        for n in &mut graph.node {
            n.input.iter_mut().chain(n.output.iter_mut()).filter(|s| **s == output.name).for_each(|s| *s = inner.clone());
        }
        graph.node.push(cast(&inner, &output.name, DataType::Float));
        set_f32(output);
    }
    graph.node.splice(0..0, front);
}

/// A `DequantizeLinear` of a 4-bit constant (opset 21 `INT4` / `UINT4`, what
/// `MatMulNBitsQuantizer` writes in QDQ mode). tract has no 4-bit element type, so:
/// - feeding only `MatMul` weights (2-D, blocks along K, f32 scales): each `MatMul` becomes
///   the `MatMulNBits` node that computes the same product — `(q - z) * s` per block — so the
///   weight stays 4-bit in memory and runs on the int4 kernels, with the int8 activations
///   onnxruntime uses for this pattern;
/// - anything else: the constant is dequantized here, exactly as the op defines it.
///
/// Returns whether a `MatMulNBits` node was written.
#[inline(never)]
fn rewrite_int4_dequantize(graph: &mut pb::GraphProto) -> Result<bool> {
    let mut wrote_nbits = false;
    let mut i = 0;
    while i < graph.node.len() {
        let node = &graph.node[i];
        let is_int4 = node.op_type == "DequantizeLinear"
            && node.domain.is_empty()
            && node.input.first().and_then(|x| init(graph, x)).is_some_and(|t| int4_kind(t.data_type).is_some());
        if !is_int4 {
            i += 1;
            continue;
        }
        let dq = graph.node.remove(i);
        let q = Int4Const::read(graph, &dq)?;
        let Some(out) = dq.output.first() else {
            return Err(Error::InvalidModel(format!("DequantizeLinear `{}` has no output", dq.name)));
        };
        let consumers: Vec<usize> = (0..graph.node.len()).filter(|&j| graph.node[j].input.iter().any(|s| s == out)).collect();
        let only_matmul_weight = !consumers.is_empty()
            && consumers.iter().all(|&j| {
                let n = &graph.node[j];
                n.op_type == "MatMul" && n.domain.is_empty() && n.input.len() == 2 && n.input[1] == *out && n.input[0] != *out
            })
            && !graph.output.iter().any(|o| o.name == *out);
        if only_matmul_weight && q.dims.len() == 2 && q.axis == 0 && q.block >= 16 && q.block.is_power_of_two() && q.scale_dt == DataType::Float {
            let names = q.push_matmul_nbits(graph, out);
            for j in consumers {
                let mm = &mut graph.node[j];
                let a = mm.input[0].clone();
                mm.op_type = "MatMulNBits".into();
                mm.domain = MS_DOMAIN.into();
                mm.input = [a].into_iter().chain(names.iter().cloned()).collect();
                mm.attribute = vec![
                    attr_i("K", q.dims[0] as i64),
                    attr_i("N", q.dims[1] as i64),
                    attr_i("bits", 4),
                    attr_i("block_size", q.block as i64),
                    // onnxruntime fuses this same pair into MatMulNBits at accuracy level 4
                    // (its `session.qdq_matmulnbits_accuracy_level` default): int8 activations.
                    attr_i("accuracy_level", ACCURACY_LEVEL_INT8),
                ];
            }
            wrote_nbits = true;
        } else {
            let values = q.dequantize();
            let raw = match q.scale_dt {
                DataType::Float16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            graph.initializer.push(TensorProto {
                name: out.clone(),
                data_type: q.scale_dt as i32,
                dims: q.dims.iter().map(|&d| d as i64).collect(),
                raw_data: raw,
                ..Default::default()
            });
        }
        // The 4-bit constants themselves are no longer read by any node.
        let used: std::collections::HashSet<&String> = graph.node.iter().flat_map(|n| &n.input).collect();
        let drop: Vec<String> = dq.input.iter().filter(|s| !s.is_empty() && !used.contains(s)).cloned().collect();
        graph.initializer.retain(|t| !drop.contains(&t.name));
    }
    Ok(wrote_nbits)
}

/// `Some(signed)` for the ONNX 4-bit element types.
fn int4_kind(data_type: i32) -> Option<bool> {
    match DataType::try_from(data_type).ok()? {
        DataType::Int4 => Some(true),
        DataType::Uint4 => Some(false),
        _ => None,
    }
}

fn init<'g>(graph: &'g pb::GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

/// A 4-bit constant and its dequantization parameters, unpacked to one value per byte.
struct Int4Const {
    dims: Vec<usize>,
    /// `q` as stored (signed for `INT4`), row-major over `dims`.
    q: Vec<i8>,
    /// `INT4` (else `UINT4`).
    signed: bool,
    axis: usize,
    /// Block length along `axis`; 0: one scale per index of `axis` (or one in all).
    block: usize,
    scales: Vec<f32>,
    scale_dt: DataType,
    /// Same layout as `scales`; `None`: 0.
    zero_points: Option<Vec<i8>>,
}

impl Int4Const {
    fn read(graph: &pb::GraphProto, dq: &NodeProto) -> Result<Self> {
        let bad = |why: String| Error::InvalidModel(format!("DequantizeLinear `{}`: {why}", dq.name));
        let x = init(graph, &dq.input[0]).ok_or_else(|| bad("input is not a constant".into()))?;
        let signed = int4_kind(x.data_type).expect("checked by the caller");
        let dims: Vec<usize> = x.dims.iter().map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))).collect::<Result<_>>()?;
        let len: usize = dims.iter().product();
        let q = unpack_nibbles(x, len, signed).ok_or_else(|| bad(format!("`{}` does not hold {len} 4-bit values as raw data", x.name)))?;
        let attr = |name: &str| dq.attribute.iter().find(|a| a.name == name).map(|a| a.i);
        let rank = dims.len() as i64;
        let axis = attr("axis").unwrap_or(1);
        let axis = if axis < 0 { axis + rank } else { axis };
        let block = attr("block_size").unwrap_or(0);
        let scale_name = dq.input.get(1).ok_or_else(|| bad("no scale".into()))?;
        let scale = init(graph, scale_name).ok_or_else(|| bad("scale is not a constant".into()))?;
        let scale_dt = DataType::try_from(scale.data_type).map_err(|_| bad("unknown scale type".into()))?;
        let scales = float_values(scale).ok_or_else(|| bad("scale must be float or float16 raw data".into()))?;
        // Expected scale count: one, one per index of `axis`, or one per block along it.
        let per_axis = scales.len() > 1 || block > 0;
        if per_axis && !(0..rank).contains(&axis) {
            return Err(bad(format!("axis {axis} out of range for rank {rank}")));
        }
        let axis = axis.clamp(0, rank.max(1) - 1) as usize;
        let block = usize::try_from(block).map_err(|_| bad(format!("negative block_size {block}")))?;
        let expected = match (per_axis, block) {
            (false, _) => 1,
            (true, 0) => dims[axis],
            (true, b) => len / dims[axis] * dims[axis].div_ceil(b),
        };
        if scales.len() != expected {
            return Err(bad(format!("{} scales, expected {expected}", scales.len())));
        }
        let zero_points = match dq.input.get(2).filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => {
                let z = init(graph, name).ok_or_else(|| bad("zero point is not a constant".into()))?;
                if int4_kind(z.data_type) != Some(signed) {
                    return Err(bad("zero point type differs from the input's".into()));
                }
                Some(unpack_nibbles(z, expected, signed).ok_or_else(|| bad("zero point does not match the scale's shape".into()))?)
            }
        };
        Ok(Int4Const { dims, q, signed, axis, block: if per_axis { block } else { 0 }, scales, scale_dt, zero_points })
    }

    /// Index into `scales` of element `flat`.
    fn scale_index(&self, flat: usize) -> usize {
        if self.scales.len() == 1 {
            return 0;
        }
        let inner: usize = self.dims[self.axis + 1..].iter().product();
        let (d, c, rest) = (self.dims[self.axis], flat / inner % self.dims[self.axis], flat % inner);
        match self.block {
            0 => c,
            b => (flat / (inner * d) * d.div_ceil(b) + c / b) * inner + rest,
        }
    }

    /// The `DequantizeLinear` output: `(q - z) * s`, computed in f32 as onnxruntime does.
    fn dequantize(&self) -> Vec<f32> {
        (0..self.q.len())
            .map(|i| {
                let s = self.scale_index(i);
                let z = self.zero_points.as_ref().map_or(0, |z| z[s]);
                (self.q[i] as i32 - z as i32) as f32 * self.scales[s]
            })
            .collect()
    }

    /// `MatMulNBits` initializers for this `[K, N]` weight (blocks along K): B `[N][nb][bs/2]`
    /// (unsigned nibbles: a signed `INT4` value `v` is stored as `v + 8` with its zero point
    /// shifted alike), scales `[N * nb]`, zero points `[N][ceil(nb / 2)]` unless they are all the
    /// op's default 8. Returns the input names after A.
    fn push_matmul_nbits(&self, graph: &mut pb::GraphProto, prefix: &str) -> Vec<String> {
        let (k, n, bs) = (self.dims[0], self.dims[1], self.block);
        let nb = k.div_ceil(bs);
        let shift = |v: i8| (v as i32 + if self.signed { 8 } else { 0 }) as u8;
        let zp = |b: usize, col: usize| self.zero_points.as_ref().map_or(shift(0), |z| shift(z[b * n + col]));
        let mut packed = vec![0u8; n * nb * bs / 2];
        let mut scales = vec![0f32; n * nb];
        for col in 0..n {
            for b in 0..nb {
                scales[col * nb + b] = self.scales[b * n + col];
                for j in 0..bs {
                    let kk = b * bs + j;
                    // Past K the value dequantizes to 0 (its activation does not exist anyway).
                    let v = if kk < k { shift(self.q[kk * n + col]) } else { zp(b, col) };
                    packed[(col * nb + b) * bs / 2 + j / 2] |= v << (4 * (j % 2));
                }
            }
        }
        let name = |what: &str| format!("{prefix}.{what}");
        let mut inputs = vec![name("nbits_B"), name("nbits_scales")];
        graph.initializer.push(raw_tensor(&inputs[0], DataType::Uint8, &[n, nb, bs / 2], packed));
        graph.initializer.push(raw_tensor(&inputs[1], DataType::Float, &[n * nb], scales.iter().flat_map(|v| v.to_le_bytes()).collect()));
        let all_default = (0..n).all(|c| (0..nb).all(|b| zp(b, c) == 8));
        if !all_default {
            let zb = nb.div_ceil(2);
            let mut z = vec![0u8; n * zb];
            for col in 0..n {
                for b in 0..nb {
                    z[col * zb + b / 2] |= zp(b, col) << (4 * (b % 2));
                }
            }
            inputs.push(name("nbits_zero_points"));
            graph.initializer.push(raw_tensor(&inputs[2], DataType::Uint8, &[n * zb], z));
        }
        inputs
    }

}

fn raw_tensor(name: &str, dt: DataType, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto { name: name.into(), data_type: dt as i32, dims: dims.iter().map(|&d| d as i64).collect(), raw_data: raw, ..Default::default() }
}

/// The first `len` 4-bit values of `t` (two per byte, element `2i` in the low nibble), sign
/// extended when `signed`; `None` when its raw data is too short.
fn unpack_nibbles(t: &TensorProto, len: usize, signed: bool) -> Option<Vec<i8>> {
    let raw = &t.raw_data;
    if raw.len() < len.div_ceil(2) {
        return None;
    }
    Some(
        (0..len)
            .map(|i| {
                let nib = (raw[i / 2] >> (4 * (i % 2))) & 0x0f;
                if signed { ((nib << 4) as i8) >> 4 } else { nib as i8 }
            })
            .collect(),
    )
}


/// Values of an integer tensor (int32 or int64, raw data or the typed fields).
fn int_values(t: &TensorProto) -> Option<Vec<i64>> {
    match DataType::try_from(t.data_type).ok()? {
        DataType::Int32 if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect())
        }
        DataType::Int32 => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        DataType::Int64 if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
        }
        DataType::Int64 => Some(t.int64_data.clone()),
        _ => None,
    }
}

/// `MatMulNBits`' optional `g_idx` (input 4) maps each of the K rows to its scale block
/// (act-order GPTQ exports). Where it is the plain `k / block_size` it says nothing and is
/// dropped; any other order is refused by name (the kernels keep blocks contiguous).
#[inline(never)]
fn check_g_idx(graph: &mut pb::GraphProto) -> Result<()> {
    for i in 0..graph.node.len() {
        let node = &graph.node[i];
        if node.op_type != "MatMulNBits" || node.input.get(4).is_none_or(|s| s.is_empty()) {
            continue;
        }
        let attr = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
        let (k, bs) = (attr("K").unwrap_or(0), attr("block_size").unwrap_or(0));
        let trivial = bs > 0
            && init(graph, &node.input[4]).and_then(int_values).is_some_and(|g| g.len() as i64 == k && g.iter().enumerate().all(|(j, &v)| v == j as i64 / bs));
        if !trivial {
            return Err(Error::UnsupportedOp { op: "MatMulNBits with g_idx (act-order row permutation)".into(), node: node.name.clone() });
        }
        graph.node[i].input[4] = String::new();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{reference::dequantize_q4, Q4Weight};

    /// A graph `y = MatMul(x, DequantizeLinear(q, s, z))` with a `[k, n]` 4-bit weight in
    /// blocks of `bs` along k, as `MatMulNBitsQuantizer` writes it in QDQ mode.
    fn qdq_graph(k: usize, n: usize, bs: usize, signed: bool, consumer: &str) -> pb::GraphProto {
        let nb = k.div_ceil(bs);
        let nib = |i: usize| (i * 7 + i / 5) as u8 & 0x0f;
        let pack = |len: usize, f: &dyn Fn(usize) -> u8| (0..len.div_ceil(2)).map(|b| f(2 * b) | f(2 * b + 1) << 4).collect::<Vec<u8>>();
        let dt = if signed { DataType::Int4 } else { DataType::Uint4 };
        let scales: Vec<f32> = (0..nb * n).map(|i| 0.01 + i as f32 * 0.003).collect();
        let node = |op: &str, inputs: &[&str], out: &str, attrs: Vec<pb::AttributeProto>| NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: attrs,
            ..Default::default()
        };
        pb::GraphProto {
            node: vec![
                node("DequantizeLinear", &["q", "s", "z"], "w", vec![attr_i("axis", 0), attr_i("block_size", bs as i64)]),
                node(consumer, &["x", "w"], "y", vec![]),
            ],
            initializer: vec![
                raw_tensor("q", dt, &[k, n], pack(k * n, &|i| if i < k * n { nib(i) } else { 0 })),
                raw_tensor("s", DataType::Float, &[nb, n], scales.iter().flat_map(|v| v.to_le_bytes()).collect()),
                raw_tensor("z", dt, &[nb, n], pack(nb * n, &|i| if i < nb * n { (i as u8 * 3 + 1) & 0x0f } else { 0 })),
            ],
            ..Default::default()
        }
    }

    /// The weight `DequantizeLinear` computes, `[k][n]` row-major.
    fn dequantized(graph: &pb::GraphProto) -> Vec<f32> {
        let dq = graph.node.iter().find(|n| n.op_type == "DequantizeLinear").unwrap();
        Int4Const::read(graph, dq).unwrap().dequantize()
    }

    #[test]
    fn dequantize_then_matmul_becomes_matmul_nbits_with_the_same_weight() {
        // Odd block counts, a padded last block, signed and unsigned storage.
        for (k, n, bs, signed) in [(96, 5, 32, true), (96, 5, 32, false), (160, 3, 128, false), (64, 2, 16, true)] {
            let mut g = qdq_graph(k, n, bs, signed, "MatMul");
            let want = dequantized(&g);
            assert!(rewrite_int4_dequantize(&mut g).unwrap());
            assert_eq!(g.node.len(), 1);
            let mm = &g.node[0];
            assert_eq!((mm.op_type.as_str(), mm.domain.as_str()), ("MatMulNBits", MS_DOMAIN));
            let get = |name: &str| g.initializer.iter().find(|t| t.name == name).unwrap();
            let nb = k.div_ceil(bs);
            let zero_points = mm.input.get(3).map(|z| Q4Weight::unpack_zero_points(&get(z).raw_data, n, nb));
            let w = Q4Weight {
                n,
                k,
                block_size: bs,
                packed: get(&mm.input[1]).raw_data.clone(),
                scales: float_values(get(&mm.input[2])).unwrap(),
                zero_points,
            };
            let got = dequantize_q4(&w);
            for kk in 0..k {
                for c in 0..n {
                    assert_eq!(got[c * k + kk], want[kk * n + c], "k={k} n={n} bs={bs} signed={signed} at [{kk}][{c}]");
                }
            }
            assert!(!g.initializer.iter().any(|t| int4_kind(t.data_type).is_some()), "4-bit constants remain");
        }
    }

    #[test]
    fn dequantize_feeding_another_op_becomes_its_float_constant() {
        let mut g = qdq_graph(64, 3, 32, false, "Gather");
        let want = dequantized(&g);
        assert!(!rewrite_int4_dequantize(&mut g).unwrap());
        assert_eq!(g.node.len(), 1);
        let w = g.initializer.iter().find(|t| t.name == "w").unwrap();
        assert_eq!(w.dims, [64, 3]);
        assert_eq!(float_values(w).unwrap(), want);
    }
}
