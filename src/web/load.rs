//! `Engine.load`: thin adapters from `loader` / `store` (the policy, plain Rust) to fetch,
//! WebCrypto, IndexedDB and the file system (js/fetch.js, js/store.js).

use std::rc::Rc;

use js_sys::{Function, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::{js_error, ota, to_js, Engine};
use crate::ota::Skip;
use crate::loader::{FetchError, Fetcher, LoadEvent, LoadOptions, LoadedVersion, Loader, ManifestArg, RetryPolicy};
use crate::backend::BackendKind;
use crate::generate::EngineOptions;
use crate::package::Blob;
use crate::store::{self, ModelRecord, ShardStore, StorageEstimate, StoreError};
use crate::Error;

#[wasm_bindgen(typescript_custom_section)]
const TS_LOAD: &'static str = r#"
/** Options of `Engine.load`. Every field is optional. */
export interface LoadOptions {
  /** `"webgpu"`: the GPU backend (int4 / int8 block models in edge-llm's layout; otherwise, without
   *  an adapter, or when the model does not fit its limits even split, `UnsupportedBackendError`
   *  says what is missing). `"auto"` (default): the GPU on a hardware adapter that runs the model
   *  when a probe at load (an int4 GEMV at the model's shape on both) times it faster, else `"wasm"`;
   *  `stats().backendReason` says why. If the GPU device is lost, the step that meets it throws
   *  `GpuDeviceLostError` and the engine re-reads the model from `cache` and goes on on the CPU
   *  (with `cache: "none"` it cannot: that step throws `StoreError` saying so). */
  backend?: "auto" | "webgpu" | "wasm";
  /** Worker threads for the CPU backend (integer >= 1). This build is single-threaded: more gives a warning event. */
  threads?: number;
  /** Where verified shards are kept: `"indexeddb"` (default in browsers), `"fs"` (Node / Deno; see `cacheDir`),
   *  `"memory"` (this JS realm only), `"none"` (default without IndexedDB), or your own `ShardStore`. */
  cache?: "indexeddb" | "fs" | "memory" | "none" | ShardStore;
  /** Directory of the `"fs"` cache (default `.edge-llm-cache`). */
  cacheDir?: string;
  /** Base URL of the shards when the manifest is given as an object. */
  baseUrl?: string;
  onProgress?: (event: LoadProgress) => void;
  /** Engine events (OTA updates and rollbacks), also settable with `engine.setEventListener`. */
  onEvent?: (event: EngineEvent) => void;
  signal?: AbortSignal;
  /** Throw `QuotaError` when the cache is full instead of loading from memory with a warning. */
  strictQuota?: boolean;
  /** Files downloaded at once (default 4). The engine is built while they arrive, and no file starts
   *  while the files ahead of it would hold over 16 MiB, so a fast network or cache never holds the
   *  whole model in JS memory beside the engine. */
  concurrency?: number;
  /** Retries of a failed download (default 4; backoff 250 ms doubling to 4 s). */
  retries?: number;
  /** Expected SHA-256 of the manifest's bytes, `sha256-<base64>` (as in Subresource Integrity) or hex: any
   *  other manifest, fetched or cached, fails with `IntegrityError`. It holds every file's hash, so this
   *  pins the whole model. */
  integrity?: string;
  /** A download that receives nothing for this long (ms, default 30000) is retried. 0: no limit. */
  idleTimeoutMs?: number;
  /** The whole load fails with `TimeoutError` after this long (ms; default: no limit). */
  timeoutMs?: number;
  /** Largest model accepted, in bytes (default 500 MB, the on-demand budget). */
  maxModelBytes?: number;
  /** Run the CPU model once on a short prompt at the end of the load (default `true`), so that the
   *  first request does not run in the browser's baseline wasm tier; the conversation is untouched. */
  warmUp?: boolean;
  /** CPU backend: compute the int4 / 8-bit layers that a model runs on float activations in f32
   *  (default `false`: those activations are rounded to 16 bits per block of 32, within 2^-16 of
   *  each block's largest value, and multiplied in integers: about twice the prefill speed; layers
   *  whose `accuracy_level` asks for int8 stay int8 either way). `true` gives onnxruntime's
   *  arithmetic up to summation order. */
  exactActivations?: boolean;
  /** GPU backend: what the int4 / int8 products compute in (default `"f32"`, onnxruntime's arithmetic).
   *  `"f16"` allows f16 (sums of up to 32 products in f16, added in f32, as q4f16 builds of other
   *  runtimes compute) where the adapter has `shader-f16` and the load times it faster than f32 on
   *  this GPU: GPUs that pack two f16 lanes (most phones') have up to twice the arithmetic rate; the
   *  logits move about 0.1 further from f32's (README, "f16 products"). A software adapter, one
   *  without `shader-f16`, or one where f16 was slower keeps f32; `stats().gpuPrecision` says which ran. */
  gpuPrecision?: "f32" | "f16";
}
/** Progress of `Engine.load` / `engine.update`, a tagged union on `type`. `loaded` never decreases,
 *  `total` never changes, a file's last byte counts once it is verified and stored; it ends with `ready`. */
export type LoadProgress =
  | { type: "manifest"; modelId: string; modelVersion: string; total: number; files: number; source: "cache" | "network" }
  | { type: "progress"; loaded: number; total: number; file: string; source: "cache" | "network" }
  | { type: "retry"; file: string; attempt: number; delayMs: number; reason: string }
  | { type: "evicted"; file: string; sha256: string }
  | { type: "warning"; name: "QuotaError" | "StoreError" | "ThreadsUnavailable"; message: string; needed?: number; available?: number; error: Error }
  | { type: "ready"; loaded: number; total: number; fromCache: number; fromNetwork: number };
/** A cached model version (`listCachedModels`). */
export interface CachedModel {
  key: string;
  modelId: string;
  modelVersion: string;
  modelSha256: string;
  manifestUrl?: string;
  totalBytes: number;
  storedAt: number;
  /** All of its shards are still in the store. */
  complete: boolean;
}
/** What a `ShardStore` keeps per model version (written after all its shards). */
export interface ModelRecord {
  key: string;
  modelSha256: string;
  modelId: string;
  modelVersion: string;
  manifestUrl?: string;
  manifestJson: string;
  shards: string[];
  totalBytes: number;
  storedAt: number;
  /** When an OTA rollback left this version: updates to it are skipped. */
  rolledBackAt?: number;
}
/** A shard cache backend (`cache` option). Shards are keyed by SHA-256 (lower-case hex); each `put`
 *  must be atomic. Reject with an error named `QuotaExceededError` when out of space. Entries are
 *  re-hashed on every read, so a backend need not be trusted. */
export interface ShardStore {
  get(sha256: string): Promise<Uint8Array | undefined>;
  put(sha256: string, bytes: Uint8Array): Promise<void>;
  delete(sha256: string): Promise<void>;
  keys(): Promise<string[]>;
  models(): Promise<ModelRecord[]>;
  putModel(record: ModelRecord): Promise<void>;
  deleteModel(key: string): Promise<void>;
  estimate?(): Promise<StorageEstimate | undefined>;
  /** Remove what interrupted writes left (called by `collectGarbage`). */
  sweep?(): Promise<void>;
}
export interface StorageEstimate {
  usage: number;
  quota: number;
}
/** Where cache functions look: a `cache` option value (default: IndexedDB). */
export type CacheOption = "indexeddb" | "fs" | "memory" | ShardStore;
"#;

#[wasm_bindgen(module = "/js/fetch.js")]
extern "C" {
    type Download;
    #[wasm_bindgen(constructor)]
    fn new(url: &str, expected: JsValue, signal: &JsValue, idle_ms: u32) -> Download;
    #[wasm_bindgen(method)]
    fn next(this: &Download) -> Promise;
    #[wasm_bindgen(method)]
    fn bytes(this: &Download) -> Uint8Array;

    type LoadSignal;
    #[wasm_bindgen(constructor)]
    fn new(signal: &JsValue, deadline_ms: u32) -> LoadSignal;
    #[wasm_bindgen(method, getter)]
    fn signal(this: &LoadSignal) -> JsValue;
    #[wasm_bindgen(method, getter, js_name = timedOut)]
    fn timed_out(this: &LoadSignal) -> bool;
    #[wasm_bindgen(method)]
    fn cancel(this: &LoadSignal);
    #[wasm_bindgen(method)]
    fn dispose(this: &LoadSignal);

    #[wasm_bindgen(js_name = sha256Hex)]
    fn sha256_hex_js(bytes: &Uint8Array) -> Promise;
    #[wasm_bindgen(js_name = sleep)]
    fn sleep_js(ms: u32, signal: &JsValue) -> Promise;
    #[wasm_bindgen(js_name = callProgress)]
    fn call_progress(cb: &Function, event: &JsValue);
    #[wasm_bindgen(js_name = hasIndexedDb)]
    fn has_indexed_db() -> bool;
    #[wasm_bindgen(js_name = releaseBytes)]
    fn release_bytes(bytes: &Uint8Array);
}

#[wasm_bindgen(module = "/js/store.js")]
extern "C" {
    #[wasm_bindgen(js_name = IndexedDbStore)]
    type IndexedDbStoreJs;
    #[wasm_bindgen(constructor, js_class = "IndexedDbStore")]
    fn new() -> IndexedDbStoreJs;
    #[wasm_bindgen(js_name = FsStore)]
    type FsStoreJs;
    #[wasm_bindgen(constructor, js_class = "FsStore", catch)]
    fn new(dir: &str) -> Result<FsStoreJs, JsValue>;
    #[wasm_bindgen(js_name = sharedMemoryStore)]
    fn shared_memory_store() -> JsValue;
    #[wasm_bindgen(js_name = storageEstimate)]
    fn storage_estimate_js() -> Promise;
    #[wasm_bindgen(js_name = requestPersist)]
    fn request_persist();
    #[wasm_bindgen(js_name = afterPut)]
    fn after_put(store: &JsShardStore, bytes: &Uint8Array);
}

/// Typed optional arguments (`options?: LoadOptions` in the .d.ts).
#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "LoadOptions")]
    pub type LoadOptionsArg;
    #[wasm_bindgen(typescript_type = "CacheOption")]
    pub type CacheArg;
}

