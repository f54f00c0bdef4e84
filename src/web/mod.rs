//! The JS API (wasm-bindgen). The only module that touches browser / JS APIs.

use wasm_bindgen::prelude::*;

use crate::generate::{self, GenerateOptions};
use crate::tokenizer::ChatMessage;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `Engine.generate` / `Engine.chat`. Every field is optional. */
export interface GenerateOptions {
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

#[wasm_bindgen(module = "/js/stream.js")]
extern "C" {
    #[wasm_bindgen(js_name = toAsyncIterator)]
    fn to_async_iterator(generation: Generation, signal: JsValue) -> JsValue;
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A JS `Error` whose `name` is the variant's stable name (`IntegrityError`, ...).
fn js_error(e: crate::Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    err.set_name(e.name());
    err.into()
}

fn from_js<T: serde::de::DeserializeOwned + Default>(v: JsValue, what: &'static str) -> Result<T, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(v).map_err(|e| js_error(crate::Error::InvalidOption { option: what, reason: e.to_string() }))
}

fn to_js<T: serde::Serialize>(v: &T) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).unwrap_or(JsValue::UNDEFINED)
}

/// The crate version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
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
    inner: generate::Engine,
}

#[wasm_bindgen]
impl Engine {
    /// Load from the ONNX graph, `tokenizer.json` and `model_config.json` bytes.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(onnx: &[u8], tokenizer_json: &[u8], config_json: &[u8]) -> Result<Engine, JsValue> {
        let config = crate::ModelConfig::from_json(config_json).map_err(js_error)?;
        let inner = generate::Engine::load(onnx, tokenizer_json, config).map_err(js_error)?;
        Ok(Engine { inner })
    }

    /// Load a packed model: `manifest.json` bytes and every file it lists, by path. Each file
    /// is checked against its SHA-256 before use (`IntegrityError` names the one that fails).
    #[wasm_bindgen(js_name = fromPacked)]
    pub fn from_packed(
        manifest_json: &[u8],
        #[wasm_bindgen(unchecked_param_type = "Map<string, Uint8Array>")] files: js_sys::Map,
    ) -> Result<Engine, JsValue> {
        let manifest = crate::manifest::Manifest::from_json(manifest_json).map_err(js_error)?;
        let mut owned = std::collections::BTreeMap::new();
        for f in &manifest.files {
            let v = files.get(&JsValue::from_str(&f.path));
            if let Some(arr) = v.dyn_ref::<js_sys::Uint8Array>() {
                owned.insert(f.path.clone(), arr.to_vec());
                // Drop the JS copy as soon as Rust has one: weights are never held twice.
                files.delete(&JsValue::from_str(&f.path));
            }
        }
        let inner = generate::Engine::load_packed(&manifest, owned).map_err(js_error)?;
        Ok(Engine { inner })
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.inner.tokenizer().encode(text).map_err(js_error)
    }

    pub fn detokenize(&self, ids: &[u32]) -> Result<String, JsValue> {
        self.inner.tokenizer().decode(ids, false).map_err(js_error)
    }

    /// Render chat messages with the model's template.
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChatMessage[]")] messages: JsValue,
    ) -> Result<String, JsValue> {
        let messages: Vec<ChatMessage> = from_js(messages, "messages")?;
        self.inner.apply_chat_template(&messages).map_err(js_error)
    }

    /// Stream the continuation of `prompt` (raw text).
    #[wasm_bindgen(unchecked_return_type = "AsyncIterableIterator<GeneratedToken>")]
    pub fn generate(
        &self,
        prompt: &str,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions | undefined")] opts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "AbortSignal | undefined")] signal: JsValue,
    ) -> Result<JsValue, JsValue> {
        let g = self.start(prompt, opts)?;
        Ok(to_async_iterator(g, signal))
    }

    /// Stream the assistant's reply to `messages`, rendered with the model's chat template.
    #[wasm_bindgen(unchecked_return_type = "AsyncIterableIterator<GeneratedToken>")]
    pub fn chat(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChatMessage[]")] messages: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions | undefined")] opts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "AbortSignal | undefined")] signal: JsValue,
    ) -> Result<JsValue, JsValue> {
        let messages: Vec<ChatMessage> = from_js(messages, "messages")?;
        let prompt = self.inner.apply_chat_template(&messages).map_err(js_error)?;
        let g = self.start(&prompt, opts)?;
        Ok(to_async_iterator(g, signal))
    }

    /// Step-by-step generation, for callers that drive the loop themselves.
    #[wasm_bindgen(js_name = startGeneration)]
    pub fn start(
        &self,
        prompt: &str,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions | undefined")] opts: JsValue,
    ) -> Result<Generation, JsValue> {
        let opts: GenerateOptions = from_js(opts, "options")?;
        let inner = self.inner.generate(prompt, &opts).map_err(js_error)?;
        Ok(Generation { inner })
    }
}

/// An in-progress generation.
#[wasm_bindgen]
pub struct Generation {
    inner: generate::Generation,
}

#[wasm_bindgen]
impl Generation {
    /// The next token, or `undefined` when finished.
    #[wasm_bindgen(unchecked_return_type = "GeneratedToken | undefined")]
    pub fn step(&mut self) -> Result<JsValue, JsValue> {
        match self.inner.step().map_err(js_error)? {
            Some(ev) => Ok(to_js(&ev)),
            None => Ok(JsValue::UNDEFINED),
        }
    }

    /// Why generation ended (`"eos"`, `"stopString"`, `"maxTokens"`), or `undefined`.
    #[wasm_bindgen(js_name = finishReason, unchecked_return_type = "string | undefined")]
    pub fn finish_reason(&self) -> JsValue {
        self.inner.finish_reason().map(|r| to_js(&r)).unwrap_or(JsValue::UNDEFINED)
    }
}
