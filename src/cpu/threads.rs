//! How many threads the CPU kernels use, and [`map_ranges`], which splits a range of output
//! columns across them.
//!
//! One process-wide pool (feature `threads`): natively a rayon pool built here; on wasm32 the
//! rayon global pool that `web::init_threads` starts in Web Workers (wasm-bindgen-rayon). A
//! thread count `n` means the calling thread plus `n - 1` pool workers, all claiming chunks of
//! the work; the caller then waits only for chunks already under way (on the browser's main
//! thread that wait spins, as it may not block), so `n = 2` on two cores keeps both busy
//! without a third. The workers a split uses stay awake between splits for a few milliseconds
//! (`pool::team`), so a decode step's ~200 splits do not each pay a wake-up.
//! Without the feature, or with `n = 1`, everything runs on the calling thread. Each output
//! column is computed exactly as on one thread, so results are bit-identical at any count.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads in use (caller included); 0 = not configured yet (see [`threads`]).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// The thread count when nothing was configured: `EDGE_LLM_THREADS` natively, else the
/// available cores minus one (at least 1): the seed's rule never to pin every core.
pub fn default_threads() -> usize {
    if let Some(n) = std::env::var("EDGE_LLM_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        return n.max(1);
    }
    if cfg!(target_arch = "wasm32") {
        // The browser's count comes from JS (`navigator.hardwareConcurrency`).
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Threads the kernels currently use (caller included).
pub fn threads() -> usize {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let n = configure(default_threads());
            n.max(1)
        }
        n => n,
    }
}

/// Use `n` threads (caller included, at least 1) from now on; returns the count in effect.
/// Natively this (re)builds the pool (`n` workers: tract's matmuls run on it while the caller
/// sleeps; the int4 kernel uses `n - 1` of them beside the caller). On wasm32 the pool is the one
/// `web::init_threads` started: `n` is capped at its workers + 1 (1 before it exists).
pub fn configure(n: usize) -> usize {
    let n = pool::resize(n.max(1));
    ACTIVE.store(n, Ordering::Relaxed);
    n
}

/// Splitting finer than this many multiply-accumulates per thread costs more in hand-off
/// (publishing the job to the team, waiting for the last chunk) than it saves. With the
/// team's members awake between splits every projection of a SmolLM2-135M decode step is
/// split, down to the 576 × 192 key/value ones. Measured in headless Chromium, 2 threads,
/// 2-core Xeon, decode tok/s (two alternated runs): 2^12 41.6 / 38.8, 2^14 41.8 / 43.1,
/// 2^16 40.5 / 40.8, 2^18 38.2 / 35.1.
pub const MIN_MACS_PER_THREAD: usize = 1 << 14;

static MIN_MACS: AtomicUsize = AtomicUsize::new(MIN_MACS_PER_THREAD);

/// Change the smallest share worth a thread (default [`MIN_MACS_PER_THREAD`]); tests set 1
/// to split even the tiny model's matmuls. Results do not depend on it: every output column
/// is computed the same way whichever thread owns it.
pub fn set_min_macs_per_thread(macs: usize) {
    MIN_MACS.store(macs.max(1), Ordering::Relaxed);
}

/// How many parts [`map_ranges`] cuts `total` items into, when each item costs `macs_per_item`.
pub fn parts(total: usize, macs_per_item: usize) -> usize {
    let grain = MIN_MACS.load(Ordering::Relaxed).div_ceil(macs_per_item.max(1)).max(1);
    threads().min(total / grain).max(1)
}

static SPLITS: AtomicUsize = AtomicUsize::new(0);

/// How many [`map_ranges`] calls were split across threads so far (tests, diagnostics).
pub fn split_calls() -> usize {
    SPLITS.load(Ordering::Relaxed)
}

/// The smallest chunk worth claiming, in multiply-accumulates: a claim costs an atomic add and
/// a kernel call's setup.
const MIN_CHUNK_MACS: usize = 1 << 13;

