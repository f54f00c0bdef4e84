//! `quantize`: rewrite an fp32/fp16 ONNX graph (ours, or an optimum export) so its weight
//! matmuls run in int8 (`DynamicQuantizeLinear` + `MatMulInteger`), int4 (`MatMulNBits`) or
//! fp16, with per-tensor overrides for mixed precision.
//!
//! A `MatMul` is rewritten when its B is a 2-D float initializer `[K, N]`, or the transpose of
//! one `[N, K]` (a tied lm_head exported as `MatMul(x, Transpose(embedding))`). With int4, a
//! token embedding (`Gather` on a 2-D float table) becomes an int4 table gathered and
//! dequantized in-graph, and a head tied to it uses that same tensor.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{GraphProto, NodeProto, OperatorSetIdProto, TensorProto};

use crate::llama::onnx_export::{Ctx, ExportOptions, Int8Format, KvLayout};
use crate::onnx::{GraphBuilder, ModelProto, MS_DOMAIN};
use crate::quant::Precision;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Precision of every weight matmul not matched by an override.
    pub precision: Precision,
    pub block_size: usize,
    pub symmetric: bool,
    pub int8_format: Int8Format,
    /// int4 scales by error search instead of round-to-nearest.
    pub q4_search: bool,
    /// int4 with float zero points (see `ExportOptions::q4_min`).
    pub q4_min: bool,
    /// Scales stored as fp16 (see `ExportOptions::f16_scales`).
    pub f16_scales: bool,
    /// 8-bit block layers compute on activations rounded to int8 blocks (`accuracy_level = 4`)
    /// instead of float ones (see [`ExportOptions::packer_activations`]).
    pub int8_activations: bool,
    /// int4 (searched scales or float zero points): mean squared activation per input channel
    /// by linear name (the weight's name without `.weight`), from
    /// `calibrate::importance` (feature `pack`), weighting each block's error; a linear without an
    /// entry is unweighted.
    pub importance: Option<std::sync::Arc<std::collections::BTreeMap<String, Vec<f32>>>>,
    /// `(pattern, precision)`: the first pattern contained in a matmul's node or weight name
    /// decides its precision (the seed's mixed precision: e.g. keep `lm_head` at int8).
    pub overrides: Vec<(String, Precision)>,
}

impl Default for QuantizeOptions {
    /// int4, symmetric blocks of 32 by round-to-nearest, int8 in blocks of 32 on float
    /// activations, no overrides.
    fn default() -> Self {
        QuantizeOptions {
            precision: Precision::Int4,
            block_size: 32,
            symmetric: true,
            int8_format: Int8Format::Block32,
            q4_search: false,
            q4_min: false,
            f16_scales: false,
            int8_activations: false,
            importance: None,
            overrides: vec![],
        }
    }
}

/// What was rewritten, for the CLI and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QuantizeReport {
    /// `(weight name, precision)` of every rewritten matmul.
    pub rewritten: Vec<(String, Precision)>,
    /// Matmuls left alone (B not a constant 2-D float tensor, or fp32 asked for).
    pub kept: usize,
}

fn float_data(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return None;
    }
    crate::onnx::float_values(t)
}

/// The weight behind a MatMul's B as `([n][k] values, n, k, name)`.
fn weight_of(
    b: &str,
    inits: &HashMap<String, usize>,
    graph: &GraphProto,
    producers: &HashMap<String, NodeProto>,
) -> Option<(Vec<f32>, usize, usize, String)> {
    let dims2 = |t: &TensorProto| (t.dims.len() == 2).then(|| (t.dims[0] as usize, t.dims[1] as usize));
    if let Some(&i) = inits.get(b) {
        let t = &graph.initializer[i];
        let (k, n) = dims2(t)?;
        let w = float_data(t)?;
        let mut nk = vec![0f32; n * k];
        for r in 0..k {
            for c in 0..n {
                nk[c * k + r] = w[r * n + c];
            }
        }
        return Some((nk, n, k, t.name.clone()));
    }
    let tr = producers.get(b).filter(|p| p.op_type == "Transpose" && p.domain.is_empty())?;
    let perm_ok = tr.attribute.iter().find(|a| a.name == "perm").is_none_or(|a| a.ints == [1, 0]);
    let t = &graph.initializer[*inits.get(tr.input.first()?)?];
    let (n, k) = dims2(t)?;
    if !perm_ok {
        return None;
    }
    Some((float_data(t)?, n, k, t.name.clone()))
}

/// The precision a node's weight gets: the first override whose pattern is in the node's or
/// the weight's name, else the default.
fn pick(opts: &QuantizeOptions, node: &NodeProto, wname: &str) -> Precision {
    opts.overrides
        .iter()
        .find(|(pat, _)| node.name.contains(pat.as_str()) || wname.contains(pat.as_str()))
        .map_or(opts.precision, |(_, p)| *p)
}

