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