/// Where `0..total` is cut for `t` threads: guided self-scheduling, each chunk a `1 / (2t)`
/// share of what is left (at least `grain` items, a multiple of 4 so the kernels' four-column
/// groups stay whole). Work is claimed chunk by chunk, so a thread that starts late (a worker
/// still waking, or descheduled on a busy machine) leaves its share to the others, and the
/// last chunks are small, so the caller waits little for the one another thread is finishing.
fn chunk_bounds(total: usize, t: usize, macs_per_item: usize) -> Vec<usize> {
    let grain = MIN_CHUNK_MACS.div_ceil(macs_per_item.max(1)).next_multiple_of(4);
    let mut bounds = vec![0];
    let mut at = 0;
    while at < total {
        let left = total - at;
        at += (left / (2 * t)).max(grain).next_multiple_of(4).min(left);
        bounds.push(at);
    }
    bounds
}

/// `f(i, range)` for every chunk `i` of `bounds` on `t` threads (the calling one included), each
/// thread claiming the next unclaimed chunk until none is left, so the caller only ever waits
/// for chunks already under way; the results in chunk order.
fn run_chunks<T: Send + Sync>(t: usize, bounds: &[usize], f: impl Fn(usize, Range<usize>) -> T + Sync) -> Vec<T> {
    SPLITS.fetch_add(1, Ordering::Relaxed);
    let chunks = bounds.len() - 1;
    let slots: Vec<std::sync::OnceLock<T>> = (0..chunks).map(|_| std::sync::OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            break;
        }
        let _ = slots[i].set(f(i, bounds[i]..bounds[i + 1]));
    };
    pool::run_on(t, &work);
    slots.into_iter().map(|v| v.into_inner().expect("every chunk ran")).collect()
}

