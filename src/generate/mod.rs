//! Text generation over a backend: prompt in, a stream of tokens and whole-character text out.
//! No browser APIs here; `web/` drives [`Generation::step`] from an async iterator.
//!
//! Every generation publishes its conversation state to its engine after each token (sharing
//! the cache tensors, no copy): [`Engine::save_state`] serialises it, [`Engine::restore_state`]
//! puts one back, [`Engine::resume`] continues an unfinished generation bit-identically, and a
//! new `chat` reuses the longest common token prefix of the cache instead of recomputing it.

mod sampler;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

pub use crate::backend::SampleParams;
pub use sampler::{argmax, sample_with, GenerateOptions, Sampler};
use serde::Serialize;
pub use state::SessionState;

use crate::backend::{ready, Backend, BackendInfo, BackendKind, Session, StepFuture};
use crate::cpu::{CpuBackend, CpuModel, CpuOptions};
use crate::package::{Blob, Package};
use crate::model::ModelConfig;
use crate::tokenizer::{render_chat_template, ChatMessage, IncrementalDecoder, Tokenizer};
use crate::{Error, Result};

/// A monotonic clock in milliseconds. `web/` installs `performance.now`.
pub type Clock = fn() -> f64;

#[cfg(not(target_arch = "wasm32"))]
fn default_clock() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
}

/// `std::time::Instant` panics on wasm32-unknown-unknown: no timings until `web/` installs a
/// clock ([`install_clock`]; an engine's own is [`Engine::set_clock`]).
#[cfg(target_arch = "wasm32")]
fn default_clock() -> f64 {
    INSTALLED_CLOCK.get().map_or(0.0, |c| c())
}

#[cfg(target_arch = "wasm32")]
static INSTALLED_CLOCK: std::sync::OnceLock<Clock> = std::sync::OnceLock::new();

/// The clock engines time with before [`Engine::set_clock`] (the `auto` probe at load): `web/`
/// installs `performance.now` at start. Natively `std::time::Instant` serves.
pub fn install_clock(clock: Clock) {
    #[cfg(target_arch = "wasm32")]
    let _ = INSTALLED_CLOCK.set(clock);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = clock;
}

/// What an engine shares with its generations.
#[derive(Default)]
struct Shared {
    /// The conversation of the latest generation step (or of `restore_state`).
    last: Mutex<Option<SessionState>>,
    /// Statistics of the latest generation.
    stats: Mutex<GenerationStats>,
    disposed: AtomicBool,
}

/// Opens the engine's model again on the CPU backend (`BackendKind::Wasm`), from where its
/// verified files are kept (a folder, the model store): what a GPU engine falls back to when
/// its device is lost. See [`Engine::set_cpu_fallback`].
pub type CpuFallback = Box<dyn FnMut() -> StepFuture<'static, Result<Engine>>>;

/// The backend an engine runs on, shared with its generations: the generation whose step meets
/// a lost GPU device swaps the CPU backend in here.
struct BackendSlot {
    backend: RefCell<Rc<dyn Backend>>,
    /// Why this backend: `auto`'s choice, or the fallback's.
    reason: RefCell<Option<String>>,
    fallback: RefCell<Option<CpuFallback>>,
    fingerprint: [u8; 32],
}

impl BackendSlot {
    fn get(&self) -> Rc<dyn Backend> {
        self.backend.borrow().clone()
    }

    /// After `why` (the device's loss) failed a step: open the CPU engine and take its backend.
    /// `Ok(None)` when there is no fallback; its own error when it failed (then the next
    /// failing step tries it again).
    async fn fall_back(&self, why: &str) -> Result<Option<Rc<dyn Backend>>> {
        let Some(mut open) = self.fallback.borrow_mut().take() else { return Ok(None) };
        let opened = open().await.and_then(|cpu| {
            if cpu.slot.fingerprint != self.fingerprint || cpu.slot.get().info().name != "wasm" {
                return Err(Error::InvalidModel("the fallback opened another model, or not on the CPU backend".into()));
            }
            Ok(cpu.slot.get())
        });
        match opened {
            Ok(backend) => {
                *self.backend.borrow_mut() = backend.clone();
                *self.reason.borrow_mut() = Some(format!("the CPU: the GPU device was lost ({why})"));
                Ok(Some(backend))
            }
            Err(e) => {
                *self.fallback.borrow_mut() = Some(open);
                Err(e.context(&format!("the GPU device was lost ({why}) and opening the model on the CPU failed")))
            }
        }
    }
}

/// A model ready to generate: graph, tokenizer and config.
pub struct Engine {
    slot: Rc<BackendSlot>,
    tokenizer: Arc<Tokenizer>,
    config: ModelConfig,
    /// Identifies the model a saved state belongs to.
    fingerprint: [u8; 32],
    shared: Arc<Shared>,
    clock: Clock,
    /// What an app's options are applied over: a packed model's manifest `generation`.
    defaults: GenerateOptions,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.dispose();
    }
}

