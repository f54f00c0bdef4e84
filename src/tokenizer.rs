//! HF `tokenizers` (pure-Rust, fancy-regex build so native and wasm behave the same), chat
//! templates rendered with minijinja, and a GPT-2 style byte-level BPE builder shared by the
//! tiny test model and the GGUF importer.

use std::collections::BTreeMap;

use serde::Serialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper};

use crate::{Error, Result};

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

mod lean_bpe;

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: Inner,
}

type LeanTokenizer = tokenizers::TokenizerImpl<
    lean_bpe::LeanBpe,
    tokenizers::NormalizerWrapper,
    PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// Byte-level BPE files (every GPT-2 / Llama-3 style model) get [`lean_bpe::LeanBpe`], the rest
/// `tokenizers`' own models.
enum Inner {
    Lean(LeanTokenizer),
    Generic(tokenizers::Tokenizer),
}

/// The same call on either kind of tokenizer.
macro_rules! with_inner {
    ($self:expr, $t:ident => $e:expr) => {
        match &$self.inner {
            Inner::Lean($t) => $e,
            Inner::Generic($t) => $e,
        }
    };
}

/// A tokenizer.json's parts other than its model.
struct Parts {
    truncation: Option<tokenizers::TruncationParams>,
    added_tokens: Vec<AddedToken>,
    normalizer: Option<tokenizers::NormalizerWrapper>,
    pre_tokenizer: Option<PreTokenizerWrapper>,
    post_processor: Option<tokenizers::PostProcessorWrapper>,
    decoder: Option<tokenizers::DecoderWrapper>,
}

impl Parts {
    /// Assembled as `tokenizers` assembles a file.
    fn assemble<M: tokenizers::Model>(
        self,
        model: M,
    ) -> Result<
        tokenizers::TokenizerImpl<M, tokenizers::NormalizerWrapper, PreTokenizerWrapper, tokenizers::PostProcessorWrapper, tokenizers::DecoderWrapper>,
    > {
        let mut t = tokenizers::TokenizerBuilder::new()
            .with_model(model)
            .with_normalizer(self.normalizer)
            .with_pre_tokenizer(self.pre_tokenizer)
            .with_post_processor(self.post_processor)
            .with_decoder(self.decoder)
            .with_truncation(self.truncation)
            // One sequence at a time: a file's padding (sentence-transformers ship `Fixed: 128`)
            // would append [PAD] ids the model then attends to.
            .with_padding(None)
            .build()
            .map_err(tok_err)?;
        t.add_tokens(self.added_tokens).map_err(tok_err)?;
        Ok(t)
    }
}

