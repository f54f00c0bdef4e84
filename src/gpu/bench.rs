//! Kernel benchmark setups (timed by the native `edge-llm-pack bench-gpu`; the library keeps
//! no clock so it stays wasm-clean): an int4 GEMV repeated in one submit, so the time per call
//! excludes submit and readback overhead.

use super::context::GpuContext;
use super::kernels::{self, Dispatch, GpuQ4, Pipelines};
use crate::quant::reference as qref;
use crate::Result;

/// `reps` int4 GEMVs `y = W x` with `W` `[n][k]` recorded into one command buffer.
pub struct GemvBench {
    pipes: Pipelines,
    dispatches: Vec<Dispatch>,
    y: wgpu::Buffer,
    readback: wgpu::Buffer,
    _w: GpuQ4,
    _x: wgpu::Buffer,
    /// Bytes one GEMV reads: packed nibbles, scales, zero points and x.
    pub bytes_per_call: u64,
    pub reps: usize,
}

impl GemvBench {
    pub fn new(ctx: &GpuContext, n: usize, k: usize, block_size: usize, symmetric: bool, reps: usize) -> Result<Self> {
        // Deterministic weights; their values do not change the time.
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect();
        let q = qref::quantize_q4(&w, n, k, block_size, symmetric);
        let x: Vec<f32> = (0..k).map(|i| (i % 7) as f32 - 3.0).collect();
        let gw = GpuQ4::upload(ctx, "bench_w", &q)?;
        let xb = ctx.storage_init("bench_x", &kernels::f32_bytes(&x))?;
        let y = ctx.storage("bench_y", (n * 4) as u64)?;
        let mut pipes = Pipelines::default();
        let dispatches = (0..reps).map(|_| gw.gemv(ctx, &mut pipes, &xb, &y, 1)).collect();
        let zp_bytes = q.packed_zero_points().map_or(0, |z| z.len());
        let bytes_per_call = (q.packed.len() + q.scales.len() * 4 + zp_bytes + k * 4) as u64;
        let readback = ctx.readback("bench_y", 4);
        Ok(GemvBench { pipes, dispatches, y, readback, _w: gw, _x: xb, bytes_per_call, reps })
    }

    /// Submit the `reps` GEMVs and wait until the GPU has finished them.
    pub async fn run(&self, ctx: &GpuContext) -> Result<()> {
        let mut enc = ctx.encoder();
        self.pipes.record(&mut enc, &self.dispatches);
        enc.copy_buffer_to_buffer(&self.y, 0, &self.readback, 0, 4);
        ctx.submit(enc);
        ctx.read(&self.readback, 4).await?;
        Ok(())
    }
}
