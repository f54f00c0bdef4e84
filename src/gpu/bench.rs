//! The GPU benchmark: [`kernels`] (an int4 GEMV's GB/s and the prefill's GEMM over 64 rows in
//! GFLOP/s, each repeated in one submit; the token pick), natively in `edge-llm-pack bench-gpu`
//! and in browsers through `benchGpuKernels` (`scripts/bench-gpu-browser.mjs`), and natively
//! [`report`]'s greedy decode tok/s on top.

use super::context::GpuContext;
use super::nbits::{BlockSpec, ZeroPointKind};
pub use super::probe::GemvBench;
use super::{GemvKernel, PrefillKernel};
use crate::Result;

/// The kernel benchmark, on every platform (in browsers through `benchGpuKernels`, timed with
/// `performance.now`): the adapter, int4 GEMV GB/s and the prefill GEMM's GFLOP/s at
/// SmolLM2-135M's shapes, the token pick over its vocabulary; each pass one submit and its
/// readback, timed with `now` (milliseconds). Medians and percentiles of `steps` passes after
/// `warmup`.
/// Each GEMV shape runs with each kernel of `gemv` (`GemvKernel::Auto`: the one the engine
/// uses on this adapter).
pub async fn kernels(ctx: &GpuContext, warmup: usize, steps: usize, now: fn() -> f64, gemv: &[GemvKernel]) -> Result<Vec<String>> {
    if steps == 0 {
        return Err(crate::Error::InvalidOption { option: "steps", reason: "must be at least 1".into() });
    }
    let mut out = Vec::new();
    let info = ctx.adapter_info();
    let kind = if ctx.is_software() { "SOFTWARE GPU (a CPU rasterizer): not a GPU measurement" } else { "hardware GPU" };
    out.push(format!("adapter: {} ({:?}, {:?}, driver {} {}) - {kind}", info.name, info.backend, info.device_type, info.driver, info.driver_info));
    out.push(format!("per-row GEMV's reduction: {}", if ctx.has_subgroups() { "subgroupAdd (the device has subgroups)" } else { "barrier tree (no subgroups)" }));
    out.push(format!("int4 / int8 products (rows GEMV, tiled GEMM): {}", if ctx.f16() { "f16 (shader-f16)" } else { "f32" }));
    out.push(match ctx.shuffle_lanes() {
        0 if ctx.has_subgroups() => "rows kernel's reduction: barrier tree (the device's subgroups are not laid over consecutive invocations)".to_string(),
        0 => "rows kernel's reduction: barrier tree (no subgroups)".to_string(),
        n => format!("rows kernel's reduction: subgroup shuffles for groups of up to {n} lanes, a barrier tree above"),
    });
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (percentile(&v, 50.0), percentile(&v, 95.0), percentile(&v, 99.0))
    };
    // SmolLM2-135M: q/o 576x576, gate/up 1536x576, down 576x1536, tied head 49152x576.
    const REPS: usize = 10;
    // ms per call of `rows`-row products `[n][k]` (p50, p95, p99), `REPS` per submit.
    let timed = async |b: &GemvBench| -> Result<(Vec<f64>, u64)> {
        let ms = passes(warmup, steps, now, async || b.run(ctx).await).await?;
        Ok((ms.into_iter().map(|m| m / REPS as f64).collect(), b.bytes_per_call()))
    };
    out.push(format!("int4 GEMV (block 32, symmetric), {REPS} calls per submit, {steps} passes after {warmup}:"));
    // On a hardware GPU also a 7B-class projection (32768 x 4096: 64 MiB of nibbles), large
    // enough that the memory system, not the dispatch, sets the time: the GB/s to set against
    // the device's bandwidth (issue #15). SmolLM2's are too small to say it on a big GPU.
    let big: &[(usize, usize)] = if ctx.is_software() { &[] } else { &[(32768, 4096)] };
    for &(n, k) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)].iter().chain(big) {
        // Every kernel over one uploaded weight (the big shape's is 64 MiB), with the
        // context's reduction; then, where the context does not use them, the rows kernels
        // whose lanes the device's subgroups hold by shuffles (a kernel takes its reduction
        // from the context's shape when bound).
        let mut benches: Vec<(String, GemvBench)> = Vec::new();
        for (&kernel, b) in gemv.iter().zip(GemvBench::per_kernel(ctx, n, k, REPS, gemv)?) {
            benches.push((gemv_name(ctx, kernel, n, k), b));
        }
        if !ctx.rows_shape().shuffles && ctx.shuffle_lanes() > 0 {
            let spec = BlockSpec { n, k, bits: 4, block_size: 32, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false };
            let extra: Vec<(String, GemvBench)> = ctx.with_rows_shuffles(true, || {
                gemv.iter()
                    .filter(|g| match g {
                        GemvKernel::Rows { lanes, .. } => spec.rows_kernel_fits() && ctx.shuffles(*lanes),
                        GemvKernel::Auto => spec.rows_kernel_fits() && ctx.shuffles(spec.rows_kernel_shape(ctx.rows_shape()).0),
                        GemvKernel::PerRow => false,
                    })
                    .map(|&g| (format!("{} shfl", gemv_name(ctx, g, n, k)), benches[0].1.again(ctx, REPS, g)))
                    .collect()
            });
            benches.extend(extra);
        }
        for (name, b) in &benches {
            let (ms, bytes) = timed(b).await?;
            let (p50, p95, p99) = stats(ms);
            let gbs = bytes as f64 / (p50 * 1e-3) / 1e9;
            out.push(format!("  n={n:6} k={k:5} {name:17}: {bytes:9} bytes/call  ms/call p50 {p50:.3} p95 {p95:.3} p99 {p99:.3}  => {gbs:.2} GB/s (p50)"));
        }
    }
    // What a load's tuning (`auto` and `webgpu` on a GPU) would choose at SmolLM2's
    // feed-forward shape, and every shape it timed (the GEMVs above use the untuned default).
    {
        let tuning = super::probe::tune_rows(ctx, 1536, 576, now).await?;
        out.push(format!("load-time tuning: {}", tuning.says()));
        let all: Vec<String> = tuning.timings.iter().map(|(s, (l, r), ms)| format!("rows:{l}x{r}{} {ms:.3}", if s.shuffles { " shuffles" } else { "" })).collect();
        out.push(format!("  ms per GEMV, fastest first: {}", all.join(", ")));
    }
    // Whether a load's tuning would fuse a decode step's norms into the GEMVs after them, at
    // SmolLM2's feed-forward shape (on a hardware GPU also a 7B-class 4096 x 4096).
    let norm_shapes: &[(usize, usize)] = if ctx.is_software() { &[(1536, 576)] } else { &[(1536, 576), (4096, 4096)] };
    for &(n, k) in norm_shapes {
        if let Some(tuning) = super::probe::tune_norm(ctx, n, k, now).await? {
            out.push(format!("load-time tuning: {}", tuning.says()));
        }
    }
    // The prefill's product over a 64-row chunk, by each kernel: the tiled GEMM (each weight
    // read once per 32 rows) and gemv_rows.wgsl at 1, 2, 4 rows of x per workgroup.
    const ROWS: usize = 64;
    out.push(format!("int4 GEMM (block 32, symmetric) over {ROWS} rows, {REPS} calls per submit, {steps} passes after {warmup} (engine's choice here: {}):", ctx.prefill_kernel()));
    // On a hardware GPU also a 7B-class 4096 x 4096 projection: SmolLM2's give a big GPU
    // a few dozen workgroups.
    let big: &[(usize, usize)] = if ctx.is_software() { &[] } else { &[(4096, 4096)] };
    for &(n, k) in [(576, 576), (1536, 576), (576, 1536)].iter().chain(big) {
        let kernels = PrefillKernel::candidates();
        for (&kernel, b) in kernels.iter().zip(&GemvBench::per_prefill(ctx, n, k, ROWS, REPS, &kernels)?) {
            let (ms, _) = timed(b).await?;
            let (p50, p95, p99) = stats(ms);
            let gflops = 2.0 * (ROWS * n * k) as f64 / (p50 * 1e-3) / 1e9;
            let name = prefill_name(ctx, kernel, n, k);
            out.push(format!("  n={n:6} k={k:5} {name:15}: ms/call p50 {p50:.3} p95 {p95:.3} p99 {p99:.3}  => {gflops:.2} GFLOP/s (p50)"));
        }
    }
    // What a load's tuning would choose for the prefill at SmolLM2's feed-forward shape.
    {
        let tuning = super::probe::tune_prefill(ctx, 1536, 576, now).await?;
        out.push(format!("load-time tuning: {}", tuning.says()));
    }
    // Decode attention deep in a context: one query row at `pos` over a resident cache, by
    // each kernel ([`super::probe::AttentionBench`]), `REPS` per submit; GB/s of cached keys
    // and values read.
    {
        use super::kernels;
        use super::probe::AttentionBench;
        use super::twin::AttnShape;
        out.push(format!(
            "decode attention (one query row: one workgroup per query head, or split over {} positions and added; the engine splits from {}), {REPS} calls per submit, {steps} passes after {warmup}:",
            kernels::ATTENTION_SPLIT,
            match ctx.attention_split_from() {
                usize::MAX => "never".to_string(),
                n => format!("{n} positions"),
            }
        ));
        // SmolLM2-135M (9 heads over 3 kv heads of 64); on a hardware GPU also a Llama-3-8B
        // layer (32 over 8 of 128) at 4096 positions.
        let smollm2 = ("smollm2-135m", AttnShape { heads: 9, kv_heads: 3, head_dim: 64, max_ctx: 1024 });
        let llama = ("llama-3-8b", AttnShape { heads: 32, kv_heads: 8, head_dim: 128, max_ctx: 4096 });
        let shapes = if ctx.is_software() { vec![smollm2] } else { vec![smollm2, llama] };
        for &(name, s) in &shapes {
            let bench = AttentionBench::new(ctx, s, REPS)?;
            for pos in [127, 255, 511, 1023, 4095].into_iter().filter(|p| *p < s.max_ctx) {
                for (kernel, split) in [("whole", false), ("split", true)] {
                    let ms = passes(warmup, steps, now, async || bench.run(ctx, split, pos).await).await?;
                    let (p50, p95, p99) = stats(ms.into_iter().map(|m| m / REPS as f64).collect());
                    let bytes = bench.bytes(split, pos);
                    let gbs = bytes as f64 / (p50 * 1e-3) / 1e9;
                    let AttnShape { heads, kv_heads, head_dim, .. } = s;
                    out.push(format!(
                        "  {name} ({heads} heads over {kv_heads}, dim {head_dim}) at position {pos:4} {kernel}: {bytes:8} bytes/call  ms/call p50 {p50:.3} p95 {p95:.3} p99 {p99:.3}  => {gbs:.2} GB/s (p50)"
                    ));
                }
            }
            // What a load's tuning would choose for this model's attention.
            let tuning = super::probe::tune_attention(ctx, s, now).await?;
            out.push(format!("  load-time tuning for {name}: {}", tuning.says()));
        }
    }
    // The token pick over SmolLM2's 49152 logits (distinct values spread over [-5, 5), as a
    // model's): argmax, and sampling (temperature 0.8, repetition penalty 1.1, with top-k 40
    // and top-p 0.95: every stage of sample.wgsl; and with top-p 0.9 alone) with its readback.
    {
        use super::kernels::{self, Pipelines, SampleBuffers};
        const VOCAB: usize = 49152;
        let logits: Vec<f32> = (0..VOCAB).map(|i| ((i as u64 * 2_654_435_761) % 1_000_003) as f32 / 1e5 - 5.0).collect();
        let opts_for = |top_k: usize, top_p: f32| {
            let params = crate::backend::SampleParams { temperature: 0.8, top_k, top_p, repetition_penalty: 1.1, uniform: 0.37 };
            super::twin::sample_opts(VOCAB, &params).iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()
        };
        let seen: Vec<u8> = kernels::seen_bitmap(VOCAB, &[1, 50, 700]).iter().flat_map(|w| w.to_le_bytes()).collect();
        let (lb, seen) = (ctx.storage_init("logits", &kernels::f32_bytes(&logits))?, ctx.storage_init("seen", &seen)?);
        let (opts_k, opts_p) = (ctx.storage_init("opts", &opts_for(40, 0.95))?, ctx.storage_init("opts", &opts_for(0, 0.9))?);
        let (keys, weights, state, rb) = (ctx.storage("keys", 4 * VOCAB as u64)?, ctx.storage("weights", 4 * VOCAB as u64)?, ctx.storage("state", 12)?, ctx.readback("token", 4));
        let kept_ids = ctx.storage("kept_ids", 4 * VOCAB as u64)?;
        let mut pipes = Pipelines::default();
        let argmax = kernels::argmax(ctx, &mut pipes, VOCAB, &lb, &state);
        let sample_k = kernels::sample(ctx, &mut pipes, SampleBuffers { opts: &opts_k, logits: &lb, seen: &seen, keys: &keys, weights: &weights, state: &state, kept_ids: &kept_ids });
        let sample_p = kernels::sample(ctx, &mut pipes, SampleBuffers { opts: &opts_p, logits: &lb, seen: &seen, keys: &keys, weights: &weights, state: &state, kept_ids: &kept_ids });
        out.push(format!("token pick over {VOCAB} logits (one submit, 4 bytes read back), {steps} passes after {warmup}:"));
        let picks = [
            ("argmax.wgsl", &argmax),
            ("sample.wgsl (temperature, top-k 40, top-p 0.95, penalty)", &sample_k),
            ("sample.wgsl (temperature, top-p 0.9, penalty)", &sample_p),
        ];
        for (what, d) in picks {
            let pick = async || {
                let mut enc = ctx.encoder();
                pipes.record(&mut enc, [d], 1);
                enc.copy_buffer_to_buffer(&state, 8, &rb, 0, 4);
                ctx.submit(enc);
                ctx.read(&rb, 4).await.map(drop)
            };
            let (p50, p95, p99) = stats(passes(warmup, steps, now, pick).await?);
            out.push(format!("  {what}: ms p50 {p50:.2} p95 {p95:.2} p99 {p99:.2}"));
        }
    }
    Ok(out)
}

