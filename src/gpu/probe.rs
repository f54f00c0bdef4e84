//! `backend: "auto"`'s probe and the GPU benchmark's GEMV: `reps` block-quantized GEMVs in one
//! submit, timed from submit to readback.

use super::context::GpuContext;
use super::kernels::{self, Dispatch, Pipelines};
use super::twin::AttnShape;
use super::decode::ModelShapes;
use super::nbits::{BlockSpec, BlockWeight, Field, GpuNBits, NormInput, RowsShape, ZeroPointKind, ZeroPoints};
use super::{GemvKernel, PrefillKernel};
use crate::Result;
use std::sync::Arc;

/// `reps` int4 GEMVs `y = W x` with `W` `[n][k]` (or GEMMs over `rows` rows of `x`: the
/// prefill's tiled kernel) recorded into one command buffer. Several benches can share one
/// uploaded weight ([`GemvBench::per_kernel`]).
pub struct GemvBench {
    ops: Arc<Operands>,
    /// Rows of x each product takes (1: the GEMV), at most the operands'.
    rows: usize,
    pipes: Pipelines,
    dispatches: Vec<Dispatch>,
    pub reps: usize,
}

/// A bench's buffers: the deterministic weight, x and y of `rows` rows, the GEMM's step state
/// and y's readback.
struct Operands {
    n: usize,
    k: usize,
    rows: usize,
    w: GpuNBits,
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    state: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// The weight's packed values, scales and zero points.
    weight_bytes: u64,
}

impl Operands {
    fn upload(ctx: &GpuContext, n: usize, k: usize, rows: usize, block_size: usize, symmetric: bool) -> Result<Arc<Self>> {
        // Deterministic weights; their values do not change the time.
        let spec = BlockSpec { n, k, bits: 4, block_size, zero_points: if symmetric { ZeroPointKind::Middle } else { ZeroPointKind::Int }, f16_params: false, bias: false };
        let blocks = n * spec.blocks();
        let q = BlockWeight {
            spec,
            data: (0..n * spec.row_bytes(Field::Data)).map(|i| (i * 2_654_435_761 >> 7) as u8).collect(),
            scales: (0..blocks).map(|i| ((i * 7919) % 1000) as f32 / 1e5 + 1e-3).collect(),
            zero_points: if symmetric { ZeroPoints::Middle } else { ZeroPoints::Int((0..blocks).map(|i| (i % 16) as u8).collect()) },
            bias: Vec::new(),
        };
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let w = GpuNBits::upload(ctx, "bench_w", &q)?;
        let weight = |f: Field| (n * q.spec.row_bytes(f)) as u64;
        Ok(Arc::new(Operands {
            n,
            k,
            rows,
            w,
            x: ctx.storage_init("bench_x", &kernels::f32_bytes(&x))?,
            y: ctx.storage("bench_y", (rows * n * 4) as u64)?,
            // The step state the GEMM reads its row count from: `{ pos: 0, rows }`.
            state: ctx.storage_init("bench_state", &[0u32, rows as u32].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())?,
            readback: ctx.readback("bench_y", 4),
            weight_bytes: weight(Field::Data) + weight(Field::Scales) + weight(Field::ZeroPoints),
        }))
    }

    /// Bytes a product over `rows` rows of x reads: the weight and x.
    fn bytes_per_call(&self, rows: usize) -> u64 {
        self.weight_bytes + (rows * self.k * 4) as u64
    }
}

impl GemvBench {
    pub fn new(ctx: &GpuContext, n: usize, k: usize, block_size: usize, symmetric: bool, reps: usize) -> Result<Self> {
        Self::with_rows(ctx, n, k, 1, block_size, symmetric, reps)
    }

    /// `reps` GEMMs `y = x W^T` over `rows` rows of `x` (one row: the GEMV).
    pub fn with_rows(ctx: &GpuContext, n: usize, k: usize, rows: usize, block_size: usize, symmetric: bool, reps: usize) -> Result<Self> {
        Self::with_kernel(ctx, n, k, rows, block_size, symmetric, reps, ctx.gemv_kernel())
    }

    /// [`GemvBench::with_rows`] with the GEMV kernel `gemv` (one row).
    #[allow(clippy::too_many_arguments)]
    pub fn with_kernel(ctx: &GpuContext, n: usize, k: usize, rows: usize, block_size: usize, symmetric: bool, reps: usize, gemv: GemvKernel) -> Result<Self> {
        Ok(Self::over(ctx, Operands::upload(ctx, n, k, rows, block_size, symmetric)?, rows, reps, gemv, PrefillKernel::Auto))
    }

    /// One GEMV bench (block 32, symmetric) of `reps` calls per kernel of `gemvs`, all over one
    /// uploaded `[n][k]` weight.
    pub fn per_kernel(ctx: &GpuContext, n: usize, k: usize, reps: usize, gemvs: &[GemvKernel]) -> Result<Vec<Self>> {
        let ops = Operands::upload(ctx, n, k, 1, 32, true)?;
        Ok(gemvs.iter().map(|&g| Self::over(ctx, ops.clone(), 1, reps, g, PrefillKernel::Auto)).collect())
    }

