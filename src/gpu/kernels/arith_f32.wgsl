// The arithmetic type of gemv_rows.wgsl's and gemm_nbits.wgsl's products (`hf`): f32, the
// default, onnxruntime's and the CPU backend's (the GEMV then scales a chunk's sum once).
// arith_f16.wgsl is the other choice (gpu::GpuOptions::precision, on devices with `shader-f16`).
alias hf = f32;
const ARITH_F16: bool = false;
