//! The tiny generated models on the CPU backend, checked against the plain-Rust reference.
#![cfg(not(target_arch = "wasm32"))]

use std::sync::Arc;

use edge_llm::cpu::q4_matmul::Q4Activations;
use edge_llm::cpu::CpuModel;
use edge_llm::llama::onnx_export::{export, ExportOptions};
use edge_llm::llama::reference::{self, RefKvCache};
use edge_llm::tiny;
use edge_llm::{Engine, Error, GenerateOptions};

mod common;
use common::{max_abs_diff, PROMPT};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

fn fixture(name: &str) -> Vec<u8> {
    if std::env::var("EDGE_LLM_BLESS").is_ok_and(|v| v == "1") {
        if let Some((_, bytes)) = tiny::files().into_iter().find(|(n, _)| n == name) {
            std::fs::write(format!("{FIXTURES}/{name}"), bytes).unwrap();
        }
    }
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}; run `cargo run --features pack --bin edge-llm-pack -- gen-tiny`"))
}

#[test]
fn committed_fixtures_match_the_generator_byte_for_byte() {
    for (name, bytes) in tiny::files() {
        let on_disk = fixture(&name);
        assert!(on_disk == bytes, "{name} is stale: regenerate with `cargo run --features pack --bin edge-llm-pack -- gen-tiny`");
        if name.ends_with(".onnx") {
            assert!(bytes.len() < 1 << 20, "{name} is {} bytes, over 1 MB", bytes.len());
        }
    }
}

/// Logits of every prompt position from tract and from the reference.
fn compare(opts: &ExportOptions) -> f32 {
    let cfg = tiny::config();
    let exported = export(&cfg, &tiny::weights(), opts);
    let model = Arc::new(CpuModel::load(&edge_llm::onnx::encode(&exported.model)).unwrap());
    let got = model.session().forward_all(&PROMPT).unwrap();
    let want: Vec<f32> = reference::forward(&cfg, &exported.effective, &PROMPT, &mut RefKvCache::default()).concat();
    max_abs_diff(&got, &want)
}

#[test]
fn fp32_logits_match_reference() {
    let d = compare(&ExportOptions::fp32());
    assert!(d < 1e-4, "max |diff| = {d}");
}

#[test]
fn int4_logits_match_reference_on_dequantized_weights() {
    for sym in [true, false] {
        let d = compare(&ExportOptions::int4(32, sym));
        assert!(d < 1e-3, "symmetric={sym}: max |diff| = {d}");
    }
}

#[test]
fn int8_logits_match_reference_with_quantized_activations() {
    // DynamicQuantizeLinear quantizes a whole [1, S, K] input with one scale, so the exact
    // comparison runs token by token against the reference that models it.
    let cfg = tiny::config();
    let exported = export(&cfg, &tiny::weights(), &ExportOptions::int8());
    let model = Arc::new(CpuModel::load(&edge_llm::onnx::encode(&exported.model)).unwrap());
    // tract's MatMulInteger and edge-llm's kernel (the wasm default) compute the same integers.
    for q8_kernel in [false, true] {
        let opts = edge_llm::cpu::CpuOptions { q8_kernel, fold_kv_cache: false, ..Default::default() };
        let model = Arc::new(CpuModel::from_proto(exported.model.clone(), &opts).unwrap());
        // Every MatMulInteger (weights detached while the graph is parsed) is claimed.
        let matmuls = exported.model.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == "MatMulInteger").count();
        assert_eq!(model.plan_ops().get("EdgeLlmQ8MatMul").copied().unwrap_or(0), if q8_kernel { matmuls } else { 0 });
        let mut session = model.session();
        let mut cache = RefKvCache::default();
        for t in PROMPT {
            let got = session.forward(&[t]).unwrap();
            let want = reference::forward_int8_activations(&cfg, &exported.effective, &[t], &mut cache).concat();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-3, "q8_kernel={q8_kernel} token {t}: max |diff| = {d}");
        }
    }
    // Packed (weights in external-data shards), the kernel claims them all too.
    let (graph, shards) = edge_llm::package::shards::shard_weights(exported.model.clone(), 64 << 10, "model").unwrap();
    let opts = edge_llm::cpu::CpuOptions { q8_kernel: true, ..Default::default() };
    let shard = |loc: &str| Ok(shards.iter().find(|(n, _)| n == loc).unwrap().1.clone());
    let packed = CpuModel::from_packed(graph, shard, &opts).unwrap();
    let matmuls = exported.model.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == "MatMulInteger").count();
    assert_eq!(packed.plan_ops().get("EdgeLlmQ8MatMul").copied(), Some(matmuls));
    // Against fp32 weights and activations, int8 stays within the documented tolerance.
    let fp32 = reference::forward(&cfg, &tiny::weights(), &PROMPT, &mut RefKvCache::default()).concat();
    let int8 = model.session().forward_all(&PROMPT).unwrap();
    let d = max_abs_diff(&int8, &fp32);
    assert!(d < 0.5, "int8 vs fp32: max |diff| = {d}");
}

