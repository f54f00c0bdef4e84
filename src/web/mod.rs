//! The JS API (wasm-bindgen). The only module that touches browser / JS APIs.

mod load;
mod ota;

#[doc(hidden)]
pub use load::memory_store;

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::generate::{self, GenerateOptions};
use crate::tokenizer::ChatMessage;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `Engine.generate` / `Engine.chat`. Every field is optional: a packed model's
 *  manifest `generation` defaults (else the built-in ones) fill the rest. Any other name throws
 *  `InvalidOptionError` with `error.option` set to it. */
export interface GenerateOptions {
  /** Default: the manifest's `generation.max_new_tokens`, else 128. */
  maxTokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  seed?: number;
  stopTokenIds?: number[];
  stopStrings?: string[];
  /** Keep generating past EOS (benchmarks). */
  ignoreEos?: boolean;
  /**
   * Start from the longest common token prefix of the engine's current conversation (see
   * `saveState`) instead of recomputing it. Default: true for `chat`, false for `generate`.
   */
  reusePrefix?: boolean;
}
/** Counts and timings of the latest generation (milliseconds, `performance.now`). */
export interface GenerationStats {
  promptTokens: number;
  /** Prompt tokens taken from the cached conversation instead of being recomputed. */
  reusedPromptTokens: number;
  generatedTokens: number;
  /** From the `generate`/`chat` call (tokenization included) to the first token. */
  timeToFirstTokenMs: number;
  prefillMs: number;
  decodeMs: number;
  prefillTokensPerS: number;
  decodeTokensPerS: number;
}
/** `Engine.stats()`: the engine and its latest generation. */
export interface EngineStats extends GenerationStats {
  /** Where inference runs, e.g. `"cpu-wasm-simd128"`. */
  backend: string;
  /** Why `backend: "auto"` chose this backend (absent when the app named one). */
  backendReason?: string;
  /** On the GPU: what its int4 / int8 products compute in: `"f16"` where `gpuPrecision: "f16"` was asked,
   *  the adapter has `shader-f16`, the load found it faster and the model has such products on float
   *  activations (nodes that round their input to int8 keep exact f32 ones), else `"f32"`. Absent on the CPU. */
  gpuPrecision?: "f32" | "f16";
  /** `"explicit"` (past/present tensors carried between steps) or `"folded"` (in the plan's state). */
  kvCache: string;
  /** Time to build the engine from bytes (verification, graph, plan, tokenizer). */
  loadMs: number;
  /** Bytes of model files the engine was built from. */
  modelBytes: number;
  /** Bytes of wasm linear memory (it only grows: also the peak). */
  wasmMemoryBytes: number;
  /** Tokens in the current conversation's KV cache. */
  contextTokens: number;
}
/** Why a generation ended. */
export type FinishReason = "eos" | "stopString" | "maxTokens";
/** What `generate` / `chat` / `resume` return: tokens as they come; `finishReason` once done. */
export interface TokenStream extends AsyncIterableIterator<GeneratedToken> {
  readonly finishReason: FinishReason | undefined;
}
/** One streamed token: `text` is whole UTF-8 characters (may be empty mid-character). */
export interface GeneratedToken {
  tokenId: number;
  text: string;
}
export interface ChatMessage {
  role: "system" | "user" | "assistant" | string;
  content: string;
}
/** Description of the GPU adapter WebGPU offers. */
export interface GpuInfo {
  name: string;
  vendor: number;
  device: number;
  deviceType: string;
  driver: string;
  driverInfo: string;
  backend: string;
  features: string[];
  maxStorageBufferBindingSize: number;
  maxComputeWorkgroupSizeX: number;
}
"#;

/// Typed optional arguments: `opts?: GenerateOptions | null`, `signal?: AbortSignal | null`.
#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "GenerateOptions")]
    pub type GenerateOptionsArg;
    #[wasm_bindgen(typescript_type = "AbortSignal")]
    pub type AbortSignalArg;
}

