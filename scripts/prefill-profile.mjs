// Prefill timing and profile: N prefills (prompt + one token, no prefix reuse) of the bench's chat
// prompt on the package's wasm engine in Node, 1 thread; prints each TTFT and, with --profile, the
// functions with the most self time over those N prefills (V8's sampling profiler through
// node:inspector; wasm functions by their Rust names when the package kept its name section, as
// `WASM_OPT=0 scripts/build-pkg.sh` does).
//
// With --decode N, each prefill is followed by N decode steps and what is timed (and profiled)
// is those steps: ms per decode step instead of TTFT.
//
//   node scripts/prefill-profile.mjs --model DIR [--n 10] [--decode N] [--profile] [--top 15]
//        [--pkg pkg/relaxed]
//
// `--pkg`: the build to run (default pkg/, the SIMD128 build). Node 20 has no standard relaxed
// SIMD: run the relaxed twins under Deno (`node_modules/.bin/deno run -A
// scripts/prefill-profile.mjs --pkg pkg/relaxed ...`; its V8 has it, and node:inspector's
// profiler works there too).
import { Session } from "node:inspector/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "./bench.mjs";
import { serve } from "./serve.mjs";
import { PROMPT, summarize, fmt } from "../www/bench-core.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const o = parseArgs(process.argv.slice(2).filter((a) => a !== "--profile"));
o.profile = process.argv.includes("--profile");
if (!process.argv.includes("--model")) {
  console.error("usage: node scripts/prefill-profile.mjs --model DIR [--n 10] [--decode N] [--profile] [--top 15]");
  process.exit(2);
}
const n = Number(o.n ?? 10);
const decode = Number(o.decode ?? 0);
const server = await serve(0, "127.0.0.1", { mounts: { "/m/": resolve(o.model) } });
try {
  const pkg = await import(pathToFileURL(join(root, o.pkg ?? "pkg", "index.js")).href);
  await pkg.default();
  const engine = await pkg.Engine.load(`http://127.0.0.1:${server.address().port}/m/manifest.json`, { cache: "none", backend: "wasm" });
  const prompt = engine.applyChatTemplate([{ role: "user", content: PROMPT }]);
  const session = new Session();
  if (o.profile) {
    session.connect();
    await session.post("Profiler.enable");
  }
  // The profiler samples what is timed: the prefills, or with --decode the last run's decode steps.
  const profiling = async (on) => o.profile && (await session.post(on ? "Profiler.start" : "Profiler.stop"));
  if (!decode) await profiling(true);
  const ms = [];
  let profile;
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const g = engine.startGeneration(prompt, { maxTokens: 1 + decode, ignoreEos: true, reusePrefix: false });
    g.step();
    if (decode) {
      if (i === n - 1) await profiling(true);
      const t1 = performance.now();
      for (let j = 0; j < decode; j++) g.step();
      ms.push((performance.now() - t1) / decode);
    } else ms.push(performance.now() - t);
    g.free();
  }
  if (o.profile) profile = (await session.post("Profiler.stop")).profile;
  const s = summarize(ms.slice(1));
  const what = decode ? `ms per decode step (${decode} steps after each prefill)` : "TTFT ms";
  console.log(`prompt ${engine.stats().promptTokens ?? "?"} tokens; ${what}: first ${fmt(ms[0])} (after the load), then ${ms.slice(1).map(fmt).join(" ")}; median of the rest ${fmt(s.p50)}`);
  if (o.profile) {
    const self = new Map();
    const byId = new Map(profile.nodes.map((x) => [x.id, x]));
    profile.samples.forEach((id, i) => {
      const f = byId.get(id).callFrame;
      const name = f.functionName || `(${f.url.split("/").pop()})`;
      self.set(name, (self.get(name) ?? 0) + profile.timeDeltas[i] / 1000);
    });
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    console.log(`self time over ${decode ? "the last run's decode steps" : `the ${n} prefills`} (${fmt(total)} ms sampled):`);
    for (const [name, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(o.top ?? 15))) {
      console.log(`${fmt(t).padStart(9)} ms ${((100 * t) / total).toFixed(1).padStart(5)} %  ${name.slice(0, 140)}`);
    }
  }
} finally {
  server.close();
}
process.exit(0);
