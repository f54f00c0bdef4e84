//! The model loader: manifest, then every file from the cache or the network, verified.
//!
//! Plain Rust over two traits, so the policy is tested natively: [`Fetcher`] (network, hashing,
//! timers: `fetch` + WebCrypto on the web) and [`ShardStore`] (the cache). Policy:
//! - at most `concurrency` files in flight; each verified file is kept where the backend holds
//!   it (a JS `Uint8Array` on the web) until the engine copies its tensors out of it, one shard
//!   at a time, so the weights never sit whole in wasm memory beside the tensors cut from them;
//! - [`Loader::load_version`] builds the engine while the files arrive: graph, weight shards in
//!   name order, tokenizer; a file is not started when the files fetched ahead of the engine
//!   (in flight or waiting) would hold more than [`LOOKAHEAD_BYTES`] with it, unless none is
//!   ahead or the engine waits for it, so the model is never held whole outside the engine;
//! - cache first: a hit is re-hashed before use (the store is not trusted); a mismatch evicts
//!   the entry and falls through to the network;
//! - network errors and retryable HTTP statuses (408, 425, 429, 5xx) are retried with
//!   exponential backoff; a downloaded file that fails its SHA-256 is fetched once more, then
//!   the load fails with `IntegrityError` naming it;
//! - a verified download is stored before it counts as loaded, and the model record is written
//!   last, so an interrupted load leaves only whole, verified shards (the next load resumes
//!   from them) and never a record naming a missing shard;
//! - when the store is out of quota the load goes on from memory: a `QuotaError` warning,
//!   this model's partial entries dropped, nothing else written (or an error with
//!   `strict_quota`).
//!
//! [`Loader::load_version`] is the whole sequence `Engine.load`, `engine.update()` and a
//! rollback run: manifest, the skip checks of an update, files, engine.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::task::{Poll, Waker};

use futures_util::future::poll_fn;

use serde::Serialize;

use crate::generate::{Engine, EngineOptions};
use crate::ota::{Skip, VersionInfo};
use crate::package::manifest::{sha256_hex, Manifest, ManifestLimits};
use crate::package::{Blob, Package};
use crate::store::{self, ModelRecord, ShardStore, StoreError};
use crate::{Error, Result};

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchError {
    Aborted,
    /// The server answered with this HTTP status.
    Status(u16),
    /// No answer (offline, reset, DNS, a body cut short, a server gone silent).
    Network(String),
    /// Retrying cannot help (the download buffer could not be allocated).
    Fatal(String),
}

impl FetchError {
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Aborted => false,
            FetchError::Status(s) => matches!(s, 408 | 425 | 429 | 500..=599),
            FetchError::Network(_) => true,
            FetchError::Fatal(_) => false,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Aborted => write!(f, "aborted"),
            FetchError::Status(s) => write!(f, "HTTP {s}"),
            FetchError::Network(m) | FetchError::Fatal(m) => write!(f, "{m}"),
        }
    }
}

/// What the loader needs from the platform besides the store.
#[allow(async_fn_in_trait)]
pub trait Fetcher {
    type Blob: Blob;
    /// GET `url`. `expected_bytes` is the manifest's size when known; `on_bytes` is told how
    /// many bytes have arrived so far.
    async fn fetch(&self, url: &str, expected_bytes: Option<u64>, on_bytes: &dyn Fn(u64)) -> Result<Self::Blob, FetchError>;
    /// Lower-case hex SHA-256 of `blob`.
    async fn sha256(&self, blob: &Self::Blob) -> String;
    /// Wait `ms` milliseconds; `Err(Aborted)` if aborted meanwhile.
    async fn sleep(&self, ms: u32) -> Result<(), FetchError>;
    fn aborted(&self) -> bool;
    /// Abort every fetch and sleep in flight (they end with `Err(Aborted)`): the load has
    /// failed, and a download that would only be thrown away must not keep the load waiting.
    fn cancel(&self);
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> f64;
}

/// Exponential backoff: retry `n` (from 1) waits `base_delay_ms × 2^(n-1)`, at most `max_delay_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base_delay_ms: u32,
    pub max_delay_ms: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_retries: 4, base_delay_ms: 250, max_delay_ms: 4000 }
    }
}

