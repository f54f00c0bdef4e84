//! `edge-llm-pack eval`: how much a quantized model loses against a reference, measured through
//! the engine users run (the CPU plan over tract and edge-llm's kernels), not a simulation.
//!
//! Every model reads the same token ids (the reference's tokenizer). For each text the
//! reference and every variant see the same windows; per scored position we keep the variant's
//! negative log-likelihood of the true next token, whether its top-1 token is the reference's,
//! and the KL divergence from the reference's next-token distribution. Measures:
//! - perplexity of each windowed text: non-overlapping windows of `window` tokens, every
//!   position but the window's first scored with the window's preceding tokens as context;
//! - `long`: one window of `long_tokens`, only its second half scored (context ≥ half of it);
//! - `rare`: perplexity over the positions (of every text) whose true next token id is at least
//!   `rare_from` (byte-level BPE numbers merges in training order: high ids are rare words);
//! - top-1 agreement and mean KL over every scored position;
//! - bundle bytes, decode tok/s (median token latency of a greedy reply) and that reply.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;

use crate::cpu::{CpuModel, CpuOptions};
use crate::generate::argmax;
use crate::package::manifest::{FileRole, Manifest};
use crate::model::ModelConfig;
use crate::tokenizer::{render_chat_template, ChatMessage, Tokenizer};
use crate::{Error, Result};

/// A model directory loaded for evaluation: unpacked (`model.onnx`, `tokenizer.json`,
/// `model_config.json`) or packed (`manifest.json` and its files).
pub struct Subject {
    pub label: String,
    pub model: Arc<CpuModel>,
    pub tokenizer: Tokenizer,
    pub config: ModelConfig,
    /// What a user downloads: the manifest's total, or the three files' sizes.
    pub bytes: u64,
}

impl Subject {
    pub fn load(label: &str, dir: &Path, options: &CpuOptions) -> Result<Self> {
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| Error::InvalidModel(format!("{}: {e}", dir.join(name).display())));
        let options = CpuOptions { last_logits_only: false, ..options.clone() };
        if dir.join("manifest.json").exists() {
            let manifest = Manifest::from_json(&read("manifest.json")?)?;
            let path = |role: FileRole| {
                let what = format!("{role:?}");
                manifest.file(role).map(|f| f.path.clone()).ok_or_else(|| Error::InvalidManifest(format!("no {what} file")))
            };
            let graph = crate::onnx::decode(&read(&path(FileRole::Graph)?)?)?;
            let model = CpuModel::from_packed(graph, |p: &str| {
                let bytes = read(p)?;
                manifest.verify_file(p, &bytes)?;
                Ok(bytes)
            }, &options)?;
            let tokenizer = Tokenizer::from_json(&read(&path(FileRole::Tokenizer)?)?)?;
            return Ok(Subject { label: label.into(), model: Arc::new(model), tokenizer, config: manifest.config.clone(), bytes: manifest.total_bytes });
        }
        let (onnx, tok, cfg) = (read("model.onnx")?, read("tokenizer.json")?, read("model_config.json")?);
        let bytes = (onnx.len() + tok.len() + cfg.len()) as u64;
        let model = CpuModel::from_proto(crate::onnx::decode(&onnx)?, &options)?;
        drop(onnx);
        Ok(Subject { label: label.into(), model: Arc::new(model), tokenizer: Tokenizer::from_json(&tok)?, config: ModelConfig::from_json(&cfg)?, bytes })
    }
}

/// One text to measure on.
#[derive(Debug, Clone)]
pub struct EvalText {
    pub name: String,
    pub text: String,
    /// Scored as one long window (see [`EvalOptions::long_tokens`]) instead of windows.
    pub long: bool,
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Tokens per window of a windowed text.
    pub window: usize,
    /// At most this many windows per text (keeps `eval` to minutes).
    pub max_windows: usize,
    /// Length of the long text's window; its second half is scored.
    pub long_tokens: usize,
    /// Positions whose true next token id is at least this count as rare.
    pub rare_from: u32,
    /// Greedy reply to this chat prompt: its tokens are timed and its text reported.
    pub prompt: String,
    pub reply_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            window: 256,
            max_windows: 4,
            long_tokens: 1536,
            rare_from: 16384,
            prompt: "What is the capital of France?".into(),
            reply_tokens: 24,
        }
    }
}

/// Sums over scored positions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub positions: usize,
    pub nll: f64,
    pub top1_agree: usize,
    pub kl: f64,
}

impl Tally {
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.positions.max(1) as f64).exp()
    }
    pub fn agreement(&self) -> f64 {
        self.top1_agree as f64 / self.positions.max(1) as f64
    }
    pub fn mean_kl(&self) -> f64 {
        self.kl / self.positions.max(1) as f64
    }
    fn add(&mut self, o: &Tally) {
        self.positions += o.positions;
        self.nll += o.nll;
        self.top1_agree += o.top1_agree;
        self.kl += o.kl;
    }
}

