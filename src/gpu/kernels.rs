//! The WGSL kernels (one file each under `kernels/`), a pipeline cache, and builders that
//! bind a kernel to buffers once, giving a [`Dispatch`] to record on every step.

use std::collections::HashMap;

use super::context::GpuContext;
use crate::Result;

/// A block-quantized (or float) weight's kind as `nbits.wgsl`'s pipeline constants: a kernel
/// over such weights is compiled once per kind it meets, its reads specialized to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NBitsKind {
    pub bits: u32,
    pub block: u32,
    pub zp_mode: u32,
    pub f16_params: bool,
}

impl NBitsKind {
    fn constants(self) -> [(&'static str, f64); 4] {
        [("BITS", self.bits as f64), ("BLOCK", self.block as f64), ("ZP_MODE", self.zp_mode as f64), ("F16_PARAMS", self.f16_params as u32 as f64)]
    }
}

/// One compute kernel; its source is `kernels/<name>.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// One workgroup per output row, 4-byte reads (every layout).
    GemvNBits(NBitsKind),
    /// [`Kernel::GemvNBits`] reduced with subgroup operations (adapters with `subgroups`).
    GemvNBitsSubgroups(NBitsKind),
    /// Lane groups of `lanes` invocations computing `rows` output rows each, 16-byte reads
    /// (rows of whole 16-byte chunks), over `xrows` rows of x a workgroup; whether the lanes'
    /// shares are added by subgroup shuffles (see [`GpuContext::shuffles`]) rather than a
    /// barrier tree; whether x is SiLU(gate)·up of a `[gate | up]` row (`glu`: the feed-forward's
    /// activation fused into the down projection); whether x is the residual stream plus a
    /// projection, RMS-normalized with this epsilon (`norm`, the f32's bits: the add and the
    /// norm before q/k/v or gate/up fused in, `gemv_rows_x_norm.wgsl`); whether its products
    /// are f16 (`f16`: `arith_f16.wgsl`, see [`Kernel::f16_on`]).
    GemvRows { kind: NBitsKind, lanes: u32, rows: u32, xrows: u32, shuffles: bool, glu: bool, norm: Option<u32>, f16: bool },
    /// The tiled GEMM; whether its products are f16 (see [`Kernel::f16_on`]).
    GemmNBits(NBitsKind, bool),
    EmbedNBits(NBitsKind),
    BiasNBits,
    RmsNorm,
    /// The residual add and RMSNorm; with `round_q8`, the norm then rounded to int8 per block
    /// of 32 (the rounding of [`Kernel::RoundQ8`], in the same dispatch).
    AddRmsNorm { round_q8: bool },
    RopeKv,
    /// One workgroup per query head and row; RoPE and the cache append fused in or not; the
    /// output rounded to int8 blocks (`round_q8`) or not.
    Attention(Rope, bool),
    /// Over splits of positions, for the query heads a workgroup serves (a divisor of the
    /// group, at most 8); [`Kernel::AttentionCombine`] adds the splits. RoPE fused in or not.
    AttentionSplit(u32, Rope),
    /// Adds [`Kernel::AttentionSplit`]'s splits; the output rounded to int8 blocks or not.
    AttentionCombine(bool),
    /// SiLU(gate)·up; with `round_q8`, rounded to int8 per block of 32 (the rounding of
    /// [`Kernel::RoundQ8`], in the same dispatch).
    SiluMul { round_q8: bool },
    Add,
    Argmax,
    Sample,
    RoundQ8,
    QuantizeTensor,
    /// The device's subgroup layout ([`GpuContext`]'s probe).
    SubgroupLayout,
}