/// Milliseconds of each of `steps` runs of `run` (a submit and its readback) after `warmup`
/// untimed ones, by `now`.
async fn passes(warmup: usize, steps: usize, now: fn() -> f64, run: impl AsyncFn() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        run().await?;
    }
    let mut ms = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = now();
        run().await?;
        ms.push(now() - t);
    }
    Ok(ms)
}

/// The prefill kernel `choice` runs on an int4 block-32 `[n][k]` weight, by name: `tiled`, or
/// `rows:LxRxX` (L lanes, R rows per lane group, X rows of x per workgroup).
fn prefill_name(ctx: &GpuContext, choice: PrefillKernel, n: usize, k: usize) -> String {
    match choice {
        PrefillKernel::Rows { xrows } => {
            let spec = BlockSpec { n, k, bits: 4, block_size: 32, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false };
            let (lanes, rows) = match ctx.gemv_kernel() {
                GemvKernel::Rows { lanes, rows } => (lanes, rows),
                _ => spec.rows_kernel_shape(ctx.rows_shape()),
            };
            format!("rows:{lanes}x{rows}x{xrows}")
        }
        other => other.to_string(),
    }
}

/// The kernel `choice` runs on an int4 block-32 `[n][k]` weight, by name: `rows:LxR` (L
/// lanes, R rows per lane group) or `per-row`.
fn gemv_name(ctx: &GpuContext, choice: GemvKernel, n: usize, k: usize) -> String {
    let spec = BlockSpec { n, k, bits: 4, block_size: 32, zero_points: ZeroPointKind::Middle, f16_params: false, bias: false };
    match choice {
        GemvKernel::Rows { .. } if spec.rows_kernel_fits() => choice.to_string(),
        GemvKernel::Auto if spec.rows_kernel_fits() => {
            let (lanes, rows) = spec.rows_kernel_shape(ctx.rows_shape());
            format!("{} (auto)", GemvKernel::Rows { lanes, rows })
        }
        _ => "per-row".into(),
    }
}

