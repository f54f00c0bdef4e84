//! A minimal GGUF v3 writer. The importer's tests build their inputs with it (a hand-made file
//! is the only way to know exactly what an importer should read back), and it documents the
//! layout the reader expects.

use half::{bf16, f16};

use super::dequant::{quantize_q4_0, quantize_q4_1, quantize_q8_0};
use super::import::permute_rows;
use super::{err, GgmlType, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC};
use crate::llama::{LlamaConfig, LlamaWeights};
use crate::Result;

/// One tensor to write: ggml dims (innermost first), type and already-encoded bytes.
#[derive(Debug, Clone)]
pub struct WriterTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

impl WriterTensor {
    pub fn f32(name: &str, dims: &[u64], data: &[f32]) -> Self {
        WriterTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty: GgmlType::F32,
            data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Encode `data` as `ty` (F32, F16, BF16, Q8_0, Q4_0 or Q4_1).
    pub fn encode(name: &str, dims: &[u64], ty: GgmlType, data: &[f32]) -> Result<Self> {
        let (block, _) = ty.block_layout();
        if dims.first().is_none_or(|d| d % block as u64 != 0) {
            return Err(err(format!("{name}: row length is not a multiple of {ty:?}'s block {block}")));
        }
        let bytes = match ty {
            GgmlType::F32 => return Ok(Self::f32(name, dims, data)),
            GgmlType::F16 => data.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            GgmlType::BF16 => data.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
            GgmlType::Q8_0 => quantize_q8_0(data),
            GgmlType::Q4_0 => quantize_q4_0(data),
            GgmlType::Q4_1 => quantize_q4_1(data),
            other => return Err(err(format!("the writer cannot encode {other:?}"))),
        };
        Ok(WriterTensor { name: name.into(), dims: dims.to_vec(), ty, data: bytes })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(ty, items) => {
            out.extend((*ty as u32).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// Serialize a GGUF v3 file. `general.alignment` is added when `alignment` is not the default
/// and the metadata lacks it.
pub fn write_gguf(metadata: &[(String, Value)], tensors: &[WriterTensor], alignment: u64) -> Vec<u8> {
    let align = |n: u64| n.div_ceil(alignment) * alignment;
    let mut md = metadata.to_vec();
    if alignment != DEFAULT_ALIGNMENT && !md.iter().any(|(k, _)| k == "general.alignment") {
        md.push(("general.alignment".into(), Value::U32(alignment as u32)));
    }
    let mut out = Vec::new();
    out.extend(MAGIC.to_le_bytes());
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((md.len() as u64).to_le_bytes());
    for (k, v) in &md {
        put_str(&mut out, k);
        out.extend((v.value_type() as u32).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(t.ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = align(offset + t.data.len() as u64);
    }
    out.resize(align(out.len() as u64) as usize, 0);
    for t in tensors {
        out.extend(&t.data);
        out.resize(align(out.len() as u64) as usize, 0);
    }
    out
}

/// Tokenizer facts to store in a Llama GGUF (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    pub tokens: Vec<String>,
    /// `(a, b)` pairs, written as `"a b"`.
    pub merges: Vec<(String, String)>,
    pub token_types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    pub chat_template: Option<String>,
}

/// A Llama model as llama.cpp's converter writes it: `llama.*` keys, q/k rows permuted to
/// ggml's RoPE order, norms in F32 and the linear weights (and embedding) as `linear`.
pub fn write_llama_gguf(cfg: &LlamaConfig, w: &LlamaWeights, vocab: &GgufVocab, linear: GgmlType) -> Result<Vec<u8>> {
    let s = |v: &str| Value::String(v.into());
    let u = |v: usize| Value::U32(v as u32);
    let strs = |v: Vec<String>| Value::Array(ValueType::String, v.into_iter().map(Value::String).collect());
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.name".into(), s("gguf-writer test model")),
        ("llama.block_count".into(), u(cfg.num_layers)),
        ("llama.context_length".into(), u(cfg.max_position_embeddings)),
        ("llama.embedding_length".into(), u(cfg.hidden_size)),
        ("llama.feed_forward_length".into(), u(cfg.intermediate_size)),
        ("llama.attention.head_count".into(), u(cfg.num_heads)),
        ("llama.attention.head_count_kv".into(), u(cfg.num_kv_heads)),
        ("llama.rope.freq_base".into(), Value::F32(cfg.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(cfg.rms_norm_eps)),
        ("llama.rope.dimension_count".into(), u(cfg.head_dim)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        ("tokenizer.ggml.tokens".into(), strs(vocab.tokens.clone())),
        ("tokenizer.ggml.token_type".into(), Value::Array(ValueType::I32, vocab.token_types.iter().map(|t| Value::I32(*t)).collect())),
        ("tokenizer.ggml.merges".into(), strs(vocab.merges.iter().map(|(a, b)| format!("{a} {b}")).collect())),
    ];
    for (key, id) in [("bos", vocab.bos), ("eos", vocab.eos), ("padding", vocab.pad), ("unknown", vocab.unk)] {
        if let Some(id) = id {
            md.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }
    if let Some(t) = &vocab.chat_template {
        md.push(("tokenizer.chat_template".into(), s(t)));
    }
    let (h, q, kv, i) = (cfg.hidden_size as u64, cfg.q_dim() as u64, cfg.kv_dim() as u64, cfg.intermediate_size as u64);
    let mat = |name: &str, rows: u64, cols: u64, data: &[f32]| WriterTensor::encode(name, &[cols, rows], linear, data);
    let mut t = vec![mat("token_embd.weight", cfg.vocab_size as u64, h, &w.embed)?];
    for (l, lw) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        t.push(WriterTensor::f32(&n("attn_norm"), &[h], &lw.attn_norm));
        t.push(mat(&n("attn_q"), q, h, &permute_rows(&lw.wq, cfg.num_heads, cfg.hidden_size))?);
        t.push(mat(&n("attn_k"), kv, h, &permute_rows(&lw.wk, cfg.num_kv_heads, cfg.hidden_size))?);
        t.push(mat(&n("attn_v"), kv, h, &lw.wv)?);
        t.push(mat(&n("attn_output"), h, q, &lw.wo)?);
        t.push(WriterTensor::f32(&n("ffn_norm"), &[h], &lw.ffn_norm));
        t.push(mat(&n("ffn_gate"), i, h, &lw.w_gate)?);
        t.push(mat(&n("ffn_up"), i, h, &lw.w_up)?);
        t.push(mat(&n("ffn_down"), h, i, &lw.w_down)?);
    }
    t.push(WriterTensor::f32("output_norm.weight", &[h], &w.final_norm));
    if let Some(head) = &w.lm_head {
        t.push(mat("output.weight", cfg.vocab_size as u64, h, head)?);
    }
    Ok(write_gguf(&md, &t, DEFAULT_ALIGNMENT))
}
