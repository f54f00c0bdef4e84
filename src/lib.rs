//! edge-llm: quantized LLM inference for browsers and edge runtimes.
//!
//! Module map: the README's `## Module map` table, which `tests/module_map.rs` enforces. The
//! authoring tools are behind the `tools` feature (the `.wasm` is built without them).
//! Only `web` touches browser APIs, so everything else builds and tests natively.

pub mod backend;
#[cfg(feature = "pack")]
pub mod calibrate;
pub mod cpu;
pub mod error;
#[cfg(feature = "pack")]
pub mod eval;
pub mod generate;
#[cfg(feature = "tools")]
pub mod gguf;
pub mod gpu;
#[cfg(feature = "tools")]
pub mod llama;
pub mod loader;
pub mod model;
pub mod onnx;
pub mod ota;
pub mod package;
#[cfg(feature = "tools")]
pub mod pack;
pub mod quant;
#[cfg(feature = "tools")]
pub mod quantize;
pub mod store;
#[cfg(feature = "tools")]
pub mod tiny;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
pub use generate::{Engine, GenerateOptions, Generation, TokenEvent};
pub use model::ModelConfig;

/// Tests' fixed pseudo-random numbers (xorshift64): the returned `next(n)` gives a value in
/// `0..n`, the same sequence for the same seed on every platform.
#[cfg(test)]
pub(crate) fn test_rng(mut state: u64) -> impl FnMut(usize) -> usize {
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    }
}
