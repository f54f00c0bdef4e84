//! What the runtime needs to know about a model beyond its graph: architecture facts, special
//! tokens and the chat template. The packer writes it into the manifest; tests write it beside
//! the tiny models as `model_config.json`.

use serde::{Deserialize, Serialize};


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

/// Architecture facts of a Llama-style decoder (Llama, SmolLM2, Qwen2 without biases, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    /// lm_head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// The generated test model: small enough that every variant is well under 1 MB.
    pub fn tiny(vocab_size: usize) -> Self {
        LlamaConfig {
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
