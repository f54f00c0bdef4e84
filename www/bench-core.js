// The benchmark's measurements, with no DOM: run by the page (www/bench.html, on a WorkerEngine)
// and by scripts/bench.mjs in Node (on an in-process Engine). Every engine call is awaited, so
// the same code drives `Engine` (synchronous methods) and `WorkerEngine` (promises).
// Standards (README "Benchmark page"): >= 100 measured decode steps after 10 warm-ups,
// p50/p95/p99, cold start reported apart from steady state, the tokenizer timed on its own.

export const SCHEMA = "edge-llm-bench/1";

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function summarize(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const sum = s.reduce((a, b) => a + b, 0);
  return { n: s.length, mean: sum / s.length, min: s[0], p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99), max: s[s.length - 1] };
}

const now = () => performance.now();

/** Time `f` `n` times: the first call (cold caches) and the summary of all. */
async function timeCalls(n, f) {
  const ms = [];
  for (let i = 0; i < n; i++) {
    const t = now();
    await f();
    ms.push(now() - t);
  }
  return { firstMs: ms[0], ...summarize(ms) };
}

// The user message of every quick run (the page's default `?prompt=`, bench.mjs, prefill-profile.mjs).
export const PROMPT = "What is the capital of France? Answer in one sentence.";

// ~1 KB of ordinary English: a request-sized text for the tokenizer, beside the short prompt.
export const LONG_TEXT = (
  "The quick brown fox jumps over the lazy dog while the farmer watches from the porch. " +
  "Phones throttle when they get warm, so a benchmark that runs for minutes tells a different story than one that runs for seconds. " +
  "Tokenizers split text into pieces the model knows; on a slow device that step alone can cost tens of milliseconds. "
).repeat(3);

/**
 * Tokenizer cost on its own (the seed: 50-100 ms per request on devices): encode the prompt and
 * LONG_TEXT, decode the generated ids. Through a Worker each call is a message round trip, so a
 * no-op call (`noop`, default `engine.version()`) is timed as well: its p50 is the messaging
 * share of every row.
 */
export async function tokenizerTimes(engine, prompt, ids, { n = 20, noop = () => engine.version() } = {}) {
  const roundTrip = await timeCalls(n, noop);
  const encodePrompt = await timeCalls(n, () => engine.tokenize(prompt));
  const encodeLong = await timeCalls(n, () => engine.tokenize(LONG_TEXT));
  const longTokens = (await engine.tokenize(LONG_TEXT)).length;
  const decode = await timeCalls(n, () => engine.detokenize(ids));
  return { calls: n, roundTrip, encodePrompt, encodeLong, longChars: LONG_TEXT.length, longTokens, decode, decodeTokens: ids.length };
}

/**
 * Quick run: prefill + first token, `warmup` decode steps discarded, `measured` timed one by one.
 * `onToken(i, ms)` sees every step (for a live plot). Latencies are measured where this code
 * runs: through a Worker they include one message round trip per token (tokenizer.roundTrip).
 * With `calibration` (see there) one of its passes is timed before every measured step, so both
 * sample the same stretch of time; the result's `calibration` summarizes them.
 */
export async function quickRun(engine, { prompt, warmup = 10, measured = 100, onToken, calibration } = {}) {
  const promptTokens = (await engine.tokenize(prompt)).length;
  // reusePrefix off: prefill covers the whole prompt whatever the engine cached before.
  const t0 = now();
  const gen = await engine.startGeneration(prompt, { maxTokens: warmup + measured + 1, ignoreEos: true, reusePrefix: false });
  const first = await gen.step();
  const ttftMs = now() - t0;
  const ids = first ? [first.tokenId] : [];
  const latencies = [];
  const calMs = [];
  const at = []; // ms since t0 at the end of each measured step
  for (let i = 0; i < warmup + measured; i++) {
    if (calibration && i >= warmup) calMs.push(calibration.pass());
    const t = now();
    const tok = await gen.step();
    if (tok === undefined) break;
    const ms = now() - t;
    ids.push(tok.tokenId);
    onToken?.(i, ms, i >= warmup);
    if (i >= warmup) {
      latencies.push(ms);
      at.push(now() - t0);
    }
  }
  await gen.free();
  // The engine's own timings (inside the worker, no messaging): a cross-check of the above.
  const stats = await engine.stats();
  const lat = summarize(latencies);
  return {
    warmup,
    measured: latencies.length,
    promptTokens,
    ttftMs,
    prefillTokPerS: (promptTokens / stats.prefillMs) * 1000,
    decodeTokPerS: (latencies.length / latencies.reduce((a, b) => a + b, 0)) * 1000,
    latency: lat,
    latencies,
    at,
    ids,
    engine: stats,
    ...(calibration ? { calibration: { workload: calibration.workload, ...summarize(calMs) } } : {}),
  };
}