/// One model's results.
#[derive(Debug, Clone)]
pub struct ModelReport {
    pub label: String,
    pub bytes: u64,
    /// Per measure name (each text's name, `rare`, `all`).
    pub measures: BTreeMap<String, Tally>,
    pub decode_tok_s: f64,
    pub reply: String,
}

impl ModelReport {
    pub fn all(&self) -> Tally {
        self.measures.get("all").copied().unwrap_or_default()
    }
}

/// `log_softmax(logits)` in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = logits.iter().map(|v| (*v as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|v| *v as f64 - lse).collect()
}


/// Token windows of one text: `(ids, first scored position)`.
fn windows(ids: &[u32], text: &EvalText, opts: &EvalOptions) -> Vec<(Vec<u32>, usize)> {
    if text.long {
        let n = ids.len().min(opts.long_tokens);
        return vec![(ids[..n].to_vec(), n / 2)];
    }
    ids.chunks(opts.window).filter(|w| w.len() > 1).take(opts.max_windows).map(|w| (w.to_vec(), 1)).collect()
}

/// Logits of every position of `ids` from a fresh session.
fn logits(model: &Arc<CpuModel>, ids: &[u32]) -> Result<Vec<f32>> {
    model.session().forward_all(ids)
}

/// Score `var` against `reference` on positions `from..` of one window (logits `[len][vocab]`).
fn score(reference: &[f32], var: &[f32], ids: &[u32], from: usize, vocab: usize, rare_from: u32) -> (Tally, Tally) {
    let (mut all, mut rare) = (Tally::default(), Tally::default());
    // Position p predicts ids[p]; its logits are row p - 1.
    for p in from.max(1)..ids.len() {
        let (r, v) = (&reference[(p - 1) * vocab..p * vocab], &var[(p - 1) * vocab..p * vocab]);
        let (lr, lv) = (log_softmax(r), log_softmax(v));
        let target = ids[p] as usize;
        let kl: f64 = lr.iter().zip(&lv).map(|(a, b)| a.exp() * (a - b)).sum();
        let t = Tally { positions: 1, nll: -lv[target], top1_agree: (argmax(r) == argmax(v)) as usize, kl: kl.max(0.0) };
        all.add(&t);
        if ids[p] >= rare_from {
            rare.add(&t);
        }
    }
    (all, rare)
}

/// Greedy reply to `prompt` with the chat template: the text and the decode tok/s (median
/// per-token latency, after the prompt).
fn reply(s: &Subject, opts: &EvalOptions) -> Result<(String, f64)> {
    let msgs = [ChatMessage { role: "user".into(), content: opts.prompt.clone() }];
    let prompt = match &s.config.chat_template {
        Some(t) => render_chat_template(t, &msgs, true, &s.config.bos_token, &s.config.eos_token)?,
        None => opts.prompt.clone(),
    };
    let mut session = s.model.session();
    let mut next = argmax(&session.forward(&s.tokenizer.encode(&prompt)?)?);
    let (mut out, mut lat) = (Vec::new(), Vec::new());
    while out.len() < opts.reply_tokens && !s.config.eos_token_ids.contains(&next) {
        out.push(next);
        let t0 = Instant::now();
        next = argmax(&session.forward(&[next])?);
        lat.push(t0.elapsed().as_secs_f64());
    }
    lat.sort_by(f64::total_cmp);
    let tok_s = lat.get(lat.len() / 2).map_or(0.0, |m| 1.0 / m);
    Ok((s.tokenizer.decode(&out, true)?, tok_s))
}

/// Evaluate `reference` and every variant on `texts`. The reference is scored against itself
/// (agreement 1, KL 0) so its perplexities sit in the same table.
pub fn evaluate(reference: &Subject, variants: &[Subject], texts: &[EvalText], opts: &EvalOptions, mut progress: impl FnMut(&str)) -> Result<Vec<ModelReport>> {
    let vocab = reference.model.vocab_size();
    for v in variants {
        if v.model.vocab_size() != vocab || v.tokenizer.vocab_size() != reference.tokenizer.vocab_size() {
            return Err(Error::InvalidModel(format!("`{}` has another vocabulary than the reference", v.label)));
        }
    }
    let subjects: Vec<&Subject> = std::iter::once(reference).chain(variants).collect();
    let mut reports: Vec<ModelReport> = subjects
        .iter()
        .map(|s| ModelReport { label: s.label.clone(), bytes: s.bytes, measures: BTreeMap::new(), decode_tok_s: 0.0, reply: String::new() })
        .collect();
    for text in texts {
        let ids = reference.tokenizer.encode(&text.text)?;
        for (w, from) in windows(&ids, text, opts) {
            progress(&format!("{}: {} tokens", text.name, w.len()));
            let r = logits(&reference.model, &w)?;
            for (s, rep) in subjects.iter().zip(reports.iter_mut()) {
                let v = if std::ptr::eq(*s, reference) { r.clone() } else { logits(&s.model, &w)? };
                let (all, rare) = score(&r, &v, &w, from, vocab, opts.rare_from);
                for (key, t) in [(text.name.as_str(), all), ("all", all), ("rare", rare)] {
                    rep.measures.entry(key.into()).or_default().add(&t);
                }
            }
        }
    }
    for (s, rep) in subjects.iter().zip(reports.iter_mut()) {
        progress(&format!("{}: greedy reply", s.label));
        (rep.reply, rep.decode_tok_s) = reply(s, opts)?;
    }
    Ok(reports)
}

