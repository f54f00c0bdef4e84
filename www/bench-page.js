// The benchmark page (www/bench.html). The model loads with `Engine.load` (IndexedDB cache,
// progress events) inside the package's Worker proxy, threaded where the page is cross-origin
// isolated, so runs never block this thread. Query parameters (all optional):
//   model=<manifest URL or folder>  (default models/default/manifest.json: `scripts/demo.sh` packs SmolLM2 int4 there)
//   backend=auto|wasm|webgpu  threads=<n>  build=auto|threads|single  measured=<steps, >= 100>
//   minutes=<sustained run>  label=<text>  prompt=<text>  calibrate=1 (time the CI gate's yardstick)
//   repeat=<n> (quick runs with auto)  warmUp=0 (Engine.load without its warm-up pass)
//   auto=quick|sustained|all (load and run without clicks; scripts/bench.mjs)
//   report=<path> (POST every report, and the whole result, to this same-origin path)
//   hold=<path> (with auto: POST it and wait for the answer before loading: scripts/bench.mjs
//   samples the browser's memory with the page open and the engine not yet started)
// The page reports to scripts/bench.mjs through `EDGE_LLM_BENCH_<KIND> <json>` console lines
// (and `report=` POSTs, for a browser with no DevTools attached) and leaves the whole result in
// `window.benchResult`.
import { WorkerEngine } from "../pkg/worker.js";
import { defaultThreads, threadsAvailable } from "../pkg/auto.js";
import { SCHEMA, PROMPT as DEFAULT_PROMPT, quickRun, sustainedRun, tokenizerTimes, coldStartParts, metricRows, toCSV, fmt, calibration } from "./bench-core.js";
import { linePlot, histogram } from "./bench-plot.js";
import { deviceFacts, battery, memory, watchResponsiveness } from "./bench-device.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const reportTo = params.get("report");
const report = (kind, value) => {
  const json = JSON.stringify(value ?? null);
  console.log(`EDGE_LLM_BENCH_${kind} ${json}`);
  if (reportTo) fetch(reportTo, { method: "POST", body: `${kind} ${json}` }).catch(() => {});
};
if (reportTo) {
  // No DevTools to see an uncaught error: say it the way `fail` does.
  addEventListener("error", (ev) => report("ERROR", { name: ev.error?.name ?? "Error", message: ev.message }));
  addEventListener("unhandledrejection", (ev) => report("ERROR", { name: ev.reason?.name ?? "Error", message: String(ev.reason?.message ?? ev.reason) }));
}
const PROMPT = params.get("prompt") ?? DEFAULT_PROMPT;
// The IndexedDB database of the package's shard cache (js/store.js DB_NAME).
const CACHE_DB = "edge-llm";

$("model").value = params.get("model") ?? "models/default/manifest.json";
$("backend").value = params.get("backend") ?? "auto";
$("threads").value = params.get("threads") ?? defaultThreads();
$("measured").value = params.get("measured") ?? 100;
$("minutes").value = params.get("minutes") ?? 5;
$("label").value = params.get("label") ?? "";

let engine;
let abort;
let result; // the current result (the exported JSON)
let maxContext = 256;
let calib; // the calibration workload (calibrate=1), made once: see bench-core.js