/**
 * Sustained run: after a `warmup`-token generation (discarded), back-to-back generations for
 * `minutes`, generated tokens per second of wall time (prefill included) in windows of `windowS`. Burst = the first 10 % of the run (at least
 * one window), sustained = the last 30 %; their ratio shows thermal throttling (30-50 % on
 * phones). `onWindow(w)` sees each window as it closes; `signal` stops early; `clock` (ms) is
 * `performance.now` unless a test passes its own.
 */
export async function sustainedRun(engine, { prompt, minutes = 5, windowS, maxContext = 2048, warmup = 10, onWindow, signal, clock = now } = {}) {
  const totalMs = minutes * 60_000;
  windowS ??= Math.max(2, Math.min(30, (minutes * 60) / 30));
  const promptTokens = (await engine.tokenize(prompt)).length;
  const perGen = Math.max(16, Math.min(256, maxContext - promptTokens - 8));
  // Warm-up (discarded, as in the quick run): the first steps after load run colder code paths.
  const warm = await engine.startGeneration(prompt, { maxTokens: warmup, ignoreEos: true, reusePrefix: false });
  for (let i = 0; i < warmup && (await warm.step()) !== undefined; i++);
  await warm.free();
  const windows = [];
  const latencies = [];
  let tokens = 0;
  let winStart = clock();
  let winTokens = 0;
  let winLat = [];
  const t0 = clock();
  const close = (t) => {
    const w = { t: (t - t0) / 1000, durS: (t - winStart) / 1000, tokPerS: (winTokens / (t - winStart)) * 1000, p50: summarize(winLat).p50, tokens: winTokens };
    windows.push(w);
    onWindow?.(w);
    winStart = t;
    winTokens = 0;
    winLat = [];
  };
  let generations = 0;
  outer: while (clock() - t0 < totalMs) {
    const gen = await engine.startGeneration(prompt, { maxTokens: perGen, ignoreEos: true, reusePrefix: false });
    generations++;
    for (let i = 0; ; i++) {
      if (signal?.aborted || clock() - t0 >= totalMs) {
        await gen.free();
        break outer;
      }
      const t = clock();
      const tok = await gen.step();
      if (tok === undefined) break;
      const end = clock();
      tokens++;
      winTokens++;
      if (i > 0) {
        // Decode steps only: the first step of each generation is its prefill.
        latencies.push(end - t);
        winLat.push(end - t);
      }
      if (end - winStart >= windowS * 1000) close(end);
    }
    await gen.free();
  }
  const end = clock();
  // A trailing window shorter than half a window is too short to be a rate: dropped.
  if (winTokens > 0 && end - winStart >= windowS * 500) close(end);
  const runS = (end - t0) / 1000;
  const rate = (ws) => ws.reduce((a, w) => a + w.tokens, 0) / ws.reduce((a, w) => a + w.durS, 0);
  const burstWins = windows.filter((w) => w.t <= Math.max(runS * 0.1, windows[0]?.t ?? 0));
  const sustWins = windows.filter((w) => w.t > runS * 0.7);
  const burst = burstWins.length ? rate(burstWins) : NaN;
  const sustained = sustWins.length ? rate(sustWins) : NaN;
  return {
    minutes,
    windowS,
    runS,
    generations,
    tokens,
    tokPerS: (tokens / (end - t0)) * 1000,
    burstTokPerS: burst,
    sustainedTokPerS: sustained,
    sustainedOverBurst: sustained / burst,
    windows,
    latency: summarize(latencies),
    latencies,
  };
}

/**
 * A fixed CPU workload, the CI gate's yardstick: a float32 matrix-vector product over 64 MB,
 * memory-bound and about as long as a decode step of a 135M model, so both meet a busy
 * machine's preemptions alike. quickRun's `calibration` option times one pass before every
 * measured step, in the same thread, and the gate divides the decode p95 by the passes' p95: a
 * machine slowed down by other jobs slows both and the ratio holds. Make it once and reuse it
 * (its 64 MB, allocated again per run, would bring GC into the timings).
 */