/// Acceptable loss of one variant: perplexity increase over the reference (all texts pooled)
/// and minimum top-1 agreement, both in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acceptance {
    pub max_ppl_increase_pct: f64,
    pub min_agreement_pct: f64,
}

/// Why a variant fails its [`Acceptance`], if it does.
pub fn check(reference: &ModelReport, variant: &ModelReport, a: &Acceptance) -> Option<String> {
    let inc = (variant.all().perplexity() / reference.all().perplexity() - 1.0) * 100.0;
    let agree = variant.all().agreement() * 100.0;
    let mut why = Vec::new();
    if inc > a.max_ppl_increase_pct {
        why.push(format!("perplexity +{inc:.2} % > +{:.2} %", a.max_ppl_increase_pct));
    }
    if agree < a.min_agreement_pct {
        why.push(format!("top-1 agreement {agree:.1} % < {:.1} %", a.min_agreement_pct));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The markdown table: one row per model, perplexity per measure with its change against the
/// reference (first report), agreement, KL, bytes, tok/s, and the replies below.
pub fn markdown(reports: &[ModelReport], texts: &[EvalText]) -> String {
    let Some(reference) = reports.first() else { return String::new() };
    let mut cols: Vec<String> = vec!["all".into()];
    cols.extend(texts.iter().map(|t| t.name.clone()));
    cols.push("rare".into());
    let mut s = String::from("| model | bytes |");
    for c in &cols {
        s += &format!(" ppl {c} |");
    }
    s += " top-1 agree | mean KL | decode tok/s |\n|---|---:|";
    s += &"---:|".repeat(cols.len() + 3);
    s += "\n";
    for r in reports {
        s += &format!("| {} | {} |", r.label, r.bytes);
        for c in &cols {
            let (t, base) = (r.measures.get(c).copied().unwrap_or_default(), reference.measures.get(c).copied().unwrap_or_default());
            if std::ptr::eq(r, reference) {
                s += &format!(" {:.3} |", t.perplexity());
            } else {
                s += &format!(" {:.3} ({:+.1} %) |", t.perplexity(), (t.perplexity() / base.perplexity() - 1.0) * 100.0);
            }
        }
        let a = r.all();
        s += &format!(" {:.1} % | {:.4} | {:.1} |\n", a.agreement() * 100.0, a.mean_kl(), r.decode_tok_s);
    }
    s += "\nScored positions:";
    for c in &cols {
        s += &format!(" {c} {},", reference.measures.get(c).map_or(0, |t| t.positions));
    }
    s.pop();
    s += ".\n\nGreedy replies:\n\n";
    for r in reports {
        s += &format!("- {}: {:?}{}\n", r.label, r.reply, if r.reply == reference.reply { "" } else { " (differs from the reference)" });
    }
    s
}

/// Sentences of `text` for the encoder measure: split after `.`, `!`, `?` or a blank line,
/// whitespace collapsed, 20 to 300 characters, at most `max`.
pub fn sentences(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let flat = para.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut start = 0;
        for (i, c) in flat.char_indices() {
            if matches!(c, '.' | '!' | '?') && flat[i + 1..].starts_with(' ') {
                out.push(flat[start..=i].trim().to_string());
                start = i + 1;
            }
        }
        out.push(flat[start..].trim().to_string());
    }
    out.retain(|s| (20..=300).contains(&s.chars().count()));
    out.truncate(max);
    out
}

/// A sentence encoder (BERT-style ONNX: `input_ids`, `attention_mask`, optional
/// `token_type_ids` int64 `[1, seq]` -> `[1, seq, hidden]`) with sentence-transformers' mean
/// pooling and L2 normalisation, through tract with edge-llm's kernels registered.
pub struct Encoder {
    plan: Arc<TypedSimplePlan>,
    inputs: Vec<String>,
}

impl Encoder {
    pub fn load(onnx: &[u8], options: &CpuOptions) -> Result<Self> {
        let e = |e: TractError| Error::InvalidModel(format!("{e:#}"));
        let proto = crate::onnx::decode(onnx)?;
        let model = crate::cpu::onnx_with_kernels(options, options.q4_kernel).model_for_proto_model(&proto).map_err(e)?;
        let inputs = model.inputs.iter().map(|o| model.node(o.node).name.clone()).collect();
        let plan = model.into_optimized().map_err(e)?.into_runnable().map_err(e)?;
        Ok(Encoder { plan, inputs })
    }

    /// The normalised sentence embedding of `ids`.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let e = |e: TractError| Error::Inference(format!("{e:#}"));
        let n = ids.len();
        let mut inputs: TVec<TValue> = tvec![];
        for name in &self.inputs {
            let v: Vec<i64> = match name.as_str() {
                "input_ids" => ids.iter().map(|t| *t as i64).collect(),
                "attention_mask" => vec![1; n],
                "token_type_ids" => vec![0; n],
                other => return Err(Error::InvalidModel(format!("unexpected encoder input `{other}`"))),
            };
            inputs.push(Tensor::from_shape(&[1, n], &v).map_err(e)?.into());
        }
        let out = self.plan.run(inputs).map_err(e)?;
        let h = out[0].to_plain_array_view::<f32>().map_err(e)?;
        let hidden = *h.shape().last().unwrap_or(&0);
        let flat = h.as_slice().ok_or_else(|| Error::Inference("encoder output not contiguous".into()))?;
        let mut mean = vec![0f32; hidden];
        for row in flat.chunks_exact(hidden) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v / n as f32;
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        Ok(mean.into_iter().map(|v| v / norm).collect())
    }
}

