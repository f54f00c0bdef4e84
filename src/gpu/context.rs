//! The wgpu device and queue, and every call that creates GPU objects or moves bytes.
//!
//! All creation goes through [`GpuContext`] so the per-step budget (habit 9: create once at
//! load, reuse per token) is countable: [`GpuContext::counters`] is what the decode tests
//! compare before and after a step.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use wgpu::util::DeviceExt;

use crate::{Error, Result};

/// How many GPU objects and transfers the context has made so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuCounters {
    pub buffers: u64,
    pub bind_groups: u64,
    pub pipelines: u64,
    pub shader_modules: u64,
    pub submits: u64,
    /// `queue.write_buffer` calls and the bytes they carried.
    pub writes: u64,
    pub write_bytes: u64,
    /// Buffer maps for reading and the bytes read back.
    pub readbacks: u64,
    pub readback_bytes: u64,
}

impl GpuCounters {
    /// `self - before`, field by field.
    pub fn since(&self, before: &GpuCounters) -> GpuCounters {
        GpuCounters {
            buffers: self.buffers - before.buffers,
            bind_groups: self.bind_groups - before.bind_groups,
            pipelines: self.pipelines - before.pipelines,
            shader_modules: self.shader_modules - before.shader_modules,
            submits: self.submits - before.submits,
            writes: self.writes - before.writes,
            write_bytes: self.write_bytes - before.write_bytes,
            readbacks: self.readbacks - before.readbacks,
            readback_bytes: self.readback_bytes - before.readback_bytes,
        }
    }
}

#[derive(Default)]
struct Counters([AtomicU64; 9]);

impl Counters {
    fn add(&self, i: usize, v: u64) {
        self.0[i].fetch_add(v, Ordering::Relaxed);
    }
    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
}

const BUFFERS: usize = 0;
const BIND_GROUPS: usize = 1;
const PIPELINES: usize = 2;
const SHADERS: usize = 3;
const SUBMITS: usize = 4;
const WRITES: usize = 5;
const WRITE_BYTES: usize = 6;
const READBACKS: usize = 7;
const READBACK_BYTES: usize = 8;

/// Most bytes [`GpuContext::write`] lets wgpu stage natively before it submits them.
const STAGED_MAX: u64 = 16 << 20;

/// A device and queue from the adapter wgpu offers, with the adapter's own limits.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    info: wgpu::AdapterInfo,
    counters: Counters,
    /// Bytes written since the last submit (see [`GpuContext::write`]).
    staged: AtomicU64,
    /// Why the device was lost, once it was (set by wgpu's device-lost callback).
    lost: Arc<Mutex<Option<String>>>,
    /// Which decode GEMV runs the weights ([`super::GpuOptions::gemv`]).
    gemv: super::GemvKernel,
    /// `gemv_rows.wgsl`'s shape under [`super::GemvKernel::Auto`] (a load may tune it).
    rows_shape: Mutex<super::nbits::RowsShape>,
    /// Which prefill kernel runs the weights: [`super::GpuOptions::prefill`] where it names
    /// one, else a load may tune it.
    prefill: Tunable<super::PrefillKernel>,
    /// Most lanes a `gemv_rows.wgsl` group may add by subgroup shuffles: the adapter's
    /// smallest subgroup where the probe saw subgroups laid over consecutive invocations; 0
    /// without subgroups or where it did not.
    shuffle_lanes: u32,
    /// The device has WGSL's subgroup operations (see [`GpuContext::has_subgroups`]).
    subgroups: bool,
    /// See [`GpuContext::attention_split_from`].
    attention_split_from: Tunable<usize>,
    /// See [`super::GpuOptions::decode_ahead`].
    decode_ahead: Tunable<usize>,
    /// See [`super::GpuOptions::fuse_norm`].
    fuse_norm: Tunable<bool>,
    /// The device has `shader-f16` and the options ask for f16 products (see
    /// [`GpuContext::f16`]).
    has_f16: bool,
    /// Whether the products are f16 where the device can (a load may tune it).
    f16: Tunable<bool>,
}

/// A setting the options may choose and a load otherwise tunes: its value now, and whether the
/// options chose it (a tuning then leaves it as asked).
struct Tunable<T> {
    value: Mutex<T>,
    told: bool,
}

impl<T: Copy> Tunable<T> {
    /// `chosen` where the options chose, else `default` until a tuning sets it.
    fn new(chosen: Option<T>, default: T) -> Self {
        Tunable { value: Mutex::new(chosen.unwrap_or(default)), told: chosen.is_some() }
    }