export function calibration({ rows = 4096, cols = 4096 } = {}) {
  const m = new Float32Array(rows * cols);
  const v = new Float32Array(cols);
  const out = new Float32Array(rows);
  for (let i = 0; i < m.length; i++) m[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  for (let i = 0; i < cols; i++) v[i] = (i % 7) / 7;
  // One row per call: called 4096 times a pass, the JIT optimizes it within the warm-up, so
  // every timed pass runs the same machine code (a whole-matrix loop tiers up at random later).
  const dot = (base) => {
    let acc = 0;
    for (let c = 0; c < cols; c++) acc += m[base + c] * v[c];
    return acc;
  };
  const pass = () => {
    const t = now();
    for (let r = 0; r < rows; r++) out[r] = dot(r * cols);
    return now() - t;
  };
  for (let i = 0; i < 3; i++) pass(); // warm-up: JIT tiers, caches
  return { workload: `f32 matvec ${rows}x${cols}`, pass };
}

/**
 * Cold start split from the load timeline (ms since the load started): `init` (the wasm module
 * answered ready: worker start, .wasm fetch, compile, instantiate, threads), `manifest` (manifest
 * event), `filesDone` (last file verified and stored), `ready` (engine built), `loaded` (the load
 * call resolved), `firstToken` (ms of the first generation's first token, after `loaded`).
 * Parts that could not be observed are `null` with a note, never guessed.
 */
export function coldStartParts(t, { manifestSource = "network", fromCache = 0, fromNetwork = 0, engineLoadMs } = {}) {
  const d = (a, b) => (t[a] !== undefined && t[b] !== undefined ? t[b] - t[a] : null);
  const shards = fromNetwork === 0 && fromCache > 0 ? "cache read + verify" : fromCache === 0 ? "download + verify + store" : "download / cache read + verify";
  return [
    { name: "wasm fetch + compile + instantiate", ms: t.init ?? null, note: t.init === undefined ? "not observable here" : "module start included" },
    { name: "manifest", ms: d("init", "manifest"), note: `from ${manifestSource}` },
    { name: `files: ${shards}`, ms: d("manifest", "filesDone"), note: `${fromCache} from cache, ${fromNetwork} from network; each hashed as it arrives` },
    { name: "verification alone", ms: null, note: "not exposed: SHA-256 runs inside the load, interleaved with reads" },
    { name: "graph + plan build", ms: d("filesDone", "ready"), note: "ONNX graph, tract plan, kernels, tokenizer, warm-up pass (warmUp)" },
    { name: "engine handed over", ms: d("ready", "loaded"), note: "" },
    { name: "Engine.load (engine's clock)", ms: engineLoadMs ?? null, note: "manifest + files + build" },
    { name: "first token (first generation)", ms: t.firstToken ?? null, note: "prefill + one step, right after load" },
    { name: "total: start to first token", ms: t.loaded !== undefined && t.firstToken !== undefined ? t.loaded + t.firstToken : null, note: "" },
  ];
}

/** The result as rows `{ section, name, value, unit, note }`: the page's table, the CSV, the CLI. */
export function metricRows(r) {
  const rows = [];
  const add = (section, name, value, unit = "", note = "") => rows.push({ section, name, value: value ?? null, unit, note });
  const e = r.engine ?? {};
  add("run", "label", r.label);
  add("run", "started", r.startedAt);
  add("run", "runtime", r.runtime);
  add("model", "model", r.config?.model);
  add("model", "model id", e.modelId ? `${e.modelId} ${e.modelVersion ?? ""}`.trim() : null);
  add("model", "model size", e.modelBytes, "B");
  add("engine", "backend", e.backend, "", r.config?.backend && r.config.backend !== "auto" ? `asked: ${r.config.backend}` : "");
  add("engine", "wasm build", e.simd ? `${e.variant}, ${e.simd === "relaxed" ? "relaxed SIMD" : "SIMD128"}` : e.variant);
  add("engine", "threads", e.threads, "", r.config?.threads ? `asked: ${r.config.threads}` : "");
  add("engine", "edge-llm version", e.version);
  for (const p of r.coldStart ?? []) add("cold start", p.name, p.ms, "ms", p.note);
  const q = r.quick;
  if (q) {
    add("quick", "decode steps measured", q.measured, "", `after ${q.warmup} warm-ups`);
    add("quick", "prompt tokens", q.promptTokens);
    add("quick", "time to first token", q.ttftMs, "ms", "warm engine, prompt not reused");
    add("quick", "prefill", q.prefillTokPerS, "tok/s", "engine's prefill time");
    add("quick", "decode", q.decodeTokPerS, "tok/s", "per-step times below");
    add("quick", "decode (engine's own clock)", q.engine?.decodeTokensPerS, "tok/s", "no messaging");
    add("quick", "token latency p50", q.latency.p50, "ms");
    add("quick", "token latency p95", q.latency.p95, "ms");
    add("quick", "token latency p99", q.latency.p99, "ms");
    add("quick", "token latency max", q.latency.max, "ms");
  }
  const t = r.tokenizer;
  if (t) {
    add("tokenizer", "call round trip (no-op) p50", t.roundTrip.p50, "ms", "messaging share of each row below");
    add("tokenizer", "encode prompt p50", t.encodePrompt.p50, "ms", `first call ${fmt(t.encodePrompt.firstMs)} ms`);
    add("tokenizer", `encode ${t.longChars} chars p50`, t.encodeLong.p50, "ms", `${t.longTokens} tokens; first ${fmt(t.encodeLong.firstMs)} ms`);
    add("tokenizer", `decode ${t.decodeTokens} tokens p50`, t.decode.p50, "ms");
  }
  const s = r.sustained;
  if (s) {
    add("sustained", "duration", s.runS, "s", `${s.generations} generations, ${s.tokens} tokens`);
    add("sustained", "throughput", s.tokPerS, "tok/s", "wall time, prefill included");
    add("sustained", "burst (first 10 %)", s.burstTokPerS, "tok/s");
    add("sustained", "sustained (last 30 %)", s.sustainedTokPerS, "tok/s");
    add("sustained", "sustained / burst", s.sustainedOverBurst, "", "< 0.7: throttling");
    add("sustained", "token latency p50 / p95 / p99", s.latency.n ? `${fmt(s.latency.p50)} / ${fmt(s.latency.p95)} / ${fmt(s.latency.p99)}` : null, "ms");
  }
  const m = r.memory ?? {};
  add("memory", "wasm memory (peak)", m.wasmBytes, "B", "linear memory only grows");
  add("memory", "JS heap used", m.jsHeapBytes ?? null, "B", m.jsHeapNote ?? "");
  add("memory", "page memory (UA)", m.uaBytes ?? null, "B", m.uaNote ?? "");
  add("memory", "peak RSS", m.peakRssBytes ?? null, "B", m.peakRssNote ?? "not visible to a web page");
  add("memory", "GPU buffers", m.gpuBytes ?? null, "B", m.gpuNote ?? "");
  if (r.responsiveness) {
    const x = r.responsiveness;
    add("main thread", "timer ticks during runs", x.ticks, "", `every ${x.intervalMs} ms asked`);
    add("main thread", "longest gap", x.maxGapMs, "ms", "a frozen page shows seconds");
    if (x.hiddenMs !== undefined) add("main thread", "page hidden during the run", x.hiddenMs, "ms", x.hiddenMs > 0 ? "backgrounded: throttled, run again in front" : "");
  }
  if (r.calibration) add("calibration", `${r.calibration.workload} p50 / p95`, `${fmt(r.calibration.p50)} / ${fmt(r.calibration.p95)}`, "ms", "the CI gate's yardstick");
  const dv = r.device ?? {};
  for (const [k, v] of Object.entries(dv)) add("device", k, v);
  const b = r.battery ?? {};
  add("battery", "level", b.level !== undefined ? Math.round(b.level * 100) : null, "%", b.note ?? "repeat at 100 / 50 / 20 %");
  add("battery", "charging", b.charging ?? null);
  return rows;
}

export function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  // Digits grouped by hand, not `toLocaleString`: Intl's first use maps ICU's locale data into
  // the page's renderer (2.4 MB more resident in headless Chromium 156, in the process-tree
  // memory scripts/bench.mjs measures while the engine runs: a cost of this page, not of edge-llm).
  if (Number.isInteger(v)) return String(v).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
}