#[wasm_bindgen(module = "/js/stream.js")]
extern "C" {
    #[wasm_bindgen(js_name = toAsyncIterator)]
    fn to_async_iterator(generation: Generation, signal: JsValue) -> JsValue;
    /// `performance.now()` (browsers, workers, Node, Deno).
    #[wasm_bindgen(js_name = now)]
    fn now_ms() -> f64;
}

fn clock() -> f64 {
    now_ms()
}

/// `engine` timing its generations with the JS clock.
pub(crate) fn with_clock(mut engine: generate::Engine) -> generate::Engine {
    engine.set_clock(clock);
    engine
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
    generate::install_clock(clock);
}

/// A JS `Error` whose `name` is the variant's stable name (`IntegrityError`, ...); an
/// `InvalidOptionError` also carries the option's name as `option`.
fn js_error(e: crate::Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    err.set_name(e.name());
    if let Some(option) = e.option() {
        let _ = js_sys::Reflect::set(&err, &"option".into(), &option.into());
    }
    err.into()
}

/// The app's generation options (`undefined` or an object) over `engine`'s defaults (a packed
/// model's manifest `generation`); an unknown option is an `InvalidOptionError` naming it.
/// Token ids from a `Uint32Array` or an array of integers in `0..2^32`.
fn prompt_ids(v: &JsValue) -> Result<Vec<u32>, JsValue> {
    if let Some(a) = v.dyn_ref::<js_sys::Uint32Array>() {
        return Ok(a.to_vec());
    }
    let bad = || js_error(crate::Error::InvalidOption { option: "prompt", reason: "pass a string, a Uint32Array or an array of token ids".into() });
    let array = v.dyn_ref::<js_sys::Array>().ok_or_else(bad)?;
    array
        .iter()
        .map(|x| x.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(f)).map(|f| f as u32).ok_or_else(bad))
        .collect()
}

fn generate_options(engine: &generate::Engine, v: JsValue) -> Result<GenerateOptions, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(engine.default_options().clone());
    }
    if !v.is_object() || js_sys::Array::is_array(&v) {
        return Err(js_error(crate::Error::InvalidOption { option: "options", reason: "must be an object".into() }));
    }
    let given = serde_wasm_bindgen::from_value(v).map_err(|e| js_error(crate::Error::InvalidOption { option: "options", reason: e.to_string() }))?;
    engine.default_options().overlay(given).map_err(js_error)
}

/// Reject an options object's keys that are not in `known` (`InvalidOptionError` naming it).
pub(crate) fn check_option_names(options: &JsValue, known: &[&str]) -> Result<(), JsValue> {
    if !options.is_object() {
        return Ok(());
    }
    let object: &js_sys::Object = options.unchecked_ref();
    for key in js_sys::Object::keys(object).iter() {
        let key = key.as_string().unwrap_or_default();
        if !known.contains(&key.as_str()) {
            return Err(js_error(crate::Error::unknown_option(&key, known)));
        }
    }
    Ok(())
}

fn from_js<T: serde::de::DeserializeOwned + Default>(v: JsValue, what: &'static str) -> Result<T, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(v).map_err(|e| js_error(crate::Error::InvalidOption { option: what, reason: e.to_string() }))
}

/// Plain objects, and `undefined` (not `null`) for a `None`: what the `.d.ts`'s optional
/// fields (`field?: T`) promise (tests/js/types.test.mjs checks values against them).
fn to_js<T: serde::Serialize>(v: &T) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true)).unwrap_or(JsValue::UNDEFINED)
}

/// The crate version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
}

/// The GPU kernel benchmark on this browser's WebGPU adapter (`gpu::bench::kernels`): int4
/// GEMV GB/s (the engine's kernel and the per-row one; on a hardware adapter every width of the
/// rows kernel too) and the prefill GEMM's GFLOP/s at SmolLM2-135M's shapes, the token pick over its
/// vocabulary, timed with `performance.now` (each pass one submit and its readback; medians and
/// percentiles of `steps` passes after `warmup`, defaults 3 and 20; `noSubgroups` leaves the
/// adapter's `subgroups` unused). Resolves to the report's lines; rejects with
/// `UnsupportedBackendError` without WebGPU.
#[wasm_bindgen(js_name = benchGpuKernels, unchecked_return_type = "string[]")]
pub async fn bench_gpu_kernels(warmup: Option<u32>, steps: Option<u32>, no_subgroups: Option<bool>) -> Result<JsValue, JsValue> {
    let options = crate::gpu::GpuOptions { no_subgroups: no_subgroups.unwrap_or(false), ..Default::default() };
    let ctx = crate::gpu::GpuContext::with_options(&options).await.map_err(js_error)?;
    let gemv = crate::gpu::bench::default_gemv_kernels(&ctx);
    let lines = crate::gpu::bench::kernels(&ctx, warmup.unwrap_or(3) as usize, steps.unwrap_or(20) as usize, clock, &gemv).await.map_err(js_error)?;
    Ok(lines.into_iter().map(JsValue::from).collect::<js_sys::Array>().into())
}

