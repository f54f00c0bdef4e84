//! In headless Chromium (wasm-bindgen-test-runner + chromedriver, see webdriver.json).
#![cfg(target_arch = "wasm32")]

use std::sync::Arc;

use edge_llm::cpu::CpuModel;
use edge_llm::llama::reference::{self, RefKvCache};
use edge_llm::{tiny, Engine, GenerateOptions};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const FP32: &[u8] = include_bytes!("fixtures/tiny/model-fp32.onnx");
const INT4: &[u8] = include_bytes!("fixtures/tiny/model-int4.onnx");
const TOKENIZER: &[u8] = include_bytes!("fixtures/tiny/tokenizer.json");
mod common;
use common::{max_abs_diff, PROMPT};

/// `version()` is the version manifests are checked against: a model that needs exactly it
/// loads, one that needs the next patch release is refused by name.
#[wasm_bindgen_test]
fn version_gates_manifests() {
    use edge_llm::package::manifest::Manifest;
    let v = edge_llm::web::version();
    let parts: Vec<u64> = v.split('.').map(|p| p.parse().expect("numeric semver")).collect();
    assert_eq!(parts.len(), 3, "{v}");
    let mut m = Manifest::from_json(include_bytes!("fixtures/tiny-packed/manifest.json")).unwrap();
    m.min_runtime_version = v.clone();
    m.validate().unwrap();
    m.min_runtime_version = format!("{}.{}.{}", parts[0], parts[1], parts[2] + 1);
    let e = m.validate().unwrap_err();
    assert_eq!(e.name(), "IncompatibleModelError", "{e}");
}

#[wasm_bindgen_test]
fn tract_fp32_logits_match_reference_in_browser() {
    let cfg = tiny::config();
    let model = Arc::new(CpuModel::load(FP32).expect("tiny model loads"));
    let got = model.session().forward_all(&PROMPT).unwrap();
    let want = reference::forward(&cfg, &tiny::weights(), &PROMPT, &mut RefKvCache::default()).concat();
    assert_eq!(got.len(), want.len());
    let d = max_abs_diff(&got, &want);
    console_log!("fp32 logits: max |tract - reference| = {d:e} over {} values", got.len());
    assert!(d < 1e-4, "max |diff| = {d}");
}

#[wasm_bindgen_test]
fn int4_greedy_generation_matches_reference_tokens_in_browser() {
    let e = Engine::open(edge_llm::package::Package::loose(INT4, TOKENIZER, tiny::model_config()), &Default::default()).unwrap();
    let eff = edge_llm::llama::onnx_export::export(&tiny::config(), &tiny::weights(), &edge_llm::llama::onnx_export::ExportOptions::int4(32, true)).effective;
    // The browser default runs int4 with int8 block activations: the reference models that.
    let act = edge_llm::llama::reference::ActivationQuant::Int8Block32;
    let want = reference::greedy_with(&tiny::config(), &eff, &PROMPT, 8, act);
    let mut g = e.generate_ids(PROMPT.to_vec(), &GenerateOptions { max_tokens: 8, ..Default::default() }).unwrap();
    while g.step().unwrap().is_some() {}
    assert_eq!(g.generated(), &want[..g.generated().len()]);
}

#[wasm_bindgen_test]
async fn webgpu_adapter_is_found() {
    let info = edge_llm::gpu::probe().await.expect("headless Chromium offers a WebGPU adapter (swiftshader)");
    console_log!("WebGPU adapter: {info:?}");
    assert!(!info.backend.is_empty());
}

#[path = "common/gpu_kernels.rs"]
mod gpu_kernels;

