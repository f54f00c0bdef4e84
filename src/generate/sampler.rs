//! Token selection: greedy, temperature, top-k, top-p and repetition penalty, seeded.

use serde::{Deserialize, Serialize};

use crate::backend::SampleParams;
use crate::package::manifest::GenerationDefaults;
use crate::{Error, Result};

/// Sampling and stopping options. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 1.0 disables the penalty (CTRL-style: divide positive logits, multiply negative ones).
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Extra token ids that end generation (the model's EOS ids always do).
    pub stop_token_ids: Vec<u32>,
    /// Generation ends when the text contains one of these; the stop string is not emitted.
    pub stop_strings: Vec<String>,
    /// Keep generating past EOS (benchmarks that need a fixed number of tokens).
    pub ignore_eos: bool,
    /// Start from the longest common token prefix of the engine's current conversation
    /// instead of recomputing it. `None`: yes for `chat`, no for raw `generate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse_prefix: Option<bool>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            reuse_prefix: None,
        }
    }
}

impl GenerateOptions {
    /// Every option, named as apps spell it (the serde names); a test keeps it in step with the
    /// struct.
    pub const NAMES: &'static [&'static str] =
        &["maxTokens", "temperature", "topK", "topP", "repetitionPenalty", "seed", "stopTokenIds", "stopStrings", "ignoreEos", "reusePrefix"];

    /// The built-in options with a model's own defaults (its manifest's `generation`) over them.
    pub fn with_defaults(d: &GenerationDefaults) -> Self {
        GenerateOptions {
            max_tokens: d.max_new_tokens,
            temperature: d.temperature,
            top_p: d.top_p,
            repetition_penalty: d.repetition_penalty,
            ..GenerateOptions::default()
        }
    }

    /// These options with those an app gave (an object by option name) applied over them; a
    /// `null` value counts as not given. An unknown name is [`Error::UnknownOption`], a value of
    /// the wrong type [`Error::InvalidOption`] naming the option; ranges are [`Self::validate`]d.
    pub fn overlay(&self, given: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        let serde_json::Value::Object(mut merged) = serde_json::to_value(self).map_err(|e| Error::Inference(e.to_string()))? else {
            unreachable!("a struct serializes to an object")
        };
        for (k, v) in given {
            let Some(&name) = Self::NAMES.iter().find(|n| **n == k) else {
                return Err(Error::unknown_option(&k, Self::NAMES));
            };
            if v.is_null() {
                continue;
            }
            // One option at a time, so a type error names the option it is about.
            let mut one = merged.clone();
            one.insert(k.clone(), v.clone());
            serde_json::from_value::<GenerateOptions>(serde_json::Value::Object(one))
                .map_err(|e| Error::InvalidOption { option: name, reason: e.to_string() })?;
            merged.insert(k, v);
        }
        let opts: GenerateOptions = serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| Error::InvalidOption { option: "options", reason: e.to_string() })?;
        opts.validate()?;
        Ok(opts)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |option, reason: &str| Err(Error::InvalidOption { option, reason: reason.into() });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("topP", "must be in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetitionPenalty", "must be a finite number > 0");
        }
        if self.stop_strings.iter().any(|s| s.is_empty()) {
            return bad("stopStrings", "must not contain an empty string");
        }
        Ok(())
    }
}

/// xorshift64*: small, fast, seedable, the same on every platform.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Avoid the all-zero state.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Picks the next token from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    opts: GenerateOptions,
    rng: Rng,
}

impl Sampler {
    pub fn new(opts: &GenerateOptions) -> Self {
        Sampler { opts: opts.clone(), rng: Rng::new(opts.seed) }
    }

    /// The random generator's state: with the options, all a sampler is.
    pub fn rng_state(&self) -> u64 {
        self.rng.0
    }

    /// A sampler that continues where one with `rng_state` left off.
    pub fn resume(opts: &GenerateOptions, rng_state: u64) -> Self {
        Sampler { opts: opts.clone(), rng: Rng(rng_state) }
    }

    /// Whether [`Sampler::sample`] is the argmax of the logits as they are (no temperature, no
    /// repetition penalty): a backend may then pick the token itself.
    pub fn is_greedy(&self) -> bool {
        self.opts.temperature == 0.0 && self.opts.repetition_penalty == 1.0
    }

    /// The next step's parameters for a backend that samples on its device, and this sampler
    /// as it is after that step: the caller keeps it once the step succeeded, so a step that
    /// failed (and is retried) draws the same number.
    pub fn device_step(&self) -> (SampleParams, Sampler) {
        let mut after = self.clone();
        let uniform = if self.opts.temperature == 0.0 { 0.0 } else { after.rng.next_f32() };
        let o = &self.opts;
        (SampleParams { temperature: o.temperature, top_k: o.top_k, top_p: o.top_p, repetition_penalty: o.repetition_penalty, uniform }, after)
    }

