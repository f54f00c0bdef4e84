//! Files made by third-party tools (optimum's export; onnxruntime's `quantize_dynamic`,
//! `MatMulNBitsQuantizer` and float16 converter; `scripts/make-ort-references.py`), loaded
//! unchanged, against what onnxruntime 1.32 computes on the same files (`tests/fixtures/ort/*.json`).
//! One body for every file × backend, run natively (`tests/ort_files.rs`) and in Chromium.

use std::sync::Arc;

use edge_llm::cpu::q4_matmul::Q4Activations;
use edge_llm::cpu::{CpuModel, CpuOptions};

/// One reference file: its ONNX bytes and onnxruntime's results.
pub struct OrtFile {
    pub name: &'static str,
    pub onnx: &'static [u8],
    pub reference: &'static str,
    /// onnxruntime on one 150-token prompt (`tests/fixtures/ort/long/`,
    /// `make-ort-references.py --long-prompts`): longer than the backends' prefill chunks.
    pub long: &'static str,
}

macro_rules! ort_file {
    ($name:literal) => {
        OrtFile {
            name: $name,
            onnx: include_bytes!(concat!("../fixtures/ort/", $name, ".onnx")),
            reference: include_str!(concat!("../fixtures/ort/", $name, ".json")),
            long: include_str!(concat!("../fixtures/ort/long/", $name, ".json")),
        }
    };
}

/// The file named `name` (see the generator's docstring for what each is).
pub fn file(name: &str) -> OrtFile {
    let all = [
        ort_file!("fp32"),
        ort_file!("fp16"),
        ort_file!("fp16-io"),
        ort_file!("int8"),
        ort_file!("int4-b32-sym"),
        ort_file!("int4-b32-asym"),
        ort_file!("int4-b128-sym"),
        ort_file!("int4-b128-asym"),
        ort_file!("int4-b32-acc4"),
        ort_file!("int4-qdq"),
        ort_file!("int4-qdq-asym"),
        ort_file!("int4-bias"),
        ort_file!("int4-gidx"),
    ];
    all.into_iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no reference file `{name}`"))
}

/// One of onnxruntime's `DynamicQuantizeLinear` → `MatMulInteger` rounding cases (ties of
/// `x / scale` and of the zero point, zero points clamped to 0 / 255, all zeros, an outlier):
/// the input's f32 bits, onnxruntime's quantized values, scale, zero point and int32 products
/// (`tests/fixtures/ort/dynamic-quantize.json`, `make-ort-references.py --dynamic-quantize`).
#[derive(serde::Deserialize)]
#[allow(dead_code)] // each includer reads its part
pub struct DynamicQuantizeCase {
    pub name: String,
    pub shape: [usize; 2],
    pub x_bits: Vec<u32>,
    pub y: Vec<u8>,
    pub scale_bits: u32,
    pub zero_point: u8,
    pub acc: Vec<i32>,
}

#[allow(dead_code)] // not every includer reads them
pub fn dynamic_quantize_cases() -> Vec<DynamicQuantizeCase> {
    #[derive(serde::Deserialize)]
    struct Cases {
        cases: Vec<DynamicQuantizeCase>,
    }
    let c: Cases = serde_json::from_str(include_str!("../fixtures/ort/dynamic-quantize.json")).expect("dynamic-quantize.json parses");
    c.cases
}

/// The int4-gidx file with its `g_idx` reversed: still one valid block per row, but rows
/// reordered across blocks (act-order GPTQ), which every backend must refuse by name.
#[allow(dead_code)] // not every includer reads it
pub fn act_order_g_idx_file() -> edge_llm::onnx::ModelProto {
    let mut proto = edge_llm::onnx::decode(file("int4-gidx").onnx).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let g = graph.initializer.iter_mut().find(|t| t.name.ends_with(".g_idx")).expect("a g_idx initializer");
    let mut idx: Vec<[u8; 4]> = g.raw_data.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    idx.reverse();
    g.raw_data = idx.concat();
    proto
}

#[derive(serde::Deserialize)]
pub struct Reference {
    pub runs: Vec<Run>,
}

