//! OTA updates with automatic rollback for the JS `Engine`: the engine swap and the events.
//! Counting and decisions are `crate::ota` (plain Rust, tested natively).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Promise};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::load::{self, JsShardStore, ManifestArg};
use super::{js_error, to_js, Engine};
use crate::generate::{self, EngineOptions};
use crate::loader::LoadOptions;
use crate::ota::{ErrorWindow, RollbackPolicy, UpdateMonitor, Verdict};
use crate::Error;

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

/// A loaded model version, enough to load it again.
#[derive(Debug, Clone)]
pub(crate) struct VersionInfo {
    pub model_id: String,
    pub model_version: String,
    pub model_sha256: String,
    pub manifest_json: String,
    pub manifest_url: Option<String>,
    pub base_url: Option<String>,
}

/// Where an engine's versions come from (the store and options of its `Engine.load`).
pub(crate) struct Source {
    pub store: Option<JsShardStore>,
    pub options: LoadOptions,
    pub engine: EngineOptions,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
enum EngineEvent {
    Updated { from: String, to: String, baseline: f64 },
    UpdateFailed { from: String, name: String, message: String },
    Rollback { from: String, to: String, error_rate: f64, baseline: f64, threshold: f64, errors: usize, samples: usize },
    RollbackFailed { from: String, name: String, message: String },
    UpdateConfirmed { version: String, error_rate: f64, samples: usize },
}

/// The engine behind a JS `Engine`, swappable while generations hold the old one.
pub(crate) struct Slot {
    /// `None` once the app called `dispose()`.
    engine: RefCell<Option<Rc<generate::Engine>>>,
    current: RefCell<Option<VersionInfo>>,
    /// The version an update replaced: the rollback target, still in the store.
    previous: RefCell<Option<VersionInfo>>,
    source: Option<Source>,
    /// Outcomes of the current version (its rate is the next update's baseline).
    window: RefCell<ErrorWindow>,
    monitor: RefCell<Option<UpdateMonitor>>,
    /// Bumped at every swap: outcomes of generations started before it are not counted.
    epoch: Cell<u64>,
    busy: Cell<bool>,
    /// Set by `dispose()`: an update or rollback finishing later must not bring an engine back.
    disposed: Cell<bool>,
    on_event: RefCell<Option<Function>>,
}

/// Reports one generation's outcome to the slot it started from.
pub(crate) struct Outcome {
    slot: Rc<Slot>,
    epoch: u64,
}

impl Outcome {
    pub fn report(self, ok: bool) {
        Slot::record(&self.slot, self.epoch, ok);
    }
}

fn name_message(e: &JsValue) -> (String, String) {
    (load::js_name(e), load::message(e))
}

impl Slot {
    pub fn new(engine: generate::Engine, version: Option<(VersionInfo, Source)>, on_event: Option<Function>) -> Self {
        let (current, source) = match version {
            Some((v, s)) => (Some(v), Some(s)),
            None => (None, None),
        };
        Slot {
            engine: RefCell::new(Some(Rc::new(engine))),
            current: RefCell::new(current),
            previous: RefCell::new(None),
            source,
            window: RefCell::new(ErrorWindow::new(RollbackPolicy::default().window)),
            monitor: RefCell::new(None),
            epoch: Cell::new(0),
            busy: Cell::new(false),
            disposed: Cell::new(false),
            on_event: RefCell::new(on_event),
        }
    }

    /// The engine in use, `None` after [`Slot::dispose`].
    pub fn engine(&self) -> Option<Rc<generate::Engine>> {
        self.engine.borrow().clone()
    }

    /// Let go of the model: its generations fail with `EngineDisposedError` from now on, and
    /// its memory is freed once the last of them is gone.
    pub fn dispose(&self) {
        self.disposed.set(true);
        if let Some(e) = self.engine.borrow_mut().take() {
            e.dispose();
        }
        self.previous.borrow_mut().take();
        self.monitor.borrow_mut().take();
    }

    pub fn outcome(self: &Rc<Self>) -> Outcome {
        Outcome { slot: self.clone(), epoch: self.epoch.get() }
    }

    fn version(&self) -> String {
        self.current.borrow().as_ref().map(|v| v.model_version.clone()).unwrap_or_default()
    }

    fn emit(&self, e: EngineEvent) {
        let cb = self.on_event.borrow().clone();
        if let Some(cb) = cb {
            let _ = cb.call1(&JsValue::NULL, &to_js(&e));
        }
    }

    fn swap(&self, engine: generate::Engine, version: VersionInfo) -> Option<VersionInfo> {
        *self.engine.borrow_mut() = Some(Rc::new(engine));
        self.epoch.set(self.epoch.get() + 1);
        *self.window.borrow_mut() = ErrorWindow::new(RollbackPolicy::default().window);
        self.current.borrow_mut().replace(version)
    }

    fn record(self: &Rc<Self>, epoch: u64, ok: bool) {
        if epoch != self.epoch.get() {
            return;
        }
        self.window.borrow_mut().record(ok);
        let verdict = match self.monitor.borrow_mut().as_mut() {
            Some(m) => m.record(ok),
            None => return,
        };
        match verdict {
            Verdict::Keep => {}
            Verdict::Confirmed { error_rate, samples, .. } => {
                self.monitor.borrow_mut().take();
                self.emit(EngineEvent::UpdateConfirmed { version: self.version(), error_rate, samples });
            }
            v @ Verdict::Rollback { .. } => {
                self.monitor.borrow_mut().take();
                wasm_bindgen_futures::spawn_local(self.clone().rollback(v));
            }
        }
    }