impl RetryPolicy {
    pub fn delay_ms(&self, retry: u32) -> u32 {
        let shift = retry.saturating_sub(1).min(16);
        self.base_delay_ms.saturating_mul(1 << shift).min(self.max_delay_ms)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Files in flight at once.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Fail with `QuotaError` instead of loading from memory when the cache is full.
    pub strict_quota: bool,
    /// The manifest's expected SHA-256 (lower-case hex; see [`parse_integrity`]): a manifest
    /// with other bytes, fetched or cached, is refused (`IntegrityError`), like Subresource
    /// Integrity. The manifest holds every file's hash, so this pins the whole model.
    pub integrity: Option<String>,
    /// Bounds the manifest must keep (file size, count, total).
    pub limits: ManifestLimits,
    /// A download that receives nothing for this long fails (and is retried); 0: no limit.
    /// Applied by the platform's [`Fetcher`].
    pub idle_timeout_ms: u32,
    /// The whole load fails (`TimeoutError`) after this long; 0: no limit. Applied by the
    /// platform's [`Fetcher`], which cancels what is in flight.
    pub deadline_ms: u32,
    /// How far [`Loader::load_version`]'s downloads may get ahead of the engine build, in
    /// bytes of files in flight or verified and waiting ([`LOOKAHEAD_BYTES`]).
    pub lookahead_bytes: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            concurrency: 4,
            retry: RetryPolicy::default(),
            strict_quota: false,
            integrity: None,
            limits: ManifestLimits::default(),
            idle_timeout_ms: 30_000,
            deadline_ms: 0,
            lookahead_bytes: LOOKAHEAD_BYTES,
        }
    }
}

/// An `integrity` value: `sha256-<base64>` (as in Subresource Integrity) or 64 hex digits;
/// returns lower-case hex.
pub fn parse_integrity(s: &str) -> Result<String> {
    let bad = || Error::InvalidOption { option: "integrity", reason: "must be `sha256-<base64>` or 64 hex digits".into() };
    if let Some(b64) = s.strip_prefix("sha256-") {
        let bytes = base64_decode(b64).filter(|b| b.len() == 32).ok_or_else(bad)?;
        return Ok(crate::package::manifest::hex(&bytes));
    }
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(s.to_ascii_lowercase());
    }
    Err(bad())
}

/// Standard base64 with `=` padding (what SRI hashes use).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let pad = s.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for quad in s.chunks(4) {
        let mut v = 0u32;
        for &c in quad {
            let d = if c == b'=' { 0 } else { ALPHABET.iter().position(|&a| a == c)? as u32 };
            v = v << 6 | d;
        }
        out.extend_from_slice(&v.to_be_bytes()[1..]);
    }
    out.truncate(out.len() - pad);
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    Cache,
    Network,
}

/// Progress events (`onProgress` in JS), a tagged union on `type`. `loaded` never decreases,
/// `total` never changes, a file's last byte counts only once it is verified and stored, and
/// the sequence ends with `ready`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum LoadEvent {
    Manifest { model_id: String, model_version: String, total: u64, files: usize, source: Source },
    Progress { loaded: u64, total: u64, file: String, source: Source },
    Retry { file: String, attempt: u32, delay_ms: u32, reason: String },
    /// A cached entry failed its SHA-256 check and was deleted; the file is fetched again.
    Evicted { file: String, sha256: String },
    /// Something the app should know that did not stop the load (`QuotaError`, `StoreError`).
    Warning { name: String, message: String, needed: Option<u64>, available: Option<u64> },
    /// The engine is built (emitted by the caller after [`Loader::files`]).
    Ready { loaded: u64, total: u64, from_cache: usize, from_network: usize },
}

/// Byte accounting behind [`LoadEvent::Progress`]: per file, the most bytes seen so far (capped
/// one short of its size until it is committed), so retries never move `loaded` backwards.
#[derive(Debug, Clone)]
pub struct Progress {
    sizes: Vec<u64>,
    seen: Vec<u64>,
    done: Vec<bool>,
    loaded: u64,
}

impl Progress {
    pub fn new(sizes: Vec<u64>) -> Self {
        let n = sizes.len();
        Progress { sizes, seen: vec![0; n], done: vec![false; n], loaded: 0 }
    }

    pub fn total(&self) -> u64 {
        self.sizes.iter().sum()
    }

    pub fn loaded(&self) -> u64 {
        self.loaded
    }

    /// `bytes` of file `i` have arrived; the new `loaded` if it grew.
    pub fn partial(&mut self, i: usize, bytes: u64) -> Option<u64> {
        let b = bytes.min(self.sizes[i].saturating_sub(1));
        if self.done[i] || b <= self.seen[i] {
            return None;
        }
        self.loaded += b - self.seen[i];
        self.seen[i] = b;
        Some(self.loaded)
    }