    /// One bench (block 32, symmetric) of `reps` products over `rows` rows of x per prefill
    /// kernel of `prefills`, all over one uploaded `[n][k]` weight.
    pub fn per_prefill(ctx: &GpuContext, n: usize, k: usize, rows: usize, reps: usize, prefills: &[PrefillKernel]) -> Result<Vec<Self>> {
        let ops = Operands::upload(ctx, n, k, rows, 32, true)?;
        Ok(prefills.iter().map(|&f| Self::over(ctx, ops.clone(), rows, reps, ctx.gemv_kernel(), f)).collect())
    }

    /// Two benches of `reps` decode GEMVs over one uploaded `[n][k]` weight (block 32), each
    /// reading the RMSNorm of x plus a projection as a decode step's q/k/v or gate/up product
    /// does: with the residual add and the norm fused in (`gemv_rows_x_norm.wgsl`), then with
    /// `add_rms_norm.wgsl` before each GEMV. `None` where the context's decode GEMV for the
    /// weight is not the rows kernel (nothing to fuse into).
    pub fn per_norm(ctx: &GpuContext, n: usize, k: usize, reps: usize) -> Result<Option<[Self; 2]>> {
        let ops = Operands::upload(ctx, n, k, 1, 32, true)?;
        let o = &*ops;
        let row: Vec<f32> = (0..k).map(|i| ((i % 5) as f32 - 2.0) * 0.25).collect();
        let (resid, gain) = (ctx.storage_init("bench_resid", &kernels::f32_bytes(&row))?, ctx.storage_init("bench_gain", &kernels::f32_bytes(&row))?);
        let (x_sum, xn) = (ctx.storage("bench_x_sum", (k * 4) as u64)?, ctx.storage("bench_xn", (k * 4) as u64)?);
        let norm = NormInput { x: &o.x, resid: &resid, gain: &gain, x_sum: &x_sum, eps: 1e-5 };
        let mut fused_pipes = Pipelines::default();
        let mut fused = Vec::new();
        for _ in 0..reps {
            match o.w.gemv_norm(ctx, &mut fused_pipes, &o.state, norm, &o.y) {
                Some(d) => fused.extend(d),
                None => return Ok(None),
            }
        }
        let mut pipes = Pipelines::default();
        let mut separate = Vec::new();
        for _ in 0..reps {
            separate.push(kernels::add_rms_norm(ctx, &mut pipes, k, norm, &xn));
            separate.extend(o.w.gemv(ctx, &mut pipes, &o.state, &xn, &o.y));
        }
        // The norm's buffers are held by the bind groups.
        let bench = |pipes, dispatches| GemvBench { ops: ops.clone(), rows: 1, pipes, dispatches, reps };
        Ok(Some([bench(fused_pipes, fused), bench(pipes, separate)]))
    }

    /// This bench's weight and buffers, `reps` calls of `gemv` (one row).
    pub fn again(&self, ctx: &GpuContext, reps: usize, gemv: GemvKernel) -> Self {
        Self::over(ctx, self.ops.clone(), 1, reps, gemv, PrefillKernel::Auto)
    }

    /// `reps` products over the first `rows` rows of `ops`'s x: the GEMV `gemv` for one, the
    /// prefill's product `prefill` for more (the grid is recorded for `rows`; the step state
    /// says the operands' rows, which a GEMV over one row does not read past).
    fn over(ctx: &GpuContext, ops: Arc<Operands>, rows: usize, reps: usize, gemv: GemvKernel, prefill: PrefillKernel) -> Self {
        assert!(rows == 1 || rows == ops.rows, "a bench over {rows} of {} rows", ops.rows);
        let mut pipes = Pipelines::default();
        let o = &*ops;
        let product = |pipes: &mut Pipelines| {
            if rows == 1 {
                o.w.gemv_with(ctx, pipes, gemv, &o.state, &o.x, &o.y)
            } else {
                o.w.gemm_with(ctx, pipes, prefill, &o.state, &o.x, &o.y)
            }
        };
        let dispatches = (0..reps).flat_map(|_| product(&mut pipes)).collect();
        GemvBench { ops, rows, pipes, dispatches, reps }
    }

    /// Bytes one product reads: packed values, scales, zero points and x's rows.
    pub fn bytes_per_call(&self) -> u64 {
        self.ops.bytes_per_call(self.rows)
    }

    /// The weight's shape `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.ops.n, self.ops.k)
    }

    /// Submit the `reps` GEMVs and wait until the GPU has finished them.
    pub async fn run(&self, ctx: &GpuContext) -> Result<()> {
        let o = &*self.ops;
        let mut enc = ctx.encoder();
        self.pipes.record(&mut enc, &self.dispatches, self.rows as u32);
        enc.copy_buffer_to_buffer(&o.y, 0, &o.readback, 0, 4);
        ctx.submit(enc);
        ctx.read(&o.readback, 4).await?;
        Ok(())
    }
}

