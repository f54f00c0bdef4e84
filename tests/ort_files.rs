//! Third-party-made files (optimum, onnxruntime's quantizers and float16 converter) load
//! unchanged and give onnxruntime's greedy tokens, logits within a per-format tolerance:
//! every file × backend through one body (`common/ort_files.rs`). The files and onnxruntime's
//! results are committed (`scripts/make-ort-references.py`), so this needs no Python.
#![cfg(not(target_arch = "wasm32"))]

#[macro_use]
#[path = "common/ort_files.rs"]
mod ort_files;

use ort_files::{check, max_abs_diff, Backend, INT16_ACT, INT8_ACT_LAST};

ort_tests! {
    #[test]
    fp32_tract: "fp32", Tract, 1e-4;
    fp32_kernels: "fp32", Kernels, 1e-4;
    fp16_tract: "fp16", Tract, 1.5e-2;
    fp16_kernels: "fp16", Kernels, 1.5e-2;
    fp16_io_tract: "fp16-io", Tract, 1.5e-2;
    fp16_io_kernels: "fp16-io", Kernels, 1.5e-2;
    int8_tract: "int8", Tract, 1e-4;
    int8_kernels: "int8", Kernels, 1e-4;
    int4_b32_sym_tract: "int4-b32-sym", Tract, INT16_ACT;
    int4_b32_sym_kernels: "int4-b32-sym", Kernels, INT16_ACT;
    int4_b32_sym_exact: "int4-b32-sym", KernelsExact, 1e-4;
    int4_b32_asym_tract: "int4-b32-asym", Tract, INT16_ACT;
    int4_b32_asym_kernels: "int4-b32-asym", Kernels, INT16_ACT;
    int4_b32_asym_exact: "int4-b32-asym", KernelsExact, 1e-4;
    int4_b128_sym_tract: "int4-b128-sym", Tract, 1e-4;
    int4_b128_sym_kernels: "int4-b128-sym", Kernels, INT16_ACT;
    int4_b128_sym_exact: "int4-b128-sym", KernelsExact, 1e-4;
    int4_b128_asym_tract: "int4-b128-asym", Tract, 1e-4;
    int4_b128_asym_kernels: "int4-b128-asym", Kernels, INT16_ACT;
    int4_b128_asym_exact: "int4-b128-asym", KernelsExact, 1e-4;
    int4_acc4_tract: "int4-b32-acc4", Tract, 1e-4, INT8_ACT_LAST;
    int4_acc4_kernels: "int4-b32-acc4", Kernels, 1e-4, INT8_ACT_LAST;
    int4_qdq_tract: "int4-qdq", Tract, 1e-4, INT8_ACT_LAST;
    int4_qdq_kernels: "int4-qdq", Kernels, 1e-4, INT8_ACT_LAST;
    int4_qdq_asym_tract: "int4-qdq-asym", Tract, 1e-4, INT8_ACT_LAST;
    int4_qdq_asym_kernels: "int4-qdq-asym", Kernels, 1e-4, INT8_ACT_LAST;
    int4_bias_tract: "int4-bias", Tract, INT16_ACT;
    int4_bias_kernels: "int4-bias", Kernels, INT16_ACT;
    int4_bias_exact: "int4-bias", KernelsExact, 1e-4;
    int4_gidx_tract: "int4-gidx", Tract, INT16_ACT;
    int4_gidx_kernels: "int4-gidx", Kernels, INT16_ACT;
    int4_gidx_exact: "int4-gidx", KernelsExact, 1e-4;
}

// Every file packed by `edge-llm-pack` and loaded from its shards as `Engine.load` does.
#[cfg(feature = "pack")]
ort_tests! {
    #[test]
    fp32_packed: "fp32", Packed, 1e-4;
    fp16_packed: "fp16", Packed, 1.5e-2;
    fp16_io_packed: "fp16-io", Packed, 1.5e-2;
    int8_packed: "int8", Packed, 1e-4;
    int4_b32_sym_packed: "int4-b32-sym", Packed, INT16_ACT;
    int4_b32_asym_packed: "int4-b32-asym", Packed, INT16_ACT;
    int4_b128_sym_packed: "int4-b128-sym", Packed, 1e-4;
    int4_b128_asym_packed: "int4-b128-asym", Packed, 1e-4;
    int4_acc4_packed: "int4-b32-acc4", Packed, 1e-4, INT8_ACT_LAST;
    int4_qdq_packed: "int4-qdq", Packed, 1e-4, INT8_ACT_LAST;
    int4_qdq_asym_packed: "int4-qdq-asym", Packed, 1e-4, INT8_ACT_LAST;
    int4_bias_packed: "int4-bias", Packed, INT16_ACT;
    int4_gidx_packed: "int4-gidx", Packed, INT16_ACT;
}

