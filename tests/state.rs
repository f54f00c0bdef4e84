//! Saving and restoring conversation state (tests/common/state.rs), natively, in both KV modes.
#![cfg(not(target_arch = "wasm32"))]

use edge_llm::cpu::q4_matmul::Q4Activations;
use edge_llm::cpu::CpuOptions;
use edge_llm::{tiny, Engine};

mod common;
use common::state;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn load(variant: &str, fold_kv_cache: bool) -> Engine {
    let opts = CpuOptions { fold_kv_cache, q4_kernel: false, q4_activations: Q4Activations::Float, ..CpuOptions::default() };
    Engine::open(edge_llm::package::Package::loose(&fixture(variant), &fixture("tokenizer.json"), tiny::model_config()), &edge_llm::generate::EngineOptions { cpu: opts.clone(), ..Default::default() }).unwrap()
}

#[test]
fn restored_state_continues_bit_identically_in_both_kv_modes() {
    for fold in [false, true] {
        for variant in ["model-fp32.onnx", "model-int4.onnx"] {
            let l = || load(variant, fold);
            for k in [1, 5] {
                state::resume_is_bit_identical(&l, &state::greedy(), k);
                let bytes = state::resume_is_bit_identical(&l, &state::seeded(), k);
                // Tiny model: 2 layers x (K, V) x 2 KV heads x 16 dims x f32 = 512 bytes per
                // cached token, plus 4 per token id, a JSON header and the 32-byte checksum.
                let cached = PROMPT_LEN + k - 1;
                assert!(bytes > cached * 516 + 80 && bytes < cached * 516 + 1200, "{bytes} bytes for {cached} tokens");
            }
        }
    }
}

const PROMPT_LEN: usize = common::PROMPT.len();

#[test]
fn state_moves_between_kv_modes() {
    // The saved cache has one layout whichever way the plan keeps it: saved in one mode and
    // resumed in the other, generation goes on with the uninterrupted run's tokens.
    for (from, to) in [(true, false), (false, true)] {
        for opts in [state::greedy(), state::seeded()] {
            state::resume_elsewhere_is_bit_identical(&|| load("model-fp32.onnx", from), &|| load("model-fp32.onnx", to), &opts, 4);
        }
    }
}

#[test]
fn chat_after_restore_reuses_the_cached_prefix() {
    for fold in [false, true] {
        state::chat_after_restore_reuses_prefix(&|| load("model-int4.onnx", fold));
    }
}

#[test]
fn bad_states_are_refused_by_name() {
    state::bad_states_are_refused(&|| load("model-fp32.onnx", false), &|| load("model-int4.onnx", false));
}

#[test]
fn generation_fails_by_name_after_its_engine_is_gone() {
    state::generation_after_drop_is_disposed(&|| load("model-fp32.onnx", false));
}

#[test]
fn forged_states_are_refused_by_name() {
    state::forged_states_are_refused(&|| load("model-fp32.onnx", false));
}
