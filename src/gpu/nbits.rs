//! Block-quantized weights on the GPU: com.microsoft::MatMulNBits's layout, 4 or 8 bits, with
//! no zero points (the middle of the range), integer ones or float ones (`w = (q - zp) *
//! scale`, llama.cpp Q4_1's form: edge-llm's int4 recipe); also a plain MatMul's float weight
//! (f32, or f16 pairs) in the same row layout, one block per row. [`BlockSpec`] is a weight's shape
//! and storage, [`BlockWeight`] its host form (tests, the twins), [`GpuNBits`] its GPU form:
//! buffers made before any byte arrives and filled row by row as the weight's tensors are read
//! ([`GpuNBits::write`]), so a load never needs a whole weight in memory, split by rows where
//! the adapter binds less than the weight.

use std::ops::Range;

use super::context::GpuContext;
use super::kernels::{f32_bytes, grid, max_binding, Dispatch, Grid, Kernel, NBitsKind, Pipelines};
use super::{GemvKernel, PrefillKernel};
use crate::quant::{Q4MinWeight, Q4Weight, Q8BlockWeight};
use crate::{Error, Result};

/// How `gemv_rows.wgsl` is shaped for a weight ([`BlockSpec::rows_kernel_shape`]): about
/// `chunks_per_lane` 16-byte chunks of a row per lane (4 to 64 lanes), `rows` output rows per
/// lane group. The engine's is [`RowsShape::SOFTWARE`] on a CPU rasterizer and on a GPU
/// [`RowsShape::GPU`] until a load tunes it ([`super::probe::tune_rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsShape {
    pub chunks_per_lane: u32,
    pub rows: u32,
    /// A lane group adds its shares by subgroup shuffles (`gemv_rows_reduce_subgroups.wgsl`)
    /// where the device allows it for its lanes ([`GpuContext::shuffles`]), else by the
    /// barrier tree.
    pub shuffles: bool,
}

/// Whether a CPU rasterizer's groups add their shares by shuffles (llvmpipe: subgroups of 8).
const SOFTWARE_SHUFFLES: bool = true;

impl RowsShape {
    /// On a CPU rasterizer, which runs a workgroup's invocations as one thread's SIMD lanes: 4
    /// lanes whatever the row (the fewest waste least on the reduction: llvmpipe, SmolLM2's
    /// head 15 ms a call at 4 lanes, 19 at 8, 83 at 64) and 4 rows (the head 18.0 ms at 1 row,
    /// 12.9 at 2, 9.7 at 4).
    pub const SOFTWARE: RowsShape = RowsShape { chunks_per_lane: u32::MAX, rows: 4, shuffles: SOFTWARE_SHUFFLES };
    /// On a GPU before tuning: about 4 chunks per lane (SmolLM2's int4 576-wide rows: 18
    /// chunks, 8 lanes; a 4096-wide row: 128 chunks, 32 lanes), 2 rows per group (each x vector
    /// loaded once for two rows: x is read from cache at 8 times the weights' bytes for int4).
    /// A reasoned default, not yet measured on a GPU against the others (`bench-gpu` sweeps
    /// them). The barrier tree: on the H200 the per-row GEMV's tree beat its `subgroupAdd`
    /// (README, "On a hardware GPU"); a load's tuning times the shuffles.
    pub const GPU: RowsShape = RowsShape { chunks_per_lane: 4, rows: 2, shuffles: false };
    /// What a load's tuning times: 1, 2, 4, 8 chunks per lane x 1, 2, 4 rows, barrier tree
    /// (it adds the shuffles where the device allows them: [`super::probe::tune_rows`]).
    pub fn candidates() -> Vec<RowsShape> {
        [1, 2, 4, 8].into_iter().flat_map(|c| super::ROWS_KERNEL_ROWS.map(|rows| RowsShape { chunks_per_lane: c, rows, shuffles: false })).collect()
    }
}

impl std::fmt::Display for RowsShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.chunks_per_lane == u32::MAX {
            write!(f, "4 lanes x {} rows", self.rows)?;
        } else {
            let s = if self.chunks_per_lane == 1 { "" } else { "s" };
            write!(f, "{} chunk{s} a lane x {} rows", self.chunks_per_lane, self.rows)?;
        }
        if self.shuffles {
            write!(f, ", shuffles")?;
        }
        Ok(())
    }
}

/// How a block's zero point is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroPointKind {
    /// None stored: the middle of the range, 2^(bits-1) (8 for int4, 128 for int8).
    Middle,
    /// An unsigned `bits`-wide integer per block (MatMulNBits' uint8 `zero_points`).
    Int,
    /// A float per block (MatMulNBits' `zero_points` of the scales' type).
    Float,
}

