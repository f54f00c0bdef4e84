//! Packing: an ONNX graph + tokenizer + config in, sharded files + [`Manifest`] out.
//! Pure functions over bytes (the CLI does the file I/O), deterministic: the same input gives
//! byte-identical output.

use std::collections::BTreeMap;

use tract_onnx::pb::{tensor_shape_proto::dimension, type_proto, NodeProto, ValueInfoProto};

use crate::package::manifest::{
    model_hash_v2, sha256_hex, FileEntry, FileRole, GenerationDefaults, Manifest, QuantizationConfig,
    TensorSpec, FORMAT_VERSION,
};
use crate::model::ModelConfig;
use crate::package::shards::shard_weights;
use crate::onnx::{ModelProto, OnnxType};
use crate::{Error, Result};

pub struct PackOptions {
    pub shard_bytes: u64,
    pub model_version: String,
    pub generation: GenerationDefaults,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            shard_bytes: crate::package::manifest::DEFAULT_SHARD_BYTES,
            model_version: "1.0.0".into(),
            generation: GenerationDefaults::default(),
        }
    }
}

fn dtype_name(t: i32) -> String {
    OnnxType::try_from(t).map(|d| d.as_str_name().to_ascii_lowercase()).unwrap_or_else(|_| format!("onnx-type-{t}"))
}

fn spec(v: &ValueInfoProto) -> TensorSpec {
    let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => (
            dtype_name(t.elem_type),
            t.shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(dimension::Value::DimValue(n)) => serde_json::json!(n),
                            Some(dimension::Value::DimParam(p)) => serde_json::json!(p),
                            None => serde_json::Value::Null,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ("unknown".into(), vec![]),
    };
    TensorSpec { name: v.name.clone(), dtype, shape }
}

/// Describe how the graph's weights are stored, from its initializers and quantized ops.
pub fn quantization_of(model: &ModelProto) -> QuantizationConfig {
    let graph = model.graph.as_ref();
    let nodes = graph.map(|g| g.node.as_slice()).unwrap_or_default();
    let mut tensors = BTreeMap::new();
    let nbits = |n: &NodeProto| n.attribute.iter().find(|a| a.name == "bits").map_or(4, |a| a.i);
    for n in nodes.iter().filter(|n| n.op_type == "MatMulNBits") {
        if let Some(b) = n.input.get(1) {
            tensors.insert(b.clone(), format!("int{}", nbits(n)));
        }
    }
    for t in graph.map(|g| g.initializer.as_slice()).unwrap_or_default() {
        if t.dims.len() >= 2 {
            tensors.entry(t.name.clone()).or_insert_with(|| dtype_name(t.data_type));
        }
    }
    let attr = |op: &str, name: &str| {
        nodes.iter().find(|n| n.op_type == op).and_then(|n| n.attribute.iter().find(|a| a.name == name)).map(|a| a.i)
    };
    if let Some(bs) = attr("MatMulNBits", "block_size") {
        let symmetric = !nodes.iter().any(|n| n.op_type == "MatMulNBits" && n.input.get(3).is_some_and(|z| !z.is_empty()));
        // The fewest bits any weight has (mixed precision keeps some at 8).
        let bits = nodes.iter().filter(|n| n.op_type == "MatMulNBits").map(nbits).min().unwrap_or(4) as u32;
        QuantizationConfig { method: format!("rtn-int{bits}-blockwise"), bits, block_size: Some(bs as u32), symmetric: Some(symmetric), tensors }
    } else if nodes.iter().any(|n| n.op_type == "MatMulInteger") {
        QuantizationConfig { method: "rtn-int8-per-channel".into(), bits: 8, block_size: None, symmetric: Some(true), tensors }
    } else {
        let bits = if tensors.values().any(|d| d == "float16") { 16 } else { 32 };
        QuantizationConfig { method: "none".into(), bits, block_size: None, symmetric: None, tensors }
    }
}

/// Shard `onnx` and describe everything in a manifest. Returns the manifest and the files
/// (graph, weight shards, tokenizer) to write beside it.
pub fn pack(onnx: &[u8], tokenizer_json: &[u8], config: &ModelConfig, opts: &PackOptions) -> Result<(Manifest, Vec<(String, Vec<u8>)>)> {
    crate::tokenizer::Tokenizer::from_json(tokenizer_json)?;
    let mut model = crate::onnx::decode(onnx)?;
    // The loader's import fixes, applied here while the weights are still inline: the int4
    // rewrite reads 4-bit initializers' bytes, which a packed graph only has in its shards.
    // Each fix is exact and a no-op on its own output, so the loader running them again on
    // the packed graph changes nothing.
    crate::cpu::import::prepare(&mut model)?;
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let inputs = graph.input.iter().map(spec).collect();
    let outputs = graph.output.iter().map(spec).collect();
    let quantization = quantization_of(&model);
    let (graph_proto, shards) = shard_weights(model, opts.shard_bytes, "model")?;
    // Format 2 only where it is needed, so other packs stay readable by older runtimes.
    // Version 2: the hash binds config and generation, and a tensor may span shards.
    let format_version = FORMAT_VERSION;
    let graph_bytes = crate::onnx::encode(&graph_proto);
    if graph_bytes.len() as u64 > crate::package::manifest::MAX_SHARD_BYTES {
        return Err(Error::InvalidModel(format!(
            "the graph alone is {} bytes, over the {} bytes a file may hold",
            graph_bytes.len(),
            crate::package::manifest::MAX_SHARD_BYTES
        )));
    }
    let mut files: Vec<(String, FileRole, Vec<u8>)> = vec![("model.onnx".into(), FileRole::Graph, graph_bytes)];
    files.extend(shards.into_iter().map(|(n, b)| (n, FileRole::Weights, b)));
    files.push(("tokenizer.json".into(), FileRole::Tokenizer, tokenizer_json.to_vec()));
    let entries: Vec<FileEntry> = files
        .iter()
        .map(|(path, role, b)| FileEntry { path: path.clone(), role: role.clone(), bytes: b.len() as u64, sha256: sha256_hex(b) })
        .collect();
    let manifest = Manifest {
        format_version,
        model_id: config.model_id.clone(),
        model_version: opts.model_version.clone(),
        min_runtime_version: "0.1.0".into(),
        model_sha256: model_hash_v2(&entries, config, &opts.generation),
        total_bytes: entries.iter().map(|e| e.bytes).sum(),
        files: entries,
        inputs,
        outputs,
        quantization,
        config: config.clone(),
        generation: opts.generation.clone(),
    };
    manifest.validate()?;
    Ok((manifest, files.into_iter().map(|(n, _, b)| (n, b)).collect()))
}