/// A decode step's attention (one query row) over a resident cache of deterministic keys and
/// values, by the whole kernel (one workgroup per query head) and the split one
/// ([`kernels::attention_split`]), each with RoPE and the cache append fused in as a decode
/// step runs them, `reps` calls per submit: what the kernel benchmark times and
/// [`tune_attention`] chooses between.
pub struct AttentionBench {
    pub shape: AttnShape,
    pub reps: usize,
    pipes: Pipelines,
    whole: Dispatch,
    split: [Dispatch; 2],
    /// The step state (its position written before each run), the output and its readback;
    /// the other buffers are held by the bind groups.
    state: wgpu::Buffer,
    out: wgpu::Buffer,
    readback: wgpu::Buffer,
}

impl AttentionBench {
    /// Upload a cache of `shape.max_ctx` positions; heads wider than
    /// [`kernels::ATTENTION_MAX_HEAD_DIM`] have no split kernel.
    pub fn new(ctx: &GpuContext, shape: AttnShape, reps: usize) -> Result<Self> {
        let AttnShape { heads, kv_heads, head_dim, max_ctx } = shape;
        if head_dim > kernels::ATTENTION_MAX_HEAD_DIM {
            return Err(crate::Error::Inference(format!("attention bench: heads of {head_dim} are wider than the split kernel's {}", kernels::ATTENTION_MAX_HEAD_DIM)));
        }
        let kv = kv_heads * max_ctx * head_dim;
        let noise = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 2_654_435_761 + seed) % 1_000_003) as f32 / 1_000_003.0 - 0.5).collect() };
        let q = ctx.storage_init("bench_q", &kernels::f32_bytes(&noise((heads + 2 * kv_heads) * head_dim, 1)))?;
        let (kc, vc) = (ctx.storage_init("bench_kcache", &kernels::f32_bytes(&noise(kv, 2)))?, ctx.storage_init("bench_vcache", &kernels::f32_bytes(&noise(kv, 3)))?);
        let scores = ctx.storage("bench_scores", (4 * heads * max_ctx) as u64)?;
        let part = ctx.storage("bench_part", 4 * kernels::attention_part_floats(shape) as u64)?;
        let out = ctx.storage("bench_out", (4 * heads * head_dim) as u64)?;
        let state = ctx.storage("bench_state", 8)?;
        let mut pipes = Pipelines::default();
        // As a decode step runs them: RoPE and the cache append fused in.
        let (cos, sin) = super::twin::rope_tables(head_dim, max_ctx, 10000.0);
        let (cos, sin) = (ctx.storage_init("bench_cos", &kernels::f32_bytes(&cos))?, ctx.storage_init("bench_sin", &kernels::f32_bytes(&sin))?);
        let bufs = |scratch| kernels::AttnBuffers { state: &state, q: &q, kcache: &kc, vcache: &vc, scratch, out: &out, cos: &cos, sin: &sin };
        let whole = kernels::attention(ctx, &mut pipes, shape, bufs(&scores), kernels::Rope::Fused);
        let split = kernels::attention_split(ctx, &mut pipes, shape, bufs(&part), kernels::Rope::Fused);
        let readback = ctx.readback("bench_out", 4);
        Ok(AttentionBench { shape, reps, pipes, whole, split, state, out, readback })
    }

    /// Bytes of cached keys and values one call at `pos` reads (f32): the whole kernel its kv
    /// head's for every query head, the split one once per workgroup of
    /// [`kernels::attention_heads`].
    pub fn bytes(&self, split: bool, pos: usize) -> u64 {
        let AttnShape { heads, kv_heads, head_dim, .. } = self.shape;
        let per_read = if split { kernels::attention_heads(heads / kv_heads) } else { 1 };
        (2 * 4 * (heads / per_read) * head_dim * (pos + 1)) as u64
    }

    /// Submit `reps` calls of one kernel for a row at `pos` (below `max_ctx`) and wait until
    /// the GPU has finished them.
    pub async fn run(&self, ctx: &GpuContext, split: bool, pos: usize) -> Result<()> {
        ctx.write(&self.state, 0, &[pos as u32, 1].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>());
        let mut enc = ctx.encoder();
        let one: &[Dispatch] = if split { &self.split } else { std::slice::from_ref(&self.whole) };
        self.pipes.record(&mut enc, std::iter::repeat_n(one, self.reps).flatten(), 1);
        enc.copy_buffer_to_buffer(&self.out, 0, &self.readback, 0, 4);
        ctx.submit(enc);
        ctx.read(&self.readback, 4).await?;
        Ok(())
    }
}

/// What [`tune_attention`] measured: at each context length (a decode step at position
/// `len - 1`), milliseconds per call of the whole kernel and of the split one; and the length
/// from which the split runs (`usize::MAX`: never).
#[derive(Debug, Clone)]
pub struct AttentionTuning {
    pub shape: AttnShape,
    pub timings: Vec<(usize, f64, f64)>,
    pub split_from: usize,
}

impl AttentionTuning {
    pub fn says(&self) -> String {
        let all: Vec<String> = self.timings.iter().map(|(len, whole, split)| format!("{len}: {whole:.3}/{split:.3}")).collect();
        let chosen = match self.split_from {
            usize::MAX => "never split".to_string(),
            n => format!("split from {n} positions"),
        };
        format!("decode attention tuned to {chosen} (ms whole/split by context length: {})", all.join(", "))
    }
}

/// Context lengths [`tune_attention`] times: 64, 128, ... up to the cache's and 4096.
pub fn attention_tuning_lengths(max_ctx: usize) -> Vec<usize> {
    std::iter::successors(Some(64), |l| Some(l * 2)).take_while(|&l| l <= max_ctx.min(4096)).collect()
}

