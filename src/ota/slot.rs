//! The update lifecycle: the engine in use, the version it replaced, and the swaps between them
//! (update, rollback on the [`UpdateMonitor`]'s verdict, dispose). Single-threaded (`Rc`, `Cell`)
//! like the web runtime that drives it. Loading a version is a [`VersionLoader`]'s job: `web/ota.rs`
//! plugs in the network/cache loader, tests/ota_lifecycle.rs a fake one.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;

use serde::Serialize;

use super::{ErrorWindow, RollbackPolicy, UpdateMonitor, Verdict};
use crate::Error;

/// A loaded model version, enough to load it again.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub model_id: String,
    pub model_version: String,
    pub model_sha256: String,
    pub manifest_json: String,
    pub manifest_url: Option<String>,
    pub base_url: Option<String>,
}

/// A version a [`VersionLoader`] loaded.
pub struct Loaded<E> {
    pub engine: E,
    pub version: VersionInfo,
}

/// Why an update loaded nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// The manifest is the running version.
    Same,
    /// The manifest is this version, which a rollback left before (remembered in the store).
    RolledBack(String),
}

/// An engine a slot holds: `dispose` lets go of it while generations may still hold it.
pub trait Dispose {
    fn dispose(&self);
}

/// The error a load ends in: the slot makes its own from [`Error`], and events carry its name.
pub trait LoadError: From<Error> {
    fn name(&self) -> String;
    fn message(&self) -> String;
}

impl LoadError for Error {
    fn name(&self) -> String {
        Error::name(self).into()
    }

    fn message(&self) -> String {
        self.to_string()
    }
}

/// Where a slot's versions come from.
pub trait VersionLoader {
    type Engine: Dispose;
    /// What an update names (web: the manifest, its options and progress listener).
    type Request;
    type Error: LoadError;

    /// Load the version `request` names, or nothing ([`Skip`]) when it is `running` or a
    /// version rolled back before.
    fn load(&self, request: Self::Request, running: &VersionInfo) -> impl Future<Output = Result<Result<Loaded<Self::Engine>, Skip>, Self::Error>>;
    /// Load `version` again: a rollback's target, still in the store.
    fn reload(&self, version: &VersionInfo) -> impl Future<Output = Result<Loaded<Self::Engine>, Self::Error>>;
    /// Remember that `version` was rolled back, so `load` skips it from now on.
    fn mark_rolled_back(&self, version: &VersionInfo) -> impl Future<Output = ()>;
}

/// What the slot tells the app (`web/` hands these to JS as they are: a union tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Event {
    Updated { from: String, to: String, baseline: f64 },
    UpdateFailed { from: String, name: String, message: String },
    Rollback { from: String, to: String, error_rate: f64, baseline: f64, threshold: f64, errors: usize, samples: usize },
    RollbackFailed { from: String, name: String, message: String },
    UpdateConfirmed { version: String, error_rate: f64, samples: usize },
}

/// How an update ended when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateResult {
    /// Now running `to`, watched against `baseline`.
    Updated { from: String, to: String, baseline: f64 },
    /// `to` is the running version: nothing loaded.
    Same { version: String },
    /// `to` was rolled back before: nothing loaded.
    RolledBack { from: String, to: String },
}

/// Receives the slot's events.
pub type Listener = Rc<dyn Fn(Event)>;

/// An update under probation: its monitor, and the version to return to.
struct Watch {
    monitor: UpdateMonitor,
    previous: Rc<VersionInfo>,
}

/// The engine in use, swappable while generations hold the old one.
pub struct Slot<L: VersionLoader> {
    /// `None` once [`Slot::dispose`] ran.
    engine: RefCell<Option<Rc<L::Engine>>>,
    /// `None` for an engine that no loader made: it cannot update.
    loader: Option<L>,
    current: RefCell<Option<Rc<VersionInfo>>>,
    /// Outcomes of the current version (its rate is the next update's baseline).
    window: RefCell<ErrorWindow>,
    watch: RefCell<Option<Watch>>,
    /// Bumped at every swap: outcomes of generations started before it are not counted.
    epoch: Cell<u64>,
    /// Loads in flight (an update, and a rollback that outcomes started meanwhile): a counter,
    /// so the first to finish does not free the slot while the other still runs.
    busy: Cell<u32>,
    /// Set by `dispose()`: an update or rollback finishing later must not bring an engine back.
    disposed: Cell<bool>,
    listener: RefCell<Option<Listener>>,
}

/// Reports one generation's outcome to the slot it started from.
pub struct Outcome<L: VersionLoader> {
    slot: Rc<Slot<L>>,
    epoch: u64,
}

impl<L: VersionLoader> Outcome<L> {
    /// `ok`: the generation ran to its end (`false`: it failed with a model error). A rollback
    /// this decides is returned to run (the caller spawns it).
    #[must_use = "the rollback runs only when polled"]
    pub fn report(self, ok: bool) -> Option<impl Future<Output = ()>> {
        self.slot.record(self.epoch, ok)
    }
}

impl<L: VersionLoader> Slot<L> {
    /// `version`: the running version and its loader, for engines that can update.
    pub fn new(engine: L::Engine, version: Option<(VersionInfo, L)>) -> Self {
        let (current, loader) = version.unzip();
        Slot {
            engine: RefCell::new(Some(Rc::new(engine))),
            loader,
            current: RefCell::new(current.map(Rc::new)),
            window: RefCell::new(ErrorWindow::new(RollbackPolicy::default().window)),
            watch: RefCell::new(None),
            epoch: Cell::new(0),
            busy: Cell::new(0),
            disposed: Cell::new(false),
            listener: RefCell::new(None),
        }
    }