impl ZeroPointKind {
    /// The kernels' `zp_mode`.
    fn mode(self) -> u32 {
        match self {
            ZeroPointKind::Middle => 0,
            ZeroPointKind::Int => 1,
            ZeroPointKind::Float => 2,
        }
    }
}

/// A block-quantized weight `[n][k]` (blocks of `block_size` along `k`, `bits` per value): its
/// shape and how its zero points are stored. On the GPU each row holds its values as the file
/// does (`[blocks][block_size * bits / 8]` bytes), f32 scales `[blocks]`, and zero points as
/// f32 `[blocks]` (float ones) or the file's packed integers padded to whole u32 words per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub n: usize,
    pub k: usize,
    pub bits: usize,
    pub block_size: usize,
    pub zero_points: ZeroPointKind,
    /// Scales (and float zero points) are held as f16, two per u32 word, each row padded to a
    /// whole word: as a file with f16 scales stores them (edge-llm's recipe; 2 bytes a block
    /// where f32 takes 4). Values must be f16-exact.
    pub f16_params: bool,
    /// A float `[n]` added to the outputs (MatMulNBits' `bias` input, or a MatMul's `Add`).
    pub bias: bool,
}

/// The parts of a [`GpuNBits`] that [`GpuNBits::write`] fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Data,
    Scales,
    ZeroPoints,
    /// One f32 per row.
    Bias,
}

impl BlockSpec {
    /// A float weight `[n][k]`: `bits` 32 (f32) or 16 (f16, two per word), each row padded to
    /// a whole word, no scales or zero points (one block per row).
    pub fn float(n: usize, k: usize, bits: usize) -> Self {
        let per_word = 32 / bits.max(1);
        BlockSpec { n, k, bits, block_size: k.div_ceil(per_word).max(1) * per_word, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false }
    }

    /// Values are floats ([`BlockSpec::float`]).
    pub fn is_float(&self) -> bool {
        self.bits >= 16
    }

    /// `nbits.wgsl`'s `Params` of a part holding `n` rows of this weight, written to output
    /// columns `row0..row0 + n` of rows `total` wide.
    fn part_params(&self, n: usize, row0: usize, total: usize) -> [u32; 8] {
        [n as u32, self.k as u32, self.block_size as u32, self.zp_mode(), row0 as u32, total as u32, self.bits as u32, self.f16_params as u32]
    }

    /// The kernels' `zp_mode` (3: float values).
    fn zp_mode(&self) -> u32 {
        if self.is_float() { 3 } else { self.zero_points.mode() }
    }

    pub fn blocks(&self) -> usize {
        self.k.div_ceil(self.block_size.max(1))
    }

    /// Bytes of one row of `field` on the GPU.
    pub fn row_bytes(&self, field: Field) -> usize {
        match (field, self.zero_points) {
            (Field::Data, _) => self.blocks() * self.block_size * self.bits / 8,
            (Field::Bias, _) => if self.bias { 4 } else { 0 },
            (Field::Scales | Field::ZeroPoints, _) if self.is_float() => 0,
            (Field::Scales, _) | (Field::ZeroPoints, ZeroPointKind::Float) => self.param_row_bytes(),
            (Field::ZeroPoints, ZeroPointKind::Int) => self.int_zero_point_row_bytes().div_ceil(4) * 4,
            (Field::ZeroPoints, ZeroPointKind::Middle) => 0,
        }
    }

    /// Bytes of one row of scales (or float zero points) on the GPU.
    fn param_row_bytes(&self) -> usize {
        if self.f16_params { (self.blocks() * 2).div_ceil(4) * 4 } else { self.blocks() * 4 }
    }

    /// Bytes of one row of integer zero points as MatMulNBits stores them: `bits` per block,
    /// low bits first, each row starting on a byte.
    pub fn int_zero_point_row_bytes(&self) -> usize {
        (self.blocks() * self.bits).div_ceil(8)
    }

    /// The kind the kernels are compiled for (`nbits.wgsl`'s constants).
    pub fn kind(&self) -> NBitsKind {
        NBitsKind { bits: self.bits as u32, block: self.block_size as u32, zp_mode: self.zp_mode(), f16_params: self.f16_params }
    }

    /// `gemv_rows.wgsl` reads rows as whole 16-byte chunks with their x as vec4s: rows must
    /// hold no padding (`k` a multiple of the block; float rows are one block of `k` padded to
    /// a word), `k` a multiple of 4, and row bytes a multiple of 16. True for the int4 and
    /// int8 weights of blocks of 32 or more and for float ones with `k` a multiple of 8 (f16)
    /// or 4 (f32); not for int4 blocks of 16 over an odd number of blocks.
    pub fn rows_kernel_fits(&self) -> bool {
        self.k % self.block_size == 0 && self.k % 4 == 0 && self.row_bytes(Field::Data) % 16 == 0
    }

