//! GPU backend: the decoder forward pass in WGSL through wgpu (WebGPU in browsers,
//! Vulkan/Metal natively).
//!
//! - [`context`]: device and queue from the adapter, with its limits; every object creation
//!   and transfer goes through it and is counted.
//! - [`kernels`]: one WGSL file per kernel (`kernels/*.wgsl`), a pipeline cache, bind-once
//!   dispatch builders. Each kernel has a plain-Rust twin in [`twin`] that tests compare with.
//! - [`nbits`]: block-quantized weights (MatMulNBits layout, 4 or 8 bits) on the GPU, filled
//!   row by row as their tensors are read.
//! - [`decode`]: the Llama forward pass with its weights resident on the GPU.

pub mod bench;
pub mod backend;
pub mod context;
pub mod decode;
pub mod kernels;
pub mod nbits;
pub mod probe;
pub mod twin;

pub use backend::GpuBackend;
pub use context::{GpuContext, GpuCounters};
pub use decode::{GpuLlama, GpuWeights, Pick, QuantLlama};

use serde::Serialize;

/// What the runtime learned about the GPU it would use.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    pub name: String,
    pub vendor: u32,
    pub device: u32,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub backend: String,
    pub features: Vec<String>,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_size_x: u32,
}

/// The best adapter on any backend (WebGPU in browsers, Vulkan/Metal natively): what both
/// [`probe`] and [`GpuContext::new`] open.
/// In JS, only where WebGPU is exposed: wgpu panics making an instance outside a window or a
/// dedicated worker (Node, Deno, shared workers), and `auto` asks everywhere.
pub(crate) async fn request_adapter() -> crate::Result<wgpu::Adapter> {
    #[cfg(target_arch = "wasm32")]
    if !wgpu::util::is_browser_webgpu_supported().await {
        return Err(crate::Error::UnsupportedBackend("webgpu: this runtime exposes no WebGPU (navigator.gpu in a window or dedicated worker)".into()));
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    wgpu::Instance::new(desc)
        .request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() })
        .await
        .map_err(|e| crate::Error::UnsupportedBackend(format!("webgpu: no GPU adapter ({e})")))
}

/// How to open the GPU backend.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Use at most this many bytes per storage binding and per buffer, below the adapter's
    /// `maxStorageBufferBindingSize` / `maxBufferSize` (as a phone's adapter would offer):
    /// weights larger are split by rows, the prefill chunk shrinks to fit. Natively the device
    /// is requested with these limits, so wgpu enforces them. `None`: the adapter's own.
    pub max_binding_bytes: Option<u64>,
    /// `backend: "auto"` probes a software adapter too (tests: the probe's own path on
    /// llvmpipe / SwiftShader) instead of taking the CPU without timing it.
    pub probe_software: bool,
    /// Leave the adapter's `subgroups` unused (tests: the kernels' path for adapters without).
    pub no_subgroups: bool,
    /// Which decode GEMV kernel runs the weights (tests and `bench-gpu` compare them).
    pub gemv: GemvKernel,
    /// Which kernel runs the weights over a prefill chunk's rows.
    pub prefill: PrefillKernel,
    /// Decode steps whose context reaches this many positions run the attention split over
    /// positions (`kernels::attention_split`); shorter ones, and prefill chunks, one workgroup
    /// per query head. `None`: [`ATTENTION_SPLIT_FROM_GPU`] on a GPU, never on a CPU
    /// rasterizer (measured slower there: README, "The attention deep in a chat").
    pub attention_split_from: Option<usize>,
    /// Greedy decode steps a submit runs beyond the one asked for, each fed the token the GPU
    /// picked before it, all their picks read back at once: a submit's and a readback's fixed
    /// cost (in a browser, an event-loop round trip) is paid once per `1 + decode_ahead`
    /// tokens ([`decode::GpuLlama::step_greedy`]). Tokens computed ahead that the caller does
    /// not take (a stop rule ended the generation, another token was fed) are dropped, their
    /// steps wasted. `None`: tuned at load on a GPU ([`probe::tune_decode_ahead`]: chained
    /// until a token's share of a submit is a tenth of its step's kernels), 0 on a CPU
    /// rasterizer (its steps are tens of milliseconds, a readback a fraction of one).
    pub decode_ahead: Option<usize>,
    /// Whether a decode step's residual adds and the RMSNorms after them run inside the q/k/v
    /// and gate/up GEMVs, the last add and the final norm inside the head's
    /// (`gemv_rows_x_norm.wgsl`: two dispatches fewer a layer and three at the ends, but every
    /// lane group of those GEMVs loads the residual, the projection and the gain and sums
    /// squares) rather than as `add_rms_norm.wgsl` before them. `None`: tuned at load on a GPU
    /// ([`probe::tune_norm`]: the faster of the two timed; fused where a load cannot time, no
    /// clock), not fused on a CPU rasterizer (measured slower there: README, "The residual adds
    /// and norms inside the GEMVs after them").
    pub fuse_norm: Option<bool>,
    /// What the int4 and int8 products compute in ([`Precision`]).
    pub precision: Precision,
}

