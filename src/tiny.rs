//! The project's own test models: a seeded 2-layer Llama decoder (GQA, RoPE, SwiGLU, tied
//! embedding) with a byte-level BPE tokenizer trained on a small built-in corpus.
//! `edge-llm-pack gen-tiny DIR` writes them; tests check the committed copies are current.

use crate::llama::onnx_export::{export, ExportOptions};
use crate::llama::{LlamaConfig, LlamaWeights};
use crate::model::ModelConfig;
use crate::tokenizer::{build_bpe_tokenizer, train_bpe, CHATML_TEMPLATE};

/// Seed of the tiny model's weights.
pub const SEED: u64 = 0x5eed_11a3;
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: usize = 160;

const CORPUS: &[&str] = &[
    "The capital of France is Paris. The capital of Italy is Rome.",
    "What is the capital of France? Paris is the capital and largest city of France.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Once upon a time there was a small model that ran in the browser.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "Edge devices run language models with quantized weights: int8 and int4.",
    "Café, naïve, façade, über, 東京, 日本語, 🙂 and 🚀 are not ASCII.",
    "user assistant system message content the of and to in is that it for",
];

/// The tiny model's tokenizer.json.
pub fn tokenizer_json() -> String {
    let (vocab, merges) = vocab_and_merges();
    build_bpe_tokenizer(&vocab, merges, &SPECIALS).expect("tiny tokenizer builds")
}

/// The tiny tokenizer's vocabulary (index = id) and merges, e.g. to write it into a GGUF file.
pub fn vocab_and_merges() -> (Vec<String>, Vec<(String, String)>) {
    train_bpe(CORPUS, &SPECIALS, MERGES)
}

/// The tiny tokenizer as GGUF metadata (control tokens = the specials).
pub fn gguf_vocab() -> crate::gguf::writer::GgufVocab {
    let (tokens, merges) = vocab_and_merges();
    let token_types = (0..tokens.len()).map(|i| if i < SPECIALS.len() { 3 } else { 1 }).collect();
    crate::gguf::writer::GgufVocab {
        tokens,
        merges,
        token_types,
        bos: Some(1),
        eos: Some(2),
        pad: Some(2),
        unk: None,
        chat_template: Some(CHATML_TEMPLATE.into()),
    }
}

/// The tiny model as llama.cpp would write it, with `linear` weights (e.g. Q4_0).
pub fn gguf(linear: crate::gguf::GgmlType) -> Vec<u8> {
    crate::gguf::writer::write_llama_gguf(&config(), &weights(), &gguf_vocab(), linear).expect("tiny GGUF writes")
}

fn vocab_size() -> usize {
    let (vocab, _) = train_bpe(CORPUS, &SPECIALS, MERGES);
    vocab.len()
}

pub fn config() -> LlamaConfig {
    LlamaConfig::tiny(vocab_size())
}

pub fn weights() -> LlamaWeights {
    LlamaWeights::random(&config(), SEED)
}

pub fn model_config() -> ModelConfig {
    ModelConfig {
        model_id: "edge-llm/tiny-llama".into(),
        architecture: config(),
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(2),
        bos_token: SPECIALS[1].into(),
        eos_token: SPECIALS[2].into(),
        chat_template: Some(CHATML_TEMPLATE.into()),
    }
}

/// Variants written to disk: file stem and export options.
pub fn variants() -> Vec<(&'static str, ExportOptions)> {
    vec![
        ("model-fp32", ExportOptions::fp32()),
        ("model-int8", ExportOptions::int8()),
        ("model-int8-block", ExportOptions::int8_block()),
        ("model-int4", ExportOptions::int4(32, true)),
        ("model-int4-asym", ExportOptions::int4(32, false)),
    ]
}

/// `(file name, bytes)` of every tiny-model file.
pub fn files() -> Vec<(String, Vec<u8>)> {
    let cfg = config();
    let w = weights();
    let mut out: Vec<(String, Vec<u8>)> = variants()
        .into_iter()
        .map(|(stem, opts)| (format!("{stem}.onnx"), crate::onnx::encode(&export(&cfg, &w, &opts).model)))
        .collect();
    out.push(("tokenizer.json".into(), tokenizer_json().into_bytes()));
    let mc = serde_json::to_string_pretty(&model_config()).expect("config serializes");
    out.push(("model_config.json".into(), mc.into_bytes()));
    // Seed for the GGUF fuzzer and a ready input for `import-gguf`.
    out.push(("tiny.Q4_0.gguf".into(), gguf(crate::gguf::GgmlType::Q4_0)));
    out
}