/// One generated token and the text it completed (possibly empty while a multi-byte
/// character is still incomplete).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenEvent {
    pub token_id: u32,
    pub text: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FinishReason {
    Eos,
    StopString,
    MaxTokens,
}

/// How to open an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub backend: BackendKind,
    /// The CPU backend's plan options (the engine always samples from the last position).
    pub cpu: CpuOptions,
    /// Run [`Engine::warm_up`] once the engine is built (`Engine.load` sets it unless the app
    /// says `warmUp: false`).
    pub warm_up: bool,
    /// The GPU backend's (a lower binding limit).
    pub gpu: crate::gpu::GpuOptions,
}

impl Engine {
    /// The one way in: a model package, on the backend `options` choose. For the CPU backend
    /// (and natively, where GPU calls complete when polled) this runs synchronously; in a
    /// browser the WebGPU backend needs [`Engine::open_async`].
    pub fn open<'a, B: Blob + 'a>(package: Package<'a, B>, options: &EngineOptions) -> Result<Self> {
        ready(Self::open_async(package, options))
            .unwrap_or_else(|| Err(Error::UnsupportedBackend("opening a WebGPU engine waits for the event loop: use the asynchronous load".into())))
    }

    /// [`Engine::open`] on every platform. Weights first, while the heap is empty, so they lie
    /// packed with no holes between; the tokenizer last: its many small allocations (and its
    /// parse's transient) fit in the holes tract's graph rewriting leaves (wasm's heap never
    /// shrinks).
    pub async fn open_async<'a, B: Blob + 'a>(mut package: Package<'a, B>, options: &EngineOptions) -> Result<Self> {
        let mut graph = package.graph().await?;
        // Files as third-party tools write them, made loadable (`cpu::import`) before either
        // backend reads the graph: the GPU's plan sees what the CPU backend computes (a QDQ
        // int4 weight as MatMulNBits). The packer ran the same fixes on packed files.
        crate::cpu::import::prepare(&mut graph)?;
        let (gpu, reason) = choose_backend(options, &package.config().architecture, &graph).await?;
        let backend: Box<dyn Backend> = match gpu {
            Some(ctx) => Box::new(crate::gpu::GpuBackend::open(ctx, &mut package, &graph).await?),
            None => {
                let cpu = CpuOptions { last_logits_only: true, ..options.cpu.clone() };
                let model = if package.is_packed() {
                    CpuModel::from_shards(graph, &mut package, &cpu).await?
                } else {
                    CpuModel::from_proto(graph, &cpu)?
                };
                Box::new(CpuBackend(Arc::new(model)))
            }
        };
        let tokenizer = package.tokenizer().await?;
        let mut engine = Self::from_backend(backend, tokenizer, package.config().clone(), package.fingerprint()?)?;
        *engine.slot.reason.borrow_mut() = reason;
        if let Some(g) = package.generation() {
            engine.defaults = GenerateOptions::with_defaults(g);
        }
        if options.warm_up {
            engine.warm_up().await?;
        }
        Ok(engine)
    }

    /// Prompt tokens of [`Engine::warm_up`]'s prefill: more than one GEMM register tile
    /// (6 rows), so the prefill kernels' full and partial tiles both run.
    pub const WARM_UP_TOKENS: usize = 8;

    /// Text [`Engine::warm_up`] tokenizes (and drops): words, punctuation, digits and spaces.
    const WARM_UP_TEXT: &'static str = "What is the capital of France? Answer in one sentence, then name 2 rivers.";