/// What [`GpuOptions::precision`] asks of the products over 4- and 8-bit weights. In f16
/// (`arith_f16.wgsl`: x and the weight's values, dequantized with their scale, in f16, the
/// products over a 16-byte chunk of the decode GEMV or a 32-wide slice of the tiled GEMM summed
/// in f16, those sums added in f32): twice the arithmetic rate on GPUs that pack two f16 lanes
/// (most phones'), at the cost of logits further from onnxruntime's f32 arithmetic (README, "f16
/// products"). Only where the device has `shader-f16` ([`context::GpuContext::f16`] says
/// whether the context computes in f16) and for nodes on float activations (one whose input is
/// rounded to int8 keeps exact f32 products; [`decode::GpuLlama::computes_f16`] says whether
/// any of a model's products run in f16). Float weights, a norm fused into a GEMV and every
/// other kernel stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 (onnxruntime's and the CPU backend's arithmetic).
    #[default]
    F32,
    /// f16 wherever the device has `shader-f16` (tests; `bench-gpu --precision f16`).
    F16,
    /// f16 where the device has `shader-f16` and it is faster: on a GPU a load's tuning times
    /// the decode GEMV and a prefill chunk's product both ways and keeps f16 only where both are
    /// faster ([`probe::tune_precision`]); f16 where a load cannot time (no clock); f32 on a CPU
    /// rasterizer (llvmpipe emulates f16: 2.2x slower decode, 2.6x prefill, README "f16 products"). The
    /// `gpuPrecision: "f16"` load option.
    F16WhereFaster,
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// `f32`, `f16` or `f16-where-faster`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "f16-where-faster" => Ok(Precision::F16WhereFaster),
            _ => Err(format!("`{s}`: expected f32, f16 or f16-where-faster")),
        }
    }
}

/// [`GpuOptions::decode_ahead`] on a GPU where a load cannot tune it (no clock): 4 greedy
/// tokens per submit (a guess; at most 3 steps wasted where a generation stops).
pub const DECODE_AHEAD_GPU: usize = 3;

/// The most [`GpuOptions::decode_ahead`] takes.
pub const DECODE_AHEAD_MAX: usize = 15;

/// [`GpuOptions::attention_split_from`]'s default on a GPU: from this many positions a decode
/// step's attention is split (one workgroup per query head reads 256 positions of keys and
/// values, 128 KB at SmolLM2's heads, in one chain of loads; unmeasured on a GPU here).
pub const ATTENTION_SPLIT_FROM_GPU: usize = 256;

/// The prefill's product over a chunk's rows of x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefillKernel {
    /// The context's choice ([`context::GpuContext::prefill_kernel`]): measured on a CPU
    /// rasterizer, tuned at load on a GPU.
    #[default]
    Auto,
    /// `gemm_nbits.wgsl`: 32 x 32 output tiles, the weight dequantized into workgroup memory
    /// once per 32 rows.
    Tiled,
    /// `gemv_rows.wgsl` over the rows, `xrows` (1, 2 or 4) per workgroup: each 16-byte chunk
    /// of the weight loaded once into registers for them (the decode GEMV's lanes and rows per
    /// group). Weights whose rows it cannot read take the tiled kernel.
    Rows { xrows: u32 },
}