/// A `g_idx` that reorders rows across blocks (act-order GPTQ) is refused by name, not
/// computed wrongly: the int4 kernels keep each block's rows contiguous.
#[test]
fn matmul_nbits_with_act_order_g_idx_is_refused() {
    let proto = ort_files::act_order_g_idx_file();
    for backend in [Backend::Tract, Backend::Kernels] {
        match edge_llm::cpu::CpuModel::from_proto(proto.clone(), &backend.options()) {
            Err(e @ edge_llm::Error::UnsupportedOp { .. }) => {
                assert_eq!(e.name(), "IncompatibleModelError");
                assert!(e.to_string().contains("g_idx"), "{e}");
            }
            Err(e) => panic!("wrong error on {backend:?}: {e}"),
            Ok(_) => panic!("an act-order g_idx loaded on {backend:?}"),
        }
    }
}

/// One-input graph `proto` optimized for an f32 input of `shape` (edge-llm's kernels as
/// `options` and `q4_kernel` say) and run on the f32 values whose bit patterns are `x_bits`.
fn run_f32_bits(proto: &edge_llm::onnx::ModelProto, options: &edge_llm::cpu::CpuOptions, q4_kernel: bool, shape: [usize; 2], x_bits: &[u32]) -> tract_onnx::prelude::TVec<tract_onnx::prelude::TValue> {
    use tract_onnx::prelude::*;
    let model = edge_llm::cpu::onnx_with_kernels(options, q4_kernel)
        .model_for_proto_model(proto)
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x: Vec<f32> = x_bits.iter().map(|&b| f32::from_bits(b)).collect();
    model.run(tvec!(tract_ndarray::Array2::from_shape_vec(shape, x).unwrap().into_tensor().into())).unwrap()
}

/// `DynamicQuantizeLinear` → `MatMulInteger` (uint8 × int8, the pair `quantize_dynamic` puts
/// before every MatMul) computes onnxruntime's numbers bit for bit on both backends: ties of
/// `x / scale` and of the zero point to even, zero points clamped to 0 / 255, scale 1 for an
/// all-zero input (`tests/fixtures/ort/dynamic-quantize.*`, from
/// `scripts/make-ort-references.py --dynamic-quantize`).
#[test]
fn dynamic_quantize_and_matmul_integer_round_as_onnxruntime() {
    let onnx = include_bytes!("fixtures/ort/dynamic-quantize.onnx");
    let cases = ort_files::dynamic_quantize_cases();
    for backend in [Backend::Tract, Backend::Kernels] {
        let proto = edge_llm::onnx::decode(onnx).unwrap();
        for c in &cases {
            let out = run_f32_bits(&proto, &backend.options(), false, c.shape, &c.x_bits);
            let what = format!("{} on {backend:?}", c.name);
            let view = |i: usize| out[i].try_as_plain_ram().unwrap();
            assert_eq!(view(0).as_slice::<u8>().unwrap(), c.y.as_slice(), "{what}: y");
            assert_eq!(view(1).to_scalar::<f32>().unwrap().to_bits(), c.scale_bits, "{what}: y_scale {}", f32::from_bits(c.scale_bits));
            assert_eq!(*view(2).to_scalar::<u8>().unwrap(), c.zero_point, "{what}: y_zero_point");
            assert_eq!(view(3).as_slice::<i32>().unwrap(), c.acc.as_slice(), "{what}: MatMulInteger");
        }
    }
}

/// `MatMulNBits` with `accuracy_level` 4 rounds its activations to int8 exactly as onnxruntime
/// does (multiplier 127 / amax, ties to even): on blocks built to land on halves, outputs equal
/// onnxruntime's bit for bit; where amax makes the multiplier an ulp off the two-division form,
/// and on random rows, within 4e-3 (a flipped rounding moves an output by ≥ 0.039 there); with
/// and without zero points. One row takes the GEMV, several the GEMM. `make-ort-references.py --matmulnbits-int8` writes the
/// file and onnxruntime's outputs (each case also records how far float activations are).
#[test]
fn matmulnbits_int8_activations_round_as_onnxruntime() {
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        shape: [usize; 2],
        x_bits: Vec<u32>,
        y_bits: Vec<u32>,
        y_zp_bits: Vec<u32>,
        exact: bool,
    }
    #[derive(serde::Deserialize)]
    struct Cases {
        cases: Vec<Case>,
    }
    let cases: Cases = serde_json::from_str(include_str!("fixtures/ort/matmulnbits-int8.json")).unwrap();
    let proto = edge_llm::onnx::decode(include_bytes!("fixtures/ort/matmulnbits-int8.onnx")).unwrap();
    for c in &cases.cases {
        let out = run_f32_bits(&proto, &Backend::Kernels.options(), true, c.shape, &c.x_bits);
        for (i, (output, bits)) in [("y", &c.y_bits), ("y_zp (zero points)", &c.y_zp_bits)].into_iter().enumerate() {
            let y = out[i].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
            let want: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            if c.exact {
                assert_eq!(y, want, "{} {output}: not onnxruntime's outputs bit for bit", c.name);
            } else {
                let diff = max_abs_diff(&y, &want);
                assert!(diff <= 4e-3, "{} {output}: {diff} from onnxruntime", c.name);
            }
        }
    }
}

