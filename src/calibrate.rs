//! Activation statistics for calibrated quantization (packer only).
//!
//! Runs an fp32 graph (a decoder in the exporter's HF/optimum layout, or a BERT-style encoder)
//! over samples of a calibration text with tract and records, for every weight matmul, the mean square of each input channel
//! over all sample tokens: llama.cpp's "importance matrix", the statistic AWQ ranks channels by.
//! [`crate::quant::reference::quantize_q4_search`] weights each block's error by it, so the
//! channels that carry large activations get the finer rounding.
//!
//! The graph gets the input of each weight matmul as an extra output (one per distinct tensor:
//! q/k/v share theirs), and every sample runs as its own sequence from an empty cache.

use std::collections::{BTreeMap, HashMap};

use tract_onnx::pb::ValueInfoProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::onnx::ModelProto;
use crate::{Error, Result};

fn err(e: impl std::fmt::Display) -> Error {
    Error::Inference(format!("calibration: {e:#}"))
}

/// Mean squared activation per input channel, by linear name (the weight's name without
/// `.weight`; a head tied to the embedding as `MatMul(x, Transpose(embedding))` is listed
/// under the embedding's name).
pub type Importance = BTreeMap<String, Vec<f32>>;

/// `(matmul input tensor, linear name)` of every MatMul whose B is a 2-D initializer or the
/// transpose of one.
fn weight_matmuls(model: &ModelProto) -> Vec<(String, String)> {
    let Some(g) = model.graph.as_ref() else { return Vec::new() };
    let inits: HashMap<&str, usize> = g.initializer.iter().map(|t| (t.name.as_str(), t.dims.len())).collect();
    let transposed: HashMap<&str, &str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Transpose" && n.input.len() == 1 && inits.get(n.input[0].as_str()) == Some(&2))
        .map(|n| (n.output[0].as_str(), n.input[0].as_str()))
        .collect();
    g.node
        .iter()
        .filter(|n| n.op_type == "MatMul" && n.domain.is_empty() && n.input.len() == 2)
        .filter_map(|n| {
            let b = n.input[1].as_str();
            let w = if inits.get(b) == Some(&2) { b } else { *transposed.get(b)? };
            Some((n.input[0].clone(), w.strip_suffix(".weight").unwrap_or(w).to_string()))
        })
        .collect()
}

/// Run `samples` (token windows, each from an empty cache, or an encoder's sentences) through
/// the fp32 graph `model` and return the importance of every weight matmul's input channels.
pub fn importance(model: &ModelProto, samples: &[Vec<u32>], mut progress: impl FnMut(usize)) -> Result<Importance> {
    let matmuls = weight_matmuls(model);
    if matmuls.is_empty() {
        return Err(Error::InvalidModel("calibration: the graph has no fp32 weight matmul".into()));
    }
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let mut tapped: Vec<String> = Vec::new();
    for (x, _) in &matmuls {
        if !tapped.contains(x) {
            tapped.push(x.clone());
        }
    }
    let first_tap = graph.output.len();
    for x in &tapped {
        graph.output.push(ValueInfoProto { name: x.clone(), ..Default::default() });
    }
    let mut m = tract_onnx::onnx().model_for_proto_model(&probe).map_err(err)?;
    let s = m.symbols.sym("S");
    let names: Vec<String> = m.inputs.iter().map(|o| m.node(o.node).name.clone()).collect();
    for (ix, name) in names.iter().enumerate() {
        let fact = if name.starts_with("past_key_values.") {
            let declared = m.input_fact(ix).map_err(err)?;
            let dim = |d: usize| declared.shape.dim(d).and_then(|f| f.concretize()).and_then(|t| t.to_usize().ok());
            let (Some(kvh), Some(hd)) = (dim(1), dim(3)) else {
                return Err(Error::InvalidModel(format!("calibration: `{name}` must declare kv-head and head-dim sizes")));
            };
            InferenceFact::dt_shape(f32::datum_type(), tvec![1.to_dim(), kvh.to_dim(), 0.to_dim(), hd.to_dim()])
        } else {
            InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), s.to_dim()])
        };
        m.set_input_fact(ix, fact).map_err(err)?;
    }
    let plan = m.into_optimized().map_err(err)?.into_runnable().map_err(err)?;
    let mut sums: Vec<Vec<f64>> = vec![Vec::new(); tapped.len()];
    let mut count = 0usize;
    for (i, ids) in samples.iter().enumerate() {
        let n = ids.len();
        let mut inputs: TVec<TValue> = tvec![];
        for name in &names {
            let t: Tensor = match name.as_str() {
                "input_ids" => Tensor::from_shape(&[1, n], &ids.iter().map(|t| *t as i64).collect::<Vec<_>>()).map_err(err)?,
                "attention_mask" => Tensor::from_shape(&[1, n], &vec![1i64; n]).map_err(err)?,
                "position_ids" => Tensor::from_shape(&[1, n], &(0..n as i64).collect::<Vec<_>>()).map_err(err)?,
                // An encoder's single segment (BERT: every token in sentence A).
                "token_type_ids" => Tensor::from_shape(&[1, n], &vec![0i64; n]).map_err(err)?,
                _ if name.starts_with("past_key_values.") => {
                    let fact = plan.model().input_fact(inputs.len()).map_err(err)?;
                    let shape: Vec<usize> = fact.shape.iter().map(|d| d.to_usize().unwrap_or(0)).collect();
                    Tensor::zero::<f32>(&shape).map_err(err)?
                }
                _ => return Err(Error::InvalidModel(format!("calibration: no value to feed the graph input `{name}`"))),
            };
            inputs.push(t.into());
        }
        let out = plan.run(inputs).map_err(err)?;
        for (j, sum) in sums.iter_mut().enumerate() {
            let x = out[first_tap + j].to_plain_array_view::<f32>().map_err(err)?;
            let k = *x.shape().last().unwrap_or(&0);
            if sum.is_empty() {
                sum.resize(k, 0.0);
            }
            for row in x.as_slice().ok_or_else(|| err("activation not contiguous"))?.chunks_exact(k) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += (*v as f64) * (*v as f64);
                }
            }
        }
        count += n;
        progress(i + 1);
    }
    let mean: HashMap<&str, Vec<f32>> =
        tapped.iter().zip(&sums).map(|(x, s)| (x.as_str(), s.iter().map(|v| (v / count.max(1) as f64) as f32).collect())).collect();
    // A weight read by several matmuls (with different inputs) weighs its channels by the
    // mean of their statistics, as one matmul over all those rows would.
    let mut out: BTreeMap<String, (Vec<f32>, usize)> = BTreeMap::new();
    for (x, name) in matmuls {
        let m = &mean[x.as_str()];
        let e = out.entry(name).or_insert_with(|| (vec![0.0; m.len()], 0));
        if e.0.len() == m.len() {
            e.0.iter_mut().zip(m).for_each(|(a, b)| *a += b);
            e.1 += 1;
        }
    }
    Ok(out.into_iter().map(|(name, (s, c))| (name, s.into_iter().map(|v| v / c.max(1) as f32).collect())).collect())
}