    fn get(&self) -> T {
        *self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A tuning's value, unless the options chose one.
    fn tune(&self, value: T) {
        if !self.told {
            *self.value.lock().unwrap_or_else(|e| e.into_inner()) = value;
        }
    }
}

/// A CPU rasterizer (SwiftShader, llvmpipe) rather than a GPU.
pub(crate) fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

impl GpuContext {
    /// Open the best adapter (WebGPU in browsers, Vulkan/Metal natively). Errors with
    /// [`Error::UnsupportedBackend`] when there is none or it refuses a device.
    pub async fn new() -> Result<Self> {
        Self::with_options(&Default::default()).await
    }

    /// [`GpuContext::new`] with `options` (a lower binding limit).
    pub async fn with_options(options: &super::GpuOptions) -> Result<Self> {
        Self::on(super::request_adapter().await?, options).await
    }

    /// A device and queue on `adapter`.
    pub(crate) async fn on(adapter: wgpu::Adapter, options: &super::GpuOptions) -> Result<Self> {
        // Ask for what the adapter offers (the defaults cap storage bindings at 128 MiB, too
        // small for a 1B model's head unsplit), or less where `options` say; kernels and
        // loaders size buffers by these. (A browser raises limits requested below WebGPU's
        // defaults to them: there only these bookkept ones are lower.)
        if let Some(n) = options.decode_ahead.filter(|n| *n > super::DECODE_AHEAD_MAX) {
            return Err(Error::InvalidOption { option: "decodeAhead", reason: format!("{n} is more than {}", super::DECODE_AHEAD_MAX) });
        }
        let limits = options.limits(adapter.limits());
        // Subgroups where the adapter has them, for the GEMV's reductions: natively wgpu's
        // SUBGROUP feature; in browsers WebGPU's `subgroups`, which wgpu 30's WebGPU backend
        // does not map, asked for by js/gpu.js around wgpu's request.
        let features = adapter.features() & wgpu::Features::SUBGROUP;
        let features = if options.no_subgroups { wgpu::Features::empty() } else { features };
        // `shader-f16` where the options ask for f16 products and the adapter has it (wgpu's
        // WebGPU backend maps it in browsers too); without it they stay f32.
        let asks_f16 = options.precision != super::Precision::F32;
        let features = if asks_f16 { features | (adapter.features() & wgpu::Features::SHADER_F16) } else { features };
        #[cfg(target_arch = "wasm32")]
        if !options.no_subgroups {
            web::ask_subgroups();
        }
        let request = adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("edge-llm"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        });
        #[cfg(target_arch = "wasm32")]
        let web_subgroups = web::subgroups_asked();
        let (device, queue) = request.await.map_err(|e| Error::UnsupportedBackend(format!("webgpu: the adapter refused a device ({e})")))?;
        #[cfg(target_arch = "wasm32")]
        let subgroups = web_subgroups;
        #[cfg(not(target_arch = "wasm32"))]
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP);
        let has_f16 = asks_f16 && device.features().contains(wgpu::Features::SHADER_F16);
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let on_lost = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut lost = on_lost.lock().unwrap_or_else(|e| e.into_inner());
            lost.get_or_insert_with(|| format!("{reason:?}: {message}"));
        });
        // Calls on a lost device fail as validation errors, which wgpu's default handler turns
        // into panics: those are expected now (the step reports `GpuDeviceLost`). Any other
        // error is a bug and still panics.
        let on_error = lost.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if on_error.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                panic!("wgpu error: {e}");
            }
        }));
        let info = adapter.get_info();
        let rows_shape = Mutex::new(if is_software(&info) { super::nbits::RowsShape::SOFTWARE } else { super::nbits::RowsShape::GPU });
        let chosen_prefill = (options.prefill != super::PrefillKernel::Auto).then_some(options.prefill);
        let prefill = Tunable::new(chosen_prefill, if is_software(&info) { super::PrefillKernel::SOFTWARE } else { super::PrefillKernel::GPU });
        let attention_split_from = Tunable::new(options.attention_split_from, if is_software(&info) { usize::MAX } else { super::ATTENTION_SPLIT_FROM_GPU });
        let decode_ahead = Tunable::new(options.decode_ahead, if is_software(&info) { 0 } else { super::DECODE_AHEAD_GPU });
        let fuse_norm = Tunable::new(options.fuse_norm, !is_software(&info));
        let f16 = match options.precision {
            super::Precision::F16WhereFaster => Tunable::new(None, !is_software(&info)),
            chosen => Tunable::new(Some(chosen == super::Precision::F16), false),
        };
        let mut ctx = GpuContext {
            device,
            queue,
            limits,
            info,
            counters: Counters::default(),
            staged: AtomicU64::new(0),
            lost,
            gemv: options.gemv,
            rows_shape,
            prefill,
            shuffle_lanes: 0,
            subgroups,
            attention_split_from,
            decode_ahead,
            fuse_norm,
            has_f16,
            f16,
        };
        // A probe that cannot run (a binding limit under its 256 bytes) leaves the tree, right
        // on every device.
        if ctx.has_subgroups() {
            ctx.shuffle_lanes = ctx.subgroup_layout().await.unwrap_or(0);
        }
        Ok(ctx)
    }

    /// Run `subgroup_layout.wgsl` once: the adapter's smallest subgroup size (at most 64) when
    /// every invocation of a 64-wide workgroup is lane `lid % size` of the subgroup starting at
    /// `lid - lid % size`, else 0 (no shuffles then; the barrier tree is right everywhere).
    async fn subgroup_layout(&self) -> Result<u32> {
        let out = self.storage("subgroup layout", 256)?;
        let back = self.readback("subgroup layout back", 256);
        let mut pipes = super::kernels::Pipelines::default();
        let d = pipes.bind(self, super::kernels::Kernel::SubgroupLayout, &[&out], super::kernels::Grid::Fixed([1, 1, 1]));
        let mut encoder = self.encoder();
        pipes.record(&mut encoder, [&d], 1);
        encoder.copy_buffer_to_buffer(&out, 0, &back, 0, 256);
        self.submit(encoder);
        let bytes = self.read(&back, 256).await?;
        let sizes: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        let laid = sizes.iter().all(|&s| s >= 4);
        Ok(if laid { self.info.subgroup_min_size.clamp(4, 64).min(*sizes.iter().min().unwrap_or(&0)) } else { 0 })
    }

    /// Whether a `gemv_rows.wgsl` group of `lanes` lanes adds its shares by subgroup
    /// shuffles: the context's shape asks for them ([`super::nbits::RowsShape::shuffles`]) and
    /// the device allows them for that many lanes.
    pub fn shuffles(&self, lanes: u32) -> bool {
        self.rows_shape().shuffles && lanes <= self.shuffle_lanes
    }

    /// The most lanes a group adds by shuffles (0: none; every group uses the barrier tree).
    pub fn shuffle_lanes(&self) -> u32 {
        self.shuffle_lanes
    }

    /// Why the device was lost, if it was: every later call on it fails.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `Err(GpuDeviceLost)` once the device is lost.
    pub fn check_device(&self) -> Result<()> {
        self.lost().map_or(Ok(()), |why| Err(Error::GpuDeviceLost(why)))
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// A failed wait or map: the device's loss when that is the cause.
    fn failed(&self, what: String) -> Error {
        match self.lost() {
            Some(why) => Error::GpuDeviceLost(why),
            None => Error::Inference(what),
        }
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The device has subgroup operations (WGSL `enable subgroups`): natively wgpu's SUBGROUP
    /// feature, in browsers WebGPU's `subgroups` (shaders then begin with the directive).
    pub fn has_subgroups(&self) -> bool {
        self.subgroups
    }

    /// The int4 and int8 GEMVs and GEMMs multiply in f16 (`arith_f16.wgsl`): the options asked
    /// for it ([`super::GpuOptions::precision`]), the device has `shader-f16`, and where the
    /// options left it to a load, its tuning kept it. Pipelines made before a change keep theirs.
    pub fn f16(&self) -> bool {
        self.has_f16 && self.f16.get()
    }

    /// Whether a load may choose the products' precision: f16 asked where faster, and the
    /// device has `shader-f16`.
    pub fn tunes_f16(&self) -> bool {
        self.has_f16 && !self.f16.told
    }

    /// Set whether the products are f16 (a load's tuning; a precision the options chose stays).
    pub fn set_f16(&self, f16: bool) {
        self.f16.tune(f16);
    }

    /// A software rasterizer (llvmpipe, SwiftShader): numbers from it say nothing about GPUs.
    pub fn is_software(&self) -> bool {
        is_software(&self.info)
    }

    /// Which decode GEMV runs the weights.
    pub fn gemv_kernel(&self) -> super::GemvKernel {
        self.gemv
    }

    /// `gemv_rows.wgsl`'s shape for the weights under [`super::GemvKernel::Auto`]: fixed on a
    /// CPU rasterizer, on a GPU the default until [`GpuContext::set_rows_shape`] (a load's
    /// tuning). Kernels bound before a change keep the shape they were bound with.
    pub fn rows_shape(&self) -> super::nbits::RowsShape {
        *self.rows_shape.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_rows_shape(&self, shape: super::nbits::RowsShape) {
        *self.rows_shape.lock().unwrap_or_else(|e| e.into_inner()) = shape;
    }

    /// Run `f` with the rows kernel's reduction set to shuffles or the tree, then put the
    /// context's shape back: the kernels `f` binds take that reduction (tunings and benchmarks
    /// binding both over one weight).
    pub fn with_rows_shuffles<T>(&self, shuffles: bool, f: impl FnOnce() -> T) -> T {
        let was = self.rows_shape();
        self.set_rows_shape(super::nbits::RowsShape { shuffles, ..was });
        let out = f();
        self.set_rows_shape(was);
        out
    }

    /// Which prefill kernel runs the weights: the option, or under
    /// [`super::PrefillKernel::Auto`] the context's choice (fixed on a CPU rasterizer, on a GPU
    /// the default until [`GpuContext::set_prefill_kernel`], a load's tuning). Never `Auto`.
    pub fn prefill_kernel(&self) -> super::PrefillKernel {
        self.prefill.get()
    }

    /// Set the prefill kernel [`super::PrefillKernel::Auto`] stands for (a load's tuning; an
    /// explicit option stays as asked). Kernels bound before keep theirs.
    pub fn set_prefill_kernel(&self, kernel: super::PrefillKernel) {
        if kernel != super::PrefillKernel::Auto {
            self.prefill.tune(kernel);
        }
    }

    /// From how many positions a decode step's attention runs split
    /// ([`super::GpuOptions::attention_split_from`]; `usize::MAX`: never).
    pub fn attention_split_from(&self) -> usize {
        self.attention_split_from.get()
    }

    /// Greedy decode steps a submit runs beyond the one asked for
    /// ([`super::GpuOptions::decode_ahead`]).
    pub fn decode_ahead(&self) -> usize {
        self.decode_ahead.get()
    }

    /// Set how many greedy steps a decode submit chains beyond the first (a load's tuning, at
    /// most [`super::DECODE_AHEAD_MAX`]; a number chosen in the options stays as asked).
    /// Models loaded before keep theirs.
    pub fn set_decode_ahead(&self, steps: usize) {
        self.decode_ahead.tune(steps.min(super::DECODE_AHEAD_MAX));
    }

    /// Whether a decode step's residual adds and norms run inside the GEMVs after them
    /// ([`super::GpuOptions::fuse_norm`]).
    pub fn fuses_norm(&self) -> bool {
        self.fuse_norm.get()
    }

    /// Set whether a decode step's norms are fused into the GEMVs (a load's tuning; a choice in
    /// the options stays as asked). Models loaded before keep theirs.
    pub fn set_fuse_norm(&self, fuse: bool) {
        self.fuse_norm.tune(fuse);
    }

    /// Set where a decode step's attention splits (a load's tuning; a position chosen in the
    /// options stays as asked). Models loaded before keep theirs.
    pub fn set_attention_split_from(&self, positions: usize) {
        self.attention_split_from.tune(positions);
    }

    pub fn counters(&self) -> GpuCounters {
        let c = &self.counters;
        GpuCounters {
            buffers: c.get(BUFFERS),
            bind_groups: c.get(BIND_GROUPS),
            pipelines: c.get(PIPELINES),
            shader_modules: c.get(SHADERS),
            submits: c.get(SUBMITS),
            writes: c.get(WRITES),
            write_bytes: c.get(WRITE_BYTES),
            readbacks: c.get(READBACKS),
            readback_bytes: c.get(READBACK_BYTES),
        }
    }

    /// Check a buffer size against the adapter's binding and buffer limits (weights are split
    /// and chunks sized to fit them before they get here: this catches what is not).
    pub fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        let max = super::kernels::max_binding(&self.limits);
        if bytes > max {
            return Err(Error::UnsupportedBackend(format!(
                "webgpu: `{what}` needs a {bytes}-byte storage binding, the adapter allows {max}"
            )));
        }
        Ok(())
    }

    /// A storage buffer holding `contents` (padded to a multiple of 4 bytes, never empty).
    pub fn storage_init(&self, label: &str, contents: &[u8]) -> Result<wgpu::Buffer> {
        self.check_size(label, contents.len() as u64)?;
        let padded;
        let bytes = if !contents.is_empty() && contents.len() % 4 == 0 {
            contents
        } else {
            let mut v = contents.to_vec();
            v.resize(contents.len().div_ceil(4).max(1) * 4, 0);
            padded = v;
            &padded[..]
        };
        self.counters.add(BUFFERS, 1);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytes, usage });
        Ok(buf)
    }

    /// A zeroed storage buffer of `bytes` (rounded up to 4).
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let bytes = bytes.div_ceil(4).max(1) * 4;
        self.check_size(label, bytes)?;
        self.counters.add(BUFFERS, 1);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer of kernel parameters (u32 words; f32 ones as `to_bits`), padded to 16 bytes.
    pub fn uniform(&self, label: &str, words: &[u32]) -> wgpu::Buffer {
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
        self.counters.add(BUFFERS, 1);
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// A buffer the CPU maps to read results from.
    pub fn readback(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.counters.add(BUFFERS, 1);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.div_ceil(4).max(1) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Compile `source` and make a compute pipeline with the layout WGSL implies, its
    /// overridable constants set to `constants`.
    pub fn pipeline(&self, label: &str, source: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        self.counters.add(SHADERS, 1);
        // Browsers (Tint) take subgroup builtins only under WGSL's `enable subgroups;`, which
        // naga rejects (wgpu issue #5555; it takes them without): wgpu's WebGPU backend passes
        // the source to the browser unparsed.
        #[cfg(target_arch = "wasm32")]
        let source = &if self.subgroups { format!("enable subgroups;\n{source}") } else { source.to_string() };
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        self.counters.add(PIPELINES, 1);
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        })
    }

    /// Bind `buffers` to bindings 0, 1, … of group 0 of `pipeline`.
    pub fn bind_group(&self, label: &str, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        self.counters.add(BIND_GROUPS, 1);
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.counters.add(WRITES, 1);
        self.counters.add(WRITE_BYTES, bytes.len() as u64);
        self.queue.write_buffer(buffer, offset, bytes);
        // Natively wgpu stages each write in host memory until the next submit: a load writing
        // a model's weights submits every `STAGED_MAX` bytes (an empty submit) so it never
        // stages more. WebGPU's `writeBuffer` copies at once.
        if !cfg!(target_arch = "wasm32") && self.staged.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64 > STAGED_MAX {
            self.counters.add(SUBMITS, 1);
            self.staged.store(0, Ordering::Relaxed);
            self.queue.submit([]);
            // Lets wgpu free the staging memory of what the GPU has finished.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
    }

    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    pub fn submit(&self, encoder: wgpu::CommandEncoder) {
        self.counters.add(SUBMITS, 1);
        self.staged.store(0, Ordering::Relaxed);
        self.queue.submit([encoder.finish()]);
    }

    /// Map `bytes` of a [`GpuContext::readback`] buffer once the GPU is done with it, copy
    /// them out and unmap. Natively this blocks on the device; in browsers it awaits the map.
    pub async fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let slot: Arc<Mutex<MapSlot>> = Arc::default();
        let cb_slot = slot.clone();
        let slice = buffer.slice(..bytes);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let mut s = cb_slot.lock().unwrap_or_else(|e| e.into_inner());
            s.done = Some(r.is_ok());
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
        // Natively this drives the map callback; on WebGPU it is a no-op and the browser does.
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| self.failed(format!("webgpu: waiting for the GPU failed ({e})")))?;
        if !(MapFuture { slot }).await {
            return Err(self.failed("webgpu: mapping a readback buffer failed".into()));
        }
        // The device may be lost with the map done (the result would be stale).
        self.check_device()?;
        let out = slice.get_mapped_range().map_err(|e| self.failed(format!("webgpu: mapped range: {e}")))?.to_vec();
        buffer.unmap();
        self.counters.add(READBACKS, 1);
        self.counters.add(READBACK_BYTES, bytes);
        Ok(out)
    }
}

#[derive(Default)]
struct MapSlot {
    done: Option<bool>,
    waker: Option<Waker>,
}

struct MapFuture {
    slot: Arc<Mutex<MapSlot>>,
}

impl Future for MapFuture {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match s.done {
            Some(ok) => Poll::Ready(ok),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Run a future to completion on this thread (native tests and the CLI). wgpu's native
/// futures are ready once the device has been polled, so this rarely waits.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// js/gpu.js: WebGPU's `subgroups` feature for the device wgpu requests.
#[cfg(target_arch = "wasm32")]
mod web {
    use wasm_bindgen::prelude::wasm_bindgen;

    #[wasm_bindgen(module = "/js/gpu.js")]
    extern "C" {
        /// Add "subgroups" to the next `requestDevice` where the adapter offers it.
        #[wasm_bindgen(js_name = askSubgroups)]
        pub fn ask_subgroups();
        /// Whether that request asked for them (and undo the wrap if no request came).
        #[wasm_bindgen(js_name = subgroupsAsked)]
        pub fn subgroups_asked() -> bool;
    }
}