/// The real-size check, by hand: SmolLM2-135M-Instruct exported and converted by
/// `scripts/make-ort-references.py --smollm2 GGUF DIR` (6 chat prompts × 32 greedy tokens),
/// every file in DIR on both backends and packed (DIR also needs the model's
/// `model_config.json`) against onnxruntime. Prints each file's agreement, then fails if any
/// file did not load, or departed from onnxruntime's tokens where onnxruntime's own spread does
/// not explain it ([`ort_files::Agreement::unexplained_departures`]: a near-tie within
/// onnxruntime's own logit spread at that step, or a file onnxruntime leaves at that step
/// itself with optimizations off, both as `make-ort-references.py --self-agreement DIR NAME...`
/// records).
/// `EDGE_LLM_ORT_SMOLLM2=DIR cargo test --release --features pack --test ort_files -- --ignored --nocapture`
/// (`EDGE_LLM_ORT_ONLY=fp32,int8` picks files, `EDGE_LLM_ORT_BACKEND=Tract|Kernels|Packed` one backend).
#[cfg(feature = "pack")]
#[test]
#[ignore = "needs EDGE_LLM_ORT_SMOLLM2 (a folder written by scripts/make-ort-references.py --smollm2)"]
fn smollm2_files_give_onnxruntime_tokens() {
    let dir = std::path::PathBuf::from(std::env::var("EDGE_LLM_ORT_SMOLLM2").expect("EDGE_LLM_ORT_SMOLLM2 names the folder"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".json").map(str::to_string))
        .filter(|n| dir.join(format!("{n}.onnx")).exists())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no <name>.onnx + <name>.json pairs in {}", dir.display());
    // Packed as a user would: the folder's tokenizer, and its model_config.json (e.g. the one
    // `edge-llm-pack import-gguf` writes for the same GGUF); the CLI's default shard size.
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e} (the Packed backend needs it)", dir.join(name).display()));
    let pack = ort_files::PackInputs {
        tokenizer: read("tokenizer.json"),
        config: edge_llm::ModelConfig::from_json(&read("model_config.json")).unwrap(),
        shard_bytes: edge_llm::package::manifest::DEFAULT_SHARD_BYTES,
    };
    let only = std::env::var("EDGE_LLM_ORT_ONLY").ok();
    let mut failures = Vec::new();
    for name in names.iter().filter(|n| only.as_ref().is_none_or(|o| o.split(',').any(|x| x == n.as_str()))) {
        let reference: ort_files::Reference = serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let onnx = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        let backends = [Backend::Tract, Backend::Kernels, Backend::KernelsExact, Backend::Packed];
        let chosen = std::env::var("EDGE_LLM_ORT_BACKEND").ok();
        for backend in backends.into_iter().filter(|b| chosen.as_ref().is_none_or(|c| format!("{b:?}") == *c)) {
            let start = std::time::Instant::now();
            match ort_files::compare_with(&onnx, &reference, backend, &pack) {
                Ok(a) => {
                    eprintln!(
                        "SmolLM2 {name} on {backend:?}: {}/{} tokens as onnxruntime, per prompt {:?}; max |logit diff| prefill {:.3e}, last step {:.3e} ({:.0} s)",
                        a.same_tokens.iter().sum::<usize>(),
                        a.tokens,
                        a.same_tokens,
                        a.max_prefill_diff,
                        a.max_last_diff,
                        start.elapsed().as_secs_f32()
                    );
                    // Judged against onnxruntime's own spread: near-ties within how far its
                    // logits move between its two runs there, and files it leaves itself.
                    let unexplained = a.unexplained_departures(&reference);
                    let departures = a.departures(&reference);
                    let explained = departures.len() - unexplained.len();
                    let self_agreement: Option<usize> = reference.runs.iter().map(|r| r.self_agreement()).sum();
                    // Per departing prompt: (step, our margin, onnxruntime's own spread there).
                    let at: Vec<_> = departures.iter().map(|d| (d.step, d.margin, d.spread)).collect();
                    eprintln!(
                        "  departures {explained} explained, {} not; onnxruntime unoptimized vs default: {}; (step, margin, onnxruntime's spread) at each: {at:?}",
                        unexplained.len(),
                        self_agreement.map_or("not recorded".into(), |k| format!("{k}/{}", a.tokens)),
                    );
                    if !unexplained.is_empty() {
                        failures.push(format!("{name} on {backend:?}: {unexplained:#?}"));
                    }
                }
                Err(e) => {
                    eprintln!("SmolLM2 {name} on {backend:?}: FAILED to load or run: {e}");
                    failures.push(format!("{name} on {backend:?}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "departures or failures: {failures:#?}");
}
