//! edge-llm: quantized LLM inference for browsers and edge runtimes.
//!
//! Module map (a module may use those listed after it, never those before):
//! `eval`, `calibrate` (packer only) → `generate`, `cpu`, `onnx`;
//! `web` → `generate` → `cpu`, `gguf` → `tokenizer`, `model`, `tiny` → `llama` → `onnx`, `quant` → `error`;
//! `web` → `loader` → `store`, `manifest`; `web` → `ota` → `error`.
//! Only `web` touches browser APIs, so everything else builds and tests natively.

#[cfg(feature = "pack")]
pub mod calibrate;
pub mod cpu;
pub mod error;
#[cfg(feature = "pack")]
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod llama;
pub mod loader;
pub mod manifest;
pub mod model;
pub mod onnx;
pub mod ota;
pub mod pack;
pub mod quant;
pub mod quantize;
pub mod store;
pub mod tiny;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
pub use generate::{Engine, GenerateOptions, Generation, TokenEvent};
pub use model::ModelConfig;
