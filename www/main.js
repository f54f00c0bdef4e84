// Demo + benchmark page. Query parameters: model=<folder under www/> (default models/default),
// prompt=<text>, auto=1 (generate, then benchmark, without clicks; used by scripts/demo.mjs),
// threads=<n> (CPU threads; default cores - 1: the threaded build where cross-origin isolated),
// build=auto|threads|single (which wasm build; see pkg/auto.js).
import { loadEdgeLlm } from "../pkg/auto.js";
import { benchDecode } from "./bench.js";

const params = new URLSearchParams(location.search);
const modelDir = params.get("model") ?? "models/default";
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

async function load() {
  const t0 = performance.now();
  const loaded = await loadEdgeLlm({
    threads: params.has("threads") ? Number(params.get("threads")) : undefined,
    build: params.get("build") ?? "auto",
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
  });
  const gpu = await gpuInfo().catch(() => undefined);
  facts.webgpuAdapter = gpu ? `${gpu.name || "unnamed"} (${gpu.backend}, ${gpu.deviceType})` : "none";
  $("status").textContent = `ready: ${manifest.model_id}, ${(manifest.total_bytes / 1e6).toFixed(1)} MB, loaded in ${facts.coldLoadMs.toFixed(0)} ms`;
  for (const b of ["run", "bench"]) $(b).disabled = false;
}

async function generate() {
  $("out").textContent = "";
  abort = new AbortController();
  $("stop").disabled = false;
  const t0 = performance.now();
  let first;
  let n = 0;
  const messages = [{ role: "user", content: $("prompt").value }];
  try {
    for await (const tok of engine.chat(messages, { maxTokens: 96 }, abort.signal)) {
      first ??= performance.now();
      n++;
      $("out").textContent += tok.text;
      if (tok.text) report("TOKEN", tok.text);
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  } finally {
    $("stop").disabled = true;
  }
  facts.timeToFirstTokenMs = first - t0;
  facts.generatedTokens = n;
  report("ANSWER", $("out").textContent);
}

function benchmark() {
  const prompt = engine.applyChatTemplate([{ role: "user", content: $("prompt").value }]);
  const r = benchDecode(engine, prompt);
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
