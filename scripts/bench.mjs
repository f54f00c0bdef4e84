// The benchmark from a terminal: www/bench.html in headless Chromium (the page phones open:
// Engine.load with the IndexedDB cache, the engine in its Worker) and the same measurements on
// the package in Node (www/bench-core.js on an in-process Engine). Prints each result's table
// and writes its JSON.
//
//   node scripts/bench.mjs [--model DIR|URL] [--runtime chromium|node|both] [--run quick|sustained|all]
//        [--minutes N] [--threads N] [--build auto|threads|single] [--backend auto|wasm|webgpu]
//        [--label TEXT] [--out DIR] [--calibrate] [--js-flags V8FLAGS] [--stdout FILE] [--cache none|memory|indexeddb] [--warmUp 0]
//
// --model: a packed model folder on disk (served under /bench-model/) or a URL / folder under
// www/ (default www/models/default, where scripts/demo.sh packs SmolLM2 int4). The JSON files go
// to --out (default $CARGO_TARGET_DIR/bench or target/bench); the page's "Compare" loads them.
// --js-flags: V8 flags for Chromium (diagnostics, e.g. "--no-wasm-tier-up" to see what
// optimized code costs in time and memory). --stdout FILE keeps what they print, e.g.
// `--js-flags --trace-wasm-compilation-times --stdout v8.txt`: every function V8 compiles, its
// tier, time and compile memory (README, "Where issue #16 stands").
// The CI latency gate (scripts/bench-gate.mjs) runs through `benchNode` below.
import { execFileSync, spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { serve } from "./serve.mjs";
import * as core from "../www/bench-core.js";

const root = resolve(fileURLToPath(import.meta.url), "../..");

export function parseArgs(argv) {
  const o = { runtime: "both", run: "quick", model: "models/default" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const k = a.slice(2);
    if (k === "calibrate") o.calibrate = true;
    else o[k] = argv[++i];
  }
  return o;
}

/** Where the model is: a folder on disk is mounted into the server; anything else is a URL under www/. */
function modelSource(model) {
  const onDisk = resolve(model);
  if (existsSync(onDisk) && statSync(onDisk).isDirectory() && existsSync(join(onDisk, "manifest.json")) && !onDisk.startsWith(join(root, "www") + "/")) {
    return { mounts: { "/bench-model/": onDisk }, pagePath: "/bench-model/manifest.json" };
  }
  if (existsSync(onDisk) && onDisk.startsWith(join(root, "www") + "/")) return { mounts: {}, pagePath: onDisk.slice(join(root, "www").length + 1) };
  return { mounts: {}, pagePath: model };
}

/**
 * The browser's memory as the OS counts it (Linux /proc): every process of the Chromium
 * started on `profileDir` (found by its --user-data-dir) and their descendants, sampled every
 * `everyMs`. RSS sums count pages shared between the processes once per process; PSS shares
 * them out, so its sum is the tree's real footprint. `null` where /proc is not readable.
 */
export function processTreeSampler(profileDir, everyMs = 50) {
  if (!existsSync("/proc/self/smaps_rollup")) return null;
  const ids = () => readdirSync("/proc").filter((d) => /^\d+$/.test(d));
  const read = (pid, file) => {
    try {
      return readFileSync(`/proc/${pid}/${file}`, "utf8");
    } catch {
      return ""; // the process ended between listing and reading
    }
  };
  const kb = (text, key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? 0) * 1024;
  // Which Chromium process: the browser, a renderer (the page and its Workers), the GPU
  // process, or a utility service (network, storage…). Chromium rewrites its children's
  // command lines into one space-separated title.
  const kind = (cmdline) => {
    const type = /--type=([^\s\0]+)/.exec(cmdline)?.[1];
    const sub = /--utility-sub-type=([^\s\0]+)/.exec(cmdline)?.[1];
    return type ? (sub ? `${type}:${sub}` : type) : "browser";
  };
  // The tree's processes and their kinds. Finding them reads every process's stat and command
  // line, so it is redone once a second, not at every sample: the sampler shares the machine
  // with the browser it measures.
  let tree = new Map();
  const findTree = () => {
    const parent = new Map();
    const cmdlines = new Map();
    const roots = [];
    for (const pid of ids()) {
      const stat = read(pid, "stat");
      parent.set(pid, stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      cmdlines.set(pid, read(pid, "cmdline"));
      if (cmdlines.get(pid).includes(`--user-data-dir=${profileDir}\0`)) roots.push(pid);
    }
    const found = new Set(roots);
    for (let grew = true; grew; ) {
      grew = false;
      for (const [pid, ppid] of parent) if (!found.has(pid) && found.has(ppid)) (found.add(pid), (grew = true));
    }
    tree = new Map([...found].map((pid) => [pid, kind(cmdlines.get(pid))]));
  };
  // Where the renderers' resident bytes are, by mapping (their smaps, read at the baseline and
  // at the end: a few ms each): the wasm memory (the one anonymous mapping of 64 MiB and more),
  // compiled code (anonymous and executable: wasm and JS), Chromium's own binary (file-backed,
  // shared with its other processes: RSS counts it whole), other files and shared memory, and the
  // rest of the anonymous memory (V8 and Blink heaps, PartitionAlloc, the module's bytes V8 keeps).
  const partOf = (size, perm, name) => {
    if (name === "" || name.startsWith("[anon")) return perm.includes("x") ? "code" : size >= 64 * 2 ** 20 ? "wasmMemory" : "otherAnonymous";
    return name.endsWith("/chromium") ? "chromiumBinary" : "filesAndShared";
  };
  const rendererParts = () => {
    const parts = { wasmMemory: 0, code: 0, chromiumBinary: 0, filesAndShared: 0, otherAnonymous: 0 };
    for (const [pid, k] of tree) {
      if (k !== "renderer") continue;
      let part;
      for (const line of read(pid, "smaps").split("\n")) {
        const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
        if (m) part = partOf(parseInt(m[2], 16) - parseInt(m[1], 16), m[3], m[4]);
        else if (part && line.startsWith("Rss:")) parts[part] += kb(line, "Rss");
      }
    }
    return parts;
  };
  let partsBefore;
  let found = -Infinity;
  const sample = (fresh = false) => {
    if (fresh || performance.now() - found >= 1000) (findTree(), (found = performance.now()));
    let rss = 0, pss = 0;
    const byKind = {};
    for (const [pid, k] of tree) {
      const r = read(pid, "smaps_rollup");
      const p = kb(r, "Pss");
      rss += kb(r, "Rss");
      pss += p;
      byKind[k] = (byKind[k] ?? 0) + p;
    }
    return { processes: tree.size, rss, pss, byKind };
  };
  let baseline = null, peak = { rss: 0, pss: 0, processes: 0 }, timer = null;
  const series = [];
  // RSS growth of every sample from the page's READY on (the engine loaded), for the level the
  // requests run at, apart from the peak (a transient: V8 optimizing hot functions as they run
  // allocates for tens of ms).
  let readyAt;
  const afterReady = [];
  const t0 = performance.now();
  const take = () => {
    const s = sample();
    const at = Math.round(performance.now() - t0);
    series.push([at, Math.round((s.pss - baseline.pss) / 1e6), Math.round(((s.byKind.renderer ?? 0) - (baseline.byKind.renderer ?? 0)) / 1e6)]);
    if (readyAt !== undefined) afterReady.push(s.rss - baseline.rss);
    if (s.rss > peak.rss) peak = { ...peak, rss: s.rss, processes: s.processes, rssAtMs: at };
    if (s.pss > peak.pss) peak = { ...peak, pss: s.pss, byKind: s.byKind };
    return s;
  };
  return {
    /**
     * The baseline: the tree sampled every 250 ms until two samples in a row agree within
     * 1 MB (at most 5 s): a browser just started is still starting processes (its spare
     * renderer) and those are not the page's.
     */
    async settle() {
      let last = sample(true);
      for (let i = 0; i < 20; i++) {
        await new Promise((ok) => setTimeout(ok, 250));
        const now = sample(true);
        const still = Math.abs(now.pss - last.pss) < 1e6 && now.processes === last.processes;
        last = now;
        if (still) break;
      }
      baseline = last;
      partsBefore = rendererParts();
    },
    start() {
      timer = setInterval(take, everyMs);
    },
    /**
     * Sample every `ms` from now on. A sample reads each Chromium process's smaps_rollup, about
     * 10 ms of kernel time for the whole tree on the 2-core Xeon: every 50 ms that is a fifth of
     * a core, taken from the engine's second thread on a 2-core machine (2-thread decode read
     * 29 tok/s with it, 42 without). benchChromium slows it to 500 ms once the page reports
     * READY (the engine loaded, before the first request): load is where the transient peaks
     * are (shard buffers, compilation); what the requests add stays allocated.
     */
    pace(ms) {
      readyAt ??= Math.round(performance.now() - t0);
      clearInterval(timer);
      timer = setInterval(take, ms);
    },
    stop() {
      clearInterval(timer);
      take();
      const pssGrowthByKind = Object.fromEntries(Object.entries(peak.byKind ?? {}).map(([k, v]) => [k, v - (baseline.byKind[k] ?? 0)]));
      const partsAfter = rendererParts();
      // RSS growth of the renderers at the end of the run (not at the peak), by part.
      const rendererRssGrowthByPart = Object.fromEntries(Object.entries(partsAfter).map(([k, v]) => [k, v - (partsBefore?.[k] ?? 0)]));
      const sorted = afterReady.toSorted((a, b) => a - b);
      // Median and peak of the RSS growth after READY, and when the run's RSS peak was (ms from
      // the start of sampling; READY's time beside it).
      const rssAfterReady = sorted.length ? { samples: sorted.length, median: sorted[Math.floor((sorted.length - 1) / 2)], max: sorted.at(-1), readyAtMs: readyAt, peakAtMs: peak.rssAtMs } : undefined;
      return { baseline, peak, rssGrowth: peak.rss - baseline.rss, pssGrowth: peak.pss - baseline.pss, pssGrowthByKind, rendererRssGrowthByPart, rssAfterReady, series };
    },
  };
}

/** Chromium's version line (`chromium --version`), once. */
let chromiumVersion;
function versionOf(exe) {
  try {
    chromiumVersion ??= execFileSync(exe, ["--version"], { encoding: "utf8" }).trim();
  } catch {
    chromiumVersion = "Chromium";
  }
  return chromiumVersion;
}

/**
 * One page run in headless Chromium; resolves to the page's result. `profile` keeps its cache
 * between calls. Chromium is started on the page's URL with no DevTools attached: a phone has
 * none, and DevTools' network agent keeps copies of the responses it sees (with Playwright
 * attached the page's renderer held 16.8 MB after the module loaded and 18 + 4.2 MB more after
 * the shards, none of it the engine's). The page talks back over HTTP (bench.html `report=`),
 * and waits (`hold=`) while the memory baseline is taken: the page open, its Worker not yet
 * started, so the growth is what edge-llm adds to a page.
 */
export async function benchChromium(o, { profile, log = (s) => console.log(s), onRequest } = {}) {
  const { mounts, pagePath } = modelSource(o.model);
  const dir = profile ?? mkdtempSync(join(tmpdir(), "edge-llm-bench-"));
  let tree = null;
  let settle;
  const outcome = new Promise((ok, fail) => (settle = { ok, fail }));
  const body = (req) =>
    new Promise((ok) => {
      const parts = [];
      req.on("data", (c) => parts.push(c));
      req.on("end", () => ok(Buffer.concat(parts).toString("utf8")));
    });
  const routes = {
    "/__bench/hold": async (req, res) => {
      await body(req);
      // The page is open and has not started its Worker: let the tree settle, then sample it.
      tree = processTreeSampler(dir);
      await tree?.settle();
      tree?.start();
      res.writeHead(204).end();
    },
    "/__bench/report": async (req, res) => {
      const text = await body(req);
      res.writeHead(204).end();
      const m = /^(\w+) (.*)$/s.exec(text);
      if (!m) return;
      const v = JSON.parse(m[2]);
      if (m[1] === "ERROR") settle.fail(Object.assign(new Error(`${v.name}: ${v.message}`), { name: v.name }));
      else if (m[1] === "RESULT") settle.ok(v);
      else if (m[1] === "READY") tree?.pace(500);
      else if (m[1] === "LOADED") log(`  loaded: ${v.fromCache} file(s) from cache, ${v.fromNetwork} from network`);
      else if (m[1] === "QUICK") log(`  quick run: ${core.fmt(v.decodeTokPerS)} tok/s`);
      else if (m[1] === "SUSTAINED") log(`  sustained run: ${core.fmt(v.tokPerS)} tok/s, sustained/burst ${core.fmt(v.sustainedOverBurst)}`);
    },
  };
  const server = await serve(0, "127.0.0.1", { mounts, onRequest, routes });
  const q = new URLSearchParams({ auto: o.run ?? "quick", model: pagePath, report: "/__bench/report", hold: "/__bench/hold" });
  for (const k of ["minutes", "threads", "build", "simd", "backend", "label", "measured", "repeat", "cache", "warmUp", "prompt"]) if (o[k] !== undefined) q.set(k, o[k]);
  if (o.calibrate) q.set("calibrate", "1");
  const exe = process.env.CHROMIUM ?? "/usr/bin/chromium";
  const args = ["--headless", "--no-sandbox", `--user-data-dir=${dir}`, "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-quic", "--enable-precise-memory-info", "--mute-audio",
    // WebGPU when asked for: headless Chromium exposes SwiftShader's (a software adapter).
    ...(o.backend === "webgpu" ? ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"] : []),
    ...(o["js-flags"] ? [`--js-flags=${o["js-flags"]}`] : []),
    `http://127.0.0.1:${server.address().port}/www/bench.html?${q}`];
  // Its own process group, so the whole tree (renderers, GPU and utility processes) is stopped.
  // --stdout FILE: Chromium's standard output (where V8's --js-flags traces print), each line
  // prefixed with this process's performance.now() in ms, the clock of the memory samples.
  const browser = spawn(exe, args, { stdio: ["ignore", o.stdout ? "pipe" : "ignore", "pipe"], detached: true });
  // Written out (its last line too) before this returns: the CLI ends with process.exit.
  let stdoutWritten = Promise.resolve();
  if (o.stdout) {
    const out = createWriteStream(o.stdout);
    stdoutWritten = new Promise((ok) => out.on("close", ok));
    let rest = "";
    const line = (l) => `${Math.round(performance.now())} ${l}\n`;
    browser.stdout.on("data", (c) => {
      const lines = (rest + c).split("\n");
      rest = lines.pop();
      for (const l of lines) out.write(line(l));
    });
    browser.stdout.on("end", () => out.end(rest ? line(rest) : undefined));
  }
  let stderr = "";
  browser.stderr.on("data", (c) => (stderr = (stderr + c).slice(-4000)));
  const exited = new Promise((ok) => browser.on("exit", ok));
  exited.then((code) => settle.fail(new Error(`Chromium exited (${code}) before the page finished: ${stderr.trim().split("\n").slice(-3).join(" | ")}`)));
  let treeMemory;
  try {
    const r = await outcome;
    treeMemory = tree?.stop();
    if (treeMemory) {
      // What a phone counts: the browser's processes together, grown from the page open.
      r.memory.peakRssBytes = treeMemory.rssGrowth;
      r.memory.peakRssNote = `Chromium process tree (${treeMemory.peak.processes} processes), peak RSS sum minus the page's before its Worker started; PSS growth ${core.fmt(treeMemory.pssGrowth / 1e6)} MB; no DevTools attached`;
      r.memory.processTree = treeMemory;
    }
    r.runtime = `headless Chromium ${versionOf(exe).replace(/^\D*/, "")}, engine in a Worker, no DevTools attached`;
    return r;
  } finally {
    if (!treeMemory) tree?.stop();
    const group = (signal) => {
      try {
        process.kill(-browser.pid, signal);
      } catch {
        // already gone
      }
    };
    group("SIGTERM");
    await Promise.race([exited, new Promise((ok) => setTimeout(ok, 5000))]);
    group("SIGKILL");
    await Promise.race([stdoutWritten, new Promise((ok) => setTimeout(ok, 5000))]);
    server.close();
    // Chromium's last child processes may still be writing the profile as it exits.
    if (!profile) rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
  }
}

/** The wasm backend in Node: the package's Engine in this process, the same measurements. */
export async function benchNode(o) {
  const { mounts, pagePath } = modelSource(o.model);
  const server = await serve(0, "127.0.0.1", { mounts });
  try {
    const url = new URL(pagePath, `http://127.0.0.1:${server.address().port}/www/`).href;
    const manifestUrl = /\.json$/.test(url) ? url : url.replace(/\/?$/, "/manifest.json");
    const t = {};
    const t0 = performance.now();
    const pkg = await import(pathToFileURL(join(root, "pkg/index.js")).href);
    await pkg.default();
    t.init = performance.now() - t0;
    let ready = { fromCache: 0, fromNetwork: 0 };
    let manifestSource = "network";
    const engine = await pkg.Engine.load(manifestUrl, {
      cache: "none",
      backend: o.backend ?? "auto",
      onProgress: (e) => {
        const ms = performance.now() - t0;
        if (e.type === "manifest") (t.manifest = ms), (manifestSource = e.source);
        if (e.type === "progress") t.filesDone = ms;
        if (e.type === "ready") (t.ready = ms), (ready = e);
      },
    });
    t.loaded = performance.now() - t0;
    const prompt = engine.applyChatTemplate([{ role: "user", content: core.PROMPT }]);
    const t1 = performance.now();
    const g = engine.startGeneration(prompt, { maxTokens: 1, ignoreEos: true, reusePrefix: false });
    g.step();
    t.firstToken = performance.now() - t1;
    g.free();
    const stats = engine.stats();
    const cal = o.calibrate ? core.calibration() : undefined;
    // --repeat N: N quick runs on the loaded engine (the gate takes their median); the last is kept.
    const repeats = [];
    let run;
    for (let i = 0; i < Number(o.repeat ?? 1); i++) {
      run = await core.quickRun(engine, { prompt, measured: Number(o.measured ?? 100), calibration: cal });
      repeats.push({ latency: run.latency, decodeTokPerS: run.decodeTokPerS, calibration: run.calibration });
    }
    const { ids, calibration: calibrationSummary, ...quick } = run;
    const tokenizer = await core.tokenizerTimes(engine, prompt, ids, { noop: () => pkg.version() });
    const after = engine.stats();
    const r = {
      schema: core.SCHEMA,
      label: o.label,
      startedAt: new Date().toISOString(),
      runtime: `Node ${process.versions.node}, in-process Engine (no Worker: latencies have no messaging)`,
      config: { model: manifestUrl, backend: o.backend ?? "auto", threads: 1, build: "single", prompt },
      engine: { backend: stats.backend, variant: pkg.threadedBuild() ? "threads" : "single", simd: pkg.relaxedSimdBuild() ? "relaxed" : "simd128", threads: pkg.cpuThreads(), modelId: engine.modelId, modelVersion: engine.modelVersion, modelBytes: stats.modelBytes, kvCache: stats.kvCache, version: pkg.version() },
      load: { manifestSource, fromCache: ready.fromCache, fromNetwork: ready.fromNetwork, timeline: t },
      coldStart: core.coldStartParts(t, { manifestSource, fromCache: ready.fromCache, fromNetwork: ready.fromNetwork, engineLoadMs: stats.loadMs }),
      quick,
      tokenizer,
      memory: {
        wasmBytes: after.wasmMemoryBytes,
        jsHeapBytes: process.memoryUsage().heapUsed,
        jsHeapNote: "Node heap used",
        uaNote: "not applicable in Node",
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
        peakRssNote: "whole Node process (wasm memory included)",
        gpuNote: "no GPU buffers: the wasm backend ran",
      },
      device: { cpu: `${cpus()[0]?.model ?? "?"} × ${cpus().length}`, memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`, os: `${process.platform} ${release()}` },
      battery: { note: "not read in Node" },
    };
    if (cal) r.calibration = calibrationSummary;
    r.repeats = repeats;
    engine.free();
    return r;
  } finally {
    server.close();
  }
}

export function outDir(o) {
  const dir = o.out ?? join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "bench");
  mkdirSync(dir, { recursive: true });
  return dir;
}

export function writeResult(dir, name, r) {
  const file = join(dir, `${name}-${r.startedAt.replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, JSON.stringify(r, null, 1));
  return file;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const o = parseArgs(process.argv.slice(2));
  const dir = outDir(o);
  const runtimes = o.runtime === "both" ? ["chromium", "node"] : [o.runtime];
  let failed = false;
  for (const rt of runtimes) {
    if (rt === "node" && o.run !== "quick") {
      console.log("node: only the quick run (--run quick) is offered in Node");
      continue;
    }
    console.log(`== ${rt}: ${o.model}, ${o.run} run`);
    try {
      const r = rt === "chromium" ? await benchChromium(o) : await benchNode(o);
      console.log(core.textTable(r));
      console.log(`  JSON: ${writeResult(dir, rt, r)}\n`);
    } catch (e) {
      console.error(`${rt}: ${e.name}: ${e.message}`);
      failed = true;
    }
  }
  process.exit(failed ? 1 : 0);
}
