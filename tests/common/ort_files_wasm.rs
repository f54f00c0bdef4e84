// The wasm table of onnxruntime-made files, included by tests/web_ort_files.rs (Chromium) and
// tests/node_ort_files.rs (Node): same files, backends and tolerances as the native `ort_tests!`
// in tests/ort_files.rs. The includer imports `check`, `Backend`, `INT8_ACT_LAST`, `INT16_ACT` and wasm_bindgen_test.

ort_tests! {
    #[wasm_bindgen_test]
    fp32_kernels: "fp32", Kernels, 1e-4;
    fp16_kernels: "fp16", Kernels, 1.5e-2;
    fp16_io_kernels: "fp16-io", Kernels, 1.5e-2;
    int8_kernels: "int8", Kernels, 1e-4;
    int8_tract: "int8", Tract, 1e-4;
    int4_b32_sym_kernels: "int4-b32-sym", Kernels, INT16_ACT;
    int4_b32_sym_exact: "int4-b32-sym", KernelsExact, 1e-4;
    int4_b32_asym_kernels: "int4-b32-asym", Kernels, INT16_ACT;
    int4_b32_asym_exact: "int4-b32-asym", KernelsExact, 1e-4;
    int4_b128_asym_kernels: "int4-b128-asym", Kernels, INT16_ACT;
    int4_b128_asym_exact: "int4-b128-asym", KernelsExact, 1e-4;
    int4_acc4_kernels: "int4-b32-acc4", Kernels, 1e-4, INT8_ACT_LAST;
    int4_qdq_kernels: "int4-qdq", Kernels, 1e-4, INT8_ACT_LAST;
    int4_qdq_asym_kernels: "int4-qdq-asym", Kernels, 1e-4, INT8_ACT_LAST;
    int4_bias_kernels: "int4-bias", Kernels, INT16_ACT;
    int4_bias_exact: "int4-bias", KernelsExact, 1e-4;
    int4_gidx_kernels: "int4-gidx", Kernels, INT16_ACT;
    int4_gidx_exact: "int4-gidx", KernelsExact, 1e-4;
}