    /// `gemv_rows.wgsl`'s lanes per group and rows per group for this weight under `shape`:
    /// the row's 16-byte chunks over `shape.chunks_per_lane`, to a power of two in 4..=64.
    pub fn rows_kernel_shape(&self, shape: RowsShape) -> (u32, u32) {
        let chunks = (self.row_bytes(Field::Data) / 16) as u32;
        (chunks.div_ceil(shape.chunks_per_lane.max(1)).next_power_of_two().clamp(4, 64), shape.rows)
    }

    /// Bytes the weight takes on the GPU.
    pub fn gpu_bytes(&self) -> usize {
        self.n * FIELDS.iter().map(|f| self.row_bytes(*f)).sum::<usize>()
    }

    fn check(&self, name: &str) -> Result<()> {
        if self.is_float() {
            if !matches!(self.bits, 16 | 32) || self.n == 0 || self.k == 0 {
                return Err(Error::UnsupportedBackend(format!("webgpu: `{name}` is a [{}][{}] float weight of {} bits; the kernels take f32 or f16", self.n, self.k, self.bits)));
            }
            return Ok(());
        }
        if !matches!(self.bits, 4 | 8) || self.block_size % 8 != 0 || self.block_size < 16 || self.n == 0 || self.k == 0 {
            return Err(Error::UnsupportedBackend(format!(
                "webgpu: `{name}` is a [{}][{}] {}-bit weight in blocks of {}; the kernels take 4 or 8 bits in blocks of a multiple of 8 >= 16",
                self.n, self.k, self.bits, self.block_size
            )));
        }
        Ok(())
    }

    /// The row ranges the weight is split into so each range's buffers fit in `max` bytes (see
    /// [`max_binding`]): one range when the whole weight fits, else as few as fit, of nearly
    /// equal size. A row that alone does not fit is `UnsupportedBackend`, naming the weight and
    /// the limit.
    pub fn row_ranges(&self, name: &str, max: u64) -> Result<Vec<Range<usize>>> {
        let row = FIELDS.iter().map(|f| self.row_bytes(*f)).max().unwrap_or(0).max(1) as u64;
        if row > max {
            return Err(Error::UnsupportedBackend(format!(
                "webgpu: one row of `{name}` ([{}][{}] {}-bit) takes {row} bytes, more than the adapter binds as one storage buffer ({max} bytes: maxStorageBufferBindingSize / maxBufferSize)",
                self.n, self.k, self.bits
            )));
        }
        let n = self.n;
        let per_part = (max / row) as usize;
        let parts = n.div_ceil(per_part).max(1);
        let rows = n.div_ceil(parts);
        Ok((0..parts).map(|p| p * rows..((p + 1) * rows).min(n)).filter(|r| !r.is_empty()).collect())
    }
}

/// Every [`Field`].
const FIELDS: [Field; 4] = [Field::Data, Field::Scales, Field::ZeroPoints, Field::Bias];

/// Zero points of a [`BlockWeight`], one per block (row-major `[n][blocks]`).
#[derive(Debug, Clone, PartialEq)]
pub enum ZeroPoints {
    Middle,
    Int(Vec<u8>),
    Float(Vec<f32>),
}

/// A block-quantized weight on the host: what the twins compute with and tests upload.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockWeight {
    pub spec: BlockSpec,
    /// `[n][blocks][block_size * bits / 8]` bytes, values low bits first.
    pub data: Vec<u8>,
    /// `[n][blocks]`.
    pub scales: Vec<f32>,
    pub zero_points: ZeroPoints,
    /// `[n]` where `spec.bias`.
    pub bias: Vec<f32>,
}

