//! Plain-Rust forward pass of a Llama decoder: slow, sequential and obviously right.
//! Every backend's logits are compared with it.

use super::{LlamaConfig, LlamaWeights};

/// Keys and values seen so far, per layer, laid out `[kv_head][position][head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct RefKvCache {
    keys: Vec<Vec<Vec<Vec<f32>>>>,
    values: Vec<Vec<Vec<Vec<f32>>>>,
    len: usize,
}

impl RefKvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

/// ONNX `DynamicQuantizeLinear` followed by dequantization: what an int8 graph
/// (`quantize_dynamic`) does to activations before `MatMulInteger`.
pub fn dynamic_quantize_round_trip(x: &[f32]) -> Vec<f32> {
    let lo = x.iter().fold(0f32, |m, v| m.min(*v));
    let hi = x.iter().fold(0f32, |m, v| m.max(*v));
    let scale = (hi - lo) / 255.0;
    if scale == 0.0 {
        return vec![0.0; x.len()];
    }
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    x.iter().map(|v| (((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) - zp) * scale).collect()
}

/// How a backend rounds the inputs of its linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationQuant {
    None,
    /// Per tensor, uint8 with a zero point: ONNX `DynamicQuantizeLinear` (int8 graphs).
    DynamicUint8,
    /// Per block of 32, symmetric int8: edge-llm's int8-activation q4 kernel.
    Int8Block32,
}

