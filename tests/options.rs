//! Generation options as apps give them: a packed model's manifest `generation` defaults apply
//! where the app gives none, and an unknown option is an error naming it (the JS API passes
//! apps' option objects through `GenerateOptions::overlay`).
#![cfg(not(target_arch = "wasm32"))]

use edge_llm::package::manifest::GenerationDefaults;
use edge_llm::pack::{pack, PackOptions};
use edge_llm::{tiny, Engine, GenerateOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn packed_with(generation: GenerationDefaults) -> Engine {
    let opts = PackOptions { generation, ..Default::default() };
    let (m, files) = pack(&fixture("model-int4.onnx"), &fixture("tokenizer.json"), &tiny::model_config(), &opts).unwrap();
    Engine::open(edge_llm::package::Package::packed(&m, files.into_iter().collect()), &Default::default()).unwrap()
}

fn generated(e: &Engine, given: &str) -> usize {
    let opts = e.default_options().overlay(serde_json::from_str(given).unwrap()).unwrap();
    let mut g = e.generate("The capital of France", &opts).unwrap();
    while g.step().unwrap().is_some() {}
    g.generated().len()
}

#[test]
fn the_manifest_generation_defaults_apply_when_the_app_gives_none() {
    let d = GenerationDefaults { max_new_tokens: 5, temperature: 0.0, top_p: 0.8, repetition_penalty: 1.2 };
    let e = packed_with(d.clone());
    assert_eq!(e.default_options(), &GenerateOptions::with_defaults(&d));
    assert_eq!(generated(&e, r#"{"ignoreEos": true}"#), 5);
    assert_eq!(generated(&e, r#"{"ignoreEos": true, "maxTokens": 3}"#), 3);
    // Models loaded from loose files have no manifest: the built-in defaults.
    let loose = Engine::open(edge_llm::package::Package::loose(&fixture("model-int4.onnx"), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap();
    assert_eq!(loose.default_options(), &GenerateOptions::default());
}

#[test]
fn an_unknown_option_fails_by_name_before_anything_runs() {
    let e = packed_with(GenerationDefaults::default());
    let err = e.default_options().overlay(serde_json::from_str(r#"{"max_tokens": 64}"#).unwrap()).unwrap_err();
    assert_eq!((err.name(), err.option()), ("InvalidOptionError", Some("max_tokens")));
    assert_eq!(err.to_string(), "unknown option `max_tokens`: did you mean `maxTokens`?");
}

/// A prompt given as token ids runs as given, the text's ids giving the text's tokens; an id
/// outside the vocabulary (it would index past the embedding table) is refused by name before
/// anything runs, and the engine goes on working.
#[test]
fn prompt_ids_run_as_given_and_an_id_outside_the_vocabulary_is_refused() {
    let e = packed_with(GenerationDefaults::default());
    let opts = GenerateOptions { max_tokens: 6, ignore_eos: true, ..Default::default() };
    let run = |g: &mut edge_llm::Generation| {
        while g.step().unwrap().is_some() {}
        g.generated().to_vec()
    };
    let text = "The capital of France";
    let from_text = run(&mut e.generate(text, &opts).unwrap());
    let ids = e.tokenizer().encode(text).unwrap();
    assert_eq!(run(&mut e.generate_ids(ids.clone(), &opts).unwrap()), from_text);
    let vocab = e.config().architecture.vocab_size as u32;
    let err = e.generate_ids(vec![ids[0], vocab], &opts).err().expect("refused");
    assert_eq!((err.name(), err.option()), ("InvalidOptionError", Some("prompt")));
    assert!(err.to_string().contains(&format!("token id {vocab} is outside the vocabulary")), "{err}");
    assert_eq!(run(&mut e.generate_ids(ids, &opts).unwrap()), from_text);
}