    /// File `i` is verified and stored: all its bytes count.
    pub fn commit(&mut self, i: usize) -> u64 {
        if !self.done[i] {
            self.loaded += self.sizes[i] - self.seen[i];
            self.seen[i] = self.sizes[i];
            self.done[i] = true;
        }
        self.loaded
    }
}

/// `path` relative to the folder of `base` (a manifest URL); manifest paths are plain names.
pub fn resolve_url(base: &str, path: &str) -> String {
    let base = base.split(['?', '#']).next().unwrap_or(base);
    match base.rfind('/') {
        Some(i) => format!("{}{path}", &base[..=i]),
        None => path.to_string(),
    }
}

/// A manifest and where it came from.
#[derive(Debug, Clone)]
pub struct ManifestSource {
    pub manifest: Manifest,
    pub json: String,
    pub source: Source,
}

/// What [`Loader::files`] hands back: every file's verified bytes, by path.
#[derive(Debug)]
pub struct Loaded<B> {
    pub files: BTreeMap<String, B>,
    pub from_cache: usize,
    pub from_network: usize,
    /// The whole model is in the store and its record written.
    pub cached: bool,
    /// `(needed, available)` bytes when the store ran out of quota.
    pub quota: Option<(u64, u64)>,
}

pub struct Loader<'a, F: Fetcher, S: ShardStore<Blob = F::Blob>> {
    pub fetcher: &'a F,
    /// `None`: no cache (`cache: 'none'`).
    pub store: Option<&'a S>,
    pub options: LoadOptions,
    pub on_event: &'a dyn Fn(LoadEvent),
}

/// Shared by the workers of one [`Loader::files`] call. No borrow is held across an `await`.
struct State<B> {
    queue: RefCell<VecDeque<usize>>,
    error: RefCell<Option<Error>>,
    progress: RefCell<Progress>,
    files: RefCell<BTreeMap<String, B>>,
    /// Bytes of this model known to be in the store.
    stored_bytes: Cell<u64>,
    /// Stop writing to the store (quota or a store failure).
    store_off: Cell<bool>,
    quota: Cell<Option<(u64, u64)>>,
    from_cache: Cell<usize>,
    from_network: Cell<usize>,
    /// Workers still running; none left and a file not there: it will not come.
    workers: Cell<usize>,
    /// `Some(bytes)`: the engine is built while the files arrive, and a file is not started
    /// when `ahead` would pass this (`LoadOptions::lookahead_bytes`); `None`: every file is
    /// collected.
    lookahead: Option<u64>,
    /// Bytes of the files started and not yet taken by the engine build.
    ahead: Cell<u64>,
    /// The file the engine build waits for, and its waker.
    wanted: Cell<Option<usize>>,
    build_waker: RefCell<Option<Waker>>,
    /// Workers waiting to start a file.
    start_wakers: RefCell<Vec<Waker>>,
    /// The build is over (built or failed): nothing more is taken, every file may start.
    build_over: Cell<bool>,
    /// The build failed before the downloads did: its error is the load's.
    build_failed: Cell<bool>,
    /// The whole model is in the store and its record written.
    cached: Cell<bool>,
    /// A file failed (`error` says how): the load has failed.
    fetch_failed: Cell<bool>,
}

/// How many bytes of files [`Loader::load_version`] lets the downloads get ahead of the engine
/// build (in flight or verified and waiting), so that a fast network or cache does not hold
/// the whole model outside the engine's memory: one 16 MiB shard beside the one the build waits
/// for (one always may start). 32 MiB gave a higher peak in Chromium (process-tree PSS growth
/// 1.91x of SmolLM2 int4 against 1.86x, medians of 3) and no faster load from localhost; a
/// slow network keeps the build waiting either way.
pub const LOOKAHEAD_BYTES: u64 = 16 << 20;

impl<B> State<B> {
    fn new(manifest: &Manifest, has_store: bool, workers: usize, lookahead: Option<u64>) -> Self {
        State {
            queue: RefCell::new(consumption_order(manifest).into()),
            error: RefCell::new(None),
            progress: RefCell::new(Progress::new(manifest.files.iter().map(|f| f.bytes).collect())),
            files: RefCell::new(BTreeMap::new()),
            stored_bytes: Cell::new(0),
            store_off: Cell::new(!has_store),
            quota: Cell::new(None),
            from_cache: Cell::new(0),
            from_network: Cell::new(0),
            workers: Cell::new(workers),
            lookahead,
            ahead: Cell::new(0),
            wanted: Cell::new(None),
            build_waker: RefCell::new(None),
            start_wakers: RefCell::new(Vec::new()),
            build_over: Cell::new(false),
            build_failed: Cell::new(false),
            cached: Cell::new(false),
            fetch_failed: Cell::new(false),
        }
    }

