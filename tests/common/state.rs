//! Save / restore problems, run natively (tests/state.rs) and in Chromium (tests/web.rs).
//! `load` builds a fresh engine over the same model each call.

use edge_llm::{Engine, Error, GenerateOptions};

use super::PROMPT;

pub fn greedy() -> GenerateOptions {
    GenerateOptions { max_tokens: 14, ignore_eos: true, ..Default::default() }
}

pub fn seeded() -> GenerateOptions {
    GenerateOptions {
        max_tokens: 14,
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: 7,
        ignore_eos: true,
        ..Default::default()
    }
}

fn run_all(g: &mut edge_llm::Generation) -> (Vec<u32>, String) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(ev) = g.step().unwrap() {
        ids.push(ev.token_id);
        text += &ev.text;
    }
    (ids, text)
}

/// Generate `k` tokens, save, restore into a fresh engine, resume: the tokens (and text) that
/// follow equal the uninterrupted run's. Returns the saved state's size.
pub fn resume_is_bit_identical(load: &dyn Fn() -> Engine, opts: &GenerateOptions, k: usize) -> usize {
    resume_elsewhere_is_bit_identical(load, load, opts, k)
}

/// [`resume_is_bit_identical`] with the state saved by an engine from `load` and restored into
/// one from `restore` (e.g. the other KV-cache layout): the tokens equal `load`'s
/// uninterrupted run.
pub fn resume_elsewhere_is_bit_identical(load: &dyn Fn() -> Engine, restore: &dyn Fn() -> Engine, opts: &GenerateOptions, k: usize) -> usize {
    let (want_ids, want_text) = run_all(&mut load().generate_ids(PROMPT.to_vec(), opts).unwrap());
    assert_eq!(want_ids.len(), opts.max_tokens);

    let a = load();
    let mut g = a.generate_ids(PROMPT.to_vec(), opts).unwrap();
    let (mut ids, mut text) = (Vec::new(), String::new());
    for _ in 0..k {
        let ev = g.step().unwrap().unwrap();
        ids.push(ev.token_id);
        text += &ev.text;
    }
    let bytes = a.save_state().unwrap();
    drop(g);
    drop(a);

    let b = restore();
    b.restore_state(&bytes).unwrap();
    let (rest_ids, rest_text) = run_all(&mut b.resume().unwrap());
    ids.extend(rest_ids);
    assert_eq!(ids, want_ids, "tokens after restoring at {k}");
    assert_eq!(text + &rest_text, want_text);
    assert_eq!(b.stats().generated_tokens, opts.max_tokens);
    bytes.len()
}

/// A second chat turn after restoring reuses the cached prefix and gives the same reply as the
/// uninterrupted conversation.
pub fn chat_after_restore_reuses_prefix(load: &dyn Fn() -> Engine) {
    use edge_llm::tokenizer::ChatMessage;
    let msg = |role: &str, content: &str| ChatMessage { role: role.into(), content: content.into() };
    let opts = GenerateOptions { max_tokens: 8, ..Default::default() };
    let first = vec![msg("user", "Hello there")];
    let turn = |e: &Engine, m: &[ChatMessage]| {
        let mut g = e.chat(m, &opts).unwrap();
        let (ids, text) = run_all(&mut g);
        (ids, text, e.stats())
    };

    let a = load();
    let (_, reply, _) = turn(&a, &first);
    let cached = a.state().unwrap().tokens().len();
    let second = [first.clone(), vec![msg("assistant", &reply), msg("user", "And then?")]].concat();
    let (want_ids, _, want_stats) = turn(&a, &second);
    // The reply is not re-tokenized: the whole cache is reused.
    assert_eq!(want_stats.reused_prompt_tokens, cached, "the uninterrupted conversation reuses its cache");

    let b = load();
    turn(&b, &first);
    let saved = b.save_state().unwrap();
    let c = load();
    c.restore_state(&saved).unwrap();
    let (ids, _, stats) = turn(&c, &second);
    assert_eq!(ids, want_ids);
    assert_eq!(stats.reused_prompt_tokens, want_stats.reused_prompt_tokens);
    assert_eq!(stats.prompt_tokens, want_stats.prompt_tokens);

    // Without reuse the whole prompt is recomputed.
    let mut g = c.chat(&second, &GenerateOptions { reuse_prefix: Some(false), ..opts.clone() }).unwrap();
    g.step().unwrap();
    assert_eq!(c.stats().reused_prompt_tokens, 0);
}

fn assert_invalid_state(r: Result<(), Error>, what: &str) -> String {
    match r {
        Err(e @ Error::InvalidState(_)) => {
            assert_eq!(e.name(), "InvalidStateError");
            e.to_string()
        }
        other => panic!("{what}: expected InvalidState, got {other:?}"),
    }
}