impl Kernel {
    /// `gemv_rows.wgsl` at `lanes` lanes and `rows` rows a group over `xrows` rows of x,
    /// reduced by shuffles where `ctx` allows it for that many lanes.
    /// With `float_x`, f16 products where [`Kernel::f16_on`] says.
    pub fn gemv_rows(ctx: &GpuContext, kind: NBitsKind, lanes: u32, rows: u32, xrows: u32, float_x: bool) -> Kernel {
        Kernel::GemvRows { kind, lanes, rows, xrows, shuffles: ctx.shuffles(lanes), glu: false, norm: None, f16: float_x && Kernel::f16_on(ctx, kind) }
    }

    /// `gemm_nbits.wgsl` over weights of `kind`; with `float_x`, f16 products where
    /// [`Kernel::f16_on`] says.
    pub fn gemm(ctx: &GpuContext, kind: NBitsKind, float_x: bool) -> Kernel {
        Kernel::GemmNBits(kind, float_x && Kernel::f16_on(ctx, kind))
    }

    /// Whether the GEMV's and GEMM's products over weights of `kind` may be f16: where the
    /// context computes in f16 ([`GpuContext::f16`]) and the weight is 4- or 8-bit (float
    /// weights, fp16 files' included, are multiplied in f32 as the CPU backend does). Only for
    /// a node on float activations (`float_x` above): one whose input is rounded to int8 asks
    /// for integer products, which f32 computes exactly and f16 would not.
    pub fn f16_on(ctx: &GpuContext, kind: NBitsKind) -> bool {
        ctx.f16() && matches!(kind.bits, 4 | 8)
    }

    /// Whether this kernel's products are f16 ([`Kernel::f16_on`]).
    pub fn computes_f16(&self) -> bool {
        matches!(self, Kernel::GemvRows { f16: true, .. } | Kernel::GemmNBits(_, true))
    }

    /// This kernel reading SiLU(gate)·up of `[gate | up]` rows as its x, where it can (the
    /// rows GEMV); `None` for any other kernel.
    pub fn with_glu(self) -> Option<Kernel> {
        match self {
            Kernel::GemvRows { kind, lanes, rows, xrows, shuffles, norm: None, f16, .. } => Some(Kernel::GemvRows { kind, lanes, rows, xrows, shuffles, glu: true, norm: None, f16 }),
            _ => None,
        }
    }

    /// This kernel reading RMSNorm(x + resid) with `eps` as its x (and writing x + resid), where
    /// it can: the rows GEMV over one row of x; `None` for any other kernel. Its products are
    /// f32 whatever the context computes in: the norm's factor is applied after the sums, so
    /// their x is the residual stream times the gain, which can be far beyond f16's range.
    pub fn with_norm(self, eps: f32) -> Option<Kernel> {
        match self {
            Kernel::GemvRows { kind, lanes, rows, xrows: 1, shuffles, glu: false, .. } => {
                Some(Kernel::GemvRows { kind, lanes, rows, xrows: 1, shuffles, glu: false, norm: Some(eps.to_bits()), f16: false })
            }
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::GemvNBits(_) => "gemv_nbits",
            Kernel::GemvNBitsSubgroups(_) => "gemv_nbits_subgroups",
            Kernel::GemvRows { shuffles: false, .. } => "gemv_rows",
            Kernel::GemvRows { shuffles: true, .. } => "gemv_rows_subgroups",
            Kernel::GemmNBits(..) => "gemm_nbits",
            Kernel::EmbedNBits(_) => "embed_nbits",
            Kernel::BiasNBits => "bias_nbits",
            Kernel::RmsNorm => "rms_norm",
            Kernel::AddRmsNorm { .. } => "add_rms_norm",
            Kernel::RopeKv => "rope_kv",
            Kernel::Attention(..) => "attention",
            Kernel::AttentionSplit(..) => "attention_split",
            Kernel::AttentionCombine(_) => "attention_combine",
            Kernel::SiluMul { .. } => "silu_mul",
            Kernel::Add => "add",
            Kernel::Argmax => "argmax",
            Kernel::Sample => "sample",
            Kernel::RoundQ8 => "round_q8",
            Kernel::QuantizeTensor => "quantize_tensor",
            Kernel::SubgroupLayout => "subgroup_layout",
        }
    }

