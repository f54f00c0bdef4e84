//! The OTA update lifecycle (`ota::Slot`) driven natively by a fake loader: update, confirm,
//! rollback, dispose while a load is in flight, and the outcomes that count. The JS side of the
//! same lifecycle: tests/js/loader.test.mjs and browser-loader.test.mjs (OTA tests).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use edge_llm::ota::{Dispose, Event, Loaded, RollbackPolicy, Skip, Slot, UpdateResult, VersionInfo, VersionLoader};
use edge_llm::Error;

/// An engine that only knows its version; disposals go to the shared log.
struct FakeEngine {
    version: String,
    log: Rc<Shared>,
}

impl Dispose for FakeEngine {
    fn dispose(&self) {
        self.log.disposed.borrow_mut().push(self.version.clone());
    }
}

/// What the test sees of, and sets for, the fake loader.
#[derive(Default)]
struct Shared {
    disposed: RefCell<Vec<String>>,
    rolled_back: RefCell<Vec<String>>,
    /// While set, loads wait (`Pending`) until the test clears it.
    hold: Cell<bool>,
    /// Versions whose (re)load fails.
    broken: RefCell<Vec<String>>,
    events: RefCell<Vec<Event>>,
}

struct FakeLoader(Rc<Shared>);

fn version(v: &str) -> VersionInfo {
    VersionInfo {
        model_id: "m".into(),
        model_version: v.into(),
        model_sha256: format!("sha-{v}"),
        manifest_json: String::new(),
        manifest_url: None,
        base_url: None,
    }
}

impl FakeLoader {
    async fn fetch(&self, v: &str) -> Result<Loaded<FakeEngine>, Error> {
        Held(&self.0).await;
        if self.0.broken.borrow().iter().any(|b| b == v) {
            return Err(Error::Network { file: format!("{v}/manifest.json"), reason: "404".into() });
        }
        Ok(Loaded { engine: FakeEngine { version: v.into(), log: self.0.clone() }, version: version(v) })
    }
}

impl VersionLoader for FakeLoader {
    type Engine = FakeEngine;
    type Request = &'static str;
    type Error = Error;

    async fn load(&self, v: &'static str, running: &VersionInfo) -> Result<Result<Loaded<FakeEngine>, Skip>, Error> {
        if v == running.model_version {
            return Ok(Err(Skip::Same));
        }
        if self.0.rolled_back.borrow().iter().any(|r| r == v) {
            return Ok(Err(Skip::RolledBack(v.into())));
        }
        self.fetch(v).await.map(Ok)
    }

    async fn reload(&self, v: &VersionInfo) -> Result<Loaded<FakeEngine>, Error> {
        self.fetch(&v.model_version).await
    }

    async fn mark_rolled_back(&self, v: &VersionInfo) {
        self.0.rolled_back.borrow_mut().push(v.model_version.clone());
    }
}

/// Pending while the test holds loads.
struct Held<'a>(&'a Shared);

impl Future for Held<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0.hold.get() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

fn poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs a future whose loads are not held (nothing here waits on anything else).
fn run<F: Future>(f: F) -> F::Output {
    match poll(pin!(f)) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("pending: a load is held"),
    }
}

/// A slot running 1.0.0, with its loader's shared state; events are collected there.
fn slot() -> (Rc<Slot<FakeLoader>>, Rc<Shared>) {
    let shared = Rc::new(Shared::default());
    let engine = FakeEngine { version: "1.0.0".into(), log: shared.clone() };
    let slot = Rc::new(Slot::new(engine, Some((version("1.0.0"), FakeLoader(shared.clone())))));
    let log = shared.clone();
    slot.set_listener(Some(Rc::new(move |e| log.events.borrow_mut().push(e))));
    (slot, shared)
}

/// Judged from the first outcomes: 2 errors exceed 0 % + 5 % of the 20-outcome window.
const STRICT: RollbackPolicy = RollbackPolicy { window: 20, margin: 0.05, probation: 5, baseline: Some(0.0) };

fn running(slot: &Slot<FakeLoader>) -> String {
    slot.engine().map(|e| e.version.clone()).unwrap_or_default()
}