/// An encoder's calibration samples: the first `count` sentences of `text` (20 to 300
/// characters, as `eval-encoder` takes them), each tokenized and wrapped as `[CLS] … [SEP]`
/// when the tokenizer has those tokens. Fewer than `count` sentences is an error naming both.
pub fn sentence_samples(tok: &crate::tokenizer::Tokenizer, text: &str, count: usize) -> Result<Vec<Vec<u32>>> {
    let sents = crate::eval::sentences(text, count);
    if sents.len() < count || count == 0 {
        return Err(Error::InvalidOption {
            option: "calibration text",
            reason: format!("{} sentences of 20 to 300 characters, need {count}", sents.len()),
        });
    }
    let (cls, sep) = (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"));
    sents
        .iter()
        .map(|s| Ok(cls.into_iter().chain(tok.encode(s)?).chain(sep).collect()))
        .collect()
}

/// `count` windows of `len` tokens spread evenly over `ids` (disjoint when the text is long
/// enough, overlapping otherwise).
pub fn samples(ids: &[u32], count: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    if ids.len() < len || count == 0 {
        return Err(Error::InvalidOption { option: "calibration text", reason: format!("{} tokens, need at least {len}", ids.len()) });
    }
    let stride = (ids.len() - len) as f64 / count.max(2).saturating_sub(1) as f64;
    Ok((0..count).map(|i| { let at = (i as f64 * stride) as usize; ids[at..at + len].to_vec() }).collect())
}

/// How much one linear loses at int4 and at int8, and what each costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensitivity {
    /// The exporter's name (`model.layers.3.mlp.down_proj`, `model.embed_tokens`).
    pub name: String,
    /// `sum_j imp_j sum_n (w - ŵ)^2 / sum_j imp_j sum_n w^2`: the relative energy of the output
    /// error under the calibration activations (diagonal approximation), for int4 (searched
    /// asymmetric blocks, as `import-gguf` writes it) and int8 (blocks of 32).
    pub int4_error: f64,
    pub int8_error: f64,
    /// Bytes of the weight as written (values + scales + zero points).
    pub int4_bytes: usize,
    pub int8_bytes: usize,
}

