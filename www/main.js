// Demo + benchmark page. Query parameters: model=<folder under www/> (default models/default),
// prompt=<text>, max=<tokens per reply> (default 96), auto=1 (generate, then benchmark, without
// clicks; used by scripts/demo.mjs), threads=<n> (CPU threads; default cores - 1: the threaded
// build where cross-origin isolated), build=auto|threads|single (which wasm build; see pkg/auto.js),
// simd=auto|relaxed|simd128 (the relaxed-SIMD build where the browser has relaxed SIMD).
// The conversation survives the page: its state (KV cache, tokens, an unfinished reply) is
// saved to IndexedDB when the page is hidden or left, and restored when it loads again.
import { loadEdgeLlm } from "../pkg/auto.js";
import { benchDecode } from "./bench.js";
import { loadConversation, saveConversation, clearConversation } from "./lifecycle.js";

const params = new URLSearchParams(location.search);
const modelDir = params.get("model") ?? "models/default";
const maxTokens = Number(params.get("max") ?? 96);
const $ = (id) => document.getElementById(id);
$("prompt").value = params.get("prompt") ?? "What is the capital of France?";
// The page reports to scripts/demo.mjs through console lines with these prefixes.
const report = (kind, value) => console.log(`EDGE_LLM_${kind} ${JSON.stringify(value)}`);

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

let Engine, gpuInfo, version, wasmMemoryBytes, cpuSplitCalls;
let engine;
let abort;
const facts = {};
let stateKey;
// The chat so far; `reply` is the assistant text of the turn in progress.
let messages = [];
let reply = "";
let generating = false;

async function load() {
  const t0 = performance.now();
  const loaded = await loadEdgeLlm({
    threads: params.has("threads") ? Number(params.get("threads")) : undefined,
    build: params.get("build") ?? "auto",
    simd: params.get("simd") ?? "auto",
  });
  ({ Engine, gpuInfo, version, wasmMemoryBytes, cpuSplitCalls } = loaded.edge);
  const tWasm = performance.now();
  const manifestBytes = await fetchBytes(`${modelDir}/manifest.json`);
  const manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  const files = new Map();
  await Promise.all(manifest.files.map(async (f) => files.set(f.path, await fetchBytes(`${modelDir}/${f.path}`))));
  const tFetch = performance.now();
  engine = Engine.fromPacked(manifestBytes, files); // verifies every file's SHA-256
  const tReady = performance.now();
  Object.assign(facts, {
    edgeLlmVersion: version(),
    model: modelDir,
    modelId: `${manifest.model_id} ${manifest.model_version}`,
    quantization: manifest.quantization.method,
    modelBytes: manifest.total_bytes,
    wasmInitMs: tWasm - t0,
    fetchMs: tFetch - tWasm,
    coldLoadMs: tReady - tFetch,
    userAgent: navigator.userAgent,
    hardwareConcurrency: navigator.hardwareConcurrency,
    threads: loaded.threads,
    wasmBuild: loaded.variant,
    wasmSimd: loaded.simd,
  });
  const gpu = await gpuInfo().catch(() => undefined);
  facts.webgpuAdapter = gpu ? `${gpu.name || "unnamed"} (${gpu.backend}, ${gpu.deviceType})` : "none";
  $("status").textContent = `ready: ${manifest.model_id}, ${(manifest.total_bytes / 1e6).toFixed(1)} MB, loaded in ${facts.coldLoadMs.toFixed(0)} ms`;
  for (const b of ["run", "bench", "reset"]) $(b).disabled = false;
  stateKey = `${modelDir} ${manifest.model_sha256}`;
  await restore();
}

/** Put back the conversation saved when the page was last hidden; finish its reply if cut. */
async function restore() {
  const saved = await loadConversation(stateKey).catch(() => undefined);
  if (!saved) return;
  const t0 = performance.now();
  try {
    engine.restoreState(saved.state);
  } catch (e) {
    // A state from another build of the model, or damaged: start afresh.
    report("RESTORE_FAILED", { name: e.name, message: e.message });
    await clearConversation(stateKey);
    return;
  }
  const ms = performance.now() - t0;
  messages = saved.messages;
  reply = saved.reply;
  $("out").textContent = reply;
  const tokens = engine.stats().contextTokens;
  $("status").textContent += ` — restored the conversation (${tokens} tokens, ${(saved.state.length / 1e6).toFixed(2)} MB) in ${ms.toFixed(1)} ms`;
  report("RESTORED", { tokens, bytes: saved.state.length, ms, turns: messages.length, unfinished: saved.unfinished });
  if (saved.unfinished) {
    await stream((signal) => engine.resume(signal));
    report("RESUMED", { reply });
  }
}

