//! The shard loader's policy (cache, retries, integrity, quota, abort, progress) over a scripted
//! fetcher and the in-memory store, natively. The browser and Node runs of the same code are in
//! tests/js/.
#![cfg(not(target_arch = "wasm32"))]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use edge_llm::loader::{resolve_url, FetchError, Fetcher, LoadEvent, LoadOptions, Loaded, Loader, Progress, RetryPolicy, Source};
use edge_llm::package::manifest::{sha256_hex, FileRole, GenerationDefaults, Manifest};
use edge_llm::store::{self, MemoryStore, ShardStore};
use edge_llm::{tiny, Engine, Error};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const BASE: &str = "https://models.example/tiny/manifest.json";

/// Polls to completion; every future here is ready or yields once, so no real waker is needed.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Pending once, then ready: lets the loader's workers interleave.
struct YieldOnce(bool);
impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Status(u16),
    Offline,
    Corrupt,
    Truncate,
    /// Headers, then no byte ever: the fetch ends only when cancelled.
    Stall,
}

#[derive(Default)]
struct ScriptedFetcher {
    files: HashMap<String, Vec<u8>>,
    faults: RefCell<HashMap<String, VecDeque<Fault>>>,
    requests: RefCell<Vec<String>>,
    sleeps: RefCell<Vec<u32>>,
    offline: Cell<bool>,
    /// Abort once this many shard fetches have completed.
    abort_after: Cell<Option<usize>>,
    aborted: Cell<bool>,
    in_flight: Cell<usize>,
    max_in_flight: Cell<usize>,
}

impl ScriptedFetcher {
    fn new(manifest_json: &str, files: &BTreeMap<String, Vec<u8>>) -> Self {
        let mut all: HashMap<String, Vec<u8>> = files.iter().map(|(p, b)| (resolve_url(BASE, p), b.clone())).collect();
        all.insert(BASE.into(), manifest_json.as_bytes().to_vec());
        ScriptedFetcher { files: all, ..Default::default() }
    }

    fn fault(&self, path: &str, faults: &[Fault]) {
        self.faults.borrow_mut().entry(resolve_url(BASE, path)).or_default().extend(faults.iter().cloned());
    }

    fn requests_for(&self, path: &str) -> usize {
        let url = resolve_url(BASE, path);
        self.requests.borrow().iter().filter(|u| **u == url).count()
    }

    fn shard_requests(&self) -> usize {
        self.requests.borrow().iter().filter(|u| *u != BASE).count()
    }
}

impl Fetcher for ScriptedFetcher {
    type Blob = Vec<u8>;

    async fn fetch(&self, url: &str, _expected: Option<u64>, on_bytes: &dyn Fn(u64)) -> Result<Vec<u8>, FetchError> {
        self.requests.borrow_mut().push(url.into());
        self.in_flight.set(self.in_flight.get() + 1);
        self.max_in_flight.set(self.max_in_flight.get().max(self.in_flight.get()));
        YieldOnce(false).await;
        self.in_flight.set(self.in_flight.get() - 1);
        if self.aborted.get() {
            return Err(FetchError::Aborted);
        }
        if self.offline.get() {
            return Err(FetchError::Network("offline".into()));
        }
        let fault = self.faults.borrow_mut().get_mut(url).and_then(VecDeque::pop_front);
        if let Some(Fault::Stall) = fault {
            // Busy-polled by block_on: a bound turns a load that never cancels it into a failure.
            for _ in 0..1_000_000 {
                if self.aborted.get() {
                    return Err(FetchError::Aborted);
                }
                YieldOnce(false).await;
            }
            panic!("a stalled download was never cancelled");
        }
        let mut bytes = self.files.get(url).cloned().ok_or(FetchError::Status(404))?;
        match fault {
            Some(Fault::Status(s)) => return Err(FetchError::Status(s)),
            Some(Fault::Offline) => return Err(FetchError::Network("connection reset".into())),
            Some(Fault::Corrupt) => {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x40
            }
            Some(Fault::Truncate) => bytes.truncate(bytes.len() / 2),
            Some(Fault::Stall) => unreachable!("handled above"),
            None => {}
        }
        // Report progress in two halves, as a streamed body would.
        on_bytes(bytes.len() as u64 / 2);
        on_bytes(bytes.len() as u64);
        if url != BASE {
            let done = self.requests.borrow().iter().filter(|u| *u != BASE).count();
            if self.abort_after.get().is_some_and(|n| done >= n) {
                self.aborted.set(true);
            }
        }
        Ok(bytes)
    }

    async fn sha256(&self, blob: &Vec<u8>) -> String {
        sha256_hex(blob)
    }

    async fn sleep(&self, ms: u32) -> Result<(), FetchError> {
        self.sleeps.borrow_mut().push(ms);
        if self.aborted.get() {
            Err(FetchError::Aborted)
        } else {
            Ok(())
        }
    }