/// Time a decode step's attention at `shape` by both kernels at each of
/// [`attention_tuning_lengths`] (each the best of three submits of [`ATTENTION_TUNING_REPS`]
/// calls after a warm-up), over one uploaded cache; the split runs from the shortest length
/// from which it was faster at every length timed (never, if it lost at the longest). Sets
/// nothing itself. On a GPU a few milliseconds plus three pipelines.
pub async fn tune_attention(ctx: &GpuContext, shape: AttnShape, now: fn() -> f64) -> Result<AttentionTuning> {
    let lengths = attention_tuning_lengths(shape.max_ctx);
    let mut timings = Vec::with_capacity(lengths.len());
    // A cache shorter than the first length: nothing timed, never split.
    let Some(&longest) = lengths.last() else { return Ok(AttentionTuning { shape, timings, split_from: usize::MAX }) };
    let bench = AttentionBench::new(ctx, AttnShape { max_ctx: longest, ..shape }, ATTENTION_TUNING_REPS)?;
    for &len in &lengths {
        let whole = best_of_three(async || bench.run(ctx, false, len - 1).await, now, f64::INFINITY).await?;
        let split = best_of_three(async || bench.run(ctx, true, len - 1).await, now, f64::INFINITY).await?;
        timings.push((len, whole / ATTENTION_TUNING_REPS as f64, split / ATTENTION_TUNING_REPS as f64));
    }
    let losing = timings.iter().rposition(|t| t.2 >= t.1);
    let split_from = match losing {
        None => timings.first().map_or(usize::MAX, |t| t.0),
        Some(i) => timings.get(i + 1).map_or(usize::MAX, |t| t.0),
    };
    Ok(AttentionTuning { shape, timings, split_from })
}

/// Calls per submit [`tune_attention`] times.
pub const ATTENTION_TUNING_REPS: usize = 8;

/// What the probe measured on the GPU: a submit's fixed cost (submit, readback) and one
/// int4 GEMV of `bytes` (weights, scales and input).
#[derive(Debug, Clone, Copy)]
pub struct GpuProbe {
    pub latency_ms: f64,
    pub gemv_ms: f64,
    pub bytes: u64,
}

/// GEMVs repeated in the probe's long submit.
const PROBE_REPS: usize = 8;

/// Time int4 GEMVs of `[n][k]` (block 32) on `ctx` with `now` (milliseconds): one GEMV a
/// submit, and [`PROBE_REPS`] in one submit, each the fastest of three after a warm-up
/// (pipeline compilation; the fastest: a busy machine's stalls only add); the GEMV is their
/// difference per call, the latency what one submit costs beyond its GEMV.
pub async fn time_gemv(ctx: &GpuContext, n: usize, k: usize, now: fn() -> f64) -> Result<GpuProbe> {
    let one = GemvBench::new(ctx, n, k, 32, true, 1)?;
    let many = one.again(ctx, PROBE_REPS, ctx.gemv_kernel());
    let t_one = best_of_three(async || one.run(ctx).await, now, f64::INFINITY).await?;
    let t_many = best_of_three(async || many.run(ctx).await, now, f64::INFINITY).await?;
    let gemv_ms = (t_many - t_one).max(0.0) / (PROBE_REPS - 1) as f64;
    Ok(GpuProbe { latency_ms: (t_one - gemv_ms).max(0.0), gemv_ms, bytes: one.bytes_per_call() })
}

/// A tuning's time of `run` (one submit and its readback): after a warm-up submit (pipeline compilation), the fastest of
/// three submits, in milliseconds; or the first, when it is already over `cut` (twice the
/// fastest candidate so far: this one has lost, and a slow kernel is not run three more times
/// during a load).
async fn best_of_three(run: impl AsyncFn() -> Result<()>, now: fn() -> f64, cut: f64) -> Result<f64> {
    run().await?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = now();
        run().await?;
        best = best.min(now() - t0);
        if best > cut {
            break;
        }
    }
    Ok(best)
}

/// [`best_of_three`]'s `cut` after `timings` (milliseconds per call of the candidates timed so
/// far) for a bench of `reps` calls.
fn cut_after(timings: impl Iterator<Item = f64>, reps: usize) -> f64 {
    2.0 * timings.fold(f64::INFINITY, f64::min) * reps as f64
}

/// `auto`'s estimate of a GPU decode step ([`estimate_step`]), in milliseconds: its kernels,
/// and a submit's fixed cost with its readback (`gemv.latency_ms`) that the greedy steps
/// chained in one submit share ([`StepEstimate::ms`]).
#[derive(Debug, Clone, Copy)]
pub struct StepEstimate {
    pub kernels_ms: f64,
    /// The probe-shaped GEMV it scaled, and how many of them the step's bytes amount to.
    pub gemv: GpuProbe,
    pub scale: f64,
    /// Dispatches the step records beyond those GEMVs, and what each is charged.
    pub extra_dispatches: usize,
    pub dispatch_ms: f64,
}

impl StepEstimate {
    /// A submit's fixed cost and its readback.
    pub fn submit_ms(&self) -> f64 {
        self.gemv.latency_ms
    }