/// The x rows per workgroup `gemv_rows.wgsl` takes ([`PrefillKernel::Rows`]).
pub const ROWS_KERNEL_XROWS: [u32; 3] = [1, 2, 4];

impl PrefillKernel {
    /// On a CPU rasterizer (measured on llvmpipe: README, "prefill kernel").
    pub const SOFTWARE: PrefillKernel = PrefillKernel::Rows { xrows: 4 };
    /// On a GPU before tuning.
    pub const GPU: PrefillKernel = PrefillKernel::Rows { xrows: 4 };
    /// What a load's tuning times: the tiled kernel and the rows kernel at each x row count.
    pub fn candidates() -> Vec<PrefillKernel> {
        std::iter::once(PrefillKernel::Tiled).chain(ROWS_KERNEL_XROWS.map(|xrows| PrefillKernel::Rows { xrows })).collect()
    }
}

impl std::str::FromStr for PrefillKernel {
    type Err = String;

    /// `auto`, `tiled`, or `rows:X` (X x rows per workgroup in 1, 2, 4).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(PrefillKernel::Auto),
            "tiled" => Ok(PrefillKernel::Tiled),
            _ => s
                .strip_prefix("rows:")
                .and_then(|x| x.parse().ok())
                .filter(|x| ROWS_KERNEL_XROWS.contains(x))
                .map(|xrows| PrefillKernel::Rows { xrows })
                .ok_or_else(|| format!("`{s}`: expected auto, tiled or rows:X with X in {ROWS_KERNEL_XROWS:?}")),
        }
    }
}

impl std::fmt::Display for PrefillKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefillKernel::Auto => write!(f, "auto"),
            PrefillKernel::Tiled => write!(f, "tiled"),
            PrefillKernel::Rows { xrows } => write!(f, "rows:{xrows}"),
        }
    }
}

/// The decode GEMV's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemvKernel {
    /// `gemv_rows.wgsl` (several rows per workgroup, 16-byte loads) where a weight's rows are
    /// whole 16-byte chunks, its lanes and rows per lane group from the row's length and the
    /// context's [`nbits::RowsShape`] (tuned at load on a GPU:
    /// [`nbits::BlockSpec::rows_kernel_shape`]); `gemv_nbits.wgsl` for the other weights.
    #[default]
    Auto,
    /// `gemv_nbits.wgsl` for every weight: one 64-invocation workgroup per output row, 4-byte
    /// loads.
    PerRow,
    /// `gemv_rows.wgsl` where it fits, with `lanes` invocations per lane group (4, 8, 16, 32 or
    /// 64) each computing `rows` output rows (1, 2 or 4: each x value loaded once for them).
    Rows { lanes: u32, rows: u32 },
}

impl std::str::FromStr for GemvKernel {
    type Err = String;

    /// `auto`, `per-row`, or `rows:N` / `rows:NxR` (N lanes in 4, 8, 16, 32, 64; R rows per
    /// lane group in 1, 2, 4; default 1).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let rows = |spec: &str| -> Option<GemvKernel> {
            let (lanes, rows) = spec.split_once('x').unwrap_or((spec, "1"));
            let (lanes, rows) = (lanes.parse().ok()?, rows.parse().ok()?);
            (ROWS_KERNEL_LANES.contains(&lanes) && ROWS_KERNEL_ROWS.contains(&rows)).then_some(GemvKernel::Rows { lanes, rows })
        };
        match s {
            "auto" => Ok(GemvKernel::Auto),
            "per-row" => Ok(GemvKernel::PerRow),
            _ => s.strip_prefix("rows:").and_then(rows).ok_or_else(|| {
                format!("`{s}`: expected auto, per-row, rows:N or rows:NxR with N in {ROWS_KERNEL_LANES:?} and R in {ROWS_KERNEL_ROWS:?}")
            }),
        }
    }
}