/// Each sentence's embedding by `encoder`. `wrap` adds what the encoder expects around a
/// sentence's ids (BERT: `[CLS]` … `[SEP]`).
pub fn encoder_embeddings(encoder: &Encoder, tokenizer: &Tokenizer, sentences: &[String], wrap: impl Fn(&[u32]) -> Vec<u32>) -> Result<Vec<Vec<f32>>> {
    sentences.iter().map(|s| encoder.embed(&wrap(&tokenizer.encode(s)?))).collect()
}

/// Cosine similarity of each sentence's embedding by `variant` to the reference's (from
/// [`encoder_embeddings`], computed once for every variant).
pub fn encoder_cosines(reference: &[Vec<f32>], variant: &Encoder, tokenizer: &Tokenizer, sentences: &[String], wrap: impl Fn(&[u32]) -> Vec<u32>) -> Result<Vec<f32>> {
    let got = encoder_embeddings(variant, tokenizer, sentences, wrap)?;
    Ok(reference.iter().zip(&got).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_a_model_against_itself_agrees_fully() {
        let logits: Vec<f32> = (0..3 * 5).map(|i| ((i * 7) % 5) as f32).collect();
        let ids = [0u32, 1, 2, 4];
        // Positions 1..4 use logits rows 0..3.
        let (all, rare) = score(&logits, &logits, &ids, 1, 5, 4);
        assert_eq!(all.positions, 3);
        assert_eq!(all.top1_agree, 3);
        assert!(all.kl.abs() < 1e-12);
        assert_eq!(rare.positions, 1);
        let expected: f64 = (1..4).map(|p| -log_softmax(&logits[(p - 1) * 5..p * 5])[ids[p] as usize]).sum();
        assert!((all.nll - expected).abs() < 1e-9);
    }

    #[test]
    fn a_flat_model_has_perplexity_of_the_vocabulary() {
        let flat = vec![0f32; 2 * 8];
        let peaked: Vec<f32> = (0..16).map(|i| if i % 8 == 3 { 5.0 } else { 0.0 }).collect();
        let (t, _) = score(&peaked, &flat, &[1, 2, 3], 1, 8, 100);
        assert!((t.perplexity() - 8.0).abs() < 1e-9);
        assert!(t.mean_kl() > 0.0);
    }

    #[test]
    fn long_texts_score_their_second_half() {
        let ids: Vec<u32> = (0..100).collect();
        let opts = EvalOptions { long_tokens: 40, window: 30, max_windows: 2, ..Default::default() };
        let long = windows(&ids, &EvalText { name: "l".into(), text: String::new(), long: true }, &opts);
        assert_eq!((long[0].0.len(), long[0].1), (40, 20));
        let w = windows(&ids, &EvalText { name: "w".into(), text: String::new(), long: false }, &opts);
        assert_eq!(w.iter().map(|(w, f)| (w.len(), *f)).collect::<Vec<_>>(), [(30, 1), (30, 1)]);
    }
}
