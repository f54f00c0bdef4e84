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
        #[command(flatten)]
        calib: CalibArgs,
        /// With `--calibrate`: the model's tokenizer.json (default: tokenizer.json beside INPUT).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Shard a model folder (model.onnx, tokenizer.json, model_config.json; optional
    /// generation_config.json for the generation defaults) into OUT with a manifest.json listing
    /// every file's size and SHA-256.
    Pack {
        input: PathBuf,
        out: PathBuf,
        /// Shard size in bytes (at most 50 MB); a bigger tensor continues across the next shards.
        #[arg(long, default_value_t = edge_llm::package::manifest::DEFAULT_SHARD_BYTES)]
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
    /// Measure quality loss against a reference model (e.g. FP32) through the engine: perplexity
    /// per text, on rare tokens and on a long window, greedy top-1 agreement, mean KL, bundle
    /// bytes, decode tok/s and a greedy reply; prints a markdown table and fails (exit 1) when a
    /// variant loses more than its `--accept` allows (default: the seed's +2 % perplexity and 90 %
    /// agreement).
    Eval {
        /// `LABEL=DIR` of the reference (packed or unpacked).
        #[arg(long, value_parser = parse_labeled)]
        reference: (String, PathBuf),
        /// `LABEL=DIR` of each variant.
        #[arg(value_parser = parse_labeled)]
        variants: Vec<(String, PathBuf)>,
        /// `NAME=FILE` texts scored in windows (default: tests/fixtures/eval/ prose, code,
        /// multilingual; see scripts/eval-texts.py for their sources).
        #[arg(long = "text", value_parser = parse_labeled)]
        texts: Vec<(String, PathBuf)>,
        /// Text for the long-context measure (default tests/fixtures/eval/long.txt).
        #[arg(long)]
        long_text: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        window: usize,
        #[arg(long, default_value_t = 4)]
        max_windows: usize,
        #[arg(long, default_value_t = 1536)]
        long_tokens: usize,
        #[arg(long, default_value_t = 16384)]
        rare_from: u32,
        /// `LABEL=PPL_PCT:AGREE_PCT`: the most perplexity may rise over the reference and the
        /// least top-1 agreement, in percent (e.g. `int8=1:95`).
        #[arg(long = "accept", value_parser = parse_accept)]
        accept: Vec<(String, edge_llm::eval::Acceptance)>,
        /// Kernels: `browser` (edge-llm's int4/int8 kernels as the wasm build runs them, natively
        /// their portable twins: int8 activations where a node's `accuracy_level` is 4, float
        /// ones rounded to 16 bits per block elsewhere), `browser-exact` (the same with the float
        /// ones in f32, the `exactActivations` load option) or `native` (tract's, the native default).
        #[arg(long, default_value = "browser")]
        kernels: String,
        /// Kernels for the reference alone (default: `--kernels`): e.g. `browser-exact` to score
        /// `browser` against the same model computed in f32.
        #[arg(long)]
        reference_kernels: Option<String>,
        /// Also write the table here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sentence-embedding quality of quantized encoders (e.g. all-MiniLM-L6-v2, see
    /// scripts/minilm-export.py): cosine similarity of each variant's mean-pooled, normalised
    /// embedding to the reference's over sentences of a text; fails (exit 1) when a variant's
    /// mean is under its `--accept LABEL=MIN_COSINE`.
    EvalEncoder {
        /// The reference ONNX (FP32).
        #[arg(long)]
        reference: PathBuf,
        /// `LABEL=ONNX` of each variant.
        #[arg(value_parser = parse_labeled)]
        variants: Vec<(String, PathBuf)>,
        /// The encoder's tokenizer.json ([CLS] ... [SEP] are added).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Texts to take sentences from (default tests/fixtures/eval/prose.txt and long.txt).
        #[arg(long = "text")]
        texts: Vec<PathBuf>,
        #[arg(long, default_value_t = 300)]
        max_sentences: usize,
        #[arg(long = "accept", value_parser = parse_min)]
        accept: Vec<(String, f64)>,
        #[arg(long, default_value = "browser")]
        kernels: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Per-linear sensitivity of a GGUF model to int4 (calibrated with `--calibrate`): relative
    /// output error at int4 and int8 and the bytes each costs, most sensitive first; a
    /// mixed-precision recipe is then `import-gguf --override NAME=int8 ...` for the top rows.
    Sensitivity {
        input: PathBuf,
        #[command(flatten)]
        calib: CalibArgs,
        /// Rows to print (all when 0).
        #[arg(long, default_value_t = 40)]
        top: usize,
    },
    /// The GPU backend through wgpu (natively Vulkan/Metal; Mesa llvmpipe is a software GPU,
    /// so its numbers say nothing about real GPUs): int4 GEMV GB/s and the prefill GEMM's
    /// GFLOP/s (64 rows) at SmolLM2-135M's shapes, the token pick, and with `--gguf` a greedy
    /// int4 decode's tok/s.
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
        /// Leave the adapter's subgroups unused (the per-row GEMV's barrier-tree reduction), to
        /// compare.
        #[arg(long)]
        no_subgroups: bool,
        /// The decode GEMV kernels to time, comma-separated: `auto` (the engine's choice),
        /// `per-row`, `rows:N` or `rows:NxR` (N lanes per row: 4, 8, 16, 32, 64; R rows per
        /// lane group: 1, 2, 4). The model's decode runs the first. Default: auto and per-row,
        /// and every `rows:NxR` on a hardware GPU.
        #[arg(long, value_delimiter = ',')]
        gemv: Vec<edge_llm::gpu::GemvKernel>,
        /// The prefill kernel the model's prompt runs with: `auto` (the engine's choice, tuned
        /// at load on a hardware GPU), `tiled` or `rows:X` (X rows of x per workgroup: 1, 2, 4).
        /// The kernel sweep times every one.
        #[arg(long, default_value = "auto")]
        prefill: edge_llm::gpu::PrefillKernel,
        /// Also decode a model of these shapes with seeded random int4 weights (no file):
        /// smollm2-135m, llama-3.2-1b or llama-3.1-8b.
        #[arg(long, conflicts_with = "gguf")]
        synthetic: Option<String>,
        /// Also time the decode deep in the context: prefill this many tokens, then decode
        /// there (the attention's cost at a long chat; the context is at most 1024 tokens).
        #[arg(long)]
        at_position: Option<usize>,
        /// Decode steps whose context reaches this many positions run the attention split over
        /// positions (0: every step; default: the engine's, tuned at load on a hardware GPU,
        /// never on a CPU rasterizer).
        #[arg(long)]
        attention_split_from: Option<usize>,
        /// Greedy decode steps a submit chains beyond the first, all read back together (0:
        /// one step a submit; default: the engine's, tuned at load on a hardware GPU, 0 on a CPU
        /// rasterizer).
        #[arg(long)]
        decode_ahead: Option<usize>,
        /// Whether a decode step's residual adds and norms run inside the GEMVs after them
        /// (`true`) or before them (`false`; default: the engine's, tuned at load on a hardware
        /// GPU, not fused on a CPU rasterizer).
        #[arg(long)]
        fuse_norm: Option<bool>,
        /// What the int4 and int8 products compute in: `f32`, `f16` (where the adapter has
        /// `shader-f16`: the products line says whether they ran so) or `f16-where-faster` (the
        /// `gpuPrecision: "f16"` load option: a hardware GPU's load times both).
        #[arg(long, default_value = "f32")]
        precision: edge_llm::gpu::Precision,
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
        #[command(flatten)]
        calib: CalibArgs,
        /// Mixed precision: `PATTERN=PRECISION`, matched against each linear's name, first
        /// match wins (e.g. `--override layers.0.=int8 --override mlp.down_proj=int8`).
        #[arg(long = "override", value_parser = parse_override)]
        overrides: Vec<(String, edge_llm::quant::Precision)>,
        /// Precision of the token embedding and the head tied to it (default: --precision).
        #[arg(long)]
        embedding: Option<edge_llm::quant::Precision>,
    },
}

/// How weights are stored, shared by `import-gguf` and `quantize`.
#[derive(clap::Args)]
struct QuantArgs {
    /// Precision of the linear layers: fp32, fp16, int8 or int4. For `import-gguf`, int4 alone
    /// (none of the int4 flags below, no `--embedding`) is the measured best recipe under the
    /// 100 MB bundle (docs/quality.md): float zero points, f16 scales, the tied embedding/head
    /// at 8 bits on float activations.
    #[arg(long, default_value = "int4")]
    precision: edge_llm::quant::Precision,
    /// int4 block size along K.
    #[arg(long, default_value_t = 32)]
    block_size: usize,
    /// int4 with per-block zero points instead of symmetric.
    #[arg(long)]
    asymmetric: bool,
    /// int4 with float zero points: each block `q * scale + min` (llama.cpp Q4_1's form, fit by
    /// least squares), `MatMulNBits` zero points of the activations' type.
    #[arg(long)]
    float_zero_points: bool,
    /// int4 by plain round-to-nearest over each block's range, instead of searching each
    /// block's scale (and zero point) for the least error.
    #[arg(long)]
    rtn: bool,
    /// Scales and float zero points stored as fp16 (cast to float in the graph), as GGUF
    /// stores its blocks: 2 bytes less per block.
    #[arg(long)]
    f16_scales: bool,
    /// int8 storage: `block` (MatMulNBits 8-bit, scales per 32 for weights and activations) or
    /// `dynamic` (onnxruntime quantize_dynamic's MatMulInteger, one scale per activation tensor).
    #[arg(long, default_value = "block")]
    int8_format: String,
    /// `--precision int8` (block format): compute every 8-bit layer and the head on activations
    /// rounded to int8 per block of 32 (`accuracy_level = 4`, llama.cpp's q8_0 × q8_0) instead
    /// of float ones: less arithmetic in wasm, but SmolLM2's demo reply then differs from
    /// FP32's (docs/quality.md).
    #[arg(long)]
    int8_activations: bool,
}

/// Calibration of int4 (activation-weighted scale search).
#[derive(clap::Args)]
struct CalibArgs {
    /// Text whose activations weight each int4 block's error (see `calibrate`); e.g. the
    /// calibration text of scripts/eval-texts.py (disjoint from eval's texts).
    #[arg(long)]
    calibrate: Option<PathBuf>,
    /// Calibration samples (a decoder: token windows, each from an empty cache; an encoder,
    /// i.e. a graph without `past_key_values` inputs: sentences, `[CLS] … [SEP]`).
    #[arg(long, default_value_t = 512)]
    calibration_samples: usize,
    /// Tokens per calibration sample.
    #[arg(long, default_value_t = 32)]
    calibration_tokens: usize,
}

impl QuantArgs {
    fn int8_format(&self) -> anyhow::Result<edge_llm::llama::onnx_export::Int8Format> {
        use edge_llm::llama::onnx_export::Int8Format;
        match self.int8_format.as_str() {
            "block" => Ok(Int8Format::Block32),
            "dynamic" => Ok(Int8Format::DynamicPerTensor),
            other => anyhow::bail!("--int8-format must be block or dynamic, got `{other}`"),
        }
    }
}

fn parse_override(s: &str) -> Result<(String, edge_llm::quant::Precision), String> {
    let (pat, p) = s.split_once('=').ok_or("expected PATTERN=PRECISION")?;
    Ok((pat.to_string(), p.parse()?))
}

fn parse_labeled(s: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = s.split_once('=').ok_or("expected LABEL=PATH")?;
    Ok((label.to_string(), path.into()))
}

fn parse_min(s: &str) -> Result<(String, f64), String> {
    let (label, v) = s.split_once('=').ok_or("expected LABEL=VALUE")?;
    Ok((label.to_string(), v.parse::<f64>().map_err(|e| format!("`{v}`: {e}"))?))
}

fn cpu_options(kernels: &str) -> anyhow::Result<edge_llm::cpu::CpuOptions> {
    match kernels {
        "browser" => Ok(edge_llm::cpu::CpuOptions { q4_kernel: true, q4_activations: edge_llm::cpu::q4_matmul::Q4Activations::AsModel, q8_kernel: true, ..Default::default() }),
        "browser-exact" => Ok(edge_llm::cpu::CpuOptions { q4_kernel: true, q4_activations: edge_llm::cpu::q4_matmul::Q4Activations::AsModelExact, q8_kernel: true, ..Default::default() }),
        "native" => Ok(edge_llm::cpu::CpuOptions::default()),
        other => anyhow::bail!("--kernels must be browser, browser-exact or native, got `{other}`"),
    }
}

#[allow(clippy::too_many_arguments)]
fn eval_encoder(
    reference: PathBuf,
    variants: Vec<(String, PathBuf)>,
    tokenizer: PathBuf,
    texts: Vec<PathBuf>,
    max_sentences: usize,
    accept: Vec<(String, f64)>,
    kernels: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use edge_llm::eval::{encoder_cosines, encoder_embeddings, sentences, Encoder};
    let cpu = cpu_options(kernels)?;
    let texts = if texts.is_empty() { vec!["tests/fixtures/eval/prose.txt".into(), "tests/fixtures/eval/long.txt".into()] } else { texts };
    let mut all = String::new();
    for t in &texts {
        all += &std::fs::read_to_string(t).with_context(|| format!("reading {}", t.display()))?;
        all += "\n\n";
    }
    let sents = sentences(&all, max_sentences);
    anyhow::ensure!(!sents.is_empty(), "no sentences of 20 to 300 characters in {texts:?}");
    let tok = edge_llm::tokenizer::Tokenizer::from_json(&std::fs::read(&tokenizer).with_context(|| format!("reading {}", tokenizer.display()))?)?;
    let (cls, sep) = (tok.token_to_id("[CLS]").context("tokenizer has no [CLS]")?, tok.token_to_id("[SEP]").context("tokenizer has no [SEP]")?);
    let reference_bytes = std::fs::read(&reference).with_context(|| format!("reading {}", reference.display()))?;
    let wrap = |ids: &[u32]| [&[cls][..], ids, &[sep][..]].concat();
    let started = std::time::Instant::now();
    let r = encoder_embeddings(&Encoder::load(&reference_bytes, &cpu)?, &tok, &sents, wrap)?;
    eprintln!("reference: {} sentences in {:.1?}", sents.len(), started.elapsed());
    let mut table = format!("| model | bytes | mean cosine | min cosine | p5 cosine |\n|---|---:|---:|---:|---:|\n| fp32 (reference) | {} | 1 | 1 | 1 |\n", reference_bytes.len());
    let mut failed = Vec::new();
    for (label, path) in &variants {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v = Encoder::load(&bytes, &cpu).with_context(|| format!("loading {}", path.display()))?;
        let started = std::time::Instant::now();
        let mut cos = encoder_cosines(&r, &v, &tok, &sents, wrap)?;
        eprintln!("{label}: {:.1?}", started.elapsed());
        cos.sort_by(f32::total_cmp);
        let mean = cos.iter().map(|c| *c as f64).sum::<f64>() / cos.len().max(1) as f64;
        table += &format!("| {label} | {} | {mean:.5} | {:.5} | {:.5} |\n", bytes.len(), cos[0], cos[cos.len() / 20]);
        if let Some((_, min)) = accept.iter().find(|(l, _)| l == label) {
            if mean < *min {
                failed.push(format!("{label}: mean cosine {mean:.5} < {min}"));
            }
        }
    }
    table += &format!("\n{} sentences of {}; mean-pooled, L2-normalised; kernels: {kernels}.\n", sents.len(), texts.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", "));
    println!("{table}");
    if let Some(out) = out {
        std::fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}

fn parse_accept(s: &str) -> Result<(String, edge_llm::eval::Acceptance), String> {
    let (label, v) = s.split_once('=').ok_or("expected LABEL=PPL_PCT:AGREE_PCT")?;
    let (p, a) = v.split_once(':').ok_or("expected LABEL=PPL_PCT:AGREE_PCT")?;
    let num = |x: &str| x.parse::<f64>().map_err(|e| format!("`{x}`: {e}"));
    Ok((label.to_string(), edge_llm::eval::Acceptance { max_ppl_increase_pct: num(p)?, min_agreement_pct: num(a)? }))
}

/// The seed's acceptable loss for a variant without its own `--accept`.
const DEFAULT_ACCEPT: edge_llm::eval::Acceptance = edge_llm::eval::Acceptance { max_ppl_increase_pct: 2.0, min_agreement_pct: 90.0 };

#[allow(clippy::too_many_arguments)]
fn eval(
    reference: (String, PathBuf),
    variants: Vec<(String, PathBuf)>,
    texts: Vec<(String, PathBuf)>,
    long_text: Option<PathBuf>,
    opts: edge_llm::eval::EvalOptions,
    accept: Vec<(String, edge_llm::eval::Acceptance)>,
    (kernels, reference_kernels): (&str, Option<&str>),
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use edge_llm::eval::{check, evaluate, markdown, EvalText, Subject};
    let cpu = cpu_options(kernels)?;
    let reference_cpu = cpu_options(reference_kernels.unwrap_or(kernels))?;
    let fixtures = PathBuf::from("tests/fixtures/eval");
    let texts = if texts.is_empty() {
        ["prose", "code", "multilingual"].map(|n| (n.to_string(), fixtures.join(format!("{n}.txt")))).to_vec()
    } else {
        texts
    };
    let long = ("long".to_string(), long_text.unwrap_or(fixtures.join("long.txt")));
    let mut all = Vec::new();
    for ((name, path), long) in texts.into_iter().map(|t| (t, false)).chain([(long, true)]) {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        all.push(EvalText { name, text, long });
    }
    let load_with = |(label, dir): &(String, PathBuf), cpu: &edge_llm::cpu::CpuOptions| -> anyhow::Result<Subject> {
        let t0 = std::time::Instant::now();
        let s = Subject::load(label, dir, cpu).with_context(|| format!("loading {}", dir.display()))?;
        eprintln!("loaded {label} ({}) in {:.1?}", dir.display(), t0.elapsed());
        Ok(s)
    };
    let reference = load_with(&reference, &reference_cpu)?;
    let variants = variants.iter().map(|v| load_with(v, &cpu)).collect::<anyhow::Result<Vec<_>>>()?;
    let kernels = match reference_kernels {
        Some(r) if r != kernels => format!("{kernels} (reference: {r})"),
        _ => kernels.to_string(),
    };
    let t0 = std::time::Instant::now();
    let reports = evaluate(&reference, &variants, &all, &opts, |m| eprintln!("[{:>6.1?}] {m}", t0.elapsed()))?;
    let mut table = markdown(&reports, &all);
    table += &format!(
        "\nConditions: windows of {} tokens (at most {} per text), long window {} tokens (second half scored), rare = next-token id >= {}; kernels: {kernels}; {} {}, 1 decode thread measured by median token latency.\n",
        opts.window, opts.max_windows, opts.long_tokens, opts.rare_from, std::env::consts::ARCH, std::env::consts::OS
    );
    let mut failed = Vec::new();
    for r in &reports[1..] {
        let a = accept.iter().find(|(l, _)| *l == r.label).map_or(DEFAULT_ACCEPT, |(_, a)| *a);
        let verdict = match check(&reports[0], r, &a) {
            Some(why) => {
                failed.push(r.label.clone());
                format!("FAIL ({why})")
            }
            None => "ok".into(),
        };
        table += &format!("- {}: accept <= +{} % perplexity, >= {} % agreement: {verdict}\n", r.label, a.max_ppl_increase_pct, a.min_agreement_pct);
    }
    println!("{table}");
    if let Some(out) = out {
        std::fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    anyhow::ensure!(failed.is_empty(), "over the acceptable loss: {}", failed.join(", "));
    Ok(())
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
        Cmd::Quantize { input, output, quant, overrides, calib, tokenizer } => {
            let bytes = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let model = edge_llm::onnx::decode(&bytes)?;
            let importance = match &calib.calibrate {
                Some(_) => {
                    anyhow::ensure!(!quant.rtn, "--calibrate weights the scale search, which --rtn turns off");
                    let path = tokenizer.unwrap_or_else(|| input.with_file_name("tokenizer.json"));
                    let json = std::fs::read(&path).with_context(|| format!("reading the tokenizer {}", path.display()))?;
                    Some(std::sync::Arc::new(onnx_importance(&model, &edge_llm::tokenizer::Tokenizer::from_json(&json)?, &calib)?))
                }
                None => None,
            };
            let opts = edge_llm::quantize::QuantizeOptions {
                importance,
                precision: quant.precision,
                block_size: quant.block_size,
                symmetric: !quant.asymmetric,
                int8_format: quant.int8_format()?,
                q4_search: !quant.rtn,
                q4_min: quant.float_zero_points,
                f16_scales: quant.f16_scales,
                int8_activations: quant.int8_activations,
                overrides,
            };
            let (model, report) = edge_llm::quantize::quantize(model, &opts)?;
            let out = edge_llm::onnx::encode(&model);
            std::fs::write(&output, &out).with_context(|| format!("writing {}", output.display()))?;
            for (name, p) in &report.rewritten {
                println!("{p:?}  {name}");
            }
            println!("{} matmuls quantized, {} kept; {} -> {} bytes", report.rewritten.len(), report.kept, bytes.len(), out.len());
        }
        Cmd::Pack { input, out, shard_bytes, model_version } => {
            let config = edge_llm::ModelConfig::from_json(&read(&input, "model_config.json")?)?;
            // The folder's generation_config.json (Hugging Face's), if any, gives the manifest's
            // generation defaults.
            let generation = match std::fs::read(input.join("generation_config.json")) {
                Ok(json) => edge_llm::package::manifest::GenerationDefaults::from_generation_config(&json)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
                Err(e) => return Err(e).context("reading generation_config.json"),
            };
            let opts = edge_llm::pack::PackOptions { shard_bytes, model_version, generation, ..Default::default() };
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
            let manifest = edge_llm::package::manifest::Manifest::from_json(&read(&dir, "manifest.json")?)?;
            for f in &manifest.files {
                manifest.verify_file(&f.path, &read(&dir, &f.path)?)?;
                println!("ok  {:>11} bytes  {}  {}", f.bytes, f.sha256, f.path);
            }
            let (name, limit) = match budget {
                Budget::Bundled => ("bundled", edge_llm::package::manifest::BUNDLED_BUDGET_BYTES),
                Budget::OnDemand => ("on-demand", edge_llm::package::manifest::ON_DEMAND_BUDGET_BYTES),
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
        Cmd::Eval { reference, variants, texts, long_text, window, max_windows, long_tokens, rare_from, accept, kernels, reference_kernels, out } => {
            let opts = edge_llm::eval::EvalOptions { window, max_windows, long_tokens, rare_from, ..Default::default() };
            eval(reference, variants, texts, long_text, opts, accept, (&kernels, reference_kernels.as_deref()), out)?
        }
        Cmd::EvalEncoder { reference, variants, tokenizer, texts, max_sentences, accept, kernels, out } => {
            eval_encoder(reference, variants, tokenizer, texts, max_sentences, accept, &kernels, out)?
        }
        Cmd::ImportGguf { input, outdir, quant, genai, calib, overrides, embedding } => {
            import_gguf(&input, &outdir, &quant, genai, &calib, overrides, embedding)?
        }
        Cmd::Sensitivity { input, calib, top } => {
            let bytes = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let imported = edge_llm::gguf::import(&bytes).with_context(|| format!("importing {}", input.display()))?;
            drop(bytes);
            let cfg = &imported.config.architecture;
            let imp = match &calib.calibrate {
                Some(_) => importance(&imported, &calib)?,
                None => Default::default(),
            };
            let mut rows = edge_llm::calibrate::sensitivity(&edge_llm::calibrate::linears(cfg, &imported.weights), &imp);
            if top > 0 {
                rows.truncate(top);
            }
            println!("{}", edge_llm::calibrate::sensitivity_markdown(&rows));
        }
        Cmd::BenchGpu { gguf, warmup, steps, no_subgroups, gemv, prefill, synthetic, at_position, attention_split_from, decode_ahead, fuse_norm, precision } => {
            let options = edge_llm::gpu::GpuOptions {
                no_subgroups,
                gemv: gemv.first().copied().unwrap_or_default(),
                prefill,
                attention_split_from,
                decode_ahead,
                fuse_norm,
                precision,
                ..Default::default()
            };
            bench_gpu(gguf.as_deref(), synthetic.as_deref(), warmup, steps, at_position, &options, &gemv)?
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
        true => Some(edge_llm::package::manifest::Manifest::from_json(&read(dir, "manifest.json")?)?),
        false => None,
    };
    let packed = manifest.is_some();
    // The tokenizer alone first (its cost is reported separately): load time, peak heap while
    // parsing, heap it keeps.
    let tokenizer_path = match &manifest {
        Some(m) => m.file(edge_llm::package::manifest::FileRole::Tokenizer).context("manifest lists no tokenizer")?.path.clone(),
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
        let engine = edge_llm::Engine::open(edge_llm::package::Package::packed_with(manifest, |path| {
            std::fs::read(dir.join(path)).map_err(|e| edge_llm::Error::InvalidModel(format!("reading {path}: {e}")))
        }), &Default::default())?;
        (engine, manifest.total_bytes, t0.elapsed().as_secs_f64() * 1e3, heap_before)
    } else {
        // Every byte is read first, then the load alone is timed.
        let onnx = read(dir, "model.onnx")?;
        let (tokenizer, config) = (read(dir, "tokenizer.json")?, read(dir, "model_config.json")?);
        let heap_before = PeakAlloc::reset_peak();
        let t0 = Instant::now();
        let config = edge_llm::ModelConfig::from_json(&config)?;
        let engine = edge_llm::Engine::open(edge_llm::package::Package::loose(&onnx, &tokenizer, config), &Default::default())?;
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

/// Activation statistics of `imported` (as fp32, the exporter's decoder graph) over the
/// calibration text of `calib`.
fn importance(imported: &edge_llm::gguf::Imported, calib: &CalibArgs) -> anyhow::Result<edge_llm::calibrate::Importance> {
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    let tokenizer = edge_llm::tokenizer::Tokenizer::from_json(imported.tokenizer_json.as_bytes())?;
    let fp32 = export(&imported.config.architecture, &imported.weights, &ExportOptions::fp32()).model;
    onnx_importance(&fp32, &tokenizer, calib)
}

/// Activation statistics of an fp32 ONNX graph over the calibration text of `calib`: token
/// windows for a decoder (it has `past_key_values` inputs), sentences for an encoder.
fn onnx_importance(
    model: &edge_llm::onnx::ModelProto,
    tok: &edge_llm::tokenizer::Tokenizer,
    calib: &CalibArgs,
) -> anyhow::Result<edge_llm::calibrate::Importance> {
    let path = calib.calibrate.as_ref().context("no --calibrate text")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let decoder = model.graph.iter().flat_map(|g| &g.input).any(|i| i.name.starts_with("past_key_values."));
    let samples = if decoder {
        edge_llm::calibrate::samples(&tok.encode(&text)?, calib.calibration_samples, calib.calibration_tokens)?
    } else {
        edge_llm::calibrate::sentence_samples(tok, &text, calib.calibration_samples)?
    };
    let t0 = std::time::Instant::now();
    let imp = edge_llm::calibrate::importance(model, &samples, |i| {
        if i % 64 == 0 {
            eprintln!("calibration: {i}/{} samples", samples.len());
        }
    })?;
    let tokens: usize = samples.iter().map(Vec::len).sum();
    println!("calibrated {} linears on {} samples ({tokens} tokens) of {} in {:.1?}", imp.len(), samples.len(), path.display(), t0.elapsed());
    Ok(imp)
}

fn import_gguf(
    input: &std::path::Path,
    outdir: &std::path::Path,
    quant: &QuantArgs,
    genai: bool,
    calib: &CalibArgs,
    overrides: Vec<(String, edge_llm::quant::Precision)>,
    embedding: Option<edge_llm::quant::Precision>,
) -> anyhow::Result<()> {
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use edge_llm::quant::Precision;
    let (precision, block_size, symmetric) = (quant.precision, quant.block_size, !quant.asymmetric);

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
    let int8_format = quant.int8_format()?;
    let (int8_activations, head_int8_activations) = ExportOptions::packer_activations(precision, int8_format, quant.int8_activations);
    let mut opts = ExportOptions { int8_format, int8_activations, head_int8_activations, q4_search: !quant.rtn, q4_min: quant.float_zero_points, f16_scales: quant.f16_scales, overrides, ..opts };
    let recipe = precision == Precision::Int4 && !(quant.asymmetric || quant.float_zero_points || quant.rtn || quant.f16_scales) && embedding.is_none();
    let embedding = if recipe {
        // The default int4 recipe (measured in docs/quality.md, scripts/quality-table.sh).
        let r = ExportOptions::int4_recipe(block_size);
        (opts.q4_min, opts.f16_scales, opts.head_int8_activations) = (r.q4_min, r.f16_scales, r.head_int8_activations);
        Some(r.embedding)
    } else {
        embedding
    };
    if let Some(e) = embedding {
        (opts.embedding, opts.lm_head) = (e, e);
    }
    if calib.calibrate.is_some() {
        anyhow::ensure!(!quant.rtn, "--calibrate weights the scale search, which --rtn turns off");
        opts.importance = Some(std::sync::Arc::new(importance(&imported, calib)?));
    }
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
fn bench_gpu(
    gguf: Option<&std::path::Path>,
    synthetic: Option<&str>,
    warmup: usize,
    steps: usize,
    at_position: Option<usize>,
    options: &edge_llm::gpu::GpuOptions,
    gemv: &[edge_llm::gpu::GemvKernel],
) -> anyhow::Result<()> {
    // The GGUF's weights, requantized to the int4 block-32 layout the GPU kernels read; or a
    // synthetic model's.
    let model = match (gguf, synthetic) {
        (Some(path), _) => {
            let imported = edge_llm::gguf::import(&std::fs::read(path)?)?;
            Some((path.display().to_string(), edge_llm::gpu::QuantLlama::quantize(&imported.config.architecture, &imported.weights, 32, true)))
        }
        (None, Some(name)) => {
            let cfg = edge_llm::gpu::bench::synthetic_config(name)?;
            Some((format!("{name} (synthetic: random int4 weights of its shapes)"), edge_llm::gpu::QuantLlama::synthetic(&cfg, 1)))
        }
        (None, None) => None,
    };
    edge_llm::gpu::bench::report(model.as_ref().map(|(n, q)| (n.as_str(), q)), warmup, steps, at_position, options, gemv, &mut |line| println!("{line}"))?;
    Ok(())
}
