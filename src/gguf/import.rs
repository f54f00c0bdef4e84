//! A Llama-architecture GGUF mapped onto [`LlamaConfig`], [`LlamaWeights`], a HF
//! `tokenizer.json` and a [`ModelConfig`], ready for the ONNX exporter.

use super::{err, Gguf, TensorInfo, Value};
use crate::llama::{LayerWeights, LlamaConfig, LlamaWeights};
use crate::model::ModelConfig;
use crate::tokenizer::build_bpe_tokenizer;
use crate::Result;

/// Everything the packer needs from a GGUF file.
pub struct Imported {
    pub config: ModelConfig,
    /// Dequantized to f32, q/k rows back in HF order (see [`unpermute_rows`]).
    pub weights: LlamaWeights,
    pub tokenizer_json: String,
}

/// `tokenizer.ggml.token_type` of tokens that are matched whole in text and skipped when
/// decoding with `skip_special` (llama.cpp: CONTROL; USER_DEFINED is matched whole too).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Values of `tokenizer.ggml.pre` whose pre-tokenizer is exactly the one
/// [`build_bpe_tokenizer`] builds (digits split one by one, then the GPT-2 regex): llama.cpp
/// groups these under one regex set. Others (Llama 3's `llama-bpe`, Qwen2, plain `gpt-2`)
/// split text differently, so importing them would silently change token ids.
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] = &["smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"];

/// Read a Llama GGUF: architecture facts, fp32 weights, tokenizer and special tokens.
pub fn import(bytes: &[u8]) -> Result<Imported> {
    let g = Gguf::parse(bytes)?;
    let arch = g.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(err(format!("architecture `{arch}` is not supported (only `llama`)")));
    }
    let cfg = llama_config(&g)?;
    let weights = llama_weights(&g, &cfg)?;
    let tok = tokenizer(&g)?;
    if tok.vocab.len() > cfg.vocab_size {
        return Err(err(format!(
            "tokenizer has {} tokens but token_embd.weight has {} rows",
            tok.vocab.len(),
            cfg.vocab_size
        )));
    }
    let text = |id: Option<u32>| id.map(|i| tok.vocab[i as usize].clone()).unwrap_or_default();
    let mut eos_token_ids: Vec<u32> = tok.eos.into_iter().collect();
    // Chat models often end a turn with an end-of-turn token distinct from EOS.
    if let Some(eot) = tok.eot.filter(|e| !eos_token_ids.contains(e)) {
        eos_token_ids.push(eot);
    }
    let model_id = match g.get("general.name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => "gguf-import".to_string(),
    };
    let config = ModelConfig {
        model_id,
        architecture: cfg,
        bos_token_id: tok.bos,
        eos_token_ids,
        pad_token_id: tok.pad,
        bos_token: text(tok.bos),
        eos_token: text(tok.eos),
        chat_template: g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string),
    };
    Ok(Imported { config, weights, tokenizer_json: tok.json })
}

