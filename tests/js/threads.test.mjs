// The threaded build (pkg/threads/, scripts/build-pkg-threads.sh) in headless Chromium on a
// cross-origin-isolated page (scripts/serve.mjs sends COOP/COEP): the same greedy tokens as the
// single-thread build, at 1 and 3 threads, with the matmuls really split across Web Workers.
// And pkg/auto.js: the threaded build only where the page is isolated.
// Skipped when pkg/threads/ was not built, unless EDGE_LLM_REQUIRE_THREADS=1 (scripts/test.sh).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { serve } from "../../scripts/serve.mjs";

const root = new URL("../../", import.meta.url);
const built = existsSync(new URL("pkg/threads/edge_llm.js", root));
const skip = !built && process.env.EDGE_LLM_REQUIRE_THREADS !== "1" && process.env.EDGE_LLM_NO_SKIP !== "1" ? "pkg/threads/ not built (scripts/build-pkg-threads.sh)" : false;

async function withPage(isolated, body) {
  const server = await serve(0, "127.0.0.1", { isolated });
  const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "edge-llm-threads-")), {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  try {
    const page = browser.pages()[0];
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${server.address().port}/tests/js/blank.html`);
    const out = await body(page);
    assert.deepEqual(errors, []);
    return out;
  } finally {
    await browser.close();
    server.close();
  }
}

// Each threaded build against its single-thread twin: SIMD128 (pkg/threads/ against pkg/) and
// relaxed SIMD (pkg/threads-relaxed/ against pkg/relaxed/; Chromium has relaxed SIMD).
for (const [single, threaded] of [["pkg", "pkg/threads"], ["pkg/relaxed", "pkg/threads-relaxed"]])
test(`threaded build ${threaded}/: same tokens as ${single}/ at 1 and 3 threads`, { skip, timeout: 300_000 }, async () => {
  const r = await withPage(true, (page) =>
    page.evaluate(async ([singlePath, threadedPath]) => {
      const bytes = async (f) => new Uint8Array(await (await fetch(`/tests/fixtures/tiny/${f}`)).arrayBuffer());
      const [tok, cfg] = [await bytes("tokenizer.json"), await bytes("model_config.json")];
      const single = await import(`/${singlePath}/edge_llm.js`);
      await single.default();
      const threaded = await import(`/${threadedPath}/edge_llm.js`);
      await threaded.default();
      const started = await threaded.initThreads(3);
      threaded.setCpuSplitMinWork(1); // split even the tiny model's matmuls
      const { sampledTokens } = await import("/tests/js/sampled.mjs");
      const run = (edge, onnx) => sampledTokens(edge, onnx, tok, cfg);
      const results = {};
      for (const model of ["model-int4.onnx", "model-int4-asym.onnx", "model-int8.onnx"]) {
        const onnx = await bytes(model);
        const one = await threaded.initThreads(1);
        const splitsBefore = threaded.cpuSplitCalls();
        const t1 = run(threaded, onnx);
        const splitsAt1 = threaded.cpuSplitCalls() - splitsBefore;
        const three = await threaded.initThreads(3);
        const t3 = run(threaded, onnx);
        const splitsAt3 = threaded.cpuSplitCalls() - splitsBefore - splitsAt1;
        results[model] = { single: run(single, onnx), t1, t3, one, three, splitsAt1, splitsAt3 };
      }
      return {
        isolated: crossOriginIsolated,
        threadedBuild: threaded.threadedBuild(),
        singleBuild: single.threadedBuild(),
        relaxed: [single.relaxedSimdBuild(), threaded.relaxedSimdBuild()],
        started,
        results,
      };
    }, [single, threaded]),
  );
  const relaxed = single.endsWith("relaxed");
  assert.deepEqual(r.relaxed, [relaxed, relaxed]);
  assert.equal(r.isolated, true);
  assert.equal(r.threadedBuild, true);
  assert.equal(r.singleBuild, false);
  assert.equal(r.started, 3);
  for (const [model, m] of Object.entries(r.results)) {
    assert.equal(m.single.length, 16, model);
    assert.deepEqual(m.t1, m.single, `${model}: threaded build at 1 thread`);
    assert.deepEqual(m.t3, m.single, `${model}: threaded build at 3 threads`);
    assert.equal(m.one, 1);
    assert.equal(m.three, 3);
    assert.equal(m.splitsAt1, 0, `${model}: split at 1 thread`);
    // int8 (MatMulInteger) runs through tract, not the q4 kernel.
    if (model.includes("int4")) assert.ok(m.splitsAt3 > 0, `${model}: no matmul split at 3 threads`);
  }
});

// The runtime column "threaded" of the onnxruntime-file matrix (the native, Node and Chromium
// columns: tests/ort_files.rs, tests/common/ort_files_wasm.rs): every model file under
// tests/fixtures/ort with a token reference, on 3 threads with every matmul split, gives
// onnxruntime's greedy tokens on onnxruntime's prompt ids.
const ortFiles = readdirSync(new URL("tests/fixtures/ort/", root))
  .filter((f) => f.endsWith(".json") && f !== "model_config.json")
  .filter((f) => "runs" in JSON.parse(readFileSync(new URL(`tests/fixtures/ort/${f}`, root), "utf8")))
  .map((f) => f.slice(0, -".json".length));

for (const build of ["pkg/threads", "pkg/threads-relaxed"])
test(`threaded build ${build}/ at 3 threads: onnxruntime-made files give onnxruntime's greedy tokens`, { skip, timeout: 300_000 }, async () => {
  assert.ok(ortFiles.length >= 13, `onnxruntime files found: ${ortFiles}`);
  const r = await withPage(true, (page) =>
    page.evaluate(async ([names, build]) => {
      const get = async (path) => new Uint8Array(await (await fetch(path)).arrayBuffer());
      const [tok, cfg] = [await get("/tests/fixtures/tiny/tokenizer.json"), await get("/tests/fixtures/ort/model_config.json")];
      const threaded = await import(`/${build}/edge_llm.js`);
      await threaded.default();
      const threads = await threaded.initThreads(3);
      threaded.setCpuSplitMinWork(1);
      const splitsBefore = threaded.cpuSplitCalls();
      const files = {};
      for (const name of names) {
        const reference = await (await fetch(`/tests/fixtures/ort/${name}.json`)).json();
        let engine;
        try {
          engine = threaded.Engine.fromBytes(await get(`/tests/fixtures/ort/${name}.onnx`), tok, cfg);
        } catch (e) {
          files[name] = `${e.name}: ${e.message}`;
          continue;
        }
        files[name] = reference.runs.map((run) => {
          const g = engine.startGeneration(Uint32Array.from(run.prompt), { maxTokens: run.tokens.length, ignoreEos: true });
          const ids = [];
          for (let t = g.step(); t !== undefined; t = g.step()) ids.push(t.tokenId);
          return { want: run.tokens, got: ids };
        });
        engine.free();
      }
      return { threads, splits: threaded.cpuSplitCalls() - splitsBefore, files };
    }, [ortFiles, build]),
  );
  assert.equal(r.threads, 3);
  assert.ok(r.splits > 0, "no matmul was split across threads");
  for (const [name, runs] of Object.entries(r.files)) {
    assert.ok(Array.isArray(runs), `${name} does not load on the threaded build: ${runs}`);
    runs.forEach(({ want, got }, i) => assert.deepEqual(got, want, `${name}, prompt ${i}: threaded build vs onnxruntime`));
  }
});

