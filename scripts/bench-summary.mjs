// Issue #16's numbers in one command: the benchmark page's quick run (scripts/bench.mjs, headless
// Chromium, Engine.load with the engine in its Worker) at each thread count, round after round
// with the configurations alternated (a noisy 2-core machine drifts between runs), then medians
// and ranges of what users feel: decode and prefill tok/s, time to first token on the first
// request after load and on a warm engine, load time, the browser process tree's peak memory
// growth and wasm memory, each against the model's bytes. `--save` writes the summary;
// `--against` prints each median beside a summary saved before (the previous commit's run).
//
//   node scripts/bench-summary.mjs [--model DIR] [--rounds 3] [--threads 1,2] [--cache indexeddb]
//        [--prompt TEXT] [--simd auto] [--llama-cpp GGUF] [--save FILE.json] [--against FILE.json]
//        [--label TEXT]
//
// `--prompt`: the user message (the page's chat template around it; default www/bench-core.js's
// PROMPT); the summary says how many tokens the templated prompt was.
// Thread counts above 1 run the threaded build (scripts/build-pkg-threads.sh), 1 the single one.
// `--simd`: the page's `simd` (pkg/auto.js: `auto` takes the relaxed-SIMD build where the browser
// has relaxed SIMD); a list (`relaxed,simd128`) alternates the builds within each round, each
// configuration then named with it ("1 thread, relaxed").
// `--llama-cpp GGUF`: native llama.cpp's llama-bench (scripts/llama-cpp-bench.sh builds it) on that
// GGUF in every round, right after ours, at each thread count: prefill of the round's prompt
// length and 100 decode steps from where the page times its 100 (configurations
// "llama.cpp, 1 thread", ...); each of our decode and prefill medians is then also given over
// llama.cpp's in the same round (median and range of the per-round ratios), since this host
// drifts more between runs minutes apart than within one round.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { benchChromium, outDir, parseArgs, writeResult } from "./bench.mjs";
import { fmt, summarize as spread } from "../www/bench-core.js";

const METRICS = [
  // [key, label, unit, higher is better]
  ["decodeTokPerS", "decode", "tok/s", true],
  ["prefillTokPerS", "prefill (warm)", "tok/s", true],
  ["firstRequestTtftMs", "TTFT, first request after load", "ms", false],
  ["warmTtftMs", "TTFT, warm engine", "ms", false],
  ["loadMs", "page start → engine loaded", "ms", false],
  ["treePssGrowthOverModel", "process tree PSS growth / model", "×", false],
  ["treeRssGrowthOverModel", "process tree RSS growth / model", "×", false],
  ["wasmOverModel", "wasm memory / model", "×", false],
];

/** The numbers this summary keeps from one bench.mjs result. */
export function pick(r) {
  const model = r.engine?.modelBytes;
  const tree = r.memory?.processTree;
  return {
    decodeTokPerS: r.quick?.engine?.decodeTokensPerS ?? r.quick?.decodeTokPerS,
    prefillTokPerS: r.quick?.prefillTokPerS,
    firstRequestTtftMs: r.load?.timeline?.firstToken,
    warmTtftMs: r.quick?.ttftMs,
    loadMs: r.load?.timeline?.loaded,
    treePssGrowthOverModel: tree && model ? tree.pssGrowth / model : undefined,
    treeRssGrowthOverModel: tree && model ? tree.rssGrowth / model : undefined,
    wasmOverModel: model ? r.memory?.wasmBytes / model : undefined,
    threads: r.engine?.threads,
    variant: r.engine?.variant,
    simd: r.engine?.simd,
    promptTokens: r.quick?.promptTokens,
  };
}

/** Per configuration: every run's numbers and, per metric, median / min / max. */
export function summarize(runs) {
  const out = {};
  for (const [config, rs] of Object.entries(runs)) {
    const stats = {};
    for (const [k] of METRICS) {
      const xs = rs.map((r) => r[k]).filter((x) => typeof x === "number" && Number.isFinite(x));
      // The median is the bench's nearest-rank p50 (www/bench-core.js), as in every other report.
      const d = xs.length ? spread(xs) : undefined;
      stats[k] = d && { median: d.p50, min: d.min, max: d.max, n: d.n };
    }
    out[config] = { runs: rs, stats };
  }
  return out;
}