    pub fn source(self) -> std::borrow::Cow<'static, str> {
        let source: &'static str = match self {
            // The kernels over block-quantized weights share how they read one (`nbits.wgsl`).
            Kernel::GemvNBits(_) => concat!(include_str!("kernels/nbits.wgsl"), include_str!("kernels/gemv_nbits.wgsl"), include_str!("kernels/gemv_reduce_workgroup.wgsl")),
            // Without `enable subgroups;`: naga (wgpu 30) rejects the directive and takes the
            // builtins when the device has the SUBGROUP feature; Tint would need it, but wgpu's
            // WebGPU backend never requests subgroups (see `GpuContext::on`).
            Kernel::GemvNBitsSubgroups(_) => concat!(
                include_str!("kernels/nbits.wgsl"),
                include_str!("kernels/gemv_nbits.wgsl"),
                include_str!("kernels/gemv_reduce_subgroups.wgsl")
            ),
            // Its x input (as loaded, or normalized: `gemv_rows_x*.wgsl`) and its reduction
            // (barrier tree or shuffles) are chosen file by file.
            Kernel::GemvRows { shuffles, norm, f16, .. } => {
                let x = if norm.is_some() { include_str!("kernels/gemv_rows_x_norm.wgsl") } else { include_str!("kernels/gemv_rows_x.wgsl") };
                let reduce = if shuffles { include_str!("kernels/gemv_rows_reduce_subgroups.wgsl") } else { include_str!("kernels/gemv_rows_reduce_workgroup.wgsl") };
                return [arith(f16), include_str!("kernels/nbits.wgsl"), x, include_str!("kernels/gemv_rows.wgsl"), reduce].concat().into();
            }
            Kernel::GemmNBits(_, f16) => return [arith(f16), include_str!("kernels/nbits.wgsl"), include_str!("kernels/gemm_nbits.wgsl")].concat().into(),
            Kernel::EmbedNBits(_) => concat!(include_str!("kernels/nbits.wgsl"), include_str!("kernels/embed_nbits.wgsl")),
            Kernel::BiasNBits => include_str!("kernels/bias_nbits.wgsl"),
            Kernel::RmsNorm => concat!(include_str!("kernels/norm.wgsl"), include_str!("kernels/rms_norm.wgsl")),
            Kernel::AddRmsNorm { .. } => concat!(
                include_str!("kernels/norm.wgsl"),
                include_str!("kernels/q8_block.wgsl"),
                include_str!("kernels/q8_out.wgsl"),
                include_str!("kernels/add_rms_norm.wgsl")
            ),
            Kernel::RopeKv => include_str!("kernels/rope_kv.wgsl"),
            Kernel::Attention(..) => concat!(
                include_str!("kernels/attention_bindings.wgsl"),
                include_str!("kernels/q8_block.wgsl"),
                include_str!("kernels/q8_out.wgsl"),
                include_str!("kernels/attention.wgsl")
            ),
            Kernel::AttentionSplit(..) => concat!(include_str!("kernels/attention_bindings.wgsl"), include_str!("kernels/attention_split.wgsl")),
            Kernel::AttentionCombine(_) => concat!(include_str!("kernels/q8_block.wgsl"), include_str!("kernels/q8_out.wgsl"), include_str!("kernels/attention_combine.wgsl")),
            Kernel::SiluMul { .. } => concat!(include_str!("kernels/q8_block.wgsl"), include_str!("kernels/silu_mul.wgsl")),
            Kernel::Add => include_str!("kernels/add.wgsl"),
            Kernel::Argmax => include_str!("kernels/argmax.wgsl"),
            Kernel::Sample => include_str!("kernels/sample.wgsl"),
            Kernel::RoundQ8 => concat!(include_str!("kernels/q8_block.wgsl"), include_str!("kernels/round_q8.wgsl")),
            Kernel::QuantizeTensor => include_str!("kernels/quantize_tensor.wgsl"),
            Kernel::SubgroupLayout => include_str!("kernels/subgroup_layout.wgsl"),
        };
        source.into()
    }

    /// The pipeline's overridable constants (the weight's kind; the GEMV's lanes per row).
    fn constants(self) -> Vec<(&'static str, f64)> {
        match self {
            Kernel::GemvNBits(w) | Kernel::GemvNBitsSubgroups(w) | Kernel::GemmNBits(w, _) | Kernel::EmbedNBits(w) => w.constants().to_vec(),
            Kernel::GemvRows { kind, lanes, rows, xrows, glu, norm, .. } => kind
                .constants()
                .into_iter()
                .chain([("LANES", lanes as f64), ("ROWS", rows as f64), ("XROWS", xrows as f64), ("GLU", glu as u32 as f64)])
                .chain(norm.map(|eps| ("EPS", f32::from_bits(eps) as f64)))
                .collect(),
            Kernel::AddRmsNorm { round_q8 } | Kernel::SiluMul { round_q8 } | Kernel::AttentionCombine(round_q8) => vec![("ROUND_Q8", round_q8 as u32 as f64)],
            Kernel::Attention(rope, round_q8) => vec![rope.constant(), ("ROUND_Q8", round_q8 as u32 as f64)],
            Kernel::AttentionSplit(heads, rope) => vec![("GN", heads as f64), rope.constant()],
            _ => Vec::new(),
        }
    }
}