pub(crate) fn or_undefined<T: Into<JsValue>>(v: Option<T>) -> JsValue {
    v.map(Into::into).unwrap_or(JsValue::UNDEFINED)
}

/// Any JS object with the `ShardStore` methods.
#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "ShardStore")]
    #[derive(Clone)]
    pub type JsShardStore;
    #[wasm_bindgen(method, catch)]
    fn get(this: &JsShardStore, sha256: &str) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn put(this: &JsShardStore, sha256: &str, bytes: &Uint8Array) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn delete(this: &JsShardStore, sha256: &str) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn keys(this: &JsShardStore) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn models(this: &JsShardStore) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch, js_name = putModel)]
    fn put_model(this: &JsShardStore, record: &JsValue) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch, js_name = deleteModel)]
    fn delete_model(this: &JsShardStore, key: &str) -> Result<Promise, JsValue>;
}

impl Blob for Uint8Array {
    fn len(&self) -> u64 {
        self.length() as u64
    }
    /// One copy into wasm memory; the JS buffer is released (at once if the loader owns it).
    fn into_vec(self) -> Vec<u8> {
        let v = self.to_vec();
        release_bytes(&self);
        v
    }
    fn release(self) {
        release_bytes(&self);
    }
    fn copy_range(&self, offset: u64, dst: &mut [u8]) {
        self.subarray(offset as u32, (offset + dst.len() as u64) as u32).copy_to(dst);
    }
}

