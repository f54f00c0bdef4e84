//! GPU kernels against their plain-Rust twins (`gpu::twin`): one async body per kernel family,
//! run natively on Vulkan (`tests/gpu.rs`, each GPU call completing when polled) and in headless
//! Chromium on SwiftShader's WebGPU (`tests/web.rs`, through Tint), on the same seeded shapes.
#![allow(dead_code)] // each includer runs its part

use edge_llm::gpu::kernels::{self, f32_bytes, Pipelines};
use edge_llm::gpu::nbits::{BlockSpec, BlockWeight, Field, GpuNBits, ZeroPointKind, ZeroPoints};
use edge_llm::gpu::twin;
use edge_llm::gpu::GpuContext;

/// splitmix64: seeded, identical everywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect()
    }
}

pub fn upload(ctx: &GpuContext, v: &[f32]) -> wgpu::Buffer {
    ctx.storage_init("test", &f32_bytes(v)).unwrap()
}

/// The step state the kernels read, `{ pos, rows, tokens[] }` (at least one token slot).
pub fn state(ctx: &GpuContext, pos: usize, rows: usize, tokens: &[u32]) -> wgpu::Buffer {
    let mut words = vec![pos as u32, rows as u32];
    words.extend(tokens);
    words.resize(words.len().max(3), 0);
    ctx.storage_init("state", &words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap()
}

pub async fn download(ctx: &GpuContext, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
    kernels::download_f32(ctx, b, len).await.unwrap()
}

/// `|got - want| <= tol[i]` everywhere, with the first offender in the message.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol(i), "{what}: [{i}] gpu {g} vs twin {w} (tol {})", tol(i));
    }
}

/// The weight kinds the GPU runs (bits, zero points, f16 scales and float zero points, bias):
/// int4 without zero points, with integer ones (also with a bias), with float ones in f32 and in
/// f16 (edge-llm's int4 recipe), int8 blocks without (with f16 scales: the recipe's embedding and
/// head) and with integer ones, and float weights (a plain MatMul's): f32, f16 with a bias.
pub const KINDS: [(usize, ZeroPointKind, bool, bool); 10] = [
    (4, ZeroPointKind::Middle, false, false),
    (4, ZeroPointKind::Int, false, false),
    (4, ZeroPointKind::Int, false, true),
    (4, ZeroPointKind::Float, false, false),
    (4, ZeroPointKind::Float, true, false),
    (8, ZeroPointKind::Middle, false, false),
    (8, ZeroPointKind::Middle, true, false),
    (8, ZeroPointKind::Int, false, false),
    (32, ZeroPointKind::Middle, false, false),
    (16, ZeroPointKind::Middle, false, true),
];

/// A random `[n][k]` weight of `kind` (bits, zero points, f16 scales, bias): random stored
/// values (padding included), scales and zero points (f16-exact with `f16_params`); a float
/// kind's values random floats (f16-rounded for 16 bits).
pub fn random_weight(rng: &mut Rng, n: usize, k: usize, block_size: usize, (bits, zero_points, f16_params, bias): (usize, ZeroPointKind, bool, bool)) -> BlockWeight {
    let mut w = if bits >= 16 {
        BlockWeight::float(n, k, bits, &rng.f32s(n * k))
    } else {
        let spec = BlockSpec { n, k, bits, block_size, zero_points, f16_params, bias: false };
        let blocks = n * spec.blocks();
        let round = |v: f32| if f16_params { half::f16::from_f32(v).to_f32() } else { v };
        let data = (0..n * spec.row_bytes(Field::Data)).map(|_| rng.next() as u8).collect();
        let scales = rng.f32s(blocks).iter().map(|v| round(v / (1 << (bits - 1)) as f32)).collect();
        let zero_points = match zero_points {
            ZeroPointKind::Middle => ZeroPoints::Middle,
            ZeroPointKind::Int => ZeroPoints::Int((0..blocks).map(|_| (rng.next() % (1 << bits)) as u8).collect()),
            ZeroPointKind::Float => ZeroPoints::Float(rng.f32s(blocks).iter().map(|v| round((v + 1.0) * (1 << (bits - 1)) as f32)).collect()),
        };
        BlockWeight { spec, data, scales, zero_points, bias: Vec::new() }
    };
    if bias {
        w.spec.bias = true;
        w.bias = rng.f32s(n);
    }
    w
}

/// `(n, k, block, rows)`: fixed edge shapes (one block, a partial last block, odd block counts
/// for the packed zero points, block 16 with an odd block count, several x rows, partial
/// 32-tiles), then `random` seeded ones.
pub fn matmul_shapes(rng: &mut Rng, random: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut shapes = vec![(1, 16, 16, 1), (7, 40, 32, 1), (5, 96, 32, 3), (33, 576, 32, 1), (300, 200, 64, 2), (4, 128, 128, 1), (9, 48, 16, 40), (64, 576, 32, 33)];
    for _ in 0..random {
        shapes.push((rng.range(1, 200), rng.range(1, 400), [16, 32, 64, 128][rng.range(0, 4)], rng.range(1, 40)));
    }
    shapes
}