/// onnxruntime on one prompt: greedy tokens (prompt in one run, then one token per run), the
/// logits of the last prompt position and of the last step.
#[derive(serde::Deserialize)]
pub struct Run {
    pub prompt: Vec<u32>,
    pub tokens: Vec<u32>,
    pub prefill_logits: Vec<f32>,
    pub last_logits: Vec<f32>,
    /// onnxruntime's greedy tokens on the same file with graph optimizations off
    /// (`ORT_DISABLE_ALL`), where `make-ort-references.py --self-agreement` recorded them: how
    /// far onnxruntime agrees with itself once its summation order changes.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // read by the native SmolLM2 check
    pub unoptimized_tokens: Option<Vec<u32>>,
    /// At each step of `tokens`, both runs fed them: max |logit diff| between onnxruntime's
    /// default and unoptimized runs (`--self-agreement`), its own spread at that step.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub self_spread: Option<Vec<f32>>,
}

impl Run {
    /// Tokens onnxruntime's default and unoptimized runs share before they first differ
    /// (`None` when the unoptimized run was not recorded).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn self_agreement(&self) -> Option<usize> {
        let u = self.unoptimized_tokens.as_ref()?;
        Some(self.tokens.iter().zip(u).take_while(|(a, b)| a == b).count())
    }
}

/// Which kernels run the file's matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The native default: tract's own ops, except where they would not compute what the
    /// file says (`MatMulNBits` scales that f16 cannot hold go to edge-llm's int4 kernel).
    Tract,
    /// edge-llm's int4 and int8 kernels (the wasm default), activations as each node asks:
    /// int8 where `accuracy_level` is 4, the float ones rounded to 16 bits per block
    /// (`Q4Activations::AsModel`, logits within [`INT16_ACT`]).
    Kernels,
    /// [`Backend::Kernels`] with the float nodes computed in f32 (`Q4Activations::AsModelExact`,
    /// the `exactActivations` load option): onnxruntime's arithmetic up to summation order.
    KernelsExact,
    /// Packed by `edge-llm-pack pack` (small shards, so tensors span shards) and loaded from
    /// the packed files the way `Engine.load` does ([`Engine::load_packed`], default options).
    #[cfg(feature = "pack")]
    Packed,
    /// Packed as [`Backend::Packed`], then opened on the GPU backend (`backend: "webgpu"`:
    /// natively wgpu over Vulkan; `tests/gpu.rs`).
    #[cfg(all(feature = "pack", not(target_arch = "wasm32")))]
    Gpu,
    /// [`Backend::Gpu`] with a decode step's residual adds and norms fused into the GEMVs
    /// after them (`GpuOptions::fuse_norm`: what a GPU may tune to; a CPU rasterizer's default
    /// keeps them apart).
    #[cfg(all(feature = "pack", not(target_arch = "wasm32")))]
    GpuFusedNorm,
}

impl Backend {
    /// Opened on the GPU backend.
    #[cfg(feature = "pack")]
    fn on_gpu(self) -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        if self == Backend::Gpu || self == Backend::GpuFusedNorm {
            return true;
        }
        false
    }

    /// Loaded from `edge-llm-pack pack`'s files through the engine.
    #[cfg(feature = "pack")]
    fn is_packed(self) -> bool {
        self.on_gpu() || self == Backend::Packed
    }

    /// The engine's backend for a packed file.
    #[cfg(feature = "pack")]
    fn engine_backend(self) -> edge_llm::backend::BackendKind {
        match self.on_gpu() {
            true => edge_llm::backend::BackendKind::Webgpu,
            false => edge_llm::backend::BackendKind::Wasm,
        }
    }

    /// The GPU backend's options for a packed file.
    #[cfg(feature = "pack")]
    fn gpu_options(self) -> edge_llm::gpu::GpuOptions {
        #[cfg(not(target_arch = "wasm32"))]
        if self == Backend::GpuFusedNorm {
            return edge_llm::gpu::GpuOptions { fuse_norm: Some(true), ..Default::default() };
        }
        edge_llm::gpu::GpuOptions::default()
    }

    pub fn options(self) -> CpuOptions {
        let kernels = matches!(self, Backend::Kernels | Backend::KernelsExact);
        let q4_activations = if self == Backend::KernelsExact { Q4Activations::AsModelExact } else { Q4Activations::AsModel };
        CpuOptions { q4_kernel: kernels, q8_kernel: kernels, q4_activations, last_logits_only: true, ..CpuOptions::default() }
    }
}

