//! In Node: the third-party-made files of `tests/ort_files.rs` through the same body, on the
//! wasm build's default backend (edge-llm's SIMD128 int4/int8 kernels) and tract's ops, against
//! onnxruntime's committed results (the table is `tests/common/ort_files_wasm.rs`, shared with
//! the Chromium run in `tests/web_ort_files.rs`).
#![cfg(target_arch = "wasm32")]

#[macro_use]
#[path = "common/ort_files.rs"]
mod ort_files;

use ort_files::{check, Backend, INT16_ACT, INT8_ACT_LAST};
use wasm_bindgen_test::*;

include!("common/ort_files_wasm.rs");