    fn aborted(&self) -> bool {
        self.aborted.get()
    }

    fn cancel(&self) {
        self.aborted.set(true);
    }

    fn now_ms(&self) -> f64 {
        static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_700_000_000_000);
        CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/tiny/{name}")).unwrap()
}

/// The tiny int4 model packed into several shards (as tests/fixtures/tiny-packed holds it):
/// 5 kB shards, so its 10.6 kB embedding spans three and every runtime's loader (native here,
/// Node, Chromium and Deno through the fixture) reassembles a split tensor.
fn packed(version: &str) -> (Manifest, String, BTreeMap<String, Vec<u8>>) {
    // The tiny model's generation_config.json (max_new_tokens 32: its context is 256 tokens), as
    // `edge-llm-pack pack` reads it.
    let generation = GenerationDefaults::from_generation_config(&fixture("generation_config.json")).unwrap();
    let opts = edge_llm::pack::PackOptions { shard_bytes: 5_000, model_version: version.into(), generation, ..Default::default() };
    let (m, files) = edge_llm::pack::pack(&fixture("model-int4.onnx"), &fixture("tokenizer.json"), &tiny::model_config(), &opts).unwrap();
    let json = m.to_json();
    (m, json, files.into_iter().collect())
}

type Store = MemoryStore<Vec<u8>>;

struct Run {
    result: edge_llm::Result<Loaded<Vec<u8>>>,
    events: Vec<LoadEvent>,
}

fn load(fetcher: &ScriptedFetcher, store: Option<&Store>, options: LoadOptions) -> Run {
    let events = RefCell::new(Vec::new());
    let on_event = |e: LoadEvent| events.borrow_mut().push(e);
    let loader = Loader { fetcher, store, options, on_event: &on_event };
    let result = block_on(async {
        let m = loader.manifest(BASE).await?;
        loader.files(&m.manifest, &m.json, Some(BASE), Some(BASE)).await
    });
    Run { result, events: events.into_inner() }
}

fn fast() -> LoadOptions {
    LoadOptions { concurrency: 3, retry: RetryPolicy { max_retries: 3, base_delay_ms: 10, max_delay_ms: 25 }, ..Default::default() }
}

/// The progress contract: `loaded` never decreases, `total` never changes, ends at total.
fn check_progress(events: &[LoadEvent], total: u64) {
    let mut last = 0;
    let mut n = 0;
    for e in events {
        if let LoadEvent::Progress { loaded, total: t, .. } = e {
            assert_eq!(*t, total, "total changed");
            assert!(*loaded >= last, "loaded went back from {last} to {loaded}");
            last = *loaded;
            n += 1;
        }
    }
    assert!(n > 0);
    assert_eq!(last, total, "progress must end at the total");
}

fn greedy(e: &Engine) -> Vec<u32> {
    let opts = edge_llm::GenerateOptions { max_tokens: 6, ignore_eos: true, ..Default::default() };
    let mut g = e.generate("The capital of France", &opts).unwrap();
    while g.step().unwrap().is_some() {}
    g.generated().to_vec()
}