/// How closely a backend followed onnxruntime on a file.
#[derive(Debug, Default)]
pub struct Agreement {
    /// Greedy tokens equal to onnxruntime's, free-running from the prompt, per prompt.
    pub same_tokens: Vec<usize>,
    pub tokens: usize,
    /// Max |logit - onnxruntime's| at the last prompt position and at the last step (fed
    /// onnxruntime's tokens, so both sides see the same inputs).
    pub max_prefill_diff: f32,
    pub max_last_diff: f32,
    /// Per prompt, at the first departure: how far onnxruntime's token was below ours in our
    /// own logits (`None`: no departure).
    pub departure_margins: Vec<Option<f32>>,
}

impl Agreement {
    pub fn all_tokens_equal(&self) -> bool {
        self.same_tokens.iter().sum::<usize>() == self.tokens
    }

    /// Each prompt's first departure from onnxruntime's tokens, with what onnxruntime's own
    /// runs say there.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn departures(&self, reference: &Reference) -> Vec<Departure> {
        reference
            .runs
            .iter()
            .enumerate()
            .filter_map(|(prompt, run)| {
                let step = self.same_tokens[prompt];
                Some(Departure {
                    prompt,
                    step,
                    margin: self.departure_margins[prompt]?,
                    spread: run.self_spread.as_ref().and_then(|s| s.get(step).copied()),
                    ort_itself: run.self_agreement(),
                })
            })
            .collect()
    }

    /// The departures from onnxruntime's tokens that its own spread does not explain
    /// ([`Departure::explained`]), one line each.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn unexplained_departures(&self, reference: &Reference) -> Vec<String> {
        self.departures(reference)
            .into_iter()
            .filter(|d| !d.explained())
            .map(|d| {
                format!(
                    "prompt {}: departs at token {} (onnxruntime's token {:.3} below ours; onnxruntime's own spread there {}; unoptimized agrees with itself for {})",
                    d.prompt,
                    d.step,
                    d.margin,
                    d.spread.map_or("? (not recorded)".to_string(), |s| format!("{s:.3}")),
                    d.ort_itself.map_or("? (not recorded)".to_string(), |k| format!("{k} tokens"))
                )
            })
            .collect()
    }
}

/// Where a prompt's greedy tokens first leave onnxruntime's.
#[derive(Debug)]
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub struct Departure {
    pub prompt: usize,
    /// Tokens equal to onnxruntime's before it.
    pub step: usize,
    /// How far onnxruntime's token was below ours, in our logits.
    pub margin: f32,
    /// onnxruntime's own logit spread at that step (`Run::self_spread`), where recorded.
    pub spread: Option<f32>,
    /// Tokens onnxruntime's unoptimized run shares with its default run, where recorded.
    pub ort_itself: Option<usize>,
}

impl Departure {
    /// Explained when onnxruntime's unoptimized run left its default run at this step or
    /// earlier (the file is chaotic: one rounding moves the tokens, so no other summation
    /// order can follow it further), or when it is a near-tie: onnxruntime's token is below
    /// ours in our logits by less than onnxruntime's own logits move at this step between its
    /// two runs. Both are measured on onnxruntime alone; a file without them recorded explains
    /// nothing.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn explained(&self) -> bool {
        self.ort_itself.is_some_and(|k| k <= self.step) || self.spread.is_some_and(|s| self.margin < s)
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0 as u32
}

/// The tiny files' model config, as a user packing them writes it (`model_config.json`, also
/// read by the threaded build's run of these files, tests/js/threads.test.mjs): the tiny
/// tokenizer's special tokens, the architecture `scripts/make-ort-references.py` builds.
pub fn model_config() -> edge_llm::ModelConfig {
    edge_llm::ModelConfig::from_json(include_bytes!("../fixtures/ort/model_config.json")).expect("tests/fixtures/ort/model_config.json parses")
}

/// A file loaded for `backend`, handing out fresh sessions.
enum Loaded {
    Model(Arc<CpuModel>),
    #[cfg(feature = "pack")]
    Engine(edge_llm::Engine),
}