/// The arithmetic type's prelude (`hf`): it comes first, as `enable f16;` must.
fn arith(f16: bool) -> &'static str {
    if f16 {
        include_str!("kernels/arith_f16.wgsl")
    } else {
        include_str!("kernels/arith_f32.wgsl")
    }
}

/// Compiled pipelines, one per kernel, made on first use and shared by every dispatch.
#[derive(Default)]
pub struct Pipelines {
    map: HashMap<Kernel, wgpu::ComputePipeline>,
}

impl Pipelines {
    pub fn get(&mut self, ctx: &GpuContext, k: Kernel) -> &wgpu::ComputePipeline {
        self.map.entry(k).or_insert_with(|| ctx.pipeline(k.name(), &k.source(), &k.constants()))
    }

    /// Whether any kernel compiled here computes f16 products ([`Kernel::computes_f16`]).
    pub fn computes_f16(&self) -> bool {
        self.map.keys().any(Kernel::computes_f16)
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
    pub(crate) fn per_row(x: u32) -> Grid {
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

/// Workgroups of 64 covering a row of `n` elements, one group row per activation row
/// (`n` up to 64 × 65535, far above any hidden or intermediate size).
fn elementwise(n: usize) -> Grid {
    Grid::per_row((n as u32).div_ceil(64))
}

/// `x` rounded to int8 per block of 32 into `y` (`[rows][k]`), for linears whose node asks for
/// int8 activations: one invocation per block.
pub fn round_q8(ctx: &GpuContext, pipes: &mut Pipelines, k: usize, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("round_q8", &[k as u32]);
    pipes.bind(ctx, Kernel::RoundQ8, &[&params, x, y], Grid::per_row((k as u32 / 32).div_ceil(64)))
}

/// `x` (`[rows][k]`, the step's rows) quantized to uint8 with one scale and zero point over
/// all of it and dequantized into `y`, for linears after a `DynamicQuantizeLinear`: one
/// workgroup.
pub fn quantize_tensor(ctx: &GpuContext, pipes: &mut Pipelines, k: usize, state: &wgpu::Buffer, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("quantize_tensor", &[k as u32]);
    pipes.bind(ctx, Kernel::QuantizeTensor, &[&params, state, x, y], Grid::Fixed([1, 1, 1]))
}

/// RMSNorm of each of the step's rows (`x` and `y` `[rows][n]`), one workgroup per row.
pub fn rms_norm(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, eps: f32, x: &wgpu::Buffer, g: &wgpu::Buffer, y: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("rms_norm", &[n as u32, eps.to_bits()]);
    pipes.bind(ctx, Kernel::RmsNorm, &[&params, x, g, y], Grid::Rows { groups: [1, 1, 1], axis: 0, rows_per_group: 1 })
}

/// `sum = x + t` over the step's rows, then RMSNorm of the sums into `y` (all `[rows][n]`):
/// the residual add and the next norm in one dispatch, one workgroup per row. The same as
/// `norm`'s fused GEMV ([`super::nbits::GpuNBits::gemv_norm`]) gives its product and writes.
pub fn add_rms_norm(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, norm: super::nbits::NormInput, y: &wgpu::Buffer) -> Dispatch {
    bind_add_rms_norm(ctx, pipes, n, norm, y, false)
}

/// [`add_rms_norm`] with `y` then rounded to int8 per block of 32 as [`round_q8`] rounds it
/// (`n` a multiple of 32): the norm before linears whose nodes ask for int8 activations
/// (`accuracy_level = 4`), one dispatch instead of two.
pub fn add_rms_norm_q8(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, norm: super::nbits::NormInput, y: &wgpu::Buffer) -> Dispatch {
    bind_add_rms_norm(ctx, pipes, n, norm, y, true)
}

fn bind_add_rms_norm(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, norm: super::nbits::NormInput, y: &wgpu::Buffer, round_q8: bool) -> Dispatch {
    let params = ctx.uniform("add_rms_norm", &[n as u32, norm.eps.to_bits()]);
    pipes.bind(ctx, Kernel::AddRmsNorm { round_q8 }, &[&params, norm.x, norm.resid, norm.gain, y, norm.x_sum], Grid::Rows { groups: [1, 1, 1], axis: 0, rows_per_group: 1 })
}

/// Buffers of one [`rope_kv`]: the step state, the CPU's cos and sin tables, the step's rows of
/// q, k and v side by side (`[rows][(heads + 2 kv_heads) head_dim]`; q and k rotated in
/// place), and the layer's caches.
pub struct RopeKvBuffers<'a> {
    pub state: &'a wgpu::Buffer,
    pub cos: &'a wgpu::Buffer,
    pub sin: &'a wgpu::Buffer,
    pub qkv: &'a wgpu::Buffer,
    pub kcache: &'a wgpu::Buffer,
    pub vcache: &'a wgpu::Buffer,
}

/// RoPE on the step's queries and keys and the keys and values appended to the cache, in one
/// dispatch (`rope_kv.wgsl`).
pub fn rope_kv(ctx: &GpuContext, pipes: &mut Pipelines, s: super::twin::AttnShape, b: RopeKvBuffers) -> Dispatch {
    let params = ctx.uniform("rope_kv", &[s.heads as u32, s.kv_heads as u32, s.head_dim as u32, s.max_ctx as u32]);
    let pairs = ((s.heads + s.kv_heads) * s.head_dim / 2) as u32;
    pipes.bind(ctx, Kernel::RopeKv, &[&params, b.state, b.cos, b.sin, b.qkv, b.kcache, b.vcache], Grid::per_row(pairs.div_ceil(64)))
}

/// Buffers of one attention: `q` the step's rows of q, k and v side by side (as
/// [`RopeKvBuffers::qkv`]; attention reads the queries, and with RoPE fused in the new keys and
/// values), `out` `[rows][heads][head_dim]`, `scratch` f32 for the most rows a step runs:
/// [`attention`]'s scores `[rows][heads][max_ctx]`, [`attention_split`]'s
/// [`attention_part_floats`] per row; `cos` and `sin` RoPE's tables (as
/// [`RopeKvBuffers`]'s), read where RoPE is fused in.
pub struct AttnBuffers<'a> {
    pub state: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub kcache: &'a wgpu::Buffer,
    pub vcache: &'a wgpu::Buffer,
    pub scratch: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub cos: &'a wgpu::Buffer,
    pub sin: &'a wgpu::Buffer,
}

/// Whether an attention does [`rope_kv`]'s work itself (`attention_bindings.wgsl`'s `ROPE`,
/// a pipeline constant): a decode step's, one row, heads of an even width up to
/// [`ATTENTION_MAX_HEAD_DIM`]; else the cache already holds the step's keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rope {
    Fused,
    Before,
}

