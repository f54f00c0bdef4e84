//! What the runtime needs to know about a model beyond its graph: architecture facts, special
//! tokens and the chat template. The packer writes it into the manifest; tests write it beside
//! the tiny models as `model_config.json`.

use serde::{Deserialize, Serialize};

use crate::llama::LlamaConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub model_id: String,
    pub architecture: LlamaConfig,
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// Text of the BOS / EOS tokens, as chat templates refer to them.
    pub bos_token: String,
    pub eos_token: String,
    pub chat_template: Option<String>,
}

impl ModelConfig {
    pub fn from_json(bytes: &[u8]) -> crate::Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| crate::Error::InvalidModel(format!("model config: {e}")))
    }
}