function manifestUrl(v) {
  const s = v.trim();
  return new URL(/\.json(\?|#|$)/.test(s) ? s : s.replace(/\/?$/, "/manifest.json"), location.href).href;
}

function status(text, cls = "") {
  $("status").textContent = text;
  $("status").className = cls;
}

function busy(on) {
  const hasRun = Boolean(result?.quick || result?.sustained);
  $("load").disabled = $("clear").disabled = on;
  $("quick").disabled = $("sustained").disabled = on || !engine;
  $("json").disabled = $("csv").disabled = on || !hasRun;
  $("stop").disabled = !on;
}

function capabilities() {
  const isolated = threadsAvailable();
  const parts = [
    `wasm: available`,
    `webgpu: ${navigator.gpu ? "WebGPU in this browser; the package says at load whether its backend can run" : "no WebGPU in this browser"}`,
    isolated ? `threads: cross-origin isolated, up to ${navigator.hardwareConcurrency} cores` : `threads: 1 only — the page is not cross-origin isolated (${isSecureContext ? "COOP/COEP missing; the service worker adds them on the next load" : "not a secure context: open it over HTTPS or localhost"})`,
  ];
  $("caps").textContent = parts.join(" · ");
}

async function showBattery() {
  const b = await battery();
  const el = $("battery");
  el.textContent = b.level === undefined ? `Battery: ${b.note}.` : `Battery: ${Math.round(b.level * 100)} %${b.charging ? ", charging" : ""} — for throttling numbers repeat the sustained run at 100 / 50 / 20 % and put the level in the label.`;
  return b;
}

function newResult(base) {
  return {
    schema: SCHEMA,
    label: $("label").value || undefined,
    startedAt: new Date().toISOString(),
    runtime: `browser, engine in a Worker (${navigator.userAgent.match(/(Chrome|Chromium|Firefox|Safari)\/[\d.]+/)?.[0] ?? "unknown"})`,
    ...base,
  };
}

async function load() {
  await engine?.dispose();
  engine = undefined;
  result = undefined;
  busy(true);
  const url = manifestUrl($("model").value);
  const backend = $("backend").value;
  const threads = Math.max(1, Number($("threads").value) || 1);
  const t = {};
  const warnings = [];
  let manifestSource = "network";
  let ready = { fromCache: 0, fromNetwork: 0 };
  const bar = $("bar");
  bar.hidden = false;
  bar.value = 0;
  status(`loading ${url} …`);
  report("LOADING", { url, backend, threads });
  const t0 = performance.now();
  // Our own Worker, so its first answer (the wasm module ready) can be timed apart from the load.
  const worker = new Worker(new URL("../pkg/worker-entry.js", import.meta.url), { type: "module" });
  worker.addEventListener("message", (ev) => {
    if (t.init === undefined && ev.data && "ok" in ev.data) t.init = performance.now() - t0;
  });
  const onProgress = (e) => {
    const ms = performance.now() - t0;
    if (e.type === "manifest") {
      t.manifest = ms;
      manifestSource = e.source;
      status(`loading ${e.modelId} ${e.modelVersion}: ${(e.total / 1e6).toFixed(1)} MB in ${e.files} files …`);
    } else if (e.type === "progress") {
      t.filesDone = ms;
      bar.value = e.loaded / e.total;
      status(`${e.source === "cache" ? "reading from cache" : "downloading"} ${e.file}: ${(e.loaded / 1e6).toFixed(1)} / ${(e.total / 1e6).toFixed(1)} MB`);
    } else if (e.type === "ready") {
      t.ready = ms;
      ready = e;
      bar.value = 1;
    } else if (e.type === "warning" || e.type === "retry") {
      warnings.push(e.type === "retry" ? `retry ${e.file}: ${e.reason}` : `${e.name}: ${e.message}`);
    }
  };
  try {
    engine = await WorkerEngine.load(url, { backend, cache: params.get("cache") ?? "indexeddb", warmUp: params.get("warmUp") !== "0", onProgress }, { worker, threads, build: params.get("build") ?? "auto", simd: params.get("simd") ?? "auto" });
  } catch (e) {
    worker.terminate();
    bar.hidden = true;
    const why = e.name === "UnsupportedBackendError" ? `backend "${backend}" is not available in this package: ${e.message}` : `${e.name}: ${e.message}`;
    status(`load failed — ${why}`, "err");
    report("ERROR", { name: e.name, message: e.message, backend });
    busy(false);
    return false;
  }
  t.loaded = performance.now() - t0;
  // Before the first request: scripts/bench.mjs samples the process tree's memory less often
  // from here on (its sampling would take CPU from the engine's threads).
  report("READY", { loadedMs: t.loaded });
  // The first request after load is part of the cold start, measured apart from steady state.
  const prompt = await engine.applyChatTemplate([{ role: "user", content: PROMPT }]);
  const t1 = performance.now();
  const g = await engine.startGeneration(prompt, { maxTokens: 1, ignoreEos: true, reusePrefix: false });
  await g.step();
  t.firstToken = performance.now() - t1;
  await g.free();
  const stats = await engine.stats();
  try {
    const m = await (await fetch(url)).json();
    maxContext = m.config?.architecture?.max_position_embeddings ?? maxContext;
  } catch {
    // Offline with a cached model: keep the small default context for the sustained run.
  }
  const gpu = await engine.gpuInfo().catch(() => undefined);
  result = newResult({
    config: { model: url, backend, threads, build: params.get("build") ?? "auto", simd: params.get("simd") ?? "auto", prompt: PROMPT },
    engine: {
      backend: stats.backend,
      variant: engine.variant,
      simd: engine.simd,
      threads: engine.threads,
      modelId: engine.modelId,
      modelVersion: engine.modelVersion,
      modelBytes: stats.modelBytes,
      kvCache: stats.kvCache,
      version: await engine.version(),
    },
    load: { manifestSource, fromCache: ready.fromCache, fromNetwork: ready.fromNetwork, warnings, timeline: t },
    coldStart: coldStartParts(t, { manifestSource, fromCache: ready.fromCache, fromNetwork: ready.fromNetwork, engineLoadMs: stats.loadMs }),
    device: await deviceFacts(gpu),
    battery: await showBattery(),
    memory: { wasmBytes: stats.wasmMemoryBytes },
  });
  const threadNote =
    engine.threads < threads ? ` — ${engine.threads} of ${threads} threads: ${threadsAvailable() ? "this package has no threaded build (scripts/build-pkg-threads.sh)" : "the page is not cross-origin isolated"}` : "";
  status(
    `ready: ${engine.modelId} on ${stats.backend}, ${engine.variant} build (${engine.simd === "relaxed" ? "relaxed SIMD" : "SIMD128"}), ${engine.threads} thread(s); ${(stats.modelBytes / 1e6).toFixed(1)} MB, ` +
      `${ready.fromCache} file(s) from cache, ${ready.fromNetwork} from network; first token ${fmt(t.loaded + t.firstToken)} ms after start${threadNote}` +
      (warnings.length ? ` — ${warnings.join("; ")}` : ""),
    threadNote ? "warn" : "",
  );
  bar.hidden = true;
  render();
  report("LOADED", { ...result.load, coldStart: result.coldStart, engine: result.engine });
  busy(false);
  return true;
}

// Live plots redraw at most once a frame; drawing never runs between a token's send and answer.
let drawPending = false;
function scheduleDraw(f) {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    f();
  });
}