/// Every linear of a Llama decoder, by the exporter's names: `(name, [n][k] weights, n, k)`.
pub fn linears<'a>(cfg: &crate::llama::LlamaConfig, w: &'a crate::llama::LlamaWeights) -> Vec<(String, &'a [f32], usize, usize)> {
    let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    let mut out = Vec::new();
    for (l, lw) in w.layers.iter().enumerate() {
        let pre = format!("model.layers.{l}");
        out.push((format!("{pre}.self_attn.q_proj"), &lw.wq[..], q, h));
        out.push((format!("{pre}.self_attn.k_proj"), &lw.wk[..], kv, h));
        out.push((format!("{pre}.self_attn.v_proj"), &lw.wv[..], kv, h));
        out.push((format!("{pre}.self_attn.o_proj"), &lw.wo[..], h, q));
        out.push((format!("{pre}.mlp.gate_proj"), &lw.w_gate[..], i, h));
        out.push((format!("{pre}.mlp.up_proj"), &lw.w_up[..], i, h));
        out.push((format!("{pre}.mlp.down_proj"), &lw.w_down[..], h, i));
    }
    out.push(("model.embed_tokens".into(), &w.embed[..], cfg.vocab_size, h));
    if let Some(head) = &w.lm_head {
        out.push(("lm_head".into(), &head[..], cfg.vocab_size, h));
    }
    out
}

fn weighted_error(w: &[f32], d: &[f32], k: usize, imp: Option<&[f32]>) -> f64 {
    let (mut e, mut t) = (0f64, 0f64);
    for (i, (a, b)) in w.iter().zip(d).enumerate() {
        let g = imp.map_or(1.0, |m| m[i % k] as f64);
        e += g * ((a - b) as f64).powi(2);
        t += g * (*a as f64).powi(2);
    }
    e / t.max(f64::MIN_POSITIVE)
}

/// The sensitivity of every linear in `linears`, weighted by `importance` where it has the
/// linear (unweighted otherwise), most sensitive at int4 first.
pub fn sensitivity(linears: &[(String, &[f32], usize, usize)], importance: &Importance) -> Vec<Sensitivity> {
    use crate::quant::reference as q;
    let mut out: Vec<Sensitivity> = linears
        .iter()
        .map(|(name, w, n, k)| {
            let imp = importance.get(name).map(|v| v.as_slice()).filter(|v| v.len() == *k);
            let q4 = q::quantize_q4_search(w, *n, *k, 32, false, imp);
            let q8 = q::quantize_q8_block(w, *n, *k);
            Sensitivity {
                name: name.clone(),
                int4_error: weighted_error(w, &q::dequantize_q4(&q4), *k, imp),
                int8_error: weighted_error(w, &q::dequantize_q8_block(&q8), *k, imp),
                int4_bytes: q4.packed.len() + 4 * q4.scales.len() + q4.packed_zero_points().map_or(0, |z| z.len()),
                int8_bytes: q8.q.len() + 4 * q8.scales.len(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.int4_error.total_cmp(&a.int4_error));
    out
}

/// The report as markdown: each linear's relative output error at int4 and int8, and the
/// bytes keeping it at int8 adds, with the running total of those bytes.
pub fn sensitivity_markdown(rows: &[Sensitivity]) -> String {
    let mut s = String::from("| linear | int4 rel. error | int8 rel. error | int4 bytes | +bytes at int8 | cumulative + bytes |\n|---|---:|---:|---:|---:|---:|\n");
    let mut total = 0usize;
    for r in rows {
        let extra = r.int8_bytes.saturating_sub(r.int4_bytes);
        total += extra;
        s += &format!("| {} | {:.2e} | {:.2e} | {} | {} | {} |\n", r.name, r.int4_error, r.int8_error, r.int4_bytes, extra, total);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_model_gives_one_positive_vector_per_linear() {
        let cfg = crate::tiny::config();
        let model = crate::llama::onnx_export::export(&cfg, &crate::tiny::weights(), &crate::llama::onnx_export::ExportOptions::fp32()).model;
        let ids: Vec<u32> = (0..200).map(|i| (i * 7 % cfg.vocab_size) as u32).collect();
        let imp = importance(&model, &samples(&ids, 5, 16).unwrap(), |_| {}).unwrap();
        // 7 linears per layer and the tied head.
        assert_eq!(imp.len(), 7 * cfg.num_layers + 1, "{:?}", imp.keys().collect::<Vec<_>>());
        assert_eq!(imp["model.layers.0.mlp.down_proj"].len(), cfg.intermediate_size);
        assert_eq!(imp["model.embed_tokens"].len(), cfg.hidden_size);
        assert!(imp.values().all(|v| v.iter().all(|x| x.is_finite() && *x >= 0.0) && v.iter().any(|x| *x > 0.0)));
    }

    #[test]
    fn samples_are_spread_and_checked() {
        let ids: Vec<u32> = (0..100).collect();
        let s = samples(&ids, 4, 10).unwrap();
        assert_eq!(s.iter().map(|w| w[0]).collect::<Vec<_>>(), [0, 30, 60, 90]);
        assert!(samples(&ids[..5], 4, 10).is_err());
    }
}