impl Tokenizer {
    /// Parse a `tokenizer.json`. A BPE model (every GPT-2 / Llama-3 style tokenizer) is read
    /// straight from its slice of the file into [`lean_bpe::LeanBpe`], which gives `tokenizers`'
    /// ids in well under half its memory (SmolLM2: 1.55 MB against 4.1 MB in wasm); `tokenizers`' own
    /// parse would also buffer the whole model twice more first (serde's untagged-enum `Content`,
    /// then a `serde_json::Value`), a transient of 14× the file (21 MB on wasm for SmolLM2's
    /// 1.5 MB) that leaves wasm's never-shrinking heap fragmented before the weights arrive.
    /// The rest of the file is assembled as `tokenizers` does it; other models, and BPE options
    /// the lean model does not take (dropout, subword prefix/suffix), take `tokenizers`' path.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        match Self::from_json_bpe(bytes)? {
            Some(inner) => Ok(Tokenizer { inner }),
            None => Self::from_json_generic(bytes),
        }
    }

    /// `tokenizers`' own parse (the reference for [`Tokenizer::from_json`]).
    pub fn from_json_generic(bytes: &[u8]) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err)?;
        inner.with_padding(None);
        Ok(Tokenizer { inner: Inner::Generic(inner) })
    }

    /// Whether the lean BPE model was taken (tests).
    pub fn is_lean(&self) -> bool {
        matches!(self.inner, Inner::Lean(_))
    }

    fn from_json_bpe(bytes: &[u8]) -> Result<Option<Inner>> {
        use serde_json::value::RawValue;
        #[derive(serde::Deserialize)]
        struct File<'a> {
            version: Option<String>,
            #[serde(borrow)]
            model: Option<&'a RawValue>,
            truncation: Option<tokenizers::TruncationParams>,
            #[serde(default)]
            added_tokens: Vec<AddedToken>,
            normalizer: Option<tokenizers::NormalizerWrapper>,
            pre_tokenizer: Option<PreTokenizerWrapper>,
            post_processor: Option<tokenizers::PostProcessorWrapper>,
            decoder: Option<tokenizers::DecoderWrapper>,
        }
        #[derive(serde::Deserialize)]
        struct Tag {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        // Out of line: scanning the file is the loop V8 optimizes (see `cpu::restore_constants`).
        #[inline(never)]
        fn parse<'a>(bytes: &'a [u8]) -> Result<File<'a>> {
            serde_json::from_slice(bytes).map_err(tok_err)
        }
        let f = parse(bytes)?;
        let Some(model) = f.model else { return Ok(None) };
        // The generic path also takes untagged legacy BPE files; only tagged ones come here.
        let tag: Tag = serde_json::from_str(model.get()).map_err(tok_err)?;
        if tag.kind.as_deref() != Some("BPE") || f.version.as_deref().is_some_and(|v| v != "1.0") {
            return Ok(None);
        }
        let parts = Parts {
            truncation: f.truncation,
            added_tokens: f.added_tokens,
            normalizer: f.normalizer,
            pre_tokenizer: f.pre_tokenizer,
            post_processor: f.post_processor,
            decoder: f.decoder,
        };
        if let Some(lean) = lean_bpe::LeanBpe::from_model_json(model.get()).map_err(tok_err)? {
            return Ok(Some(Inner::Lean(parts.assemble(lean)?)));
        }
        let bpe: BPE = serde_json::from_str(model.get()).map_err(tok_err)?;
        Ok(Some(Inner::Generic(parts.assemble(tokenizers::ModelWrapper::from(bpe))?.into())))
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) are matched;
    /// nothing is prepended: BOS, if a model wants one, comes from its chat template.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(with_inner!(self, t => t.encode(text, false)).map_err(tok_err)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        with_inner!(self, t => t.decode(ids, skip_special)).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        with_inner!(self, t => t.token_to_id(token))
    }

    pub fn vocab_size(&self) -> usize {
        with_inner!(self, t => t.get_vocab_size(true))
    }
}

/// Emits text as tokens arrive, only ever whole UTF-8 characters: the deltas concatenate to
/// the decode of all tokens. (The prefix/read-offset scheme of HF text-generation-inference.)
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Push one token; returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{fffd}') && full.is_char_boundary(prefix.len()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// `prefix_offset <= read_offset <= ids.len()`, which `push` and `flush` slice by: always
    /// true of a decoder built here, to be checked on one deserialised from a saved state.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.prefix_offset <= self.read_offset && self.read_offset <= self.ids.len() {
            return Ok(());
        }
        Err(format!(
            "detokenizer offsets {}..{} outside its {} ids",
            self.prefix_offset,
            self.read_offset,
            self.ids.len()
        ))
    }

    /// At the end of generation: whatever is still held back (an incomplete UTF-8 sequence
    /// decodes to U+FFFD), so the deltas add up to the full decode.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(match full.get(prefix.len()..) {
            Some(rest) if full.starts_with(&prefix) => rest.to_string(),
            _ => full,
        })
    }
}

/// One chat turn.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Render a HF-style Jinja chat template.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::ChatTemplate(format!("the template is {} bytes, more than {MAX_TEMPLATE_BYTES}", template.len())));
    }
    let mut env = minijinja::Environment::new();
    // The template comes with the model, so it is input: bound its work and its output.
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| Error::ChatTemplate(e.to_string()))?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    let mut out = Capped(Vec::new());
    env.get_template("chat").and_then(|t| t.render_captured_to(ctx, &mut out).map(drop)).map_err(|e| Error::ChatTemplate(e.to_string()))?;
    String::from_utf8(out.0).map_err(|e| Error::ChatTemplate(e.to_string()))
}

