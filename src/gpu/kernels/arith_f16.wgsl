enable f16;
// The arithmetic type of gemv_rows.wgsl's and gemm_nbits.wgsl's products (`hf`): f16, where
// the device has `shader-f16` and the options ask for it (gpu::GpuOptions::f16). Only a
// weight's values times x's are f16, and their sums over at most 32 of them (a 16-byte chunk
// of int4 in the GEMV, a 32-wide k slice in the GEMM); those sums are added, scaled by the
// block's scale, in f32. arith_f32.wgsl is the default.
alias hf = f16;