fn kinds(shared: &Shared) -> Vec<&'static str> {
    let kind = |e: &Event| match e {
        Event::Updated { .. } => "updated",
        Event::UpdateFailed { .. } => "updateFailed",
        Event::Rollback { .. } => "rollback",
        Event::RollbackFailed { .. } => "rollbackFailed",
        Event::UpdateConfirmed { .. } => "updateConfirmed",
    };
    shared.events.borrow().iter().map(kind).collect()
}

#[test]
fn a_healthy_update_is_confirmed_after_probation() {
    let (slot, shared) = slot();
    let held_by_a_generation = slot.engine().expect("an engine");
    let r = run(slot.clone().update(STRICT, "2.0.0")).unwrap();
    assert_eq!(r, UpdateResult::Updated { from: "1.0.0".into(), to: "2.0.0".into(), baseline: 0.0 });
    assert_eq!((running(&slot), slot.version().unwrap().model_version.clone()), ("2.0.0".into(), "2.0.0".into()));
    assert!(shared.disposed.borrow().is_empty(), "a swap leaves the old engine to the generations holding it");
    drop(held_by_a_generation);
    // One error in five stays within the margin; the fifth outcome confirms.
    for ok in [true, false, true, true, true] {
        assert!(slot.outcome().report(ok).is_none());
    }
    assert_eq!(kinds(&shared), ["updated", "updateConfirmed"]);
    assert_eq!(shared.events.borrow()[1], Event::UpdateConfirmed { version: "2.0.0".into(), error_rate: 0.2, samples: 5 });
    assert!(slot.outcome().report(false).is_none() && slot.outcome().report(false).is_none(), "confirmed: no longer watched");
    assert_eq!(run(slot.clone().update(STRICT, "2.0.0")).unwrap(), UpdateResult::Same { version: "2.0.0".into() });
}

#[test]
fn errors_roll_back_to_the_previous_version_which_is_remembered() {
    let (slot, shared) = slot();
    run(slot.clone().update(STRICT, "2.0.0")).unwrap();
    assert!(slot.outcome().report(false).is_none(), "1 error in 20 is 5 %");
    let rollback = slot.outcome().report(false).expect("2 errors in 20 exceed 5 %");
    run(rollback);
    assert_eq!(running(&slot), "1.0.0");
    assert_eq!(slot.version().unwrap().model_version, "1.0.0");
    assert_eq!(*shared.rolled_back.borrow(), ["2.0.0"]);
    assert_eq!(
        shared.events.borrow()[1],
        Event::Rollback { from: "2.0.0".into(), to: "1.0.0".into(), error_rate: 1.0, baseline: 0.0, threshold: 0.05, errors: 2, samples: 2 }
    );
    // The rolled-back version is not loaded again; another one is, and its monitor starts afresh.
    let again = run(slot.clone().update(STRICT, "2.0.0")).unwrap();
    assert_eq!(again, UpdateResult::RolledBack { from: "1.0.0".into(), to: "2.0.0".into() });
    run(slot.clone().update(STRICT, "3.0.0")).unwrap();
    assert!(slot.outcome().report(false).is_none());
    assert_eq!(kinds(&shared), ["updated", "rollback", "updated"]);
}

#[test]
fn outcomes_of_generations_started_before_a_swap_are_not_counted() {
    let (slot, shared) = slot();
    let before: Vec<_> = (0..5).map(|_| slot.outcome()).collect();
    run(slot.clone().update(STRICT, "2.0.0")).unwrap();
    for old in before {
        assert!(old.report(false).is_none(), "an old epoch's error does not count against 2.0.0");
    }
    assert!(slot.outcome().report(false).is_none(), "the first error that counts");
    let started_on_2 = slot.outcome();
    run(slot.outcome().report(false).expect("the second one rolls back"));
    assert!(started_on_2.report(false).is_none(), "started on 2.0.0, ended after the rollback");
    assert_eq!(kinds(&shared), ["updated", "rollback"]);
}

