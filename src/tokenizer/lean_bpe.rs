//! A byte-pair-encoding model that gives `tokenizers`' `BPE` ids and offsets in well under half
//! its memory (SmolLM2: 1.55 MB against 4.1 MB in wasm; tests/memory.rs).
//!
//! `tokenizers` keeps the vocabulary twice (token → id and id → token, each a hash map of
//! separately allocated strings) and the merges in a hash map. Here the tokens are one string in
//! id order with their end offsets, token → id is a binary search over the ids sorted by token,
//! and the merges are one sorted array. Encoding follows the same rules — characters to ids (the
//! unknown token, fused or not; byte fallback), then always the lowest-ranked adjacent pair
//! first, leftmost among equals — so its output is `tokenizers`' output; `Tokenizer`'s tests
//! compare the two on real and random text.
//!
//! Only the common configuration is taken (no dropout, no continuing-subword prefix or
//! end-of-word suffix, ids `0..n` each used once); [`LeanBpe::from_model_json`] returns `None`
//! for anything else and the caller keeps `tokenizers`' own model.

use std::borrow::Cow;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tokenizers::models::bpe::BpeTrainer;
use tokenizers::{Model, Token};

/// One merge: the pair `(a, b)`, its rank (its line in the file; the lowest merges first) and
/// the token it makes.
#[derive(Clone, Copy, Debug)]
struct Merge {
    a: u32,
    b: u32,
    rank: u32,
    new_id: u32,
}

pub struct LeanBpe {
    /// Every token's text, in id order.
    text: String,
    /// `ends[id]`: where token `id` ends in `text` (it starts where `id - 1` ends).
    ends: Vec<u32>,
    /// The ids ordered by their tokens' bytes.
    by_text: Vec<u32>,
    /// Ordered by `(a, b)`.
    merges: Vec<Merge>,
    unk_token: Option<String>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
}

/// The options of a BPE `model` object; everything but its vocabulary and merges.
#[derive(serde::Deserialize)]
struct Options {
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    fuse_unk: Option<bool>,
    byte_fallback: Option<bool>,
    ignore_merges: Option<bool>,
}

type TokResult<T> = tokenizers::Result<T>;

fn error(msg: String) -> tokenizers::Error {
    msg.into()
}

impl LeanBpe {
    /// Build from a tokenizer.json's `model` object (`"type": "BPE"`). `Ok(None)`: a
    /// configuration this model does not take (the caller uses `tokenizers`' `BPE`). Errors are
    /// those `tokenizers` raises for the same file (a merge of tokens outside the vocabulary, a
    /// legacy merge line that is not two tokens, a missing vocabulary or merge list).
    pub fn from_model_json(json: &str) -> TokResult<Option<Self>> {
        let opts: Options = serde_json::from_str(json)?;
        if opts.dropout.is_some_and(|p| p != 0.0) || opts.continuing_subword_prefix.is_some() || opts.end_of_word_suffix.is_some() {
            return Ok(None);
        }
        // The vocabulary and then the merges in passes of their own (after the options' above),
        // so that the merges can be resolved whichever comes first in the file.
        let Some(vocab) = field(json, "vocab", VocabSeed)? else {
            return Err(error("Missing vocab/merges".into()));
        };
        let Some((text, ends, by_text)) = vocab else { return Ok(None) };
        let mut bpe = LeanBpe {
            text,
            ends,
            by_text,
            merges: Vec::new(),
            unk_token: opts.unk_token,
            fuse_unk: opts.fuse_unk.unwrap_or(false),
            byte_fallback: opts.byte_fallback.unwrap_or(false),
            ignore_merges: opts.ignore_merges.unwrap_or(false),
        };
        // Each merge resolved to ids as it is read: no list of strings in between.
        let Some(mut merges) = field(json, "merges", MergesSeed { bpe: &bpe })? else {
            return Err(error("Missing vocab/merges".into()));
        };
        // A pair listed twice keeps its last rank, as a hash map filled in file order does.
        merges.sort_by_key(|m| (m.a, m.b, std::cmp::Reverse(m.rank)));
        merges.dedup_by_key(|m| (m.a, m.b));
        merges.shrink_to_fit();
        bpe.merges = merges;
        Ok(Some(bpe))
    }

    fn token(&self, id: u32) -> Option<&str> {
        span(&self.ends, id).map(|r| &self.text[r])
    }

    fn merge(&self, a: u32, b: u32) -> Option<&Merge> {
        self.merges.binary_search_by_key(&(a, b), |m| (m.a, m.b)).ok().map(|i| &self.merges[i])
    }

    fn unk_id(&self, unk: &str) -> TokResult<u32> {
        self.token_to_id(unk).ok_or_else(|| error(format!("Unk token `{unk}` not found in the vocabulary")))
    }