/// Bytes of wasm linear memory in use (it only grows, so this is also the peak).
#[wasm_bindgen(js_name = wasmMemoryBytes)]
pub fn wasm_memory_bytes() -> f64 {
    (core::arch::wasm32::memory_size(0) * 65536) as f64
}

/// Start the CPU threads: `threads` in all, this thread included (the page's default is
/// `navigator.hardwareConcurrency - 1`, at least 1; `pkg/auto.js` passes it). Resolves to the
/// count in effect. The single-thread build always resolves to 1; the threaded build
/// (`pkg/threads/`, cross-origin isolated pages only) starts `threads - 1` Web Workers once;
/// later calls can lower the count in use but not raise it past the workers started.
#[wasm_bindgen(js_name = initThreads)]
pub async fn init_threads(threads: usize) -> Result<usize, JsValue> {
    let threads = threads.max(1);
    #[cfg(feature = "threads")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static STARTED: AtomicBool = AtomicBool::new(false);
        if threads > 1 && !STARTED.swap(true, Ordering::SeqCst) {
            let workers = threads - 1;
            if let Err(e) = wasm_bindgen_futures::JsFuture::from(wasm_bindgen_rayon::init_thread_pool(workers)).await {
                STARTED.store(false, Ordering::SeqCst);
                return Err(e);
            }
            crate::cpu::threads::set_pool_workers(workers);
        }
    }
    Ok(crate::cpu::threads::configure(threads))
}

/// Threads the CPU kernels use now (this thread included).
#[wasm_bindgen(js_name = cpuThreads)]
pub fn cpu_threads() -> usize {
    crate::cpu::threads::threads()
}

/// Smallest share of a matmul (multiply-accumulates) worth handing to another thread; default
/// 262,144. Results do not depend on it (tests set 1 to split the tiny model's matmuls too).
#[wasm_bindgen(js_name = setCpuSplitMinWork)]
pub fn set_cpu_split_min_work(macs: usize) {
    crate::cpu::threads::set_min_macs_per_thread(macs);
}

/// How many matmuls were split across threads so far (diagnostics, tests).
#[wasm_bindgen(js_name = cpuSplitCalls)]
pub fn cpu_split_calls() -> usize {
    crate::cpu::threads::split_calls()
}

/// Whether this is the multi-threaded build (`pkg/threads/`).
#[wasm_bindgen(js_name = threadedBuild)]
pub fn threaded_build() -> bool {
    cfg!(feature = "threads")
}

/// Whether this is a relaxed-SIMD build (`pkg/relaxed/`, `pkg/threads-relaxed/`): its int4 GEMV
/// runs `cpu::kernels::q4::relaxed`.
#[wasm_bindgen(js_name = relaxedSimdBuild)]
pub fn relaxed_simd_build() -> bool {
    cfg!(feature = "relaxed-simd")
}

/// The WebGPU adapter this browser offers, or `undefined`.
#[wasm_bindgen(js_name = gpuInfo, unchecked_return_type = "Promise<GpuInfo | undefined>")]
pub async fn gpu_info() -> JsValue {
    match crate::gpu::probe().await {
        Some(info) => to_js(&info),
        None => JsValue::UNDEFINED,
    }
}