pub(crate) fn message(e: &JsValue) -> String {
    Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

pub(crate) fn js_name(e: &JsValue) -> String {
    Reflect::get(e, &"name".into()).ok().and_then(|m| m.as_string()).unwrap_or_default()
}

async fn wait(p: Result<Promise, JsValue>) -> Result<JsValue, JsValue> {
    JsFuture::from(p?).await
}

/// fetch + WebCrypto + timers, bound to one load: its AbortSignal (the app's, cancelled when
/// the load fails, and at the deadline) and the idle timeout of each download.
pub(crate) struct WebFetcher {
    load: LoadSignal,
    signal: JsValue,
    idle_ms: u32,
    deadline_ms: u32,
}

impl WebFetcher {
    pub fn new(app_signal: &JsValue, options: &LoadOptions) -> Self {
        let load = LoadSignal::new(app_signal, options.deadline_ms);
        WebFetcher { signal: load.signal(), load, idle_ms: options.idle_timeout_ms, deadline_ms: options.deadline_ms }
    }

    /// `e`, or a `TimeoutError` when the load was stopped by its deadline.
    pub fn error(&self, e: Error) -> Error {
        if self.load.timed_out() {
            Error::Timeout(format!("the load did not finish within timeoutMs = {} ms", self.deadline_ms))
        } else {
            e
        }
    }
}

impl Drop for WebFetcher {
    fn drop(&mut self) {
        self.load.dispose();
    }
}

impl Fetcher for WebFetcher {
    type Blob = Uint8Array;

    async fn fetch(&self, url: &str, expected: Option<u64>, on_bytes: &dyn Fn(u64)) -> Result<Uint8Array, FetchError> {
        let expected = expected.map(|b| JsValue::from_f64(b as f64)).unwrap_or(JsValue::UNDEFINED);
        let dl = Download::new(url, expected, &self.signal, self.idle_ms);
        loop {
            let n = JsFuture::from(dl.next()).await.map_err(|e| {
                match Reflect::get(&e, &"kind".into()).ok().and_then(|k| k.as_string()).as_deref() {
                    Some("aborted") => FetchError::Aborted,
                    Some("status") => FetchError::Status(Reflect::get(&e, &"status".into()).ok().and_then(|s| s.as_f64()).unwrap_or(0.0) as u16),
                    Some("memory") => FetchError::Fatal(message(&e)),
                    _ => FetchError::Network(message(&e)),
                }
            })?;
            match n.as_f64() {
                Some(n) if n >= 0.0 => on_bytes(n as u64),
                _ => return Ok(dl.bytes()),
            }
        }
    }

    async fn sha256(&self, blob: &Uint8Array) -> String {
        match JsFuture::from(sha256_hex_js(blob)).await.ok().and_then(|h| h.as_string()) {
            Some(hex) => hex,
            // No WebCrypto (an insecure context): hash it in wasm, 1 MiB at a time.
            None => blob.sha256_hex(),
        }
    }

    async fn sleep(&self, ms: u32) -> Result<(), FetchError> {
        JsFuture::from(sleep_js(ms, &self.signal)).await.map(|_| ()).map_err(|_| FetchError::Aborted)
    }

    fn aborted(&self) -> bool {
        Reflect::get(&self.signal, &"aborted".into()).ok().and_then(|a| a.as_bool()).unwrap_or(false)
    }

    fn cancel(&self) {
        self.load.cancel();
    }

    fn now_ms(&self) -> f64 {
        js_sys::Date::now()
    }
}

fn store_error(e: JsValue) -> StoreError {
    let name = js_name(&e);
    if name == "QuotaExceededError" || name == "QuotaError" {
        StoreError::Quota(message(&e))
    } else {
        StoreError::Failed(format!("{name}: {}", message(&e)))
    }
}

impl ShardStore for JsShardStore {
    type Blob = Uint8Array;

    async fn get(&self, sha256: &str) -> Result<Option<Uint8Array>, StoreError> {
        let v = wait(JsShardStore::get(self, sha256)).await.map_err(store_error)?;
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        if let Some(buf) = v.dyn_ref::<js_sys::ArrayBuffer>() {
            return Ok(Some(Uint8Array::new(buf)));
        }
        v.dyn_into::<Uint8Array>().map(Some).map_err(|_| StoreError::Failed(format!("get({sha256}) did not give a Uint8Array")))
    }

    async fn put(&self, sha256: &str, blob: &Uint8Array) -> Result<(), StoreError> {
        let r = wait(JsShardStore::put(self, sha256, blob)).await.map(|_| ()).map_err(store_error);
        after_put(self, blob);
        r
    }

    async fn delete(&self, sha256: &str) -> Result<(), StoreError> {
        wait(JsShardStore::delete(self, sha256)).await.map(|_| ()).map_err(store_error)
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        let v = wait(JsShardStore::keys(self)).await.map_err(store_error)?;
        serde_wasm_bindgen::from_value(v).map_err(|e| StoreError::Failed(format!("keys(): {e}")))
    }

    async fn models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        let v = wait(JsShardStore::models(self)).await.map_err(store_error)?;
        serde_wasm_bindgen::from_value(v).map_err(|e| StoreError::Failed(format!("models(): {e}")))
    }

    async fn put_model(&self, record: &ModelRecord) -> Result<(), StoreError> {
        wait(JsShardStore::put_model(self, &to_js(record))).await.map(|_| ()).map_err(store_error)
    }

    async fn delete_model(&self, key: &str) -> Result<(), StoreError> {
        wait(JsShardStore::delete_model(self, key)).await.map(|_| ()).map_err(store_error)
    }

    async fn estimate(&self) -> Option<StorageEstimate> {
        let f = Reflect::get(self, &"estimate".into()).ok()?.dyn_into::<Function>().ok()?;
        let p = f.call0(self).ok()?.dyn_into::<Promise>().ok()?;
        let v = JsFuture::from(p).await.ok()?;
        serde_wasm_bindgen::from_value(v).ok()
    }

    /// The optional `sweep()` of a store (the fs store's temporary files).
    async fn sweep(&self) -> Result<(), StoreError> {
        let Some(f) = Reflect::get(self, &"sweep".into()).ok().and_then(|f| f.dyn_into::<Function>().ok()) else { return Ok(()) };
        let p = f.call0(self).map_err(store_error)?;
        JsFuture::from(Promise::resolve(&p)).await.map(|_| ()).map_err(store_error)
    }
}