    /// The engine in use, `None` after [`Slot::dispose`].
    pub fn engine(&self) -> Option<Rc<L::Engine>> {
        self.engine.borrow().clone()
    }

    /// The running version (`None` for an engine no loader made).
    pub fn version(&self) -> Option<Rc<VersionInfo>> {
        self.current.borrow().clone()
    }

    pub fn set_listener(&self, listener: Option<Listener>) {
        *self.listener.borrow_mut() = listener;
    }

    /// Let go of the engine (generations holding it see it disposed); updates and rollbacks
    /// still running dispose what they load.
    pub fn dispose(&self) {
        self.disposed.set(true);
        if let Some(e) = self.engine.borrow_mut().take() {
            e.dispose();
        }
        self.watch.borrow_mut().take();
    }

    /// The handle a generation starting now reports its outcome through.
    pub fn outcome(self: &Rc<Self>) -> Outcome<L> {
        Outcome { slot: self.clone(), epoch: self.epoch.get() }
    }

    fn model_version(&self) -> String {
        self.current.borrow().as_ref().map(|v| v.model_version.clone()).unwrap_or_default()
    }

    fn emit(&self, e: Event) {
        // Cloned out first: the listener may call back into the slot.
        let listener = self.listener.borrow().clone();
        if let Some(f) = listener {
            f(e);
        }
    }

    /// Install `engine`; returns the version it replaces.
    fn swap(&self, engine: L::Engine, version: VersionInfo) -> Option<Rc<VersionInfo>> {
        *self.engine.borrow_mut() = Some(Rc::new(engine));
        self.epoch.set(self.epoch.get() + 1);
        *self.window.borrow_mut() = ErrorWindow::new(RollbackPolicy::default().window);
        self.current.borrow_mut().replace(Rc::new(version))
    }

    fn record(self: &Rc<Self>, epoch: u64, ok: bool) -> Option<impl Future<Output = ()>> {
        if epoch != self.epoch.get() {
            return None;
        }
        self.window.borrow_mut().record(ok);
        let verdict = self.watch.borrow_mut().as_mut()?.monitor.record(ok);
        match verdict {
            Verdict::Keep => None,
            Verdict::Confirmed { error_rate, samples, .. } => {
                self.watch.borrow_mut().take();
                self.emit(Event::UpdateConfirmed { version: self.model_version(), error_rate, samples });
                None
            }
            Verdict::Rollback { error_rate, baseline, threshold, errors, samples } => {
                let previous = self.watch.borrow_mut().take()?.previous;
                let why = move |from, to| Event::Rollback { from, to, error_rate, baseline, threshold, errors, samples };
                Some(self.clone().rollback(previous, why))
            }
        }
    }

    async fn rollback(self: Rc<Self>, previous: Rc<VersionInfo>, why: impl FnOnce(String, String) -> Event) {
        let Some(loader) = self.loader.as_ref() else { return };
        let from = self.model_version();
        let epoch = self.epoch.get();
        let r = {
            let _busy = Busy::new(&self.busy);
            loader.reload(&previous).await
        };
        // Disposed meanwhile, or an update that was in flight swapped in a newer version: that
        // one is not the version that failed, so it stays (and is watched); the reload goes.
        if self.disposed.get() || epoch != self.epoch.get() {
            if let Ok(loaded) = r {
                loaded.engine.dispose();
            }
            return;
        }
        match r {
            Ok(Loaded { engine, version }) => {
                let to = version.model_version.clone();
                if let Some(failed) = self.swap(engine, version) {
                    loader.mark_rolled_back(&failed).await;
                }
                self.emit(why(from, to));
            }
            Err(e) => self.emit(Event::RollbackFailed { from, name: e.name(), message: e.message() }),
        }
    }

    /// Load the version `request` names, switch to it and watch it under `policy`: the
    /// outcomes reported from now on decide whether it stays.
    pub async fn update(self: Rc<Self>, policy: RollbackPolicy, request: L::Request) -> Result<UpdateResult, L::Error> {
        let (Some(loader), Some(running)) = (self.loader.as_ref(), self.version()) else {
            return Err(Error::InvalidOption { option: "update", reason: "only an engine made by Engine.load can update".into() }.into());
        };
        if self.busy.get() > 0 {
            return Err(Error::InvalidOption { option: "update", reason: "an update or rollback is already running".into() }.into());
        }
        let r = {
            let _busy = Busy::new(&self.busy);
            loader.load(request, &running).await
        };
        if self.disposed.get() {
            if let Ok(Ok(loaded)) = r {
                loaded.engine.dispose();
            }
            return Err(Error::Disposed.into());
        }
        let from = self.model_version();
        let Loaded { engine, version } = match r {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(Skip::Same)) => return Ok(UpdateResult::Same { version: from }),
            Ok(Err(Skip::RolledBack(to))) => return Ok(UpdateResult::RolledBack { from, to }),
            Err(e) => {
                self.emit(Event::UpdateFailed { from, name: e.name(), message: e.message() });
                return Err(e);
            }
        };
        let to = version.model_version.clone();
        let monitor = UpdateMonitor::new(policy, &self.window.borrow());
        let baseline = monitor.baseline();
        if let Some(previous) = self.swap(engine, version) {
            *self.watch.borrow_mut() = Some(Watch { monitor, previous });
        }
        self.emit(Event::Updated { from: from.clone(), to: to.clone(), baseline });
        Ok(UpdateResult::Updated { from, to, baseline })
    }
}

/// Counts one load in flight for as long as it lives (also when the load's future is dropped).
struct Busy<'a>(&'a Cell<u32>);

impl<'a> Busy<'a> {
    fn new(count: &'a Cell<u32>) -> Self {
        count.set(count.get() + 1);
        Busy(count)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}