/// The GEMV kernels `bench-gpu` compares by default: the engine's choice and the per-row
/// kernel, and on a hardware GPU every shape of the rows kernel too.
pub fn default_gemv_kernels(ctx: &GpuContext) -> Vec<GemvKernel> {
    let mut v = vec![GemvKernel::Auto, GemvKernel::PerRow];
    if !ctx.is_software() {
        for lanes in super::ROWS_KERNEL_LANES {
            v.extend(super::ROWS_KERNEL_ROWS.map(|rows| GemvKernel::Rows { lanes, rows }));
        }
    }
    v
}

/// The shapes `bench-gpu --synthetic NAME` builds ([`super::QuantLlama::synthetic`]):
/// `smollm2-135m`, `llama-3.2-1b`, `llama-3.1-8b` (their published configurations).
pub fn synthetic_config(name: &str) -> Result<crate::model::LlamaConfig> {
    use crate::model::LlamaConfig;
    let llama = |vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim, rope_theta, tie_word_embeddings| LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 8192,
        tie_word_embeddings,
    };
    match name {
        "smollm2-135m" => Ok(llama(49152, 576, 1536, 30, 9, 3, 64, 100000.0, true)),
        "llama-3.2-1b" => Ok(llama(128256, 2048, 8192, 16, 32, 8, 64, 500000.0, true)),
        "llama-3.1-8b" => Ok(llama(128256, 4096, 14336, 32, 32, 8, 128, 500000.0, false)),
        _ => Err(crate::Error::InvalidOption { option: "synthetic", reason: format!("`{name}`: expected smollm2-135m, llama-3.2-1b or llama-3.1-8b") }),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Run the benchmark natively, handing each report line to `emit` as soon as it is known (a
/// run cut short keeps what it measured): [`kernels`] (over the GEMV kernels `gemv`; none:
/// [`default_gemv_kernels`]) and, with a model (`(name, weights)`), a greedy int4 decode with
/// `options`' GEMV, then its prefill. Medians and percentiles of `steps` passes after `warmup`.
#[cfg(all(feature = "tools", not(target_arch = "wasm32")))]
#[allow(clippy::too_many_arguments)]
pub fn report(
    model: Option<(&str, &super::QuantLlama)>,
    warmup: usize,
    steps: usize,
    at_position: Option<usize>,
    options: &super::GpuOptions,
    gemv: &[GemvKernel],
    emit: &mut dyn FnMut(&str),
) -> Result<()> {
    use super::context::block_on;
    use super::decode::GpuLlama;
    use crate::Error;
    use std::time::Instant;
    if steps == 0 {
        return Err(Error::InvalidOption { option: "steps", reason: "must be at least 1".into() });
    }
    let ctx = block_on(GpuContext::with_options(options))?;
    fn now() -> f64 {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }
    let gemv = if gemv.is_empty() { default_gemv_kernels(&ctx) } else { gemv.to_vec() };
    for line in block_on(kernels(&ctx, warmup, steps, now, &gemv))? {
        emit(&line);
    }
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (percentile(&v, 50.0), percentile(&v, 95.0), percentile(&v, 99.0))
    };
    let Some((name, q)) = model else { return Ok(()) };
    const PREFILL_TOKENS: usize = 56;
    let cfg = q.cfg.clone();
    let max_ctx = cfg.max_position_embeddings.min(1024);
    // What a decode step reads and records: what the tuning and the estimate scale to.
    let shapes = q.shapes();
    let bytes = shapes.decode_bytes();
    // Tuned at the model's feed-forward shape, as a load through the engine does on a GPU.
    let mut tuned_step = None;
    if !ctx.is_software() {
        let tuning = block_on(super::probe::tune_model(&ctx, &cfg, max_ctx, &shapes, options, now))?;
        for said in &tuning.said {
            emit(&format!("load-time tuning for {name}: {said}"));
        }
        tuned_step = tuning.step;
    }
    // A deep position must leave the steps room in the cache; said before the model is timed.
    if let Some(pos) = at_position {
        // Decode times whole submits: its last submit may start up to `decode_ahead` steps on.
        let room = max_ctx.saturating_sub(warmup + steps + 1 + ctx.decode_ahead());
        if pos > room || pos < PREFILL_TOKENS {
            return Err(Error::InvalidOption {
                option: "at-position",
                reason: format!("{pos} must be at least the {PREFILL_TOKENS}-token prompt and leave {warmup} + {steps} steps (and the decode-ahead) room in the {max_ctx}-token context (at most {room})"),
            });
        }
    }
    emit(&format!("prefill kernel: {}", ctx.prefill_kernel()));
    let split_from = ctx.attention_split_from();
    emit(&format!(
        "decode attention: {}",
        match split_from {
            usize::MAX => "one workgroup per query head at every position".to_string(),
            n => format!("split over positions from {n} positions on, one workgroup per query head before"),
        }
    ));
    emit(&format!("decode norms: {}", if ctx.fuses_norm() { "fused into the GEMVs after them" } else { "before the GEMVs (add_rms_norm)" }));
    let t = Instant::now();
    let mut model = GpuLlama::load(ctx, q, max_ctx)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    emit(&format!("decode {} ({} layers, int4 block 32 symmetric), max context {max_ctx}:", name, cfg.num_layers));
    emit(&format!("  load (upload, pipelines, bind groups) ms: {load_ms:.1}"));
    emit(&format!("  compute dispatches a decode step records: {}", model.dispatches(1)));
    // A fixed prompt of ids (the tokenizer is not what is measured), the length of a short
    // chat turn.
    let ids = |len: usize| -> Vec<u32> { (0..len).map(|i| ((100 + i * 37) % cfg.vocab_size) as u32).collect() };
    let prompt = ids(PREFILL_TOKENS);
    // Greedy decode after a prompt: each token's latency once `warmup` steps have run. Steps
    // chained ahead in one submit (`decode_ahead`) come back together: a submit's time, and the
    // calls that take its chained tokens, spread evenly over its tokens.
    let ahead = model.context().decode_ahead();
    emit(&format!("  greedy decode steps per submit: up to {}", 1 + ahead));
    let decode = |model: &mut GpuLlama| -> Result<Vec<f64>> {
        let mut lat = Vec::with_capacity(steps);
        let mut chain: Vec<f64> = Vec::new();
        let spread = |chain: &mut Vec<f64>, lat: &mut Vec<f64>| {
            let each = chain.iter().sum::<f64>() / chain.len().max(1) as f64;
            lat.extend(chain.drain(..).map(|_| each));
        };
        // Whole submits only: timing starts at the first submit after `warmup` steps and ends
        // with the submit that reaches `steps` tokens, once its chain is taken.
        let (mut i, mut timing) = (0, false);
        while lat.len() + chain.len() < steps || model.chained() > 0 {
            // A call with nothing chained submits; the calls after it take its chain.
            if model.chained() == 0 {
                spread(&mut chain, &mut lat);
                timing |= i >= warmup;
            }
            let t = Instant::now();
            block_on(model.step(None))?;
            if timing {
                chain.push(t.elapsed().as_secs_f64() * 1e3);
            }
            i += 1;
        }
        spread(&mut chain, &mut lat);
        Ok(lat)
    };
    block_on(model.prefill(&prompt))?;
    let lat = decode(&mut model)?;
    let (total, timed): (f64, usize) = (lat.iter().sum(), lat.len());
    let (p50, p95, p99) = stats(lat);
    emit(&format!("  decode tok/s: {:.2} over {timed} steps after {warmup}", timed as f64 / total * 1e3));
    emit(&format!("  token latency ms p50 {p50:.2} p95 {p95:.2} p99 {p99:.2}"));
    // What `auto`'s probe would have estimated for this step (it weighs that against the CPU):
    // the tuning's estimate where the load tuned the chain, as `auto` takes it.
    let est = match tuned_step {
        Some(step) => step,
        None => block_on(super::probe::estimate_step(model.context(), &cfg, &shapes, now))?,
    };
    let est_ms = est.ms(ahead);
    emit(&format!(
        "  auto's probe estimates a step at {:.2} ms ({:.1} GEMVs of [{}][{}] at {:.3} ms, a submit {:.2} ms shared by {} steps, {} more dispatches at {:.4} ms): {:.2}x the measured p50",
        est_ms,
        est.scale,
        cfg.intermediate_size,
        cfg.hidden_size,
        est.gemv.gemv_ms,
        est.submit_ms(),
        1 + ahead,
        est.extra_dispatches,
        est.dispatch_ms,
        est_ms / p50
    ));
    emit(&format!(
        "  weights read per step {:.1} MB: {:.1} GB/s at the p50 latency (the whole step: every kernel, the submit and the 4-byte readback)",
        bytes as f64 / 1e6,
        bytes as f64 / (p50 * 1e-3) / 1e9
    ));
    // Prefill from an empty cache, median of 3: chunked (what the backend runs), then one
    // submit per token (the GEMV path, as before prefill was chunked).
    let tok_s = |ms: f64| prompt.len() as f64 / ms * 1e3;
    for chunked in [true, false] {
        let mut times = Vec::with_capacity(3);
        for _ in 0..3 {
            model.reset();
            let t = Instant::now();
            if chunked {
                block_on(model.prefill(&prompt))?;
            } else {
                for id in &prompt {
                    block_on(model.step(Some(*id)))?;
                }
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let ms = stats(times).0;
        let how = if chunked { format!("chunks of {} per submit", model.prefill_chunk()) } else { "one submit per token".into() };
        emit(&format!("  prefill {} tokens, {how}: {ms:.0} ms (median of 3) = {:.1} tok/s", prompt.len(), tok_s(ms)));
    }
    // Deep in the context the attention reads the cache's keys and values layer by layer, each
    // query head its kv head's, or split, each kv head's once for up to 8 of its query heads
    // (`kernels::attention_heads`): the step's cost beside the weights' at long chats.
    if let Some(pos) = at_position {
        model.reset();
        block_on(model.prefill(&ids(pos)))?;
        let deep = decode(&mut model)?;
        let (deep_total, deep_steps): (f64, usize) = (deep.iter().sum(), deep.len());
        let (d50, d95, d99) = stats(deep);
        let mid = pos + warmup + deep_steps / 2;
        let split = model.splits_attention(pos);
        let kv_reads = if split { cfg.num_heads / super::kernels::attention_heads(cfg.num_heads / cfg.num_kv_heads) } else { cfg.num_heads };
        let kv_bytes = 2 * 4 * cfg.num_layers * kv_reads * cfg.head_dim * mid;
        emit(&format!(
            "  decode at positions {pos}..{}: {:.2} tok/s; token latency ms p50 {d50:.2} p95 {d95:.2} p99 {d99:.2} ({:.2}x the p50 after {PREFILL_TOKENS}); the attention reads {:.1} MB of cached keys and values a step at position {mid} (f32, {})",
            pos + warmup + deep_steps,
            deep_steps as f64 / deep_total * 1e3,
            d50 / p50,
            kv_bytes as f64 / 1e6,
            if split { "split: each kv head's once for up to 8 of its query heads" } else { "each query head its kv head's" }
        ));
    }
    Ok(())
}
