//! Any bytes: the GGUF reader returns Ok or a named error, never panics, never over-allocates;
//! when it parses, importing and dequantizing every tensor must not panic either.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = edge_llm::gguf::Gguf::parse(data) {
        let _ = edge_llm::gguf::import::import(data);
        drop(g);
    }
});
