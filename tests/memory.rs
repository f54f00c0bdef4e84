//! Peak heap while loading a packed int4 model, counted by this test binary's allocator: the
//! weights must be held about once (the budget: peak ≤ 1.3 × model bytes), not
//! twice as a plain protobuf → tract load does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use edge_llm::cpu::q4_matmul::Q4Activations;
use edge_llm::cpu::{CpuModel, CpuOptions};
use edge_llm::llama::onnx_export::{export, ExportOptions};
use edge_llm::llama::{LlamaConfig, LlamaWeights};
use edge_llm::tokenizer::Tokenizer;

mod common;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The largest single allocation or reallocation since it was last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Allocations (or reallocations) of at least [`BIG`] bytes since it was last reset.
static BIG_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BIG: AtomicUsize = AtomicUsize::new(usize::MAX);

fn count(size: usize) {
    LARGEST.fetch_max(size, Relaxed);
    if size >= BIG.load(Relaxed) {
        BIG_ALLOCS.fetch_add(1, Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(layout.size(), Relaxed) + layout.size(), Relaxed);
            count(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            PEAK.fetch_max(LIVE.fetch_add(new_size, Relaxed) + new_size, Relaxed);
            count(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests of this binary run one at a time: the counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// The int4 embedding, the largest tensor of [`packed_model`].
const LARGEST_TENSOR: usize = 8192 * 512 / 2;

/// Shard sizes each test runs with: every tensor whole in its shard, and shards so small that
/// the embedding spans four (split tensors must not cost a second copy either).
const SHARD_SIZES: [u64; 2] = [3 << 20, 600 << 10];

/// A Llama big enough (~7 MB of int4 weights) that the weights dominate the load.
fn packed_model(shard_bytes: u64) -> (edge_llm::onnx::ModelProto, Vec<(String, Vec<u8>)>) {
    let cfg = LlamaConfig { hidden_size: 512, intermediate_size: 1536, num_heads: 8, num_kv_heads: 4, head_dim: 64, ..LlamaConfig::tiny(8192) };
    let weights = LlamaWeights::random(&cfg, 7);
    let model = export(&cfg, &weights, &ExportOptions::int4(32, true)).model;
    drop(weights);
    edge_llm::package::shards::shard_weights(model, shard_bytes, "model").unwrap()
}

#[test]
fn packed_int4_load_holds_the_weights_about_once() {
    for shard_bytes in SHARD_SIZES {
        weights_held_about_once(shard_bytes);
    }
}

fn weights_held_about_once(shard_bytes: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (graph, shards) = packed_model(shard_bytes);
    let model_bytes: usize = shards.iter().map(|(_, b)| b.len()).sum();
    assert!(shards.len() >= 2, "the test wants several shards, got {}", shards.len());
    // Like a caller's in-memory files: on the heap from the start, each one handed over (and
    // then consumed) when the engine asks for it.
    let stash = Mutex::new(shards);
    let opts = CpuOptions { q4_kernel: true, q4_activations: Q4Activations::Int8, ..CpuOptions::default() };

    let before = LIVE.load(Relaxed);
    let stashed: usize = stash.lock().unwrap().iter().map(|(_, b)| b.len()).sum();
    PEAK.store(before, Relaxed);
    let model = CpuModel::from_packed(
        graph,
        |loc| {
            let mut s = stash.lock().unwrap();
            let i = s.iter().position(|(n, _)| n == loc).expect("known shard");
            Ok(s.remove(i).1)
        },
        &opts,
    )
    .unwrap();
    let peak = PEAK.load(Relaxed) - before + stashed;
    let kept = LIVE.load(Relaxed) + stashed - before;
    println!("{shard_bytes} B shards: model {model_bytes} B, peak {peak} B ({:.2}x), kept {kept} B", peak as f64 / model_bytes as f64);
    assert!(stash.lock().unwrap().is_empty(), "every shard was consumed");
    // The shards were on the heap from the start (counted in `before`), as a caller's
    // in-memory files are; the peak above them is one tensor plus tract's graph: the issue's
    // budget of 1.3x. A tensor split across shards is cut while all its shards are held, so
    // there the bound is the weights once plus that tensor (the embedding: 1.32x for this
    // model, whose embedding is a third of it). On the web shards are JS memory (next test).
    let budget = if shard_bytes < LARGEST_TENSOR as u64 { (model_bytes + LARGEST_TENSOR) as f64 * 1.05 } else { 1.3 * model_bytes as f64 };
    assert!(peak as f64 <= budget, "peak {peak} B for {model_bytes} B of weights");
    let mut s = std::sync::Arc::new(model).session();
    let logits = s.forward(&[1, 2, 3]).unwrap();
    assert!(logits.iter().all(|l| l.is_finite()));
}

/// Bytes held outside the Rust heap, as a JS `Uint8Array` is on the web: allocated from the
/// system allocator directly, so the counters above never see them.
struct Outside {
    ptr: *mut u8,
    len: usize,
}

impl Outside {
    fn new(bytes: &[u8]) -> Self {
        let layout = Layout::from_size_align(bytes.len().max(1), 1).unwrap();
        let ptr = unsafe { System.alloc(layout) };
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        Outside { ptr, len: bytes.len() }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        unsafe { System.dealloc(self.ptr, Layout::from_size_align(self.len.max(1), 1).unwrap()) };
    }
}

impl edge_llm::package::Blob for Outside {
    fn len(&self) -> u64 {
        self.len as u64
    }
    fn into_vec(self) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }.to_vec()
    }
    fn copy_range(&self, offset: u64, dst: &mut [u8]) {
        let src = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        dst.copy_from_slice(&src[offset as usize..offset as usize + dst.len()]);
    }
}

#[test]
fn shards_outside_the_heap_are_never_copied_in_whole() {
    for shard_bytes in SHARD_SIZES {
        outside_shards_copied_by_tensor(shard_bytes);
    }
}

fn outside_shards_copied_by_tensor(shard_bytes: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (graph, shards) = packed_model(shard_bytes);
    let model_bytes: usize = shards.iter().map(|(_, b)| b.len()).sum();
    let largest = shards.iter().map(|(_, b)| b.len()).max().unwrap();
    let mut outside: Vec<(String, Outside)> = shards.iter().map(|(n, b)| (n.clone(), Outside::new(b))).collect();
    drop(shards);
    let opts = CpuOptions { q4_kernel: true, q4_activations: Q4Activations::Int8, ..CpuOptions::default() };

    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    LARGEST.store(0, Relaxed);
    BIG.store(LARGEST_TENSOR, Relaxed);
    BIG_ALLOCS.store(0, Relaxed);
    let model = CpuModel::from_packed(
        graph,
        |loc| {
            let i = outside.iter().position(|(n, _)| n == loc).expect("known shard");
            Ok(outside.remove(i).1)
        },
        &opts,
    )
    .unwrap();
    let peak = PEAK.load(Relaxed) - before;
    let largest_alloc = LARGEST.load(Relaxed);
    let big_allocs = BIG_ALLOCS.load(Relaxed);
    BIG.store(usize::MAX, Relaxed);
    println!(
        "{shard_bytes} B shards: model {model_bytes} B, heap peak {peak} B ({:.2}x), largest shard {largest} B, largest allocation {largest_alloc} B, {big_allocs} of the embedding's size",
        peak as f64 / model_bytes as f64
    );
    assert!(outside.is_empty(), "every shard was consumed");
    // Nothing the size of a shard was allocated: each tensor was copied out on its own.
    assert!(largest_alloc <= LARGEST_TENSOR, "an allocation of {largest_alloc} B");
    // The embedding (split across shards or not) is allocated once, straight as its tensor.
    assert_eq!(big_allocs, 1, "allocations of the embedding's {LARGEST_TENSOR} B");
    // The weights once, as tensors, plus tract's graph.
    assert!(peak as f64 <= 1.25 * model_bytes as f64, "heap peak {peak} B for {model_bytes} B of weights");
    let mut s = std::sync::Arc::new(model).session();
    assert!(s.forward(&[1, 2, 3]).unwrap().iter().all(|l| l.is_finite()));
}

/// The packer's int4 recipe stores its scales and float zero points as f16 behind `Cast`s to
/// float (`ExportOptions::f16_scales`). The int4 linears' ones stay f16: their nodes read them
/// directly and the kernel widens a row at a time (4 bytes per block where f32 scales and the
/// zero points' f32 term take 8); the rest (the int8 embedding's scales) are widened one at a
/// time as read, so f16 and f32 copies never coexist. So the load peaks lower than the same
/// model's with f32 scales, by about the linears' f16 bytes. Left to tract, every `Cast` is
/// evaluated while all the f16 tensors are held: one more copy of them at the peak. SmolLM2
/// int4's native load peak (`edge-llm-pack bench`): 160.1 MB, 141.6 MB widened as read (and the
/// 8-bit head's scales shared), 130.7 MB with the zero points' term computed in their place,
/// 117 MB with the linears' kept f16 (issue #16).
#[test]
fn f16_scales_stay_f16_or_widen_as_they_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (f32_bytes, _, f32_peak) = recipe_load_peak(false);
    let (model_bytes, f16_bytes, peak) = recipe_load_peak(true);
    println!("f16 scales: model {model_bytes} B ({f16_bytes} B of them), heap peak {peak} B; f32 scales: model {f32_bytes} B, heap peak {f32_peak} B");
    assert!(f16_bytes * 10 > model_bytes, "the test wants f16 scales to matter: {f16_bytes} of {model_bytes} B");
    // Measured: 0.83 MB lower (1.05 MB of f16, 0.79 MB of them the linears'); +0.26 MB when all
    // were widened as read, +1.31 MB (the f16 bytes and more) when tract widened them.
    assert!(peak + f16_bytes / 2 <= f32_peak, "heap peak {peak} B with f16 scales, {f32_peak} B with f32 ones: the linears' f16 scales were widened");
}

/// SmolLM2's tokenizer (49,152 tokens, 48,900 merges) held by edge-llm's lean BPE model, against
/// `tokenizers`' own: `(live bytes after the parse, the parse's peak)`. The lean model's parts
/// are `u32`s and one string, the same size in wasm32 as here, so its numbers hold there; the
/// reference's strings and maps shrink in wasm32 (4.1 MB live there, measured with a counting
/// allocator in a diagnostic wasm build).
#[test]
fn smollm2_tokenizer_is_held_lean() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bytes) = common::smollm2_gguf_bytes() else { return };
    let json = edge_llm::gguf::import::tokenizer(&edge_llm::gguf::Gguf::parse(&bytes).unwrap()).unwrap().json;
    drop(bytes);
    let held = |parse: fn(&[u8]) -> edge_llm::Result<Tokenizer>| {
        let before = LIVE.load(Relaxed);
        PEAK.store(before, Relaxed);
        let t = parse(json.as_bytes()).unwrap();
        let (live, peak) = (LIVE.load(Relaxed) - before, PEAK.load(Relaxed) - before);
        assert_eq!(t.encode("The capital of France is Paris.").unwrap().len(), 7);
        (live, peak)
    };
    let (lean, lean_peak) = held(Tokenizer::from_json);
    let (generic, generic_peak) = held(Tokenizer::from_json_generic);
    println!("tokenizer.json {} B; lean BPE: {lean} B live, parse peak {lean_peak} B; tokenizers' BPE: {generic} B live, parse peak {generic_peak} B", json.len());
    // Measured here: 1.55 MB live (parse peak 2.6 MB) against 6.2 MB (4.1 MB in wasm32).
    assert!(lean <= 1_600_000, "lean tokenizer holds {lean} B");
    assert!(lean_peak <= 3 * json.len(), "lean parse peak {lean_peak} B for a {} B file", json.len());
    assert!(lean * 3 < generic, "lean {lean} B, tokenizers' {generic} B");
}