fn invalid(option: &'static str, reason: impl Into<String>) -> JsValue {
    js_error(Error::InvalidOption { option, reason: reason.into() })
}

pub(crate) fn get(obj: &JsValue, key: &str) -> JsValue {
    if obj.is_object() {
        Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

pub(crate) fn opt_function(obj: &JsValue, key: &'static str) -> Result<Option<Function>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_into::<Function>().map(Some).map_err(|_| invalid(key, "must be a function"))
}

fn opt_count(obj: &JsValue, key: &'static str, min: f64, max: f64) -> Result<Option<u32>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n.fract() == 0.0 && (min..=max).contains(&n) => Ok(Some(n as u32)),
        _ => Err(invalid(key, format!("must be an integer from {min} to {max}"))),
    }
}

/// Resolve a `cache` option value to a store (`None`: no cache).
pub(crate) fn cache_store(cache: &JsValue, cache_dir: &JsValue) -> Result<Option<JsShardStore>, JsValue> {
    if cache.is_undefined() || cache.is_null() {
        return Ok(if has_indexed_db() { Some(indexed_db()) } else { None });
    }
    if let Some(s) = cache.as_string() {
        return match s.as_str() {
            "indexeddb" if has_indexed_db() => Ok(Some(indexed_db())),
            "indexeddb" => Err(invalid("cache", "IndexedDB is not available here; use \"fs\", \"memory\" or \"none\"")),
            "memory" => Ok(Some(shared_memory_store().unchecked_into())),
            "none" => Ok(None),
            "fs" => {
                let dir = cache_dir.as_string().unwrap_or_else(|| ".edge-llm-cache".into());
                Ok(Some(FsStoreJs::new(&dir)?.unchecked_into()))
            }
            other => Err(invalid("cache", format!("unknown cache `{other}`"))),
        };
    }
    for m in ["get", "put", "delete", "keys", "models", "putModel", "deleteModel"] {
        if !get(cache, m).is_function() {
            return Err(invalid("cache", format!("a custom store needs a `{m}` method")));
        }
    }
    Ok(Some(cache.clone().unchecked_into()))
}

fn indexed_db() -> JsShardStore {
    request_persist();
    IndexedDbStoreJs::new().unchecked_into()
}

/// Parsed `LoadOptions`.
pub(crate) struct Options {
    pub store: Option<JsShardStore>,
    pub on_progress: Option<Function>,
    pub on_event: Option<Function>,
    pub signal: JsValue,
    pub base_url: Option<String>,
    pub threads: Option<u32>,
    pub load: LoadOptions,
    pub engine: EngineOptions,
}

/// Every `LoadOptions` name (the TS interface above): any other is an `InvalidOptionError`.
pub(crate) const LOAD_OPTIONS: &[&str] = crate::loader::LOAD_OPTION_NAMES;

pub(crate) fn parse_options(o: &JsValue) -> Result<Options, JsValue> {
    if !(o.is_undefined() || o.is_null() || o.is_object()) {
        return Err(invalid("options", "must be an object"));
    }
    super::check_option_names(o, LOAD_OPTIONS)?;
    // Which backend runs is the engine's choice (`Engine::open`); here only the name is read.
    let backend = get(o, "backend");
    let backend = match backend.as_string() {
        None if backend.is_undefined() => BackendKind::Auto,
        Some(name) => BackendKind::parse(&name).map_err(js_error)?,
        None => return Err(invalid("backend", "must be \"auto\", \"webgpu\" or \"wasm\"")),
    };
    // Deno exposes WebGPU through its own wgpu, and Deno 2.9.6 crashed at process exit (heap
    // corruption or a segfault, after the tests had passed) in 1 of 12 runs once an adapter had
    // been requested on Mesa's llvmpipe, in none of 14 without: there `auto` is the CPU, and
    // `backend: "webgpu"` still asks for the GPU.
    let in_deno = Reflect::has(&js_sys::global(), &"Deno".into()).unwrap_or(false);
    let backend = if backend == BackendKind::Auto && in_deno { BackendKind::Wasm } else { backend };
    let signal = get(o, "signal");
    if !(signal.is_undefined() || signal.is_null()) && get(&signal, "aborted").as_bool().is_none() {
        return Err(invalid("signal", "must be an AbortSignal"));
    }
    let base_url = get(o, "baseUrl");
    let mut load = LoadOptions { strict_quota: get(o, "strictQuota").is_truthy(), ..Default::default() };
    if let Some(c) = opt_count(o, "concurrency", 1.0, 64.0)? {
        load.concurrency = c as usize;
    }
    if let Some(r) = opt_count(o, "retries", 0.0, 20.0)? {
        load.retry = RetryPolicy { max_retries: r, ..RetryPolicy::default() };
    }
    let integrity = get(o, "integrity");
    if !(integrity.is_undefined() || integrity.is_null()) {
        let s = integrity.as_string().ok_or_else(|| invalid("integrity", "must be a string"))?;
        load.integrity = Some(crate::loader::parse_integrity(&s).map_err(js_error)?);
    }
    if let Some(ms) = opt_count(o, "idleTimeoutMs", 0.0, 3_600_000.0)? {
        load.idle_timeout_ms = ms;
    }
    if let Some(ms) = opt_count(o, "timeoutMs", 1.0, 86_400_000.0)? {
        load.deadline_ms = ms;
    }
    let max = get(o, "maxModelBytes");
    if !(max.is_undefined() || max.is_null()) {
        match max.as_f64() {
            Some(n) if n.fract() == 0.0 && n >= 1.0 && n <= 2f64.powi(53) => load.limits.max_total_bytes = n as u64,
            _ => return Err(invalid("maxModelBytes", "must be a positive integer")),
        }
    }
    let gpu_precision = get(o, "gpuPrecision");
    let precision = match gpu_precision.as_string().as_deref() {
        None if gpu_precision.is_undefined() => crate::gpu::Precision::F32,
        Some("f32") => crate::gpu::Precision::F32,
        Some("f16") => crate::gpu::Precision::F16WhereFaster,
        _ => return Err(invalid("gpuPrecision", "must be \"f32\" or \"f16\"")),
    };
    Ok(Options {
        store: cache_store(&get(o, "cache"), &get(o, "cacheDir"))?,
        on_progress: opt_function(o, "onProgress")?,
        on_event: opt_function(o, "onEvent")?,
        signal: if signal.is_null() { JsValue::UNDEFINED } else { signal },
        base_url: base_url.as_string(),
        threads: opt_count(o, "threads", 1.0, 1024.0)?,
        load,
        engine: EngineOptions { backend, warm_up: opt_bool(o, "warmUp")?.unwrap_or(true), cpu: cpu_options(opt_bool(o, "exactActivations")?.unwrap_or(false)), gpu: crate::gpu::GpuOptions { precision, ..Default::default() } },
    })
}

/// The CPU options `exactActivations` gives.
fn cpu_options(exact: bool) -> crate::cpu::CpuOptions {
    use crate::cpu::q4_matmul::Q4Activations;
    crate::cpu::CpuOptions { q4_activations: if exact { Q4Activations::AsModelExact } else { Q4Activations::AsModel }, ..Default::default() }
}

fn opt_bool(obj: &JsValue, key: &'static str) -> Result<Option<bool>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_bool().map(Some).ok_or_else(|| invalid(key, "must be a boolean"))
}

/// A progress event as JS sees it; warnings carry a named `Error` too.
pub(crate) fn event_to_js(e: &LoadEvent) -> JsValue {
    let v = to_js(e);
    if let LoadEvent::Warning { name, message, .. } = e {
        let err = js_sys::Error::new(message);
        err.set_name(name);
        let _ = Reflect::set(&v, &"error".into(), &err);
    }
    v
}

pub(crate) fn progress_sink(cb: Option<Function>) -> impl Fn(LoadEvent) {
    move |e| {
        if let Some(cb) = &cb {
            call_progress(cb, &event_to_js(&e));
        }
    }
}

/// The `threads` option: start (or lower) the CPU threads ([`super::init_threads`]). A count
/// this build cannot give (the single-thread build, or workers that failed to start) loads on
/// fewer threads with a `ThreadsUnavailable` warning.
async fn apply_threads(threads: Option<u32>, emit: &dyn Fn(LoadEvent)) {
    let Some(n) = threads else { return };
    let (got, why) = match super::init_threads(n as usize).await {
        Ok(got) if !cfg!(feature = "threads") => (got, "this is the single-thread build (edge-llm/auto.js picks the threaded one on cross-origin isolated pages)".to_string()),
        Ok(got) => (got, "the thread pool started with fewer workers".to_string()),
        Err(e) => (crate::cpu::threads::threads(), format!("the thread pool did not start: {}", e.as_string().unwrap_or_else(|| format!("{e:?}")))),
    };
    if got < n as usize {
        emit(LoadEvent::Warning {
            name: "ThreadsUnavailable".into(),
            message: format!("threads: {n} requested, running on {got}: {why}"),
            needed: None,
            available: None,
        });
    }
}

/// The manifest argument: a URL (string or `URL`), a parsed manifest object, or its JSON bytes.
pub(crate) fn manifest_arg(v: &JsValue) -> Result<ManifestArg, JsValue> {
    if let Some(s) = v.as_string() {
        return Ok(ManifestArg::Url(s));
    }
    if let Some(bytes) = v.dyn_ref::<Uint8Array>() {
        return Ok(ManifestArg::Json { bytes: bytes.to_vec(), url: None });
    }
    if v.has_type::<js_sys::Object>() && get(v, "href").is_string() {
        return Ok(ManifestArg::Url(get(v, "href").as_string().unwrap_or_default()));
    }
    if v.is_object() {
        let s = js_sys::JSON::stringify(v).map_err(|_| invalid("manifest", "not JSON-serializable"))?;
        return Ok(ManifestArg::Json { bytes: String::from(s).into_bytes(), url: None });
    }
    Err(invalid("manifest", "pass a manifest URL, a manifest object or its JSON bytes"))
}

fn quota_error(e: Error) -> JsValue {
    let needed_available = match &e {
        Error::Quota { needed, available } => Some((*needed, *available)),
        _ => None,
    };
    let js = js_error(e);
    if let Some((needed, available)) = needed_available {
        let _ = Reflect::set(&js, &"needed".into(), &JsValue::from_f64(needed as f64));
        let _ = Reflect::set(&js, &"available".into(), &JsValue::from_f64(available as f64));
    }
    js
}


/// [`Loader::load_version`] over the web fetcher: errors become named JS errors (a deadline
/// that stopped the load, `TimeoutError`; a full store, `QuotaError` with its byte counts), and
/// the engine reads the page's clock.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn load_version(
    arg: ManifestArg,
    base_url: Option<String>,
    store: Option<&JsShardStore>,
    signal: JsValue,
    options: &LoadOptions,
    engine_options: &EngineOptions,
    emit: &dyn Fn(LoadEvent),
    unless: Option<(&str, &str)>,
) -> Result<Result<LoadedVersion, Skip>, JsValue> {
    let fetcher = WebFetcher::new(&signal, options);
    let loader = Loader { fetcher: &fetcher, store, options: options.clone(), on_event: emit };
    match loader.load_version(arg, base_url, engine_options, unless).await {
        Ok(Ok(LoadedVersion { engine, version, bytes })) => {
            if engine.backend_info().name == "webgpu" {
                install_cpu_fallback(&engine, store, &version.manifest_json, options, engine_options);
            }
            Ok(Ok(LoadedVersion { engine: super::with_clock(engine), version, bytes }))
        }
        Ok(Err(skip)) => Ok(Err(skip)),
        Err(e) => Err(quota_error(fetcher.error(e))),
    }
}