export function table(summary, against) {
  const configs = Object.keys(summary.configs);
  const lines = [`| metric | ${configs.map((c) => `${c}: median (min–max)`).join(" | ")}${against ? " | against: median, ratio" : ""} |`];
  lines.push(`|---|${configs.map(() => "---:").join("|")}${against ? "|---" : ""}|`);
  for (const [k, label, unit, higher] of METRICS) {
    const cells = configs.map((c) => {
      const s = summary.configs[c].stats[k];
      return s ? `${fmt(s.median)} ${unit} (${fmt(s.min)}–${fmt(s.max)})` : "–";
    });
    let vs = "";
    if (against) {
      vs = configs
        .map((c) => {
          const old = against.configs?.[c]?.stats?.[k]?.median;
          const now = summary.configs[c].stats[k]?.median;
          if (old === undefined || now === undefined) return `${c}: –`;
          const better = higher ? now >= old : now <= old;
          return `${c}: ${fmt(old)} → ×${(now / old).toFixed(2)}${better ? "" : " (worse)"}`;
        })
        .join("; ");
    }
    lines.push(`| ${label} | ${cells.join(" | ")}${against ? ` | ${vs}` : ""} |`);
  }
  for (const c of configs.filter((c) => !/(^|, )1 thread/.test(c))) {
    // Against 1 thread of the same build ("2 threads, relaxed" over "1 thread, relaxed",
    // "llama.cpp, 2 threads" over "llama.cpp, 1 thread").
    const base = c.replace(/(^|, )\d+ threads/, "$11 thread");
    const one = summary.configs[base]?.stats.decodeTokPerS?.median;
    const d = summary.configs[c].stats.decodeTokPerS?.median;
    const p1 = summary.configs[base]?.stats.prefillTokPerS?.median;
    const p = summary.configs[c].stats.prefillTokPerS?.median;
    if (one && d) lines.push(`\n${c} / ${base}: decode ×${(d / one).toFixed(2)}, prefill ×${p1 && p ? (p / p1).toFixed(2) : "–"} (medians; target decode ≥ 1.6 at 2 threads)`);
  }
  return lines.join("\n");
}

/** Each of our configurations over llama.cpp's at its thread count, round by round (runs are in
 * round order): median and range of the ratios. */
export function sameRoundRatios(runs) {
  const lines = ["ours / llama.cpp in the same round (median, min–max of the per-round ratios):"];
  for (const [config, rs] of Object.entries(runs)) {
    if (config.startsWith("llama.cpp")) continue;
    const theirs = runs[`llama.cpp, ${config.replace(/, .*$/, "")}`];
    if (!theirs) continue;
    for (const [k, what] of [["decodeTokPerS", "decode"], ["prefillTokPerS", "prefill"]]) {
      const ratios = rs.map((r, i) => r[k] / theirs[i]?.[k]).filter((x) => Number.isFinite(x));
      if (!ratios.length) continue;
      const d = spread(ratios);
      lines.push(`  ${config} ${what}: ${(100 * d.p50).toFixed(0)} % (${(100 * d.min).toFixed(0)}–${(100 * d.max).toFixed(0)} %, ${ratios.length} rounds)${what === "decode" && config.startsWith("1 thread") ? " (aim ≥ 80 %)" : ""}`);
    }
  }
  return lines.join("\n");
}

