//! In headless Chromium: the third-party-made files of `tests/ort_files.rs` through the same
//! body, on the browser's default backend (edge-llm's wasm SIMD128 int4/int8 kernels) and
//! tract's ops, against onnxruntime's committed results.
#![cfg(target_arch = "wasm32")]

#[path = "common/ort_files.rs"]
mod ort_files;

use ort_files::{check, Backend, INT8_ACT_LAST};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Same files, backends and tolerances as the native `ort_tests!` in `tests/ort_files.rs`.
macro_rules! web_ort_tests {
    ($($test:ident: $file:literal, $backend:ident, $tol:expr $(, $last:expr)?;)*) => {$(
        #[wasm_bindgen_test]
        fn $test() {
            check($file, Backend::$backend, $tol, None$(.or(Some($last)))?);
        }
    )*};
}

web_ort_tests! {
    fp32_kernels_in_browser: "fp32", Kernels, 1e-4;
    fp16_kernels_in_browser: "fp16", Kernels, 3e-2;
    fp16_io_kernels_in_browser: "fp16-io", Kernels, 3e-2;
    int8_kernels_in_browser: "int8", Kernels, 1e-4;
    int8_tract_in_browser: "int8", Tract, 1e-4;
    int4_b32_sym_kernels_in_browser: "int4-b32-sym", Kernels, 1e-4;
    int4_b32_asym_kernels_in_browser: "int4-b32-asym", Kernels, 1e-4;
    int4_b128_asym_kernels_in_browser: "int4-b128-asym", Kernels, 1e-4;
    int4_acc4_kernels_in_browser: "int4-b32-acc4", Kernels, 1e-4, INT8_ACT_LAST;
    int4_qdq_kernels_in_browser: "int4-qdq", Kernels, 1e-4, INT8_ACT_LAST;
    int4_qdq_asym_kernels_in_browser: "int4-qdq-asym", Kernels, 1e-4, INT8_ACT_LAST;
    int4_bias_kernels_in_browser: "int4-bias", Kernels, 1e-4;
    int4_gidx_kernels_in_browser: "int4-gidx", Kernels, 1e-4;
}