const csvCell = (v) => {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

/** CSV: the metric rows, then every measured token latency as `latency,<i>,<ms>,ms`. */
export function toCSV(r) {
  const lines = ["section,name,value,unit,note"];
  for (const x of metricRows(r)) lines.push([x.section, x.name, x.value, x.unit, x.note].map(csvCell).join(","));
  (r.quick?.latencies ?? []).forEach((ms, i) => lines.push(["quick latency", i, ms, "ms", ""].join(",")));
  for (const w of r.sustained?.windows ?? []) lines.push(["sustained window", w.t, w.tokPerS, "tok/s", ""].join(","));
  return lines.join("\n") + "\n";
}

/** Fixed-width text table for terminals. */
export function textTable(r) {
  const rows = metricRows(r).filter((x) => x.value !== null || x.note);
  const w = Math.max(...rows.map((x) => x.name.length));
  let section = "";
  const out = [];
  for (const x of rows) {
    if (x.section !== section) {
      section = x.section;
      out.push(`${section}:`);
    }
    const v = `${fmt(x.value)}${x.unit && x.value !== null ? " " + x.unit : ""}`;
    out.push(`  ${x.name.padEnd(w)}  ${v.padStart(14)}${x.note ? "   " + x.note : ""}`);
  }
  return out.join("\n");
}
