// onnxruntime-web on the same prompt, machine and browser as scripts/bench-summary.mjs: the
// competitor's numbers for issue #16's "prefill >= 2x onnxruntime-web's" (and its decode). Each
// ONNX file (an fp32 decoder with past_key_values inputs, as `edge-llm-pack import-gguf
// --precision fp32` or optimum export it, or onnxruntime's int4 of one) is loaded by
// onnxruntime-web's wasm backend in headless Chromium; per round a fresh page: the first prefill
// after the session is created (onnxruntime-web's first request), then warm prefills, then
// greedy decode steps through present -> past_key_values. Medians of the rounds.
//
//   node scripts/ort-web-bench.mjs --onnx FILE[,FILE...] [--threads 1] [--rounds 3] [--steps 32]
//        [--prompt TEXT] [--packed DIR]
//
// The prompt is templated and tokenized by edge-llm's own package (pkg/, Node) with the packed
// model in --packed (default /var/tmp/def-packed, README command 1's): the same ids both runtimes
// see. onnxruntime-web comes from npm, pinned (ORT_WEB_VERSION), installed once into
// $CARGO_TARGET_DIR/ort-web (or target/ort-web).
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { chromium } from "playwright-core";
import { parseArgs } from "./bench.mjs";
import { serve } from "./serve.mjs";
import { PROMPT, fmt, summarize } from "../www/bench-core.js";

const ORT_WEB_VERSION = "1.31.1";
const root = resolve(fileURLToPath(import.meta.url), "../..");

const o = parseArgs(process.argv.slice(2));
if (!o.onnx) throw new Error("--onnx FILE[,FILE...] is required");
const files = String(o.onnx).split(",").map((f) => resolve(f));
const threads = Number(o.threads ?? 1);
const rounds = Number(o.rounds ?? 3);
const steps = Number(o.steps ?? 32);

// onnxruntime-web, pinned.
const ortDir = join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "ort-web");
const dist = join(ortDir, "node_modules/onnxruntime-web/dist");
if (!existsSync(join(dist, "ort.wasm.min.mjs"))) {
  mkdirSync(ortDir, { recursive: true });
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--prefix", ortDir, `onnxruntime-web@${ORT_WEB_VERSION}`], { stdio: "inherit" });
}

// The prompt's ids, from edge-llm's package on the packed model.
const modelDir = resolve(o.packed ?? "/var/tmp/def-packed");
const pkg = await import(pathToFileURL(join(root, "pkg/index.js")).href);
await pkg.default();
const tokServer = await serve(0, "127.0.0.1", { mounts: { "/m/": modelDir } });
const engine = await pkg.Engine.load(`http://127.0.0.1:${tokServer.address().port}/m/manifest.json`, { cache: "none", warmUp: false });
const text = engine.applyChatTemplate([{ role: "user", content: o.prompt ?? PROMPT }]);
const ids = Array.from(engine.tokenize(text));
engine.free();
tokServer.close();

const mounts = { "/ort/": dist };
for (const [i, f] of files.entries()) mounts[`/onnx${i}/`] = dirname(f);
const server = await serve(0, "127.0.0.1", { mounts });
const base = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-background-networking", "--disable-quic"] });

/** One round in a fresh page: create the session, time the prefills and the decode steps. */
async function round(url) {
  const page = await browser.newPage();
  try {
    await page.goto(`${base}/tests/js/blank.html`);
    return await page.evaluate(
      async ({ url, ids, threads, steps }) => {
        const ort = await import("/ort/ort.wasm.min.mjs");
        ort.env.wasm.numThreads = threads;
        ort.env.wasm.wasmPaths = "/ort/";
        const t0 = performance.now();
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
        const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
        const loadMs = performance.now() - t0;
        const pastNames = session.inputNames.filter((n) => n.startsWith("past_key_values."));
        // An empty past for the prefill: [1, kv heads, 0, head dim], the dims from the file.
        const headsDim = (n) => {
          const shape = session.inputMetadata.find((m) => m.name === n)?.shape;
          if (typeof shape?.[1] !== "number" || typeof shape?.[3] !== "number") throw new Error(`${n}: no fixed [kv heads, head dim] in the file (shape ${JSON.stringify(shape)})`);
          return [shape[1], shape[3]];
        };
        const i64 = (xs) => new ort.Tensor("int64", BigInt64Array.from(xs.map(BigInt)), [1, xs.length]);
        const feeds = (tokens, past, pastLen) => {
          const f = { input_ids: i64(tokens) };
          if (session.inputNames.includes("attention_mask")) f.attention_mask = i64(Array(pastLen + tokens.length).fill(1));
          if (session.inputNames.includes("position_ids")) f.position_ids = i64(tokens.map((_, i) => pastLen + i));
          for (const n of pastNames) {
            const [h, d] = headsDim(n);
            f[n] = past?.[n] ?? new ort.Tensor("float32", new Float32Array(0), [1, h, 0, d]);
          }
          return f;
        };
        const argmaxLast = (logits) => {
          const v = logits.dims[2];
          const data = logits.data;
          const off = (logits.dims[1] - 1) * v;
          let best = 0;
          for (let i = 1; i < v; i++) if (data[off + i] > data[off + best]) best = i;
          return best;
        };
        const prefill = async () => {
          const t = performance.now();
          const out = await session.run(feeds(ids, null, 0));
          const first = argmaxLast(out.logits);
          return { ms: performance.now() - t, out, first };
        };
        const firstRun = await prefill();
        const warm = [];
        for (let i = 0; i < 3; i++) warm.push((await prefill()).ms);
        // Greedy decode from the last prefill: one token a step through present -> past.
        let { out, first: token } = await prefill();
        const tokens = [token];
        const stepMs = [];
        let pastLen = ids.length;
        for (let s = 0; s < steps; s++) {
          const past = Object.fromEntries(pastNames.map((n) => [n, out[n.replace("past_key_values.", "present.")]]));
          const t = performance.now();
          out = await session.run(feeds([token], past, pastLen));
          token = argmaxLast(out.logits);
          stepMs.push(performance.now() - t);
          tokens.push(token);
          pastLen += 1;
        }
        await session.release();
        return { loadMs, firstMs: firstRun.ms, warmMs: warm, stepMs, tokens };
      },
      { url, ids, threads, steps },
    );
  } finally {
    await page.close();
  }
}

const median = (xs) => summarize(xs).p50;
try {
  console.log(`onnxruntime-web ${ORT_WEB_VERSION}, wasm backend, ${threads} thread(s), headless Chromium ${browser.version()}, ${ids.length}-token prompt, ${rounds} rounds`);
  for (const [i, f] of files.entries()) {
    const rs = [];
    for (let r = 0; r < rounds; r++) rs.push(await round(`/onnx${i}/${basename(f)}`));
    const first = median(rs.map((r) => r.firstMs));
    const warm = median(rs.flatMap((r) => r.warmMs));
    const step = median(rs.map((r) => median(r.stepMs.slice(Math.min(4, r.stepMs.length - 1)))));
    console.log(`${basename(f)}: first prefill ${fmt(first)} ms (${fmt((ids.length / first) * 1000)} tok/s), warm prefill ${fmt(warm)} ms (${fmt((ids.length / warm) * 1000)} tok/s), decode ${fmt(1000 / step)} tok/s (median step ${fmt(step)} ms), load ${fmt(median(rs.map((r) => r.loadMs)))} ms; greedy ids ${rs[0].tokens.slice(0, 8).join(" ")} ...`);
  }
} finally {
  await browser.close();
  server.close();
}