/// What `edge-llm-pack pack` needs beside the ONNX file, and the shard size to cut at.
#[cfg(feature = "pack")]
pub struct PackInputs {
    pub tokenizer: Vec<u8>,
    pub config: edge_llm::ModelConfig,
    pub shard_bytes: u64,
}

#[cfg(feature = "pack")]
impl PackInputs {
    /// The tiny files' inputs; 64 KiB shards, so their embeddings and weights span shards.
    pub fn tiny() -> Self {
        PackInputs { tokenizer: include_bytes!("../fixtures/tiny/tokenizer.json").to_vec(), config: model_config(), shard_bytes: 1 << 16 }
    }
}

impl Loaded {
    fn new(onnx: &[u8], backend: Backend, #[cfg(feature = "pack")] pack: &PackInputs) -> edge_llm::Result<Self> {
        #[cfg(feature = "pack")]
        if backend.is_packed() {
            let opts = edge_llm::pack::PackOptions { shard_bytes: pack.shard_bytes, ..Default::default() };
            let (manifest, files) = edge_llm::pack::pack(onnx, &pack.tokenizer, &pack.config, &opts)?;
            assert!(files.len() > 3, "a packed file has several weight shards");
            // Through its JSON, as the loader reads it.
            let manifest = edge_llm::package::manifest::Manifest::from_json(&serde_json::to_vec(&manifest).expect("manifest serializes"))?;
            let options = edge_llm::generate::EngineOptions { backend: backend.engine_backend(), gpu: backend.gpu_options(), ..Default::default() };
            let engine = edge_llm::Engine::open(edge_llm::package::Package::packed(&manifest, files.into_iter().collect()), &options)?;
            let want = if options.backend == edge_llm::backend::BackendKind::Webgpu { "webgpu" } else { "wasm" };
            assert_eq!(engine.backend_info().name, want, "opened on the backend asked for");
            return Ok(Loaded::Engine(engine));
        }
        Ok(Loaded::Model(Arc::new(CpuModel::from_proto(edge_llm::onnx::decode(onnx)?, &backend.options())?)))
    }

    fn session(&self) -> Box<dyn edge_llm::backend::Session> {
        match self {
            Loaded::Model(m) => Box::new(m.session()),
            #[cfg(feature = "pack")]
            Loaded::Engine(e) => e.session(),
        }
    }
}

/// `name: file, backend, tolerance [, int8-activation layers]` → one `#[$attr]` test of
/// `check`: the native (`tests/ort_files.rs`) and wasm (`common/ort_files_wasm.rs`) tables.
/// Tolerance: max |logit diff| against onnxruntime (logits of magnitude ~10). fp32, int8 and
/// int4 (float or int8 activations) compute the same numbers in another summation order:
/// measured ≤ 3e-5, bound 1e-4. fp16: we compute the graph in f32, onnxruntime rounds some
/// intermediates to f16: measured ≤ 1.02e-2 (onnxruntime on the same graph converted to f32:
/// 8.5e-3 from its fp16 run).
macro_rules! ort_tests {
    (#[$attr:meta] $($test:ident: $file:literal, $backend:ident, $tol:expr $(, $last:expr)?;)*) => {$(
        #[$attr]
        fn $test() {
            check($file, Backend::$backend, $tol, None$(.or(Some($last)))?);
        }
    )*};
}

/// Load `onnx` unchanged with `backend` and run every prompt of `reference` against it.
pub fn compare(onnx: &[u8], reference: &Reference, backend: Backend) -> edge_llm::Result<Agreement> {
    #[cfg(feature = "pack")]
    return compare_with(onnx, reference, backend, &PackInputs::tiny());
    #[cfg(not(feature = "pack"))]
    compare_with(onnx, reference, backend)
}

/// [`compare`], packing with `pack` for [`Backend::Packed`].
pub fn compare_with(
    onnx: &[u8],
    reference: &Reference,
    backend: Backend,
    #[cfg(feature = "pack")] pack: &PackInputs,
) -> edge_llm::Result<Agreement> {
    #[cfg(feature = "pack")]
    let model = Loaded::new(onnx, backend, pack)?;
    #[cfg(not(feature = "pack"))]
    let model = Loaded::new(onnx, backend)?;
    // Natively every backend's steps are ready when polled, and the CPU's everywhere.
    edge_llm::backend::ready(agreement(&|| model.session(), reference)).expect("the backend's steps are ready at once")
}

