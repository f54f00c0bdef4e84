//! How many threads the CPU kernels use, and [`map_ranges`], which splits a range of output
//! columns across them.
//!
//! One process-wide pool (feature `threads`): natively a rayon pool built here; on wasm32 the
//! rayon global pool that `web::init_threads` starts in Web Workers (wasm-bindgen-rayon). A
//! thread count `n` means the calling thread plus `n - 1` pool workers, all claiming chunks of
//! the work; the caller then waits only for chunks already under way (on the browser's main
//! thread that wait spins, as it may not block), so `n = 2` on two cores keeps both busy
//! without a third.
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
/// (waking a worker, waiting for it) than it saves: a decode step's small projections
/// (576 × 576 in SmolLM2-135M) then stay on one thread.
pub const MIN_MACS_PER_THREAD: usize = 1 << 18;

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

/// Chunks per thread: work is claimed chunk by chunk, so a thread that starts late (a worker
/// still waking, or descheduled on a busy machine) leaves its share to the others instead of
/// holding up the caller.
const CHUNKS_PER_THREAD: usize = 4;

/// `f` over `0..total` cut into contiguous ranges, run on [`parts`] threads (the calling one
/// included); the results in range order. Each thread claims the next unclaimed range until
/// none is left, so the caller only ever waits for ranges already under way.
pub fn map_ranges<T: Send + Sync>(total: usize, macs_per_item: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<(Range<usize>, T)> {
    let t = parts(total, macs_per_item);
    if t == 1 {
        return vec![(0..total, f(0..total))];
    }
    SPLITS.fetch_add(1, Ordering::Relaxed);
    let chunks = (t * CHUNKS_PER_THREAD).min(total);
    let range = |i: usize| total * i / chunks..total * (i + 1) / chunks;
    let slots: Vec<std::sync::OnceLock<T>> = (0..chunks).map(|_| std::sync::OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            break;
        }
        let _ = slots[i].set(f(range(i)));
    };
    pool::run_on(t, &work);
    slots.into_iter().enumerate().map(|(i, v)| (range(i), v.into_inner().expect("every chunk ran"))).collect()
}

/// Fill `out` (`[m][n]`, row-major) through `f(cols, local, ld)`, which writes output columns
/// `cols` of every row to `local[r * ld + (col - cols.start)]` (the kernels' column-range entry
/// points). On one thread `f` writes `out` directly; split, each range fills its own
/// `[m][cols.len()]` block, copied into place after (a decode step's row is a few KB).
pub fn split_columns<T: Copy + Default + Send + Sync>(
    n: usize,
    m: usize,
    macs_per_col: usize,
    out: &mut [T],
    f: impl Fn(Range<usize>, &mut [T], usize) -> tract_onnx::prelude::TractResult<()> + Sync,
) -> tract_onnx::prelude::TractResult<()> {
    if parts(n, macs_per_col) == 1 {
        return f(0..n, out, n);
    }
    let blocks = map_ranges(n, macs_per_col, |cols| {
        let mut local = vec![T::default(); m * cols.len()];
        f(cols.clone(), &mut local, cols.len()).map(|()| local)
    });
    for (cols, local) in blocks {
        let (local, w) = (local?, cols.len());
        for r in 0..m {
            out[r * n + cols.start..r * n + cols.end].copy_from_slice(&local[r * w..(r + 1) * w]);
        }
    }
    Ok(())
}

#[cfg(feature = "threads")]
mod pool {
    /// Runs `work` on `t - 1` pool workers and on the calling thread, returning when all are done.
    fn scope_body<'a>(s: &rayon::Scope<'a>, t: usize, work: &'a (dyn Fn() + Sync)) {
        for _ in 1..t {
            s.spawn(move |_| work());
        }
        work();
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
                Some(pool) => pool.in_place_scope(|s| super::scope_body(s, t, work)),
                None => work(),
            }
        }
    }

    #[cfg(target_arch = "wasm32")]
    mod imp {
        use std::sync::atomic::{AtomicUsize, Ordering};

        /// Workers of the rayon global pool, once `web::init_threads` has started it.
        static WORKERS: AtomicUsize = AtomicUsize::new(0);

        /// Called by the web layer once the Web Worker pool runs. tract's own matmuls use the
        /// pool only from two workers on: the main thread waits (spinning) while they run.
        pub fn set_workers(n: usize) {
            WORKERS.store(n, Ordering::Relaxed);
            let executor = if n > 1 {
                tract_linalg::multithread::Executor::RayonGlobal
            } else {
                tract_linalg::multithread::Executor::SingleThread
            };
            tract_linalg::multithread::set_default_executor(executor);
        }

        pub fn resize(n: usize) -> usize {
            n.min(WORKERS.load(Ordering::Relaxed) + 1)
        }

        pub fn run_on(t: usize, work: &(dyn Fn() + Sync)) {
            if WORKERS.load(Ordering::Relaxed) == 0 {
                work();
            } else {
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
}