/// Where a GPU engine goes when its device is lost: the model re-read from the load's store
/// (IndexedDB, fs, memory, the app's; with `cache: "none"` the fallback fails saying there is
/// nothing to re-read) and opened on the CPU backend ([`crate::loader::stored_cpu_fallback`]).
fn install_cpu_fallback(engine: &crate::generate::Engine, store: Option<&JsShardStore>, manifest_json: &str, options: &LoadOptions, engine_options: &EngineOptions) {
    // The manifest was verified by the load that built the engine.
    let Ok(manifest) = crate::package::manifest::Manifest::from_json_with(manifest_json.as_bytes(), &options.limits) else { return };
    // Only its hashing (WebCrypto) is used; no deadline applies to the fallback.
    let fetcher = Rc::new(WebFetcher::new(&JsValue::UNDEFINED, &LoadOptions::default()));
    let store = store.map(|s| Rc::new(s.clone()));
    let cpu = EngineOptions { backend: BackendKind::Wasm, cpu: engine_options.cpu.clone(), ..Default::default() };
    engine.set_cpu_fallback(crate::loader::stored_cpu_fallback(fetcher, store, manifest, cpu));
}

#[wasm_bindgen]
impl Engine {
    /// Load a packed model: `manifest.json` by URL (or as an object / its bytes with `baseUrl`),
    /// then every file from the cache or the network, each verified against its SHA-256.
    pub async fn load(
        #[wasm_bindgen(unchecked_param_type = "string | URL | object | Uint8Array")] manifest: JsValue,
        options: Option<LoadOptionsArg>,
    ) -> Result<Engine, JsValue> {
        let t0 = super::now_ms();
        let arg = manifest_arg(&manifest)?;
        let o = parse_options(&or_undefined(options))?;
        let emit = progress_sink(o.on_progress.clone());
        apply_threads(o.threads, &emit).await;
        let v = load_version(arg, o.base_url.clone(), o.store.as_ref(), o.signal.clone(), &o.load, &o.engine, &emit, None)
            .await?
            .expect("loads unless it is the `unless` version, and there is none");
        let source = ota::Source { store: o.store, options: o.load, engine: o.engine };
        let bytes = v.bytes as f64;
        Ok(Engine::with_slot(Rc::new(ota::new_slot(v.engine, Some((v.version, source)), o.on_event)), t0, bytes))
    }
}