/// A token-embedding lookup: `Gather(table [V, H] float initializer, ids, axis = 0)`.
/// Returns `(ids, table values, V, H, table name)`.
fn embedding_of(node: &NodeProto, inits: &HashMap<String, usize>, graph: &GraphProto) -> Option<(String, Vec<f32>, usize, usize, String)> {
    if node.op_type != "Gather" || !node.domain.is_empty() || node.input.len() != 2 {
        return None;
    }
    let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(0, |a| a.i);
    let t = &graph.initializer[*inits.get(&node.input[0])?];
    if axis != 0 || t.dims.len() != 2 {
        return None;
    }
    let (v, h) = (t.dims[0] as usize, t.dims[1] as usize);
    Some((node.input[1].clone(), float_data(t)?, v, h, t.name.clone()))
}

/// Rewrite `model`'s weight matmuls. Deterministic: same input and options, same bytes.
pub fn quantize(mut model: ModelProto, opts: &QuantizeOptions) -> Result<(ModelProto, QuantizeReport)> {
    if opts.precision == Precision::Int4 && !(opts.block_size >= 16 && opts.block_size.is_power_of_two()) {
        return Err(Error::InvalidOption { option: "block_size", reason: "must be a power of two >= 16".into() });
    }
    let graph = model.graph.take().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let inits: HashMap<String, usize> = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let producers: HashMap<String, NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.clone()))).collect();
    let source = graph.clone();
    let (g, nodes) = GraphBuilder::from_graph(graph);
    let (int8_activations, head_int8_activations) = ExportOptions::packer_activations(opts.precision, opts.int8_format, opts.int8_activations);
    let export_opts = ExportOptions {
        linear: opts.precision,
        lm_head: opts.precision,
        embedding: Precision::F32,
        block_size: opts.block_size,
        symmetric: opts.symmetric,
        layout: KvLayout::Optimum,
        int8_format: opts.int8_format,
        q4_search: opts.q4_search,
        q4_min: opts.q4_min,
        importance: opts.importance.clone(),
        // `pick` applies the overrides here, by node and weight name.
        overrides: Vec::new(),
        int8_activations,
        f16_scales: opts.f16_scales,
        head_int8_activations,
    };
    let mut cx = Ctx::new(g, &export_opts);
    let mut report = QuantizeReport::default();
    // int4 embedding tables by initializer name: a tied head reuses the same tensor.
    let mut shared_q4: HashMap<String, (String, String, Option<String>)> = HashMap::new();
    for node in nodes {
        if let Some((ids, w, v, h, wname)) = embedding_of(&node, &inits, &source) {
            if opts.precision == Precision::Int4 && pick(opts, &node, &wname) == Precision::Int4 {
                let base = wname.strip_suffix(".weight").unwrap_or(&wname).to_string();
                let q = cx.quantize_q4(&base, &w, v, h);
                let init = cx.q4_initializers(&base, &q);
                let out = cx.gather_q4(&ids, &init, v, h);
                cx.g.alias(&out, &node.output[0]);
                shared_q4.insert(wname.clone(), init);
                report.rewritten.push((wname, Precision::Int4));
                continue;
            }
        }
        let is_matmul = node.op_type == "MatMul" && node.domain.is_empty() && node.input.len() == 2;
        let found = is_matmul.then(|| weight_of(&node.input[1], &inits, &source, &producers)).flatten();
        let Some((w, n, k, wname)) = found else {
            report.kept += is_matmul as usize;
            cx.g.push_node(node);
            continue;
        };
        let precision = pick(opts, &node, &wname);
        if let (Precision::Int4, Some(init)) = (precision, shared_q4.get(&wname)) {
            // The head tied to an int4 embedding: same tensor, no second copy.
            let init = init.clone();
            let out = cx.matmul_nbits(&node.input[0], &init, n, k);
            cx.g.alias(&out, &node.output[0]);
            report.rewritten.push((wname, precision));
            continue;
        }
        if precision == Precision::F32 {
            report.kept += 1;
            cx.g.push_node(node);
            continue;
        }
        let base = wname.strip_suffix(".weight").unwrap_or(&wname).to_string();
        let (out, _) = cx.linear(&node.input[0], &base, &w, n, k, precision);
        cx.g.alias(&out, &node.output[0]);
        report.rewritten.push((wname, precision));
    }
    let (mut graph, uses_ms) = cx.g.into_graph();
    prune(&mut graph);
    if uses_ms && !model.opset_import.iter().any(|o| o.domain == MS_DOMAIN) {
        model.opset_import.push(OperatorSetIdProto { domain: MS_DOMAIN.into(), version: 1 });
    }
    model.graph = Some(graph);
    Ok((model, report))
}

/// Drop nodes whose outputs nobody reads and initializers no node reads.
fn prune(graph: &mut GraphProto) {
    loop {
        let used: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(graph.output.iter().map(|o| o.name.as_str()))
            .collect();
        let keep: Vec<bool> = graph.node.iter().map(|n| n.output.iter().any(|o| used.contains(o.as_str()))).collect();
        if keep.iter().all(|k| *k) {
            let used: HashSet<String> = used.into_iter().map(str::to_string).collect();
            graph.initializer.retain(|t| used.contains(&t.name));
            return;
        }
        let mut it = keep.into_iter();
        graph.node.retain(|_| it.next().unwrap_or(true));
    }
}