/// Run every prompt of `reference` on fresh sessions from `session`: free-running greedy
/// tokens until the first departure from onnxruntime's (then fed onnxruntime's), the logits at
/// the last prompt position and at the last step.
pub async fn agreement(session: &dyn Fn() -> Box<dyn edge_llm::backend::Session>, reference: &Reference) -> edge_llm::Result<Agreement> {
    let mut out = Agreement::default();
    for run in &reference.runs {
        let mut s = session();
        let mut logits = s.forward(&run.prompt).await?;
        out.max_prefill_diff = out.max_prefill_diff.max(max_abs_diff(&logits, &run.prefill_logits));
        let mut same = 0;
        let mut departed = false;
        let mut margin = None;
        for (i, &want) in run.tokens.iter().enumerate() {
            let got = argmax(&logits);
            if got != want && !departed {
                margin = Some(logits[got as usize] - logits[want as usize]);
            }
            departed |= got != want;
            same += usize::from(!departed);
            if i + 1 < run.tokens.len() {
                logits = s.forward(&[if departed { want } else { got }]).await?;
            }
        }
        out.same_tokens.push(same);
        out.departure_margins.push(margin);
        out.tokens += run.tokens.len();
        // With onnxruntime's tokens fed, the last step sees the same inputs as onnxruntime's.
        out.max_last_diff = out.max_last_diff.max(max_abs_diff(&logits, &run.last_logits));
    }
    Ok(out)
}

/// Every file on the GPU backend, with its tolerance and last-step tolerance (natively in
/// `tests/gpu.rs`, in Chromium in `tests/web_ort_files.rs`): the CPU backend's bounds for the
/// same arithmetic (float activations in f32, int8 where the file asks, fp16 computed in f32).
#[allow(dead_code)] // not every includer runs the GPU backend
pub const GPU_FILES: [(&str, f32, Option<f32>); 13] = [
    ("fp32", 1e-4, None),
    ("int8", 1e-4, Some(INT8_ACT_LAST)),
    ("fp16", 1.5e-2, None),
    ("fp16-io", 1.5e-2, None),
    ("int4-b32-sym", 1e-4, None),
    ("int4-b32-asym", 1e-4, None),
    ("int4-b128-sym", 1e-4, None),
    ("int4-b128-asym", 1e-4, None),
    ("int4-b32-acc4", 1e-4, Some(INT8_ACT_LAST)),
    ("int4-qdq", 1e-4, Some(INT8_ACT_LAST)),
    ("int4-qdq-asym", 1e-4, Some(INT8_ACT_LAST)),
    ("int4-bias", 1e-4, None),
    ("int4-gidx", 1e-4, None),
];

/// Last-step logit tolerance for files computed with int8 activations (see [`check`]); native
/// and Chromium tables both use it.
pub const INT8_ACT_LAST: f32 = 0.25;

/// Logit tolerance where edge-llm's int4 kernel rounds a file's float activations to 16 bits
/// per block (the default, [`Backend::Kernels`]; natively also where the kernel takes a file
/// tract's Q4_0 cannot hold): each rounding moves an activation by up to 2^-16 of its block's
/// largest, through every layer. Measured on the tiny files: at most 1.0e-3 (greedy tokens all
/// onnxruntime's); the same files in f32 ([`Backend::KernelsExact`]) stay within 1e-4.
pub const INT16_ACT: f32 = 4e-3;