fn store_arg(cache: JsValue) -> Result<JsShardStore, JsValue> {
    cache_store(&cache, &JsValue::UNDEFINED)?.ok_or_else(|| invalid("cache", "\"none\" has no cached models"))
}

/// Cached model versions, newest first.
#[wasm_bindgen(js_name = listCachedModels, unchecked_return_type = "CachedModel[]")]
pub async fn list_cached_models(cache: Option<CacheArg>) -> Result<JsValue, JsValue> {
    let store = store_arg(or_undefined(cache))?;
    let list = store::list_models(&store).await.map_err(|e| js_error(Error::Store(e.to_string())))?;
    Ok(to_js(&list))
}

/// Delete a cached model (one version, or all of them) and the shards no other version uses.
/// Resolves to the number of versions deleted.
#[wasm_bindgen(js_name = deleteCachedModel, unchecked_return_type = "number")]
pub async fn delete_cached_model(
    #[wasm_bindgen(js_name = modelId)] model_id: String,
    #[wasm_bindgen(js_name = modelVersion)] model_version: Option<String>,
    cache: Option<CacheArg>,
) -> Result<JsValue, JsValue> {
    let store = store_arg(or_undefined(cache))?;
    let n = store::delete_model(&store, &model_id, model_version.as_deref())
        .await
        .map_err(|e| js_error(Error::Store(e.to_string())))?;
    Ok(JsValue::from_f64(n as f64))
}