impl BlockWeight {
    /// A float weight ([`BlockSpec::float`]) holding `values` (`[n][k]`; rounded to f16 when
    /// `bits` is 16).
    pub fn float(n: usize, k: usize, bits: usize, values: &[f32]) -> Self {
        let spec = BlockSpec::float(n, k, bits);
        assert_eq!(values.len(), n * k, "[n][k] values");
        let row = spec.row_bytes(Field::Data);
        let mut data = Vec::with_capacity(n * row);
        for r in values.chunks_exact(k) {
            if bits == 32 {
                data.extend(r.iter().flat_map(|v| v.to_le_bytes()));
            } else {
                data.extend(r.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()));
            }
            data.resize(data.len().next_multiple_of(row), 0);
        }
        BlockWeight { spec, data, scales: Vec::new(), zero_points: ZeroPoints::Middle, bias: Vec::new() }
    }

    /// Value `i` of row `j` as stored: the integer of a quantized weight, a float weight's
    /// value.
    pub fn stored(&self, j: usize, i: usize) -> f32 {
        let s = &self.spec;
        let at = j * s.row_bytes(Field::Data) + i * s.bits / 8;
        match s.bits {
            32 => f32::from_le_bytes(self.data[at..at + 4].try_into().expect("4 bytes")),
            16 => half::f16::from_le_bytes([self.data[at], self.data[at + 1]]).to_f32(),
            _ => self.quant(j, i) as f32,
        }
    }

    /// Value `i` of row `j` as stored (a quantized weight's).
    pub fn quant(&self, j: usize, i: usize) -> u32 {
        let s = &self.spec;
        let bit = i * s.bits;
        let byte = self.data[j * s.row_bytes(Field::Data) + bit / 8];
        (byte as u32 >> (bit % 8)) & ((1 << s.bits) - 1)
    }

    pub fn zero_point(&self, j: usize, b: usize) -> f32 {
        let at = j * self.spec.blocks() + b;
        match &self.zero_points {
            _ if self.spec.is_float() => 0.0,
            ZeroPoints::Middle => (1u32 << (self.spec.bits - 1)) as f32,
            ZeroPoints::Int(z) => z[at] as f32,
            ZeroPoints::Float(z) => z[at],
        }
    }

    pub fn scale(&self, j: usize, b: usize) -> f32 {
        if self.spec.is_float() {
            return 1.0;
        }
        self.scales[j * self.spec.blocks() + b]
    }

    /// `(q - zp) * scale` of value `i` of row `j`.
    pub fn value(&self, j: usize, i: usize) -> f32 {
        let b = i / self.spec.block_size;
        (self.stored(j, i) - self.zero_point(j, b)) * self.scale(j, b)
    }

    /// The weight's values, `[n][k]`.
    pub fn dequantized(&self) -> Vec<f32> {
        (0..self.spec.n).flat_map(|j| (0..self.spec.k).map(move |i| self.value(j, i))).collect()
    }

    /// `[n][blocks]` floats in the GPU's layout for scales and float zero points: f32, or f16
    /// pairs with each row padded to a word.
    fn gpu_params(&self, v: &[f32]) -> Vec<u8> {
        if !self.spec.f16_params {
            return f32_bytes(v);
        }
        let row = self.spec.row_bytes(Field::Scales);
        v.chunks_exact(self.spec.blocks())
            .flat_map(|r| {
                let mut b: Vec<u8> = r.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
                b.resize(row, 0);
                b
            })
            .collect()
    }

    /// The zero points in the GPU's layout ([`BlockSpec::row_bytes`]).
    fn gpu_zero_points(&self) -> Vec<u8> {
        let s = &self.spec;
        match &self.zero_points {
            ZeroPoints::Middle => Vec::new(),
            ZeroPoints::Float(z) => self.gpu_params(z),
            ZeroPoints::Int(z) => {
                let row = s.row_bytes(Field::ZeroPoints);
                let mut out = vec![0u8; s.n * row];
                for (j, zr) in z.chunks_exact(s.blocks()).enumerate() {
                    for (b, v) in zr.iter().enumerate() {
                        let bit = b * s.bits;
                        out[j * row + bit / 8] |= (v & ((1u16 << s.bits) - 1) as u8) << (bit % 8);
                    }
                }
                out
            }
        }
    }
}

impl From<Q4Weight> for BlockWeight {
    fn from(w: Q4Weight) -> Self {
        let zero_points = match w.zero_points {
            Some(z) => ZeroPoints::Int(z),
            None => ZeroPoints::Middle,
        };
        let kind = if zero_points == ZeroPoints::Middle { ZeroPointKind::Middle } else { ZeroPointKind::Int };
        BlockWeight {
            spec: BlockSpec { n: w.n, k: w.k, bits: 4, block_size: w.block_size, zero_points: kind, f16_params: false, bias: false },
            data: w.packed,
            scales: w.scales,
            zero_points,
            bias: Vec::new(),
        }
    }
}

impl From<Q4MinWeight> for BlockWeight {
    fn from(w: Q4MinWeight) -> Self {
        BlockWeight {
            spec: BlockSpec { n: w.n, k: w.k, bits: 4, block_size: w.block_size, zero_points: ZeroPointKind::Float, f16_params: false, bias: false },
            data: w.packed,
            scales: w.scales,
            zero_points: ZeroPoints::Float(w.zero_points),
            bias: Vec::new(),
        }
    }
}