/// `f` over `0..total` cut into contiguous ranges ([`chunk_bounds`]), run on [`parts`]
/// threads (the calling one included); the results in range order.
pub fn map_ranges<T: Send + Sync>(total: usize, macs_per_item: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<(Range<usize>, T)> {
    let t = parts(total, macs_per_item);
    if t == 1 {
        return vec![(0..total, f(0..total))];
    }
    let bounds = chunk_bounds(total, t, macs_per_item);
    let results = run_chunks(t, &bounds, |_, r| f(r));
    bounds.windows(2).map(|w| w[0]..w[1]).zip(results).collect()
}

/// Fill `out` (`[n][unit]`) through `f(units, part)`, which writes units `units` into `part`
/// (`out[units.start * unit..units.end * unit]`): the units cut into chunks across the threads
/// ([`parts`], [`chunk_bounds`]), each chunk's part of `out` written in place.
pub fn split_units<T: Send>(
    n: usize,
    unit: usize,
    macs_per_unit: usize,
    out: &mut [T],
    f: impl Fn(Range<usize>, &mut [T]) -> tract_onnx::prelude::TractResult<()> + Sync,
) -> tract_onnx::prelude::TractResult<()> {
    let t = parts(n, macs_per_unit);
    if t == 1 {
        return f(0..n, &mut out[..n * unit]);
    }
    let bounds = chunk_bounds(n, t, macs_per_unit);
    let mut rest = &mut out[..n * unit];
    let mut slices = Vec::with_capacity(bounds.len() - 1);
    for w in bounds.windows(2) {
        let (head, tail) = rest.split_at_mut((w[1] - w[0]) * unit);
        slices.push(std::sync::Mutex::new(head));
        rest = tail;
    }
    let slice = |i: usize| slices[i].lock().unwrap_or_else(|e| e.into_inner());
    run_chunks(t, &bounds, |i, units| f(units, &mut slice(i))).into_iter().collect()
}

/// Fill `out` (`[m][n]`, row-major) through `f(cols, local, ld)`, which writes output columns
/// `cols` of every row to `local[r * ld + (col - cols.start)]` (the kernels' column-range entry
/// points). On one thread `f` writes `out` directly. Split, a single row (a decode step) is
/// cut into disjoint slices of `out` that each chunk writes in place; several rows (prefill)
/// fill one `[m][cols.len()]` block per chunk, copied into place after.
pub fn split_columns<T: Copy + Default + Send + Sync>(
    n: usize,
    m: usize,
    macs_per_col: usize,
    out: &mut [T],
    f: impl Fn(Range<usize>, &mut [T], usize) -> tract_onnx::prelude::TractResult<()> + Sync,
) -> tract_onnx::prelude::TractResult<()> {
    if m == 1 {
        return split_units(n, 1, macs_per_col, out, |cols, out| f(cols.clone(), out, cols.len()));
    }
    let t = parts(n, macs_per_col);
    if t == 1 {
        return f(0..n, out, n);
    }
    let bounds = chunk_bounds(n, t, macs_per_col);
    let blocks = run_chunks(t, &bounds, |_, cols| {
        let mut local = vec![T::default(); m * cols.len()];
        f(cols.clone(), &mut local, cols.len()).map(|()| local)
    });
    for (w, local) in bounds.windows(2).zip(blocks) {
        let (local, cols) = (local?, w[0]..w[1]);
        for r in 0..m {
            out[r * n + cols.start..r * n + cols.end].copy_from_slice(&local[r * cols.len()..(r + 1) * cols.len()]);
        }
    }
    Ok(())
}

#[cfg(feature = "threads")]
mod pool {
    /// Runs `work` on `t - 1` pool workers and on the calling thread, returning when all are done.
    /// The path when the [`team`] is taken (another caller's split is under way).
    fn scope_body<'a>(s: &rayon::Scope<'a>, t: usize, work: &'a (dyn Fn() + Sync)) {
        for _ in 1..t {
            s.spawn(move |_| work());
        }
        work();
    }

    /// Workers that stay awake between splits. A rayon worker with nothing to do goes to sleep
    /// within microseconds, and waking it (a futex, `Atomics.notify` in a browser) costs tens to
    /// hundreds of microseconds: a decode step of SmolLM2-135M makes ~200 splits of 20–300 µs
    /// each, and with rayon's hand-off the second thread gained 6 % on 2 cores. Team members are rayon jobs
    /// that spin on a generation counter for [`SPIN_MS`] after their last job, so the next
    /// split reaches them in well under a microsecond; idle longer, they return to rayon (no core
    /// stays busy after a generation ends) and the next split starts them again, joining late:
    /// work is claimed chunk by chunk, so the caller never waits for a member that has not
    /// started. One split at a time uses the team; a concurrent caller (native tests) falls back
    /// to rayon's scope.
    pub(super) mod team {
        use std::ptr::null_mut;
        use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};

        /// How long a member spins without work before it returns its thread to rayon.
        pub const SPIN_MS: f64 = 10.0;

        /// Bumped once per split; members run the job when it changes.
        static GENERATION: AtomicUsize = AtomicUsize::new(0);
        /// The current split's job: a pointer to the caller's `&dyn Fn`, null between splits.
        static JOB: AtomicPtr<()> = AtomicPtr::new(null_mut());
        /// Members inside the job (or about to look at [`JOB`]).
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        /// Members started and not yet returned to rayon.
        static ALIVE: AtomicUsize = AtomicUsize::new(0);
        /// A split is using the team.
        static BUSY: AtomicBool = AtomicBool::new(false);

        /// Runs `work` on the calling thread and on the team's members (started with `spawn`
        /// until `t - 1` are alive), returning once no member is inside it. `false`: the team was
        /// busy and nothing ran.
        pub fn run(t: usize, work: &(dyn Fn() + Sync), spawn: impl Fn(fn())) -> bool {
            if BUSY.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
                return false;
            }
            for _ in ALIVE.load(SeqCst)..t - 1 {
                ALIVE.fetch_add(1, SeqCst);
                spawn(member);
            }
            /// Closes the split, also when `work` panics on the caller (native unwinding): no
            /// member may still be inside a job whose caller's stack is gone.
            struct Close;
            impl Drop for Close {
                fn drop(&mut self) {
                    // After this store no member can start the job; wait for those inside it.
                    JOB.store(null_mut(), SeqCst);
                    while RUNNING.load(SeqCst) != 0 {
                        std::hint::spin_loop();
                    }
                    BUSY.store(false, SeqCst);
                }
            }
            let job: &(dyn Fn() + Sync) = work;
            let _close = Close;
            JOB.store(&job as *const &(dyn Fn() + Sync) as *mut (), SeqCst);
            GENERATION.fetch_add(1, SeqCst);
            work();
            true
        }

        /// A member: runs each new generation's job, until idle for [`SPIN_MS`].
        fn member() {
            let mut seen = GENERATION.load(SeqCst);
            let mut idle_since = now_ms();
            let mut spins = 0u32;
            loop {
                let g = GENERATION.load(SeqCst);
                if g != seen {
                    seen = g;
                    // Counted before looking at the job: a caller that saw `RUNNING == 0` after
                    // clearing `JOB` is gone, and this member then reads null (or the next
                    // split's job, whose caller waits for this count).
                    RUNNING.fetch_add(1, SeqCst);
                    let job = JOB.load(SeqCst) as *const &(dyn Fn() + Sync);
                    if !job.is_null() {
                        // SAFETY: non-null `JOB` points at the `&dyn Fn` on the stack of a
                        // caller inside `run`, which does not return while `RUNNING > 0`.
                        unsafe { (*job)() };
                    }
                    RUNNING.fetch_sub(1, SeqCst);
                    idle_since = now_ms();
                    spins = 0;
                    continue;
                }
                spins = spins.wrapping_add(1);
                if spins % 4096 == 0 {
                    if now_ms() - idle_since > SPIN_MS {
                        break;
                    }
                    // Other rayon work (tract's own parallel matmuls) queued meanwhile runs here.
                    rayon::yield_now();
                }
                std::hint::spin_loop();
            }
            ALIVE.fetch_sub(1, SeqCst);
        }

        #[cfg(target_arch = "wasm32")]
        fn now_ms() -> f64 {
            js_sys::Date::now()
        }

        #[cfg(not(target_arch = "wasm32"))]
        fn now_ms() -> f64 {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod imp {
        use std::sync::{Arc, Mutex};

        static POOL: Mutex<Option<Arc<rayon::ThreadPool>>> = Mutex::new(None);

        fn current() -> Option<Arc<rayon::ThreadPool>> {
            POOL.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }

        /// Natively the pool gets `n` workers (not `n - 1`): tract's own matmuls run on it
        /// while the caller sleeps (a blocked native thread costs nothing), and the int4
        /// kernel uses `n - 1` of them beside the caller.
        pub fn resize(n: usize) -> usize {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            let workers = if n > 1 { n } else { 0 };
            if pool.as_ref().map_or(0, |p| p.current_num_threads()) != workers {
                *pool = if workers == 0 {
                    None
                } else {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(workers)
                        .thread_name(|i| format!("edge-llm-cpu-{i}"))
                        .build()
                        .ok()
                        .map(Arc::new)
                };
            }
            let executor = match pool.as_ref() {
                Some(p) => tract_linalg::multithread::Executor::MultiThread(p.clone()),
                None => tract_linalg::multithread::Executor::SingleThread,
            };
            tract_linalg::multithread::set_default_executor(executor);
            pool.as_ref().map_or(1, |p| p.current_num_threads())
        }

        pub fn run_on(t: usize, work: &(dyn Fn() + Sync)) {
            match current() {
                Some(pool) => {
                    let spawn = |member: fn()| pool.spawn(member);
                    if !super::team::run(t, work, spawn) {
                        pool.in_place_scope(|s| super::scope_body(s, t, work))
                    }
                }
                None => work(),
            }
        }
    }

    #[cfg(target_arch = "wasm32")]
    mod imp {
        use std::sync::atomic::{AtomicUsize, Ordering};

        /// Workers of the rayon global pool, once `web::init_threads` has started it.
        static WORKERS: AtomicUsize = AtomicUsize::new(0);

        /// Called by the web layer once the Web Worker pool runs. tract's own matmuls stay on
        /// the calling thread in the browser (`tract-linalg/multithread-mm` is native only,
        /// Cargo.toml): the split kernels are ours.
        pub fn set_workers(n: usize) {
            WORKERS.store(n, Ordering::Relaxed);
        }

        pub fn resize(n: usize) -> usize {
            n.min(WORKERS.load(Ordering::Relaxed) + 1)
        }

        pub fn run_on(t: usize, work: &(dyn Fn() + Sync)) {
            if WORKERS.load(Ordering::Relaxed) == 0 {
                work();
            } else if !super::team::run(t, work, |member| rayon::spawn(member)) {
                rayon::in_place_scope(|s| super::scope_body(s, t, work));
            }
        }
    }

    pub use imp::*;
}