    /// Tokenizes a short text and runs the CPU model once, on a short prefill and one decode
    /// step, in a session of its own that is then dropped: the conversation, stats and sampler
    /// are untouched. Why: a browser runs new wasm code in its baseline compiler first and
    /// optimizes a function only once it has run enough, so without this the user's first
    /// request pays for the slow tier (issue #16: TTFT 743 ms on the first request after load,
    /// 502 ms on the next). The GPU backend's pipelines are built at load; it is not run here.
    pub async fn warm_up(&self) -> Result<()> {
        // The first request also tokenizes its prompt: the pre-tokenizer's regex is built on its
        // first use (SmolLM2's, the single-thread package in Node: 24 ms, then 0 ms).
        let _ = self.tokenizer.encode(Self::WARM_UP_TEXT);
        let backend = self.backend();
        if !backend.steps_are_sync() {
            return Ok(());
        }
        let context = self.config.architecture.max_position_embeddings;
        let n = Self::WARM_UP_TOKENS.min(context.saturating_sub(1));
        if n == 0 {
            return Ok(());
        }
        // Any ids the model embeds: the arithmetic does not depend on which.
        let vocab = backend.vocab_size() as u32;
        let prompt: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 1) % vocab).collect();
        let mut session = backend.session();
        session.forward(&prompt).await?;
        session.forward(&prompt[..1]).await?;
        Ok(())
    }

    fn from_backend(backend: Box<dyn Backend>, tokenizer: Tokenizer, config: ModelConfig, fingerprint: [u8; 32]) -> Result<Self> {
        if tokenizer.vocab_size() > backend.vocab_size() {
            return Err(Error::InvalidModel(format!(
                "tokenizer has {} tokens but the model's logits cover {}",
                tokenizer.vocab_size(),
                backend.vocab_size()
            )));
        }
        let slot = BackendSlot { backend: RefCell::new(Rc::from(backend)), reason: RefCell::default(), fallback: RefCell::default(), fingerprint };
        Ok(Engine {
            slot: Rc::new(slot),
            tokenizer: Arc::new(tokenizer),
            config,
            fingerprint,
            shared: Arc::default(),
            clock: default_clock,
            defaults: GenerateOptions::default(),
        })
    }

    /// The options generation uses where an app gives none: a packed model's manifest
    /// `generation` defaults, else [`GenerateOptions::default`]. Apps' options are applied over
    /// them with [`GenerateOptions::overlay`].
    pub fn default_options(&self) -> &GenerateOptions {
        &self.defaults
    }

    /// Use `clock` (milliseconds) for generation statistics.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// SHA-256 identifying the model (graph, tokenizer, config); saved states carry it.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// Which backend computes the model, and where its KV cache lives.
    pub fn backend_info(&self) -> BackendInfo {
        BackendInfo { reason: self.slot.reason.borrow().clone(), ..self.backend().info() }
    }

    /// The GPU device the engine runs on, if it runs on one.
    pub fn gpu_device(&self) -> Option<wgpu::Device> {
        self.backend().gpu_device()
    }

    fn backend(&self) -> Rc<dyn Backend> {
        self.slot.get()
    }

    /// How to open this model on the CPU if the GPU device is lost: the step that meets the
    /// loss fails with [`Error::GpuDeviceLost`], opens it, and the engine runs on the CPU from
    /// then on (that generation's next step too, recomputing its tokens so far; the
    /// conversation cached on the GPU is gone). Nothing is kept meanwhile: `open` reads the
    /// model again from where its files are. Without it, calls keep failing by name; when it
    /// fails, the step fails with its error (its own name, the loss in the message), and the
    /// next step that meets the loss tries it again.
    pub fn set_cpu_fallback(&self, open: CpuFallback) {
        *self.slot.fallback.borrow_mut() = Some(open);
    }

    /// Whether the KV cache lives in the CPU plan's state rather than in explicit past/present
    /// tensors.
    pub fn kv_cache_folded(&self) -> bool {
        self.backend().info().kv_cache == "folded"
    }

    /// How many nodes of each op kind the backend runs (see [`CpuModel::plan_ops`]).
    pub fn plan_ops(&self) -> std::collections::BTreeMap<String, usize> {
        self.backend().plan_ops()
    }

    /// Statistics of the latest generation.
    pub fn stats(&self) -> GenerationStats {
        self.shared.stats.lock().expect("not poisoned").clone()
    }

    /// The conversation the next `chat` continues from (the latest generation's, or restored).
    pub fn state(&self) -> Option<SessionState> {
        self.shared.last.lock().expect("not poisoned").clone()
    }

    /// Serialise the current conversation: KV cache, its tokens and, when saved mid-generation,
    /// the sampler and stream position needed to [`Engine::resume`] it. Versioned and
    /// checksummed; see [`state`] for the layout.
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let s = self.state().unwrap_or_else(|| SessionState { kv: Default::default(), tokens: Vec::new(), resume: None });
        let s = if s.tokens.is_empty() { SessionState { kv: state::KvSource::Saved(self.backend().session().snapshot()?), ..s } } else { s };
        state::encode(&s, &self.fingerprint, self.backend().kv_layout())
    }

    /// Replace the current conversation with one saved by [`Engine::save_state`] (of this model).
    /// Bad bytes give [`Error::InvalidState`] and leave the current conversation as it was.
    pub fn restore_state(&self, bytes: &[u8]) -> Result<()> {
        let limits = state::Limits {
            layout: self.backend().kv_layout(),
            context: self.config.architecture.max_position_embeddings,
            vocab: self.backend().vocab_size(),
        };
        let s = state::decode(bytes, &self.fingerprint, limits)?;
        *self.shared.last.lock().expect("not poisoned") = Some(s);
        Ok(())
    }

    /// Forget the current conversation (the next `chat` starts from an empty cache).
    pub fn clear_state(&self) {
        *self.shared.last.lock().expect("not poisoned") = None;
    }

    /// Continue the unfinished generation of the current conversation (after
    /// [`Engine::restore_state`], or one that was dropped mid-way): the tokens that follow are
    /// those the uninterrupted generation would have produced.
    pub fn resume(&self) -> Result<Generation> {
        let s = self.state().ok_or_else(|| Error::InvalidState("there is no conversation to resume".into()))?;
        let r = s.resume.clone().ok_or_else(|| Error::InvalidState("the conversation has no unfinished generation".into()))?;
        let session = self.backend().session_from(&s.kv.snapshot(s.tokens.len())?)?;
        let mut history = s.tokens.clone();
        history.push(r.next_token);
        let mut g = self.new_generation(session, Vec::new(), &r.options, (self.clock)());
        g.sampler = Sampler::resume(&r.options, r.rng_state);
        g.stop_ids = r.stop_ids;
        g.history = history;
        g.detok = r.detok;
        g.pending = r.pending;
        g.stats.prompt_tokens = r.prompt_tokens;
        g.stats.generated_tokens = r.generated_tokens;
        g.resumed = true;
        Ok(g)
    }

    /// Generations still alive fail with `Error::Disposed` from now on (also on drop).
    pub fn dispose(&self) {
        self.shared.disposed.store(true, Ordering::Release);
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A fresh KV-cache session over this engine's model.
    pub fn session(&self) -> Box<dyn Session> {
        self.backend().session()
    }

    /// Render `messages` with the model's chat template, ready to generate the assistant turn.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let tpl = self
            .config
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::ChatTemplate("model has no chat template".into()))?;
        render_chat_template(tpl, messages, true, &self.config.bos_token, &self.config.eos_token)
    }

    /// Start generating after `prompt` (raw text, not templated). Reuses the cached prefix
    /// only with `reuse_prefix: Some(true)`.
    pub fn generate(&self, prompt: &str, opts: &GenerateOptions) -> Result<Generation> {
        let t0 = (self.clock)();
        let ids = if opts.reuse_prefix == Some(true) { self.encode_continuing(prompt)? } else { self.tokenizer.encode(prompt)? };
        self.generate_ids_at(ids, opts, t0)
    }

    /// Start generating after the chat `messages`. Reuses the cached prefix of the current
    /// conversation unless `reuse_prefix: Some(false)`.
    pub fn chat(&self, messages: &[ChatMessage], opts: &GenerateOptions) -> Result<Generation> {
        let t0 = (self.clock)();
        let prompt = self.apply_chat_template(messages)?;
        let opts = GenerateOptions { reuse_prefix: Some(opts.reuse_prefix.unwrap_or(true)), ..opts.clone() };
        let ids = if opts.reuse_prefix == Some(true) { self.encode_continuing(&prompt)? } else { self.tokenizer.encode(&prompt)? };
        self.generate_ids_at(ids, &opts, t0)
    }

    /// Token ids of `prompt`. When it extends the text of the current conversation's cache, the
    /// cached ids come first, as the model saw them, then the encoding of the rest: a reply the
    /// model generated would often encode to other ids than it sampled (BPE has many spellings of
    /// one text), and the cache could then only be reused up to the first difference.
    fn encode_continuing(&self, prompt: &str) -> Result<Vec<u32>> {
        let cached = self.shared.last.lock().expect("not poisoned").as_ref().map(|s| s.tokens.clone()).unwrap_or_default();
        if !cached.is_empty() {
            let text = self.tokenizer.decode(&cached, false)?;
            if let Some(rest) = prompt.strip_prefix(text.as_str()).filter(|r| !r.is_empty()) {
                let mut ids = cached;
                ids.extend(self.tokenizer.encode(rest)?);
                return Ok(ids);
            }
        }
        self.tokenizer.encode(prompt)
    }

    /// Start generating after the token ids `prompt`, run as given (each must be in the
    /// vocabulary: `InvalidOption` names the first that is not).
    pub fn generate_ids(&self, prompt: Vec<u32>, opts: &GenerateOptions) -> Result<Generation> {
        self.generate_ids_at(prompt, opts, (self.clock)())
    }

    fn generate_ids_at(&self, prompt: Vec<u32>, opts: &GenerateOptions, t0: f64) -> Result<Generation> {
        opts.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidOption { option: "prompt", reason: "encodes to no tokens".into() });
        }
        // Ids given by the caller reach the embedding gather: refuse any outside the vocabulary.
        let vocab = self.backend().vocab_size();
        if let Some(id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidOption { option: "prompt", reason: format!("token id {id} is outside the vocabulary ({vocab} tokens)") });
        }
        let max = self.config.architecture.max_position_embeddings;
        if prompt.len() > max {
            return Err(Error::ContextOverflow { needed: prompt.len(), max });
        }
        let (session, reused) = if opts.reuse_prefix == Some(true) { self.session_for(&prompt)? } else { (self.backend().session(), 0) };
        let mut g = self.new_generation(session, prompt, opts, t0);
        g.stats.reused_prompt_tokens = reused;
        Ok(g)
    }

    /// A session holding the longest prefix of `prompt` found in the current conversation's
    /// cache (at most all but the last prompt token, whose logits the prefill must produce).
    fn session_for(&self, prompt: &[u32]) -> Result<(Box<dyn Session>, usize)> {
        let guard = self.shared.last.lock().expect("not poisoned");
        if let Some(s) = guard.as_ref() {
            let common = s.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
            if common > 0 {
                match s.kv.snapshot(common) {
                    Ok(kv) => {
                        drop(guard);
                        return Ok((self.backend().session_from(&kv)?, common));
                    }
                    // A browser's GPU cannot read its cache back synchronously: the prompt is
                    // computed again instead (the same tokens, without the reuse).
                    Err(Error::UnsupportedBackend(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((self.backend().session(), 0))
    }

    fn new_generation(&self, session: Box<dyn Session>, prompt: Vec<u32>, opts: &GenerateOptions, t0: f64) -> Generation {
        let sync_steps = self.backend().steps_are_sync();
        let mut stop_ids = if opts.ignore_eos { Vec::new() } else { self.config.eos_token_ids.clone() };
        stop_ids.extend(&opts.stop_token_ids);
        Generation {
            session: Arc::new(Mutex::new(Some(session))),
            tokenizer: self.tokenizer.clone(),
            sampler: Sampler::new(opts),
            opts: opts.clone(),
            stop_ids,
            max_context: self.config.architecture.max_position_embeddings,
            prompt,
            history: Vec::new(),
            detok: IncrementalDecoder::default(),
            pending: String::new(),
            finished: None,
            stats: GenerationStats::default(),
            shared: self.shared.clone(),
            clock: self.clock,
            started_at: t0,
            resumed: false,
            decode_steps: 0,
            sync_steps,
            slot: self.slot.clone(),
        }
    }
}

/// Which backend runs `graph`: a GPU context, or `None` for the CPU, and for `auto` why.
/// `webgpu` fails when there is no adapter, the GPU backend lacks what the graph needs, or the
/// model does not fit the adapter's limits even split; `auto` then uses the CPU, as it does on
/// a software adapter (SwiftShader, llvmpipe), where the CPU backend is faster.
async fn choose_backend(options: &EngineOptions, cfg: &crate::model::LlamaConfig, graph: &crate::onnx::ModelProto) -> Result<(Option<crate::gpu::GpuContext>, Option<String>)> {
    use crate::gpu::{GpuBackend, GpuContext};
    match options.backend {
        BackendKind::Wasm => Ok((None, None)),
        BackendKind::Webgpu => {
            GpuBackend::supports(cfg, graph)?;
            let ctx = GpuContext::with_options(&options.gpu).await?;
            GpuBackend::fits(cfg, graph, ctx.limits())?;
            let shapes = GpuBackend::model_shapes(cfg, graph)?;
            let tuned = tune_kernels(&ctx, cfg, &shapes, &options.gpu).await?;
            Ok((Some(ctx), tuned.and_then(|t| t.said()).map(|t| format!("the GPU, as asked: {t}"))))
        }
        BackendKind::Auto => {
            if let Err(e) = GpuBackend::supports(cfg, graph) {
                return Ok((None, Some(format!("the CPU: {e}"))));
            }
            let ctx = match crate::gpu::auto_context(&options.gpu, |limits| GpuBackend::fits(cfg, graph, limits)).await {
                Ok(ctx) => ctx,
                Err(why) => return Ok((None, Some(format!("the CPU: {why}")))),
            };
            let adapter = format!("adapter `{}`{}", ctx.adapter_info().name, if ctx.is_software() { " (a software rasterizer)" } else { "" });
            let shapes = match GpuBackend::model_shapes(cfg, graph) {
                Ok(shapes) => shapes,
                Err(e) => return Ok((None, Some(format!("the CPU: {e}")))),
            };
            // The GEMV's shape first, so the probe times the kernel the GPU would run.
            let tuning = match tune_kernels(&ctx, cfg, &shapes, &options.gpu).await {
                Ok(t) => t,
                Err(e) => return Ok((None, Some(format!("the CPU: tuning the GEMV on {adapter} failed ({e})")))),
            };
            let tuned = tuning.as_ref().and_then(|t| t.said()).map(|t| format!("; {t}")).unwrap_or_default();
            match probe(&ctx, cfg, &shapes, tuning.and_then(|t| t.step)).await {
                Ok(Some(p)) if p.gpu_ms < p.cpu_ms => Ok((Some(ctx), Some(format!("the GPU: {adapter} {}{tuned}", p.says())))),
                Ok(Some(p)) => Ok((None, Some(format!("the CPU: {adapter} {}{tuned}", p.says())))),
                Ok(None) => Ok((Some(ctx), Some(format!("the GPU: {adapter}, a model it runs (no clock to probe with)")))),
                Err(e) => Ok((None, Some(format!("the CPU: the probe on {adapter} failed ({e})")))),
            }
        }
    }
}

/// Whether `now` is a clock that runs (wasm before `web/` installs one reads 0).
fn ticks(now: Clock) -> bool {
    !(now() == 0.0 && now() == 0.0)
}

/// On a GPU (or a software adapter with `probe_software`), the kernels left to the engine in
/// the options tuned for the weights the load then binds ([`crate::gpu::probe::tune_model`]:
/// `gemv_rows.wgsl`'s shape, the prefill kernel, where the decode attention splits, how many
/// greedy steps a decode submit chains, for a step of the model's `shapes`). `None`: not
/// tuned (a CPU rasterizer, or no clock).
use crate::gpu::decode::ModelShapes;

async fn tune_kernels(ctx: &crate::gpu::GpuContext, cfg: &crate::model::LlamaConfig, shapes: &ModelShapes, options: &crate::gpu::GpuOptions) -> Result<Option<crate::gpu::probe::ModelTuning>> {
    let now: Clock = default_clock;
    if (ctx.is_software() && !options.probe_software) || !ticks(now) {
        return Ok(None);
    }
    Ok(Some(crate::gpu::probe::tune_model(ctx, cfg, crate::gpu::backend::context_len(cfg), shapes, options, now).await?))
}

/// `auto`'s estimate of a decode step on each backend, in milliseconds (see [`probe`]).
#[derive(Debug, Clone, Copy)]
struct Probe {
    gpu_ms: f64,
    cpu_ms: f64,
    step_bytes: u64,
    /// Dispatches a GPU step records beyond the probe-shaped GEMVs its bytes amount to, and
    /// what each costs (a GEMV of a few rows: the launch and barrier).
    extra_dispatches: usize,
    dispatch_ms: f64,
}

impl Probe {
    fn says(&self) -> String {
        format!(
            "timed a decode step at {:.2} ms on the GPU against {:.2} ms on one CPU thread (int4 GEMVs at the model's feed-forward shape, scaled to the {:.1} MB a step reads; on the GPU also {} more dispatches at {:.4} ms each)",
            self.gpu_ms,
            self.cpu_ms,
            self.step_bytes as f64 / 1e6,
            self.extra_dispatches,
            self.dispatch_ms
        )
    }
}

/// `auto`'s probe: a GPU decode step of the model's `shapes` as [`crate::gpu::probe::estimate_step`]
/// estimates it (`tuned`: the estimate the load's tuning made, else timed now), a token paying
/// its share of a submit of the greedy steps the context chains, against the CPU backend's
/// int4 kernel on 16-bit activations (the default decode path, one thread) at the same
/// feed-forward shape scaled to the same bytes. `None` without a clock (wasm before `web/`
/// installs one). A few milliseconds on a GPU (the shape's ~0.5 MB, a few submits).
async fn probe(ctx: &crate::gpu::GpuContext, cfg: &crate::model::LlamaConfig, shapes: &ModelShapes, tuned: Option<crate::gpu::probe::StepEstimate>) -> Result<Option<Probe>> {
    let now: Clock = default_clock;
    if !ticks(now) {
        return Ok(None);
    }
    let (n, k) = (cfg.intermediate_size.max(1), cfg.hidden_size.div_ceil(32).max(1) * 32);
    let gpu = match tuned {
        Some(step) => step,
        None => crate::gpu::probe::estimate_step(ctx, cfg, shapes, now).await?,
    };
    let step_bytes = shapes.decode_bytes();
    let cpu_ms = cpu_gemv_ms(n, k, now) * gpu.scale;
    Ok(Some(Probe { gpu_ms: gpu.ms(ctx.decode_ahead()), cpu_ms, step_bytes, extra_dispatches: gpu.extra_dispatches, dispatch_ms: gpu.dispatch_ms }))
}

/// One int4 GEMV `[n][k]` (`k` a multiple of 32) with the CPU backend's kernel on 16-bit
/// activations, in milliseconds: repeated until 20 ms have passed.
fn cpu_gemv_ms(n: usize, k: usize, now: Clock) -> f64 {
    let q4 = crate::cpu::kernels::q4::best();
    let (row, blocks) = (k / 2, k / 32);
    let (w, sw) = (vec![0x5au8; n * row], vec![0.01f32; n * blocks]);
    let (xq, sx) = (vec![3i16; k], vec![0.02f32; blocks]);
    let (t0, mut calls, mut acc) = (now(), 0usize, 0f32);
    loop {
        for j in 0..n {
            acc += (q4.dot_row_q16)(&w[j * row..(j + 1) * row], &sw[j * blocks..(j + 1) * blocks], &xq, &sx);
        }
        calls += 1;
        let t = now() - t0;
        if t >= 20.0 || calls >= 10_000 {
            std::hint::black_box(acc);
            return t / calls as f64;
        }
    }
}

/// Counts and timings of one generation; times in milliseconds by the engine's clock.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationStats {
    /// Tokens of the prompt (all of them, reused or not).
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the cached conversation instead of being recomputed.
    pub reused_prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From the call that started the generation (tokenization included) to the first token.
    pub time_to_first_token_ms: f64,
    /// The prefill forward pass (the prompt tokens not reused).
    pub prefill_ms: f64,
    /// Decode steps after the first token.
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// What a step produced: the last position's logits, or the token the device picked and the
/// sampler after that pick.
enum Next {
    Logits(Vec<f32>),
    Token(u32, Sampler),
}

/// An in-progress generation. Call [`Generation::step`] until it returns `None`.
pub struct Generation {
    /// Shared with the engine's published state (see [`state::KvSource`]).
    session: state::LiveSession,
    tokenizer: Arc<Tokenizer>,
    sampler: Sampler,
    opts: GenerateOptions,
    stop_ids: Vec<u32>,
    max_context: usize,
    prompt: Vec<u32>,
    /// Prompt then generated ids, for the repetition penalty.
    history: Vec<u32>,
    detok: IncrementalDecoder,
    /// Decoded text held back because it may be the start of a stop string.
    pending: String,
    finished: Option<FinishReason>,
    stats: GenerationStats,
    shared: Arc<Shared>,
    clock: Clock,
    started_at: f64,
    /// Continues a saved generation: its first step is a decode step, not a prefill.
    resumed: bool,
    decode_steps: usize,
    /// See [`Backend::steps_are_sync`].
    sync_steps: bool,
    slot: Rc<BackendSlot>,
}

impl Generation {
    /// Produce the next token, or `None` once finished. The first call runs the prefill.
    /// For backends whose steps complete synchronously (the CPU's); a step that has to wait
    /// for an event loop (a GPU readback in a browser) fails here: use [`Generation::step_async`].
    pub fn step(&mut self) -> Result<Option<TokenEvent>> {
        let waits = || Error::UnsupportedBackend("this backend's steps wait for the event loop: use the asynchronous step".into());
        // Refused before any work: a GPU step abandoned mid-readback would leave its buffer mapped.
        if !self.sync_steps {
            return Err(waits());
        }
        ready(self.step_async()).unwrap_or_else(|| Err(waits()))
    }

    /// [`Generation::step`] for every backend.
    pub async fn step_async(&mut self) -> Result<Option<TokenEvent>> {
        if self.shared.disposed.load(Ordering::Acquire) {
            return Err(Error::Disposed);
        }
        if self.finished.is_some() {
            return Ok(None);
        }
        if self.stats.generated_tokens >= self.opts.max_tokens {
            return Ok(self.finish(FinishReason::MaxTokens));
        }
        let t0 = (self.clock)();
        let prefill = self.history.is_empty();
        let next = if prefill {
            // The prompt stays until the prefill succeeded: a step refused (a GPU busy with
            // another generation's step) can be retried.
            let cached = self.cached()?;
            let l = self.forward(&self.prompt[cached..], &self.prompt).await;
            let l = self.or_fall_back(l).await?;
            self.stats.prompt_tokens = self.prompt.len();
            self.history = std::mem::take(&mut self.prompt);
            l
        } else {
            let cached = self.cached()?;
            if cached >= self.max_context {
                return Err(Error::ContextOverflow { needed: cached + 1, max: self.max_context });
            }
            // The last token; after a fallback to the CPU, every token so far.
            let l = self.forward(&self.history[cached.min(self.history.len() - 1)..], &self.history).await;
            self.or_fall_back(l).await?
        };
        let t1 = (self.clock)();
        if prefill {
            self.stats.prefill_ms = t1 - t0;
            self.stats.time_to_first_token_ms = t1 - self.started_at;
            let n = (self.stats.prompt_tokens - self.stats.reused_prompt_tokens) as f64;
            self.stats.prefill_tokens_per_s = if t1 > t0 { n / (t1 - t0) * 1e3 } else { 0.0 };
        } else {
            if self.resumed && self.stats.decode_ms == 0.0 {
                self.stats.time_to_first_token_ms = t1 - self.started_at;
            }
            self.stats.decode_ms += t1 - t0;
            self.decode_steps += 1;
        }
        let id = match next {
            Next::Token(id, after) => {
                self.sampler = after;
                id
            }
            Next::Logits(mut logits) => {
                if logits.iter().any(|l| !l.is_finite()) {
                    return Err(Error::Inference("model produced NaN or infinite logits".into()));
                }
                self.sampler.sample(&mut logits, &self.history)
            }
        };
        self.history.push(id);
        self.stats.generated_tokens += 1;
        let event = self.emit(id)?;
        self.publish()?;
        Ok(Some(event))
    }

    /// `r`, and after a step failed on a lost GPU device, the CPU backend swapped in (see
    /// [`Engine::set_cpu_fallback`]) with a fresh session: the next step recomputes this
    /// generation's tokens there and goes on.
    async fn or_fall_back<T>(&mut self, r: Result<T>) -> Result<T> {
        let Err(Error::GpuDeviceLost(why)) = &r else { return r };
        if let Some(cpu) = self.slot.fall_back(why).await? {
            *self.session.lock().expect("not poisoned") = Some(cpu.session());
            self.sync_steps = cpu.steps_are_sync();
            // The conversation's cache was on the GPU.
            *self.shared.last.lock().expect("not poisoned") = None;
        }
        r
    }

    /// Tokens in the session's cache.
    fn cached(&self) -> Result<usize> {
        state::with_live(&self.session, |s| s.len())
    }

    /// Run `tokens` on the session and let the backend pick the token where it can (a GPU then
    /// reads back 4 bytes, not the logits): its argmax when greedy, else its sampler with this
    /// step's number from the seeded generator, the repetition penalty over `history`. The
    /// sampler as it is after the step comes with the token (a failed step draws nothing). The
    /// session is out of its lock while the step is pending, so no lock is held across an
    /// await; a snapshot taken meanwhile finds the session busy.
    async fn forward(&self, tokens: &[u32], history: &[u32]) -> Result<Next> {
        let mut session = state::take_live(&self.session)?;
        let (params, after) = self.sampler.device_step();
        let on_device = match if self.sampler.is_greedy() { session.forward_argmax(tokens) } else { session.forward_sample(tokens, params, history) } {
            Some(step) => Some(step.await),
            None => None,
        };
        let next = match on_device {
            Some(token) => token.map(|t| Next::Token(t, after)),
            None => session.forward(tokens).await.map(Next::Logits),
        };
        *self.session.lock().expect("not poisoned") = Some(session);
        next
    }

    /// Stop rules and text for the sampled token `id`.
    fn emit(&mut self, id: u32) -> Result<TokenEvent> {
        if self.stop_ids.contains(&id) {
            let text = std::mem::take(&mut self.pending) + &self.detok.flush(&self.tokenizer)?;
            self.finished = Some(FinishReason::Eos);
            return Ok(TokenEvent { token_id: id, text });
        }
        self.pending += &self.detok.push(&self.tokenizer, id)?;
        let mut text = self.release_text();
        if self.finished.is_none() && self.stats.generated_tokens >= self.opts.max_tokens {
            self.pending += &self.detok.flush(&self.tokenizer)?;
            text += &self.flush();
            self.finished = Some(FinishReason::MaxTokens);
        }
        Ok(TokenEvent { token_id: id, text })
    }

    /// Hand the engine this generation's conversation (cache shared, not copied) and stats.
    fn publish(&mut self) -> Result<()> {
        let cached = self.cached()?;
        let resume = self.finished.is_none().then(|| state::Resume {
            options: self.opts.clone(),
            rng_state: self.sampler.rng_state(),
            next_token: *self.history.last().expect("a token was sampled"),
            prompt_tokens: self.stats.prompt_tokens,
            generated_tokens: self.stats.generated_tokens,
            stop_ids: self.stop_ids.clone(),
            detok: self.detok.clone(),
            pending: self.pending.clone(),
        });
        let state = SessionState { kv: state::KvSource::Live(self.session.clone()), tokens: self.history[..cached].to_vec(), resume };
        *self.shared.last.lock().expect("not poisoned") = Some(state);
        if self.stats.decode_ms > 0.0 {
            self.stats.decode_tokens_per_s = self.decode_steps as f64 / self.stats.decode_ms * 1e3;
        }
        *self.shared.stats.lock().expect("not poisoned") = self.stats.clone();
        Ok(())
    }

    /// Move text out of `pending` unless it may begin a stop string; end on a full match.
    fn release_text(&mut self) -> String {
        if let Some(at) = self.opts.stop_strings.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            self.pending.truncate(at);
            self.finished = Some(FinishReason::StopString);
            return std::mem::take(&mut self.pending);
        }
        let hold = self
            .opts
            .stop_strings
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(|p| p.len())
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let rest = self.pending.split_off(cut);
        std::mem::replace(&mut self.pending, rest)
    }

    fn finish(&mut self, why: FinishReason) -> Option<TokenEvent> {
        self.finished = Some(why);
        None
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }

    pub fn stats(&self) -> &GenerationStats {
        &self.stats
    }

    /// Generated ids so far.
    pub fn generated(&self) -> &[u32] {
        let n = self.stats.generated_tokens;
        &self.history[self.history.len() - n..]
    }

    /// Text held back at the end (a partial stop-string match that never completed).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}