#[test]
fn first_load_fetches_verifies_and_caches_then_the_next_load_uses_only_the_cache() {
    let (m, json, files) = packed("1.0.0");
    assert!(m.files.iter().filter(|f| f.role == FileRole::Weights).count() >= 2, "want several shards");
    let store = Store::new();
    let net = ScriptedFetcher::new(&json, &files);
    let run = load(&net, Some(&store), fast());
    let loaded = run.result.unwrap();
    assert_eq!(loaded.files, files);
    assert_eq!((loaded.from_network, loaded.from_cache, loaded.cached), (files.len(), 0, true));
    check_progress(&run.events, m.total_bytes);
    assert!(matches!(&run.events[0], LoadEvent::Manifest { source: Source::Network, .. }));
    assert!(m.files.iter().all(|f| store.contains(&f.sha256)));
    let listed = block_on(store::list_models(&store)).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].complete && listed[0].model_version == "1.0.0");

    // The engine built from what the loader returned generates like the unpacked model.
    let direct = Engine::open(edge_llm::package::Package::loose(&fixture("model-int4.onnx"), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap();
    assert_eq!(greedy(&Engine::open(edge_llm::package::Package::verified(&m, loaded.files), &Default::default()).unwrap()), greedy(&direct));

    let again = ScriptedFetcher::new(&json, &files);
    let run = load(&again, Some(&store), fast());
    let loaded = run.result.unwrap();
    assert_eq!((loaded.from_network, loaded.from_cache), (0, files.len()));
    assert_eq!(again.shard_requests(), 0, "cached shards are never fetched again");
    check_progress(&run.events, m.total_bytes);
}

#[test]
fn at_most_concurrency_files_are_in_flight() {
    let (_, json, files) = packed("1.0.0");
    for c in [1, 2, 3] {
        let net = ScriptedFetcher::new(&json, &files);
        let run = load(&net, None::<&Store>, LoadOptions { concurrency: c, ..fast() });
        run.result.unwrap();
        assert_eq!(net.max_in_flight.get(), c.min(files.len()), "concurrency {c}");
    }
}

#[test]
fn network_errors_are_retried_with_backoff_and_a_404_is_not() {
    let (m, json, files) = packed("1.0.0");
    let shard = &m.files.iter().find(|f| f.role == FileRole::Weights).unwrap().path;
    let net = ScriptedFetcher::new(&json, &files);
    net.fault(shard, &[Fault::Status(503), Fault::Offline, Fault::Status(429)]);
    let run = load(&net, None::<&Store>, fast());
    assert_eq!(run.result.unwrap().files, files);
    assert_eq!(*net.sleeps.borrow(), vec![10, 20, 25], "exponential, capped at max_delay_ms");
    assert_eq!(net.requests_for(shard), 4);
    let retries: Vec<_> = run.events.iter().filter(|e| matches!(e, LoadEvent::Retry { .. })).collect();
    assert_eq!(retries.len(), 3);
    check_progress(&run.events, m.total_bytes);

    let net = ScriptedFetcher::new(&json, &files);
    net.fault(shard, &[Fault::Offline; 4]);
    match load(&net, None::<&Store>, fast()).result {
        Err(e @ Error::Network { .. }) => assert_eq!(e.name(), "NetworkError"),
        r => panic!("{r:?}"),
    }
    assert_eq!(net.requests_for(shard), 4, "1 try + 3 retries");

    let net = ScriptedFetcher::new(&json, &files);
    net.fault(shard, &[Fault::Status(404)]);
    assert!(matches!(load(&net, None::<&Store>, fast()).result, Err(Error::Network { reason, .. }) if reason == "HTTP 404"));
    assert_eq!(net.requests_for(shard), 1, "a 404 is final");
    assert!(net.sleeps.borrow().is_empty());
}

#[test]
fn a_corrupt_or_truncated_download_is_fetched_once_more_then_is_an_integrity_error() {
    let (m, json, files) = packed("1.0.0");
    let f = m.files.iter().find(|f| f.role == FileRole::Weights).unwrap();
    for fault in [Fault::Corrupt, Fault::Truncate] {
        let store = Store::new();
        let net = ScriptedFetcher::new(&json, &files);
        net.fault(&f.path, &[fault.clone()]);
        let run = load(&net, Some(&store), fast());
        assert_eq!(run.result.unwrap().files, files, "{fault:?} once: the second download is good");
        assert_eq!(net.requests_for(&f.path), 2);
        check_progress(&run.events, m.total_bytes);

        let store = Store::new();
        let net = ScriptedFetcher::new(&json, &files);
        net.fault(&f.path, &[fault.clone(), fault.clone()]);
        match load(&net, Some(&store), fast()).result {
            Err(Error::ShardHashMismatch { shard, expected, actual }) => {
                assert_eq!((shard.as_str(), expected.as_str()), (f.path.as_str(), f.sha256.as_str()));
                assert_ne!(actual, expected);
            }
            r => panic!("{fault:?} twice: {r:?}"),
        }
        assert!(!store.contains(&f.sha256), "a bad download is never stored");
        assert!(block_on(store.models()).unwrap().is_empty());
    }
}

#[test]
fn a_cache_entry_that_fails_its_hash_is_evicted_and_fetched_again() {
    let (m, json, files) = packed("1.0.0");
    let store = Store::new();
    load(&ScriptedFetcher::new(&json, &files), Some(&store), fast()).result.unwrap();
    let f = m.files.iter().find(|f| f.role == FileRole::Weights).unwrap();
    let mut bad = files[&f.path].clone();
    bad[0] ^= 1;
    store.tamper(&f.sha256, bad);
    let net = ScriptedFetcher::new(&json, &files);
    let run = load(&net, Some(&store), fast());
    assert_eq!(run.result.unwrap().files, files);
    assert_eq!(net.shard_requests(), 1, "only the bad entry is refetched");
    assert!(run.events.iter().any(|e| matches!(e, LoadEvent::Evicted { file, .. } if *file == f.path)));
    assert_eq!(block_on(store.get(&f.sha256)).unwrap().unwrap(), files[&f.path], "the store holds the good bytes again");
}

#[test]
fn an_abort_leaves_whole_verified_shards_and_the_next_load_resumes_from_them() {
    let (m, json, files) = packed("1.0.0");
    let store = Store::new();
    let net = ScriptedFetcher::new(&json, &files);
    net.abort_after.set(Some(2));
    let run = load(&net, Some(&store), LoadOptions { concurrency: 1, ..fast() });
    assert!(matches!(run.result, Err(ref e @ Error::Aborted(_)) if e.name() == "AbortError"), "{:?}", run.result);
    assert!(block_on(store.models()).unwrap().is_empty(), "no record for a partial model");
    let kept = block_on(store.keys()).unwrap();
    assert!(!kept.is_empty() && kept.len() < files.len(), "{} of {} stored", kept.len(), files.len());
    for sha in &kept {
        assert_eq!(sha256_hex(&block_on(store.get(sha)).unwrap().unwrap()), *sha, "only whole, verified entries");
    }

    let net = ScriptedFetcher::new(&json, &files);
    let run = load(&net, Some(&store), fast());
    let loaded = run.result.unwrap();
    assert_eq!(loaded.files, files);
    assert_eq!((loaded.from_cache, loaded.from_network), (kept.len(), files.len() - kept.len()));
    assert_eq!(net.shard_requests(), files.len() - kept.len(), "resumed: stored shards not fetched again");
    check_progress(&run.events, m.total_bytes);
}

#[test]
fn a_full_store_loads_from_memory_with_a_quota_warning_and_drops_partial_entries() {
    let (m, json, files) = packed("1.0.0");
    let store = Store::with_quota(m.total_bytes / 2);
    let run = load(&ScriptedFetcher::new(&json, &files), Some(&store), LoadOptions { concurrency: 1, ..fast() });
    let loaded = run.result.unwrap();
    assert_eq!(loaded.files, files, "the load still succeeds");
    assert!(!loaded.cached);
    let (needed, available) = loaded.quota.unwrap();
    assert!(needed > available && needed <= m.total_bytes, "needed {needed}, available {available}");
    let warning = run.events.iter().find_map(|e| match e {
        LoadEvent::Warning { name, needed, available, .. } if name == "QuotaError" => Some((*needed, *available)),
        _ => None,
    });
    assert_eq!(warning, Some((Some(needed), Some(available))));
    assert_eq!(store.usage(), 0, "partial entries dropped");
    assert!(block_on(store.models()).unwrap().is_empty());
    check_progress(&run.events, m.total_bytes);

    let store = Store::with_quota(m.total_bytes / 2);
    let opts = LoadOptions { strict_quota: true, ..fast() };
    match load(&ScriptedFetcher::new(&json, &files), Some(&store), opts).result {
        Err(e @ Error::Quota { .. }) => assert_eq!(e.name(), "QuotaError"),
        r => panic!("{r:?}"),
    }
    assert_eq!(store.usage(), 0);
}

#[test]
fn offline_after_a_cached_load_uses_the_cached_manifest_and_shards() {
    let (m, json, files) = packed("1.0.0");
    let store = Store::new();
    load(&ScriptedFetcher::new(&json, &files), Some(&store), fast()).result.unwrap();
    let net = ScriptedFetcher::new(&json, &files);
    net.offline.set(true);
    let run = load(&net, Some(&store), fast());
    assert_eq!(run.result.unwrap().files, files);
    assert!(matches!(&run.events[0], LoadEvent::Manifest { source: Source::Cache, .. }));
    check_progress(&run.events, m.total_bytes);

    let empty = Store::new();
    assert!(matches!(load(&net, Some(&empty), fast()).result, Err(Error::Network { .. })), "offline and nothing cached");
}

#[test]
fn an_incompatible_manifest_is_refused_before_any_shard_is_fetched() {
    let (_, json, files) = packed("1.0.0");
    for (from, to) in [("\"min_runtime_version\": \"0.1.0\"", "\"min_runtime_version\": \"99.0.0\""), ("\"format_version\": 2", "\"format_version\": 3")] {
        assert!(json.contains(from), "{from}");
        let net = ScriptedFetcher::new(&json.replace(from, to), &files);
        match load(&net, None::<&Store>, fast()).result {
            Err(e) => assert_eq!(e.name(), "IncompatibleModelError", "{e}"),
            Ok(_) => panic!("loaded an incompatible model"),
        }
        assert_eq!(net.shard_requests(), 0);
    }
}

#[test]
fn versions_share_shards_and_deleting_one_keeps_the_others_shards() {
    let (m1, json1, files1) = packed("1.0.0");
    let (m2, json2, files2) = packed("2.0.0");
    let store = Store::new();
    load(&ScriptedFetcher::new(&json1, &files1), Some(&store), fast()).result.unwrap();
    let net = ScriptedFetcher::new(&json2, &files2);
    load(&net, Some(&store), fast()).result.unwrap();
    assert_eq!(net.shard_requests(), 0, "2.0.0 has the same files: content addressing shares them");
    let listed = block_on(store::list_models(&store)).unwrap();
    assert_eq!(listed.iter().map(|m| m.model_version.as_str()).collect::<Vec<_>>(), ["2.0.0", "1.0.0"], "newest first");

    assert_eq!(block_on(store::delete_model(&store, &m1.model_id, Some("1.0.0"))).unwrap(), 1);
    assert!(m2.files.iter().all(|f| store.contains(&f.sha256)), "still used by 2.0.0");
    assert_eq!(block_on(store::evict_old_versions(&store, &m2.model_id, 1)).unwrap(), 0);
    assert_eq!(block_on(store::delete_model(&store, &m2.model_id, None)).unwrap(), 1);
    assert_eq!(store.usage(), 0);
}

#[test]
fn evict_old_versions_keeps_the_newest() {
    let store = Store::new();
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        let (_, json, files) = packed(v);
        load(&ScriptedFetcher::new(&json, &files), Some(&store), fast()).result.unwrap();
    }
    let id = packed("1.0.0").0.model_id;
    assert_eq!(block_on(store::evict_old_versions(&store, &id, 2)).unwrap(), 1);
    let left: Vec<_> = block_on(store::list_models(&store)).unwrap().into_iter().map(|m| m.model_version).collect();
    assert_eq!(left, ["1.2.0", "1.1.0"]);
}

