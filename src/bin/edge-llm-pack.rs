//! edge-llm-pack: the native model packer.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The system allocator, counting live heap bytes and their high-water mark, so `bench` can
/// report the peak heap of a load the way the browser reports wasm linear memory.
struct PeakAlloc;
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            PeakAlloc::grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
            PeakAlloc::grew(new_size);
        }
        p
    }
}

impl PeakAlloc {
    /// Start a new peak from the heap in use now; returns that.
    fn reset_peak() -> usize {
        let live = LIVE.load(std::sync::atomic::Ordering::Relaxed);
        PEAK.store(live, std::sync::atomic::Ordering::Relaxed);
        live
    }

    fn grew(size: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let live = LIVE.fetch_add(size, Relaxed) + size;
        PEAK.fetch_max(live, Relaxed);
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

#[derive(Parser)]
#[command(name = "edge-llm-pack", version, about = "Build, quantize, shard and verify edge-llm models")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the project's deterministic tiny test models (fp32, int8, int4) and tokenizer.
    GenTiny {
        /// Output folder.
        #[arg(default_value = "tests/fixtures/tiny")]
        dir: PathBuf,
    },
    /// Quantize the weight matmuls of an fp32/fp16 ONNX graph (ours or an optimum export).
    Quantize {
        input: PathBuf,
        output: PathBuf,
        #[command(flatten)]
        quant: QuantArgs,
        /// Mixed precision: `PATTERN=PRECISION`, matched against node and weight names, first
        /// match wins (e.g. `--override lm_head=int8 --override layers.0.=fp32`).
        #[arg(long = "override", value_parser = parse_override)]
        overrides: Vec<(String, edge_llm::quant::Precision)>,
    },
    /// Shard a model folder (model.onnx, tokenizer.json, model_config.json) into OUT with a
    /// manifest.json listing every file's size and SHA-256.
    Pack {
        input: PathBuf,
        out: PathBuf,
        /// Shard size in bytes; a bigger tensor gets a shard of its own (at most 50 MB).
        #[arg(long, default_value_t = edge_llm::manifest::DEFAULT_SHARD_BYTES)]
        shard_bytes: u64,
        #[arg(long, default_value = "1.0.0")]
        model_version: String,
    },
    /// Recompute every checksum of a packed model and enforce a size budget.
    Verify {
        dir: PathBuf,
        /// bundled: < 100 MB; on-demand: < 500 MB.
        #[arg(long, value_enum, default_value_t = Budget::OnDemand)]
        budget: Budget,
    },
    /// Measure a model natively: cold load, prefill, time to first token, decode tok/s,
    /// per-token latency percentiles and peak heap. `dir` is a packed model (manifest.json, as
    /// the browser loads it) or a folder with model.onnx, tokenizer.json and model_config.json.
    Bench {
        dir: PathBuf,
        /// Prompt, rendered with the model's chat template.
        #[arg(long, default_value = "What is the capital of France? Answer in one sentence, then explain why it became the capital.")]
        prompt: String,
        /// Decode steps discarded before measuring.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Decode steps measured.
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// CPU threads, this one included (default: EDGE_LLM_THREADS, else cores - 1).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The GPU backend through wgpu (natively Vulkan/Metal; Mesa llvmpipe is a software GPU,
    /// so its numbers say nothing about real GPUs): int4 GEMV GB/s at SmolLM2-135M's shapes,
    /// and with `--gguf` a greedy int4 decode's tok/s.
    BenchGpu {
        /// A Llama GGUF to decode, quantized to int4 (block 32, symmetric) as `import-gguf` does.
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Passes discarded before measuring.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Passes measured (GEMV passes per shape; decode steps).
        #[arg(long, default_value_t = 100)]
        steps: usize,
    },
    /// Convert a Llama-architecture GGUF (llama.cpp) file into model.onnx, tokenizer.json and
    /// model_config.json.
    ImportGguf {
        input: PathBuf,
        outdir: PathBuf,
        #[command(flatten)]
        quant: QuantArgs,
        /// Write onnxruntime-genai's layout (GroupQueryAttention, SkipSimplifiedLayerNormalization,
        /// no position_ids) instead of HF optimum's.
        #[arg(long)]
        genai: bool,
    },
}

/// How weights are stored, shared by `import-gguf` and `quantize`.
#[derive(clap::Args)]
struct QuantArgs {
    /// Precision of the linear layers: fp32, fp16, int8 or int4.
    #[arg(long, default_value = "int4")]
    precision: edge_llm::quant::Precision,
    /// int4 block size along K.
    #[arg(long, default_value_t = 32)]
    block_size: usize,
    /// int4 with per-block zero points instead of symmetric.
    #[arg(long)]
    asymmetric: bool,
}

fn parse_override(s: &str) -> Result<(String, edge_llm::quant::Precision), String> {
    let (pat, p) = s.split_once('=').ok_or("expected PATTERN=PRECISION")?;
    Ok((pat.to_string(), p.parse()?))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Budget {
    Bundled,
    OnDemand,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::GenTiny { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, bytes) in edge_llm::tiny::files() {
                let path = dir.join(&name);
                std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                println!("{:>9} bytes  {}", bytes.len(), path.display());
            }
        }
        Cmd::Quantize { input, output, quant: QuantArgs { precision, block_size, asymmetric }, overrides } => {
            let bytes = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let opts = edge_llm::quantize::QuantizeOptions { precision, block_size, symmetric: !asymmetric, overrides };
            let (model, report) = edge_llm::quantize::quantize(edge_llm::onnx::decode(&bytes)?, &opts)?;
            let out = edge_llm::onnx::encode(&model);
            std::fs::write(&output, &out).with_context(|| format!("writing {}", output.display()))?;
            for (name, p) in &report.rewritten {
                println!("{p:?}  {name}");
            }
            println!("{} matmuls quantized, {} kept; {} -> {} bytes", report.rewritten.len(), report.kept, bytes.len(), out.len());
        }
        Cmd::Pack { input, out, shard_bytes, model_version } => {
            let config = edge_llm::ModelConfig::from_json(&read(&input, "model_config.json")?)?;
            let opts = edge_llm::pack::PackOptions { shard_bytes, model_version, ..Default::default() };
            let (manifest, files) =
                edge_llm::pack::pack(&read(&input, "model.onnx")?, &read(&input, "tokenizer.json")?, &config, &opts)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for (name, bytes) in &files {
                std::fs::write(out.join(name), bytes).with_context(|| format!("writing {name}"))?;
                println!("{:>11} bytes  {name}", bytes.len());
            }
            std::fs::write(out.join("manifest.json"), manifest.to_json())?;
            println!("{:>11} bytes  total; model sha256 {}", manifest.total_bytes, manifest.model_sha256);
        }
        Cmd::Verify { dir, budget } => {
            let manifest = edge_llm::manifest::Manifest::from_json(&read(&dir, "manifest.json")?)?;
            for f in &manifest.files {
                manifest.verify_file(&f.path, &read(&dir, &f.path)?)?;
                println!("ok  {:>11} bytes  {}  {}", f.bytes, f.sha256, f.path);
            }
            let (name, limit) = match budget {
                Budget::Bundled => ("bundled", edge_llm::manifest::BUNDLED_BUDGET_BYTES),
                Budget::OnDemand => ("on-demand", edge_llm::manifest::ON_DEMAND_BUDGET_BYTES),
            };
            anyhow::ensure!(
                manifest.total_bytes < limit,
                "model is {} bytes, over the {name} budget of {limit} bytes: quantize further (e.g. --precision int4) or choose a smaller model",
                manifest.total_bytes
            );
            println!("verified: {} files, {} bytes, within the {name} budget of {limit} bytes", manifest.files.len(), manifest.total_bytes);
        }
        Cmd::Bench { dir, prompt, warmup, steps, threads } => {
            if let Some(n) = threads {
                edge_llm::cpu::threads::configure(n);
            }
            bench(&dir, &prompt, warmup, steps)?
        }
        Cmd::BenchGpu { gguf, warmup, steps } => bench_gpu(gguf.as_deref(), warmup, steps)?,
        Cmd::ImportGguf { input, outdir, quant: QuantArgs { precision, block_size, asymmetric }, genai } => {
            import_gguf(&input, &outdir, precision, block_size, !asymmetric, genai)?
        }
    }
    Ok(())
}

fn read(dir: &std::path::Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn bench(dir: &std::path::Path, prompt: &str, warmup: usize, steps: usize) -> anyhow::Result<()> {
    use std::time::Instant;
    use edge_llm::tokenizer::ChatMessage;
    use std::sync::atomic::Ordering::Relaxed;
    let manifest = match dir.join("manifest.json").exists() {
        true => Some(edge_llm::manifest::Manifest::from_json(&read(dir, "manifest.json")?)?),
        false => None,
    };
    let packed = manifest.is_some();
    // The tokenizer alone first (its cost is reported separately): load time, peak heap while
    // parsing, heap it keeps.
    let tokenizer_path = match &manifest {
        Some(m) => m.file(edge_llm::manifest::FileRole::Tokenizer).context("manifest lists no tokenizer")?.path.clone(),
        None => "tokenizer.json".into(),
    };
    let tokenizer_json = read(dir, &tokenizer_path)?;
    let before = PeakAlloc::reset_peak();
    let t0 = Instant::now();
    let tokenizer = edge_llm::tokenizer::Tokenizer::from_json(&tokenizer_json)?;
    let tokenizer_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (tokenizer_peak, tokenizer_kept) = (PEAK.load(Relaxed) - before, LIVE.load(Relaxed) - before);
    drop((tokenizer, tokenizer_json));
    let (engine, model_bytes, load_ms, heap_before) = if let Some(manifest) = &manifest {
        // Files are read as the engine asks for them, as the browser hands over fetched shards.
        let heap_before = PeakAlloc::reset_peak();
        let t0 = Instant::now();
        let engine = edge_llm::Engine::load_packed_with(manifest, |path| {
            std::fs::read(dir.join(path)).map_err(|e| edge_llm::Error::InvalidModel(format!("reading {path}: {e}")))
        })?;
        (engine, manifest.total_bytes, t0.elapsed().as_secs_f64() * 1e3, heap_before)
    } else {
        // Every byte is read first, then the load alone is timed.
        let onnx = read(dir, "model.onnx")?;
        let (tokenizer, config) = (read(dir, "tokenizer.json")?, read(dir, "model_config.json")?);
        let heap_before = PeakAlloc::reset_peak();
        let t0 = Instant::now();
        let config = edge_llm::ModelConfig::from_json(&config)?;
        let engine = edge_llm::Engine::load(&onnx, &tokenizer, config)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        drop(onnx);
        (engine, 0, load_ms, heap_before)
    };
    let load_peak = PEAK.load(Relaxed);
    let text = engine.apply_chat_template(&[ChatMessage { role: "user".into(), content: prompt.into() }])?;
    let mut tok_ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let _ = engine.tokenizer().encode(&text);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    tok_ms.sort_by(f64::total_cmp);
    if std::env::var("EDGE_LLM_PLAN_OPS").is_ok_and(|v| v == "1") {
        eprintln!("plan ops: {:?}", engine.plan_ops());
    }
    let opts = edge_llm::GenerateOptions { max_tokens: warmup + steps + 1, ignore_eos: true, ..Default::default() };
    let mut g = engine.generate(&text, &opts)?;
    let t = Instant::now();
    g.step()?;
    let ttft_ms = t.elapsed().as_secs_f64() * 1e3;
    let prompt_tokens = g.stats().prompt_tokens;
    let mut lat = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t = Instant::now();
        g.step()?.context("generation ended early")?;
        if i >= warmup {
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let total: f64 = lat.iter().sum();
    lat.sort_by(f64::total_cmp);
    let rows: Vec<(&str, String)> = vec![
        ("model", dir.display().to_string()),
        ("packed model bytes", if packed { model_bytes.to_string() } else { "n/a (unpacked folder)".into() }),
        ("threads", edge_llm::cpu::threads::threads().to_string()),
        ("cold load ms", format!("{load_ms:.1}")),
        ("prompt tokens", prompt_tokens.to_string()),
        ("tokenizer load ms", format!("{tokenizer_ms:.1}")),
        ("tokenizer load peak heap", tokenizer_peak.to_string()),
        ("tokenizer heap kept", tokenizer_kept.to_string()),
        ("tokenize ms (p50 of 20)", format!("{:.3}", percentile(&tok_ms, 50.0))),
        ("time to first token ms", format!("{ttft_ms:.1}")),
        ("prefill tok/s", format!("{:.1}", prompt_tokens as f64 / ttft_ms * 1e3)),
        ("decode tok/s", format!("{:.1}", steps as f64 / total * 1e3)),
        ("decode steps measured", format!("{steps} (after {warmup} warm-up)")),
        ("token latency p50 ms", format!("{:.2}", percentile(&lat, 50.0))),
        ("token latency p95 ms", format!("{:.2}", percentile(&lat, 95.0))),
        ("token latency p99 ms", format!("{:.2}", percentile(&lat, 99.0))),
        ("peak heap bytes (load)", load_peak.to_string()),
        ("heap before load bytes", heap_before.to_string()),
        ("peak heap bytes (all)", PEAK.load(Relaxed).to_string()),
        ("peak RSS bytes", peak_rss_bytes().map_or("n/a".into(), |b| b.to_string())),
    ];
    println!("native benchmark ({} {}):", std::env::consts::ARCH, std::env::consts::OS);
    for (k, v) in rows {
        println!("  {k:<24} {v}");
    }
    Ok(())
}

fn import_gguf(
    input: &std::path::Path,
    outdir: &std::path::Path,
    precision: edge_llm::quant::Precision,
    block_size: usize,
    symmetric: bool,
    genai: bool,
) -> anyhow::Result<()> {
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use edge_llm::quant::Precision;

    if precision == Precision::Int4 && (block_size < 16 || !block_size.is_power_of_two()) {
        anyhow::bail!("--block-size must be a power of two >= 16 (MatMulNBits), got {block_size}");
    }
    let start = std::time::Instant::now();
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let imported = edge_llm::gguf::import(&bytes).with_context(|| format!("importing {}", input.display()))?;
    drop(bytes);
    let cfg = &imported.config.architecture;
    println!(
        "imported {} in {:.2?}: {} layers, hidden {}, {} heads ({} kv), vocab {}",
        imported.config.model_id,
        start.elapsed(),
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.vocab_size
    );
    let opts = match precision {
        Precision::F32 => ExportOptions::fp32(),
        Precision::F16 => ExportOptions::fp16(),
        Precision::Int8 => ExportOptions::int8(),
        Precision::Int4 => ExportOptions::int4(block_size, symmetric),
    };
    let opts = if genai { opts.genai() } else { opts };
    let export_start = std::time::Instant::now();
    let onnx = edge_llm::onnx::encode(&export(cfg, &imported.weights, &opts).model);
    println!("exported {precision:?} in {:.2?}", export_start.elapsed());
    std::fs::create_dir_all(outdir).with_context(|| format!("creating {}", outdir.display()))?;
    let config_json = serde_json::to_string_pretty(&imported.config)?;
    for (name, data) in [
        ("model.onnx", onnx.as_slice()),
        ("tokenizer.json", imported.tokenizer_json.as_bytes()),
        ("model_config.json", config_json.as_bytes()),
    ] {
        let path = outdir.join(name);
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        println!("{:>11} bytes  {}", data.len(), path.display());
    }
    Ok(())
}

/// `bench-gpu`: see `edge_llm::gpu::bench::report`.
fn bench_gpu(gguf: Option<&std::path::Path>, warmup: usize, steps: usize) -> anyhow::Result<()> {
    for line in edge_llm::gpu::bench::report(gguf, warmup, steps)? {
        println!("{line}");
    }
    Ok(())
}
