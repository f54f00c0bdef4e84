//! OTA model updates with automatic rollback (seed: "roll back if inference error rate >
//! baseline + 5 %"): the counting and decisions here, the engine swaps in [`Slot`] (slot.rs);
//! `web/ota.rs` only turns JS options into requests and events into JS objects.
//!
//! Every finished inference (a generation that ran to its end, or failed) is an outcome. The
//! running version keeps a sliding [`ErrorWindow`]; at an update its rate is the baseline. The
//! new version then runs under an [`UpdateMonitor`] for `probation` outcomes: as soon as the
//! errors in its window make the window's rate exceed `baseline + margin` it asks for a
//! rollback; after `probation` outcomes without that, the update is confirmed.
//!
//! Rates are judged over at least [`MIN_WINDOW`] outcomes: over fewer, one error is already
//! 5 % or more, and the margin would mean nothing. An old version with fewer than that many
//! outcomes has no measured rate; its baseline is then [`UNMEASURED_BASELINE`].

use std::collections::VecDeque;

use serde::Serialize;

use crate::Error;

mod slot;
pub use slot::{Dispose, Event, Listener, LoadError, Loaded, Outcome, Skip, Slot, UpdateResult, VersionInfo, VersionLoader};

/// Does this error count against the model version (vs. a caller's mistake)?
pub fn is_model_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Inference(_) | Error::ShardHashMismatch { .. } | Error::InvalidModel(_) | Error::UnsupportedOp { .. } | Error::Tokenizer(_)
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackPolicy {
    /// Outcomes per window.
    pub window: usize,
    /// Allowed rise of the error rate over the baseline (0.05 = 5 percentage points).
    pub margin: f64,
    /// Outcomes after which an update is confirmed and no longer watched.
    pub probation: usize,
    /// Baseline error rate; `None`: the old version's measured rate.
    pub baseline: Option<f64>,
}

/// The fewest outcomes a rate is judged over (a smaller `window` is raised to this).
pub const MIN_WINDOW: usize = 20;
/// The baseline when the old version has too little history to measure one (fewer than
/// [`MIN_WINDOW`] outcomes, e.g. an update right after the page loaded): a healthy model
/// fails almost never, so this is the rate of a version nobody would call a regression.
pub const UNMEASURED_BASELINE: f64 = 0.05;

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy { window: 20, margin: 0.05, probation: 100, baseline: None }
    }
}

/// The last `capacity` outcomes.
#[derive(Debug, Clone)]
pub struct ErrorWindow {
    capacity: usize,
    outcomes: VecDeque<bool>,
    errors: usize,
}

impl ErrorWindow {
    pub fn new(capacity: usize) -> Self {
        ErrorWindow { capacity: capacity.max(1), outcomes: VecDeque::new(), errors: 0 }
    }

    pub fn record(&mut self, ok: bool) {
        if self.outcomes.len() == self.capacity && !self.outcomes.pop_front().unwrap_or(true) {
            self.errors -= 1;
        }
        self.outcomes.push_back(ok);
        self.errors += usize::from(!ok);
    }

    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    pub fn errors(&self) -> usize {
        self.errors
    }