/// Delete the cached shards no model record names (left by aborted loads) and the temporary
/// files of interrupted writes. `Engine.load` does this after each load it caches. Resolves to
/// the number of shards deleted.
#[wasm_bindgen(js_name = collectGarbage, unchecked_return_type = "number")]
pub async fn collect_garbage(cache: Option<CacheArg>) -> Result<JsValue, JsValue> {
    let store = store_arg(or_undefined(cache))?;
    let n = store::collect_garbage(&store).await.map_err(|e| js_error(Error::Store(e.to_string())))?;
    Ok(JsValue::from_f64(n as f64))
}

/// Keep the `keep` newest cached versions of `modelId` and delete older ones.
#[wasm_bindgen(js_name = evictOldVersions, unchecked_return_type = "number")]
pub async fn evict_old_versions(
    #[wasm_bindgen(js_name = modelId)] model_id: String,
    keep: u32,
    cache: Option<CacheArg>,
) -> Result<JsValue, JsValue> {
    let store = store_arg(or_undefined(cache))?;
    let n = store::evict_old_versions(&store, &model_id, keep as usize).await.map_err(|e| js_error(Error::Store(e.to_string())))?;
    Ok(JsValue::from_f64(n as f64))
}

/// `navigator.storage.estimate()` (`undefined` where the platform has none).
#[wasm_bindgen(js_name = storageEstimate, unchecked_return_type = "StorageEstimate | undefined")]
pub async fn storage_estimate() -> Result<JsValue, JsValue> {
    JsFuture::from(storage_estimate_js()).await
}

/// The built-in stores, for wrapping or passing as `cache`.
#[wasm_bindgen(js_name = indexedDbStore, unchecked_return_type = "ShardStore")]
pub fn indexed_db_store() -> Result<JsValue, JsValue> {
    if !has_indexed_db() {
        return Err(invalid("cache", "IndexedDB is not available here"));
    }
    Ok(indexed_db().into())
}

#[wasm_bindgen(js_name = fsStore, unchecked_return_type = "ShardStore")]
pub fn fs_store(dir: &str) -> Result<JsValue, JsValue> {
    Ok(FsStoreJs::new(dir)?.into())
}

#[wasm_bindgen(js_name = memoryStore, unchecked_return_type = "ShardStore")]
pub fn memory_store() -> JsValue {
    shared_memory_store()
}