/// `y[n] = sum_k x[k] * w[n][k]`
fn linear(x: &[f32], w: &[f32], n: usize, act: ActivationQuant) -> Vec<f32> {
    let q;
    let x = match act {
        ActivationQuant::None => x,
        ActivationQuant::DynamicUint8 => {
            q = dynamic_quantize_round_trip(x);
            &q[..]
        }
        ActivationQuant::Int8Block32 => {
            q = crate::quant::reference::q8_block_round_trip(x, x.len());
            &q[..]
        }
    };
    let k = x.len();
    (0..n).map(|o| w[o * k..(o + 1) * k].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

/// Rotate-half RoPE (HF / NeoX convention) on one head, in place.
fn rope(x: &mut [f32], pos: usize, theta: f32) {
    let half = x.len() / 2;
    for i in 0..half {
        let inv_freq = 1.0 / theta.powf((2 * i) as f32 / x.len() as f32);
        let angle = pos as f32 * inv_freq;
        let (s, c) = angle.sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

/// Run `tokens` through the model after what `cache` holds; returns `[tokens.len()][vocab]` logits.
pub fn forward(cfg: &LlamaConfig, w: &LlamaWeights, tokens: &[u32], cache: &mut RefKvCache) -> Vec<Vec<f32>> {
    forward_impl(cfg, w, tokens, cache, ActivationQuant::None, ActivationQuant::None)
}

/// [`forward`] with every linear layer's input rounded as `act` says.
pub fn forward_with(cfg: &LlamaConfig, w: &LlamaWeights, tokens: &[u32], cache: &mut RefKvCache, act: ActivationQuant) -> Vec<Vec<f32>> {
    forward_impl(cfg, w, tokens, cache, act, act)
}

/// [`forward_with`] with the head's input rounded as `head` says instead: formats whose 8-bit
/// head runs on float activations (`ExportOptions::head_int8_activations` off).
pub fn forward_with_head(cfg: &LlamaConfig, w: &LlamaWeights, tokens: &[u32], cache: &mut RefKvCache, act: ActivationQuant, head: ActivationQuant) -> Vec<Vec<f32>> {
    forward_impl(cfg, w, tokens, cache, act, head)
}

/// [`forward`] with every linear layer's input quantized per token as `DynamicQuantizeLinear`
/// does: the exact computation of an int8 graph run one token at a time.
pub fn forward_int8_activations(cfg: &LlamaConfig, w: &LlamaWeights, tokens: &[u32], cache: &mut RefKvCache) -> Vec<Vec<f32>> {
    forward_impl(cfg, w, tokens, cache, ActivationQuant::DynamicUint8, ActivationQuant::DynamicUint8)
}

fn forward_impl(cfg: &LlamaConfig, w: &LlamaWeights, tokens: &[u32], cache: &mut RefKvCache, int8: ActivationQuant, head: ActivationQuant) -> Vec<Vec<f32>> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    if cache.keys.is_empty() {
        cache.keys = vec![vec![Vec::new(); cfg.num_kv_heads]; cfg.num_layers];
        cache.values = vec![vec![Vec::new(); cfg.num_kv_heads]; cfg.num_layers];
    }
    let group = cfg.num_heads / cfg.num_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = Vec::with_capacity(tokens.len());
    for &tok in tokens {
        let pos = cache.len;
        let t = tok as usize;
        let mut x = w.embed[t * h..(t + 1) * h].to_vec();
        for (l, lw) in w.layers.iter().enumerate() {
            let xn = rms_norm(&x, &lw.attn_norm, cfg.rms_norm_eps);
            let mut q = linear(&xn, &lw.wq, cfg.q_dim(), int8);
            let mut k = linear(&xn, &lw.wk, cfg.kv_dim(), int8);
            let v = linear(&xn, &lw.wv, cfg.kv_dim(), int8);
            q.chunks_mut(hd).for_each(|head| rope(head, pos, cfg.rope_theta));
            k.chunks_mut(hd).for_each(|head| rope(head, pos, cfg.rope_theta));
            for kvh in 0..cfg.num_kv_heads {
                cache.keys[l][kvh].push(k[kvh * hd..(kvh + 1) * hd].to_vec());
                cache.values[l][kvh].push(v[kvh * hd..(kvh + 1) * hd].to_vec());
            }
            let mut attn = vec![0f32; cfg.q_dim()];
            for head in 0..cfg.num_heads {
                let kvh = head / group;
                let qh = &q[head * hd..(head + 1) * hd];
                let scores: Vec<f32> = cache.keys[l][kvh]
                    .iter()
                    .map(|kr| kr.iter().zip(qh).map(|(a, b)| a * b).sum::<f32>() * scale)
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                let o = &mut attn[head * hd..(head + 1) * hd];
                for (p, e) in exps.iter().enumerate() {
                    for (oi, vi) in o.iter_mut().zip(&cache.values[l][kvh][p]) {
                        *oi += e / sum * vi;
                    }
                }
            }
            let proj = linear(&attn, &lw.wo, h, int8);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            let xn = rms_norm(&x, &lw.ffn_norm, cfg.rms_norm_eps);
            let gate = linear(&xn, &lw.w_gate, cfg.intermediate_size, int8);
            let up = linear(&xn, &lw.w_up, cfg.intermediate_size, int8);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = linear(&act, &lw.w_down, h, int8);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        cache.len += 1;
        let xn = rms_norm(&x, &w.final_norm, cfg.rms_norm_eps);
        out.push(linear(&xn, w.lm_head(), cfg.vocab_size, head));
    }
    out
}

/// Greedy decoding with the reference forward pass: the token ids every backend must reproduce.
pub fn greedy(cfg: &LlamaConfig, w: &LlamaWeights, prompt: &[u32], max_new: usize) -> Vec<u32> {
    greedy_with(cfg, w, prompt, max_new, ActivationQuant::None)
}

/// [`greedy`] with linear inputs rounded as `act` says.
pub fn greedy_with(cfg: &LlamaConfig, w: &LlamaWeights, prompt: &[u32], max_new: usize, act: ActivationQuant) -> Vec<u32> {
    let mut cache = RefKvCache::default();
    let mut logits = forward_with(cfg, w, prompt, &mut cache, act).pop().unwrap_or_default();
    let mut out = Vec::with_capacity(max_new);
    for _ in 0..max_new {
        let next = crate::generate::argmax(&logits);
        out.push(next);
        logits = forward_with(cfg, w, &[next], &mut cache, act).pop().unwrap_or_default();
    }
    out
}