    /// A token's time where a submit chains `ahead` greedy steps beyond the first
    /// ([`super::GpuOptions::decode_ahead`]): its kernels and its share of the submit.
    pub fn ms(&self, ahead: usize) -> f64 {
        self.submit_ms() / (1 + ahead) as f64 + self.kernels_ms
    }
}

/// Rows of the GEMV whose time [`estimate_step`] charges a dispatch: a few workgroups, so its
/// time is the launch and barrier rather than bytes.
pub const TINY_ROWS: usize = 64;

/// Estimate a GPU decode step of a Llama of `cfg`'s heads and `shapes`' weights (the bytes it
/// reads: [`ModelShapes::decode_bytes`]):
/// an int4 GEMV at the feed-forward shape `[intermediate][hidden]` timed ([`time_gemv`]: its
/// time and a submit's fixed cost with the readback) and scaled to the step's bytes, plus the
/// step's dispatches beyond those GEMVs ([`ModelShapes::decode_dispatches`]: small linears,
/// norms, attention with RoPE; each a launch and a barrier whatever its bytes) at a
/// [`TINY_ROWS`]-row GEMV's time each; and the submit's fixed cost apart, which the greedy
/// steps chained in it share ([`StepEstimate::ms`]).
pub async fn estimate_step(ctx: &GpuContext, cfg: &crate::model::LlamaConfig, shapes: &ModelShapes, now: fn() -> f64) -> Result<StepEstimate> {
    let step_bytes = shapes.decode_bytes();
    let (n, k) = (cfg.intermediate_size.max(1), cfg.hidden_size.div_ceil(32).max(1) * 32);
    let gemv = time_gemv(ctx, n, k, now).await?;
    let tiny = time_gemv(ctx, TINY_ROWS, k, now).await?;
    let scale = step_bytes as f64 / gemv.bytes as f64;
    let extra_dispatches = shapes.decode_dispatches(cfg, ctx).saturating_sub(scale.ceil() as usize);
    let kernels_ms = gemv.gemv_ms * scale + tiny.gemv_ms * extra_dispatches as f64;
    Ok(StepEstimate { kernels_ms, gemv, scale, extra_dispatches, dispatch_ms: tiny.gemv_ms })
}

/// What [`tune_rows`] measured: each candidate [`RowsShape`] with the `gemv_rows.wgsl` shape it
/// gives the timed weight (lanes, rows) and its milliseconds per GEMV, fastest first.
#[derive(Debug, Clone)]
pub struct RowsTuning {
    pub n: usize,
    pub k: usize,
    pub timings: Vec<(RowsShape, (u32, u32), f64)>,
}

impl RowsTuning {
    /// The fastest candidate.
    pub fn best(&self) -> RowsShape {
        self.timings[0].0
    }

    pub fn says(&self) -> String {
        let (shape, (lanes, rows), ms) = self.timings[0];
        let slowest = self.timings.last().map_or(ms, |t| t.2);
        // The fastest with the other reduction, where one was timed.
        let other = self.timings.iter().find(|t| t.0.shuffles != shape.shuffles).map_or(String::new(), |(o, (l, r), ms)| {
            format!("; fastest {}: rows:{l}x{r} {ms:.3} ms", if o.shuffles { "by shuffles" } else { "by the barrier tree" })
        });
        format!(
            "decode GEMV tuned to {shape} (rows:{lanes}x{rows} at [{}][{}]: {:.3} ms, the slowest of {} shapes {:.3} ms{other})",
            self.n,
            self.k,
            ms,
            self.timings.len(),
            slowest
        )
    }
}

