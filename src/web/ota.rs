//! OTA updates for the JS `Engine`: JS options in, JS events out, and the network/cache loader
//! under the update lifecycle, which is `crate::ota::Slot` (plain Rust, tested natively).

use std::rc::Rc;

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;

use super::load::{self, JsShardStore};
use crate::loader::ManifestArg;
use super::{js_error, to_js, Engine};
use crate::generate::{self, EngineOptions};
use crate::loader::LoadOptions;
use crate::ota::{self, LoadError, Loaded, RollbackPolicy, Skip, UpdateResult, VersionLoader};
use crate::Error;

pub(crate) use crate::ota::VersionInfo;

#[wasm_bindgen(typescript_custom_section)]
const TS_OTA: &'static str = r#"
/** Options of `engine.update`. */
export interface UpdateOptions {
  onProgress?: (event: LoadProgress) => void;
  signal?: AbortSignal;
  /** Base URL of the shards when the manifest is given as an object. */
  baseUrl?: string;
  /** Expected SHA-256 of the new manifest (as `LoadOptions.integrity`). */
  integrity?: string;
  /** Inferences per error-rate window (default 20; a smaller window is judged over 20). */
  window?: number;
  /** Allowed rise of the error rate over the baseline (default 0.05). */
  margin?: number;
  /** Inferences after which the update is confirmed (default 100). */
  probation?: number;
  /** Baseline error rate (default: the old version's rate over its last 20 inferences; 0.05 when it has run fewer). */
  baseline?: number;
}
export interface UpdateResult {
  updated: boolean;
  from: string;
  to: string;
  baseline?: number;
  /** Not updated: `to` was rolled back before (remembered in the cache). */
  rolledBack?: boolean;
}
/** Engine events, a tagged union on `type`. */
export type EngineEvent =
  | { type: "updated"; from: string; to: string; baseline: number }
  | { type: "updateFailed"; from: string; name: string; message: string }
  | { type: "rollback"; from: string; to: string; errorRate: number; baseline: number; threshold: number; errors: number; samples: number }
  | { type: "rollbackFailed"; from: string; name: string; message: string }
  | { type: "updateConfirmed"; version: string; errorRate: number; samples: number };
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "UpdateOptions")]
    pub type UpdateOptionsArg;
}

/// The engine behind a JS `Engine`, swappable while generations hold the old one.
pub(crate) type Slot = ota::Slot<Source>;
pub(crate) type Outcome = ota::Outcome<Source>;

/// `ota::Slot::new` with the app's `onEvent` listener.
pub(crate) fn new_slot(engine: generate::Engine, version: Option<(VersionInfo, Source)>, on_event: Option<Function>) -> Slot {
    let slot = Slot::new(engine, version);
    set_listener(&slot, on_event);
    slot
}

/// Hand the slot's events to `f` as `EngineEvent` objects (a listener that throws stops nothing).
fn set_listener(slot: &Slot, f: Option<Function>) {
    slot.set_listener(f.map(|f| -> ota::Listener {
        Rc::new(move |e| {
            let _ = f.call1(&JsValue::NULL, &to_js(&e));
        })
    }));
}

/// Report a generation's outcome; a rollback it decides runs in the background.
pub(crate) fn report(outcome: Outcome, ok: bool) {
    if let Some(rollback) = outcome.report(ok) {
        wasm_bindgen_futures::spawn_local(rollback);
    }
}

/// Where an engine's versions come from (the store and options of its `Engine.load`).
pub(crate) struct Source {
    pub store: Option<JsShardStore>,
    pub options: LoadOptions,
    pub engine: EngineOptions,
}

/// What `engine.update` asks for.
pub(crate) struct Request {
    arg: ManifestArg,
    base_url: Option<String>,
    signal: JsValue,
    /// `integrity` of `Engine.load` pinned that manifest; an update may pin its own.
    integrity: Option<String>,
    on_progress: Option<Function>,
}

impl ota::Dispose for generate::Engine {
    fn dispose(&self) {
        generate::Engine::dispose(self)
    }
}

impl From<Error> for JsValue {
    fn from(e: Error) -> JsValue {
        js_error(e)
    }
}

impl LoadError for JsValue {
    fn name(&self) -> String {
        load::js_name(self)
    }

    fn message(&self) -> String {
        load::message(self)
    }
}

impl VersionLoader for Source {
    type Engine = generate::Engine;
    type Request = Request;
    type Error = JsValue;

    async fn load(&self, r: Request, running: &VersionInfo) -> Result<Result<Loaded<generate::Engine>, Skip>, JsValue> {
        let options = LoadOptions { integrity: r.integrity, ..self.options.clone() };
        let emit = load::progress_sink(r.on_progress);
        let unless = (running.model_sha256.as_str(), running.model_version.as_str());
        let loaded = load::load_version(r.arg, r.base_url, self.store.as_ref(), r.signal, &options, &self.engine, &emit, Some(unless)).await?;
        Ok(loaded.map(|v| Loaded { engine: v.engine, version: v.version }))
    }