/// Chat templates seen in the wild are a few kB (Llama 3.1 with tools: ~15 kB).
const MAX_TEMPLATE_BYTES: usize = 256 << 10;
/// minijinja instructions per render: a few dozen per message in real templates, so this is
/// thousands of messages, and a loop of loops stops in milliseconds.
const TEMPLATE_FUEL: u64 = 2_000_000;
/// More text than any model's context holds.
const MAX_RENDERED_BYTES: usize = 16 << 20;

/// A writer that fails past [`MAX_RENDERED_BYTES`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other(format!("the rendered prompt is over {MAX_RENDERED_BYTES} bytes")));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SmolLM2 / ChatML template (as the GGUF carries it).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn gpt2_pre_tokenizer() -> Sequence {
    Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ])
}

/// A GPT-2 style byte-level BPE tokenizer: Digits + ByteLevel pre-tokenizer, ByteLevel decoder,
/// nothing added on encode. `vocab[i]` is the token with id `i`; `specials` are matched whole.
pub fn build_bpe_tokenizer(vocab: &[String], merges: Vec<(String, String)>, specials: &[&str]) -> Result<String> {
    let map: tokenizers::models::bpe::Vocab = vocab.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    if map.len() != vocab.len() {
        return Err(Error::Tokenizer("vocabulary has duplicate tokens".into()));
    }
    let bpe = BPE::builder().vocab_and_merges(map, merges).build().map_err(tok_err)?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(gpt2_pre_tokenizer()));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = specials.iter().map(|s| AddedToken::from(s.to_string(), true)).collect();
    tk.add_special_tokens(added).map_err(tok_err)?;
    tk.to_string(false).map_err(tok_err)
}

/// Learn `n_merges` BPE merges from `corpus`, deterministically (most frequent pair, ties to
/// the smallest pair). Returns the vocabulary (`specials`, then the 256 byte symbols in byte
/// order, then one token per merge) and the merges.
pub fn train_bpe(corpus: &[&str], specials: &[&str], n_merges: usize) -> (Vec<String>, Vec<(String, String)>) {
    let pre = gpt2_pre_tokenizer();
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for text in corpus {
        let mut pts = PreTokenizedString::from(*text);
        pre.pre_tokenize(&mut pts).expect("byte-level pre-tokenization cannot fail");
        for (piece, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *words.entry(piece.chars().map(String::from).collect()).or_default() += 1;
        }
    }
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    // ByteLevel maps bytes to chars monotonically within its ranges; sort by the byte they encode.
    alphabet.sort_by_key(|c| byte_of_char(*c));
    vocab.extend(alphabet.iter().map(|c| c.to_string()));
    let mut merges = Vec::new();
    for _ in 0..n_merges {
        let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (w, n) in &words {
            for p in w.windows(2) {
                *pairs.entry((p[0].clone(), p[1].clone())).or_default() += n;
            }
        }
        let Some(best) = pairs.iter().fold(None::<(&(String, String), usize)>, |acc, (p, n)| match acc {
            Some((_, m)) if m >= *n => acc,
            _ => Some((p, *n)),
        }) else {
            break;
        };
        if best.1 < 2 {
            break;
        }
        let (a, b) = best.0.clone();
        let joined = format!("{a}{b}");
        words = words
            .into_iter()
            .map(|(w, n)| {
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(joined.clone());
                        i += 2;
                    } else {
                        out.push(w[i].clone());
                        i += 1;
                    }
                }
                (out, n)
            })
            .fold(BTreeMap::new(), |mut m, (w, n)| {
                *m.entry(w).or_default() += n;
                m
            });
        vocab.push(joined);
        merges.push((a, b));
    }
    (vocab, merges)
}