function gitRev() {
  try {
    const rev = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], { encoding: "utf8" }).trim() ? "+dirty" : "";
    return rev + dirty;
  } catch {
    return undefined;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const o = parseArgs(process.argv.slice(2));
  const rounds = Number(o.rounds ?? 3);
  if (!(rounds >= 1)) throw new Error("--rounds must be >= 1");
  const counts = String(o.threads ?? "1,2").split(",").map(Number);
  if (counts.some((n) => !(n >= 1 && Number.isInteger(n)))) throw new Error("--threads: a comma-separated list of integers >= 1");
  const simds = String(o.simd ?? "auto").split(",");
  if (simds.some((s) => !["auto", "relaxed", "simd128"].includes(s))) throw new Error("--simd: a comma-separated list of auto, relaxed, simd128");
  const dir = outDir(o);
  const llama = o["llama-cpp"] && {
    gguf: o["llama-cpp"],
    bin: execFileSync(fileURLToPath(new URL("llama-cpp-bench.sh", import.meta.url)), ["--bin"], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim(),
  };
  const runs = {};
  const load = [];
  for (let round = 1; round <= rounds; round++) {
    for (const [t, simd] of counts.flatMap((t) => simds.map((s) => [t, s]))) {
      const config = (t === 1 ? "1 thread" : `${t} threads`) + (simds.length > 1 ? `, ${simd}` : "");
      load.push(loadavg()[0]);
      console.log(`== round ${round}/${rounds}, ${config} (load average ${loadavg()[0].toFixed(2)})`);
      const r = await benchChromium({ ...o, run: "quick", threads: String(t), build: t === 1 ? "single" : "threads", simd, label: `${o.label ?? "summary"} ${config} round ${round}` }, { log: () => {} });
      writeResult(dir, "summary-run", r);
      const p = pick(r);
      if (t > 1 && p.threads !== t) throw new Error(`asked for ${t} threads, the page ran ${p.threads} (${p.variant} build): build pkg/threads/ (scripts/build-pkg-threads.sh) and serve cross-origin isolated`);
      (runs[config] ??= []).push(p);
      console.log(`   ${p.variant} build, ${p.simd}: decode ${fmt(p.decodeTokPerS)} tok/s, prefill ${fmt(p.prefillTokPerS)} tok/s, first-request TTFT ${fmt(p.firstRequestTtftMs)} ms, warm TTFT ${fmt(p.warmTtftMs)} ms, PSS growth ${fmt(p.treePssGrowthOverModel)}× model`);
      const parts = r.memory?.processTree?.rendererRssGrowthByPart;
      if (parts) console.log(`   renderer RSS growth at the end, MB: ${Object.entries(parts).map(([k, v]) => `${k} ${fmt(v / 1e6)}`).join(", ")}`);
      const after = r.memory?.processTree?.rssAfterReady;
      const model = r.engine?.modelBytes;
      if (after && model)
        console.log(
          `   tree RSS growth from READY on: median ${(after.median / model).toFixed(3)}× model, max ${(after.max / model).toFixed(3)}× (${after.samples} samples); ` +
            `the run's peak at ${fmt(after.peakAtMs)} ms, READY at ${fmt(after.readyAtMs)} ms`,
        );
    }
    if (llama) {
      const prompt = Object.values(runs).flat().at(-1)?.promptTokens;
      for (const t of counts) {
        const config = `llama.cpp, ${t === 1 ? "1 thread" : `${t} threads`}`;
        console.log(`== round ${round}/${rounds}, ${config} (load average ${loadavg()[0].toFixed(2)})`);
        const bench = (args) => JSON.parse(execFileSync(llama.bin, ["-m", llama.gguf, "-t", String(t), "-r", "1", "-o", "json", ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }))[0].avg_ts;
        const p = { threads: t, promptTokens: prompt, prefillTokPerS: bench(["-p", String(prompt), "-n", "0"]), decodeTokPerS: bench(["-p", "0", "-n", "100", "-d", String(prompt + 10)]) };
        (runs[config] ??= []).push(p);
        console.log(`   decode ${fmt(p.decodeTokPerS)} tok/s, prefill ${fmt(p.prefillTokPerS)} tok/s`);
      }
    }
  }
  const summary = {
    label: o.label,
    rev: gitRev(),
    date: new Date().toISOString(),
    conditions: { rounds, model: o.model ?? "models/default", cache: o.cache ?? "indexeddb", promptTokens: [...new Set(Object.values(runs).flat().map((r) => r.promptTokens))].join("/"), loadAverage: { min: Math.min(...load), max: Math.max(...load) }, runtime: "headless Chromium, bench.html quick run, engine in a Worker" },
    configs: summarize(runs),
  };
  const against = o.against ? JSON.parse(readFileSync(o.against, "utf8")) : undefined;
  console.log(`\n${summary.rev ?? ""} ${summary.date}, ${rounds} rounds, ${summary.conditions.promptTokens}-token prompt, load average ${summary.conditions.loadAverage.min.toFixed(1)}–${summary.conditions.loadAverage.max.toFixed(1)}${against ? `; against ${against.rev ?? o.against} (${against.date})` : ""}\n`);
  console.log(table(summary, against));
  if (llama) console.log(`\n${sameRoundRatios(runs)}`);
  if (o.save) {
    writeFileSync(o.save, JSON.stringify(summary, null, 1));
    console.log(`\nsaved: ${o.save}`);
  }
}