/// The test body: `name` loads unchanged on `backend`, its greedy tokens are onnxruntime's and
/// its logits within `tol` of onnxruntime's (at the last step within `last_tol` where given).
///
/// `last_tol` is for files that compute with int8 activations (`accuracy_level` 4): rounding
/// an activation to int8 is a step function, so a last-bit difference upstream (another
/// summation order in attention) can move one value to the neighbouring int8 step, and the
/// logits by up to ~0.1 on the tiny model (measured in Chromium: 1 of 4 prompts, after 11
/// decode steps). The prefill logits (the first forward pass) keep the strict `tol`.
pub fn check(name: &str, backend: Backend, tol: f32, last_tol: Option<f32>) -> Agreement {
    let f = file(name);
    let mut out = None;
    for (what, json, (tol, last_tol)) in [("", f.reference, (tol, last_tol)), (", 150-token prompt", f.long, long_tolerance(name, tol, last_tol))] {
        let reference: Reference = serde_json::from_str(json).expect("reference JSON parses");
        let a = compare(f.onnx, &reference, backend).unwrap_or_else(|e| panic!("{name} on {backend:?} fails to load or run: {e}"));
        out.get_or_insert(judge(&format!("{name} on {backend:?}{what}"), a, tol, last_tol));
    }
    out.expect("the short prompts ran")
}

/// onnxruntime's own fp16 run is this far from its fp32 run on the 150-token prompt (0.187 at
/// the prompt's last position, 0.182 at the last step; 0.015 on the short prompts): computed in
/// f32, edge-llm lands between them.
pub const F16_LONG: f32 = 0.25;

/// The bounds on the 150-token prompt: fp16 files within [`F16_LONG`]; files computed on int8
/// activations (those with a last-step bound) within it at the prompt's last position too —
/// over 150 rows more activations sit next to a rounding step (measured 3.5e-2, QDQ asym
/// 6.9e-2); the rest as on the short prompts.
fn long_tolerance(name: &str, tol: f32, last_tol: Option<f32>) -> (f32, Option<f32>) {
    match last_tol {
        _ if name.starts_with("fp16") => (F16_LONG, None),
        Some(last) => (last, Some(last)),
        None => (tol, None),
    }
}

/// [`check`]'s body on the WebGPU backend in the browser (steps wait for the GPU's readback):
/// the file loaded as is (`Package::loose`, the fixes `Engine::open_async` applies) with
/// `backend: "webgpu"`.
#[cfg(target_arch = "wasm32")]
pub async fn check_webgpu(name: &str, tol: f32, last_tol: Option<f32>) -> Agreement {
    use edge_llm::backend::BackendKind;
    let f = file(name);
    let options = edge_llm::generate::EngineOptions { backend: BackendKind::Webgpu, ..Default::default() };
    let package = edge_llm::package::Package::loose(f.onnx, include_bytes!("../fixtures/tiny/tokenizer.json"), model_config());
    let engine = edge_llm::Engine::open_async(package, &options).await.unwrap_or_else(|e| panic!("{name} on WebGPU fails to load: {e}"));
    assert_eq!(engine.backend_info().name, "webgpu");
    let mut out = None;
    for (what, json, (tol, last_tol)) in [("", f.reference, (tol, last_tol)), (", 150-token prompt", f.long, long_tolerance(name, tol, last_tol))] {
        let reference: Reference = serde_json::from_str(json).expect("reference JSON parses");
        let a = agreement(&|| engine.session(), &reference).await.unwrap_or_else(|e| panic!("{name} on WebGPU fails to run: {e}"));
        out.get_or_insert(judge(&format!("{name} on WebGPU{what}"), a, tol, last_tol));
    }
    out.expect("the short prompts ran")
}

/// Report `a` and assert its tokens are onnxruntime's and its logits within `tol` (`last_tol`
/// at the last step where given).
fn judge(what: &str, a: Agreement, tol: f32, last_tol: Option<f32>) -> Agreement {
    let line = format!(
        "{what}: {}/{} greedy tokens as onnxruntime (per prompt {:?}), max |logit diff| prefill {:e}, last step {:e}",
        a.same_tokens.iter().sum::<usize>(),
        a.tokens,
        a.same_tokens,
        a.max_prefill_diff,
        a.max_last_diff
    );
    report(&line);
    assert!(a.all_tokens_equal(), "{line}");
    let last_tol = last_tol.unwrap_or(tol);
    assert!(a.max_prefill_diff < tol && a.max_last_diff < last_tol, "{line}: tolerance {tol:e}, last step {last_tol:e}");
    a
}

#[cfg(target_arch = "wasm32")]
fn report(line: &str) {
    wasm_bindgen_test::console_log!("{line}");
}

#[cfg(not(target_arch = "wasm32"))]
fn report(line: &str) {
    eprintln!("{line}");
}
