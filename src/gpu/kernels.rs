//! The WGSL kernels (one file each under `kernels/`), a pipeline cache, and builders that
//! bind a kernel to buffers once, giving a [`Dispatch`] to record on every step.

use std::collections::HashMap;

use super::context::GpuContext;
use crate::quant::Q4Weight;
use crate::{Error, Result};

/// One compute kernel; its source is `kernels/<name>.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    GemvQ4,
    GemmQ4,
    EmbedQ4,
    RmsNorm,
    Rope,
    KvAppend,
    Attention,
    SiluMul,
    Add,
    Argmax,
    Sample,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::GemvQ4 => "gemv_q4",
            Kernel::GemmQ4 => "gemm_q4",
            Kernel::EmbedQ4 => "embed_q4",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Rope => "rope",
            Kernel::KvAppend => "kv_append",
            Kernel::Attention => "attention",
            Kernel::SiluMul => "silu_mul",
            Kernel::Add => "add",
            Kernel::Argmax => "argmax",
            Kernel::Sample => "sample",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Kernel::GemvQ4 => include_str!("kernels/gemv_q4.wgsl"),
            Kernel::GemmQ4 => include_str!("kernels/gemm_q4.wgsl"),
            Kernel::EmbedQ4 => include_str!("kernels/embed_q4.wgsl"),
            Kernel::RmsNorm => include_str!("kernels/rms_norm.wgsl"),
            Kernel::Rope => include_str!("kernels/rope.wgsl"),
            Kernel::KvAppend => include_str!("kernels/kv_append.wgsl"),
            Kernel::Attention => include_str!("kernels/attention.wgsl"),
            Kernel::SiluMul => include_str!("kernels/silu_mul.wgsl"),
            Kernel::Add => include_str!("kernels/add.wgsl"),
            Kernel::Argmax => include_str!("kernels/argmax.wgsl"),
            Kernel::Sample => include_str!("kernels/sample.wgsl"),
        }
    }
}

/// Compiled pipelines, one per kernel, made on first use and shared by every dispatch.
#[derive(Default)]
pub struct Pipelines {
    map: HashMap<Kernel, wgpu::ComputePipeline>,
}

impl Pipelines {
    pub fn get(&mut self, ctx: &GpuContext, k: Kernel) -> &wgpu::ComputePipeline {
        self.map.entry(k).or_insert_with(|| ctx.pipeline(k.name(), k.source()))
    }

    fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        // Dispatches are only made through `Pipelines::bind`, which inserted the kernel.
        &self.map[&k]
    }

    /// Bind `buffers` to `k`'s bindings 0.. and remember the workgroup grid.
    pub fn bind(&mut self, ctx: &GpuContext, k: Kernel, buffers: &[&wgpu::Buffer], grid: Grid) -> Dispatch {
        let bind_group = ctx.bind_group(k.name(), self.get(ctx, k), buffers);
        Dispatch { kernel: k, bind_group, grid }
    }

    /// Record `dispatches` in order into one compute pass for a step of `rows` activation rows
    /// (WebGPU orders their storage accesses, so each sees the previous one's writes).
    pub fn record<'d>(&self, encoder: &mut wgpu::CommandEncoder, dispatches: impl IntoIterator<Item = &'d Dispatch>, rows: u32) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        for d in dispatches {
            let [x, y, z] = d.grid.at(rows);
            pass.set_pipeline(self.pipeline(d.kernel));
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// A kernel bound to its buffers: recorded as is on every step, its grid sized for the
/// step's rows.
pub struct Dispatch {
    kernel: Kernel,
    bind_group: wgpu::BindGroup,
    grid: Grid,
}

/// A dispatch's workgroup grid: the same every step, or following the step's row count (one
/// token per row: 1 while decoding, up to a prefill chunk), so buffers sized for the largest
/// chunk serve every step and nothing is rebound.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    Fixed([u32; 3]),
    /// `groups` with `groups[axis] = ceil(rows / rows_per_group)`.
    Rows { groups: [u32; 3], axis: usize, rows_per_group: u32 },
}

impl Grid {
    /// `[x, y, 1]` with `y` = one group row per activation row (most row-wise kernels).
    fn per_row(x: u32) -> Grid {
        Grid::Rows { groups: [x, 1, 1], axis: 1, rows_per_group: 1 }
    }