#[test]
fn an_update_while_one_runs_is_refused() {
    let (slot, shared) = slot();
    shared.hold.set(true);
    let mut first = pin!(slot.clone().update(STRICT, "2.0.0"));
    assert!(poll(first.as_mut()).is_pending());
    let second = run(slot.clone().update(STRICT, "3.0.0")).unwrap_err();
    assert_eq!((second.name(), second.to_string().contains("already running")), ("InvalidOptionError", true), "{second}");
    shared.hold.set(false);
    assert!(matches!(run(first), Ok(UpdateResult::Updated { .. })));
    assert_eq!(running(&slot), "2.0.0");
    assert!(matches!(run(slot.clone().update(STRICT, "3.0.0")), Ok(UpdateResult::Updated { .. })), "free again once done");
}

/// The race of the next two tests: 2.0.0 runs; an update to 3.0.0 starts loading; meanwhile
/// 2.0.0's errors start a rollback to 1.0.0. Both loads are pending, then released.
#[allow(clippy::type_complexity)]
fn update_and_rollback_in_flight() -> (
    Rc<Slot<FakeLoader>>,
    Rc<Shared>,
    Pin<Box<impl Future<Output = Result<UpdateResult, Error>>>>,
    Pin<Box<impl Future<Output = ()>>>,
) {
    let (slot, shared) = slot();
    run(slot.clone().update(STRICT, "2.0.0")).unwrap();
    shared.hold.set(true);
    let mut update = Box::pin(slot.clone().update(STRICT, "3.0.0"));
    assert!(poll(update.as_mut()).is_pending());
    assert!(slot.outcome().report(false).is_none());
    let mut rollback = Box::pin(slot.outcome().report(false).expect("2.0.0 fails: a rollback"));
    assert!(poll(rollback.as_mut()).is_pending());
    shared.hold.set(false);
    (slot, shared, update, rollback)
}

/// An update in flight when outcomes start a rollback, the rollback finishing first: the slot
/// stays busy until the update too is done, then the update's version runs, watched against
/// the version the rollback brought back.
#[test]
fn a_rollback_finishing_during_an_update_leaves_the_slot_busy_until_the_update_is_done() {
    let (slot, shared, update, mut rollback) = update_and_rollback_in_flight();
    assert!(poll(rollback.as_mut()).is_ready());
    assert_eq!((running(&slot), shared.rolled_back.borrow().clone()), ("1.0.0".into(), vec!["2.0.0".to_string()]));
    let refused = run(slot.clone().update(STRICT, "4.0.0")).unwrap_err();
    assert!(refused.to_string().contains("already running"), "the update to 3.0.0 still runs: {refused}");
    assert_eq!(run(update).unwrap(), UpdateResult::Updated { from: "1.0.0".into(), to: "3.0.0".into(), baseline: 0.0 });
    assert!(slot.outcome().report(false).is_none());
    run(slot.outcome().report(false).expect("3.0.0 fails too"));
    assert_eq!(running(&slot), "1.0.0");
    assert_eq!(kinds(&shared), ["updated", "rollback", "updated", "rollback"]);
}

/// The same race the other way round: the update lands first, so the rollback (decided against
/// 2.0.0) must not replace 3.0.0, which never failed, nor mark it rolled back.
#[test]
fn a_rollback_finishing_after_an_update_landed_gives_way_to_it() {
    let (slot, shared, mut update, mut rollback) = update_and_rollback_in_flight();
    assert!(matches!(poll(update.as_mut()), Poll::Ready(Ok(UpdateResult::Updated { .. }))));
    assert!(poll(rollback.as_mut()).is_ready());
    assert_eq!(running(&slot), "3.0.0");
    assert!(shared.rolled_back.borrow().is_empty(), "3.0.0 never failed");
    assert_eq!(*shared.disposed.borrow(), ["1.0.0"], "the reloaded 1.0.0 is let go");
    assert_eq!(kinds(&shared), ["updated", "updated"]);
    assert!(matches!(run(slot.clone().update(STRICT, "4.0.0")), Ok(UpdateResult::Updated { .. })), "free again");
}