    fn wake_build(&self) {
        if let Some(w) = self.build_waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wake_starts(&self) {
        for w in self.start_wakers.take() {
            w.wake();
        }
    }

    /// The load has failed: stop every worker and the build.
    fn fail(&self, e: Error) {
        self.error.borrow_mut().get_or_insert(e);
        self.fetch_failed.set(true);
        self.wake_build();
        self.wake_starts();
    }

    /// The next file a worker may start, once it may: `None` when there is none or the load
    /// has failed.
    async fn next_file(&self, manifest: &Manifest) -> Option<usize> {
        poll_fn(|cx| {
            if self.fetch_failed.get() || self.build_failed.get() {
                return Poll::Ready(None);
            }
            let Some(&i) = self.queue.borrow().front() else { return Poll::Ready(None) };
            let bytes = manifest.files[i].bytes;
            let ahead = self.ahead.get();
            // The build waits for a file not started yet: the queue is in the order the build
            // asks, so it is this one or one behind it (after files the build skips).
            let build_waits = || self.wanted.get().is_some_and(|w| self.queue.borrow().contains(&w));
            let may = match self.lookahead {
                None => true,
                Some(limit) => self.build_over.get() || ahead == 0 || ahead + bytes <= limit || build_waits(),
            };
            if !may {
                self.start_wakers.borrow_mut().push(cx.waker().clone());
                return Poll::Pending;
            }
            self.queue.borrow_mut().pop_front();
            self.ahead.set(ahead + bytes);
            Poll::Ready(Some(i))
        })
        .await
    }

    /// File `path` for the engine build, once it is verified; an error when the load failed
    /// (the downloads' error is the load's) or the file will not come.
    async fn take(&self, manifest: &Manifest, path: &str) -> Result<B> {
        let i = manifest.files.iter().position(|f| f.path == path).ok_or_else(|| Error::InvalidModel(format!("file `{path}` is not in the manifest")))?;
        poll_fn(|cx| {
            if let Some(blob) = self.files.borrow_mut().remove(path) {
                self.ahead.set(self.ahead.get().saturating_sub(manifest.files[i].bytes));
                self.wanted.set(None);
                self.wake_starts();
                return Poll::Ready(Ok(blob));
            }
            if self.fetch_failed.get() {
                return Poll::Ready(Err(Error::Aborted("the model's files did not all load".into())));
            }
            if self.workers.get() == 0 {
                return Poll::Ready(Err(Error::InvalidModel(format!("file `{path}` was not provided"))));
            }
            *self.build_waker.borrow_mut() = Some(cx.waker().clone());
            if self.wanted.replace(Some(i)) != Some(i) {
                self.wake_starts();
            }
            Poll::Pending
        })
        .await
    }
}

/// The order an engine asks for a packed model's files: the graph, the weight shards by name,
/// the tokenizer, then anything else.
fn consumption_order(manifest: &Manifest) -> Vec<usize> {
    use crate::package::manifest::FileRole;
    let rank = |role: &FileRole| match role {
        FileRole::Graph => 0,
        FileRole::Weights => 1,
        FileRole::Tokenizer => 2,
    };
    let mut order: Vec<usize> = (0..manifest.files.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (&manifest.files[a], &manifest.files[b]);
        rank(&fa.role).cmp(&rank(&fb.role)).then_with(|| fa.path.cmp(&fb.path))
    });
    order
}

fn store_warning(e: &StoreError) -> LoadEvent {
    LoadEvent::Warning { name: "StoreError".into(), message: e.to_string(), needed: None, available: None }
}

fn aborted() -> Error {
    Error::Aborted("model load aborted".into())
}