impl Rope {
    /// The attention kernels' `ROPE` pipeline constant.
    fn constant(self) -> (&'static str, f64) {
        ("ROPE", (self == Rope::Fused) as u32 as f64)
    }
}

/// Both attention kernels' uniform (`attention_bindings.wgsl`): the shape, the score scale,
/// the queries' row (q, k and v side by side), the split kernel's `splits` a row; checks that
/// heads take RoPE fused in where asked.
fn attention_params(ctx: &GpuContext, label: &str, s: super::twin::AttnShape, splits: u32, rope: Rope) -> wgpu::Buffer {
    if rope == Rope::Fused {
        assert!(s.head_dim <= ATTENTION_MAX_HEAD_DIM && s.head_dim % 2 == 0, "RoPE fused into attention of heads {s:?}");
    }
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let q_row = (s.heads + 2 * s.kv_heads) * s.head_dim;
    ctx.uniform(label, &[s.heads as u32, s.kv_heads as u32, s.head_dim as u32, s.max_ctx as u32, scale.to_bits(), q_row as u32, splits])
}

/// Causal grouped-query attention, one workgroup per (query head, row): `attention.wgsl`.
pub fn attention(ctx: &GpuContext, pipes: &mut Pipelines, s: super::twin::AttnShape, b: AttnBuffers, rope: Rope) -> Dispatch {
    attention_with(ctx, pipes, s, b, rope, false)
}