/// edge-llm's own formats — 8-bit `MatMulNBits` blocks (float activations, or int8 ones with `accuracy_level`
/// 4) and 4-bit with float zero points — are claimed by edge-llm's ops in every kernel mode, in
/// memory and packed, and their logits match the reference on the dequantized weights with the
/// activation rounding each mode applies.
#[test]
fn edge_llm_formats_match_the_reference_in_every_kernel_mode() {
    use edge_llm::cpu::CpuOptions;
    use edge_llm::llama::reference::ActivationQuant;
    let cfg = tiny::config();
    let float_zp = ExportOptions { q4_min: true, ..ExportOptions::int4(32, false) };
    let variants = [
        ("int8-block", ExportOptions::int8_block(), "EdgeLlmQ8BlockMatMul"),
        // The same computing on int8 activations per block (`--int8-activations`).
        ("int8-block-acc4", ExportOptions { int8_activations: true, head_int8_activations: true, ..ExportOptions::int8_block() }, "EdgeLlmQ8BlockMatMul"),
        ("int4-float-zp", float_zp.clone(), "EdgeLlmQ4MinMatMul"),
        // The same with fp16 scales and zero points behind a Cast (the int4 recipe's layers).
        ("int4-float-zp-f16", ExportOptions { f16_scales: true, ..float_zp }, "EdgeLlmQ4MinMatMul"),
    ];
    for (name, opts, op) in variants {
        let exported = export(&cfg, &tiny::weights(), &opts);
        let graph = exported.model.graph.as_ref().unwrap();
        // A float initializer, or the Cast to float of an fp16 one.
        let float = |t: &str| {
            graph.initializer.iter().any(|i| i.name == t && i.data_type == 1)
                || graph.node.iter().any(|n| n.op_type == "Cast" && n.output[0] == t && graph.initializer.iter().any(|i| i.name == n.input[0] && i.data_type == 10))
        };
        // The nodes in edge-llm's format: 8-bit ones, or 4-bit ones with float zero points (every
        // linear; the tied embedding/head keeps integer zero points).
        let ours = |n: &&edge_llm::onnx::NodeProto| {
            n.op_type == "MatMulNBits" && (n.attribute.iter().any(|a| a.name == "bits" && a.i == 8) || n.input.get(3).is_some_and(|z| float(z)))
        };
        let nodes = graph.node.iter().filter(ours).count();
        let expected = if name.starts_with("int8-block") { 7 * cfg.num_layers + 1 } else { 7 * cfg.num_layers };
        assert_eq!(nodes, expected, "{name}: every linear (and the tied int8 head)");
        for (q4_kernel, q4_int8_activations) in [(false, false), (true, false), (true, true)] {
            let q4_activations = if q4_int8_activations { edge_llm::cpu::q4_matmul::Q4Activations::Int8 } else { edge_llm::cpu::q4_matmul::Q4Activations::Float };
            let copts = CpuOptions { q4_kernel, q4_activations, ..Default::default() };
            let model = Arc::new(CpuModel::from_proto(exported.model.clone(), &copts).unwrap());
            assert_eq!(model.plan_ops().get(op).copied(), Some(nodes), "{name} q4_kernel={q4_kernel}");
            // The int8 format computes on the activations its nodes ask for; float zero points follow
            // the q4 kernel's mode, their zero-point term on unrounded activations (hence the
            // looser bound: the reference rounds all of x).
            let (act, tol) = match (name, q4_int8_activations) {
                ("int8-block", _) => (ActivationQuant::None, 1e-3),
                ("int8-block-acc4", _) => (ActivationQuant::Int8Block32, 1e-3),
                (_, false) => (ActivationQuant::None, 1e-3),
                (_, true) => (ActivationQuant::Int8Block32, 1e-3),
            };
            // The int8 format's head runs on float activations (`head_int8_activations` off).
            let head = if opts.lm_head == edge_llm::quant::Precision::Int8 && !opts.head_int8_activations { ActivationQuant::None } else { act };
            let got = model.session().forward_all(&PROMPT).unwrap();
            let want = reference::forward_with_head(&cfg, &exported.effective, &PROMPT, &mut RefKvCache::default(), act, head).concat();
            let d = max_abs_diff(&got, &want);
            assert!(d < tol, "{name} q4_kernel={q4_kernel} int8={q4_int8_activations}: max |diff| = {d}");
        }
        let (graph, shards) = edge_llm::package::shards::shard_weights(exported.model.clone(), 64 << 10, "model").unwrap();
        let shard = |loc: &str| Ok(shards.iter().find(|(n, _)| n == loc).unwrap().1.clone());
        let packed = CpuModel::from_packed(graph, shard, &CpuOptions::default()).unwrap();
        assert_eq!(packed.plan_ops().get(op).copied(), Some(nodes), "{name} packed");
    }
}