    async fn reload(&self, v: &VersionInfo) -> Result<Loaded<generate::Engine>, JsValue> {
        let arg = ManifestArg::Json { bytes: v.manifest_json.clone().into_bytes(), url: v.manifest_url.clone() };
        // The manifest was verified when that version was loaded; `integrity` pinned the first one.
        let options = LoadOptions { integrity: None, ..self.options.clone() };
        match load::load_version(arg, v.base_url.clone(), self.store.as_ref(), JsValue::UNDEFINED, &options, &self.engine, &|_| {}, None).await? {
            Ok(v) => Ok(Loaded { engine: v.engine, version: v.version }),
            Err(_) => unreachable!("no `unless` version given"),
        }
    }

    async fn mark_rolled_back(&self, v: &VersionInfo) {
        // Remembered in the store, so a reload does not try this version again; a store that
        // cannot record it only loses that memory.
        if let Some(store) = &self.store {
            let key = crate::store::record_key(&v.model_id, &v.model_version);
            let _ = crate::store::mark_rolled_back(store, &key, &v.model_sha256, js_sys::Date::now()).await;
        }
    }
}

/// `engine.update`'s options: the rollback policy and the request for the loader.
fn parse_update(arg: ManifestArg, options: &JsValue) -> Result<(RollbackPolicy, Request), JsValue> {
    super::check_option_names(options, &["onProgress", "signal", "baseUrl", "integrity", "window", "margin", "probation", "baseline"])?;
    let policy = parse_policy(options)?;
    let on_progress = load::opt_function(options, "onProgress")?;
    let integrity = match load::get(options, "integrity").as_string() {
        Some(s) => Some(crate::loader::parse_integrity(&s).map_err(js_error)?),
        None => None,
    };
    let request = Request {
        arg,
        base_url: load::get(options, "baseUrl").as_string(),
        signal: load::get(options, "signal"),
        integrity,
        on_progress,
    };
    Ok((policy, request))
}

fn parse_policy(o: &JsValue) -> Result<RollbackPolicy, JsValue> {
    let mut p = RollbackPolicy::default();
    let num = |k: &'static str, lo: f64, hi: f64| -> Result<Option<f64>, JsValue> {
        let v = load::get(o, k);
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        match v.as_f64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(js_error(Error::InvalidOption { option: k, reason: format!("must be a number from {lo} to {hi}") })),
        }
    };
    if let Some(w) = num("window", 1.0, 1e6)? {
        p.window = w as usize;
    }
    if let Some(m) = num("margin", 0.0, 1.0)? {
        p.margin = m;
    }
    if let Some(n) = num("probation", 1.0, 1e9)? {
        p.probation = n as usize;
    }
    p.baseline = num("baseline", 0.0, 1.0)?;
    Ok(p)
}

#[wasm_bindgen]
impl Engine {
    /// Download a newer model version (through the same cache), switch to it, and watch its
    /// inference error rate: above the old version's rate + `margin` over a window, the engine
    /// returns to the old version by itself (`rollback` event).
    #[wasm_bindgen(unchecked_return_type = "Promise<UpdateResult>")]
    pub fn update(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | URL | object | Uint8Array")] manifest: JsValue,
        options: Option<UpdateOptionsArg>,
    ) -> Result<Promise, JsValue> {
        let arg = load::manifest_arg(&manifest)?;
        let (slot, options) = (self.slot.clone(), load::or_undefined(options));
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let (policy, request) = parse_update(arg, &options)?;
            Ok(to_js(&match slot.update(policy, request).await? {
                UpdateResult::Updated { from, to, baseline } => serde_json::json!({ "updated": true, "from": from, "to": to, "baseline": baseline }),
                UpdateResult::Same { version } => serde_json::json!({ "updated": false, "from": version, "to": version }),
                UpdateResult::RolledBack { from, to } => serde_json::json!({ "updated": false, "from": from, "to": to, "rolledBack": true }),
            }))
        }))
    }

    /// Receive engine events (`EngineEvent`); `undefined` removes the listener.
    #[wasm_bindgen(js_name = setEventListener)]
    pub fn set_event_listener(&self, #[wasm_bindgen(unchecked_param_type = "((event: EngineEvent) => void) | undefined")] listener: JsValue) {
        set_listener(&self.slot, listener.dyn_into::<Function>().ok());
    }

    /// The running model version (`undefined` for engines not made by `Engine.load`).
    #[wasm_bindgen(getter = modelVersion)]
    pub fn model_version(&self) -> Option<String> {
        self.slot.version().map(|v| v.model_version.clone())
    }

    #[wasm_bindgen(getter = modelId)]
    pub fn model_id(&self) -> Option<String> {
        self.slot.version().map(|v| v.model_id.clone())
    }
}