/// `(model bytes, bytes of f16 initializers, heap peak of the load)` of the packer's int4 recipe
/// (float zero points, an int8 tied embedding and head) with f16 or f32 scales, its shards held
/// outside the heap as on the web.
fn recipe_load_peak(f16_scales: bool) -> (usize, usize, usize) {
    use edge_llm::quant::Precision;
    let cfg = LlamaConfig { hidden_size: 512, intermediate_size: 1536, num_heads: 8, num_kv_heads: 4, head_dim: 64, ..LlamaConfig::tiny(8192) };
    let weights = LlamaWeights::random(&cfg, 7);
    let opts = ExportOptions { q4_min: true, f16_scales, embedding: Precision::Int8, lm_head: Precision::Int8, head_int8_activations: false, ..ExportOptions::int4(32, false) };
    let exported = export(&cfg, &weights, &opts);
    drop(weights);
    let (model, effective) = (exported.model, exported.effective);
    let f16_bytes: usize = model.graph.as_ref().unwrap().initializer.iter().filter(|t| t.data_type == 10).map(|t| t.raw_data.len()).sum();
    let (graph, shards) = edge_llm::package::shards::shard_weights(model, 3 << 20, "model").unwrap();
    let model_bytes: usize = shards.iter().map(|(_, b)| b.len()).sum();
    let mut outside: Vec<(String, Outside)> = shards.iter().map(|(n, b)| (n.clone(), Outside::new(b))).collect();
    drop(shards);
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let model = CpuModel::from_packed(
        graph,
        |loc| {
            let i = outside.iter().position(|(n, _)| n == loc).expect("known shard");
            Ok(outside.remove(i).1)
        },
        &CpuOptions { q4_kernel: true, q8_kernel: true, q4_activations: Q4Activations::AsModelExact, ..CpuOptions::default() },
    )
    .unwrap();
    let peak = PEAK.load(Relaxed) - before;
    // Widened as read, with the zero points' term computed in their place: still the reference
    // on the dequantized weights (float activations in f32, as the recipe's nodes ask).
    use edge_llm::llama::reference::{self, ActivationQuant, RefKvCache};
    let prompt = [1, 2, 3, 500, 8000];
    let got = std::sync::Arc::new(model).session().forward_all(&prompt).unwrap();
    let want = reference::forward_with_head(&cfg, &effective, &prompt, &mut RefKvCache::default(), ActivationQuant::None, ActivationQuant::None).concat();
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(got.len() == want.len() && d < 1e-3, "f16 scales {f16_scales}: max |diff| from the reference {d}");
    (model_bytes, f16_bytes, peak)
}