/// The `llama.*` hyper-parameters, checked for consistency.
pub fn llama_config(g: &Gguf) -> Result<LlamaConfig> {
    let hidden = g.get_usize("llama.embedding_length")?;
    let num_heads = g.get_usize("llama.attention.head_count")?;
    let num_kv_heads = match g.get("llama.attention.head_count_kv") {
        None => num_heads,
        Some(_) => g.get_usize("llama.attention.head_count_kv")?,
    };
    let num_layers = g.get_usize("llama.block_count")?;
    let intermediate_size = g.get_usize("llama.feed_forward_length")?;
    if hidden == 0 || num_heads == 0 || num_kv_heads == 0 || num_layers == 0 || intermediate_size == 0 {
        return Err(err("a llama.* size is zero"));
    }
    if num_heads % num_kv_heads != 0 {
        return Err(err(format!("head_count {num_heads} is not a multiple of head_count_kv {num_kv_heads}")));
    }
    let head_dim = match g.get("llama.attention.key_length") {
        Some(_) => g.get_usize("llama.attention.key_length")?,
        None if hidden % num_heads == 0 => hidden / num_heads,
        None => return Err(err(format!("embedding_length {hidden} is not a multiple of head_count {num_heads}"))),
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(err(format!("head dimension {head_dim} must be even and non-zero for RoPE")));
    }
    // q_dim / kv_dim are computed from these everywhere downstream.
    if num_heads.checked_mul(head_dim).is_none() {
        return Err(err(format!("head_count {num_heads} x head dimension {head_dim} overflows")));
    }
    if g.get("llama.attention.value_length").is_some() && g.get_usize("llama.attention.value_length")? != head_dim {
        return Err(err("attention.value_length differs from key_length (unsupported)"));
    }
    if g.get("llama.rope.dimension_count").is_some() && g.get_usize("llama.rope.dimension_count")? != head_dim {
        return Err(err("partial rotary embeddings (rope.dimension_count < head dimension) are not supported"));
    }
    // The exporter implements plain RoPE only; scaled variants change every position's angle.
    if let Some(kind) = g.get("llama.rope.scaling.type").and_then(Value::as_str) {
        if kind != "none" {
            return Err(err(format!("RoPE scaling `{kind}` is not supported")));
        }
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(err("per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 style) are not supported"));
    }
    let embd = g.tensor("token_embd.weight").ok_or_else(|| err("missing tensor `token_embd.weight`"))?;
    if embd.dims.len() != 2 || embd.dims[0] != hidden as u64 {
        return Err(err(format!("token_embd.weight has dims {:?}, expected [{hidden}, vocab]", embd.dims)));
    }
    let rope_theta = g.get_f64_opt("llama.rope.freq_base")?.unwrap_or(10000.0) as f32;
    let rms_norm_eps = g
        .get_f64_opt("llama.attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| err("missing metadata `llama.attention.layer_norm_rms_epsilon`"))? as f32;
    if !(rope_theta.is_finite() && rope_theta > 0.0 && rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
        return Err(err(format!("rope.freq_base {rope_theta} or rms epsilon {rms_norm_eps} out of range")));
    }
    Ok(LlamaConfig {
        vocab_size: embd.dims[1] as usize,
        hidden_size: hidden,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta,
        rms_norm_eps,
        max_position_embeddings: g.get_usize("llama.context_length")?,
        tie_word_embeddings: g.tensor("output.weight").is_none(),
    })
}

fn shaped<'g>(g: &'g Gguf, name: &str, dims: &[usize]) -> Result<&'g TensorInfo> {
    let t = g.tensor(name).ok_or_else(|| err(format!("missing tensor `{name}`")))?;
    if t.dims.len() != dims.len() || t.dims.iter().zip(dims).any(|(a, b)| *a != *b as u64) {
        return Err(err(format!("tensor `{name}` has dims {:?}, expected {dims:?}", t.dims)));
    }
    Ok(t)
}

/// A 2-D weight of `rows` rows of `cols`: GGUF dims `[cols, rows]`, which is already
/// [`LlamaWeights`]' `[out][in]` row-major order.
fn matrix(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
    shaped(g, name, &[cols, rows])?;
    g.tensor_f32(name)
}