    /// The word's characters as ids, then merged: one symbol (id, byte length) per token.
    fn merge_word(&self, w: &str) -> TokResult<Vec<Symbol>> {
        let mut word = Word::default();
        let mut unk: Option<(u32, usize)> = None;
        for (i, ch) in w.char_indices() {
            let s = &w[i..i + ch.len_utf8()];
            if let Some(id) = self.token_to_id(s) {
                if let Some((unk_id, unk_len)) = unk.take() {
                    word.push(unk_id, unk_len);
                }
                word.push(id, s.len());
                continue;
            }
            if self.byte_fallback {
                let ids: Option<Vec<u32>> = s.bytes().map(|b| self.token_to_id(&format!("<{b:#04X}>"))).collect();
                if let Some(ids) = ids {
                    // A pending unknown token stays pending across the bytes, as in `tokenizers`.
                    for id in ids {
                        word.push(id, 1);
                    }
                    continue;
                }
            }
            if let Some(unk_token) = &self.unk_token {
                unk = match unk {
                    Some((unk_id, unk_len)) if self.fuse_unk => Some((unk_id, unk_len + s.len())),
                    Some((unk_id, unk_len)) => {
                        word.push(unk_id, unk_len);
                        Some((self.unk_id(unk_token)?, s.len()))
                    }
                    None => Some((self.unk_id(unk_token)?, s.len())),
                };
            }
        }
        if let Some((unk_id, unk_len)) = unk {
            word.push(unk_id, unk_len);
        }
        word.merge_all(self);
        Ok(word.symbols.into_iter().filter(|s| s.len != 0).collect())
    }
}

/// Where token `id` lies in the joined text, from the tokens' end offsets; `None` past the end.
fn span(ends: &[u32], id: u32) -> Option<std::ops::Range<usize>> {
    let id = id as usize;
    let end = *ends.get(id)? as usize;
    let start = if id == 0 { 0 } else { ends[id - 1] as usize };
    Some(start..end)
}

/// Deserialize only the field `name` of a JSON object, with `seed`.
fn field<'de, S>(json: &'de str, name: &'static str, seed: S) -> TokResult<Option<S::Value>>
where
    S: DeserializeSeed<'de> + Copy,
{
    struct Pick<S> {
        name: &'static str,
        seed: S,
    }
    impl<'a, S: DeserializeSeed<'a> + Copy> Visitor<'a> for Pick<S> {
        type Value = Option<S::Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a BPE model object")
        }
        fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = None;
            while let Some(key) = map.next_key::<Cow<'a, str>>()? {
                if key == self.name {
                    // A repeated key: the last one counts, as for a map deserialised whole.
                    out = Some(map.next_value_seed(self.seed)?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    Ok((&mut de).deserialize_map(Pick { name, seed })?)
}

/// The vocabulary object → `(text, ends, by_text)`, or `None` when its ids are not `0..n`
/// each once (or a token is listed twice): `tokenizers`' model handles those.
#[derive(Clone, Copy)]
struct VocabSeed;

type Vocab = Option<(String, Vec<u32>, Vec<u32>)>;

impl<'de> DeserializeSeed<'de> for VocabSeed {
    type Value = Vocab;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vocab, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for VocabSeed {
    type Value = Vocab;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of tokens to ids")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vocab, A::Error> {
        // File order first: (id, start, end) into one string.
        let mut raw = String::new();
        let mut entries: Vec<(u32, u32, u32)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(token) = map.next_key::<Cow<'de, str>>()? {
            let id: u32 = map.next_value()?;
            let start = raw.len();
            raw.push_str(&token);
            let end = raw.len();
            let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(end)) else {
                return Err(de::Error::custom("vocabulary over 4 GiB"));
            };
            entries.push((id, start, end));
        }
        entries.sort_unstable_by_key(|e| e.0);
        if entries.iter().enumerate().any(|(i, e)| e.0 as usize != i) {
            return Ok(None);
        }
        let mut text = String::with_capacity(raw.len());
        let mut ends = Vec::with_capacity(entries.len());
        for &(_, start, end) in &entries {
            text.push_str(&raw[start as usize..end as usize]);
            ends.push(text.len() as u32);
        }
        drop((raw, entries));
        // Every id below `ends.len()` has a span.
        let token = |id: u32| span(&ends, id).map_or(&[][..], |r| &text.as_bytes()[r]);
        let mut by_text: Vec<u32> = (0..ends.len() as u32).collect();
        by_text.sort_unstable_by(|a, b| token(*a).cmp(token(*b)));
        if by_text.windows(2).any(|w| token(w[0]) == token(w[1])) {
            return Ok(None);
        }
        Ok(Some((text, ends, by_text)))
    }
}

/// The merges: `[["a", "b"], …]`, or legacy `["a b", …]` lines (`#version` lines skipped),
/// each resolved against `bpe`'s vocabulary; ranked in file order.
#[derive(Clone, Copy)]
struct MergesSeed<'v> {
    bpe: &'v LeanBpe,
}