/// The block-quantized (and float) matmul through the decode GEMV and the prefill GEMM, both
/// against the one twin, for every kind on every shape: f32 sums in another order, so within a
/// few ulps of the sum of |terms|.
pub async fn block_matmul_matches_twin(ctx: &GpuContext, rng: &mut Rng, shapes: &[(usize, usize, usize, usize)]) {
    let mut pipes = Pipelines::default();
    for &(n, k, bs, rows) in shapes {
        for kind in KINDS {
            let w = random_weight(rng, n, k, bs, kind);
            let x = rng.f32s(rows * k);
            let want = twin::gemv_nbits(&w, &x);
            let deq = w.dequantized();
            let mag = |i: usize| -> f32 {
                let (r, j) = (i / n, i % n);
                (0..k).map(|t| (deq[j * k + t] * x[r * k + t]).abs()).sum()
            };
            let gw = GpuNBits::upload(ctx, "w", &w).unwrap();
            let (xb, st) = (upload(ctx, &x), state(ctx, 0, rows, &[]));
            for gemm in [false, true] {
                let yb = ctx.storage("y", (rows * n * 4) as u64).unwrap();
                let d = if gemm { gw.gemm(ctx, &mut pipes, &st, &xb, &yb) } else { gw.gemv(ctx, &mut pipes, &xb, &yb) };
                kernels::run(ctx, &pipes, &d, rows as u32);
                let got = download(ctx, &yb, rows * n).await;
                let what = format!("{} n={n} k={k} bs={bs} rows={rows} {kind:?} subgroups={}", if gemm { "gemm_nbits" } else { "gemv_nbits" }, ctx.has_subgroups());
                assert_close(&what, &got, &want, |i| 1e-6 + 4e-6 * mag(i));
            }
        }
    }
}

/// The embedding gather from every kind of table: one row (decode), a table's first and last
/// rows, several at once (a prefill chunk). One subtraction and one product per element:
/// bit-identical to the twin.
pub async fn embed_matches_twin(ctx: &GpuContext, rng: &mut Rng) {
    let mut pipes = Pipelines::default();
    for (vocab, hidden, bs) in [(3, 16, 16), (50, 40, 32), (17, 576, 32), (9, 200, 64)] {
        for kind in KINDS {
            let table = random_weight(rng, vocab, hidden, bs, kind);
            let gt = GpuNBits::upload(ctx, "table", &table).unwrap();
            let mut batches = vec![vec![rng.range(0, vocab) as u32], vec![0, vocab as u32 - 1]];
            batches.push((0..rng.range(2, 70)).map(|_| rng.range(0, vocab) as u32).collect());
            for tokens in batches {
                let (st, rows) = (state(ctx, 0, tokens.len(), &tokens), tokens.len());
                let out = ctx.storage("out", (rows * hidden * 4) as u64).unwrap();
                let d = gt.embed(ctx, &mut pipes, &st, &out);
                kernels::run(ctx, &pipes, &d, rows as u32);
                let want: Vec<f32> = tokens.iter().flat_map(|t| twin::embed_nbits(&table, *t as usize)).collect();
                assert_eq!(download(ctx, &out, rows * hidden).await, want, "vocab={vocab} hidden={hidden} bs={bs} {kind:?} tokens={tokens:?}");
            }
        }
    }
}

/// `quantize_tensor.wgsl` (the `DynamicQuantizeLinear` before a `MatMulInteger`) against its
/// twin, which equals the CPU backend's op (`cpu::dynamic_quantize`, pinned against
/// onnxruntime): random rows up to a 64-row chunk, all zeros, all positive; bit for bit (the
/// kernel corrects WGSL's division with an fma: without it SwiftShader's scale was an ulp off and
/// 521 of 576 values differed in their last bits).
pub async fn quantize_tensor_matches_twin(ctx: &GpuContext, rng: &mut Rng) {
    use edge_llm::cpu::dynamic_quantize::{quantize, scale_and_zero_point};
    let mut pipes = Pipelines::default();
    let mut cases: Vec<(String, usize, usize, Vec<f32>)> = Vec::new();
    for (k, rows) in [(96, 1), (576, 1), (576, 7), (1536, 64), (160, 3)] {
        cases.push((format!("random k={k} rows={rows}"), rows, k, rng.f32s(rows * k).iter().map(|v| v * 3.0).collect()));
    }
    cases.push(("all zeros".into(), 2, 64, vec![0.0; 128]));
    cases.push(("all positive".into(), 1, 64, rng.f32s(64).iter().map(|v| v.abs() + 0.5).collect()));
    for (what, rows, k, x) in &cases {
        let want = twin::quantize_tensor(x);
        let (scale, zp) = scale_and_zero_point(x);
        let mut q = vec![0u8; x.len()];
        quantize(x, scale, zp, &mut q);
        let cpu: Vec<f32> = q.iter().map(|&v| (v as f32 - zp as f32) * scale).collect();
        assert_eq!(want, cpu, "{what}: twin vs the CPU backend's op");
        let got = quantize_tensor(ctx, &mut pipes, x, *rows, *k).await;
        assert_eq!(got, want, "{what}: the GPU vs the twin");
    }
}

/// `x` (`[rows][k]`) through `quantize_tensor.wgsl`, dequantized.
pub async fn quantize_tensor(ctx: &GpuContext, pipes: &mut Pipelines, x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let (xb, yb, st) = (upload(ctx, x), ctx.storage("y", (rows * k * 4) as u64).unwrap(), state(ctx, 0, rows, &[]));
    let d = kernels::quantize_tensor(ctx, pipes, k, &st, &xb, &yb);
    kernels::run(ctx, pipes, &[d], rows as u32);
    download(ctx, &yb, rows * k).await
}