    /// Choose a token given `logits` and the ids seen so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let (params, after) = self.device_step();
        *self = after;
        sample_with(&params, logits, history)
    }
}

/// The token [`Sampler::sample`] picks with the uniform number `p.uniform`.
///
/// The penalty and the temperature multiply by reciprocals (`l * (1 / t)`, not `l / t`): WGSL's
/// multiplication is correctly rounded, its division only within 2.5 ULP, so the GPU's
/// `sample.wgsl` computes these very values and orders the candidates as here, ties included.
pub fn sample_with(p: &SampleParams, logits: &mut [f32], history: &[u32]) -> u32 {
    let rp = p.repetition_penalty;
    if rp != 1.0 {
        let inv_rp = 1.0 / rp;
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l * inv_rp } else { *l * rp };
            }
        }
    }
    if p.temperature == 0.0 {
        return argmax(logits);
    }
    let inv_t = 1.0 / p.temperature;
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, l)| (i as u32, *l * inv_t)).collect();
    // Highest first; equal logits keep id order so a seed fully determines the result.
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|q| {
                acc += q;
                acc >= p.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let s: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= s);
    }
    let mut acc = 0.0;
    for (i, q) in probs.iter().enumerate() {
        acc += q;
        if p.uniform < acc {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

/// Index of the largest value; the lowest index wins ties.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_fields() {
        let all = GenerateOptions { reuse_prefix: Some(true), ..Default::default() };
        let serde_json::Value::Object(m) = serde_json::to_value(all).unwrap() else { panic!("an object") };
        let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
        let mut names = GenerateOptions::NAMES.to_vec();
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
    }

    fn given(json: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn overlay_applies_given_options_over_the_model_defaults() {
        let d = GenerationDefaults { max_new_tokens: 40, temperature: 0.6, top_p: 0.9, repetition_penalty: 1.1 };
        let base = GenerateOptions::with_defaults(&d);
        assert_eq!(base.overlay(given("{}")).unwrap(), base);
        let o = base.overlay(given(r#"{"maxTokens": 7, "topP": null, "stopStrings": ["END"]}"#)).unwrap();
        assert_eq!((o.max_tokens, o.temperature, o.top_p, o.repetition_penalty), (7, 0.6, 0.9, 1.1));
        assert_eq!(o.stop_strings, vec!["END".to_string()]);
    }

    #[test]
    fn overlay_rejects_unknown_and_mistyped_options_by_name() {
        let base = GenerateOptions::default();
        let e = base.overlay(given(r#"{"max_tokens": 64}"#)).unwrap_err();
        assert_eq!((e.name(), e.option()), ("InvalidOptionError", Some("max_tokens")));
        assert!(e.to_string().contains("did you mean `maxTokens`"), "{e}");
        let e = base.overlay(given(r#"{"maxTokens": "many"}"#)).unwrap_err();
        assert_eq!((e.name(), e.option()), ("InvalidOptionError", Some("maxTokens")));
        let e = base.overlay(given(r#"{"topP": 2}"#)).unwrap_err();
        assert_eq!(e.option(), Some("topP"));
    }

    fn logits() -> Vec<f32> {
        vec![0.1, 2.0, -1.0, 1.9, 0.5, 1.0]
    }

    #[test]
    fn greedy_takes_the_max() {
        let mut s = Sampler::new(&GenerateOptions::default());
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(&GenerateOptions { repetition_penalty: 1.5, ..Default::default() });
        assert_eq!(s.sample(&mut logits(), &[1]), 3);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_bounds_choice() {
        let o = GenerateOptions { temperature: 1.0, top_k: 2, seed: 7, ..Default::default() };
        let run = |o: &GenerateOptions| {
            let mut s = Sampler::new(o);
            (0..50).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        let a = run(&o);
        assert_eq!(a, run(&o));
        assert!(a.iter().all(|t| *t == 1 || *t == 3));
        assert!(a.contains(&1) && a.contains(&3));
        assert_ne!(a, run(&GenerateOptions { seed: 8, ..o.clone() }));
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(&GenerateOptions { temperature: 1.0, top_p: 0.01, seed: 3, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn invalid_options_are_named() {
        let e = GenerateOptions { top_p: 0.0, ..Default::default() }.validate().unwrap_err();
        assert!(matches!(e, Error::InvalidOption { option: "topP", .. }));
        let e = GenerateOptions { temperature: -1.0, ..Default::default() }.validate().unwrap_err();
        assert!(matches!(e, Error::InvalidOption { option: "temperature", .. }));
    }
}