impl<F: Fetcher, S: ShardStore<Blob = F::Blob>> Loader<'_, F, S> {
    fn emit(&self, e: LoadEvent) {
        (self.on_event)(e)
    }

    /// Fetch and check the manifest at `url`. When the network fails and the store holds a
    /// complete model loaded from this URL before, that model's manifest is used (offline).
    pub async fn manifest(&self, url: &str) -> Result<ManifestSource> {
        let mut retries = 0;
        let mut cached: Option<Option<ModelRecord>> = None;
        loop {
            if self.fetcher.aborted() {
                return Err(aborted());
            }
            let err = match self.fetcher.fetch(url, None, &|_| {}).await {
                Ok(blob) => return self.parse_manifest(blob.into_vec(), Source::Network).map(|m| self.announce(m)),
                Err(FetchError::Aborted) => return Err(aborted()),
                Err(e) => e,
            };
            if cached.is_none() {
                cached = Some(self.cached_manifest(url).await);
            }
            if let Some(Some(rec)) = &cached {
                let m = self.parse_manifest(rec.manifest_json.clone().into_bytes(), Source::Cache)?;
                return Ok(self.announce(m));
            }
            if !err.is_retryable() || retries >= self.options.retry.max_retries {
                return Err(Error::Network { file: url.into(), reason: err.to_string() });
            }
            retries += 1;
            let delay_ms = self.options.retry.delay_ms(retries);
            self.emit(LoadEvent::Retry { file: url.into(), attempt: retries, delay_ms, reason: err.to_string() });
            self.fetcher.sleep(delay_ms).await.map_err(|_| aborted())?;
        }
    }

    /// Check manifest bytes against the `integrity` option (before parsing a byte of them) and
    /// the manifest limits. Used for a fetched, a cached and a handed-over manifest alike.
    pub fn parse_manifest(&self, bytes: Vec<u8>, source: Source) -> Result<ManifestSource> {
        if let Some(expected) = &self.options.integrity {
            let actual = sha256_hex(&bytes);
            if &actual != expected {
                return Err(Error::ShardHashMismatch { shard: "manifest.json".into(), expected: expected.clone(), actual });
            }
        }
        let manifest = Manifest::from_json_with(&bytes, &self.options.limits)?;
        let json = String::from_utf8(bytes).map_err(|e| Error::InvalidManifest(e.to_string()))?;
        Ok(ManifestSource { manifest, json, source })
    }

    /// A manifest the app handed over: checked like a fetched one (integrity, limits), announced.
    pub fn given_manifest(&self, bytes: Vec<u8>) -> Result<ManifestSource> {
        self.parse_manifest(bytes, Source::Network).map(|m| self.announce(m))
    }

    fn announce(&self, m: ManifestSource) -> ManifestSource {
        self.emit(LoadEvent::Manifest {
            model_id: m.manifest.model_id.clone(),
            model_version: m.manifest.model_version.clone(),
            total: m.manifest.total_bytes,
            files: m.manifest.files.len(),
            source: m.source,
        });
        m
    }

    /// The newest complete cached model first loaded from `url` (with `integrity`, the newest
    /// whose manifest has that hash).
    async fn cached_manifest(&self, url: &str) -> Option<ModelRecord> {
        let store = self.store?;
        let listed = store::list_models(store).await.ok()?;
        let records = store.models().await.ok()?;
        let pinned = |r: &ModelRecord| self.options.integrity.as_ref().is_none_or(|h| sha256_hex(r.manifest_json.as_bytes()) == *h);
        listed
            .into_iter()
            .filter(|m| m.complete && m.manifest_url.as_deref() == Some(url))
            .find_map(|m| records.iter().find(|r| r.key == m.key && pinned(r)).cloned())
    }

    /// Every file of `manifest`, verified, from the store or from `base_url` (the manifest's URL;
    /// `None` when the manifest was handed over as an object: then only the cache can serve).
    pub async fn files(&self, manifest: &Manifest, manifest_json: &str, manifest_url: Option<&str>, base_url: Option<&str>) -> Result<Loaded<F::Blob>> {
        let st = self.state(manifest, None);
        self.fetch_all(&st, manifest, manifest_json, manifest_url, base_url).await?;
        Ok(Loaded { files: st.files.take(), from_cache: st.from_cache.get(), from_network: st.from_network.get(), cached: st.cached.get(), quota: st.quota.get() })
    }

    fn state(&self, manifest: &Manifest, lookahead: Option<u64>) -> State<F::Blob> {
        State::new(manifest, self.store.is_some(), self.options.concurrency.clamp(1, 64), lookahead)
    }

    /// The files of `manifest` into `st.files` as each is verified (and stored), then the
    /// model record.
    async fn fetch_all(&self, st: &State<F::Blob>, manifest: &Manifest, manifest_json: &str, manifest_url: Option<&str>, base_url: Option<&str>) -> Result<()> {
        let workers = (0..st.workers.get()).map(|_| self.worker(st, manifest, base_url));
        futures_util::future::join_all(workers).await;

        let quota = st.quota.get();
        if let (Some(store), Some(_)) = (self.store, quota) {
            // Drop this model's partial entries: without its record they only take space.
            let records = store.models().await.map_err(|e| Error::Store(e.to_string()))?;
            let mine = manifest.files.iter().map(|f| f.sha256.clone()).collect();
            store::drop_unreferenced(store, &records, mine).await.map_err(|e| Error::Store(e.to_string()))?;
        }
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.build_failed.get() {
            return Ok(());
        }
        if let (Some(store), false) = (self.store, st.store_off.get()) {
            let record = ModelRecord {
                key: store::record_key(&manifest.model_id, &manifest.model_version),
                model_sha256: manifest.model_sha256.clone(),
                model_id: manifest.model_id.clone(),
                model_version: manifest.model_version.clone(),
                manifest_url: manifest_url.map(Into::into),
                manifest_json: manifest_json.into(),
                shards: manifest.files.iter().map(|f| f.sha256.clone()).collect(),
                total_bytes: manifest.total_bytes as f64,
                stored_at: self.fetcher.now_ms(),
                rolled_back_at: None,
            };
            match store.put_model(&record).await {
                Ok(()) => st.cached.set(true),
                Err(e) => self.emit(store_warning(&e)),
            }
            // Every shard of this model is now named by its record: what no record names
            // (aborted loads of other models) only takes space.
            if st.cached.get() {
                if let Err(e) = store::collect_garbage(store).await {
                    self.emit(store_warning(&e));
                }
            }
        }
        Ok(())
    }

    async fn worker(&self, st: &State<F::Blob>, manifest: &Manifest, base_url: Option<&str>) {
        while let Some(i) = st.next_file(manifest).await {
            if let Err(e) = self.file(st, manifest, i, base_url).await {
                st.fail(e);
                // The load has failed: the other files in flight are not waited for.
                self.fetcher.cancel();
                break;
            }
        }
        st.workers.set(st.workers.get() - 1);
        st.wake_build();
    }

    async fn file(&self, st: &State<F::Blob>, manifest: &Manifest, i: usize, base_url: Option<&str>) -> Result<()> {
        let f = &manifest.files[i];
        if let Some(store) = self.store {
            match store.get(&f.sha256).await {
                Ok(Some(blob)) => {
                    if blob.len() == f.bytes && self.fetcher.sha256(&blob).await == f.sha256 {
                        st.stored_bytes.set(st.stored_bytes.get() + f.bytes);
                        st.from_cache.set(st.from_cache.get() + 1);
                        return self.accept(st, manifest, i, blob, Source::Cache);
                    }
                    drop(blob);
                    self.emit(LoadEvent::Evicted { file: f.path.clone(), sha256: f.sha256.clone() });
                    if let Err(e) = store.delete(&f.sha256).await {
                        self.store_failed(st, e);
                    }
                }
                Ok(None) => {}
                Err(e) => self.emit(store_warning(&e)),
            }
        }
        let Some(base) = base_url else {
            return Err(Error::Network { file: f.path.clone(), reason: "not in the cache, and no manifest URL to fetch it from".into() });
        };
        let url = resolve_url(base, &f.path);
        let (mut retries, mut mismatches) = (0u32, 0u32);
        let blob = loop {
            if self.fetcher.aborted() {
                return Err(aborted());
            }
            let on_bytes = |b: u64| {
                let grown = st.progress.borrow_mut().partial(i, b);
                if let Some(loaded) = grown {
                    self.emit(LoadEvent::Progress { loaded, total: manifest.total_bytes, file: f.path.clone(), source: Source::Network });
                }
            };
            match self.fetcher.fetch(&url, Some(f.bytes), &on_bytes).await {
                Ok(blob) => {
                    let actual = self.fetcher.sha256(&blob).await;
                    if blob.len() == f.bytes && actual == f.sha256 {
                        break blob;
                    }
                    mismatches += 1;
                    if mismatches > 1 {
                        return Err(Error::ShardHashMismatch { shard: f.path.clone(), expected: f.sha256.clone(), actual });
                    }
                    let reason = format!("SHA-256 mismatch ({} bytes, {actual})", blob.len());
                    self.emit(LoadEvent::Retry { file: f.path.clone(), attempt: retries + mismatches, delay_ms: 0, reason });
                }
                Err(FetchError::Aborted) => return Err(aborted()),
                Err(e) if e.is_retryable() && retries < self.options.retry.max_retries => {
                    retries += 1;
                    let delay_ms = self.options.retry.delay_ms(retries);
                    self.emit(LoadEvent::Retry { file: f.path.clone(), attempt: retries + mismatches, delay_ms, reason: e.to_string() });
                    self.fetcher.sleep(delay_ms).await.map_err(|_| aborted())?;
                }
                Err(e) => return Err(Error::Network { file: url, reason: e.to_string() }),
            }
        };
        if let (Some(store), false) = (self.store, st.store_off.get()) {
            match store.put(&f.sha256, &blob).await {
                Ok(()) => st.stored_bytes.set(st.stored_bytes.get() + f.bytes),
                Err(StoreError::Quota(msg)) => self.quota_exceeded(st, manifest, msg).await?,
                Err(e) => self.store_failed(st, e),
            }
        }
        if self.fetcher.aborted() {
            return Err(aborted());
        }
        st.from_network.set(st.from_network.get() + 1);
        self.accept(st, manifest, i, blob, Source::Network)
    }

    fn accept(&self, st: &State<F::Blob>, manifest: &Manifest, i: usize, blob: F::Blob, source: Source) -> Result<()> {
        let f = &manifest.files[i];
        st.files.borrow_mut().insert(f.path.clone(), blob);
        st.wake_build();
        let loaded = st.progress.borrow_mut().commit(i);
        self.emit(LoadEvent::Progress { loaded, total: manifest.total_bytes, file: f.path.clone(), source });
        Ok(())
    }

    fn store_failed(&self, st: &State<F::Blob>, e: StoreError) {
        if !st.store_off.replace(true) {
            self.emit(store_warning(&e));
        }
    }

    async fn quota_exceeded(&self, st: &State<F::Blob>, manifest: &Manifest, msg: String) -> Result<()> {
        if st.store_off.replace(true) {
            return Ok(());
        }
        let needed = manifest.total_bytes.saturating_sub(st.stored_bytes.get());
        let estimate = match self.store {
            Some(s) => s.estimate().await,
            None => None,
        };
        let available = estimate.map(|e| (e.quota - e.usage).max(0.0) as u64).unwrap_or(0);
        st.quota.set(Some((needed, available)));
        if self.options.strict_quota {
            return Err(Error::Quota { needed, available });
        }
        self.emit(LoadEvent::Warning {
            name: "QuotaError".into(),
            message: format!("model cache is full ({msg}): loading from memory for this visit; {needed} bytes needed, {available} available"),
            needed: Some(needed),
            available: Some(available),
        });
        Ok(())
    }
}

