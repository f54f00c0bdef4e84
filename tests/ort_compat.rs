//! The tiny models run unchanged in onnxruntime too (the reference implementation of ONNX and of
//! `MatMulNBits` / `MatMulInteger`), and agree with our reference forward pass. Skipped, with
//! the reason printed, where `python3 -c 'import onnxruntime'` fails.
#![cfg(not(target_arch = "wasm32"))]

use std::process::Command;

use edge_llm::llama::onnx_export::{export, ExportOptions};
use edge_llm::llama::reference::{self, ActivationQuant, RefKvCache};
use edge_llm::quant::Precision;
use edge_llm::tiny;

fn ort_logits(model: &[u8], name: &str, ids: &[u32]) -> Option<Vec<f32>> {
    let dir = std::env::temp_dir().join(format!("edge-llm-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, model).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ort/run_logits.py");
    let out = Command::new("python3").arg(script).arg(&path).args(ids.iter().map(|i| i.to_string())).output().ok()?;
    assert!(out.status.success(), "onnxruntime failed on {name}: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn onnxruntime_runs_every_tiny_variant_and_agrees_with_the_reference() {
    let ok = Command::new("python3").args(["-c", "import onnxruntime"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("EDGE_LLM_NO_SKIP").is_none_or(|v| v != "1"), "onnxruntime is not importable by python3");
        eprintln!("SKIPPED: onnxruntime is not importable by python3 (scripts/setup.sh installs it)");
        return;
    }
    let cfg = tiny::config();
    let ids = [5u32, 80, 17, 200];
    // int4 with float activations (no `accuracy_level`): onnxruntime's default arithmetic.
    let float_act = |o: ExportOptions| ExportOptions { int8_activations: false, ..o };
    let variants = [
        ("fp32", ExportOptions::fp32(), ActivationQuant::None, 1e-4),
        ("fp16", ExportOptions::fp16(), ActivationQuant::None, 1e-3),
        ("int4-sym", float_act(ExportOptions::int4(32, true)), ActivationQuant::None, 1e-3),
        ("int4-asym", float_act(ExportOptions::int4(32, false)), ActivationQuant::None, 1e-3),
        ("int4-128", float_act(ExportOptions::int4(128, true)), ActivationQuant::None, 1e-3),
        // What the exporter writes by default: accuracy_level 4, onnxruntime rounds activations
        // to int8 per block as the reference models it.
        ("int4-sym-acc4", ExportOptions::int4(32, true), ActivationQuant::Int8Block32, 1e-3),
        ("int4-asym-acc4", ExportOptions::int4(32, false), ActivationQuant::Int8Block32, 1e-3),
        ("int8-emb", ExportOptions { linear: Precision::F32, lm_head: Precision::F32, ..ExportOptions::int8() }, ActivationQuant::None, 1e-3),
        // onnxruntime-genai's layout: GroupQueryAttention, (Skip)SimplifiedLayerNormalization.
        ("genai-fp32", ExportOptions::fp32().genai(), ActivationQuant::None, 1e-4),
        ("genai-int4", float_act(ExportOptions::int4(32, true)).genai(), ActivationQuant::None, 1e-3),
        // fp16 scales and float zero points behind a Cast (the packer's int4 recipe's layers;
        // the tied int4 embedding/head's scales too).
        ("int4-float-zp-f16", float_act(ExportOptions { q4_min: true, f16_scales: true, ..ExportOptions::int4(32, false) }), ActivationQuant::None, 1e-3),
        // accuracy_level 4 on float zero points: onnxruntime still computes on float activations.
        ("int4-float-zp-f16-acc4", ExportOptions { q4_min: true, f16_scales: true, embedding: Precision::F32, lm_head: Precision::F32, ..ExportOptions::int4(32, false) }, ActivationQuant::None, 1e-3),
        ("int8-block-f16", ExportOptions { f16_scales: true, ..ExportOptions::int8_block() }, ActivationQuant::None, 1e-3),
        ("int8-block-f16-acc4", ExportOptions { f16_scales: true, int8_activations: true, head_int8_activations: true, ..ExportOptions::int8_block() }, ActivationQuant::Int8Block32, 1e-3),
    ];
    for (name, opts, act, tol) in variants {
        let e = export(&cfg, &tiny::weights(), &opts);
        let got = ort_logits(&edge_llm::onnx::encode(&e.model), &format!("{name}.onnx"), &ids).unwrap();
        // An 8-bit head with `head_int8_activations` off has no `accuracy_level`: float activations.
        let head = if opts.lm_head == Precision::Int8 && !opts.head_int8_activations { ActivationQuant::None } else { act };
        let want = reference::forward_with_head(&cfg, &e.effective, &ids, &mut RefKvCache::default(), act, head).concat();
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        eprintln!("onnxruntime {name}: max |diff| vs reference = {d:e}");
        assert!(d < tol, "{name}: max |diff| = {d}");
    }
    // int8 linears: onnxruntime quantizes each activation tensor as DynamicQuantizeLinear does;
    // one token at a time the reference models it exactly.
    let e = export(&cfg, &tiny::weights(), &ExportOptions::int8());
    let got = ort_logits(&edge_llm::onnx::encode(&e.model), "int8.onnx", &ids[..1]).unwrap();
    let want = reference::forward_int8_activations(&cfg, &e.effective, &ids[..1], &mut RefKvCache::default()).concat();
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("onnxruntime int8: max |diff| vs reference = {d:e}");
    assert!(d < 1e-3, "int8: max |diff| = {d}");
}