    async fn rollback(self: Rc<Self>, verdict: Verdict) {
        let from = self.version();
        let prev = self.previous.borrow().clone();
        let (Some(prev), Some(source)) = (prev, self.source.as_ref()) else {
            return self.emit(EngineEvent::RollbackFailed { from, name: "InvalidModelError".into(), message: "no previous version to return to".into() });
        };
        self.busy.set(true);
        let arg = ManifestArg::Json { bytes: prev.manifest_json.clone().into_bytes(), url: prev.manifest_url.clone() };
        // The manifest was verified when that version was loaded; `integrity` pinned the first one.
        let options = LoadOptions { integrity: None, ..source.options.clone() };
        let r = load::load_version(arg, prev.base_url.clone(), source.store.as_ref(), JsValue::UNDEFINED, &options, &source.engine, &|_| {}, None).await;
        self.busy.set(false);
        if self.disposed.get() {
            return;
        }
        match r {
            Ok(Err(_)) => unreachable!("no `unless` version given"),
            Ok(Ok(v)) => {
                let to = v.version.model_version.clone();
                let failed = self.swap(v.engine, v.version);
                // Remembered in the store, so a reload does not try this version again.
                if let (Some(failed), Some(store)) = (failed, source.store.as_ref()) {
                    let key = crate::store::record_key(&failed.model_id, &failed.model_version);
                    let _ = crate::store::mark_rolled_back(store, &key, &failed.model_sha256, js_sys::Date::now()).await;
                }
                self.previous.borrow_mut().take();
                let Verdict::Rollback { error_rate, baseline, threshold, errors, samples } = verdict else { return };
                self.emit(EngineEvent::Rollback { from, to, error_rate, baseline, threshold, errors, samples });
            }
            Err(e) => {
                let (name, message) = name_message(&e);
                self.emit(EngineEvent::RollbackFailed { from, name, message });
            }
        }
    }

    async fn update(self: Rc<Self>, arg: ManifestArg, options: JsValue) -> Result<JsValue, JsValue> {
        let Some(source) = self.source.as_ref() else {
            return Err(js_error(Error::InvalidOption { option: "update", reason: "only an engine made by Engine.load can update".into() }));
        };
        super::check_option_names(&options, &["onProgress", "signal", "baseUrl", "window", "margin", "probation", "baseline"])?;
        let policy = parse_policy(&options)?;
        let on_progress = load::opt_function(&options, "onProgress")?;
        let signal = load::get(&options, "signal");
        let base_url = load::get(&options, "baseUrl").as_string();
        // `integrity` of `Engine.load` pinned that manifest; an update may pin its own.
        let integrity = match load::get(&options, "integrity").as_string() {
            Some(s) => Some(crate::loader::parse_integrity(&s).map_err(js_error)?),
            None => None,
        };
        let load_options = LoadOptions { integrity, ..source.options.clone() };
        if self.busy.replace(true) {
            return Err(js_error(Error::InvalidOption { option: "update", reason: "an update or rollback is already running".into() }));
        }
        let emit = load::progress_sink(on_progress);
        let current = self.current.borrow().as_ref().map(|c| (c.model_sha256.clone(), c.model_version.clone()));
        let unless = current.as_ref().map(|(sha, v)| (sha.as_str(), v.as_str()));
        let r = load::load_version(arg, base_url, source.store.as_ref(), signal, &load_options, &source.engine, &emit, unless).await;
        self.busy.set(false);
        if self.disposed.get() {
            return Err(js_error(Error::Disposed));
        }
        let from = self.version();
        let v = match r {
            Ok(Ok(v)) => v,
            Ok(Err(load::Skip::Same)) => return Ok(to_js(&serde_json::json!({ "updated": false, "from": from, "to": from }))),
            Ok(Err(load::Skip::RolledBack(to))) => {
                return Ok(to_js(&serde_json::json!({ "updated": false, "from": from, "to": to, "rolledBack": true })))
            }
            Err(e) => {
                let (name, message) = name_message(&e);
                self.emit(EngineEvent::UpdateFailed { from, name, message });
                return Err(e);
            }
        };
        let to = v.version.model_version.clone();
        let monitor = UpdateMonitor::new(policy, &self.window.borrow());
        let baseline = monitor.baseline();
        let old = self.swap(v.engine, v.version);
        *self.previous.borrow_mut() = old;
        *self.monitor.borrow_mut() = Some(monitor);
        self.emit(EngineEvent::Updated { from: from.clone(), to: to.clone(), baseline });
        Ok(to_js(&serde_json::json!({ "updated": true, "from": from, "to": to, "baseline": baseline })))
    }
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
        Ok(wasm_bindgen_futures::future_to_promise(self.slot.clone().update(arg, load::or_undefined(options))))
    }

    /// Receive engine events (`EngineEvent`); `undefined` removes the listener.
    #[wasm_bindgen(js_name = setEventListener)]
    pub fn set_event_listener(&self, #[wasm_bindgen(unchecked_param_type = "((event: EngineEvent) => void) | undefined")] listener: JsValue) {
        *self.slot.on_event.borrow_mut() = listener.dyn_into::<Function>().ok();
    }

    /// The running model version (`undefined` for engines not made by `Engine.load`).
    #[wasm_bindgen(getter = modelVersion)]
    pub fn model_version(&self) -> Option<String> {
        self.slot.current.borrow().as_ref().map(|v| v.model_version.clone())
    }

    #[wasm_bindgen(getter = modelId)]
    pub fn model_id(&self) -> Option<String> {
        self.slot.current.borrow().as_ref().map(|v| v.model_id.clone())
    }
}