/// The byte a GPT-2 ByteLevel symbol stands for.
pub fn byte_of_char(c: char) -> u8 {
    let c = c as u32;
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if printable(c) {
        return c as u8;
    }
    // Non-printable bytes are numbered from 256 upwards in byte order.
    let mut n = 256;
    for b in 0u32..256 {
        if !printable(b) {
            if n == c {
                return b as u8;
            }
            n += 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_covers_every_byte_once() {
        let mut seen: Vec<u8> = ByteLevel::alphabet().into_iter().map(byte_of_char).collect();
        seen.sort();
        assert_eq!(seen, (0..=255u8).collect::<Vec<_>>());
    }

    #[test]
    fn chatml_template_renders() {
        let msgs = vec![ChatMessage { role: "user".into(), content: "Hi".into() }];
        let s = render_chat_template(CHATML_TEMPLATE, &msgs, true, "", "<|im_end|>").unwrap();
        assert!(s.starts_with("<|im_start|>system\n"));
        assert!(s.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }

    /// Texts that exercise pre-tokenization, byte fallback, multi-byte characters and
    /// special tokens written in the text.
    const SAMPLES: &[&str] = &[
        "Hello world, what is the capital of France?",
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "Café naïve façade 東京は日本の首都です。 🙂🚀",
        "  leading spaces, tabs\tand\nnewlines 2024-11-27 x=3.14159",
        "",
    ];

    /// Everything an encoding holds: ids, token strings, offsets.
    fn encoding(t: &Tokenizer, text: &str) -> (Vec<u32>, Vec<String>, Vec<(usize, usize)>) {
        let e = with_inner!(t, i => i.encode(text, false)).unwrap();
        (e.get_ids().to_vec(), e.get_tokens().to_vec(), e.get_offsets().to_vec())
    }

    /// Texts from a fixed generator over `alphabet`: runs of 1–40 pieces.
    fn random_texts(alphabet: &[&str], n: usize) -> Vec<String> {
        let mut next = crate::test_rng(0x9e37_79b9_7f4a_7c15);
        (0..n).map(|_| (0..1 + next(40)).map(|_| alphabet[next(alphabet.len())]).collect()).collect()
    }

    /// Pieces of text that stress byte-level BPE: words, spaces and newlines, digits, accents,
    /// CJK, emoji (4-byte UTF-8), punctuation, special tokens written in the text.
    const PIECES: &[&str] = &[
        "the", " the", "The", " capital", " of", " France", "?", "!", ".", ",", " ", "  ", "\n", "\n\n", "\t", "0", "7", "2024",
        "é", "ç", "ü", "ß", "東", "京", "は", "🙂", "🚀", "👍🏽", "hello", "world", "ing", "tion", "'s", "'ll", "--", "()", "{}",
        "x=3.14", "<|im_start|>", "<|im_end|>", "Ġ", "\u{0}", "\u{7f}", "\u{200b}", "a", "b", "ab", "aaa",
    ];

    /// [`Tokenizer::from_json`] must behave exactly as `tokenizers`' own parse.
    fn assert_same_as_generic(json: &[u8], lean_expected: bool) {
        let lean = Tokenizer::from_json(json).unwrap();
        let generic = Tokenizer::from_json_generic(json).unwrap();
        assert_eq!(lean.is_lean(), lean_expected);
        assert!(!generic.is_lean());
        assert_eq!(with_inner!(lean, t => t.get_vocab(true)), with_inner!(generic, t => t.get_vocab(true)));
        assert_eq!(lean.vocab_size(), generic.vocab_size());
        assert_eq!(with_inner!(lean, t => t.get_added_tokens_decoder()), with_inner!(generic, t => t.get_added_tokens_decoder()));
        let texts = SAMPLES.iter().map(|s| s.to_string()).chain(random_texts(PIECES, 300));
        for text in texts {
            let expected = encoding(&generic, &text);
            assert_eq!(encoding(&lean, &text), expected, "{text:?}");
            for skip in [false, true] {
                assert_eq!(lean.decode(&expected.0, skip).unwrap(), generic.decode(&expected.0, skip).unwrap());
            }
        }
        for id in 0..generic.vocab_size() as u32 + 2 {
            let token = with_inner!(generic, t => t.id_to_token(id));
            assert_eq!(with_inner!(lean, t => t.id_to_token(id)), token);
            if let Some(token) = token {
                assert_eq!(lean.token_to_id(&token), generic.token_to_id(&token));
            }
        }
    }

    #[test]
    fn lean_bpe_parse_builds_the_same_tokenizer() {
        // The project's tiny byte-level BPE (GPT-2 style, ChatML specials in the vocabulary).
        assert_same_as_generic(include_bytes!("../tests/fixtures/tiny/tokenizer.json"), true);
        // Added tokens outside the vocabulary, a normalizer, unk / byte fallback, legacy
        // "a b" merges, truncation and padding.
        let json = r#"{
          "version": "1.0",
          "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0},
          "padding": null,
          "added_tokens": [
            {"id": 7, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 8, "content": "[NEW]", "single_word": true, "lstrip": true, "rstrip": false, "normalized": true, "special": false}
          ],
          "normalizer": {"type": "Lowercase"},
          "pre_tokenizer": {"type": "Whitespace"},
          "post_processor": null,
          "decoder": {"type": "Fuse"},
          "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": false, "ignore_merges": false,
                    "vocab": {"<unk>": 0, "h": 1, "e": 2, "l": 3, "o": 4, "he": 5, "hel": 6, "<eos>": 7},
                    "merges": ["h e", "he l"]}
        }"#;
        assert_same_as_generic(json.as_bytes(), true);
        let t = Tokenizer::from_json(json.as_bytes()).unwrap();
        assert_eq!(t.token_to_id("[NEW]"), Some(8));
        assert_eq!(t.encode("Hello<eos>").unwrap(), vec![6, 3, 4, 7]);
    }

    /// Every BPE option the lean model takes gives `tokenizers`' results; the ones it does not
    /// take fall back to `tokenizers`' model.
    #[test]
    fn lean_bpe_options_match_tokenizers() {
        // Characters a–e, bytes for byte fallback, and merges whose ranks compete.
        let mut vocab: Vec<String> = ["<unk>", "a", "b", "c", "d", "e", "ab", "bc", "abc", "cd", "abcd", "aa", "aaa", "é"].map(String::from).to_vec();
        vocab.extend((0..=255u8).map(|b| format!("<{b:#04X}>")));
        let merges = [("b", "c"), ("a", "b"), ("ab", "c"), ("c", "d"), ("abc", "d"), ("a", "a"), ("aa", "a"), ("a", "b")];
        let model = |opts: &str, merges_json: &str, ids: &dyn Fn(usize) -> usize| -> String {
            let v: Vec<String> = vocab.iter().enumerate().map(|(i, t)| format!("{}: {}", serde_json::to_string(t).unwrap(), ids(i))).collect();
            format!(
                r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
                  "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": {{"type": "Fuse"}},
                  "model": {{"type": "BPE", {opts} "merges": {merges_json}, "vocab": {{{}}}}}}}"#,
                v.join(", ")
            )
        };
        let pairs = serde_json::to_string(&merges.map(|(a, b)| [a, b])).unwrap();
        let lines = serde_json::to_string(&["#version: 0.2".to_string()].into_iter().chain(merges.map(|(a, b)| format!("{a} {b}"))).collect::<Vec<_>>()).unwrap();
        let same = |i: usize| i;
        let pieces = ["a", "b", "c", "d", "e", "aa", "abcd", "x", "yz", "é", "ö", "🙂", " ", "abc", "bcd"];
        for opts in [
            r#""unk_token": "<unk>", "fuse_unk": true,"#,
            r#""unk_token": "<unk>", "fuse_unk": false,"#,
            r#""unk_token": "<unk>", "byte_fallback": true,"#,
            r#""unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true,"#,
            r#""unk_token": null,"#,
            r#""unk_token": "<unk>", "ignore_merges": true,"#,
            r#""dropout": 0.0,"#,
        ] {
            for merges_json in [&pairs, &lines] {
                let json = model(opts, merges_json, &same);
                let lean = Tokenizer::from_json(json.as_bytes()).unwrap();
                let generic = Tokenizer::from_json_generic(json.as_bytes()).unwrap();
                assert!(lean.is_lean(), "{opts}");
                for text in random_texts(&pieces, 300) {
                    assert_eq!(encoding(&lean, &text), encoding(&generic, &text), "{opts} {text:?}");
                }
            }
        }
        // An unknown token missing from the vocabulary fails on both, when it is needed.
        let json = model(r#""unk_token": "<nope>","#, &pairs, &same);
        let (lean, generic) = (Tokenizer::from_json(json.as_bytes()).unwrap(), Tokenizer::from_json_generic(json.as_bytes()).unwrap());
        assert_eq!(lean.encode("abc").unwrap(), generic.encode("abc").unwrap());
        assert!(lean.encode("x").is_err() && generic.encode("x").is_err());
        // What the lean model does not take: `tokenizers`' model, same results.
        let gaps = |i: usize| i * 2;
        for (opts, ids) in [
            (r#""dropout": 0.5,"#, &same as &dyn Fn(usize) -> usize),
            (r#""end_of_word_suffix": "</w>","#, &same),
            (r#""unk_token": "<unk>","#, &gaps),
        ] {
            let json = model(opts, &pairs, ids);
            let t = Tokenizer::from_json(json.as_bytes());
            let g = Tokenizer::from_json_generic(json.as_bytes());
            match (t, g) {
                (Ok(t), Ok(g)) => {
                    assert!(!t.is_lean(), "{opts}");
                    if !opts.contains("dropout") {
                        assert_eq!(t.encode("abcd e").unwrap(), g.encode("abcd e").unwrap(), "{opts}");
                    }
                }
                (t, g) => assert_eq!(t.is_err(), g.is_err(), "{opts}"),
            }
        }
        // A subword prefix is declined before the vocabulary is read (`tokenizers` itself
        // underflows on this file's merges with one).
        let prefixed = r###"{"type": "BPE", "continuing_subword_prefix": "##", "vocab": {"a": 0}, "merges": []}"###;
        assert!(lean_bpe::LeanBpe::from_model_json(prefixed).unwrap().is_none());
        // Bad merges are named errors, as in `tokenizers`.
        for bad in [r#"["a b c"]"#, r#"[["a", "zz"]]"#, r#"[["a", "b"], "b c"]"#] {
            let json = model("", bad, &same);
            assert!(matches!(Tokenizer::from_json(json.as_bytes()), Err(Error::Tokenizer(_))), "{bad}");
            assert!(Tokenizer::from_json_generic(json.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_models_take_the_generic_parse() {
        let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
          "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hi": 1, "there": 2}, "unk_token": "[UNK]"}}"#;
        assert_same_as_generic(json.as_bytes(), false);
        assert_eq!(Tokenizer::from_json(json.as_bytes()).unwrap().encode("hi there you").unwrap(), vec![1, 2, 0]);
        // A file's padding is ignored (MiniLM's tokenizer.json pads to 128): ids are the text's.
        let padded = json.replace(r#""padding": null"#, r#""padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[UNK]"}"#);
        assert_eq!(Tokenizer::from_json(padded.as_bytes()).unwrap().encode("hi there").unwrap(), vec![1, 2]);
        // Malformed files are named tokenizer errors on either path.
        for bad in ["{", r#"{"model": {"type": "BPE", "vocab": 3, "merges": []}}"#, r#"{"version": "2.0"}"#] {
            assert!(matches!(Tokenizer::from_json(bad.as_bytes()), Err(Error::Tokenizer(_))), "{bad}");
        }
    }

    #[test]
    fn template_errors_are_named() {
        let err = render_chat_template("{{ raise_exception('no') }}", &[], false, "", "").unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)), "{err}");
        let err = render_chat_template("{% for %}", &[], false, "", "").unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)));
    }

    /// A template is model input: one that loops for ever (10^10 iterations), writes 100 MB or
    /// is itself huge fails by name, in bounded time and memory.
    #[test]
    fn hostile_templates_are_bounded() {
        let forever = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let huge_output = "{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}";
        let huge_template = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        for (what, tpl) in [("loop", forever), ("output", huge_output), ("template", huge_template.as_str())] {
            let err = render_chat_template(tpl, &[], false, "", "").unwrap_err();
            assert!(matches!(err, Error::ChatTemplate(_)), "{what}: {err}");
        }
        // Real templates stay well inside: ChatML over 1,000 messages.
        let msgs = vec![ChatMessage { role: "user".into(), content: "Hi".into() }; 1000];
        render_chat_template(CHATML_TEMPLATE, &msgs, true, "", "<|im_end|>").unwrap();
    }
}
