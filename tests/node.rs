//! In Node (wasm-bindgen-test-runner's default): the engine runs without any DOM.
#![cfg(target_arch = "wasm32")]

use std::sync::Arc;

use edge_llm::cpu::CpuModel;
use edge_llm::llama::reference::{self, RefKvCache};
use edge_llm::tiny;
use wasm_bindgen_test::*;

const FP32: &[u8] = include_bytes!("fixtures/tiny/model-fp32.onnx");

#[wasm_bindgen_test]
fn tract_fp32_logits_match_reference_in_node() {
    let prompt = [7u32, 8, 9, 10];
    let model = Arc::new(CpuModel::load(FP32).unwrap());
    let got = model.session().forward_all(&prompt).unwrap();
    let want = reference::forward(&tiny::config(), &tiny::weights(), &prompt, &mut RefKvCache::default()).concat();
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < 1e-4, "max |diff| = {d}");
}

/// Node exposes no WebGPU: `auto` (the JS default) loads on the CPU and says why, and `webgpu`
/// is a named error, not a panic (wgpu panics making an instance outside a window or worker).
#[wasm_bindgen_test]
async fn without_webgpu_auto_uses_the_cpu_and_webgpu_is_a_named_error() {
    use edge_llm::backend::BackendKind;
    use edge_llm::generate::EngineOptions;
    use edge_llm::package::Package;
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use prost::Message;
    async fn open(onnx: &[u8], backend: BackendKind) -> edge_llm::Result<edge_llm::Engine> {
        let tok = tiny::tokenizer_json();
        edge_llm::Engine::open_async(Package::loose(onnx, tok.as_bytes(), tiny::model_config()), &EngineOptions { backend, ..Default::default() }).await
    }
    // An int4 model the GPU backend runs: only the missing WebGPU keeps it on the CPU.
    let int4 = export(&tiny::config(), &tiny::weights(), &ExportOptions::int4(32, true)).model.encode_to_vec();
    let auto = open(&int4, BackendKind::Auto).await.unwrap().backend_info();
    assert_eq!(auto.name, "wasm", "{auto:?}");
    assert!(auto.reason.as_deref().is_some_and(|r| r.contains("no WebGPU")), "{auto:?}");
    let e = open(&int4, BackendKind::Webgpu).await.err().expect("no GPU in Node");
    assert_eq!(e.name(), "UnsupportedBackendError", "{e}");
}