/// The GPU kernels against their plain-Rust twins in Chromium (SwiftShader's WebGPU, the WGSL
/// through Tint): the bodies `tests/gpu.rs` runs natively, on the fixed edge shapes and 2 random
/// ones (SwiftShader is slow) — the block-quantized and float GEMV and GEMM over every weight
/// kind (bias included), the embedding gather, `quantize_tensor`, RMSNorm, RoPE, KV append and
/// attention, SiLU·mul, the residual add, argmax (lowest index on ties) and the top-k / top-p /
/// temperature / repetition-penalty sampler (keys bit for bit, the pick from the GPU's own
/// weights exact).
#[wasm_bindgen_test]
async fn webgpu_kernels_match_their_twins_in_browser() {
    let ctx = edge_llm::gpu::GpuContext::new().await.expect("headless Chromium offers a WebGPU adapter (swiftshader)");
    let mut rng = gpu_kernels::Rng(1);
    let shapes = gpu_kernels::matmul_shapes(&mut rng, 2);
    gpu_kernels::block_matmul_matches_twin(&ctx, &mut rng, &shapes).await;
    gpu_kernels::embed_matches_twin(&ctx, &mut gpu_kernels::Rng(2)).await;
    gpu_kernels::quantize_tensor_matches_twin(&ctx, &mut gpu_kernels::Rng(13)).await;
    gpu_kernels::rms_norm_matches_twin(&ctx, &mut gpu_kernels::Rng(3)).await;
    gpu_kernels::rope_kv_and_attention_match_twins(&ctx, &mut gpu_kernels::Rng(5)).await;
    gpu_kernels::stacked_and_placed_weights_match_twin(&ctx, &mut gpu_kernels::Rng(14)).await;
    gpu_kernels::elementwise_kernels_match_twins(&ctx, &mut gpu_kernels::Rng(6)).await;
    gpu_kernels::argmax_matches_reference(&ctx, &mut gpu_kernels::Rng(7)).await;
    gpu_kernels::sample_kernel_matches_twin(&ctx, &mut gpu_kernels::Rng(8)).await;
}

/// `gemv_rows.wgsl` by subgroup shuffles at every width they fit, through Tint. Chromium's
/// SwiftShader offers WebGPU's `subgroups`, which wgpu 30 cannot ask for: the context asks for it
/// itself (js/gpu.js), so the subgroup kernels run in browsers too. (The barrier tree at every
/// width runs natively; here the engine's own shape in `webgpu_kernels_match_their_twins_in_browser`:
/// both at every width took 9 minutes in SwiftShader.)
#[wasm_bindgen_test]
async fn webgpu_rows_kernel_by_shuffles_matches_twin_at_every_width_in_browser() {
    let ctx = edge_llm::gpu::GpuContext::new().await.expect("headless Chromium offers a WebGPU adapter (swiftshader)");
    assert!(ctx.has_subgroups(), "Chromium's SwiftShader offers subgroups: the device should have them");
    console_log!("rows kernel: shuffles up to {} lanes", ctx.shuffle_lanes());
    gpu_kernels::rows_kernel_matches_twin_at_every_width(&ctx, &[true]).await;
}