/// Time `gemv_rows.wgsl` at every [`RowsShape::candidates`] shape on an int4 `[n][k]` weight
/// (block 32; `k` a multiple of 32, rows of whole 16-byte chunks) and order them by time: each
/// after a warm-up submit (pipeline compilation), the best of three submits of [`PROBE_REPS`]
/// GEMVs (one, for a shape already twice as slow as the best). Candidates giving this weight
/// the same (lanes, rows) are timed once (the first stands for them), all over one uploaded
/// weight; where the device's subgroups hold a shape's lanes ([`GpuContext::shuffles`]) that
/// shape again with the shuffle reduction. A load sets the context's shape to the fastest
/// ([`GpuContext::set_rows_shape`]); on a GPU a few milliseconds plus up to 24 pipelines.
pub async fn tune_rows(ctx: &GpuContext, n: usize, k: usize, now: fn() -> f64) -> Result<RowsTuning> {
    let spec = BlockSpec { n, k, bits: 4, block_size: 32, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false };
    if !spec.rows_kernel_fits() {
        return Err(crate::Error::Inference(format!("tune_rows: [{n}][{k}] int4 rows are not whole 16-byte chunks")));
    }
    // Each distinct (lanes, rows) once, the first candidate giving it standing for the others.
    let mut shapes: Vec<(RowsShape, (u32, u32))> = Vec::new();
    for shape in RowsShape::candidates() {
        let lr = spec.rows_kernel_shape(shape);
        if !shapes.iter().any(|s| s.1 == lr) {
            shapes.push((shape, lr));
        }
    }
    let kernels: Vec<GemvKernel> = shapes.iter().map(|&(_, (lanes, rows))| GemvKernel::Rows { lanes, rows }).collect();
    // One uploaded weight for all of them (an 8B model's feed-forward is ~30 MB). A kernel
    // takes its reduction from the context's shape when bound: the tree first, then the
    // shuffles for the shapes whose lanes the device's subgroups hold.
    let mut benches = ctx.with_rows_shuffles(false, || GemvBench::per_kernel(ctx, n, k, PROBE_REPS, &kernels))?;
    let shuffled: Vec<(RowsShape, (u32, u32), GemvBench)> = ctx.with_rows_shuffles(true, || {
        shapes
            .iter()
            .zip(&kernels)
            .filter(|(&(_, (lanes, _)), _)| ctx.shuffles(lanes))
            .map(|(&(shape, lr), &kernel)| (RowsShape { shuffles: true, ..shape }, lr, benches[0].again(ctx, PROBE_REPS, kernel)))
            .collect()
    });
    for (shape, lr, bench) in shuffled {
        shapes.push((shape, lr));
        benches.push(bench);
    }
    let mut timings: Vec<(RowsShape, (u32, u32), f64)> = Vec::with_capacity(shapes.len());
    for (&(shape, lr), bench) in shapes.iter().zip(&benches) {
        let cut = cut_after(timings.iter().map(|t| t.2), PROBE_REPS);
        timings.push((shape, lr, best_of_three(async || bench.run(ctx).await, now, cut).await? / PROBE_REPS as f64));
    }
    // Stable: equal times keep the candidates' order.
    timings.sort_by(|a, b| a.2.total_cmp(&b.2));
    Ok(RowsTuning { n, k, timings })
}

/// The kernels `options` leave to the engine, tuned as a load does on a GPU: at `cfg`'s
/// feed-forward shape `[intermediate][hidden]` the decode GEMV's shape ([`tune_rows`]), then
/// whether a decode step's norms run inside the GEMVs after them ([`tune_norm`]), then the
/// prefill kernel ([`tune_prefill`]); at its attention's heads over a cache of `max_ctx`
/// positions, where a decode step's attention splits ([`tune_attention`]); each set on the
/// context; and how many greedy steps a decode submit chains ([`tune_decode_ahead`], for a
/// step of the model's `shapes`).
pub async fn tune_model(ctx: &GpuContext, cfg: &crate::model::LlamaConfig, max_ctx: usize, shapes: &ModelShapes, options: &super::GpuOptions, now: fn() -> f64) -> Result<ModelTuning> {
    let (n, k) = (cfg.intermediate_size.max(1), cfg.hidden_size.div_ceil(32).max(1) * 32);
    let mut said = Vec::new();
    if options.gemv == GemvKernel::Auto {
        let tuning = tune_rows(ctx, n, k, now).await?;
        ctx.set_rows_shape(tuning.best());
        said.push(tuning.says());
    }
    if ctx.tunes_f16() {
        let tuning = tune_precision(ctx, n, k, now).await?;
        ctx.set_f16(tuning.best());
        said.push(tuning.says());
    }
    if options.fuse_norm.is_none() {
        if let Some(tuning) = tune_norm(ctx, n, k, now).await? {
            ctx.set_fuse_norm(tuning.best());
            said.push(tuning.says());
        }
    }
    if options.prefill == PrefillKernel::Auto {
        let tuning = tune_prefill(ctx, n, k, now).await?;
        ctx.set_prefill_kernel(tuning.best());
        said.push(tuning.says());
    }
    // Heads wider than the split kernel takes run the whole one at every position.
    if options.attention_split_from.is_none() && cfg.head_dim <= kernels::ATTENTION_MAX_HEAD_DIM {
        let shape = AttnShape { heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim, max_ctx };
        let tuning = tune_attention(ctx, shape, now).await?;
        ctx.set_attention_split_from(tuning.split_from);
        said.push(tuning.says());
    }
    let mut step = None;
    if options.decode_ahead.is_none() {
        let tuning = tune_decode_ahead(ctx, cfg, shapes, now).await?;
        ctx.set_decode_ahead(tuning.ahead);
        said.push(tuning.says());
        step = Some(tuning.step);
    }
    Ok(ModelTuning { said, step })
}

/// What [`tune_model`] did: what each tuning says, and the decode step it estimated (where it
/// tuned the chain; `auto`'s probe weighs that estimate against the CPU rather than timing the
/// step again).
#[derive(Debug, Clone)]
pub struct ModelTuning {
    pub said: Vec<String>,
    pub step: Option<StepEstimate>,
}

impl ModelTuning {
    /// What the tunings say, one after another; `None` where nothing was tuned.
    pub fn said(&self) -> Option<String> {
        (!self.said.is_empty()).then(|| self.said.join("; "))
    }
}

/// What [`tune_decode_ahead`] measured: a decode step's estimate (its kernels, and its
/// submit's fixed cost apart) and the greedy steps a submit chains.
#[derive(Debug, Clone, Copy)]
pub struct DecodeAheadTuning {
    pub step: StepEstimate,
    pub ahead: usize,
}