/// A loaded model.
#[wasm_bindgen]
pub struct Engine {
    /// Swappable by OTA updates and rollbacks (web/ota.rs); use [`Engine::inner`].
    slot: Rc<ota::Slot>,
    load_ms: f64,
    model_bytes: f64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EngineStats {
    backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_precision: Option<&'static str>,
    kv_cache: &'static str,
    load_ms: f64,
    model_bytes: f64,
    wasm_memory_bytes: f64,
    context_tokens: usize,
    #[serde(flatten)]
    last: generate::GenerationStats,
}

impl Engine {
    fn new(inner: generate::Engine, t0: f64, model_bytes: usize) -> Engine {
        Engine::with_slot(Rc::new(ota::new_slot(with_clock(inner), None, None)), t0, model_bytes as f64)
    }

    pub(crate) fn with_slot(slot: Rc<ota::Slot>, t0: f64, model_bytes: f64) -> Engine {
        Engine { slot, load_ms: now_ms() - t0, model_bytes }
    }

    /// `inner`, started on `engine`, reporting its outcome to this engine's OTA slot.
    fn generation(&self, engine: Rc<generate::Engine>, inner: generate::Generation) -> Generation {
        let state = GenerationState { inner, outcome: Some(self.slot.outcome()) };
        Generation { state: Rc::new(RefCell::new(state)), _engine: engine }
    }

    /// The GPU device the engine runs on, if it does (tests destroy it to lose it).
    #[doc(hidden)]
    pub fn gpu_device(&self) -> Option<wgpu::Device> {
        self.slot.engine()?.gpu_device()
    }

    /// The engine now in use (a running generation keeps the one it started on), or
    /// `EngineDisposedError`.
    fn inner(&self) -> Result<Rc<generate::Engine>, JsValue> {
        self.slot.engine().ok_or_else(|| js_error(crate::Error::Disposed))
    }
}

#[wasm_bindgen]
impl Engine {
    /// Load from the ONNX graph, `tokenizer.json` and `model_config.json` bytes.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(onnx: &[u8], tokenizer_json: &[u8], config_json: &[u8]) -> Result<Engine, JsValue> {
        let t0 = now_ms();
        let config = crate::ModelConfig::from_json(config_json).map_err(js_error)?;
        let inner = generate::Engine::open(crate::package::Package::loose(onnx, tokenizer_json, config), &Default::default()).map_err(js_error)?;
        Ok(Engine::new(inner, t0, onnx.len() + tokenizer_json.len() + config_json.len()))
    }

    /// Load a packed model: `manifest.json` bytes and every file it lists, by path. Each file
    /// is checked against its SHA-256 before use (`IntegrityError` names the one that fails).
    #[wasm_bindgen(js_name = fromPacked)]
    pub fn from_packed(
        manifest_json: &[u8],
        #[wasm_bindgen(unchecked_param_type = "Map<string, Uint8Array>")] files: js_sys::Map,
    ) -> Result<Engine, JsValue> {
        let t0 = now_ms();
        let manifest = crate::package::manifest::Manifest::from_json(manifest_json).map_err(js_error)?;
        // Each file is taken out of the map when the engine needs it (hashed in pieces, its
        // tensors copied straight into wasm memory) and dropped after: the weights are never
        // held twice on either side.
        let package = crate::package::Package::packed_with(&manifest, |path| {
            let key = JsValue::from_str(path);
            let bytes = files
                .get(&key)
                .dyn_into::<js_sys::Uint8Array>()
                .map_err(|_| crate::Error::InvalidModel(format!("file `{path}` was not provided")))?;
            files.delete(&key);
            Ok(bytes)
        });
        let inner = generate::Engine::open(package, &Default::default()).map_err(js_error)?;
        Ok(Engine::new(inner, t0, manifest.total_bytes as usize))
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.inner()?.tokenizer().encode(text).map_err(js_error)
    }

    pub fn detokenize(&self, ids: &[u32]) -> Result<String, JsValue> {
        self.inner()?.tokenizer().decode(ids, false).map_err(js_error)
    }

    /// Serialise the current conversation (the latest generation's, even mid-way, or the
    /// restored one): KV cache in its native dtype, the tokens in it and, mid-generation, the
    /// sampler state `resume()` needs. Versioned and checksummed.
    #[wasm_bindgen(js_name = saveState)]
    pub fn save_state(&self) -> Result<Vec<u8>, JsValue> {
        self.inner()?.save_state().map_err(js_error)
    }