/// Truncated, corrupted, foreign-format and foreign-model states are refused by name, and the
/// engine keeps its conversation.
pub fn bad_states_are_refused(load: &dyn Fn() -> Engine, other_model: &dyn Fn() -> Engine) {
    let a = load();
    let mut g = a.generate_ids(PROMPT.to_vec(), &greedy()).unwrap();
    for _ in 0..3 {
        g.step().unwrap();
    }
    drop(g);
    let good = a.save_state().unwrap();

    let b = load();
    b.restore_state(&good).unwrap();
    let before = b.save_state().unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let mut version = good.clone();
    version[8] = 9;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "magic"),
        ("truncated", good[..good.len() - 100].to_vec(), "checksum"),
        ("header only", good[..60].to_vec(), "truncated"),
        ("one bit flipped", flipped, "checksum"),
        ("not a state", b"{\"hello\": 1}".to_vec(), "magic"),
        ("future version", version, "version"),
    ];
    for (what, bytes, needle) in cases {
        let msg = assert_invalid_state(b.restore_state(&bytes), what);
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    let msg = assert_invalid_state(other_model().restore_state(&good), "other model");
    assert!(msg.contains("different model"), "{msg}");
    assert_eq!(b.save_state().unwrap(), before, "a refused state changes nothing");
    b.resume().unwrap().step().unwrap().unwrap();
}

/// A generation outliving its engine fails by name instead of crashing.
pub fn generation_after_drop_is_disposed(load: &dyn Fn() -> Engine) {
    let e = load();
    let mut g = e.generate_ids(PROMPT.to_vec(), &greedy()).unwrap();
    g.step().unwrap();
    drop(e);
    match g.step() {
        Err(e @ Error::Disposed) => assert_eq!(e.name(), "EngineDisposedError"),
        other => panic!("expected Disposed, got {other:?}"),
    }
}

/// `good` with its JSON header edited by `edit` and its checksum recomputed: what anyone can
/// write, since the checksum has no key and the model fingerprint is public.
fn forge(good: &[u8], edit: impl FnOnce(&mut serde_json::Value), header_len: Option<u32>) -> Vec<u8> {
    use sha2::Digest;
    let len = u32::from_le_bytes(good[44..48].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&good[48..48 + len]).unwrap();
    edit(&mut header);
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = good[..44].to_vec();
    out.extend_from_slice(&header_len.unwrap_or(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&good[48 + len..good.len() - 32]);
    let hash = sha2::Sha256::digest(&out);
    out.extend_from_slice(&hash);
    out
}

/// States whose checksum is right but whose header lies (detokenizer offsets, token ids,
/// token counts that overflow the size arithmetic or the context) are refused by name before
/// anything is allocated from them, and the engine keeps its conversation.
pub fn forged_states_are_refused(load: &dyn Fn() -> Engine) {
    let a = load();
    let mut g = a.generate_ids(PROMPT.to_vec(), &greedy()).unwrap();
    for _ in 0..3 {
        g.step().unwrap();
    }
    drop(g);
    let good = a.save_state().unwrap();
    let b = load();
    // The forging itself is faithful: an unedited forgery restores.
    b.restore_state(&forge(&good, |_| {}, None)).unwrap();
    let before = b.save_state().unwrap();

    let context = b.config().architecture.max_position_embeddings;
    let set = |path: &'static [&'static str], v: serde_json::Value| {
        move |h: &mut serde_json::Value| {
            let mut at = h;
            for k in path {
                at = &mut at[*k];
            }
            *at = v;
        }
    };
    let detok = |prefix: u64, read: u64| set(&["resume", "detok"], serde_json::json!({ "ids": [1, 2], "prefix_offset": prefix, "read_offset": read }));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("detokenizer prefix after read offset", forge(&good, detok(2, 1), None), "offsets"),
        ("detokenizer read offset past its ids", forge(&good, detok(0, 9), None), "offsets"),
        ("detokenizer id outside the vocabulary", forge(&good, set(&["resume", "detok", "ids"], serde_json::json!([1u32 << 30])), None), "vocabulary"),
        ("next token outside the vocabulary", forge(&good, set(&["resume", "nextToken"], serde_json::json!(u32::MAX)), None), "vocabulary"),
        // 2^61 tokens: 4·2·L·H·n·D overflows 64 bits (on wasm32, 2^25 already wraps usize).
        ("token count overflowing the size", forge(&good, set(&["tokens"], serde_json::json!(1u64 << 61)), None), "context"),
        ("more tokens than the context", forge(&good, set(&["tokens"], serde_json::json!(context + 1)), None), "context"),
        ("header length past the end", forge(&good, |_| {}, Some(u32::MAX)), "header"),
        ("negative temperature", forge(&good, set(&["resume", "options", "temperature"], serde_json::json!(-1.0)), None), "options"),
    ];
    for (what, bytes, needle) in cases {
        let msg = assert_invalid_state(b.restore_state(&bytes), what);
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(b.save_state().unwrap() == before, "{what}: a refused state changes nothing");
    }
    b.resume().unwrap().step().unwrap().unwrap();
}