async function runQuick({ last = true } = {}) {
  busy(true);
  const stopWatch = watchResponsiveness();
  try {
    const measured = Math.max(100, Number($("measured").value) || 100);
    const prompt = await engine.applyChatTemplate([{ role: "user", content: PROMPT }]);
    if (params.get("calibrate") === "1") calib ??= calibration();
    // No DOM work while steps are timed: a redraw on this thread delays the worker's answers
    // and would show up as token latency. The plots are drawn when the run ends.
    status(`quick run: 10 warm-up + ${measured} measured steps …`);
    const q = await quickRun(engine, { prompt, warmup: 10, measured, calibration: calib });
    const tk = await tokenizerTimes(engine, prompt, q.ids);
    const { ids, calibration: cal, ...quick } = q;
    result.quick = quick;
    result.tokenizer = tk;
    if (cal) result.calibration = cal;
    (result.repeats ??= []).push({ latency: quick.latency, decodeTokPerS: quick.decodeTokPerS, calibration: result.calibration });
    await finishRun(stopWatch, { last });
    status(`quick run done: ${fmt(q.decodeTokPerS)} tok/s decode, p50 / p95 / p99 ${fmt(q.latency.p50)} / ${fmt(q.latency.p95)} / ${fmt(q.latency.p99)} ms`);
    report("QUICK", { decodeTokPerS: q.decodeTokPerS, latency: q.latency, ttftMs: q.ttftMs });
  } catch (e) {
    fail(e);
    stopWatch();
  } finally {
    busy(false);
  }
}