impl DecodeAheadTuning {
    pub fn says(&self) -> String {
        format!(
            "greedy decode tuned to {} a submit (a submit and its readback {:.3} ms against a step's kernels {:.3} ms)",
            match self.ahead {
                0 => "1 step".to_string(),
                n => format!("{} steps", 1 + n),
            },
            self.step.submit_ms(),
            self.step.kernels_ms
        )
    }
}

/// A submit's fixed cost a token may pay, as a share of its step's kernels: greedy steps are
/// chained until a token's share of its submit is at most this.
pub const SUBMIT_SHARE: f64 = 0.1;

/// Most steps [`tune_decode_ahead`] chains beyond the first (tokens then arrive in bursts of
/// at most 8; a generation that stops wastes at most 7 steps).
pub const DECODE_AHEAD_TUNED_MAX: usize = 7;

/// How many greedy steps a decode submit chains beyond the first
/// ([`super::GpuOptions::decode_ahead`]): a step of the model's `shapes` (`cfg` its heads),
/// estimated as `auto`'s probe does ([`estimate_step`]: its kernels, and a submit with its
/// readback), chained until a token's share of the submit is at most [`SUBMIT_SHARE`] of the
/// kernels' time (none where the kernels dwarf the submit: a big model's step; more where the
/// submit is most of a token: a small model, a browser's readback), at most
/// [`DECODE_AHEAD_TUNED_MAX`]. Sets nothing itself.
pub async fn tune_decode_ahead(ctx: &GpuContext, cfg: &crate::model::LlamaConfig, shapes: &ModelShapes, now: fn() -> f64) -> Result<DecodeAheadTuning> {
    let step = estimate_step(ctx, cfg, shapes, now).await?;
    Ok(DecodeAheadTuning { step, ahead: decode_ahead_for(step.submit_ms(), step.kernels_ms) })
}

/// [`tune_decode_ahead`]'s rule: the fewest steps chained beyond the first for which a token's
/// share of a `submit_ms` submit is at most [`SUBMIT_SHARE`] of `kernels_ms`.
pub fn decode_ahead_for(submit_ms: f64, kernels_ms: f64) -> usize {
    let steps = (submit_ms / (SUBMIT_SHARE * kernels_ms)).ceil();
    if steps.is_finite() { (steps.max(1.0) as usize - 1).min(DECODE_AHEAD_TUNED_MAX) } else { DECODE_AHEAD_TUNED_MAX }
}

/// What [`tune_prefill`] measured: each candidate [`PrefillKernel`] and its milliseconds per
/// product over `rows` rows, fastest first.
#[derive(Debug, Clone)]
pub struct PrefillTuning {
    pub n: usize,
    pub k: usize,
    pub rows: usize,
    pub timings: Vec<(PrefillKernel, f64)>,
}

impl PrefillTuning {
    /// The fastest candidate.
    pub fn best(&self) -> PrefillKernel {
        self.timings[0].0
    }

    pub fn says(&self) -> String {
        let (kernel, ms) = self.timings[0];
        let all: Vec<String> = self.timings.iter().map(|(k, ms)| format!("{k} {ms:.3}")).collect();
        format!("prefill tuned to {kernel} ({ms:.3} ms over {} rows at [{}][{}]; ms of each: {})", self.rows, self.n, self.k, all.join(", "))
    }
}

/// Time the prefill's product over a chunk of [`PREFILL_TUNING_ROWS`] rows of x with every
/// [`PrefillKernel::candidates`] kernel on one uploaded int4 `[n][k]` weight (block 32), each
/// after a warm-up submit, the best of three submits of two products (one, for a candidate
/// already twice as slow as the best); fastest first. The rows kernel runs with the context's
/// decode shape, so tune the decode GEMV first.
pub async fn tune_prefill(ctx: &GpuContext, n: usize, k: usize, now: fn() -> f64) -> Result<PrefillTuning> {
    const REPS: usize = 2;
    let rows = PREFILL_TUNING_ROWS;
    // The rows kernel first, most x rows first (likeliest fastest), the tiled GEMM last: a
    // candidate twice as slow as the best so far is timed once.
    let mut kernels = PrefillKernel::candidates();
    kernels.reverse();
    let benches = GemvBench::per_prefill(ctx, n, k, rows, REPS, &kernels)?;
    let mut timings: Vec<(PrefillKernel, f64)> = Vec::with_capacity(kernels.len());
    for (&kernel, bench) in kernels.iter().zip(&benches) {
        let cut = cut_after(timings.iter().map(|t| t.1), REPS);
        timings.push((kernel, best_of_three(async || bench.run(ctx).await, now, cut).await? / REPS as f64));
    }
    timings.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok(PrefillTuning { n, k, rows, timings })
}

/// What [`tune_precision`] timed at `[n][k]`, milliseconds: a decode GEMV and a prefill
/// chunk's product over `rows` rows of x, each with f32 products then f16 ones.
#[derive(Debug, Clone)]
pub struct PrecisionTuning {
    pub n: usize,
    pub k: usize,
    pub rows: usize,
    pub gemv_ms: [f64; 2],
    pub prefill_ms: [f64; 2],
}