    /// Error rate over the outcomes held, 0 when none.
    pub fn rate(&self) -> f64 {
        if self.outcomes.is_empty() {
            0.0
        } else {
            self.errors as f64 / self.outcomes.len() as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Verdict {
    Keep,
    Rollback { error_rate: f64, baseline: f64, threshold: f64, errors: usize, samples: usize },
    Confirmed { error_rate: f64, baseline: f64, samples: usize },
}

/// Watches a freshly installed version.
#[derive(Debug, Clone)]
pub struct UpdateMonitor {
    policy: RollbackPolicy,
    baseline: f64,
    window: ErrorWindow,
    seen: usize,
    decided: bool,
}

impl UpdateMonitor {
    /// `previous`: the old version's window at the switch (its rate is the default baseline).
    pub fn new(policy: RollbackPolicy, previous: &ErrorWindow) -> Self {
        let measured = (previous.len() >= MIN_WINDOW).then(|| previous.rate());
        let baseline = policy.baseline.or(measured).unwrap_or(UNMEASURED_BASELINE);
        let policy = RollbackPolicy { window: policy.window.max(MIN_WINDOW), ..policy };
        UpdateMonitor { policy, baseline, window: ErrorWindow::new(policy.window), seen: 0, decided: false }
    }

    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    pub fn threshold(&self) -> f64 {
        self.baseline + self.policy.margin
    }

    /// A decision is final: after `Rollback` or `Confirmed` every later call says `Keep`.
    pub fn record(&mut self, ok: bool) -> Verdict {
        if self.decided {
            return Verdict::Keep;
        }
        self.window.record(ok);
        self.seen += 1;
        let threshold = self.threshold();
        // Once the errors alone exceed threshold × window, the window's rate exceeds the
        // threshold whatever the remaining outcomes are: decide now instead of at the window's end.
        if self.window.errors() as f64 > threshold * self.policy.window as f64 {
            self.decided = true;
            return Verdict::Rollback {
                error_rate: self.window.rate(),
                baseline: self.baseline,
                threshold,
                errors: self.window.errors(),
                samples: self.window.len(),
            };
        }
        if self.seen >= self.policy.probation {
            self.decided = true;
            return Verdict::Confirmed { error_rate: self.window.rate(), baseline: self.baseline, samples: self.seen };
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(baseline: Option<f64>) -> UpdateMonitor {
        UpdateMonitor::new(RollbackPolicy { window: 20, margin: 0.05, probation: 100, baseline }, &ErrorWindow::new(20))
    }

    fn healthy_history(n: usize) -> ErrorWindow {
        let mut w = ErrorWindow::new(20);
        for _ in 0..n {
            w.record(true);
        }
        w
    }

    #[test]
    fn a_small_window_does_not_roll_back_on_one_error() {
        for window in [1, 5, 10, 19] {
            let mut m = UpdateMonitor::new(RollbackPolicy { window, baseline: Some(0.0), ..Default::default() }, &healthy_history(20));
            assert_eq!(m.record(false), Verdict::Keep, "window {window}: 1 error");
            assert!(matches!(m.record(false), Verdict::Rollback { errors: 2, .. }), "window {window}: 2 errors in 20 are 10 %");
        }
    }

    #[test]
    fn an_old_version_without_history_has_an_unmeasured_baseline_not_zero() {
        for n in [0, 1, 19] {
            let m = UpdateMonitor::new(RollbackPolicy::default(), &healthy_history(n));
            assert_eq!(m.baseline(), UNMEASURED_BASELINE, "{n} outcomes");
        }
        assert_eq!(UpdateMonitor::new(RollbackPolicy::default(), &healthy_history(20)).baseline(), 0.0, "measured");
        let mut m = UpdateMonitor::new(RollbackPolicy::default(), &healthy_history(0));
        // 2 errors in 20 (10 %) are within 5 % + 5 %; a third is not.
        assert_eq!(m.record(false), Verdict::Keep);
        assert_eq!(m.record(false), Verdict::Keep);
        assert!(matches!(m.record(false), Verdict::Rollback { errors: 3, .. }));
    }

    #[test]
    fn window_slides() {
        let mut w = ErrorWindow::new(3);
        for ok in [false, true, true, true] {
            w.record(ok);
        }
        assert_eq!((w.len(), w.errors()), (3, 0));
        w.record(false);
        assert!((w.rate() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn one_error_in_twenty_is_within_five_percent_two_are_not() {
        let mut m = monitor(Some(0.0));
        assert_eq!(m.record(false), Verdict::Keep, "1/20 = 5 % does not exceed 0 + 5 %");
        for _ in 0..5 {
            assert_eq!(m.record(true), Verdict::Keep);
        }
        match m.record(false) {
            Verdict::Rollback { errors: 2, samples: 7, threshold, .. } => assert!((threshold - 0.05).abs() < 1e-12),
            v => panic!("{v:?}"),
        }
        assert_eq!(m.record(false), Verdict::Keep, "decisions are final");
    }

    #[test]
    fn baseline_comes_from_the_previous_version() {
        let mut old = ErrorWindow::new(20);
        for i in 0..20 {
            old.record(i % 10 != 0); // 10 % errors
        }
        let mut m = UpdateMonitor::new(RollbackPolicy::default(), &old);
        assert!((m.baseline() - 0.1).abs() < 1e-12);
        // 3 errors in 20 (15 %) is not above 10 % + 5 %...
        let mut verdicts = Vec::new();
        for i in 0..20 {
            verdicts.push(m.record(i % 7 != 3));
        }
        assert!(verdicts.iter().all(|v| *v == Verdict::Keep), "{verdicts:?}");
        // ...a fourth in the same window is.
        assert!(matches!(m.record(false), Verdict::Rollback { errors: 4, .. }), "sliding window keeps the last 20");
    }

    #[test]
    fn a_healthy_update_is_confirmed_after_probation() {
        let mut m = monitor(None);
        for i in 0..99 {
            assert_eq!(m.record(i != 50), Verdict::Keep);
        }
        assert!(matches!(m.record(true), Verdict::Confirmed { samples: 100, .. }));
    }

    #[test]
    fn model_errors_are_told_from_caller_errors() {
        assert!(is_model_error(&Error::Inference("NaN".into())));
        assert!(is_model_error(&Error::ShardHashMismatch { shard: "a".into(), expected: "b".into(), actual: "c".into() }));
        assert!(!is_model_error(&Error::ContextOverflow { needed: 9, max: 8 }));
        assert!(!is_model_error(&Error::InvalidOption { option: "topP", reason: "2".into() }));
    }
}