async function runSustained() {
  busy(true);
  abort = new AbortController();
  const stopWatch = watchResponsiveness();
  try {
    const minutes = Math.max(0.05, Number($("minutes").value) || 5);
    const prompt = await engine.applyChatTemplate([{ role: "user", content: PROMPT }]);
    const wins = [];
    $("throughputBox").hidden = false;
    status(`sustained run: ${minutes} min of continuous generation … (Stop ends it early)`);
    const s = await sustainedRun(engine, {
      prompt,
      minutes,
      maxContext,
      signal: abort.signal,
      onWindow: (w) => {
        wins.push(w);
        status(`sustained run: ${fmt(w.t)} s, ${fmt(w.tokPerS)} tok/s now`);
        scheduleDraw(() => linePlot($("plotThroughput"), [{ xs: wins.map((x) => x.t), ys: wins.map((x) => x.tokPerS) }], { xLabel: "s", yLabel: "tok/s" }));
      },
    });
    result.sustained = s;
    await finishRun(stopWatch);
    status(`sustained run done: ${fmt(s.tokPerS)} tok/s over ${fmt(s.runS)} s; sustained / burst ${fmt(s.sustainedOverBurst)}`);
    report("SUSTAINED", { tokPerS: s.tokPerS, sustainedOverBurst: s.sustainedOverBurst, windows: s.windows.length });
  } catch (e) {
    fail(e);
    stopWatch();
  } finally {
    busy(false);
  }
}

async function finishRun(stopWatch, { last = true } = {}) {
  result.responsiveness = stopWatch();
  result.startedAt = new Date().toISOString();
  result.label = $("label").value || undefined;
  const stats = await engine.stats();
  // Memory after the last of repeated runs only: the UA-specific measurement can take seconds.
  if (last) result.memory = await memory(stats.wasmMemoryBytes);
  result.battery = await showBattery();
  window.benchResult = result;
  render();
}

function fail(e) {
  status(`error: ${e.name}: ${e.message}`, "err");
  report("ERROR", { name: e.name, message: e.message });
}

function renderTable(tbody, columns) {
  // columns: [{ title, rows }] — rows joined by section + name, in the first column's order.
  tbody.textContent = "";
  const keys = [];
  const seen = new Set();
  for (const c of columns) {
    for (const r of c.rows) {
      const k = `${r.section}\u0000${r.name}`;
      if (!seen.has(k)) {
        seen.add(k);
        keys.push(r);
      }
    }
  }
  const maps = columns.map((c) => new Map(c.rows.map((r) => [`${r.section}\u0000${r.name}`, r])));
  let section = "";
  if (columns.length > 1) {
    const tr = tbody.insertRow();
    tr.className = "sec";
    for (const title of ["", ...columns.map((c) => c.title), columns.length === 2 ? "B / A" : null].filter((x) => x !== null)) {
      const th = document.createElement("th");
      th.textContent = title;
      tr.append(th);
    }
  }
  for (const k of keys) {
    if (k.section !== section) {
      section = k.section;
      const tr = tbody.insertRow();
      tr.className = "sec";
      const th = document.createElement("th");
      th.colSpan = columns.length + (columns.length === 2 ? 2 : 1);
      th.textContent = section;
      tr.append(th);
    }
    const tr = tbody.insertRow();
    tr.dataset.key = `${k.section}/${k.name}`;
    const name = tr.insertCell();
    name.textContent = k.name;
    const vals = maps.map((m) => m.get(`${k.section}\u0000${k.name}`));
    for (const r of vals) {
      const td = tr.insertCell();
      td.className = typeof r?.value === "number" ? "v" : "v t";
      td.textContent = r && r.value !== null ? `${fmt(r.value)}${r.unit ? " " + r.unit : ""}` : "–";
    }
    if (columns.length === 2) {
      const [a, b] = vals.map((r) => r?.value);
      const td = tr.insertCell();
      td.className = "v";
      td.textContent = typeof a === "number" && typeof b === "number" && a !== 0 ? `${(b / a).toFixed(2)}×` : "";
    } else if (vals[0]?.note) {
      const note = document.createElement("div");
      note.className = "n";
      note.textContent = vals[0].note;
      name.append(note);
    }
  }
}