    pub fn at(self, rows: u32) -> [u32; 3] {
        match self {
            Grid::Fixed(g) => g,
            Grid::Rows { mut groups, axis, rows_per_group } => {
                groups[axis] = rows.div_ceil(rows_per_group).max(1);
                groups
            }
        }
    }
}

/// `count` workgroups as an `x × y` grid within the per-dimension limit (`x * y >= count`).
pub fn grid(ctx: &GpuContext, count: u32) -> [u32; 2] {
    let max = ctx.limits().max_compute_workgroups_per_dimension.max(1);
    if count <= max {
        [count.max(1), 1]
    } else {
        [max, count.div_ceil(max)]
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The largest buffer `limits` let a kernel bind as storage: `maxStorageBufferBindingSize`,
/// and no buffer may exceed `maxBufferSize` either.
pub fn max_binding(limits: &wgpu::Limits) -> u64 {
    limits.max_storage_buffer_binding_size.min(limits.max_buffer_size)
}

/// The row ranges an int4 weight `[n][k]` (blocks of `block_size` along `k`) is split into so
/// each range's packed nibbles, scales and zero points fit in `max` bytes (see [`max_binding`]):
/// one range when the whole weight fits, else as few as fit, of nearly equal size. A row that
/// alone does not fit is `UnsupportedBackend`, naming the weight and the limit.
pub fn q4_row_ranges(name: &str, n: usize, k: usize, block_size: usize, max: u64) -> Result<Vec<std::ops::Range<usize>>> {
    let blocks = k.div_ceil(block_size.max(1)) as u64;
    // Packed nibbles dominate (block_size >= 16: 8+ bytes per block against 4 of scale and
    // half a byte of zero point), but every buffer is checked.
    let row = (blocks * block_size as u64 / 2).max(blocks * 4).max(blocks.div_ceil(2)).max(1);
    if row > max {
        return Err(Error::UnsupportedBackend(format!(
            "webgpu: one row of `{name}` ([{n}][{k}] int4) takes {row} bytes, more than the adapter binds as one storage buffer ({max} bytes: maxStorageBufferBindingSize / maxBufferSize)"
        )));
    }
    // Whole rows per part; zero points pad to 4 bytes but stay below the packed part's bytes.
    let per_part = (max / row) as usize;
    let parts = n.div_ceil(per_part).max(1);
    let rows = n.div_ceil(parts);
    Ok((0..parts).map(|p| p * rows..((p + 1) * rows).min(n)).filter(|r| !r.is_empty()).collect())
}

/// A row range of an int4 weight on the GPU: its rows of the MatMulNBits layout, byte for
/// byte, each in its own buffer so that none exceeds the adapter's binding limit.
pub struct Q4Part {
    /// The weight's rows this part holds.
    pub rows: std::ops::Range<usize>,
    pub packed: wgpu::Buffer,
    pub scales: wgpu::Buffer,
    /// Packed zero points, or a 4-byte placeholder when symmetric.
    pub zps: wgpu::Buffer,
    /// `[part rows, k, block_size, has_zp, first row, all rows]`: the kernels index the part's
    /// buffers from its first row and write outputs (or gather tokens) at the weight's rows.
    pub params: wgpu::Buffer,
}

/// An int4 weight on the GPU in its MatMulNBits layout, in one part or split by rows into
/// several (a large head or embedding table over a small `maxStorageBufferBindingSize`):
/// the kernels run once per part, each writing its rows of the output.
pub struct GpuQ4 {
    pub n: usize,
    pub k: usize,
    pub block_size: usize,
    pub has_zp: bool,
    pub parts: Vec<Q4Part>,
}

impl GpuQ4 {
    pub fn upload(ctx: &GpuContext, name: &str, w: &Q4Weight) -> Result<Self> {
        if w.block_size % 8 != 0 || w.block_size < 16 {
            return Err(Error::UnsupportedBackend(format!("webgpu: `{name}` has int4 block size {}, kernels need a multiple of 8 >= 16", w.block_size)));
        }
        let zps = w.packed_zero_points().unwrap_or_default();
        let blocks = w.blocks_per_row();
        let (row_bytes, zp_row) = (blocks * w.block_size / 2, blocks.div_ceil(2));
        let has_zp = w.zero_points.is_some();
        let ranges = q4_row_ranges(name, w.n, w.k, w.block_size, max_binding(ctx.limits()))?;
        let mut parts = Vec::with_capacity(ranges.len());
        for rows in ranges {
            let (r0, r1) = (rows.start, rows.end);
            let zps = if has_zp { &zps[r0 * zp_row..r1 * zp_row] } else { &[][..] };
            let params = [(r1 - r0) as u32, w.k as u32, w.block_size as u32, has_zp as u32, r0 as u32, w.n as u32];
            parts.push(Q4Part {
                packed: ctx.storage_init(name, &w.packed[r0 * row_bytes..r1 * row_bytes])?,
                scales: ctx.storage_init(name, &f32_bytes(&w.scales[r0 * blocks..r1 * blocks]))?,
                zps: ctx.storage_init(name, zps)?,
                params: ctx.uniform(name, &params),
                rows,
            });
        }
        Ok(GpuQ4 { n: w.n, k: w.k, block_size: w.block_size, has_zp, parts })
    }

    /// `y[r] = W x[r]` for each of the step's rows (decode: one), weights read once per row:
    /// one dispatch per part.
    pub fn gemv(&self, ctx: &GpuContext, pipes: &mut Pipelines, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Vec<Dispatch> {
        let bind = |p: &Q4Part, pipes: &mut Pipelines| {
            let [gx, gy] = grid(ctx, p.rows.len() as u32);
            let grid = Grid::Rows { groups: [gx, gy, 1], axis: 2, rows_per_group: 1 };
            pipes.bind(ctx, Kernel::GemvQ4, &[&p.params, x, &p.packed, &p.scales, &p.zps, y], grid)
        };
        self.parts.iter().map(|p| bind(p, pipes)).collect()
    }

    /// `y = x W^T` for the `state.rows` rows of `x` with the tiled GEMM (prefill).
    pub fn gemm(&self, ctx: &GpuContext, pipes: &mut Pipelines, state: &wgpu::Buffer, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Vec<Dispatch> {
        let bind = |p: &Q4Part, pipes: &mut Pipelines| {
            let grid = Grid::Rows { groups: [(p.rows.len() as u32).div_ceil(32), 1, 1], axis: 1, rows_per_group: 32 };
            pipes.bind(ctx, Kernel::GemmQ4, &[&p.params, x, &p.packed, &p.scales, &p.zps, y, state], grid)
        };
        self.parts.iter().map(|p| bind(p, pipes)).collect()
    }

    /// `out[r] = row state.tokens[r]` of this table, for each of the step's rows: each part
    /// writes the rows whose token it holds.
    pub fn embed(&self, ctx: &GpuContext, pipes: &mut Pipelines, state: &wgpu::Buffer, out: &wgpu::Buffer) -> Vec<Dispatch> {
        let grid = Grid::per_row((self.k as u32).div_ceil(64));
        self.parts.iter().map(|p| pipes.bind(ctx, Kernel::EmbedQ4, &[&p.params, state, &p.packed, &p.scales, &p.zps, out], grid)).collect()
    }
}

/// Workgroups of 64 covering a row of `n` elements, one group row per activation row
/// (`n` up to 64 × 65535, far above any hidden or intermediate size).
fn elementwise(n: usize) -> Grid {
    Grid::per_row((n as u32).div_ceil(64))
}

/// RMSNorm of each of the step's rows (`x` and `y` `[rows][n]`), one workgroup per row.
pub fn rms_norm(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, eps: f32, x: &wgpu::Buffer, g: &wgpu::Buffer, y: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("rms_norm", &[n as u32, eps.to_bits()]);
    pipes.bind(ctx, Kernel::RmsNorm, &[&params, x, g, y], Grid::Rows { groups: [1, 1, 1], axis: 0, rows_per_group: 1 })
}

pub fn rope(ctx: &GpuContext, pipes: &mut Pipelines, heads: usize, head_dim: usize, state: &wgpu::Buffer, cos: &wgpu::Buffer, sin: &wgpu::Buffer, x: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("rope", &[heads as u32, head_dim as u32]);
    pipes.bind(ctx, Kernel::Rope, &[&params, state, cos, sin, x], Grid::per_row(((heads * head_dim / 2) as u32).div_ceil(64)))
}

#[allow(clippy::too_many_arguments)]
pub fn kv_append(ctx: &GpuContext, pipes: &mut Pipelines, kv_dim: usize, head_dim: usize, max_ctx: usize, state: &wgpu::Buffer, k: &wgpu::Buffer, v: &wgpu::Buffer, kc: &wgpu::Buffer, vc: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("kv_append", &[kv_dim as u32, head_dim as u32, max_ctx as u32]);
    pipes.bind(ctx, Kernel::KvAppend, &[&params, state, k, v, kc, vc], Grid::per_row((kv_dim as u32).div_ceil(64)))
}

/// Buffers of one attention: `q`/`out` `[rows][heads][head_dim]`, `scores` `[rows][heads][max_ctx]`
/// f32 scratch for the most rows a step runs.
pub struct AttnBuffers<'a> {
    pub state: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub kcache: &'a wgpu::Buffer,
    pub vcache: &'a wgpu::Buffer,
    pub scores: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

pub fn attention(ctx: &GpuContext, pipes: &mut Pipelines, s: super::twin::AttnShape, b: AttnBuffers) -> Dispatch {
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let params = ctx.uniform("attention", &[s.heads as u32, s.kv_heads as u32, s.head_dim as u32, s.max_ctx as u32, scale.to_bits()]);
    pipes.bind(ctx, Kernel::Attention, &[&params, b.state, b.q, b.kcache, b.vcache, b.scores, b.out], Grid::per_row(s.heads as u32))
}

pub fn silu_mul(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, gate: &wgpu::Buffer, up: &wgpu::Buffer, out: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("silu_mul", &[n as u32]);
    pipes.bind(ctx, Kernel::SiluMul, &[&params, gate, up, out], elementwise(n))
}

pub fn add(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("add", &[n as u32]);
    pipes.bind(ctx, Kernel::Add, &[&params, x, y], elementwise(n))
}

pub fn argmax(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, logits: &wgpu::Buffer, state: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("argmax", &[n as u32]);
    pipes.bind(ctx, Kernel::Argmax, &[&params, logits, state], Grid::Fixed([1, 1, 1]))
}

/// Buffers of one sampling: `opts` the 8 words of [`super::twin::sample_opts`] (written each
/// step), `seen` the penalty's history as a bitmap of `n` bits, `keys` and `weights` `[n]`
/// scratch, `state` the step state whose `tokens[0]` gets the pick.
pub struct SampleBuffers<'a> {
    pub opts: &'a wgpu::Buffer,
    pub logits: &'a wgpu::Buffer,
    pub seen: &'a wgpu::Buffer,
    pub keys: &'a wgpu::Buffer,
    pub weights: &'a wgpu::Buffer,
    pub state: &'a wgpu::Buffer,
}

/// Temperature, top-k, top-p and repetition penalty over the logits, in one workgroup.
pub fn sample(ctx: &GpuContext, pipes: &mut Pipelines, b: SampleBuffers) -> Dispatch {
    pipes.bind(ctx, Kernel::Sample, &[b.opts, b.logits, b.seen, b.keys, b.weights, b.state], Grid::Fixed([1, 1, 1]))
}

/// The bitmap of `history`'s ids below `n` (`n.div_ceil(32)` words) that `sample.wgsl`
/// applies the repetition penalty to.
pub fn seen_bitmap(n: usize, history: &[u32]) -> Vec<u32> {
    let mut words = vec![0u32; n.div_ceil(32).max(1)];
    for &t in history.iter().filter(|t| (**t as usize) < n) {
        words[t as usize / 32] |= 1 << (t % 32);
    }
    words
}

/// Copy `len` f32 values of a storage buffer back to the CPU (tests and logits on request;
/// allocates a readback buffer, so never on the per-token path).
pub async fn download_f32(ctx: &GpuContext, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let bytes = (len * 4) as u64;
    let rb = ctx.readback("download", bytes);
    let mut enc = ctx.encoder();
    enc.copy_buffer_to_buffer(buffer, 0, &rb, 0, bytes);
    ctx.submit(enc);
    let raw = ctx.read(&rb, bytes).await?;
    Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Run `dispatches` for `rows` activation rows in one submit (kernel tests).
pub fn run(ctx: &GpuContext, pipes: &Pipelines, dispatches: &[Dispatch], rows: u32) {
    let mut enc = ctx.encoder();
    pipes.record(&mut enc, dispatches, rows);
    ctx.submit(enc);
}
