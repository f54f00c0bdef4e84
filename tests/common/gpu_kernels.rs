//! GPU kernels against their plain-Rust twins (`gpu::twin`): one async body per kernel family,
//! run natively on Vulkan (`tests/gpu.rs`, each GPU call completing when polled) and in headless
//! Chromium on SwiftShader's WebGPU (`tests/web.rs`, through Tint), on the same seeded shapes.
#![allow(dead_code)] // each includer runs its part

use edge_llm::gpu::kernels::{self, f32_bytes, AttnBuffers, Pipelines, Rope, RopeKvBuffers};
use edge_llm::gpu::nbits::{BlockSpec, BlockWeight, Field, GpuNBits, NormInput, RowsShape, ZeroPointKind, ZeroPoints};
use edge_llm::gpu::twin::{self, AttnShape};
use edge_llm::generate::SampleParams;
use edge_llm::gpu::{GemvKernel, GpuContext, GpuOptions, PrefillKernel, ROWS_KERNEL_LANES, ROWS_KERNEL_ROWS, ROWS_KERNEL_XROWS};

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

/// A line for the test's output: stderr natively, the console in a browser.
pub fn log(line: &str) {
    #[cfg(target_arch = "wasm32")]
    web_sys::console::log_1(&line.into());
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{line}");
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

/// A weight's kind in a test: bits, zero points, f16 scales (and float zero points), bias.
pub type Kind = (usize, ZeroPointKind, bool, bool);

/// The weight kinds the GPU runs (bits, zero points, f16 scales and float zero points, bias):
/// int4 without zero points, with integer ones (also with a bias), with float ones in f32 and in
/// f16 (edge-llm's int4 recipe), int8 blocks without (with f16 scales: the recipe's embedding and
/// head) and with integer ones, and float weights (a plain MatMul's): f32, f16 with a bias.
pub const KINDS: [Kind; 10] = [
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

/// The kinds at every lanes x rows shape of `gemv_rows.wgsl`
/// ([`rows_kernel_matches_twin_at_every_width`]): one per path its loads and decoding take
/// (int4, with integer zero points packed two a byte, so a row's start depends on the row;
/// int8 with f16 scales; f32 and f16 floats, one with a bias), on [`width_shapes`]. Which zero
/// points and scales a block has is read the same way at every width: the other kinds run at
/// the default width (`block_matmul_kernels_match_twin`). Each kind and block size
/// compiles pipelines of its own at each width (they are pipeline constants): all ten kinds at
/// every width took most of the GPU suite's time on a fresh machine (llvmpipe compiling them
/// with its shader cache empty).
pub const WIDTH_KINDS: [Kind; 4] = [KINDS[1], KINDS[6], KINDS[8], KINDS[9]];

/// A random `[n][k]` weight of `kind` (bits, zero points, f16 scales, bias): random stored
/// values (padding included), scales and zero points (f16-exact with `f16_params`); a float
/// kind's values random floats (f16-rounded for 16 bits).
pub fn random_weight(rng: &mut Rng, n: usize, k: usize, block_size: usize, (bits, zero_points, f16_params, bias): Kind) -> BlockWeight {
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
    for i in 0..random {
        let bs = [16, 32, 64, 128][rng.range(0, 4)];
        // Every other one whole blocks (the rows GEMV's layouts, gemv_rows.wgsl), the others
        // any k.
        let k = if i % 2 == 0 { bs * rng.range(1, 12) } else { rng.range(1, 400) };
        shapes.push((rng.range(1, 200), k, bs, rng.range(1, 40)));
    }
    shapes
}

/// Whole-block shapes for `gemv_rows.wgsl` at every lane count: one row, fewer rows than a
/// workgroup holds, row counts not a multiple of it, rows shorter than the lanes (4 chunks
/// over up to 64 lanes), several x rows (counts not a multiple of 2 or 4), SmolLM2's 576 and
/// 1536-wide rows.
pub fn rows_kernel_shapes() -> Vec<(usize, usize, usize, usize)> {
    vec![(1, 32, 32, 1), (3, 128, 32, 5), (17, 64, 16, 2), (61, 576, 32, 7), (40, 1536, 32, 3), (9, 1024, 128, 1), (130, 256, 64, 9)]
}

/// [`rows_kernel_shapes`] with blocks of 64 and 128 made 32 (the same rows, reduction lengths
/// and x rows): the shapes at every width. A 16-byte chunk of the weight lies in one block of
/// 32 or more values, and spans two blocks of 16 (int4), the only ways a block's size enters
/// `gemv_rows.wgsl`; blocks 64 and 128 run at the default width and at the slowest tuned one.
/// Each block size is pipelines of its own at each width.
pub fn width_shapes() -> Vec<(usize, usize, usize, usize)> {
    rows_kernel_shapes().into_iter().map(|(n, k, block, rows)| (n, k, block.min(32), rows)).collect()
}

/// `gemv_rows.wgsl` at every lanes x rows shape, by each of `reductions` (false: the barrier
/// tree; true: subgroup shuffles, at the widths the device allows them), each through
/// [`rows_matmul_matches_twin`] on the [`WIDTH_KINDS`] and [`width_shapes`]. A device with
/// subgroups must allow shuffles (llvmpipe lays subgroups of 8 over consecutive invocations,
/// Chromium's SwiftShader too), so the shuffle reduction cannot go untested.
pub async fn rows_kernel_matches_twin_at_every_width(default: &GpuContext, reductions: &[bool]) {
    if default.has_subgroups() {
        assert!(default.shuffle_lanes() >= 4, "the device has subgroups but its layout test refused shuffles: the shuffle reduction would go untested");
    }
    for lanes in ROWS_KERNEL_LANES {
        for rows in ROWS_KERNEL_ROWS {
            for &shuffles in reductions {
                if shuffles && lanes > default.shuffle_lanes() {
                    continue; // more lanes than the device's smallest subgroup: the tree only
                }
                let options = GpuOptions { gemv: GemvKernel::Rows { lanes, rows }, ..Default::default() };
                let ctx = GpuContext::with_options(&options).await.unwrap();
                ctx.set_rows_shape(RowsShape { shuffles, ..ctx.rows_shape() });
                assert_eq!(ctx.shuffles(lanes), shuffles);
                rows_matmul_matches_twin(&ctx, &mut Rng((lanes * rows) as u64), &width_shapes(), &WIDTH_KINDS).await;
            }
        }
    }
}

/// A product a test runs: the decode GEMV (over any number of rows), the decode GEMV reading
/// SiLU(gate)·up of `[gate | up]` rows (the down projection with its activation fused, where
/// the weight takes the rows kernel), the decode GEMV reading RMSNorm(x + t) and writing
/// x + t (the residual add and the norm before q/k/v or gate/up fused, where the weight takes
/// the rows kernel), or the prefill's with a given kernel.
#[derive(Debug, Clone, Copy)]
pub enum Product {
    Gemv,
    GemvGlu,
    GemvNorm,
    Gemm(PrefillKernel),
}

/// The block-quantized (and float) matmul through the decode GEMV (also with SiLU·mul, and
/// the residual add with RMSNorm, fused into its input) and every prefill kernel, all against the one twin, for every kind on every
/// shape: f32 sums in another order, so within a few ulps of the sum of |terms|. Where the
/// context multiplies in f16 ([`GpuContext::f16`]: the rows kernel and the tiled GEMM over 4-
/// and 8-bit weights), see [`f16_tolerance`].
pub async fn block_matmul_matches_twin(ctx: &GpuContext, rng: &mut Rng, shapes: &[(usize, usize, usize, usize)]) {
    let products: Vec<Product> = [Product::Gemv, Product::GemvGlu, Product::GemvNorm].into_iter().chain(PrefillKernel::candidates().into_iter().map(Product::Gemm)).collect();
    matmul_matches_twin(ctx, rng, shapes, &KINDS, &products).await
}

/// [`block_matmul_matches_twin`] for the decode GEMV only.
pub async fn gemv_matches_twin(ctx: &GpuContext, rng: &mut Rng, shapes: &[(usize, usize, usize, usize)]) {
    matmul_matches_twin(ctx, rng, shapes, &KINDS, &[Product::Gemv]).await
}

/// [`block_matmul_matches_twin`] for the decode GEMV (also with each fusion) and the
/// prefill through `gemv_rows.wgsl` at each x row count (with the context's lanes and rows per
/// group), on `kinds`.
pub async fn rows_matmul_matches_twin(ctx: &GpuContext, rng: &mut Rng, shapes: &[(usize, usize, usize, usize)], kinds: &[Kind]) {
    let products: Vec<Product> = [Product::Gemv, Product::GemvGlu, Product::GemvNorm].into_iter().chain(ROWS_KERNEL_XROWS.map(|xrows| Product::Gemm(PrefillKernel::Rows { xrows }))).collect();
    matmul_matches_twin(ctx, rng, shapes, kinds, &products).await
}

/// The matmul of each of `kinds` through each of `products` against the twin.
pub async fn matmul_matches_twin(ctx: &GpuContext, rng: &mut Rng, shapes: &[(usize, usize, usize, usize)], kinds: &[Kind], products: &[Product]) {
    let mut pipes = Pipelines::default();
    for &(n, k, bs, rows) in shapes {
        for &kind in kinds {
            let w = random_weight(rng, n, k, bs, kind);
            let x = rng.f32s(rows * k);
            // The fused product's input: [gate | up] rows, and the activation they stand for.
            let gate_up = rng.f32s(rows * 2 * k);
            let (gate, up): (Vec<f32>, Vec<f32>) = (gate_up.chunks(2 * k).flat_map(|r| r[..k].to_vec()).collect(), gate_up.chunks(2 * k).flat_map(|r| r[k..].to_vec()).collect());
            let act = twin::silu_mul(&gate, &up);
            // The normed product's input: the residual stream x plus t, and its norm.
            let (t, gain) = (rng.f32s(rows * k), rng.f32s(k));
            let mut sum = x.clone();
            twin::add(&mut sum, &t);
            let normed = twin::rms_norm(&sum, &gain, 1e-5);
            let deq = w.dequantized();
            let mag = |x: &[f32], i: usize| -> f32 {
                let (r, j) = (i / n, i % n);
                (0..k).map(|t| (deq[j * k + t] * x[r * k + t]).abs()).sum()
            };
            // An f32 zero point is rounded to f16 before it is subtracted: an error of its own
            // size, not the difference's (f16 ones subtract exactly up to rounding).
            let zp_mag = |x: &[f32], i: usize| -> f32 {
                let (r, j) = (i / n, i % n);
                if kind.1 != ZeroPointKind::Float || kind.2 {
                    return 0.0;
                }
                (0..k).map(|t| ((1 << kind.0) as f32 * w.scale(j, t / bs) * x[r * k + t]).abs()).sum()
            };
            let gw = GpuNBits::upload(ctx, "w", &w).unwrap();
            let (xb, gub, st) = (upload(ctx, &x), upload(ctx, &gate_up), state(ctx, 0, rows, &[]));
            let (tb, gainb, sumb) = (upload(ctx, &t), upload(ctx, &gain), ctx.storage("x_sum", (rows * k * 4) as u64).unwrap());
            let norm = NormInput { x: &xb, resid: &tb, gain: &gainb, x_sum: &sumb, eps: 1e-5 };
            // The rows kernel is the decode GEMV (which alone takes SiLU·mul fused).
            let rows_gemv = gw.spec.rows_kernel_fits() && ctx.gemv_kernel() != GemvKernel::PerRow;
            for &product in products {
                let yb = ctx.storage("y", (rows * n * 4) as u64).unwrap();
                let (d, input) = match product {
                    Product::Gemv => (gw.gemv(ctx, &mut pipes, &st, &xb, &yb), &x),
                    Product::GemvGlu => match gw.gemv_glu(ctx, &mut pipes, &st, &gub, &yb) {
                        Some(d) => (d, &act),
                        None => {
                            assert!(!rows_gemv, "the rows GEMV takes SiLU·mul fused: n={n} k={k} bs={bs} {kind:?}");
                            continue;
                        }
                    },
                    Product::GemvNorm => match gw.gemv_norm(ctx, &mut pipes, &st, norm, &yb) {
                        Some(d) => (d, &normed),
                        None => {
                            assert!(!rows_gemv, "the rows GEMV takes the add and norm fused: n={n} k={k} bs={bs} {kind:?}");
                            continue;
                        }
                    },
                    Product::Gemm(kernel) => (gw.gemm_with(ctx, &mut pipes, kernel, &st, &xb, &yb), &x),
                };
                kernels::run(ctx, &pipes, &d, rows as u32);
                let got = download(ctx, &yb, rows * n).await;
                let op = match product {
                    Product::Gemv => format!("gemv {:?} (rows kernel fits: {})", ctx.gemv_kernel(), gw.spec.rows_kernel_fits()),
                    Product::GemvGlu => format!("gemv {:?} of silu(gate)*up", ctx.gemv_kernel()),
                    Product::GemvNorm => format!("gemv {:?} of rms_norm(x + t)", ctx.gemv_kernel()),
                    Product::Gemm(kernel) => format!("prefill {kernel} (rows kernel fits: {}, gemv {:?})", gw.spec.rows_kernel_fits(), ctx.gemv_kernel()),
                };
                let what = format!("{op} n={n} k={k} bs={bs} rows={rows} {kind:?} subgroups={}", ctx.has_subgroups());
                let want = twin::gemv_nbits(&w, input);
                let f16 = ctx.f16()
                    && kind.0 <= 8
                    && match product {
                        Product::Gemv | Product::GemvGlu => rows_gemv,
                        Product::GemvNorm => false,
                        Product::Gemm(_) => true,
                    };
                if f16 {
                    assert_close(&format!("{what} f16"), &got, &want, |i| f16_tolerance(mag(input, i), zp_mag(input, i)));
                    // And f16 it was: somewhere beyond what f32 sums could be off.
                    // (Relative to the sum of |terms| only: small weights' sums sit under the
                    // absolute 1e-6 whatever their arithmetic.)
                    assert!(got.iter().zip(&want).enumerate().any(|(i, (g, w))| (g - w).abs() > 4e-6 * mag(input, i)), "{what}: f16 asked but the sums are f32's");
                } else {
                    assert_close(&what, &got, &want, |i| 1e-6 + 4e-6 * mag(input, i));
                }
                if let Product::GemvNorm = product {
                    // Each row's x + t, exactly the twin's; x as it was.
                    assert_eq!(download(ctx, &sumb, rows * k).await, sum, "{what}: x + t");
                    assert_eq!(download(ctx, &xb, rows * k).await, x, "{what}: x untouched");
                }
            }
        }
    }
}

/// How far an f16 product may be from the f32 twin: each of x and a weight's value rounded to
/// f16 (a relative 2^-11 each), their products summed in f16 over at most 32 terms (a 16-byte
/// chunk of int4 values, a 32-wide k slice) before f32 takes over: at most 34 roundings of
/// 2^-11 of the sum of |terms| (`mag`), plus an f32 zero point's own rounding (`zp_mag`: the
/// sum of |2^bits * scale * x| where it applies).
pub fn f16_tolerance(mag: f32, zp_mag: f32) -> f32 {
    let u = 2f32.powi(-11);
    1e-6 + 34.0 * u * mag + u * zp_mag
}

/// Weights stacked by rows (`GpuNBits::stacked`: q, k and v; gate and up) give, in one
/// product, each weight's outputs side by side in a row, as the weights placed at their columns
/// (`GpuNBits::placed`, the fallback) do in three: both against the twins' outputs, through the
/// decode GEMV and the prefill's kernel, on every kind; weights that differ do not stack.
pub async fn stacked_and_placed_weights_match_twin(ctx: &GpuContext, rng: &mut Rng) {
    let mut pipes = Pipelines::default();
    for (ns, k, bs, rows) in [([8, 4, 4], 64, 32, 1), ([576, 192, 192], 576, 32, 5), ([33, 7, 7], 96, 16, 3)] {
        for kind in KINDS {
            let ws: Vec<BlockWeight> = ns.iter().map(|&n| random_weight(rng, n, k, bs, kind)).collect();
            let x = rng.f32s(rows * k);
            let total: usize = ns.iter().sum();
            let outs: Vec<Vec<f32>> = ws.iter().map(|w| twin::gemv_nbits(w, &x)).collect();
            // Row r: each weight's outputs in turn.
            let want: Vec<f32> = (0..rows).flat_map(|r| ws.iter().zip(&outs).flat_map(move |(w, o)| o[r * w.spec.n..][..w.spec.n].to_vec())).collect();
            let gws: Vec<GpuNBits> = ws.iter().map(|w| GpuNBits::upload(ctx, "w", w).unwrap()).collect();
            let refs: Vec<&GpuNBits> = gws.iter().collect();
            let stack = GpuNBits::stacked(ctx, "stack", &refs).unwrap().expect("same kind and k: they stack");
            assert_eq!((stack.spec.n, stack.parts.len()), (total, 1));
            let mut at = 0;
            let placed: Vec<GpuNBits> = gws.iter().map(|w| {
                let p = w.placed(ctx, at, total);
                at += w.spec.n;
                p
            }).collect();
            let (xb, st) = (upload(ctx, &x), state(ctx, 0, rows, &[]));
            for gemm in [false, true] {
                for (how, set) in [("stacked", std::slice::from_ref(&stack)), ("placed", &placed[..])] {
                    let yb = ctx.storage("y", (rows * total * 4) as u64).unwrap();
                    let d: Vec<_> = set.iter().flat_map(|w| if gemm { w.gemm(ctx, &mut pipes, &st, &xb, &yb) } else { w.gemv(ctx, &mut pipes, &st, &xb, &yb) }).collect();
                    kernels::run(ctx, &pipes, &d, rows as u32);
                    let got = download(ctx, &yb, rows * total).await;
                    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                    assert_close(&format!("{how} gemm={gemm} ns={ns:?} k={k} rows={rows} {kind:?}"), &got, &want, |_| 1e-5 * scale);
                }
            }
        }
    }
    // Another block size, or another kind, does not stack.
    let a = GpuNBits::upload(ctx, "a", &random_weight(rng, 4, 64, 32, KINDS[0])).unwrap();
    let b = GpuNBits::upload(ctx, "b", &random_weight(rng, 4, 64, 16, KINDS[0])).unwrap();
    let c = GpuNBits::upload(ctx, "c", &random_weight(rng, 4, 64, 32, KINDS[5])).unwrap();
    assert!(GpuNBits::stacked(ctx, "ab", &[&a, &b]).unwrap().is_none());
    assert!(GpuNBits::stacked(ctx, "ac", &[&a, &c]).unwrap().is_none());
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

/// RMSNorm over rows of several widths, alone and fused with the residual add before it (and
/// with the rounding to int8 blocks after it).
pub async fn rms_norm_matches_twin(ctx: &GpuContext, rng: &mut Rng) {
    let mut pipes = Pipelines::default();
    for (n, rows) in [(1, 1), (64, 1), (576, 2), (1000, 3), (rng.range(1, 3000), 1)] {
        let (x, g, t) = (rng.f32s(rows * n), rng.f32s(n), rng.f32s(rows * n));
        let (xb, gb, yb) = (upload(ctx, &x), upload(ctx, &g), ctx.storage("y", (rows * n * 4) as u64).unwrap());
        let d = kernels::rms_norm(ctx, &mut pipes, n, 1e-5, &xb, &gb, &yb);
        kernels::run(ctx, &pipes, &[d], rows as u32);
        let plain = download(ctx, &yb, rows * n).await;
        assert_close(&format!("rms_norm n={n} rows={rows}"), &plain, &twin::rms_norm(&x, &g, 1e-5), |_| 1e-5);
        // The residual add and the norm in one dispatch: the sum exactly the twin's, the norm
        // bit-identical to rms_norm.wgsl's of that sum.
        let (tb, yb2, sb) = (upload(ctx, &t), ctx.storage("y", (rows * n * 4) as u64).unwrap(), ctx.storage("sum", (rows * n * 4) as u64).unwrap());
        let d = kernels::add_rms_norm(ctx, &mut pipes, n, NormInput { x: &xb, resid: &tb, gain: &gb, x_sum: &sb, eps: 1e-5 }, &yb2);
        kernels::run(ctx, &pipes, &[d], rows as u32);
        let mut sum = x.clone();
        twin::add(&mut sum, &t);
        assert_eq!(download(ctx, &sb, rows * n).await, sum, "add_rms_norm's sum n={n} rows={rows}");
        assert_eq!(download(ctx, &xb, rows * n).await, x, "add_rms_norm leaves x n={n} rows={rows}");
        let fused = download(ctx, &yb2, rows * n).await;
        let d = kernels::rms_norm(ctx, &mut pipes, n, 1e-5, &sb, &gb, &yb);
        kernels::run(ctx, &pipes, &[d], rows as u32);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(&fused) == bits(&download(ctx, &yb, rows * n).await), "add_rms_norm vs rms_norm of the sum n={n} rows={rows}");
        assert_close(&format!("add_rms_norm n={n} rows={rows}"), &fused, &twin::rms_norm(&sum, &g, 1e-5), |_| 1e-5);
        // Rounded to int8 blocks in the same dispatch (rows of whole blocks): bit-identical to
        // round_q8.wgsl of the norm (which its own test holds to the twin); the sum as before.
        if n % 32 == 0 {
            let (yq, sq) = (ctx.storage("yq", (rows * n * 4) as u64).unwrap(), ctx.storage("sum", (rows * n * 4) as u64).unwrap());
            let d = kernels::add_rms_norm_q8(ctx, &mut pipes, n, NormInput { x: &xb, resid: &tb, gain: &gb, x_sum: &sq, eps: 1e-5 }, &yq);
            kernels::run(ctx, &pipes, &[d], rows as u32);
            assert_eq!(download(ctx, &sq, rows * n).await, sum, "add_rms_norm_q8's sum n={n} rows={rows}");
            let d = kernels::round_q8(ctx, &mut pipes, n, &yb2, &yb);
            kernels::run(ctx, &pipes, &[d], rows as u32);
            let rounded = download(ctx, &yq, rows * n).await;
            assert!(bits(&rounded) == bits(&download(ctx, &yb, rows * n).await), "add_rms_norm_q8 vs round_q8 of add_rms_norm n={n} rows={rows}");
        }
    }
}

/// `rope_kv.wgsl` (RoPE on the queries and keys, the keys and values appended to the cache)
/// and attention over that cache by both kernels (one workgroup per query head and row; split
/// over positions and added), against the twins: grouped-query shapes, decode (one query row)
/// at the ends and in the middle of the cache, then a prefill chunk of rows (causal: row r at
/// pos + r sees positions 0..=pos + r), from an empty cache, ending at its last position, and
/// after a random prefix; RoPE's tables up to 2048 positions. Decode rows also through both
/// kernels with RoPE and the append fused in (what a decode step runs). Heads wider than
/// [`kernels::ATTENTION_MAX_HEAD_DIM`] (320, 512) have neither the split nor the fused kernels:
/// `rope_kv.wgsl` and the whole kernel are what every step of theirs runs. Heads of whole int8
/// blocks also through both kernels rounding their output (`attention_with`).
pub async fn rope_kv_and_attention_match_twins(ctx: &GpuContext, rng: &mut Rng) {
    let mut pipes = Pipelines::default();
    // Groups of more query heads than a workgroup serves (18: three workgroups of 6; 11: eleven
    // of 1), the widest head the split and fused kernels take (256) and two wider, contexts
    // over many 64-position splits.
    let mut shapes = vec![(1, 1, 2, 1), (4, 2, 16, 256), (9, 3, 64, 100), (15, 5, 128, 70), (3, 1, 128, 2048), (18, 1, 6, 130), (22, 2, 8, 70), (8, 2, 256, 200), (4, 2, 320, 90), (2, 1, 512, 70)];
    for _ in 0..4 {
        let kv = rng.range(1, 5);
        shapes.push((kv * rng.range(1, 5), kv, 2 * rng.range(1, 40), rng.range(1, 200)));
    }
    for (heads, kv_heads, hd, max_ctx) in shapes {
        let s = AttnShape { heads, kv_heads, head_dim: hd, max_ctx };
        let wide = hd > kernels::ATTENTION_MAX_HEAD_DIM;
        let kvd = kv_heads * hd;
        let (cos, sin) = twin::rope_tables(hd, max_ctx, 10000.0);
        let (cb, sb) = (upload(ctx, &cos), upload(ctx, &sin));
        let rows = rng.range(2, max_ctx.clamp(2, 70) + 1).min(max_ctx);
        for (pos, rows) in [(0, 1), (max_ctx - 1, 1), (rng.range(0, max_ctx), 1), (0, rows), (max_ctx - rows, rows), (rng.range(0, max_ctx - rows + 1), rows)] {
            let (mut kc, mut vc) = (rng.f32s(kvd * max_ctx), rng.f32s(kvd * max_ctx));
            let (mut k, v, mut q) = (rng.f32s(rows * kvd), rng.f32s(rows * kvd), rng.f32s(rows * heads * hd));
            let (kc0, vc0, q0, k0) = (kc.clone(), vc.clone(), q.clone(), k.clone());
            // A row's q, k and v side by side, as the products write them.
            let qd = heads * hd;
            let side_by_side = |q: &[f32], k: &[f32], v: &[f32]| -> Vec<f32> {
                (0..rows).flat_map(|r| [&q[r * qd..][..qd], &k[r * kvd..][..kvd], &v[r * kvd..][..kvd]].concat()).collect()
            };
            let st = state(ctx, pos, rows, &[]);
            let (kcb, vcb, qkvb) = (upload(ctx, &kc), upload(ctx, &vc), upload(ctx, &side_by_side(&q, &k, &v)));
            let scores = ctx.storage("scores", (rows * heads * max_ctx * 4) as u64).unwrap();
            let part = ctx.storage("part", (rows * kernels::attention_part_floats(s) * 4) as u64).unwrap();
            let (out, out_split) = (ctx.storage("out", (rows * heads * hd * 4) as u64).unwrap(), ctx.storage("out", (rows * heads * hd * 4) as u64).unwrap());
            let rope = kernels::rope_kv(ctx, &mut pipes, s, RopeKvBuffers { state: &st, cos: &cb, sin: &sb, qkv: &qkvb, kcache: &kcb, vcache: &vcb });
            let bufs = |scratch, out| AttnBuffers { state: &st, q: &qkvb, kcache: &kcb, vcache: &vcb, scratch, out, cos: &cb, sin: &sb };
            let whole = kernels::attention(ctx, &mut pipes, s, bufs(&scores, &out), Rope::Before);
            let mut dispatches = vec![rope, whole];
            if !wide {
                dispatches.extend(kernels::attention_split(ctx, &mut pipes, s, bufs(&part, &out_split), Rope::Before));
            }
            kernels::run(ctx, &pipes, &dispatches, rows as u32);
            twin::rope(&mut q, heads, hd, pos, 10000.0);
            twin::rope(&mut k, kv_heads, hd, pos, 10000.0);
            let what = format!("heads={heads} kv_heads={kv_heads} hd={hd} max_ctx={max_ctx} pos={pos} rows={rows}");
            let got = download(ctx, &qkvb, rows * (qd + 2 * kvd)).await;
            let col = |r: usize, from: usize, len: usize| got[r * (qd + 2 * kvd) + from..][..len].to_vec();
            let got_q: Vec<f32> = (0..rows).flat_map(|r| col(r, 0, qd)).collect();
            let got_k: Vec<f32> = (0..rows).flat_map(|r| col(r, qd, kvd)).collect();
            let got_v: Vec<f32> = (0..rows).flat_map(|r| col(r, qd + kvd, kvd)).collect();
            assert_eq!(got_v, v, "rope_kv leaves the values {what}");
            assert_close(&format!("rope_kv queries {what}"), &got_q, &q, |_| 1e-6);
            assert_close(&format!("rope_kv keys {what}"), &got_k, &k, |_| 1e-6);
            // The cache gets exactly the rotated keys the kernel wrote back, and the values.
            twin::kv_append(s, &got_k, &v, &mut kc, &mut vc, pos);
            assert_eq!(download(ctx, &kcb, kvd * max_ctx).await, kc, "rope_kv's cached keys {what}");
            assert_eq!(download(ctx, &vcb, kvd * max_ctx).await, vc, "rope_kv's cached values {what}");
            // The cache past pos + rows holds random values: a row that looked ahead would differ.
            let want = twin::attention(s, &got_q, &kc, &vc, pos);
            assert_close(&format!("attention {what}"), &download(ctx, &out, rows * heads * hd).await, &want, |_| 2e-5);
            // Heads of whole int8 blocks: the attention rounding its output in the same dispatch
            // (the output projection's input where its node asks for int8 activations), the
            // split's combine likewise: bit-identical to round_q8.wgsl of the plain output.
            let rounded = |outs: &[&wgpu::Buffer]| outs.iter().map(|_| ctx.storage("q8", (rows * heads * hd * 4) as u64).unwrap()).collect::<Vec<_>>();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            if hd % 32 == 0 {
                let plain: Vec<&wgpu::Buffer> = if wide { vec![&out] } else { vec![&out, &out_split] };
                let (by_kernel, by_round) = (rounded(&plain), rounded(&plain));
                let mut d = vec![kernels::attention_with(ctx, &mut pipes, s, bufs(&scores, &by_kernel[0]), Rope::Before, true)];
                if !wide {
                    d.extend(kernels::attention_split_with(ctx, &mut pipes, s, bufs(&part, &by_kernel[1]), Rope::Before, true));
                }
                d.extend(plain.iter().zip(&by_round).map(|(from, to)| kernels::round_q8(ctx, &mut pipes, heads * hd, from, to)));
                kernels::run(ctx, &pipes, &d, rows as u32);
                for (i, kernel) in ["attention", "attention split"].iter().enumerate().take(plain.len()) {
                    let got = bits(download(ctx, &by_kernel[i], rows * heads * hd).await);
                    assert!(got == bits(download(ctx, &by_round[i], rows * heads * hd).await), "{kernel} rounding its output vs round_q8 of it {what}");
                }
            }
            if wide {
                continue;
            }
            assert_close(&format!("attention split {what}"), &download(ctx, &out_split, rows * heads * hd).await, &want, |_| 2e-5);
            if rows > 1 {
                continue;
            }
            // A decode step's: RoPE and the append fused into each kernel, from the row as the
            // products wrote it and the cache before the append (each kernel its own copy): the
            // same attention, the same cache after, the row untouched.
            let row = side_by_side(&q0, &k0, &v);
            let qkv_fused = upload(ctx, &row);
            let caches: Vec<(wgpu::Buffer, wgpu::Buffer, wgpu::Buffer)> = (0..2).map(|_| (upload(ctx, &kc0), upload(ctx, &vc0), ctx.storage("out", (heads * hd * 4) as u64).unwrap())).collect();
            let ((kw, vw, ow), (ks, vs, os)) = (&caches[0], &caches[1]);
            let whole = kernels::attention(ctx, &mut pipes, s, AttnBuffers { state: &st, q: &qkv_fused, kcache: kw, vcache: vw, scratch: &scores, out: ow, cos: &cb, sin: &sb }, Rope::Fused);
            let split = AttnBuffers { state: &st, q: &qkv_fused, kcache: ks, vcache: vs, scratch: &part, out: os, cos: &cb, sin: &sb };
            let [split, combine] = kernels::attention_split(ctx, &mut pipes, s, split, Rope::Fused);
            kernels::run(ctx, &pipes, &[whole, split, combine], 1);
            for ((kcache, vcache, out), kernel) in caches.iter().zip(["attention", "attention split"]) {
                let what = format!("{kernel} with RoPE fused {what}");
                assert_close(&what, &download(ctx, out, heads * hd).await, &want, |_| 2e-5);
                assert_close(&format!("{what}: cached keys"), &download(ctx, kcache, kvd * max_ctx).await, &kc, |_| 1e-6);
                assert_eq!(download(ctx, vcache, kvd * max_ctx).await, vc, "{what}: cached values");
            }
            assert_eq!(download(ctx, &qkv_fused, row.len()).await, row, "the fused kernels leave the row as it was");
        }
    }
}

/// SiLU·mul (and with the rounding to int8 blocks after it) and the residual add.
pub async fn elementwise_kernels_match_twins(ctx: &GpuContext, rng: &mut Rng) {
    let mut pipes = Pipelines::default();
    for (n, rows) in [(1, 1), (63, 1), (64, 2), (65, 3), (1536, 1), (576, 64), (rng.range(1, 10_000), rng.range(1, 9))] {
        let (a, b) = (rng.f32s(rows * n), rng.f32s(rows * n));
        let (ab, bb, out) = (upload(ctx, &a), upload(ctx, &b), ctx.storage("out", (rows * n * 4) as u64).unwrap());
        // Gate and up side by side in a row, as their products write them.
        let gate_up: Vec<f32> = (0..rows).flat_map(|r| [&a[r * n..][..n], &b[r * n..][..n]].concat()).collect();
        let gate_up = upload(ctx, &gate_up);
        let d = kernels::silu_mul(ctx, &mut pipes, n, &gate_up, &out);
        kernels::run(ctx, &pipes, &[d], rows as u32);
        let act = download(ctx, &out, rows * n).await;
        assert_close(&format!("silu_mul n={n} rows={rows}"), &act, &twin::silu_mul(&a, &b), |_| 1e-6);
        // Rounded to int8 blocks in the same dispatch (rows of whole blocks): bit-identical to
        // round_q8.wgsl of silu_mul's output (which its own test holds to the twin).
        if n % 32 == 0 {
            let (rounded, twice) = (ctx.storage("q8", (rows * n * 4) as u64).unwrap(), ctx.storage("q8", (rows * n * 4) as u64).unwrap());
            let d = kernels::silu_mul_q8(ctx, &mut pipes, n, &gate_up, &rounded);
            let r = kernels::round_q8(ctx, &mut pipes, n, &out, &twice);
            kernels::run(ctx, &pipes, &[d, r], rows as u32);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert!(bits(download(ctx, &rounded, rows * n).await) == bits(download(ctx, &twice, rows * n).await), "silu_mul_q8 vs round_q8 of silu_mul n={n} rows={rows}");
        }
        let d = kernels::add(ctx, &mut pipes, n, &ab, &bb);
        kernels::run(ctx, &pipes, &[d], rows as u32);
        let mut want = a.clone();
        twin::add(&mut want, &b);
        assert_eq!(download(ctx, &ab, rows * n).await, want, "add n={n} rows={rows}");
    }
}

/// `argmax.wgsl` against the CPU's `generate::argmax` (the lowest index among equal maxima),
/// with and without ties, one to 100,000 candidates.
pub async fn argmax_matches_reference(ctx: &GpuContext, rng: &mut Rng) {
    let mut pipes = Pipelines::default();
    for n in [1, 2, 255, 256, 257, 49152, rng.range(1, 100_000)] {
        for ties in [false, true] {
            // With ties, values from a set of 3 so the maximum repeats many times.
            let v: Vec<f32> = if ties { (0..n).map(|_| rng.range(0, 3) as f32).collect() } else { rng.f32s(n) };
            let (vb, st) = (upload(ctx, &v), state(ctx, 0, 1, &[u32::MAX]));
            let d = kernels::argmax(ctx, &mut pipes, n, &vb, &st);
            kernels::run(ctx, &pipes, &[d], 1);
            // The pick lands in tokens[0], the word after pos and rows.
            let got = download(ctx, &st, 3).await[2].to_bits();
            assert_eq!(got, edge_llm::generate::argmax(&v), "n={n} ties={ties}");
        }
    }
}

/// Random sampling options: temperatures around 1 and 0 (greedy), top-k off, small, at and
/// past the vocabulary, top-p off to tiny, penalties above and below 1, the uniform number at
/// its ends too.
pub fn sample_params(rng: &mut Rng, n: usize) -> SampleParams {
    let pick = |rng: &mut Rng, xs: &[f32]| xs[rng.range(0, xs.len())];
    let temperature = pick(rng, &[0.0, 0.3, 0.7, 1.0, 1.0, 1.6]);
    let top_k = [0, 0, 1, 2, 5, 40, n, n + 3][rng.range(0, 8)];
    let top_p = pick(rng, &[1.0, 1.0, 0.95, 0.9, 0.5, 0.01]);
    let repetition_penalty = pick(rng, &[1.0, 1.0, 1.3, 0.8]);
    let uniform = match rng.range(0, 10) {
        0 => 0.0,
        1 => 1.0 - 1.0 / (1 << 24) as f32,
        _ => (rng.next() >> 40) as f32 / (1u64 << 24) as f32,
    };
    SampleParams { temperature, top_k, top_p, repetition_penalty, uniform }
}

/// Logits of `n` candidates: spread, or from a few values (many exact ties, signed zeros).
pub fn sample_logits(rng: &mut Rng, n: usize) -> Vec<f32> {
    match rng.range(0, 3) {
        0 => rng.f32s(n).iter().map(|v| v * 8.0).collect(),
        1 => (0..n).map(|_| [-0.0, 0.0, 1.5, -2.0, 3.0][rng.range(0, 5)]).collect(),
        _ => rng.f32s(n).iter().map(|v| v * 0.5).collect(),
    }
}

/// Whether `token` is a pick of the twin for some number within `d` of `p.uniform` and top-p
/// within `d` of `p.top_p`: between, in the candidates' order, the picks at `uniform - d` and
/// `uniform + d` (picks are monotonic in the number).
pub fn near_boundary_pick(logits: &[f32], history: &[u32], p: &SampleParams, token: u32, d: f32) -> bool {
    let keys = twin::sample_keys(logits, history, p).unwrap();
    // Position in the order: higher keys first, then lower ids.
    let rank = |t: u32| keys.iter().enumerate().filter(|&(i, k)| (*k, std::cmp::Reverse(i as u32)) > (keys[t as usize], std::cmp::Reverse(t))).count();
    let top_ps = if p.top_p < 1.0 { vec![p.top_p, (p.top_p - d).max(1e-7), (p.top_p + d).min(1.0 - 1e-7)] } else { vec![1.0] };
    top_ps.into_iter().any(|top_p| {
        let at = |u: f32| twin::sample(logits, history, &SampleParams { uniform: u.clamp(0.0, 0.99999994), top_p, ..*p }).unwrap();
        (rank(at(p.uniform - d))..=rank(at(p.uniform + d))).contains(&rank(token))
    })
}

/// `sample.wgsl` against its twin on random logits and options: the keys (penalized, scaled
/// logits) are bit-identical; the weights `exp(z - max)` agree to a few ULPs (the GPU's `exp`
/// is not the CPU's); from the GPU's own keys and weights the twin picks the GPU's token
/// exactly (same sums in the same order); and from its own, the same token but where the
/// number drawn lies within 1e-5 of a cumulative boundary (counted: rare).
pub async fn sample_kernel_matches_twin(ctx: &GpuContext, rng: &mut Rng) {
    let mut pipes = Pipelines::default();
    let (mut cases, mut near_boundary) = (0, 0);
    for n in [1, 2, 3, 255, 256, 257, 1000, 4099, 49152, rng.range(1, 70_000)] {
        for _ in 0..6 {
            let (logits, p) = (sample_logits(rng, n), sample_params(rng, n));
            let history: Vec<u32> = (0..rng.range(0, 20)).map(|_| rng.range(0, n) as u32).collect();
            let opts = ctx.storage_init("opts", &twin::sample_opts(n, &p).iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            let seen = kernels::seen_bitmap(n, &history);
            let seen = ctx.storage_init("seen", &seen.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            let (lb, st) = (upload(ctx, &logits), state(ctx, 0, 1, &[7]));
            let (kb, wb) = (ctx.storage("keys", (n * 4) as u64).unwrap(), ctx.storage("weights", (n * 4) as u64).unwrap());
            let ids = ctx.storage("kept_ids", (n * 4) as u64).unwrap();
            let d = kernels::sample(ctx, &mut pipes, kernels::SampleBuffers { opts: &opts, logits: &lb, seen: &seen, keys: &kb, weights: &wb, state: &st, kept_ids: &ids });
            kernels::run(ctx, &pipes, &[d], 1);
            let got = download(ctx, &st, 3).await[2].to_bits();
            let what = format!("n={n} {p:?} history={history:?}");
            let keys: Vec<u32> = download(ctx, &kb, n).await.iter().map(|v| v.to_bits()).collect();
            assert_eq!(keys, twin::sample_keys(&logits, &history, &p).unwrap(), "keys {what}");
            cases += 1;
            if p.temperature == 0.0 {
                let mut penalized = logits.clone();
                assert_eq!(got, edge_llm::generate::sample_with(&p, &mut penalized, &history), "greedy {what}");
                continue;
            }
            let weights = download(ctx, &wb, n).await;
            assert_close(&format!("weights {what}"), &weights, &twin::sample_weights(&keys), |_| 1e-30 + 4e-7);
            assert_eq!(got, twin::sample_pick(&keys, &weights, &p), "pick from the GPU's weights {what}");
            let want = twin::sample(&logits, &history, &p).unwrap();
            if got != want {
                assert!(near_boundary_pick(&logits, &history, &p, got, 1e-5), "{what}: GPU {got}, twin {want}");
                near_boundary += 1;
            }
        }
    }
    log(&format!("sample.wgsl vs twin: {near_boundary} of {cases} picks differ, each within 1e-5 of a boundary"));
    assert!(near_boundary * 20 <= cases, "{near_boundary} of {cases} near a boundary");
    // A logit that is not finite: the mark the engine turns into the CPU path's error.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut logits = rng.f32s(300);
        logits[123] = bad;
        let p = SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, uniform: 0.5 };
        let opts = ctx.storage_init("opts", &twin::sample_opts(300, &p).iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let (lb, st, seen) = (upload(ctx, &logits), state(ctx, 0, 1, &[7]), ctx.storage("seen", 40).unwrap());
        let (kb, wb) = (ctx.storage("keys", 1200).unwrap(), ctx.storage("weights", 1200).unwrap());
        let ids = ctx.storage("kept_ids", 1200).unwrap();
        let d = kernels::sample(ctx, &mut pipes, kernels::SampleBuffers { opts: &opts, logits: &lb, seen: &seen, keys: &kb, weights: &wb, state: &st, kept_ids: &ids });
        kernels::run(ctx, &pipes, &[d], 1);
        assert_eq!(download(ctx, &st, 3).await[2].to_bits(), u32::MAX, "{bad}");
        assert_eq!(twin::sample(&logits, &[], &p), None);
    }
}

