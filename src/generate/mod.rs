//! Text generation over a backend: prompt in, a stream of tokens and whole-character text out.
//! No browser APIs here; `web/` drives [`Generation::step`] from an async iterator.

mod sampler;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use sampler::{GenerateOptions, Sampler};
use serde::Serialize;

use crate::cpu::{CpuModel, CpuOptions, CpuSession};
use crate::manifest::{FileRole, Manifest};
use crate::model::ModelConfig;
use crate::tokenizer::{render_chat_template, ChatMessage, IncrementalDecoder, Tokenizer};
use crate::{Error, Result};

/// A model ready to generate: graph, tokenizer and config.
pub struct Engine {
    model: Arc<CpuModel>,
    tokenizer: Arc<Tokenizer>,
    config: ModelConfig,
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

impl Engine {
    pub fn load(onnx: &[u8], tokenizer_json: &[u8], config: ModelConfig) -> Result<Self> {
        Self::from_parts(CpuModel::from_proto(crate::onnx::decode(onnx)?, &Self::cpu_options())?, tokenizer_json, config)
    }

    /// Load a packed model: `files` maps every manifest path to its bytes. Each file is checked
    /// against its SHA-256 before use; the weight shards are consumed as they are assembled.
    pub fn load_packed(manifest: &Manifest, mut files: BTreeMap<String, Vec<u8>>) -> Result<Self> {
        for f in &manifest.files {
            let bytes = files.get(&f.path).ok_or_else(|| Error::InvalidModel(format!("file `{}` was not provided", f.path)))?;
            manifest.verify_file(&f.path, bytes)?;
        }
        let take = |files: &mut BTreeMap<String, Vec<u8>>, role| {
            let path = &manifest.file(role).expect("validated manifest has this role").path;
            files.remove(path).expect("checked above")
        };
        let graph = crate::onnx::decode(&take(&mut files, FileRole::Graph))?;
        let tokenizer = take(&mut files, FileRole::Tokenizer);
        let model = CpuModel::from_proto(crate::manifest::assemble(graph, files)?, &Self::cpu_options())?;
        Self::from_parts(model, &tokenizer, manifest.config.clone())
    }

    /// The engine samples from the last position only.
    fn cpu_options() -> CpuOptions {
        CpuOptions { last_logits_only: true, ..Default::default() }
    }

    fn from_parts(model: CpuModel, tokenizer_json: &[u8], config: ModelConfig) -> Result<Self> {
        let tokenizer = Tokenizer::from_json(tokenizer_json)?;
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(Error::InvalidModel(format!(
                "tokenizer has {} tokens but the model's logits cover {}",
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        Ok(Engine { model: Arc::new(model), tokenizer: Arc::new(tokenizer), config })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A fresh KV-cache session over this engine's model.
    pub fn session(&self) -> CpuSession {
        self.model.session()
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

    /// Start generating after `prompt` (raw text, not templated).
    pub fn generate(&self, prompt: &str, opts: &GenerateOptions) -> Result<Generation> {
        let ids = self.tokenizer.encode(prompt)?;
        self.generate_ids(ids, opts)
    }

    /// Start generating after the chat `messages`.
    pub fn chat(&self, messages: &[ChatMessage], opts: &GenerateOptions) -> Result<Generation> {
        let prompt = self.apply_chat_template(messages)?;
        self.generate(&prompt, opts)
    }

    pub fn generate_ids(&self, prompt: Vec<u32>, opts: &GenerateOptions) -> Result<Generation> {
        opts.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidOption { option: "prompt", reason: "encodes to no tokens".into() });
        }
        let max = self.config.architecture.max_position_embeddings;
        if prompt.len() > max {
            return Err(Error::ContextOverflow { needed: prompt.len(), max });
        }
        let mut stop_ids = if opts.ignore_eos { Vec::new() } else { self.config.eos_token_ids.clone() };
        stop_ids.extend(&opts.stop_token_ids);
        Ok(Generation {
            session: self.model.session(),
            tokenizer: self.tokenizer.clone(),
            sampler: Sampler::new(opts),
            opts: opts.clone(),
            stop_ids,
            max_context: max,
            prompt,
            history: Vec::new(),
            detok: IncrementalDecoder::default(),
            pending: String::new(),
            finished: None,
            stats: GenerationStats::default(),
        })
    }
}

/// Timings of one generation, in milliseconds, measured by the caller's clock.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

/// An in-progress generation. Call [`Generation::step`] until it returns `None`.
pub struct Generation {
    session: CpuSession,
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
}

impl Generation {
    /// Produce the next token, or `None` once finished. The first call runs the prefill.
    pub fn step(&mut self) -> Result<Option<TokenEvent>> {
        if self.finished.is_some() {
            return Ok(None);
        }
        if self.stats.generated_tokens >= self.opts.max_tokens {
            return Ok(self.finish(FinishReason::MaxTokens));
        }
        let mut logits = if self.history.is_empty() {
            let prompt = std::mem::take(&mut self.prompt);
            let l = self.session.forward(&prompt)?;
            self.stats.prompt_tokens = prompt.len();
            self.history = prompt;
            l
        } else {
            if self.session.len() >= self.max_context {
                return Err(Error::ContextOverflow { needed: self.session.len() + 1, max: self.max_context });
            }
            let last = *self.history.last().expect("history holds the prompt");
            self.session.forward(&[last])?
        };
        if logits.iter().any(|l| !l.is_finite()) {
            return Err(Error::Inference("model produced NaN or infinite logits".into()));
        }
        let id = self.sampler.sample(&mut logits, &self.history);
        self.history.push(id);
        self.stats.generated_tokens += 1;
        if self.stop_ids.contains(&id) {
            let text = std::mem::take(&mut self.pending) + &self.detok.flush(&self.tokenizer)?;
            self.finished = Some(FinishReason::Eos);
            return Ok(Some(TokenEvent { token_id: id, text }));
        }
        self.pending += &self.detok.push(&self.tokenizer, id)?;
        let mut text = self.release_text();
        if self.finished.is_none() && self.stats.generated_tokens >= self.opts.max_tokens {
            self.pending += &self.detok.flush(&self.tokenizer)?;
            text += &self.flush();
            self.finished = Some(FinishReason::MaxTokens);
        }
        Ok(Some(TokenEvent { token_id: id, text }))
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