/// [`attention`] with its output rounded to int8 per block of 32 as [`round_q8`] rounds it
/// where `round_q8` (`head_dim` a multiple of 32): the output projection's input where its
/// node asks for int8 activations, one dispatch instead of two.
pub fn attention_with(ctx: &GpuContext, pipes: &mut Pipelines, s: super::twin::AttnShape, b: AttnBuffers, rope: Rope, round_q8: bool) -> Dispatch {
    assert!(!round_q8 || s.head_dim % 32 == 0, "int8 blocks over heads of {}", s.head_dim);
    let params = attention_params(ctx, "attention", s, 0, rope);
    pipes.bind(ctx, Kernel::Attention(rope, round_q8), &[&params, b.state, b.q, b.kcache, b.vcache, b.scratch, b.out, b.cos, b.sin], Grid::per_row(s.heads as u32))
}

/// Positions one [`attention_split`] workgroup takes (`attention_split.wgsl`'s `SPLIT`).
pub const ATTENTION_SPLIT: usize = 64;
/// Most query heads one [`attention_split`] workgroup serves, and the widest head it takes.
pub const ATTENTION_HEADS: usize = 8;
pub const ATTENTION_MAX_HEAD_DIM: usize = 256;

/// Query heads one [`attention_split`] workgroup serves for `group` query heads a kv head:
/// the largest divisor of `group` up to [`ATTENTION_HEADS`].
pub fn attention_heads(group: usize) -> usize {
    (1..=ATTENTION_HEADS.min(group)).rev().find(|d| group % d == 0).unwrap_or(1)
}

/// f32 values of [`attention_split`]'s scratch for one query row: `[heads][splits][head_dim +
/// 2]` (each split's sum of values, its largest score and its sum of exponentials).
pub fn attention_part_floats(s: super::twin::AttnShape) -> usize {
    s.heads * s.max_ctx.div_ceil(ATTENTION_SPLIT) * (s.head_dim + 2)
}