/// The WebGPU backend in the browser (SwiftShader here): the tiny int4 model, opened with
/// `backend: webgpu` and stepped asynchronously, gives the CPU engine's greedy tokens (also
/// with greedy steps chained ahead, `GpuOptions::decode_ahead`, and the residual adds and norms
/// fused into the GEMVs, `GpuOptions::fuse_norm`: what a GPU may tune to); the sync
/// step, which cannot wait for the GPU's readback here, is a named error; `auto` picks the CPU on
/// this software adapter and says so.
#[wasm_bindgen_test]
async fn webgpu_engine_gives_the_cpu_engines_tokens_in_browser() {
    use edge_llm::backend::BackendKind;
    use edge_llm::generate::EngineOptions;
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use edge_llm::package::Package;
    use prost::Message;
    let onnx = export(&tiny::config(), &tiny::weights(), &ExportOptions::int4(32, true)).model.encode_to_vec();
    let tok = tiny::tokenizer_json();
    async fn open_with(onnx: &[u8], tok: &str, backend: BackendKind, gpu: edge_llm::gpu::GpuOptions) -> Engine {
        Engine::open_async(Package::loose(onnx, tok.as_bytes(), tiny::model_config()), &EngineOptions { backend, gpu, ..Default::default() }).await.unwrap()
    }
    async fn open(onnx: &[u8], tok: &str, backend: BackendKind) -> Engine {
        open_with(onnx, tok, backend, Default::default()).await
    }
    let (cpu, gpu) = (open(&onnx, &tok, BackendKind::Wasm).await, open(&onnx, &tok, BackendKind::Webgpu).await);
    assert_eq!(gpu.backend_info().name, "webgpu");
    // Greedy steps chained three ahead in a decode submit, their picks read back together, and
    // the norms fused into the GEMVs after them.
    let ahead = open_with(&onnx, &tok, BackendKind::Webgpu, edge_llm::gpu::GpuOptions { decode_ahead: Some(3), fuse_norm: Some(true), ..Default::default() }).await;
    let opts = GenerateOptions { max_tokens: 16, ignore_eos: true, ..Default::default() };
    // Two turns: the second continues the first (on the GPU here its prompt is computed again:
    // the cache cannot be read back synchronously in a browser).
    let mut tokens = Vec::new();
    for e in [&cpu, &gpu, &ahead] {
        let mut turns = Vec::new();
        let mut prompt = PROMPT.to_vec();
        for _ in 0..2 {
            let mut g = e.generate_ids(prompt.clone(), &GenerateOptions { reuse_prefix: Some(true), ..opts.clone() }).unwrap();
            while g.step_async().await.unwrap().is_some() {}
            prompt.extend(g.generated());
            prompt.push(7);
            turns.push(g.generated().to_vec());
        }
        tokens.push(turns);
    }
    console_log!("WebGPU tokens {:?}", tokens[1]);
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(tokens[0], tokens[2], "steps chained ahead");
    let e = gpu.save_state().unwrap_err();
    assert_eq!(e.name(), "UnsupportedBackendError", "saving reads the GPU's cache back: {e}");
    let mut g = gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap();
    let e = g.step().unwrap_err();
    assert_eq!(e.name(), "UnsupportedBackendError", "{e}");
    // Two generations stepping at once on one GPU engine (two streams in a page): while the
    // first waits for its readback the second is refused by name, loses nothing, and runs
    // once the first is done.
    let (mut g1, mut g2) = (gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap(), gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap());
    use std::future::Future as _;
    let mut first = Box::pin(g1.step_async());
    let waker = std::task::Waker::noop();
    assert!(first.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_pending(), "a GPU step waits for its readback");
    let e = g2.step_async().await.unwrap_err();
    assert_eq!(e.name(), "InvalidStateError", "{e}");
    first.await.unwrap().expect("the first step's token");
    drop(g1);
    while g2.step_async().await.unwrap().is_some() {}
    assert_eq!(g2.generated(), &tokens[1][0][..], "the refused generation, retried, gives the tokens of an undisturbed one");
    let auto = open(&onnx, &tok, BackendKind::Auto).await.backend_info();
    assert_eq!(auto.name, "wasm", "{auto:?}");
    assert!(auto.reason.as_deref().is_some_and(|r| r.contains("software")), "{auto:?}");
}

/// Every format edge-llm's packer writes runs on the WebGPU backend in the browser (SwiftShader:
/// the kernels through Tint, f16 scales and zero points read with `unpack2x16float`): the tiny
/// model in the int4 recipe (round to nearest) and in 8-bit blocks gives the CPU engine's
/// greedy tokens.
#[wasm_bindgen_test]
async fn webgpu_runs_every_packer_format_in_browser() {
    use edge_llm::backend::BackendKind;
    use edge_llm::generate::EngineOptions;
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use edge_llm::package::Package;
    use prost::Message;
    for (format, opts) in [("int4 recipe", ExportOptions { q4_search: false, ..ExportOptions::int4_recipe(32) }), ("int8 block", ExportOptions::int8_block())] {
        let onnx = export(&tiny::config(), &tiny::weights(), &opts).model.encode_to_vec();
        let mut tokens = Vec::new();
        for backend in [BackendKind::Wasm, BackendKind::Webgpu] {
            let e = Engine::open_async(Package::loose(&onnx, TOKENIZER, tiny::model_config()), &EngineOptions { backend, ..Default::default() }).await.unwrap();
            assert_eq!(e.backend_info().name, if backend == BackendKind::Wasm { "wasm" } else { "webgpu" });
            let mut g = e.generate_ids(PROMPT.to_vec(), &GenerateOptions { max_tokens: 16, ignore_eos: true, ..Default::default() }).unwrap();
            while g.step_async().await.unwrap().is_some() {}
            tokens.push(g.generated().to_vec());
        }
        console_log!("{format} on WebGPU: {:?}", tokens[1]);
        assert_eq!(tokens[0], tokens[1], "{format}");
    }
}

