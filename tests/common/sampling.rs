//! Sampling options on any engine, one body for every backend: tests/tiny_model.rs runs it on
//! the CPU backend, tests/gpu.rs on the GPU backend (which samples on the device).

use edge_llm::{Engine, GenerateOptions};

use super::PROMPT;

async fn run(e: &Engine, opts: &GenerateOptions) -> (Vec<u32>, String) {
    let mut g = e.generate_ids(PROMPT.to_vec(), opts).unwrap();
    let mut text = String::new();
    while let Some(ev) = g.step_async().await.unwrap() {
        text += &ev.text;
    }
    (g.generated().to_vec(), text)
}

/// Seeded options over every sampling option: temperatures (4: the tiny model is peaked), top-k,
/// top-p, repetition penalties
/// (with temperature 0 too: a penalized argmax).
pub fn variants() -> Vec<GenerateOptions> {
    let o = GenerateOptions { max_tokens: 16, ignore_eos: true, ..Default::default() };
    vec![
        GenerateOptions { temperature: 4.0, seed: 1, ..o.clone() },
        GenerateOptions { temperature: 4.0, seed: 2, ..o.clone() },
        GenerateOptions { temperature: 0.7, top_k: 40, seed: 3, ..o.clone() },
        GenerateOptions { temperature: 0.9, top_p: 0.9, seed: 4, ..o.clone() },
        GenerateOptions { temperature: 0.9, top_k: 40, top_p: 0.95, repetition_penalty: 1.1, seed: 7, ..o.clone() },
        GenerateOptions { temperature: 1.2, top_k: 5, repetition_penalty: 0.8, seed: 9, ..o.clone() },
        GenerateOptions { repetition_penalty: 1.3, ..o.clone() },
    ]
}

/// A seed fixes the tokens and another seed changes them; streamed text is the decode of the
/// tokens; top-k 1 and a tiny top-p leave only the most likely token (greedy). Returns each of
/// [`variants`]'s tokens, for comparisons across backends.
pub async fn sampling_options_hold(e: &Engine) -> Vec<Vec<u32>> {
    let greedy = GenerateOptions { max_tokens: 16, ignore_eos: true, ..Default::default() };
    let want = run(e, &greedy).await.0;
    let mut all = Vec::new();
    for opts in variants() {
        let (ids, text) = run(e, &opts).await;
        assert_eq!(ids.len(), 16, "{opts:?}");
        assert_eq!(run(e, &opts).await.0, ids, "same seed, same tokens: {opts:?}");
        assert_eq!(text, e.tokenizer().decode(&ids, true).unwrap(), "streamed text: {opts:?}");
        all.push(ids);
    }
    assert_ne!(all[0], all[1], "another seed, other tokens");
    for opts in [GenerateOptions { temperature: 1.3, top_k: 1, seed: 5, ..greedy.clone() }, GenerateOptions { temperature: 1.3, top_p: 1e-6, seed: 5, ..greedy.clone() }] {
        assert_eq!(run(e, &opts).await.0, want, "{opts:?}");
    }
    all
}
