//! `restoreState` over any bytes, with the checksum recomputed (it has no key, so a forger
//! can) and the model's fingerprint patched in. A state that restores must resume and step
//! without a panic. Input: a mode byte, then the state without its checksum (even modes) or a
//! patch `[u32 offset][bytes]` of a real state saved 3 tokens into a generation (odd modes;
//! 5 and 7 cut it at the offset first), so the fuzzer starts from a valid state.
#![no_main]
use edge_llm::cpu::CpuOptions;
use edge_llm::{tiny, Engine, GenerateOptions};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");

thread_local! {
    /// The engine, and a state it saved mid-generation (without its checksum).
    static ENGINE: (Engine, Vec<u8>) = {
        let f = |n: &str| std::fs::read(format!("{FIXTURES}/{n}")).unwrap();
        let opts = CpuOptions { q4_kernel: false, ..CpuOptions::default() };
        let e = Engine::open(edge_llm::package::Package::loose(&f("model-int4.onnx"), &f("tokenizer.json"), tiny::model_config()), &edge_llm::generate::EngineOptions { cpu: opts.clone(), ..Default::default() }).unwrap();
        let mut g = e.generate_ids(vec![1, 2, 3, 4], &GenerateOptions { max_tokens: 8, ignore_eos: true, ..Default::default() }).unwrap();
        for _ in 0..3 {
            g.step().unwrap();
        }
        drop(g);
        let mut good = e.save_state().unwrap();
        good.truncate(good.len() - 32);
        (e, good)
    };
}

fuzz_target!(|data: &[u8]| ENGINE.with(|(e, good)| check(e, good, data)));

fn check(e: &Engine, good: &[u8], data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let Some(at) = rest.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize) else { return };
        let mut b = good.to_vec();
        let at = at % (b.len() + 1);
        if mode & 4 != 0 {
            b.truncate(at);
        }
        for (i, &x) in rest[4..].iter().enumerate() {
            match b.get_mut(at + i) {
                Some(y) => *y = x,
                None => b.push(x),
            }
        }
        b
    };
    // Patch in the engine's fingerprint so inputs get past that check too.
    if bytes.len() >= 44 {
        bytes[12..44].copy_from_slice(e.fingerprint());
    }
    bytes.extend_from_slice(&Sha256::digest(&bytes));
    if e.restore_state(&bytes).is_ok() {
        if let Ok(mut g) = e.resume() {
            for _ in 0..2 {
                if !matches!(g.step(), Ok(Some(_))) {
                    break;
                }
            }
        }
        // A new generation over the restored cache.
        if let Ok(mut g) = e.generate_ids(vec![1, 2, 3], &GenerateOptions { max_tokens: 1, reuse_prefix: Some(true), ..Default::default() }) {
            let _ = g.step();
        }
    }
}