function render() {
  if (!result) return;
  renderTable($("results").tBodies[0], [{ title: "", rows: metricRows(result) }]);
  const q = result.quick;
  if (q) {
    linePlot($("plotLatency"), [{ xs: q.at.map((x) => x / 1000), ys: q.latencies }], { xLabel: "s since prefill", yLabel: "ms per token" });
  }
  const lat = [q?.latencies, result.sustained?.latencies].filter(Boolean);
  if (lat.length) histogram($("plotHist"), lat.map((v, i) => ({ values: v, label: lat.length > 1 ? (i === 0 && q ? "quick" : "sustained") : "" })), { xLabel: "ms per token" });
  const s = result.sustained;
  if (s) {
    $("throughputBox").hidden = false;
    linePlot($("plotThroughput"), [{ xs: s.windows.map((w) => w.t), ys: s.windows.map((w) => w.tokPerS) }], { xLabel: "s", yLabel: "tok/s" });
  }
}

function download(name, type, text) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function fileBase() {
  const id = (result.engine?.modelId ?? "model").replace(/[^\w.-]+/g, "-");
  return `edge-llm-bench-${id}-${result.startedAt.replace(/[:.]/g, "-")}`;
}

async function compare(files) {
  const loaded = [];
  for (const f of files) {
    try {
      const r = JSON.parse(await f.text());
      if (r.schema !== SCHEMA) throw new Error(`not an ${SCHEMA} file`);
      loaded.push({ title: r.label || f.name, r });
    } catch (e) {
      status(`${f.name}: ${e.message}`, "err");
      return;
    }
  }
  if (loaded.length === 0) return;
  $("compare").hidden = false;
  renderTable($("cmpTable").tBodies[0], loaded.map((x) => ({ title: x.title, rows: metricRows(x.r) })));
  const withLat = loaded.filter((x) => x.r.quick?.latencies?.length || x.r.sustained?.latencies?.length);
  if (withLat.length) histogram($("cmpHist"), withLat.map((x) => ({ label: x.title, values: x.r.quick?.latencies ?? x.r.sustained.latencies })), { xLabel: "ms per token" });
  const withWin = loaded.filter((x) => x.r.sustained?.windows?.length);
  if (withWin.length) linePlot($("cmpThroughput"), withWin.map((x) => ({ label: x.title, xs: x.r.sustained.windows.map((w) => w.t), ys: x.r.sustained.windows.map((w) => w.tokPerS) })), { xLabel: "s", yLabel: "tok/s" });
  report("COMPARED", loaded.map((x) => x.title));
}

$("load").onclick = () => load().catch(fail);
$("quick").onclick = () => runQuick();
$("sustained").onclick = () => runSustained();
$("stop").onclick = () => abort?.abort();
$("json").onclick = () => download(`${fileBase()}.json`, "application/json", JSON.stringify(result, null, 1));
$("csv").onclick = () => download(`${fileBase()}.csv`, "text/csv", toCSV(result));
$("files").onchange = (ev) => compare([...ev.target.files]).catch(fail);
$("clear").onclick = async () => {
  // The worker holds the cache database open: stop it first, or the delete waits forever.
  await engine?.dispose();
  engine = undefined;
  busy(false);
  await new Promise((ok) => {
    const r = indexedDB.deleteDatabase(CACHE_DB);
    r.onsuccess = r.onerror = r.onblocked = ok;
  });
  status("model cache cleared: the next load downloads every file");
  report("CLEARED", true);
};
addEventListener("resize", () => render());

capabilities();
showBattery();
const auto = params.get("auto");
if (auto) {
  (async () => {
    if (params.get("hold")) await fetch(params.get("hold"), { method: "POST" });
    if (!(await load())) return;
    // repeat=<n>: n quick runs on the loaded engine (the CI gate takes their median).
    const repeat = Math.max(1, Number(params.get("repeat") ?? 1));
    if (auto === "quick" || auto === "all") for (let i = 0; i < repeat; i++) await runQuick({ last: i === repeat - 1 });
    if (auto === "sustained" || auto === "all") await runSustained();
    window.benchResult = result;
    if (reportTo) report("RESULT", result);
    report("DONE", true);
  })().catch(fail);
}