#[test]
fn progress_holds_back_the_last_byte_until_commit() {
    let mut p = Progress::new(vec![10, 5]);
    assert_eq!(p.partial(0, 4), Some(4));
    assert_eq!(p.partial(0, 2), None, "a retry starting over does not move loaded back");
    assert_eq!(p.partial(0, 10), Some(9), "not 100 % before the file is verified and stored");
    assert_eq!(p.commit(0), 10);
    assert_eq!(p.partial(0, 10), None);
    assert_eq!(p.commit(1), 15);
    assert_eq!(p.total(), 15);
}

#[test]
fn urls_resolve_next_to_the_manifest() {
    assert_eq!(resolve_url("https://h/m/v1/manifest.json?x=1#f", "model.data.000"), "https://h/m/v1/model.data.000");
    assert_eq!(resolve_url("/models/tiny/", "model.onnx"), "/models/tiny/model.onnx");
    assert_eq!(resolve_url("manifest.json", "model.onnx"), "model.onnx");
    assert_eq!(RetryPolicy::default().delay_ms(1), 250);
    assert_eq!(RetryPolicy::default().delay_ms(3), 1000);
    assert_eq!(RetryPolicy::default().delay_ms(30), 4000);
}

/// tests/fixtures/tiny-packed (used by the JS tests) is exactly what `pack` makes of the tiny
/// int4 model with 5 kB shards: `EDGE_LLM_BLESS=1 cargo test --features pack --test loader` rewrites it.
#[test]
fn the_committed_packed_fixture_is_up_to_date() {
    let (m, json, files) = packed("1.0.0");
    let dir = format!("{FIXTURES}/tiny-packed");
    if std::env::var_os("EDGE_LLM_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/manifest.json"), &json).unwrap();
        for (p, b) in &files {
            std::fs::write(format!("{dir}/{p}"), b).unwrap();
        }
    }
    assert_eq!(std::fs::read_to_string(format!("{dir}/manifest.json")).unwrap(), json, "regenerate tests/fixtures/tiny-packed");
    for f in &m.files {
        assert_eq!(std::fs::read(format!("{dir}/{}", f.path)).unwrap(), files[&f.path], "{}", f.path);
    }
}