fn vector(g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>> {
    shaped(g, name, &[len])?;
    g.tensor_f32(name)
}

/// Most f32 bytes an import may dequantize to: a 4-billion-parameter model. (Tensors cannot
/// share bytes ([`Gguf::parse`]), so a file asks for at most ~12x its size; this bounds it
/// before any tensor is dequantized.)
pub const MAX_IMPORT_F32_BYTES: u64 = 16 << 30;

/// All weights in f32, checked against `cfg`'s shapes.
pub fn llama_weights(g: &Gguf, cfg: &LlamaConfig) -> Result<LlamaWeights> {
    let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    let f32_bytes = || -> Option<u64> {
        let (h, q, kv, i) = (h as u64, q as u64, kv as u64, i as u64);
        let layer = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?.checked_add(i.checked_mul(3)?)?)?.checked_add(2 * h)?;
        let heads = (cfg.vocab_size as u64).checked_mul(h)?.checked_mul(if cfg.tie_word_embeddings { 1 } else { 2 })?;
        layer.checked_mul(cfg.num_layers as u64)?.checked_add(heads)?.checked_add(h)?.checked_mul(4)
    };
    match f32_bytes() {
        Some(n) if n <= MAX_IMPORT_F32_BYTES => {}
        n => return Err(err(format!("the weights would take {} bytes as f32, over the {MAX_IMPORT_F32_BYTES} allowed", n.map_or("over 2^64".into(), |n| n.to_string())))),
    }
    let mut layers = Vec::new();
    for l in 0..cfg.num_layers {
        let t = |s: &str| format!("blk.{l}.{s}.weight");
        layers.push(LayerWeights {
            attn_norm: vector(g, &t("attn_norm"), h)?,
            wq: unpermute_rows(&matrix(g, &t("attn_q"), q, h)?, cfg.num_heads, h),
            wk: unpermute_rows(&matrix(g, &t("attn_k"), kv, h)?, cfg.num_kv_heads, h),
            wv: matrix(g, &t("attn_v"), kv, h)?,
            wo: matrix(g, &t("attn_output"), h, q)?,
            ffn_norm: vector(g, &t("ffn_norm"), h)?,
            w_gate: matrix(g, &t("ffn_gate"), i, h)?,
            w_up: matrix(g, &t("ffn_up"), i, h)?,
            w_down: matrix(g, &t("ffn_down"), h, i)?,
        });
    }
    Ok(LlamaWeights {
        embed: matrix(g, "token_embd.weight", cfg.vocab_size, h)?,
        layers,
        final_norm: vector(g, "output_norm.weight", h)?,
        lm_head: if cfg.tie_word_embeddings { None } else { Some(matrix(g, "output.weight", cfg.vocab_size, h)?) },
    })
}

/// llama.cpp's converter reorders the rows of `attn_q` / `attn_k` so that ggml's RoPE, which
/// rotates adjacent pairs `(2i, 2i+1)`, computes what HF's rotate-half RoPE computes on pairs
/// `(i, i + head_dim/2)`: per head, `w.reshape(2, head_dim/2, k).swapaxes(0, 1)`. Our exporter
/// uses rotate-half, so this puts HF row `j * head_dim/2 + i` back from GGUF row `2i + j`.
/// `w` is `n_head * head_dim` rows of `cols`.
pub fn unpermute_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    reorder_rows(w, n_head, cols, false)
}

/// The converter's permutation (HF order → GGUF order), inverse of [`unpermute_rows`].
pub fn permute_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    reorder_rows(w, n_head, cols, true)
}

fn reorder_rows(w: &[f32], n_head: usize, cols: usize, to_gguf: bool) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    let half = rows / n_head.max(1) / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let hf = h * 2 * half + j * half + i;
                let gg = h * 2 * half + 2 * i + j;
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The tokenizer facts of a GGUF.
pub struct GgufTokenizer {
    pub json: String,
    pub vocab: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

fn string_array(g: &Gguf, key: &str) -> Result<Vec<String>> {
    let arr = g.get(key).ok_or_else(|| err(format!("missing metadata `{key}`")))?;
    let items = arr.as_array().ok_or_else(|| err(format!("`{key}` is not an array")))?;
    items
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| err(format!("`{key}` holds a non-string"))))
        .collect()
}