impl PrecisionTuning {
    /// Whether f16 products were faster, both for the decode GEMV and for the prefill (f16
    /// costs fidelity: it has to pay on both).
    pub fn best(&self) -> bool {
        self.gemv_ms[1] < self.gemv_ms[0] && self.prefill_ms[1] < self.prefill_ms[0]
    }

    pub fn says(&self) -> String {
        let chose = if self.best() { "f16" } else { "f32" };
        format!(
            "int4/int8 products in {chose} (f32 / f16 ms: decode GEMV of [{}][{}] {:.3} / {:.3}, over {} rows {:.3} / {:.3})",
            self.n, self.k, self.gemv_ms[0], self.gemv_ms[1], self.rows, self.prefill_ms[0], self.prefill_ms[1]
        )
    }
}

/// Time an int4 `[n][k]` weight's (block 32) decode GEMV ([`PRECISION_TUNING_REPS`] a submit)
/// and its product over a prefill chunk of [`PREFILL_TUNING_ROWS`] rows (two a submit), with
/// the context's kernels, with f32 products and with f16 ones, each the fastest of three
/// submits after a warm-up; the context is left computing as it was ([`GpuContext::set_f16`]
/// sets the choice). Run after the GEMV's shape is tuned, before the prefill kernel is.
pub async fn tune_precision(ctx: &GpuContext, n: usize, k: usize, now: fn() -> f64) -> Result<PrecisionTuning> {
    const PREFILL_REPS: usize = 2;
    let rows = PREFILL_TUNING_ROWS;
    let (mut gemv_ms, mut prefill_ms) = ([0.0; 2], [0.0; 2]);
    let before = ctx.f16();
    // One weight and x of a chunk's rows; the GEMV reads x's first row.
    let ops = Operands::upload(ctx, n, k, rows, 32, true)?;
    for (i, f16) in [false, true].into_iter().enumerate() {
        // Kernels read the context's precision when they are bound.
        ctx.set_f16(f16);
        let gemv = GemvBench::over(ctx, ops.clone(), 1, PRECISION_TUNING_REPS, ctx.gemv_kernel(), PrefillKernel::Auto);
        gemv_ms[i] = best_of_three(async || gemv.run(ctx).await, now, f64::INFINITY).await? / PRECISION_TUNING_REPS as f64;
        let prefill = GemvBench::over(ctx, ops.clone(), rows, PREFILL_REPS, ctx.gemv_kernel(), ctx.prefill_kernel());
        prefill_ms[i] = best_of_three(async || prefill.run(ctx).await, now, f64::INFINITY).await? / PREFILL_REPS as f64;
    }
    ctx.set_f16(before);
    Ok(PrecisionTuning { n, k, rows, gemv_ms, prefill_ms })
}

/// Decode GEMVs [`tune_precision`] times in one submit.
pub const PRECISION_TUNING_REPS: usize = 8;

/// What [`tune_norm`] timed at `[n][k]`, milliseconds a decode GEMV: with the residual add and
/// RMSNorm before it fused in, and with `add_rms_norm.wgsl` run before it.
#[derive(Debug, Clone)]
pub struct NormTuning {
    pub n: usize,
    pub k: usize,
    pub fused_ms: f64,
    pub separate_ms: f64,
}

impl NormTuning {
    /// Whether the fused GEMV was the faster.
    pub fn best(&self) -> bool {
        self.fused_ms < self.separate_ms
    }

    pub fn says(&self) -> String {
        let chose = if self.best() { "fused into the GEMVs" } else { "kept before the GEMVs" };
        format!(
            "decode norms {chose} ({:.3} ms a GEMV of [{}][{}] with the add and norm fused in, {:.3} ms for add_rms_norm then the GEMV)",
            self.fused_ms, self.n, self.k, self.separate_ms
        )
    }
}

/// Time a decode GEMV of an int4 `[n][k]` weight (block 32) reading the norm of x plus a
/// projection both ways ([`GemvBench::per_norm`]), [`NORM_TUNING_REPS`] a submit, each the
/// fastest of three submits after a warm-up: the one dispatch does more (every lane group loads
/// the residual, the projection and the gain, and sums squares), the two pay a launch and a
/// barrier more. `None` where the context's GEMV is not the rows kernel there. Run after the
/// GEMV's shape is tuned.
pub async fn tune_norm(ctx: &GpuContext, n: usize, k: usize, now: fn() -> f64) -> Result<Option<NormTuning>> {
    let Some([fused, separate]) = GemvBench::per_norm(ctx, n, k, NORM_TUNING_REPS)? else { return Ok(None) };
    let fused_ms = best_of_three(async || fused.run(ctx).await, now, f64::INFINITY).await? / NORM_TUNING_REPS as f64;
    let separate_ms = best_of_three(async || separate.run(ctx).await, now, f64::INFINITY).await? / NORM_TUNING_REPS as f64;
    Ok(Some(NormTuning { n, k, fused_ms, separate_ms }))
}

/// Products [`tune_norm`] times in one submit: a few, so a submit's fixed cost does not hide
/// the dispatch it saves.
pub const NORM_TUNING_REPS: usize = 8;

/// Rows of x [`tune_prefill`] times: a full prefill chunk ([`super::decode::PREFILL_CHUNK`]).
pub const PREFILL_TUNING_ROWS: usize = super::decode::PREFILL_CHUNK;