/// Every option name of the JS `Engine.load` (`LoadOptions` in src/web/load.rs's TypeScript;
/// tests/ts_types.rs keeps the two equal): any other is an `InvalidOptionError`.
pub const LOAD_OPTION_NAMES: &[&str] = &[
    "backend", "threads", "cache", "cacheDir", "baseUrl", "onProgress", "onEvent", "signal", "strictQuota", "concurrency", "retries", "timeoutMs",
    "idleTimeoutMs", "integrity", "maxModelBytes", "warmUp", "exactActivations",
    "gpuPrecision",
];

/// The manifest of a version to load.
#[derive(Debug, Clone)]
pub enum ManifestArg {
    Url(String),
    /// The manifest's JSON, and the URL it first came from (kept in the cache record).
    Json { bytes: Vec<u8>, url: Option<String> },
}

/// What [`Loader::load_version`] produces: a built engine and the version it runs.
pub struct LoadedVersion {
    pub engine: Engine,
    pub version: VersionInfo,
    /// The manifest's total bytes.
    pub bytes: u64,
}

impl<F: Fetcher, S: ShardStore<Blob = F::Blob>> Loader<'_, F, S> {
    /// Load a model version: the manifest (fetched, or given), then its files (cache, then
    /// network, each verified), then the engine `engine` asks for. With `unless` (the running
    /// version's `(model_sha256, model_version)`: an update), `Ok(Err(Skip))` when the manifest
    /// is that version, or one rolled back before; then nothing else is fetched. Files resolve
    /// against `base_url`, else the manifest's URL.
    pub async fn load_version(
        &self,
        arg: ManifestArg,
        base_url: Option<String>,
        engine: &EngineOptions,
        unless: Option<(&str, &str)>,
    ) -> Result<std::result::Result<LoadedVersion, Skip>> {
        let (m, manifest_url) = match arg {
            ManifestArg::Url(url) => (self.manifest(&url).await?, Some(url)),
            ManifestArg::Json { bytes, url } => (self.given_manifest(bytes)?, url),
        };
        let manifest = &m.manifest;
        if unless == Some((manifest.model_sha256.as_str(), manifest.model_version.as_str())) {
            return Ok(Err(Skip::Same));
        }
        if let (Some(_), Some(store)) = (unless, self.store) {
            let key = store::record_key(&manifest.model_id, &manifest.model_version);
            // A store that cannot answer does not block the update: the version is loaded.
            if store::was_rolled_back(store, &key, &manifest.model_sha256).await.unwrap_or(false) {
                return Ok(Err(Skip::RolledBack(manifest.model_version.clone())));
            }
        }
        let base = base_url.or_else(|| manifest_url.clone());
        // The engine is built while the files arrive, each taken as it is verified.
        let st = self.state(manifest, Some(self.options.lookahead_bytes));
        let fetch = self.fetch_all(&st, manifest, &m.json, manifest_url.as_deref(), base.as_deref());
        let build = async {
            let package = Package::streaming(manifest, |path| {
                let (st, path) = (&st, path.to_string());
                Box::pin(async move { st.take(manifest, &path).await })
            });
            let built = Engine::open_async(package, engine).await;
            st.build_over.set(true);
            if built.is_err() && !st.fetch_failed.get() {
                // The model cannot be built: the downloads stop, and the build's error is the load's.
                st.build_failed.set(true);
                self.fetcher.cancel();
            }
            st.wake_starts();
            built
        };
        let (fetched, built) = futures_util::future::join(fetch, build).await;
        let built = match (fetched, built) {
            (_, Err(e)) if st.build_failed.get() => return Err(e),
            (Err(e), _) => return Err(e),
            (Ok(()), built) => built?,
        };
        let (from_cache, from_network) = (st.from_cache.get(), st.from_network.get());
        self.emit(LoadEvent::Ready { loaded: manifest.total_bytes, total: manifest.total_bytes, from_cache, from_network });
        let version = VersionInfo {
            model_id: manifest.model_id.clone(),
            model_version: manifest.model_version.clone(),
            model_sha256: manifest.model_sha256.clone(),
            manifest_json: m.json.clone(),
            manifest_url,
            base_url: base,
        };
        Ok(Ok(LoadedVersion { engine: built, version, bytes: manifest.total_bytes }))
    }
}