/// An update whose future is dropped mid-load (its caller went away) frees the slot.
#[test]
fn an_abandoned_update_frees_the_slot() {
    let (slot, shared) = slot();
    shared.hold.set(true);
    let mut update = Box::pin(slot.clone().update(STRICT, "2.0.0"));
    assert!(poll(update.as_mut()).is_pending());
    drop(update);
    shared.hold.set(false);
    assert!(matches!(run(slot.clone().update(STRICT, "3.0.0")), Ok(UpdateResult::Updated { .. })));
    assert_eq!(running(&slot), "3.0.0");
}

#[test]
fn dispose_during_an_update_keeps_the_engine_gone_and_disposes_the_new_one() {
    let (slot, shared) = slot();
    shared.hold.set(true);
    let mut update = pin!(slot.clone().update(STRICT, "2.0.0"));
    assert!(poll(update.as_mut()).is_pending());
    slot.dispose();
    assert_eq!(*shared.disposed.borrow(), ["1.0.0"]);
    shared.hold.set(false);
    let e = run(update).unwrap_err();
    assert!(matches!(e, Error::Disposed), "{e}");
    assert!(slot.engine().is_none(), "not brought back");
    assert_eq!(*shared.disposed.borrow(), ["1.0.0", "2.0.0"], "the engine the update loaded is disposed too");
    assert_eq!(kinds(&shared), Vec::<&str>::new());
}

#[test]
fn dispose_during_a_rollback_keeps_the_engine_gone_and_disposes_the_reloaded_one() {
    let (slot, shared) = slot();
    run(slot.clone().update(STRICT, "2.0.0")).unwrap();
    assert!(slot.outcome().report(false).is_none());
    let rollback = slot.outcome().report(false).expect("a rollback");
    shared.hold.set(true);
    let mut rollback = pin!(rollback);
    assert!(poll(rollback.as_mut()).is_pending());
    slot.dispose();
    shared.hold.set(false);
    run(rollback);
    assert!(slot.engine().is_none(), "not brought back");
    assert_eq!(*shared.disposed.borrow(), ["2.0.0", "1.0.0"]);
    assert_eq!(kinds(&shared), ["updated"]);
}

#[test]
fn failed_loads_are_events_and_leave_the_running_version() {
    let (slot, shared) = slot();
    shared.broken.borrow_mut().push("9.9.9".into());
    let e = run(slot.clone().update(STRICT, "9.9.9")).unwrap_err();
    assert_eq!(e.name(), "NetworkError");
    assert_eq!(running(&slot), "1.0.0");
    // 2.0.0 fails, and 1.0.0 has gone from the server meanwhile: the rollback fails, 2.0.0 stays.
    run(slot.clone().update(STRICT, "2.0.0")).unwrap();
    shared.broken.borrow_mut().push("1.0.0".into());
    assert!(slot.outcome().report(false).is_none());
    run(slot.outcome().report(false).expect("a rollback"));
    assert_eq!(running(&slot), "2.0.0");
    assert!(shared.rolled_back.borrow().is_empty());
    let events = shared.events.borrow();
    assert_eq!(kinds(&shared), ["updateFailed", "updated", "rollbackFailed"]);
    let Event::UpdateFailed { from, name, message } = &events[0] else { unreachable!() };
    assert_eq!((from.as_str(), name.as_str()), ("1.0.0", "NetworkError"));
    assert!(message.contains("9.9.9/manifest.json"), "{message}");
    let Event::RollbackFailed { from, name, .. } = &events[2] else { unreachable!() };
    assert_eq!((from.as_str(), name.as_str()), ("2.0.0", "NetworkError"));
}

#[test]
fn an_engine_no_loader_made_cannot_update() {
    let shared = Rc::new(Shared::default());
    let slot = Rc::new(Slot::<FakeLoader>::new(FakeEngine { version: "x".into(), log: shared.clone() }, None));
    let e = run(slot.clone().update(STRICT, "2.0.0")).unwrap_err();
    assert_eq!(e.name(), "InvalidOptionError");
    assert!(slot.version().is_none());
    assert!(slot.outcome().report(false).is_none());
}