impl std::fmt::Display for GemvKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GemvKernel::Auto => write!(f, "auto"),
            GemvKernel::PerRow => write!(f, "per-row"),
            GemvKernel::Rows { lanes, rows } => write!(f, "rows:{lanes}x{rows}"),
        }
    }
}

/// The lanes per lane group `gemv_rows.wgsl` takes (powers of two dividing its 64-wide
/// workgroup, at least 4).
pub const ROWS_KERNEL_LANES: [u32; 5] = [4, 8, 16, 32, 64];

/// The output rows per lane group `gemv_rows.wgsl` takes.
pub const ROWS_KERNEL_ROWS: [u32; 3] = [1, 2, 4];

impl GpuOptions {
    /// `adapter`'s limits as the backend uses them.
    pub fn limits(&self, mut adapter: wgpu::Limits) -> wgpu::Limits {
        if let Some(cap) = self.max_binding_bytes {
            adapter.max_storage_buffer_binding_size = adapter.max_storage_buffer_binding_size.min(cap);
            adapter.max_buffer_size = adapter.max_buffer_size.min(cap);
        }
        adapter
    }
}

/// For `backend: "auto"`: a context on an adapter the model fits (`fits` judges the limits the
/// backend would use), for the probe to time, or why the CPU is used instead: no adapter, a
/// model that does not fit, or a software adapter (slower than the CPU backend, which gets no
/// device) unless `options.probe_software`.
pub async fn auto_context(options: &GpuOptions, fits: impl FnOnce(&wgpu::Limits) -> crate::Result<()>) -> std::result::Result<GpuContext, String> {
    let adapter = request_adapter().await.map_err(|e| format!("no GPU ({e})"))?;
    fits(&options.limits(adapter.limits())).map_err(|e| match e {
        crate::Error::UnsupportedBackend(why) => format!("the model does not fit the GPU adapter's limits ({why})"),
        e => e.to_string(),
    })?;
    let info = adapter.get_info();
    if context::is_software(&info) && !options.probe_software {
        return Err(format!("the GPU adapter `{}` is a software rasterizer, slower than the CPU backend", info.name));
    }
    GpuContext::on(adapter, options).await.map_err(|e| format!("no GPU ({e})"))
}

/// Find a GPU adapter and describe it; `None` when the platform offers none.
pub async fn probe() -> Option<GpuInfo> {
    let adapter = request_adapter().await.ok()?;
    let info = adapter.get_info();
    let limits = adapter.limits();
    Some(GpuInfo {
        name: info.name,
        vendor: info.vendor,
        device: info.device,
        device_type: format!("{:?}", info.device_type),
        driver: info.driver,
        driver_info: info.driver_info,
        backend: format!("{:?}", info.backend),
        features: adapter.features().iter_names().map(|(n, _)| n.to_string()).collect(),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size as u64,
        max_compute_workgroup_size_x: limits.max_compute_workgroup_size_x,
    })
}

#[cfg(test)]
mod tests {
    use super::{GemvKernel, PrefillKernel};

    #[test]
    fn gemv_kernel_names_parse() {
        for s in ["auto", "per-row", "rows:4x1", "rows:64x4", "rows:8x2"] {
            assert_eq!(s.parse::<GemvKernel>().unwrap().to_string(), s);
        }
        assert_eq!("rows:16".parse::<GemvKernel>(), Ok(GemvKernel::Rows { lanes: 16, rows: 1 }));
        for bad in ["rows:3", "rows:16x3", "rows:", "rows", "fast"] {
            assert!(bad.parse::<GemvKernel>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefill_kernel_names_parse() {
        for s in ["auto", "tiled", "rows:1", "rows:2", "rows:4"] {
            assert_eq!(s.parse::<PrefillKernel>().unwrap().to_string(), s);
        }
        for bad in ["rows:3", "rows:8", "rows:", "rows", "gemm"] {
            assert!(bad.parse::<PrefillKernel>().is_err(), "{bad}");
        }
        assert!(!PrefillKernel::candidates().contains(&PrefillKernel::Auto));
    }
}