#[test]
fn a_fatal_error_cancels_the_downloads_in_flight() {
    let (m, json, files) = packed("1.0.0");
    let net = ScriptedFetcher::new(&json, &files);
    // With 3 in flight: one stalls for ever, another fails for good (404 is not retried).
    net.fault(&m.files[1].path, &[Fault::Stall]);
    net.fault(&m.files[2].path, &[Fault::Status(404)]);
    match load(&net, None::<&Store>, fast()).result {
        Err(Error::Network { reason, .. }) => assert!(reason.contains("404"), "{reason}"),
        other => panic!("expected the 404, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn integrity_pins_the_manifest_online_and_offline() {
    use edge_llm::loader::parse_integrity;
    // The SRI form and hex give the same hash (SHA-256 of no bytes).
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(parse_integrity("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").unwrap(), empty);
    assert_eq!(parse_integrity(&empty.to_uppercase()).unwrap(), empty);
    for bad in ["", "sha256-", "sha256-abc", "sha384-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", &empty[1..], "md5-x"] {
        assert_eq!(parse_integrity(bad).unwrap_err().name(), "InvalidOptionError", "{bad}");
    }

    let (_, json, files) = packed("1.0.0");
    let pinned = |h: &str| LoadOptions { integrity: Some(h.into()), ..fast() };
    let good = sha256_hex(json.as_bytes());
    let other = sha256_hex(b"another manifest");
    let store = Store::new();
    let net = ScriptedFetcher::new(&json, &files);
    load(&net, Some(&store), pinned(&good)).result.unwrap();

    let net = ScriptedFetcher::new(&json, &files);
    let e = load(&net, Some(&store), pinned(&other)).result.unwrap_err();
    assert_eq!(e.name(), "IntegrityError", "{e}");
    assert_eq!(net.shard_requests(), 0, "refused before any shard");

    // Offline: the cached manifest is used only if it is the pinned one. A record planted in
    // the store (same URL, newer, its chat template changed) is passed over.
    let mut rec = block_on(store.models()).unwrap().remove(0);
    rec.manifest_json = json.replace("\"model_version\": \"1.0.0\"", "\"model_version\": \"1.0.1\"");
    assert_ne!(rec.manifest_json, json);
    rec.key = "planted".into();
    rec.stored_at += 1e6;
    block_on(store.put_model(&rec)).unwrap();
    let net = ScriptedFetcher::new(&json, &files);
    net.offline.set(true);
    let run = load(&net, Some(&store), pinned(&good));
    run.result.unwrap();
    assert!(matches!(&run.events[0], LoadEvent::Manifest { source: Source::Cache, model_version, .. } if model_version == "1.0.0"));
    let e = load(&net, Some(&store), pinned(&other)).result.unwrap_err();
    assert_eq!(e.name(), "NetworkError", "offline, and no cached manifest has the pinned hash: {e}");
}

/// Shards no record names (an aborted load) are collected after the next cached load; names
/// that are not SHA-256 hex (from a planted record) never reach the store.
#[test]
fn orphaned_shards_are_collected_and_planted_names_never_reach_the_store() {
    let (m, json, files) = packed("1.0.0");
    let store = Store::new();
    let orphan = sha256_hex(b"an aborted load's shard");
    block_on(store.put(&orphan, &b"an aborted load's shard".to_vec())).unwrap();
    load(&ScriptedFetcher::new(&json, &files), Some(&store), fast()).result.unwrap();
    assert!(!store.contains(&orphan), "collected after the load");
    assert!(m.files.iter().all(|f| store.contains(&f.sha256)));

    let planted = store::ModelRecord { key: "evil@1".into(), model_id: "evil".into(), shards: vec!["../../etc/passwd".into(), "".into()], ..block_on(store.models()).unwrap().remove(0) };
    block_on(store.put_model(&planted)).unwrap();
    block_on(store.put("../../etc/passwd", &vec![1])).unwrap();
    assert_eq!(block_on(store::delete_model(&store, "evil", None)).unwrap(), 1);
    assert!(store.contains("../../etc/passwd"), "a name that is not a SHA-256 is never deleted");
    assert_eq!(block_on(store::collect_garbage(&store)).unwrap(), 0);
    assert!(m.files.iter().all(|f| store.contains(&f.sha256)), "still named by 1.0.0's record");
}

/// `Loader::load_version`, the sequence `Engine.load`, `update()` and a rollback run: a URL
/// gives a working engine and its version; as an update, the running version and a version
/// rolled back before are skipped after the manifest alone; a manifest handed over as JSON
/// loads from the cache only.
#[test]
fn load_version_builds_the_engine_and_skips_what_an_update_must_not_load() {
    use edge_llm::loader::{LoadedVersion, ManifestArg};
    use edge_llm::ota::Skip;
    let (m, json, files) = packed("2.0.0");
    let store = Store::new();
    let events = RefCell::new(Vec::new());
    let on_event = |e: LoadEvent| events.borrow_mut().push(e);
    let version_of = |net: &ScriptedFetcher, arg: ManifestArg, unless: Option<(&str, &str)>| {
        let loader = Loader { fetcher: net, store: Some(&store), options: fast(), on_event: &on_event };
        block_on(loader.load_version(arg, None, &Default::default(), unless))
    };

    let net = ScriptedFetcher::new(&json, &files);
    let LoadedVersion { engine, version, bytes } = version_of(&net, ManifestArg::Url(BASE.into()), None).unwrap().unwrap();
    let direct = Engine::open(edge_llm::package::Package::loose(&fixture("model-int4.onnx"), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap();
    assert_eq!(greedy(&engine), greedy(&direct));
    assert_eq!((version.model_version.as_str(), version.model_sha256.as_str(), bytes), ("2.0.0", m.model_sha256.as_str(), m.total_bytes));
    assert_eq!((version.manifest_url.as_deref(), version.base_url.as_deref(), version.manifest_json.as_str()), (Some(BASE), Some(BASE), json.as_str()));
    assert!(matches!(events.borrow().last(), Some(LoadEvent::Ready { from_network, .. }) if *from_network == files.len()));

    // As an update from the version the manifest names: nothing but the manifest is fetched.
    let net = ScriptedFetcher::new(&json, &files);
    let same = version_of(&net, ManifestArg::Url(BASE.into()), Some((&m.model_sha256, "2.0.0"))).unwrap();
    assert!(matches!(same, Err(Skip::Same)));
    assert_eq!(net.shard_requests(), 0);

    // Rolled back before (its cache record says so): skipped, from any running version.
    let key = store::record_key(&m.model_id, "2.0.0");
    assert!(block_on(store::mark_rolled_back(&store, &key, &m.model_sha256, 1.0)).unwrap());
    let net = ScriptedFetcher::new(&json, &files);
    let rolled = version_of(&net, ManifestArg::Url(BASE.into()), Some(("sha-of-1", "1.0.0"))).unwrap();
    assert!(matches!(rolled, Err(Skip::RolledBack(v)) if v == "2.0.0"));
    assert_eq!(net.shard_requests(), 0);

    // Not an update: loaded all the same. The manifest given as JSON, with no URL to fetch
    // from, is served by the cache.
    let offline = ScriptedFetcher::new(&json, &BTreeMap::new());
    let arg = ManifestArg::Json { bytes: json.clone().into_bytes(), url: None };
    let v = version_of(&offline, arg, None).unwrap().unwrap();
    assert_eq!(greedy(&v.engine), greedy(&direct));
    assert_eq!((v.version.manifest_url, offline.shard_requests()), (None, 0));
}

/// A shard as the engine build holds it, counted while it lives: what a JS `Uint8Array` costs
/// the page until the build has cut its tensors out and dropped it.
struct Counted {
    bytes: Vec<u8>,
    live: std::rc::Rc<Cell<u64>>,
    peak: std::rc::Rc<Cell<u64>>,
}

impl Counted {
    fn new(bytes: Vec<u8>, live: &std::rc::Rc<Cell<u64>>, peak: &std::rc::Rc<Cell<u64>>) -> Self {
        live.set(live.get() + bytes.len() as u64);
        peak.set(peak.get().max(live.get()));
        Counted { bytes, live: live.clone(), peak: peak.clone() }
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(self.bytes.clone(), &self.live, &self.peak)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.set(self.live.get() - self.bytes.len() as u64);
    }
}

impl edge_llm::package::Blob for Counted {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn into_vec(self) -> Vec<u8> {
        self.bytes.clone()
    }
    fn copy_range(&self, offset: u64, dst: &mut [u8]) {
        dst.copy_from_slice(&self.bytes[offset as usize..offset as usize + dst.len()]);
    }
}

/// [`ScriptedFetcher`] handing out [`Counted`] blobs, counting the weight shards (`weights`, by URL).
struct CountingFetcher {
    net: ScriptedFetcher,
    weights: Vec<String>,
    live: std::rc::Rc<Cell<u64>>,
    peak: std::rc::Rc<Cell<u64>>,
}

impl Fetcher for CountingFetcher {
    type Blob = Counted;
    async fn fetch(&self, url: &str, expected: Option<u64>, on_bytes: &dyn Fn(u64)) -> Result<Counted, FetchError> {
        let bytes = self.net.fetch(url, expected, on_bytes).await?;
        if self.weights.iter().any(|w| w == url) {
            Ok(Counted::new(bytes, &self.live, &self.peak))
        } else {
            Ok(Counted::new(bytes, &Default::default(), &Default::default()))
        }
    }
    async fn sha256(&self, blob: &Counted) -> String {
        sha256_hex(&blob.bytes)
    }
    async fn sleep(&self, ms: u32) -> Result<(), FetchError> {
        self.net.sleep(ms).await
    }
    fn aborted(&self) -> bool {
        self.net.aborted()
    }
    fn cancel(&self) {
        self.net.cancel()
    }
    fn now_ms(&self) -> f64 {
        self.net.now_ms()
    }
}

/// `Engine.load` builds the engine while the shards arrive: however many downloads may run
/// at once, the shards held outside the engine (downloaded and not yet cut into tensors) stay
/// within the lookahead plus the shards one tensor spans, not the whole model as when every
/// file is collected first (`Loader::files`), from the network and from the cache alike; the
/// engine is the same.
#[test]
fn the_engine_is_built_while_the_shards_arrive_and_they_are_never_all_held() {
    use edge_llm::loader::{LoadedVersion, ManifestArg};
    let (m, json, files) = packed("3.0.0");
    let shard = |f: &&edge_llm::package::manifest::FileEntry| f.role == FileRole::Weights;
    let weights: u64 = m.files.iter().filter(shard).map(|f| f.bytes).sum();
    let largest = m.files.iter().filter(shard).map(|f| f.bytes).max().unwrap();
    assert!(m.files.iter().filter(shard).count() >= 8, "the fixture has many shards");
    let direct = Engine::open(edge_llm::package::Package::loose(&fixture("model-int4.onnx"), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap();
    let on_event = |_: LoadEvent| {};
    let (live, peak) = (std::rc::Rc::new(Cell::new(0)), std::rc::Rc::new(Cell::new(0)));
    let urls = m.files.iter().filter(shard).map(|f| resolve_url(BASE, &f.path)).collect::<Vec<_>>();
    let counting = || CountingFetcher { net: ScriptedFetcher::new(&json, &files), weights: urls.clone(), live: live.clone(), peak: peak.clone() };
    // The cache the last run reads: filled by a load that collects every file.
    let store = MemoryStore::<Counted>::new();
    let filler = counting();
    let loader = Loader { fetcher: &filler, store: Some(&store), options: fast(), on_event: &on_event };
    block_on(async {
        let mf = loader.manifest(BASE).await.unwrap();
        let all = loader.files(&mf.manifest, &mf.json, Some(BASE), Some(BASE)).await.unwrap();
        // Collecting every file first holds them all.
        assert_eq!(all.files.values().map(|b| b.bytes.len() as u64).sum::<u64>(), m.total_bytes);
        // The store's copies and every shard collected.
        assert_eq!(peak.get(), 2 * weights);
    });
    for (source, concurrency) in [("network", 1), ("network", 4), ("cache", 4)] {
        let fetcher = counting();
        let options = LoadOptions { concurrency, lookahead_bytes: 2 * largest, ..fast() };
        let loader = Loader { fetcher: &fetcher, store: (source == "cache").then_some(&store), options, on_event: &on_event };
        // The cache's own copies are counted too: count from here.
        let before = live.get();
        peak.set(before);
        let LoadedVersion { engine, .. } = block_on(loader.load_version(ManifestArg::Url(BASE.into()), None, &Default::default(), None)).unwrap().unwrap();
        assert_eq!(greedy(&engine), greedy(&direct), "{source}");
        assert_eq!(fetcher.net.shard_requests(), if source == "cache" { 0 } else { files.len() }, "{source}");
        assert_eq!(live.get(), before, "{source}: every file dropped once built");
        // Weight shards held at most: the lookahead and the shards of the tensor being cut
        // (the embedding spans three).
        let held = peak.get() - before;
        eprintln!("{source}, {concurrency} at once: {held} bytes of shards held at most, of {weights}");
        assert!(held <= 5 * largest, "{source}, {concurrency} at once: {held} bytes held of {weights}");
    }
}

/// A download that fails while the engine is being built is the load's error (not the build's
/// "file missing"), and a model the engine cannot build stops the downloads: the files after
/// the graph are not all fetched.
#[test]
fn while_building_a_failed_download_is_the_error_and_a_failed_build_stops_the_downloads() {
    use edge_llm::loader::ManifestArg;
    let (m, json, files) = packed("3.1.0");
    let on_event = |_: LoadEvent| {};
    let last_shard = m.files.iter().filter(|f| f.role == FileRole::Weights).map(|f| f.path.clone()).max().unwrap();
    let net = ScriptedFetcher::new(&json, &files);
    net.fault(&last_shard, &[Fault::Status(404)]);
    let loader = Loader { fetcher: &net, store: None::<&Store>, options: fast(), on_event: &on_event };
    let e = block_on(loader.load_version(ManifestArg::Url(BASE.into()), None, &Default::default(), None)).err().expect("a 404 fails the load");
    assert!(matches!(&e, Error::Network { file, .. } if file.ends_with(&last_shard)), "{e}");

    // A graph that is not ONNX, under a manifest that names its bytes: the build fails first.
    let mut files = files;
    let graph = m.files.iter().find(|f| f.role == FileRole::Graph).unwrap().path.clone();
    files.insert(graph.clone(), b"not an onnx graph".to_vec());
    let mut bad = m.clone();
    for f in bad.files.iter_mut().filter(|f| f.path == graph) {
        f.bytes = 17;
        f.sha256 = sha256_hex(b"not an onnx graph");
    }
    bad.total_bytes = bad.files.iter().map(|f| f.bytes).sum();
    bad.model_sha256 = bad.expected_model_hash();
    let json = bad.to_json();
    Manifest::from_json(json.as_bytes()).expect("a valid manifest for the bad graph");
    let net = ScriptedFetcher::new(&json, &files);
    let loader = Loader { fetcher: &net, store: None::<&Store>, options: LoadOptions { concurrency: 1, ..fast() }, on_event: &on_event };
    let e = block_on(loader.load_version(ManifestArg::Url(BASE.into()), None, &Default::default(), None)).err().expect("not a graph");
    assert!(matches!(&e, Error::InvalidModel(m) if m.contains("not an ONNX protobuf")), "{e}");
    assert!(net.shard_requests() < files.len(), "{} of {} files fetched after the graph failed", net.shard_requests(), files.len());
}