    /// Make `bytes` (from `saveState` of the same model) the current conversation: the next
    /// `chat` reuses its cache, `resume()` continues its unfinished generation. Truncated,
    /// corrupt or foreign state throws `InvalidStateError` and changes nothing.
    #[wasm_bindgen(js_name = restoreState)]
    pub fn restore_state(&self, bytes: &[u8]) -> Result<(), JsValue> {
        self.inner()?.restore_state(bytes).map_err(js_error)
    }

    /// Forget the current conversation.
    #[wasm_bindgen(js_name = clearState)]
    pub fn clear_state(&self) -> Result<(), JsValue> {
        self.inner()?.clear_state();
        Ok(())
    }

    /// Stream the rest of the current conversation's unfinished generation (saved mid-way):
    /// the same tokens the uninterrupted generation would have produced.
    #[wasm_bindgen(unchecked_return_type = "TokenStream")]
    pub fn resume(
        &self,
        signal: Option<AbortSignalArg>,
    ) -> Result<JsValue, JsValue> {
        Ok(to_async_iterator(self.resume_generation()?, load::or_undefined(signal)))
    }

    /// `resume()` as a step-by-step `Generation`.
    #[wasm_bindgen(js_name = resumeGeneration)]
    pub fn resume_generation(&self) -> Result<Generation, JsValue> {
        let engine = self.inner()?;
        let inner = engine.resume().map_err(js_error)?;
        Ok(self.generation(engine, inner))
    }

    /// Load time, model and memory sizes, and the latest generation's counts and speeds.
    #[wasm_bindgen(unchecked_return_type = "EngineStats")]
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let e = self.inner()?;
        let info = e.backend_info();
        Ok(to_js(&EngineStats {
            backend: if info.name == "wasm" { "cpu-wasm-simd128" } else { info.name },
            backend_reason: info.reason,
            gpu_precision: info.gpu_precision,
            kv_cache: info.kv_cache,
            load_ms: self.load_ms,
            model_bytes: self.model_bytes,
            wasm_memory_bytes: wasm_memory_bytes(),
            context_tokens: e.state().map_or(0, |s| s.tokens().len()),
            last: e.stats(),
        }))
    }

    /// Free the model now. Later calls on this engine, and on its generations, throw
    /// `EngineDisposedError`. Calling it twice is harmless.
    pub fn dispose(&mut self) {
        self.slot.dispose();
    }

    /// Whether `dispose()` was called.
    #[wasm_bindgen(getter)]
    pub fn disposed(&self) -> bool {
        self.slot.engine().is_none()
    }

    /// Render chat messages with the model's template.
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChatMessage[]")] messages: JsValue,
    ) -> Result<String, JsValue> {
        let messages: Vec<ChatMessage> = from_js(messages, "messages")?;
        self.inner()?.apply_chat_template(&messages).map_err(js_error)
    }

    /// Stream the continuation of `prompt`: raw text, or token ids (see `startGeneration`).
    #[wasm_bindgen(unchecked_return_type = "TokenStream")]
    pub fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | Uint32Array | number[]")] prompt: JsValue,
        opts: Option<GenerateOptionsArg>,
        signal: Option<AbortSignalArg>,
    ) -> Result<JsValue, JsValue> {
        let g = self.start(prompt, opts)?;
        Ok(to_async_iterator(g, load::or_undefined(signal)))
    }

    /// Stream the assistant's reply to `messages`, rendered with the model's chat template.
    /// The longest common token prefix with the current conversation is reused, not recomputed
    /// (`reusePrefix: false` turns that off). Typed in js/index.d.ts: the package entry
    /// (js/index.js) makes `engine.chat` also carry the OpenAI-style `chat.completions.create`.
    #[wasm_bindgen(skip_typescript)]
    pub fn chat(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChatMessage[]")] messages: JsValue,
        opts: Option<GenerateOptionsArg>,
        signal: Option<AbortSignalArg>,
    ) -> Result<JsValue, JsValue> {
        let messages: Vec<ChatMessage> = from_js(messages, "messages")?;
        let engine = self.inner()?;
        let opts = generate_options(&engine, load::or_undefined(opts))?;
        let inner = engine.chat(&messages, &opts).map_err(js_error)?;
        Ok(to_async_iterator(self.generation(engine, inner), load::or_undefined(signal)))
    }

    /// Step-by-step generation, for callers that drive the loop themselves.
    /// `prompt`: raw text (not templated), or the prompt's token ids (`Uint32Array` or an
    /// array of numbers), run as given: what a caller with its own tokenization, or a test
    /// replaying another runtime's ids, needs.
    #[wasm_bindgen(js_name = startGeneration)]
    pub fn start(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | Uint32Array | number[]")] prompt: JsValue,
        opts: Option<GenerateOptionsArg>,
    ) -> Result<Generation, JsValue> {
        let engine = self.inner()?;
        let opts = generate_options(&engine, load::or_undefined(opts))?;
        let inner = match prompt.as_string() {
            Some(text) => engine.generate(&text, &opts),
            None => engine.generate_ids(prompt_ids(&prompt)?, &opts),
        }
        .map_err(js_error)?;
        Ok(self.generation(engine, inner))
    }
}