impl From<Q8BlockWeight> for BlockWeight {
    /// `(q - 128) * scale`.
    fn from(w: Q8BlockWeight) -> Self {
        BlockWeight {
            spec: BlockSpec { n: w.n, k: w.k, bits: 8, block_size: w.block_size, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false },
            data: w.q,
            scales: w.scales,
            zero_points: ZeroPoints::Middle,
            bias: Vec::new(),
        }
    }
}

/// A row range of a weight on the GPU, each field in a buffer of its own.
#[derive(Clone)]
pub struct Part {
    /// The weight's rows this part holds.
    pub rows: Range<usize>,
    pub data: wgpu::Buffer,
    pub scales: wgpu::Buffer,
    /// Zero points, or a 4-byte placeholder without them.
    pub zps: wgpu::Buffer,
    /// The part's rows' bias, or a placeholder without one.
    pub bias: wgpu::Buffer,
    /// `[part rows, k, block_size, zp_mode, first row, all rows, bits, f16_params]`: the kernels index the
    /// part's buffers from its first row and write outputs (or gather tokens) at the weight's rows.
    pub params: wgpu::Buffer,
}

impl Part {
    fn buffer(&self, field: Field) -> &wgpu::Buffer {
        match field {
            Field::Data => &self.data,
            Field::Scales => &self.scales,
            Field::ZeroPoints => &self.zps,
            Field::Bias => &self.bias,
        }
    }
}

/// The input of a GEMV with the residual add and RMSNorm before it fused in
/// ([`GpuNBits::gemv_norm`]): the residual stream `x`, the projection `resid` added to it, the
/// norm's `gain` and `eps`, and the buffer `x + resid` goes to.
#[derive(Clone, Copy)]
pub struct NormInput<'a> {
    pub x: &'a wgpu::Buffer,
    pub resid: &'a wgpu::Buffer,
    pub gain: &'a wgpu::Buffer,
    pub x_sum: &'a wgpu::Buffer,
    pub eps: f32,
}

/// A block-quantized weight on the GPU, in one part or split by rows into several (a large
/// head or embedding table over a small `maxStorageBufferBindingSize`): the kernels run once
/// per part, each writing its rows of the output.
pub struct GpuNBits {
    pub spec: BlockSpec,
    pub parts: Vec<Part>,
    /// How its inputs are rounded first, as its node asks.
    pub activations: Activations,
}

/// How a linear's input is rounded before its product, as its node computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// As they are.
    #[default]
    Float,
    /// To int8 per block of 32 (`round_q8.wgsl`), as a `MatMulNBits` node's `accuracy_level =
    /// 4` asks (onnxruntime's int8 compute; the CPU backend's int8 kernels compute the same
    /// products exactly in integers).
    Int8Blocks,
    /// To uint8 with one scale and zero point over the step's rows (`quantize_tensor.wgsl`):
    /// the `DynamicQuantizeLinear` before a `MatMulInteger` (onnxruntime's `quantize_dynamic`).
    Uint8Tensor,
}

/// What a weight's dispatches depend on, known before it is on the GPU: its layout and how its
/// node rounds its input ([`super::decode::ModelShapes`] counts a step's from these).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightShape {
    pub spec: BlockSpec,
    pub activations: Activations,
}

impl WeightShape {
    /// The buffers (row ranges) an adapter binding at most `max` bytes splits it into.
    pub fn parts(&self, max: u64) -> usize {
        self.spec.row_ranges("", max).map_or(1, |r| r.len())
    }

    /// Dispatches its product records: one per part, and one per part for a bias.
    pub fn product_dispatches(&self, max: u64) -> usize {
        self.parts(max) * (1 + self.spec.bias as usize)
    }

    /// Whether `ctx`'s decode GEMV for it is `gemv_rows.wgsl` on float activations: the GEMV
    /// the residual add and norm ([`GpuNBits::gemv_norm`]) or SiLU·mul
    /// ([`GpuNBits::gemv_glu`]) before it fuse into.
    pub fn fuses(&self, ctx: &GpuContext) -> bool {
        self.activations == Activations::Float && ctx.gemv_kernel() != GemvKernel::PerRow && self.spec.rows_kernel_fits()
    }

    /// The weight `shapes` stack into by rows ([`GpuNBits::stacked`]), each in `parts` buffers
    /// on an adapter binding at most `max` bytes: `None` where they differ in anything but
    /// their row count (kind, k, block, zero points, bias, rounding), one is split, or the
    /// stack would need splitting.
    pub fn stack(shapes: &[(WeightShape, usize)], max: u64) -> Option<WeightShape> {
        let (first, _) = shapes.first()?;
        let same = |(w, parts): &(WeightShape, usize)| BlockSpec { n: first.spec.n, ..w.spec } == first.spec && w.activations == first.activations && *parts == 1;
        if !shapes.iter().all(same) {
            return None;
        }
        let spec = BlockSpec { n: shapes.iter().map(|(w, _)| w.spec.n).sum(), ..first.spec };
        // Whole 4-byte words per row in every field, for the copies' offsets and sizes.
        if FIELDS.iter().any(|f| spec.row_bytes(*f) % 4 != 0) || spec.row_ranges("", max).map_or(true, |r| r.len() != 1) {
            return None;
        }
        Some(WeightShape { spec, activations: first.activations })
    }
}