/// Build `tokenizer.json` from the `tokenizer.ggml.*` keys of a GPT-2 style BPE vocabulary.
pub fn tokenizer(g: &Gguf) -> Result<GgufTokenizer> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!("tokenizer model `{model}` is not supported (only byte-level BPE `gpt2`)")));
    }
    if let Some(pre) = g.get("tokenizer.ggml.pre") {
        let pre = pre.as_str().ok_or_else(|| err("`tokenizer.ggml.pre` is not a string"))?;
        if !SUPPORTED_PRE_TOKENIZERS.contains(&pre) {
            return Err(err(format!(
                "pre-tokenizer `{pre}` is not supported (supported: {})",
                SUPPORTED_PRE_TOKENIZERS.join(", ")
            )));
        }
    }
    let vocab = string_array(g, "tokenizer.ggml.tokens")?;
    let merges = string_array(g, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(err(format!("merge `{m}` is not two tokens separated by one space"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let types: Vec<i32> = match g.get("tokenizer.ggml.token_type") {
        None => vec![1; vocab.len()],
        Some(v) => v
            .as_array()
            .ok_or_else(|| err("`tokenizer.ggml.token_type` is not an array"))?
            .iter()
            .map(|t| t.as_i64().and_then(|t| i32::try_from(t).ok()).ok_or_else(|| err("token_type holds a non-integer")))
            .collect::<Result<_>>()?,
    };
    if types.len() != vocab.len() {
        return Err(err(format!("{} token types for {} tokens", types.len(), vocab.len())));
    }
    let specials: Vec<&str> = vocab
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
        .map(|(s, _)| s.as_str())
        .collect();
    let id = |key: &str| -> Result<Option<u32>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(i) if usize::try_from(i).is_ok_and(|i| i < vocab.len()) => Ok(Some(i as u32)),
                _ => Err(err(format!("`{key}` = {v:?} is not a token id below {}", vocab.len()))),
            },
        }
    };
    let json = build_bpe_tokenizer(&vocab, merges, &specials)
        .map_err(|e| err(format!("building the tokenizer: {e}")))?;
    Ok(GgufTokenizer {
        json,
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        vocab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_the_converter_formula() {
        // One head, head_dim 4, one column: reshape(1, 2, 2, 1).swapaxes(1, 2) turns HF rows
        // [a0, a1, b0, b1] into [a0, b0, a1, b1].
        assert_eq!(permute_rows(&[0.0, 1.0, 2.0, 3.0], 1, 1), vec![0.0, 2.0, 1.0, 3.0]);
        let w: Vec<f32> = (0..3 * 8 * 5).map(|v| v as f32).collect();
        let p = permute_rows(&w, 3, 5);
        assert_ne!(p, w);
        assert_eq!(unpermute_rows(&p, 3, 5), w);
    }

    /// ggml's "normal" RoPE (adjacent pairs) on GGUF-ordered q equals HF's rotate-half RoPE on
    /// HF-ordered q, once the output is put back in HF order: so un-permuting is right.
    #[test]
    fn permuted_rows_with_adjacent_rope_equal_rotate_half() {
        let (n_head, hd, k) = (2, 8, 3);
        let w: Vec<f32> = (0..n_head * hd * k).map(|v| ((v * 7919) % 23) as f32 / 7.0 - 1.5).collect();
        let x = [0.3f32, -1.2, 0.7];
        let lin = |w: &[f32]| -> Vec<f32> { w.chunks(k).map(|r| r.iter().zip(&x).map(|(a, b)| a * b).sum()).collect() };
        let (pos, theta) = (5.0f32, 10000f32);
        let angle = |i: usize| pos / theta.powf((2 * i) as f32 / hd as f32);
        let mut hf = lin(&w);
        for head in hf.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let (s, c) = angle(i).sin_cos();
                let (a, b) = (head[i], head[i + hd / 2]);
                head[i] = a * c - b * s;
                head[i + hd / 2] = b * c + a * s;
            }
        }
        let mut gg = lin(&permute_rows(&w, n_head, k));
        for head in gg.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let (s, c) = angle(i).sin_cos();
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * c - b * s;
                head[2 * i + 1] = b * c + a * s;
            }
        }
        let back = unpermute_rows(&gg, n_head, 1);
        for (a, b) in back.iter().zip(&hf) {
            assert!((a - b).abs() < 1e-5, "{back:?} vs {hf:?}");
        }
    }
}