/// The same attention as two dispatches: `attention_split.wgsl` over splits of
/// [`ATTENTION_SPLIT`] positions (each key and value loaded once for [`attention_heads`] of a
/// kv head's query heads; a long context spread over many workgroups), then
/// `attention_combine.wgsl` adding the splits. `s.head_dim` is at most
/// [`ATTENTION_MAX_HEAD_DIM`] (the caller checks).
pub fn attention_split(ctx: &GpuContext, pipes: &mut Pipelines, s: super::twin::AttnShape, b: AttnBuffers, rope: Rope) -> [Dispatch; 2] {
    attention_split_with(ctx, pipes, s, b, rope, false)
}

/// [`attention_split`] with its output rounded as [`attention_with`]'s (by the combine).
pub fn attention_split_with(ctx: &GpuContext, pipes: &mut Pipelines, s: super::twin::AttnShape, b: AttnBuffers, rope: Rope, round_q8: bool) -> [Dispatch; 2] {
    assert!(s.head_dim <= ATTENTION_MAX_HEAD_DIM && s.heads % s.kv_heads == 0, "attention shape {s:?}");
    assert!(!round_q8 || s.head_dim % 32 == 0, "int8 blocks over heads of {}", s.head_dim);
    let splits = s.max_ctx.div_ceil(ATTENTION_SPLIT) as u32;
    let params = attention_params(ctx, "attention_split", s, splits, rope);
    let gn = attention_heads(s.heads / s.kv_heads);
    let grid = Grid::Rows { groups: [(s.heads / gn) as u32, 1, splits], axis: 1, rows_per_group: 1 };
    let split = pipes.bind(ctx, Kernel::AttentionSplit(gn as u32, rope), &[&params, b.state, b.q, b.kcache, b.vcache, b.scratch, b.cos, b.sin], grid);
    let params = ctx.uniform("attention_combine", &[s.heads as u32, s.head_dim as u32, splits, ATTENTION_SPLIT as u32]);
    let combine = pipes.bind(ctx, Kernel::AttentionCombine(round_q8), &[&params, b.state, b.scratch, b.out], Grid::per_row(s.heads as u32));
    [split, combine]
}

/// SiLU(gate) · up of the step's rows, gate and up side by side in `gate_up` (`[rows][2n]`),
/// into `out` (`[rows][n]`).
pub fn silu_mul(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, gate_up: &wgpu::Buffer, out: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("silu_mul", &[n as u32]);
    pipes.bind(ctx, Kernel::SiluMul { round_q8: false }, &[&params, gate_up, out], elementwise(n))
}

/// [`silu_mul`] with `out` rounded to int8 per block of 32 as [`round_q8`] rounds it (`n` a
/// multiple of 32): the input of a down projection whose node asks for int8 activations, one
/// dispatch instead of two.
pub fn silu_mul_q8(ctx: &GpuContext, pipes: &mut Pipelines, n: usize, gate_up: &wgpu::Buffer, out: &wgpu::Buffer) -> Dispatch {
    let params = ctx.uniform("silu_mul", &[n as u32]);
    pipes.bind(ctx, Kernel::SiluMul { round_q8: true }, &[&params, gate_up, out], Grid::per_row((n as u32 / 32).div_ceil(64)))
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
    /// Scratch, `[n]` u32: the kept candidates' ids.
    pub kept_ids: &'a wgpu::Buffer,
}

/// Temperature, top-k, top-p and repetition penalty over the logits, in one workgroup.
pub fn sample(ctx: &GpuContext, pipes: &mut Pipelines, b: SampleBuffers) -> Dispatch {
    pipes.bind(ctx, Kernel::Sample, &[b.opts, b.logits, b.seen, b.keys, b.weights, b.state, b.kept_ids], Grid::Fixed([1, 1, 1]))
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