/// Every file of `manifest` from `store` alone (no network), each checked against its SHA-256
/// again (a store need not be trusted): what a GPU engine's CPU fallback re-reads. A file no
/// longer stored is a `StoreError` naming it; one that fails its hash, an `IntegrityError`.
pub async fn read_stored<F: Fetcher, S: ShardStore<Blob = F::Blob>>(fetcher: &F, store: &S, manifest: &Manifest) -> Result<BTreeMap<String, F::Blob>> {
    let mut files = BTreeMap::new();
    for f in &manifest.files {
        let blob = store.get(&f.sha256).await.map_err(|e| Error::Store(format!("reading `{}` from the model cache: {e}", f.path)))?;
        let blob = blob.ok_or_else(|| Error::Store(format!("`{}` is no longer in the model cache", f.path)))?;
        let actual = fetcher.sha256(&blob).await;
        if blob.len() != f.bytes || actual != f.sha256 {
            return Err(Error::ShardHashMismatch { shard: f.path.clone(), expected: f.sha256.clone(), actual });
        }
        files.insert(f.path.clone(), blob);
    }
    Ok(files)
}

/// The CPU fallback of a GPU engine a load built ([`Engine::set_cpu_fallback`]): `manifest`'s
/// model re-read from `store` ([`read_stored`]: the verified shards that load kept,
/// nothing downloaded while the app waits on a failed step) and opened with `options` (the CPU
/// backend's). Nothing is held meanwhile. Without a store (`cache: "none"`) there is nothing to re-read:
/// a `StoreError` that says so.
pub fn stored_cpu_fallback<F, S>(fetcher: std::rc::Rc<F>, store: Option<std::rc::Rc<S>>, manifest: Manifest, options: EngineOptions) -> crate::generate::CpuFallback
where
    F: Fetcher + 'static,
    S: ShardStore<Blob = F::Blob> + 'static,
{
    Box::new(move || {
        let (fetcher, store, manifest, options) = (fetcher.clone(), store.clone(), manifest.clone(), options.clone());
        Box::pin(async move {
            let Some(store) = store else {
                return Err(Error::Store("the model was loaded with cache \"none\": no copy of it is kept to re-read; load it again (or load with a cache)".into()));
            };
            let files = read_stored(&*fetcher, &*store, &manifest).await?;
            Engine::open_async(Package::verified(&manifest, files), &options).await
        })
    })
}