#[test]
fn kv_cache_decode_equals_full_recompute() {
    let model = Arc::new(CpuModel::load(&fixture("model-fp32.onnx")).unwrap());
    let mut inc = model.session();
    let mut last = inc.forward(&PROMPT[..3]).unwrap();
    for t in &PROMPT[3..] {
        last = inc.forward(&[*t]).unwrap();
    }
    let full = model.session().forward(&PROMPT).unwrap();
    let d = max_abs_diff(&last, &full);
    assert!(d < 1e-4, "max |diff| = {d}");
}

fn engine(variant: &str) -> Engine {
    Engine::open(edge_llm::package::Package::loose(&fixture(variant), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap()
}

#[test]
fn greedy_tokens_equal_reference_tokens() {
    let e = engine("model-fp32.onnx");
    let want = reference::greedy(&tiny::config(), &tiny::weights(), &PROMPT, 12);
    let mut g = e.generate_ids(PROMPT.to_vec(), &GenerateOptions { max_tokens: 12, ignore_eos: true, ..Default::default() }).unwrap();
    while g.step().unwrap().is_some() {}
    assert_eq!(g.generated(), want);
}

/// The warm-up `Engine.load` runs leaves nothing behind: the first generation's tokens, its
/// stats' prompt count and the saved (empty) conversation are those of an engine opened without
/// it, on every format.
#[test]
fn warm_up_leaves_no_trace() {
    for variant in ["model-fp32.onnx", "model-int4.onnx", "model-int8.onnx"] {
        let open = |warm_up| {
            let options = edge_llm::generate::EngineOptions { warm_up, ..Default::default() };
            Engine::open(edge_llm::package::Package::loose(&fixture(variant), &fixture("tokenizer.json"), tiny::model_config()), &options).unwrap()
        };
        let (cold, warm) = (open(false), open(true));
        assert!(warm.state().is_none(), "{variant}: the warm-up left a conversation");
        assert_eq!(warm.save_state().unwrap(), cold.save_state().unwrap(), "{variant}: saved empty state");
        let run = |e: &Engine| {
            let mut g = e.generate_ids(PROMPT.to_vec(), &GenerateOptions { max_tokens: 12, ignore_eos: true, ..Default::default() }).unwrap();
            while g.step().unwrap().is_some() {}
            (g.generated().to_vec(), g.stats().prompt_tokens)
        };
        assert_eq!(run(&warm), run(&cold), "{variant}");
    }
}

/// common::sampling's body on the CPU backend (tests/gpu.rs runs it on the GPU backend): int4
/// and int8.
#[test]
fn sampling_options_hold_on_the_cpu() {
    for variant in ["model-int4.onnx", "model-int8.onnx"] {
        edge_llm::backend::ready(common::sampling::sampling_options_hold(&engine(variant))).expect("CPU steps are ready when polled");
    }
}

#[test]
fn unsupported_op_is_named_at_load() {
    let mut m = export(&tiny::config(), &tiny::weights(), &ExportOptions::fp32()).model;
    let node = &mut m.graph.as_mut().unwrap().node[3];
    node.op_type = "FancyNewOp".into();
    let name = node.name.clone();
    match CpuModel::load(&edge_llm::onnx::encode(&m)) {
        Err(Error::UnsupportedOp { op, node }) => {
            assert_eq!(op, "FancyNewOp");
            assert_eq!(node, name);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded a model with an unknown op"),
    }
}

#[test]
fn garbage_bytes_are_an_invalid_model_not_a_panic() {
    for bytes in [&b"not a model"[..], &fixture("model-fp32.onnx")[..1000]] {
        assert!(matches!(CpuModel::load(bytes), Err(Error::InvalidModel(_))));
    }
}

#[test]
fn tokenizer_round_trips_multibyte_text() {
    let tok = edge_llm::tokenizer::Tokenizer::from_json(&fixture("tokenizer.json")).unwrap();
    let text = "<|im_start|>user\nCafé 東京 🙂 1234<|im_end|>";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[0], 1, "special token matched whole");
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    // Digits are split one by one.
    let digits = tok.encode("1234").unwrap();
    assert_eq!(digits.len(), 4);
}

#[test]
fn folded_kv_cache_decode_matches_reference_for_every_format() {
    use edge_llm::cpu::CpuOptions;
    let cfg = tiny::config();
    let folded = CpuOptions { fold_kv_cache: true, q4_kernel: false, q4_activations: Q4Activations::Float, last_logits_only: false, q8_kernel: true, threads: None };
    for opts in [ExportOptions::fp32(), ExportOptions::int4(32, true), ExportOptions::int4(32, false)] {
        let exported = export(&cfg, &tiny::weights(), &opts);
        let model = Arc::new(CpuModel::from_proto(exported.model.clone(), &folded).unwrap());
        // Every layer's attention runs on the in-place cache: no concatenating cache op is left.
        let ops = model.plan_ops();
        assert_eq!(ops.get("KvAttention"), Some(&cfg.num_layers), "{ops:?}");
        assert!(!ops.contains_key("DynamicKeyValueCache"), "{ops:?}");
        // The embedding's lookups are edge-llm's byte-copy gather (src/cpu/row_gather.rs), not
        // tract's `Gather`, whose one large function V8 would optimize mid-request.
        assert!(ops.contains_key("EdgeLlmRowGather") && !ops.contains_key("Gather"), "{ops:?}");
        let mut session = model.session();
        let mut cache = RefKvCache::default();
        let mut got = session.forward_all(&PROMPT[..4]).unwrap();
        let mut want = reference::forward(&cfg, &exported.effective, &PROMPT[..4], &mut cache).concat();
        for t in &PROMPT[4..] {
            got.extend(session.forward(&[*t]).unwrap());
            want.extend(reference::forward(&cfg, &exported.effective, &[*t], &mut cache).concat());
        }
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-3, "{:?}/{:?}: max |diff| = {d}", opts.linear, opts.symmetric);
    }
}

#[test]
fn fp16_and_int4_block128_agree_with_the_reference() {
    // fp16 weights (+ Cast) within 1e-3; int4 with 128-wide blocks (a partial block at K=64,
    // tract's dequantize-to-f32 fallback) within 1e-3 of the reference on its weights.
    for opts in [ExportOptions::fp16(), ExportOptions::int4(128, true), ExportOptions::int4(128, false)] {
        let d = compare(&opts);
        assert!(d < 1e-3, "{:?} block {}: max |diff| = {d}", opts.linear, opts.block_size);
    }
}

#[test]
fn edge_llm_q4_kernels_match_their_references() {
    for (sym, int8) in common::Q4_KERNEL_VARIANTS {
        let run = common::run_q4_kernel(sym, int8);
        let d = max_abs_diff(&run.got, &run.modelled);
        assert!(d < 1e-3, "symmetric={sym} int8={int8}: max |diff| vs its reference = {d}");
        if int8 {
            // Against exact activations: int8 rounding of every linear input, bounded relative
            // to the logits' range (documented tolerance: 3 %).
            let d = max_abs_diff(&run.got, &run.exact);
            let range = run.exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            eprintln!("symmetric={sym}: int8 activations vs exact: max |diff| {d} of logit range {range}");
            assert!(d < 0.03 * range, "symmetric={sym}: max |diff| vs exact activations = {d} (range {range})");
        }
    }
}

#[test]
fn onnxruntime_genai_layout_runs_with_prefill_and_decode_plans() {
    // GroupQueryAttention (rotary inside), SimplifiedLayerNormalization and
    // SkipSimplifiedLayerNormalization, no position_ids: the prompt runs through the
    // empty-cache plan, every later token through the one-token plan.
    let cfg = tiny::config();
    for opts in [ExportOptions::fp32().genai(), ExportOptions::int4(32, true).genai(), ExportOptions::int4(32, false).genai()] {
        let exported = export(&cfg, &tiny::weights(), &opts);
        let model = Arc::new(CpuModel::load(&edge_llm::onnx::encode(&exported.model)).unwrap());
        // The cache lives in the plans' state and grows in place: no past/present tensors.
        assert!(model.kv_cache_folded());
        assert_eq!(model.plan_ops().get("KvAttention"), Some(&cfg.num_layers));
        let mut session = model.session();
        let mut cache = RefKvCache::default();
        let mut got = session.forward_all(&PROMPT[..3]).unwrap();
        let mut want = reference::forward(&cfg, &exported.effective, &PROMPT[..3], &mut cache).concat();
        // Two tokens in one call after the prompt: fed one at a time.
        got.extend(session.forward_all(&PROMPT[3..5]).unwrap());
        want.extend(reference::forward(&cfg, &exported.effective, &PROMPT[3..5], &mut cache).concat());
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-3, "{:?}/{:?}: max |diff| = {d}", opts.linear, opts.symmetric);
        // A snapshot taken from the decode plan's state continues identically in a new session.
        let mut resumed = model.session_from(&session.snapshot().unwrap()).unwrap();
        assert_eq!(resumed.forward(&PROMPT[5..]).unwrap(), session.forward(&PROMPT[5..]).unwrap());
    }
    // Greedy generation through the engine equals the reference's tokens.
    let exported = export(&cfg, &tiny::weights(), &ExportOptions::fp32().genai());
    let e = Engine::open(edge_llm::package::Package::loose(&edge_llm::onnx::encode(&exported.model), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap();
    let want = reference::greedy(&cfg, &tiny::weights(), &PROMPT, 12);
    let mut g = e.generate_ids(PROMPT.to_vec(), &GenerateOptions { max_tokens: 12, ignore_eos: true, ..Default::default() }).unwrap();
    while g.step().unwrap().is_some() {}
    assert_eq!(g.generated(), want);
}

#[test]
fn edge_llm_q4_matmul_matches_reference() {
    for (n, k, m) in common::Q4_MATMUL_SHAPES {
        for sym in [true, false] {
            let d = common::q4_matmul_max_diff(n, k, m, sym);
            assert!(d < 1e-3, "n={n} k={k} m={m} symmetric={sym}: max |diff| = {d}");
        }
    }
}

#[test]
fn last_position_logits_match_the_full_forward() {
    use edge_llm::cpu::CpuOptions;
    let cfg = tiny::config();
    for (opts, q4_kernel) in [(ExportOptions::fp32(), false), (ExportOptions::int8(), false), (ExportOptions::int4(32, true), false), (ExportOptions::int4(32, false), true)] {
        let exported = export(&cfg, &tiny::weights(), &opts);
        let build = |last_logits_only| {
            let o = CpuOptions { fold_kv_cache: false, q4_kernel, q4_activations: if q4_kernel { Q4Activations::Int8 } else { Q4Activations::Float }, last_logits_only, q8_kernel: true, threads: None };
            Arc::new(CpuModel::from_proto(exported.model.clone(), &o).unwrap())
        };
        let (full, last) = (build(false), build(true));
        let (mut a, mut b) = (full.session(), last.session());
        let all = a.forward_all(&PROMPT).unwrap();
        let got = b.forward(&PROMPT).unwrap();
        let v = full.vocab_size();
        let d = max_abs_diff(&got, &all[all.len() - v..]);
        assert!(d < 1e-5, "{:?} q4_kernel={q4_kernel}: prefill max |diff| = {d}", opts.linear);
        // The sliced model's KV cache holds every position: decoding continues identically.
        let d = max_abs_diff(&b.forward(&[7]).unwrap(), &a.forward(&[7]).unwrap());
        assert!(d < 1e-5, "{:?} q4_kernel={q4_kernel}: decode max |diff| = {d}", opts.linear);
        assert!(matches!(b.forward_all(&PROMPT), Err(Error::Inference(_))));
    }
}

#[test]
fn edge_llm_int8_block_matmul_matches_reference() {
    for (n, k, m) in common::Q8_BLOCK_SHAPES {
        let d = common::q8_block_matmul_max_diff(n, k, m);
        assert!(d < 1e-3, "n={n} k={k} m={m}: max |diff| = {d}");
    }
}

#[test]
fn edge_llm_matmul_integer_is_exact() {
    for (m, k, n) in common::Q8_MATMUL_SHAPES {
        assert!(common::q8_matmul_matches(m, k, n), "m={m} k={k} n={n}");
    }
}
