enable f16;
// The arithmetic type of gemv_rows.wgsl's and gemm_nbits.wgsl's products (`hf`): f16, where
// the device has `shader-f16` and the options ask for it (gpu::GpuOptions::precision). Only
// a weight's values (dequantized: scale included, so a sum is as large as the f32 one and
// stays in f16's range wherever the result does) times x's are f16, and their sums over at
// most 32 of them (a 16-byte chunk in the GEMV, a 32-wide k slice in the GEMM); those sums are
// added in f32. arith_f32.wgsl is the default.
alias hf = f16;
const ARITH_F16: bool = true;