impl<'de> DeserializeSeed<'de> for MergesSeed<'_> {
    type Value = Vec<Merge>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MergesSeed<'_> {
    type Value = Vec<Merge>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of merges")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Entry<'a> {
            Pair(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Cow<'a, str>),
            Line(#[serde(borrow)] Cow<'a, str>),
        }
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut legacy = None;
        let mut joined = String::new();
        let id = |t: &str| self.bpe.token_to_id(t).ok_or_else(|| de::Error::custom(format!("Merge token out of vocabulary: {t}")));
        while let Some(entry) = seq.next_element::<Entry>()? {
            let is_line = matches!(entry, Entry::Line(_));
            // One form per list, as `tokenizers` reads it.
            if *legacy.get_or_insert(is_line) != is_line {
                return Err(de::Error::custom("merges mix pairs and lines"));
            }
            let (a, b) = match &entry {
                Entry::Pair(a, b) => (&**a, &**b),
                Entry::Line(line) if line.starts_with("#version") => continue,
                Entry::Line(line) => {
                    let mut parts = line.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => (a, b),
                        _ => return Err(de::Error::custom(format!("Merges text file invalid at line {}", out.len() + 1))),
                    }
                }
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            out.push(Merge { a: id(a)?, b: id(b)?, rank: out.len() as u32, new_id: id(&joined)? });
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug)]
struct Symbol {
    id: u32,
    prev: isize,
    next: isize,
    /// Bytes of the word it covers; 0 once merged into its left neighbour.
    len: usize,
}

#[derive(Default)]
struct Word {
    symbols: Vec<Symbol>,
}

/// A pending merge at `pos` (with its right neighbour); the heap pops the lowest rank first,
/// then the leftmost.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    rank: std::cmp::Reverse<u32>,
    pos: std::cmp::Reverse<usize>,
    new_id: u32,
}

impl Word {
    fn push(&mut self, id: u32, len: usize) {
        let n = self.symbols.len() as isize;
        if let Some(last) = self.symbols.last_mut() {
            last.next = n;
        }
        self.symbols.push(Symbol { id, prev: n - 1, next: -1, len });
    }

    fn pending(bpe: &LeanBpe, pos: usize, a: u32, b: u32) -> Option<Pending> {
        bpe.merge(a, b).map(|m| Pending { rank: std::cmp::Reverse(m.rank), pos: std::cmp::Reverse(pos), new_id: m.new_id })
    }

    fn merge_all(&mut self, bpe: &LeanBpe) {
        let mut heap: BinaryHeap<Pending> =
            self.symbols.windows(2).enumerate().filter_map(|(i, w)| Self::pending(bpe, i, w[0].id, w[1].id)).collect();
        while let Some(top) = heap.pop() {
            let pos = top.pos.0;
            let cur = self.symbols[pos];
            if cur.len == 0 || cur.next < 0 {
                continue;
            }
            let right_pos = cur.next as usize;
            let right = self.symbols[right_pos];
            // Stale: the pair at `pos` changed since this entry was queued.
            if bpe.merge(cur.id, right.id).is_none_or(|m| m.new_id != top.new_id) {
                continue;
            }
            let merged = Symbol { id: top.new_id, prev: cur.prev, next: right.next, len: cur.len + right.len };
            self.symbols[pos] = merged;
            self.symbols[right_pos].len = 0;
            if right.next >= 0 {
                self.symbols[right.next as usize].prev = pos as isize;
            }
            if merged.prev >= 0 {
                let prev = merged.prev as usize;
                heap.extend(Self::pending(bpe, prev, self.symbols[prev].id, merged.id));
            }
            if merged.next >= 0 {
                let next = merged.next as usize;
                heap.extend(Self::pending(bpe, pos, merged.id, self.symbols[next].id));
            }
        }
    }
}

impl Model for LeanBpe {
    type Trainer = BpeTrainer;

    fn tokenize(&self, sequence: &str) -> TokResult<Vec<Token>> {
        if sequence.is_empty() {
            return Ok(Vec::new());
        }
        if self.ignore_merges {
            if let Some(id) = self.token_to_id(sequence) {
                return Ok(vec![Token::new(id, sequence.to_string(), (0, sequence.len()))]);
            }
        }
        let mut pos = 0;
        let mut tokens = Vec::new();
        for s in self.merge_word(sequence)? {
            let value = self.token(s.id).unwrap_or_default().to_string();
            tokens.push(Token::new(s.id, value, (pos, pos + s.len)));
            pos += s.len;
        }
        Ok(tokens)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        let token = token.as_bytes();
        self.by_text
            .binary_search_by(|id| self.token(*id).map_or(&[][..], str::as_bytes).cmp(token))
            .ok()
            .map(|i| self.by_text[i])
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.token(id).map(str::to_string)
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.ends.len() as u32).map(|id| (self.token(id).unwrap_or_default().to_string(), id)).collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.ends.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> TokResult<Vec<PathBuf>> {
        Err(error("edge-llm's BPE model is not written back to files".into()))
    }

    fn get_trainer(&self) -> BpeTrainer {
        BpeTrainer::default()
    }
}