test("auto.js: threaded build on an isolated page, single-thread build elsewhere", { skip, timeout: 120_000 }, async () => {
  const pick = (page) =>
    page.evaluate(async () => {
      const { loadEdgeLlm, threadsAvailable } = await import("/pkg/auto.js");
      const two = await loadEdgeLlm({ threads: 2 });
      return { available: threadsAvailable(), variant: two.variant, threads: two.threads, built: two.edge.threadedBuild() };
    });
  const isolated = await withPage(true, pick);
  assert.deepEqual(isolated, { available: true, variant: "threads", threads: 2, built: true });
  const plain = await withPage(false, pick);
  assert.deepEqual(plain, { available: false, variant: "single", threads: 1, built: false });
});

test("WorkerEngine runs the threaded build in its worker on an isolated page: the single build's tokens", { skip, timeout: 180_000 }, async () => {
  const run = (page) =>
    page.evaluate(async () => {
      const bytes = async (f) => new Uint8Array(await (await fetch(`/tests/fixtures/tiny/${f}`)).arrayBuffer());
      const files = async () => [await bytes("model-int4.onnx"), await bytes("tokenizer.json"), await bytes("model_config.json")];
      const { WorkerEngine } = await import("/pkg/worker.js");
      const engine = await WorkerEngine.fromBytes(...(await files()), { threads: 2 });
      const ids = [];
      for await (const t of engine.generate("The capital of France is", { maxTokens: 16, ignoreEos: true, temperature: 1, seed: 7 })) ids.push(t.tokenId);
      const out = { variant: engine.variant, threads: engine.threads, ids };
      await engine.dispose();
      return out;
    });
  const isolated = await withPage(true, run);
  const plain = await withPage(false, run);
  assert.deepEqual([isolated.variant, isolated.threads], ["threads", 2]);
  assert.deepEqual([plain.variant, plain.threads], ["single", 1]);
  assert.deepEqual(isolated.ids, plain.ids);
});