/// common::sampling's body on the WebGPU engine in the browser (SwiftShader: `sample.wgsl`
/// through Tint), and every variant's tokens equal the CPU engine's for the same seed. The model
/// on float activations (no `accuracy_level = 4`), the CPU computing those in f32
/// (`AsModelExact`): at temperature 4 the picks move on the int8-rounded path's 3e-6 logit
/// differences (see `tests/gpu.rs`, the same test natively).
#[wasm_bindgen_test]
async fn webgpu_engine_samples_as_the_cpu_engine_in_browser() {
    use edge_llm::backend::BackendKind;
    use edge_llm::cpu::q4_matmul::Q4Activations;
    use edge_llm::cpu::CpuOptions;
    use edge_llm::generate::EngineOptions;
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use edge_llm::package::Package;
    use prost::Message;
    let float = ExportOptions { int8_activations: false, head_int8_activations: false, ..ExportOptions::int4(32, true) };
    let onnx = export(&tiny::config(), &tiny::weights(), &float).model.encode_to_vec();
    let mut tokens = Vec::new();
    for backend in [BackendKind::Wasm, BackendKind::Webgpu] {
        let cpu = CpuOptions { q4_activations: Q4Activations::AsModelExact, ..Default::default() };
        let e = Engine::open_async(Package::loose(&onnx, TOKENIZER, tiny::model_config()), &EngineOptions { backend, cpu, ..Default::default() }).await.unwrap();
        tokens.push(common::sampling::sampling_options_hold(&e).await);
    }
    console_log!("WebGPU sampled tokens {:?}", tokens[1]);
    assert_eq!(tokens[0], tokens[1]);
}

/// Device loss in the browser (`GPUDevice.destroy()` between two steps): that step fails with
/// `GpuDeviceLostError`, the CPU fallback takes over, the generation goes on there with the CPU
/// engine's tokens, and `backend_info` says why.
#[wasm_bindgen_test]
async fn webgpu_device_loss_falls_back_to_the_cpu_in_browser() {
    use edge_llm::backend::BackendKind;
    use edge_llm::generate::EngineOptions;
    use edge_llm::package::Package;
    async fn open(backend: BackendKind) -> edge_llm::Result<Engine> {
        Engine::open_async(Package::loose(INT4, TOKENIZER, tiny::model_config()), &EngineOptions { backend, ..Default::default() }).await
    }
    let opts = GenerateOptions { max_tokens: 10, ignore_eos: true, ..Default::default() };
    let cpu = open(BackendKind::Wasm).await.unwrap();
    let mut g = cpu.generate_ids(PROMPT.to_vec(), &opts).unwrap();
    while g.step_async().await.unwrap().is_some() {}
    let want = g.generated().to_vec();
    let gpu = open(BackendKind::Webgpu).await.unwrap();
    gpu.set_cpu_fallback(Box::new(|| Box::pin(async { Engine::open_async(Package::loose(INT4, TOKENIZER, tiny::model_config()), &Default::default()).await })));
    let mut g = gpu.generate_ids(PROMPT.to_vec(), &opts).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(g.step_async().await.unwrap().unwrap().token_id);
    }
    gpu.gpu_device().expect("on the GPU").destroy();
    let e = g.step_async().await.unwrap_err();
    assert_eq!(e.name(), "GpuDeviceLostError", "{e}");
    let info = gpu.backend_info();
    console_log!("after the device was lost: {info:?}");
    assert_eq!(info.name, "wasm", "{info:?}");
    while let Some(ev) = g.step_async().await.unwrap() {
        got.push(ev.token_id);
    }
    assert_eq!(got, want);
}

