//! In headless Chromium: the third-party-made files of `tests/ort_files.rs` through the same
//! body, on the browser's default backend (edge-llm's wasm SIMD128 int4/int8 kernels) and
//! tract's ops, against onnxruntime's committed results.
#![cfg(target_arch = "wasm32")]

#[macro_use]
#[path = "common/ort_files.rs"]
mod ort_files;

use ort_files::{check, Backend, INT16_ACT, INT8_ACT_LAST};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

include!("common/ort_files_wasm.rs");

/// The same files on the WebGPU backend in Chromium (SwiftShader: every kernel through Tint),
/// loaded as they are (`Package::loose`, `backend: "webgpu"`): onnxruntime's greedy tokens, the
/// logits within the bounds the native GPU test holds (`ort_files::GPU_FILES`).
#[wasm_bindgen_test]
async fn onnxruntime_made_files_give_onnxruntimes_tokens_on_webgpu() {
    for (name, tol, last) in ort_files::GPU_FILES {
        ort_files::check_webgpu(name, tol, last).await;
    }
}