impl GpuNBits {
    /// Its [`WeightShape`].
    pub fn shape(&self) -> WeightShape {
        WeightShape { spec: self.spec, activations: self.activations }
    }

    /// Buffers for a `spec` weight, zeroed; [`GpuNBits::write`] fills them.
    pub fn allocate(ctx: &GpuContext, name: &str, spec: BlockSpec) -> Result<Self> {
        spec.check(name)?;
        let ranges = spec.row_ranges(name, max_binding(ctx.limits()))?;
        let mut parts = Vec::with_capacity(ranges.len());
        for rows in ranges {
            let n = rows.len();
            let bytes = |f: Field| (n * spec.row_bytes(f)) as u64;
            let params = spec.part_params(n, rows.start, spec.n);
            parts.push(Part {
                data: ctx.storage(name, bytes(Field::Data))?,
                scales: ctx.storage(name, bytes(Field::Scales))?,
                zps: ctx.storage(name, bytes(Field::ZeroPoints))?,
                bias: ctx.storage(name, bytes(Field::Bias))?,
                params: ctx.uniform(name, &params),
                rows,
            });
        }
        Ok(GpuNBits { spec, parts, activations: Activations::Float })
    }

    /// Its products written at columns `offset..offset + n` of output rows `total` wide (a
    /// linear writing into a wider activation, e.g. q, k and v side by side): the parts'
    /// parameters made again, the weight's buffers shared.
    pub fn placed(&self, ctx: &GpuContext, offset: usize, total: usize) -> Self {
        let spec = self.spec;
        let parts = self
            .parts
            .iter()
            .map(|p| {
                let params = spec.part_params(p.rows.len(), offset + p.rows.start, total);
                Part { params: ctx.uniform("placed", &params), ..p.clone() }
            })
            .collect();
        GpuNBits { spec, parts, activations: self.activations }
    }

    /// `weights` stacked by rows into one weight (q, k and v; gate and up: one product instead
    /// of several), its buffers filled by GPU copies of theirs (queued now; the caller drops
    /// the originals). `None` where they differ in anything but their row count (kind, k, block,
    /// zero points, bias, rounding), one is split by rows, or the stack would need splitting.
    pub fn stacked(ctx: &GpuContext, name: &str, weights: &[&GpuNBits]) -> Result<Option<Self>> {
        let shapes: Vec<(WeightShape, usize)> = weights.iter().map(|w| (w.shape(), w.parts.len())).collect();
        let Some(stacked) = WeightShape::stack(&shapes, max_binding(ctx.limits())) else { return Ok(None) };
        let spec = stacked.spec;
        let stack = GpuNBits { activations: stacked.activations, ..Self::allocate(ctx, name, spec)? };
        let mut enc = ctx.encoder();
        let mut row = 0;
        for w in weights {
            for field in FIELDS {
                let bytes = (w.spec.n * spec.row_bytes(field)) as u64;
                if bytes > 0 {
                    enc.copy_buffer_to_buffer(w.parts[0].buffer(field), 0, stack.parts[0].buffer(field), (row * spec.row_bytes(field)) as u64, bytes);
                }
            }
            row += w.spec.n;
        }
        ctx.submit(enc);
        Ok(Some(stack))
    }

    /// Write `bytes`, whole rows `first..` of `field` in the GPU's layout
    /// ([`BlockSpec::row_bytes`]), into the parts that hold them.
    pub fn write(&self, ctx: &GpuContext, field: Field, first: usize, bytes: &[u8]) {
        let row = self.spec.row_bytes(field);
        if row == 0 || bytes.is_empty() {
            return;
        }
        debug_assert_eq!(bytes.len() % row, 0, "whole rows");
        let end = first + bytes.len() / row;
        for p in &self.parts {
            let (a, b) = (p.rows.start.max(first), p.rows.end.min(end));
            if a < b {
                ctx.write(p.buffer(field), ((a - p.rows.start) * row) as u64, &bytes[(a - first) * row..(b - first) * row]);
            }
        }
    }

