//! Test problems shared by the native and the browser test binaries (`mod common;`), so each
//! is written once and run on every backend.
#![allow(dead_code)]

use std::sync::Arc;

use edge_llm::cpu::{CpuModel, CpuOptions};
use edge_llm::llama::onnx_export::{export, ExportOptions};
use edge_llm::llama::reference::{self, ActivationQuant, RefKvCache};
use edge_llm::tiny;

/// Six tokens: through the q4 kernel, one 4-row tile and two single rows.
pub const PROMPT: [u32; 6] = [5, 80, 17, 200, 3, 99];

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Every variant of edge-llm's q4 kernel: (symmetric weights, int8 activations).
pub const Q4_KERNEL_VARIANTS: [(bool, bool); 4] = [(true, false), (false, false), (true, true), (false, true)];

/// The tiny int4 model's logits for [`PROMPT`] through edge-llm's q4 kernel, beside the
/// reference that models the kernel's activation rounding (`modelled`) and the exact one.
pub struct Q4KernelRun {
    pub got: Vec<f32>,
    pub modelled: Vec<f32>,
    pub exact: Vec<f32>,
}

pub fn run_q4_kernel(symmetric: bool, int8_activations: bool) -> Q4KernelRun {
    let cfg = tiny::config();
    let exported = export(&cfg, &tiny::weights(), &ExportOptions::int4(32, symmetric));
    let opts = CpuOptions { fold_kv_cache: false, q4_kernel: true, q4_int8_activations: int8_activations, threads: None };
    let model = Arc::new(CpuModel::from_proto(exported.model, &opts).unwrap());
    let got = model.session().forward_all(&PROMPT).unwrap();
    let act = if int8_activations { ActivationQuant::Int8Block32 } else { ActivationQuant::None };
    let modelled = reference::forward_with(&cfg, &exported.effective, &PROMPT, &mut RefKvCache::default(), act).concat();
    let exact = reference::forward(&cfg, &exported.effective, &PROMPT, &mut RefKvCache::default()).concat();
    Q4KernelRun { got, modelled, exact }
}

/// The tiny int4 model through edge-llm's q4 kernel (int8 activations when `int8_activations`)
/// on `threads` CPU threads, its matmuls split however small: greedy tokens after [`PROMPT`]
/// and the logits of every step, for comparing thread counts.
pub fn q4_greedy_on_threads(symmetric: bool, int8_activations: bool, threads: usize, steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    use edge_llm::cpu::threads as cpu_threads;
    cpu_threads::set_min_macs_per_thread(1);
    assert_eq!(cpu_threads::configure(threads), threads, "could not get {threads} CPU threads");
    let cfg = tiny::config();
    let exported = export(&cfg, &tiny::weights(), &ExportOptions::int4(32, symmetric));
    let opts = CpuOptions { q4_kernel: true, q4_int8_activations: int8_activations, ..CpuOptions::default() };
    let model = Arc::new(CpuModel::from_proto(exported.model, &opts).unwrap());
    let mut session = model.session();
    let vocab = model.vocab_size();
    let all = session.forward_all(&PROMPT).unwrap();
    let mut logits = vec![all[all.len() - vocab..].to_vec()];
    let mut tokens = Vec::new();
    for _ in 0..steps {
        let last = logits.last().unwrap();
        let next = (0..vocab).max_by(|a, b| last[*a].total_cmp(&last[*b]).then(b.cmp(a))).unwrap() as u32;
        tokens.push(next);
        logits.push(session.forward(&[next]).unwrap());
    }
    (tokens, logits)
}
