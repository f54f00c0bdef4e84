//! Calibrated int4 in `quantize`: activation statistics from running the fp32 ONNX graph
//! (`calibrate::importance`) weight each block's scale search, which lowers the output error
//! on inputs the calibration never saw when the input channels differ in size (as real
//! activations do). On a synthetic encoder: `Gather` of a table, a per-channel gain, one
//! constant-weight `MatMul`.
#![cfg(all(feature = "pack", not(target_arch = "wasm32")))]

use std::path::Path;
use std::process::Command;

use edge_llm::onnx::{Dim, GraphBuilder, ModelProto};
use edge_llm::quant::Precision;
use edge_llm::quantize::{quantize, QuantizeOptions};
use edge_llm::{calibrate, tiny, Error};
use tract_onnx::prelude::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const K: usize = 64;
const N: usize = 48;

/// Deterministic values in [-1, 1).
fn noise(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `input_ids [1, S]` -> `MatMul(Gather(emb, ids) * gain, proj) [1, S, N]`; the gain spans
/// 0.05 .. 20 over the channels (in a scrambled order), so a few channels dominate the output.
fn encoder(vocab: usize) -> ModelProto {
    use tract_onnx::pb::tensor_proto::DataType;
    let mut g = GraphBuilder::default();
    let ids = g.input("input_ids", DataType::Int64, &[Dim::Fixed(1), Dim::Named("S")]);
    let emb = g.init_f32("emb.weight", &[vocab, K], &noise(1, vocab * K));
    let gain: Vec<f32> = (0..K).map(|j| 0.05 * 400f32.powf(((j * 37) % K) as f32 / (K - 1) as f32)).collect();
    let gain = g.init_f32("gain", &[K], &gain);
    let proj = g.init_f32("proj.weight", &[K, N], &noise(2, K * N));
    let x = g.node("Gather", &[&emb, &ids], vec![edge_llm::onnx::attr_i("axis", 0)]);
    let x = g.node("Mul", &[&x, &gain], vec![]);
    let y = g.node("MatMul", &[&x, &proj], vec![]);
    g.output(&y, "last_hidden_state", DataType::Float, &[Dim::Fixed(1), Dim::Named("S"), Dim::Fixed(N as i64)]);
    g.finish("synthetic-encoder", &[])
}

/// The graph's output on each of `samples`, flattened, with edge-llm's kernels.
fn run(model: &ModelProto, samples: &[Vec<u32>]) -> Vec<f32> {
    let mut m = edge_llm::cpu::onnx_with_kernels(&Default::default(), true).model_for_proto_model(model).unwrap();
    let s = m.symbols.sym("S");
    m.set_input_fact(0, InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), s.to_dim()])).unwrap();
    let plan = m.into_optimized().unwrap().into_runnable().unwrap();
    let mut out = Vec::new();
    for ids in samples {
        let t = Tensor::from_shape(&[1, ids.len()], &ids.iter().map(|t| *t as i64).collect::<Vec<_>>()).unwrap();
        let y = plan.run(tvec![t.into()]).unwrap();
        out.extend_from_slice(y[0].to_plain_array_view::<f32>().unwrap().as_slice().unwrap());
    }
    out
}

fn token_windows(seed: u64, count: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..count).map(|i| noise(seed + i as u64, 12).iter().map(|v| ((v + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32).collect()).collect()
}

#[test]
fn calibrated_int4_lowers_the_output_error_on_held_out_inputs() {
    let vocab = tiny::config().vocab_size;
    let fp32 = encoder(vocab);
    let imp = calibrate::importance(&fp32, &token_windows(100, 64, vocab), |_| {}).unwrap();
    // One linear (the table is a Gather, not a matmul), one value per input channel, ranked as
    // the gain ranks them.
    assert_eq!(imp.keys().collect::<Vec<_>>(), ["proj"]);
    let v = &imp["proj"];
    assert_eq!(v.len(), K);
    let (lo, hi) = ((0..K).find(|j| (j * 37) % K == 0).unwrap(), (0..K).find(|j| (j * 37) % K == K - 1).unwrap());
    assert!(v[hi] > 1e4 * v[lo], "importance of the largest-gain channel {} vs the smallest {}", v[hi], v[lo]);

    let held_out = token_windows(9_000, 32, vocab);
    let want = run(&fp32, &held_out);
    // Both int4 forms that search their scales: symmetric and float zero points.
    for (label, q4_min) in [("symmetric", false), ("float zero points", true)] {
        let error = |importance: Option<calibrate::Importance>| {
            let opts = QuantizeOptions {
                precision: Precision::Int4,
                q4_search: true,
                q4_min,
                importance: importance.map(std::sync::Arc::new),
                // The table stays fp32: only the matmul's rounding is compared.
                overrides: vec![("emb".into(), Precision::F32)],
                ..Default::default()
            };
            let (q, report) = quantize(fp32.clone(), &opts).unwrap();
            assert_eq!(report.rewritten, [("proj.weight".to_string(), Precision::Int4)]);
            let got = run(&q, &held_out);
            got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>()
        };
        let (plain, calibrated) = (error(None), error(Some(imp.clone())));
        eprintln!("{label}: relative output error {plain:.3e} uncalibrated, {calibrated:.3e} calibrated");
        assert!(calibrated < 0.8 * plain, "{label}: calibrated {calibrated:.3e} vs uncalibrated {plain:.3e}");
    }
}

#[test]
fn a_calibration_text_without_enough_sentences_is_a_named_error() {
    let tok = edge_llm::tokenizer::Tokenizer::from_json(&std::fs::read(format!("{ROOT}/tests/fixtures/tiny/tokenizer.json")).unwrap()).unwrap();
    for text in ["", "Too short.", "One sentence that is long enough to count. And another one."] {
        let e = calibrate::sentence_samples(&tok, text, 500).unwrap_err();
        assert!(matches!(&e, Error::InvalidOption { option: "calibration text", reason } if reason.contains("need 500")), "{e:?}");
    }
    let ok = calibrate::sentence_samples(&tok, "One sentence that is long enough to count. And another one here.", 2).unwrap();
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|s| !s.is_empty()));
}

/// `edge-llm-pack quantize --calibrate`: a missing or empty text fails naming it; a real text
/// calibrates the graph's one linear.
#[test]
fn quantize_cli_calibrates_from_a_text_and_names_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("edge-llm-calibrate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model.onnx");
    std::fs::write(&model, edge_llm::onnx::encode(&encoder(tiny::config().vocab_size))).unwrap();
    std::fs::copy(Path::new(ROOT).join("tests/fixtures/tiny/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let quantize = |text: &Path, samples: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_edge-llm-pack"))
            .arg("quantize")
            .arg(&model)
            .arg(dir.join("out.onnx"))
            .args(["--precision", "int4", "--override", "emb=fp32", "--calibration-samples", samples, "--calibrate"])
            .arg(text)
            .output()
            .unwrap();
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let (ok, out) = quantize(&dir.join("missing.txt"), "500");
    assert!(!ok && out.contains("missing.txt"), "{out}");
    let (ok, out) = quantize(&dir.join("empty.txt"), "500");
    assert!(!ok && out.contains("calibration text") && out.contains("0 sentences"), "{out}");
    let (ok, out) = quantize(&Path::new(ROOT).join("tests/fixtures/eval/prose.txt"), "20");
    assert!(ok && out.contains("calibrated 1 linears on 20 samples"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