/** Save the conversation; called when the page is hidden or left (the last moment it may run). */
async function persist() {
  if (!engine || !stateKey || (messages.length === 0 && !generating)) return;
  const t0 = performance.now();
  const state = engine.saveState();
  const ms = performance.now() - t0;
  const record = { state, messages: [...messages], reply, unfinished: generating };
  const tokens = engine.stats().contextTokens;
  await saveConversation(stateKey, record);
  report("SAVED", { tokens, bytes: state.length, ms, unfinished: record.unfinished });
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") persist().catch(fail);
});
window.addEventListener("pagehide", () => persist().catch(fail));

async function generate() {
  messages.push({ role: "user", content: $("prompt").value });
  reply = "";
  $("out").textContent = "";
  // The cached conversation prefix is reused: only the new turn is prefilled.
  await stream((signal) => engine.chat(messages, { maxTokens }, signal));
  const s = engine.stats();
  facts.timeToFirstTokenMs = s.timeToFirstTokenMs;
  facts.generatedTokens = s.generatedTokens;
  facts.reusedPromptTokens = s.reusedPromptTokens;
  report("TURN", { promptTokens: s.promptTokens, reusedPromptTokens: s.reusedPromptTokens, contextTokens: s.contextTokens });
  report("ANSWER", $("out").textContent);
}

/** Stream a reply into the page; the assistant turn joins `messages` when it ends. */
async function stream(start) {
  abort = new AbortController();
  $("stop").disabled = false;
  generating = true;
  try {
    for await (const tok of start(abort.signal)) {
      reply += tok.text;
      $("out").textContent += tok.text;
      if (tok.text) report("TOKEN", tok.text);
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  } finally {
    generating = false;
    $("stop").disabled = true;
  }
  messages.push({ role: "assistant", content: reply });
}

function benchmark() {
  const prompt = engine.applyChatTemplate([{ role: "user", content: $("prompt").value }]);
  // The benchmark's own generation must not replace the conversation: save it and put it back.
  let t = performance.now();
  const conversation = engine.saveState();
  const saveStateMs = performance.now() - t;
  const r = benchDecode(engine, prompt);
  t = performance.now();
  engine.restoreState(conversation);
  const restoreStateMs = performance.now() - t;
  const rows = {
    ...facts,
    promptTokens: r.promptTokens,
    tokenizeMsFirst: r.tokenizeMsFirst,
    tokenizeMsP50: r.tokenizeMsP50,
    prefillTokPerS: r.prefillTokPerS,
    decodeTokPerS: r.decodeTokPerS,
    decodeStepsMeasured: r.decodeSteps,
    tokenLatencyP50Ms: r.p50,
    tokenLatencyP95Ms: r.p95,
    tokenLatencyP99Ms: r.p99,
    wasmMemoryPeakBytes: wasmMemoryBytes(),
    stateTokens: engine.stats().contextTokens,
    stateBytes: conversation.length,
    saveStateMs,
    restoreStateMs,
    matmulsSplitAcrossThreads: cpuSplitCalls(),
  };
  const body = $("table").querySelector("tbody");
  body.textContent = "";
  for (const [k, v] of Object.entries(rows)) {
    const tr = body.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(2)) : v;
  }
  $("table").hidden = false;
  report("BENCH", rows);
}

$("run").onclick = () => generate().catch(fail);
$("stop").onclick = () => abort?.abort();
$("reset").onclick = () => {
  messages = [];
  reply = "";
  $("out").textContent = "";
  engine.clearState();
  clearConversation(stateKey).catch(fail);
};
$("bench").onclick = () => {
  try { benchmark(); } catch (e) { fail(e); }
};

function fail(e) {
  $("status").textContent = `error: ${e.name}: ${e.message}`;
  report("ERROR", { name: e.name, message: e.message });
}

load()
  .then(async () => {
    if (params.get("auto")) {
      await generate();
      benchmark();
      report("DONE", true);
    }
  })
  .catch(fail);