/// `Engine.load` (the JS API) of the packed tiny int4 model on WebGPU installs the CPU
/// fallback: with the device destroyed mid-generation, that step throws `GpuDeviceLostError`,
/// the model is re-read from the load's cache (`cache: "memory"`) and the generation goes on
/// there with the CPU engine's tokens; `stats()` says so. With a shard gone from the cache, the
/// step throws the fallback's own `StoreError`, naming the shard and the loss. (Also
/// `gpuPrecision`: `stats()` reports it on the GPU only; `"f16"` on an adapter without
/// `shader-f16`, as SwiftShader is, runs f32 and gives the CPU's tokens.)
#[wasm_bindgen_test]
async fn engine_load_falls_back_to_the_cached_model_when_the_device_is_lost_in_browser() {
    use edge_llm::web::Engine as JsEngine;
    use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;
    let opts = edge_llm::pack::PackOptions { shard_bytes: 5_000, ..Default::default() };
    let (manifest, files) = edge_llm::pack::pack(INT4, TOKENIZER, &tiny::model_config(), &opts).unwrap();
    let store = edge_llm::web::memory_store();
    let call = |method: &str, args: &[JsValue]| -> JsFuture {
        let f: Function = Reflect::get(&store, &method.into()).unwrap().unchecked_into();
        let args: js_sys::Array = args.iter().collect();
        JsFuture::from(f.apply(&store, &args).unwrap().unchecked_into::<Promise>())
    };
    let sha = |path: &str| manifest.files.iter().find(|f| f.path == path).unwrap().sha256.clone();
    for (path, bytes) in &files {
        call("put", &[sha(path).into(), Uint8Array::from(&bytes[..]).into()]).await.unwrap();
    }
    let obj = |pairs: &[(&str, JsValue)]| {
        let o = Object::new();
        for (k, v) in pairs {
            Reflect::set(&o, &(*k).into(), v).unwrap();
        }
        JsValue::from(o)
    };
    let json = Uint8Array::from(manifest.to_json().as_bytes());
    // An engine on `backend` from the memory cache, with `extra` load options.
    let load_with = |backend: &'static str, extra: &[(&str, JsValue)]| {
        let options = obj(&[&[("backend", backend.into()), ("cache", "memory".into())][..], extra].concat());
        JsEngine::load(json.clone().into(), Some(options.unchecked_into()))
    };
    let load = |backend: &'static str| load_with(backend, &[]);
    let prompt: JsValue = js_sys::Uint32Array::from(&PROMPT[..]).into();
    let gen_opts = || -> Option<edge_llm::web::GenerateOptionsArg> { Some(obj(&[("maxTokens", 10.into()), ("ignoreEos", true.into())]).unchecked_into()) };
    let token = |v: JsValue| Reflect::get(&v, &"tokenId".into()).unwrap().as_f64().unwrap() as u32;
    let stat = |e: &JsEngine, k: &str| Reflect::get(&e.stats().unwrap(), &k.into()).unwrap();
    // The generation's tokens from here to its end.
    let rest = async |g: &mut edge_llm::web::Generation| {
        let mut got = Vec::new();
        while let Some(t) = Some(JsFuture::from(g.step_async()).await.unwrap()).filter(|v| !v.is_undefined()) {
            got.push(token(t));
        }
        got
    };

    let cpu = load("wasm").await.unwrap();
    let want = rest(&mut cpu.start(prompt.clone(), gen_opts()).unwrap()).await;
    assert_eq!(want.len(), 10);

    assert!(stat(&cpu, "gpuPrecision").is_undefined(), "no GPU precision on the CPU");
    // `gpuPrecision: "f16"` where the adapter lacks shader-f16 (Chromium's SwiftShader): the
    // products stay f32, stats say so, the tokens are the CPU's.
    let f16 = load_with("webgpu", &[("gpuPrecision", "f16".into())]).await.unwrap();
    assert_eq!(stat(&f16, "gpuPrecision").as_string().as_deref(), Some("f32"), "SwiftShader has no shader-f16");
    let got = rest(&mut f16.start(prompt.clone(), gen_opts()).unwrap()).await;
    assert_eq!(got, want, "f16 asked without shader-f16: the CPU's tokens");

    let gpu = load("webgpu").await.unwrap();
    assert_eq!(stat(&gpu, "backend").as_string().as_deref(), Some("webgpu"));
    assert_eq!(stat(&gpu, "gpuPrecision").as_string().as_deref(), Some("f32"));
    let mut g = gpu.start(prompt.clone(), gen_opts()).unwrap();
    let mut got = vec![token(JsFuture::from(g.step_async()).await.unwrap())];
    gpu.gpu_device().expect("on the GPU").destroy();
    let e = JsFuture::from(g.step_async()).await.unwrap_err();
    let name = |e: &JsValue| Reflect::get(e, &"name".into()).unwrap().as_string().unwrap_or_default();
    let message = |e: &JsValue| Reflect::get(e, &"message".into()).unwrap().as_string().unwrap_or_default();
    assert_eq!(name(&e), "GpuDeviceLostError", "{}", message(&e));
    let reason = stat(&gpu, "backendReason").as_string().unwrap_or_default();
    console_log!("after the device was lost: backend {:?}, {reason}", stat(&gpu, "backend"));
    assert_eq!(stat(&gpu, "backend").as_string().as_deref(), Some("cpu-wasm-simd128"));
    assert!(reason.contains("device was lost"), "{reason}");
    got.extend(rest(&mut g).await);
    assert_eq!(got, want);

    // A shard the cache no longer has: the fallback's error, by its own name.
    let gpu = load("webgpu").await.unwrap();
    let mut g = gpu.start(prompt.clone(), gen_opts()).unwrap();
    JsFuture::from(g.step_async()).await.unwrap();
    let gone = &manifest.files[1].path;
    call("delete", &[sha(gone).into()]).await.unwrap();
    gpu.gpu_device().expect("on the GPU").destroy();
    let e = JsFuture::from(g.step_async()).await.unwrap_err();
    console_log!("fallback without a cached shard: {}: {}", name(&e), message(&e));
    assert_eq!(name(&e), "StoreError", "{}", message(&e));
    assert!(message(&e).contains(gone.as_str()) && message(&e).contains("device was lost"), "{}", message(&e));
}