/// An in-progress generation.
#[wasm_bindgen]
pub struct Generation {
    /// Shared with a running `stepAsync`, whose future outlives the call.
    state: Rc<RefCell<GenerationState>>,
    /// The engine it started on: an OTA swap does not end it (`dispose()` does).
    _engine: Rc<generate::Engine>,
}

struct GenerationState {
    inner: generate::Generation,
    /// Reported once, when the generation ends or fails (OTA error-rate accounting).
    outcome: Option<ota::Outcome>,
}

impl GenerationState {
    /// Report the outcome once the step ended the generation, and turn the step into JS.
    fn settle(&mut self, step: crate::Result<Option<generate::TokenEvent>>) -> Result<JsValue, JsValue> {
        let ok = match &step {
            Err(e) if crate::ota::is_model_error(e) => Some(false),
            Err(_) => None,
            Ok(None) => Some(true),
            Ok(Some(_)) => self.inner.finish_reason().map(|_| true),
        };
        if let Some(outcome) = ok.and_then(|_| self.outcome.take()) {
            ota::report(outcome, ok == Some(true));
        }
        match step.map_err(js_error)? {
            Some(ev) => Ok(to_js(&ev)),
            None => Ok(JsValue::UNDEFINED),
        }
    }
}

fn step_running() -> JsValue {
    js_error(crate::Error::InvalidState("a step of this generation is still running".into()))
}

#[wasm_bindgen]
impl Generation {
    /// The next token, or `undefined` when finished. On the WebGPU backend a step waits for
    /// the GPU: use `stepAsync` (this throws `UnsupportedBackendError` there).
    #[wasm_bindgen(unchecked_return_type = "GeneratedToken | undefined")]
    pub fn step(&mut self) -> Result<JsValue, JsValue> {
        let mut state = self.state.try_borrow_mut().map_err(|_| step_running())?;
        let step = state.inner.step();
        state.settle(step)
    }

    /// The next token, or `undefined` when finished, on every backend (the streams use it).
    #[wasm_bindgen(js_name = stepAsync, unchecked_return_type = "Promise<GeneratedToken | undefined>")]
    pub fn step_async(&mut self) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            // Held across the GPU's await: a second step meanwhile gets `step_running`.
            let mut state = state.try_borrow_mut().map_err(|_| step_running())?;
            let step = state.inner.step_async().await;
            state.settle(step)
        })
    }

    /// Why generation ended (`"eos"`, `"stopString"`, `"maxTokens"`), or `undefined`.
    #[wasm_bindgen(js_name = finishReason, unchecked_return_type = "FinishReason | undefined")]
    pub fn finish_reason(&self) -> JsValue {
        match self.state.try_borrow() {
            Ok(s) => s.inner.finish_reason().map(|r| to_js(&r)).unwrap_or(JsValue::UNDEFINED),
            Err(_) => JsValue::UNDEFINED,
        }
    }
}