#[cfg(not(feature = "threads"))]
mod pool {
    pub fn resize(_n: usize) -> usize {
        1
    }

    pub fn run_on(_t: usize, work: &(dyn Fn() + Sync)) {
        work();
    }
}

/// The web layer's hook: the Web Worker pool now has `workers` threads (caller not counted).
#[cfg(all(feature = "threads", target_arch = "wasm32"))]
pub fn set_pool_workers(workers: usize) {
    pool::set_workers(workers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_in_order() {
        configure(3);
        for (total, macs) in [(1, 1), (7, MIN_MACS_PER_THREAD), (1000, MIN_MACS_PER_THREAD / 10), (49152, 576)] {
            let parts = map_ranges(total, macs, |r| r.clone());
            let mut next = 0;
            for (r, v) in parts {
                assert_eq!(r, v);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, total);
        }
    }

    #[test]
    fn chunks_shrink_toward_the_end_and_stay_in_four_column_groups() {
        for (total, t, macs) in [(576, 2, 576), (1536, 2, 576), (49152, 4, 576), (192, 3, 1536), (5, 2, 1), (1, 2, 1 << 20)] {
            let b = chunk_bounds(total, t, macs);
            assert_eq!((b[0], *b.last().unwrap()), (0, total));
            let sizes: Vec<usize> = b.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");
            assert!(sizes[..sizes.len() - 1].iter().all(|s| s % 4 == 0), "{sizes:?}");
            assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "not shrinking: {sizes:?}");
            let grain = MIN_CHUNK_MACS.div_ceil(macs).next_multiple_of(4);
            assert!(sizes[0] <= (total / (2 * t)).max(grain).next_multiple_of(4), "{sizes:?}");
        }
        // A decode step's 576 × 576 projection on two threads: the last chunk is four columns.
        let b = chunk_bounds(576, 2, 576);
        assert_eq!((b[1], b.len() - 1, b[b.len() - 1] - b[b.len() - 2]), (144, 12, 4));
    }

    #[test]
    fn concurrent_splits_each_run_every_chunk_once() {
        configure(3);
        std::thread::scope(|s| {
            for caller in 0..4 {
                s.spawn(move || {
                    for round in 0..200 {
                        let total = 100 + 37 * caller + round;
                        let seen: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
                        let parts = map_ranges(total, MIN_MACS_PER_THREAD / 8, |r| {
                            r.clone().for_each(|i| _ = seen[i].fetch_add(1, Ordering::Relaxed));
                            r.len()
                        });
                        assert_eq!(parts.iter().map(|(_, n)| n).sum::<usize>(), total);
                        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn split_columns_fills_what_one_thread_fills() {
        configure(3);
        let (n, k) = (1000, 64);
        let f = |cols: Range<usize>, out: &mut [f32], ld: usize, m: usize| {
            for r in 0..m {
                for c in cols.clone() {
                    out[r * ld + c - cols.start] = (r * k + c) as f32;
                }
            }
            Ok(())
        };
        for m in [1, 3] {
            let mut split = vec![0f32; m * n];
            split_columns(n, m, 1 << 14, &mut split, |c, o, ld| f(c, o, ld, m)).unwrap();
            let mut whole = vec![0f32; m * n];
            f(0..n, &mut whole, n, m).unwrap();
            assert_eq!(split, whole, "m = {m}");
        }
    }

    #[test]
    fn a_split_that_panics_on_the_caller_leaves_the_threads_usable() {
        configure(3);
        let caller = std::thread::current().id();
        let panicked = std::panic::catch_unwind(|| {
            map_ranges(4096, MIN_MACS_PER_THREAD, |r| {
                if std::thread::current().id() == caller {
                    panic!("a kernel failed");
                }
                r.len()
            })
        });
        assert!(panicked.is_err());
        for _ in 0..50 {
            let parts = map_ranges(4096, MIN_MACS_PER_THREAD, |r| r.len());
            assert_eq!(parts.iter().map(|(_, n)| n).sum::<usize>(), 4096);
        }
    }
}
