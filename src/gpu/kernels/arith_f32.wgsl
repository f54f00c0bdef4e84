// The arithmetic type of gemv_rows.wgsl's and gemm_nbits.wgsl's products (`hf`): f32, the
// default, onnxruntime's and the CPU backend's. arith_f16.wgsl is the other choice
// (gpu::GpuOptions::f16, on devices with `shader-f16`).
alias hf = f32;
