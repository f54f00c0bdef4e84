use super::LlamaConfig;

/// One decoder layer. Linear weights are `[out][in]` row-major (PyTorch / GGUF order).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

/// All weights of a Llama-style decoder in fp32.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaWeights {
    /// `[vocab][hidden]`
    pub embed: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[vocab][hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

/// splitmix64: tiny, seedable, identical on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 24 random bits -> uniform in [-1, 1)
        ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    fn fill(&mut self, len: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..len).map(|_| offset + scale * self.next_f32()).collect()
    }
}

impl LlamaWeights {
    /// Deterministic random weights: same `cfg` and `seed` give the same bits everywhere.
    pub fn random(cfg: &LlamaConfig, seed: u64) -> Self {
        let mut r = SplitMix(seed);
        let h = cfg.hidden_size;
        // Uniform(-a, a) has variance a²/3, so a = sqrt(3 / fan_in) keeps activations at unit scale.
        let lin = |r: &mut SplitMix, out: usize, inp: usize| r.fill(out * inp, (3.0 / inp as f32).sqrt(), 0.0);
        let layers = (0..cfg.num_layers)
            .map(|_| LayerWeights {
                attn_norm: r.fill(h, 0.1, 1.0),
                wq: lin(&mut r, cfg.q_dim(), h),
                wk: lin(&mut r, cfg.kv_dim(), h),
                wv: lin(&mut r, cfg.kv_dim(), h),
                wo: lin(&mut r, h, cfg.q_dim()),
                ffn_norm: r.fill(h, 0.1, 1.0),
                w_gate: lin(&mut r, cfg.intermediate_size, h),
                w_up: lin(&mut r, cfg.intermediate_size, h),
                w_down: lin(&mut r, h, cfg.intermediate_size),
            })
            .collect();
        LlamaWeights {
            embed: r.fill(cfg.vocab_size * h, 1.0, 0.0),
            layers,
            final_norm: r.fill(h, 0.1, 1.0),
            lm_head: if cfg.tie_word_embeddings { None } else { Some(lin(&mut r, cfg.vocab_size, h)) },
        }
    }

    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// Apply `f` to every linear weight (`[out][in]`, with its out and in sizes), e.g. to replace
    /// it by its quantize-dequantize round trip. The embedding is included as `(vocab, hidden)`.
    pub fn map_linears(&mut self, cfg: &LlamaConfig, mut f: impl FnMut(&str, &mut Vec<f32>, usize, usize)) {
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        for (l, w) in self.layers.iter_mut().enumerate() {
            f(&format!("layers.{l}.q_proj"), &mut w.wq, q, h);
            f(&format!("layers.{l}.k_proj"), &mut w.wk, kv, h);
            f(&format!("layers.{l}.v_proj"), &mut w.wv, kv, h);
            f(&format!("layers.{l}.o_proj"), &mut w.wo, h, q);
            f(&format!("layers.{l}.gate_proj"), &mut w.w_gate, i, h);
            f(&format!("layers.{l}.up_proj"), &mut w.w_up, i, h);
            f(&format!("layers.{l}.down_proj"), &mut w.w_down, h, i);
        }
        f("embed_tokens", &mut self.embed, cfg.vocab_size, h);
        if let Some(head) = self.lm_head.as_mut() {
            f("lm_head", head, cfg.vocab_size, h);
        }
    }
}