    /// `w` on the GPU.
    pub fn upload(ctx: &GpuContext, name: &str, w: &BlockWeight) -> Result<Self> {
        let g = Self::allocate(ctx, name, w.spec)?;
        g.write(ctx, Field::Data, 0, &w.data);
        g.write(ctx, Field::Scales, 0, &w.gpu_params(&w.scales));
        g.write(ctx, Field::ZeroPoints, 0, &w.gpu_zero_points());
        g.write(ctx, Field::Bias, 0, &f32_bytes(&w.bias));
        Ok(g)
    }

    /// `y[r] = W x[r]` for each of the step's rows (decode: one; `state` holds the count),
    /// weights read once per row: one dispatch per part.
    /// The kernel is `ctx`'s choice ([`GemvKernel`]): `gemv_rows.wgsl` where the rows allow it
    /// ([`BlockSpec::rows_kernel_fits`]), else `gemv_nbits.wgsl`.
    pub fn gemv(&self, ctx: &GpuContext, pipes: &mut Pipelines, state: &wgpu::Buffer, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Vec<Dispatch> {
        self.gemv_with(ctx, pipes, ctx.gemv_kernel(), state, x, y)
    }

    /// [`GpuNBits::gemv`] with the kernel `choice` (the benchmark compares them).
    pub fn gemv_with(&self, ctx: &GpuContext, pipes: &mut Pipelines, choice: GemvKernel, state: &wgpu::Buffer, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Vec<Dispatch> {
        self.bind_rows_kernel(ctx, pipes, self.gemv_kernel(ctx, choice), state, x, y, &[])
    }

    /// `y[r] = W silu(gate[r]) * up[r]` for each of the step's rows, `gate_up` holding rows
    /// `[gate | up]` each `k` wide (the feed-forward's down projection with its activation,
    /// `silu_mul.wgsl`, fused: one dispatch less a step), where `ctx`'s GEMV is the rows kernel
    /// for this weight; `None` where it is not (the caller runs `silu_mul.wgsl`, then
    /// [`GpuNBits::gemv`]).
    pub fn gemv_glu(&self, ctx: &GpuContext, pipes: &mut Pipelines, state: &wgpu::Buffer, gate_up: &wgpu::Buffer, y: &wgpu::Buffer) -> Option<Vec<Dispatch>> {
        let kernel = self.gemv_kernel(ctx, ctx.gemv_kernel()).with_glu()?;
        Some(self.bind_rows_kernel(ctx, pipes, kernel, state, gate_up, y, &[]))
    }

    /// `y[r] = W RMSNorm(x[r] + resid[r])` (gain `gain`, epsilon `eps`) for each of the step's
    /// rows (the engine's decode step: one), `x + resid` also written to `x_sum`: the residual
    /// add and the norm before a decode step's product fused into it (one dispatch less), where `ctx`'s GEMV is the rows kernel for this weight and it
    /// computes on float activations; `None` where not (the caller runs `add_rms_norm.wgsl`,
    /// then [`GpuNBits::gemv`]). Every workgroup reads the same `x` and `resid`, so binding the
    /// same three to several weights (q, k and v unstacked) writes the same `x_sum`.
    pub fn gemv_norm(&self, ctx: &GpuContext, pipes: &mut Pipelines, state: &wgpu::Buffer, norm: NormInput, y: &wgpu::Buffer) -> Option<Vec<Dispatch>> {
        if !self.float_x() {
            return None;
        }
        let kernel = self.gemv_kernel(ctx, ctx.gemv_kernel()).with_norm(norm.eps)?;
        Some(self.bind_rows_kernel(ctx, pipes, kernel, state, norm.x, y, &[norm.resid, norm.gain, norm.x_sum]))
    }

    /// Whether its products take x as it is (float activations), not rounded to int8: the
    /// products that may run in f16 ([`Kernel::f16_on`]) and that a norm fuses into.
    fn float_x(&self) -> bool {
        self.activations == Activations::Float
    }

    /// The decode GEMV's kernel for this weight under `choice`.
    fn gemv_kernel(&self, ctx: &GpuContext, choice: GemvKernel) -> Kernel {
        let kind = self.spec.kind();
        match choice {
            GemvKernel::Auto if self.spec.rows_kernel_fits() => {
                let (lanes, rows) = self.spec.rows_kernel_shape(ctx.rows_shape());
                Kernel::gemv_rows(ctx, kind, lanes, rows, 1, self.float_x())
            }
            GemvKernel::Rows { lanes, rows } if self.spec.rows_kernel_fits() => Kernel::gemv_rows(ctx, kind, lanes, rows, 1, self.float_x()),
            _ if ctx.has_subgroups() => Kernel::GemvNBitsSubgroups(kind),
            _ => Kernel::GemvNBits(kind),
        }
    }

    /// Bind `kernel` (a GEMV) over every part, a workgroup per group of output rows and of x
    /// rows, and the bias after.
    #[allow(clippy::too_many_arguments)]
    fn bind_rows_kernel(&self, ctx: &GpuContext, pipes: &mut Pipelines, kernel: Kernel, state: &wgpu::Buffer, x: &wgpu::Buffer, y: &wgpu::Buffer, extra: &[&wgpu::Buffer]) -> Vec<Dispatch> {
        let (rows_per_group, xrows) = match kernel {
            Kernel::GemvRows { lanes, rows, xrows, .. } => (64 / lanes * rows, xrows),
            _ => (1, 1),
        };
        let bind = |p: &Part, pipes: &mut Pipelines| {
            let [gx, gy] = grid(ctx, (p.rows.len() as u32).div_ceil(rows_per_group));
            let grid = Grid::Rows { groups: [gx, gy, 1], axis: 2, rows_per_group: xrows };
            match kernel {
                Kernel::GemvRows { .. } => pipes.bind(ctx, kernel, &[&[&p.params, x, &p.data, &p.scales, &p.zps, y, state], extra].concat(), grid),
                _ => pipes.bind(ctx, kernel, &[&p.params, x, &p.data, &p.scales, &p.zps, y], grid),
            }
        };
        let mut d: Vec<Dispatch> = self.parts.iter().map(|p| bind(p, pipes)).collect();
        d.extend(self.add_bias(ctx, pipes, y));
        d
    }

    /// `y[r] += bias` for the step's rows, after the product (nothing without a bias).
    fn add_bias(&self, ctx: &GpuContext, pipes: &mut Pipelines, y: &wgpu::Buffer) -> Vec<Dispatch> {
        if !self.spec.bias {
            return Vec::new();
        }
        let bind = |p: &Part, pipes: &mut Pipelines| pipes.bind(ctx, Kernel::BiasNBits, &[&p.params, &p.bias, y], Grid::per_row((p.rows.len() as u32).div_ceil(64)));
        self.parts.iter().map(|p| bind(p, pipes)).collect()
    }

    /// `y = x W^T` for the `state.rows` rows of `x` (prefill) with `ctx`'s prefill kernel
    /// ([`PrefillKernel`]).
    pub fn gemm(&self, ctx: &GpuContext, pipes: &mut Pipelines, state: &wgpu::Buffer, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Vec<Dispatch> {
        self.gemm_with(ctx, pipes, ctx.prefill_kernel(), state, x, y)
    }

    /// [`GpuNBits::gemm`] with the kernel `choice`: the tiled GEMM, or `gemv_rows.wgsl` over
    /// the rows where this weight's rows allow it (the decode GEMV's lanes and rows per group).
    pub fn gemm_with(&self, ctx: &GpuContext, pipes: &mut Pipelines, choice: PrefillKernel, state: &wgpu::Buffer, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Vec<Dispatch> {
        let choice = if choice == PrefillKernel::Auto { ctx.prefill_kernel() } else { choice };
        if let PrefillKernel::Rows { xrows } = choice {
            if self.spec.rows_kernel_fits() {
                let (lanes, rows) = match ctx.gemv_kernel() {
                    GemvKernel::Rows { lanes, rows } => (lanes, rows),
                    _ => self.spec.rows_kernel_shape(ctx.rows_shape()),
                };
                return self.bind_rows_kernel(ctx, pipes, Kernel::gemv_rows(ctx, self.spec.kind(), lanes, rows, xrows, self.float_x()), state, x, y, &[]);
            }
        }
        let bind = |p: &Part, pipes: &mut Pipelines| {
            let grid = Grid::Rows { groups: [(p.rows.len() as u32).div_ceil(32), 1, 1], axis: 1, rows_per_group: 32 };
            pipes.bind(ctx, Kernel::gemm(ctx, self.spec.kind(), self.float_x()), &[&p.params, x, &p.data, &p.scales, &p.zps, y, state], grid)
        };
        let mut d: Vec<Dispatch> = self.parts.iter().map(|p| bind(p, pipes)).collect();
        d.extend(self.add_bias(ctx, pipes, y));
        d
    }

    /// `out[r] = row state.tokens[r]` of this table, for each of the step's rows: each part
    /// writes the rows whose token it holds.
    pub fn embed(&self, ctx: &GpuContext, pipes: &mut Pipelines, state: &wgpu::Buffer, out: &wgpu::Buffer) -> Vec<Dispatch> {
        let grid = Grid::per_row((self.spec.k as u32).div_ceil(64));
        self.parts.iter().map(|p| pipes.bind(ctx, Kernel::EmbedNBits(self.spec.kind()), &[&p.params, state, &p.data, &p.scales, &p.zps, out], grid)).collect()
    }
}
