//! The Llama decoder family: architecture facts, fp32 weights, a reference forward pass and an
//! ONNX exporter in the HF/optimum KV-cache layout.

pub mod onnx_export;
pub mod reference;
mod weights;

pub use crate::model::LlamaConfig;
pub use weights::{LayerWeights, LlamaWeights};