#[wasm_bindgen_test]
fn int4_simd_kernel_logits_match_reference_in_browser() {
    for (sym, int8) in common::Q4_KERNEL_VARIANTS {
        let run = common::run_q4_kernel(sym, int8);
        let d = max_abs_diff(&run.got, &run.modelled);
        console_log!("int4 (symmetric={sym}, int8 activations={int8}) wasm SIMD kernel: max |diff| = {d:e}");
        assert!(d < 1e-3, "symmetric={sym} int8={int8}: max |diff| = {d}");
    }
}

#[wasm_bindgen_test]
fn restored_state_continues_bit_identically_in_browser() {
    let load = || Engine::open(edge_llm::package::Package::loose(INT4, TOKENIZER, tiny::model_config()), &Default::default()).unwrap();
    let bytes = common::state::resume_is_bit_identical(&load, &common::state::greedy(), 5);
    common::state::resume_is_bit_identical(&load, &common::state::seeded(), 5);
    common::state::chat_after_restore_reuses_prefix(&load);
    console_log!("tiny int4 state after 10 cached tokens: {bytes} bytes");
}

#[wasm_bindgen_test]
fn int4_simd_matmul_matches_reference_in_browser() {
    for (n, k, m) in common::Q4_MATMUL_SHAPES {
        for sym in [true, false] {
            let d = common::q4_matmul_max_diff(n, k, m, sym);
            console_log!("q4 matmul n={n} k={k} m={m} symmetric={sym}: max |diff| = {d:e}");
            assert!(d < 1e-3, "n={n} k={k} m={m} symmetric={sym}: max |diff| = {d}");
        }
    }
}

#[wasm_bindgen_test]
fn int8_block_simd_matmul_matches_reference_in_browser() {
    for (n, k, m) in common::Q8_BLOCK_SHAPES {
        let d = common::q8_block_matmul_max_diff(n, k, m);
        console_log!("q8 block matmul n={n} k={k} m={m}: max |diff| = {d:e}");
        assert!(d < 1e-3, "n={n} k={k} m={m}: max |diff| = {d}");
    }
}

#[wasm_bindgen_test]
fn int8_simd_matmul_integer_is_exact_in_browser() {
    for (m, k, n) in common::Q8_MATMUL_SHAPES {
        assert!(common::q8_matmul_matches(m, k, n), "m={m} k={k} n={n}");
    }
}

#[wasm_bindgen_test]
fn int8_graph_logits_match_reference_in_browser() {
    // The int8 graph (DynamicQuantizeLinear + MatMulInteger) through edge-llm's MatMulInteger
    // kernel, against the reference that quantizes activations the same way.
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    let cfg = tiny::config();
    let exported = export(&cfg, &tiny::weights(), &ExportOptions::int8());
    let model = Arc::new(CpuModel::from_proto(exported.model, &Default::default()).unwrap());
    // DynamicQuantizeLinear scales a whole input: compare token by token, as natively.
    let (mut session, mut cache) = (model.session(), RefKvCache::default());
    for t in PROMPT {
        let got = session.forward(&[t]).unwrap();
        let want = reference::forward_int8_activations(&cfg, &exported.effective, &[t], &mut cache).concat();
        let d = max_abs_diff(&got, &want);
        console_log!("int8 graph (wasm MatMulInteger kernel), token {t}: max |diff| = {d:e}");
        assert!(d < 1e-3, "token {t}: max |diff| = {d}");
    }
}
