// The Worker proxy (pkg/worker.js, `edge-llm/worker`) in headless Chromium: same tokens as the
// engine on the main thread, the main thread keeps running while the worker loads and
// generates, and aborts, errors and saved state cross the boundary; the GPU engine runs in the
// worker too (WebGPU exists in dedicated workers; SwiftShader's here).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { openBrowser } from "./chromium.mjs";

let browser;
let page;
before(async () => {
  browser = await openBrowser(undefined, { webgpu: true });
  page = await browser.page("/tests/js/blank.html");
  await page.evaluate(async () => {
    const pkg = await import("/pkg/edge_llm.js");
    await pkg.default();
    const { WorkerEngine } = await import("/pkg/worker.js");
    const get = async (f) => new Uint8Array(await (await fetch(`/tests/fixtures/tiny/${f}`)).arrayBuffer());
    const files = async () => [await get("model-int4.onnx"), await get("tokenizer.json"), await get("model_config.json")];
    const collect = async (iter, limit = Infinity) => {
      const ids = [];
      for await (const t of iter) {
        ids.push(t.tokenId);
        if (ids.length === limit) break;
      }
      return ids;
    };
    Object.assign(globalThis, { pkg, WorkerEngine, files, collect });
  });
});
after(async () => browser?.close());

test("worker tokens equal the main-thread engine's (greedy, seeded, chat)", async () => {
  const r = await page.evaluate(async () => {
    const direct = pkg.Engine.fromBytes(...(await files()));
    const worker = await WorkerEngine.fromBytes(...(await files()));
    const seeded = { maxTokens: 16, temperature: 0.9, topK: 40, seed: 3, ignoreEos: true };
    const messages = [{ role: "user", content: "Hi!" }];
    const out = {
      greedy: [await collect(direct.generate("Once upon", { maxTokens: 16 })), await collect(worker.generate("Once upon", { maxTokens: 16 }))],
      seeded: [await collect(direct.generate("Once upon", seeded)), await collect(worker.generate("Once upon", seeded))],
      chat: [await collect(direct.chat(messages, { maxTokens: 16 })), await collect(worker.chat(messages, { maxTokens: 16 }))],
      tokenize: [[...direct.tokenize("Café")], [...(await worker.tokenize("Café"))]],
      template: [direct.applyChatTemplate(messages), await worker.applyChatTemplate(messages)],
      stats: await worker.stats(),
    };
    direct.dispose();
    await worker.dispose();
    return out;
  });
  for (const k of ["greedy", "seeded", "chat", "tokenize", "template"]) assert.deepEqual(r[k][1], r[k][0], k);
  assert.ok(r.seeded[0].length === 16);
  assert.equal(r.stats.generatedTokens, r.chat[1].length);
  assert.ok(r.stats.loadMs > 0 && r.stats.decodeTokensPerS > 0);
});

test("the main thread keeps running while the worker loads and works", async () => {
  const r = await page.evaluate(async () => {
    // A timer loop on the main thread: the longest gap between ticks is how long it was blocked.
    const watch = () => {
      let last = performance.now();
      let maxGap = 0;
      let ticks = 0;
      let on = true;
      const tick = () => {
        const t = performance.now();
        maxGap = Math.max(maxGap, t - last);
        last = t;
        ticks++;
        if (on) setTimeout(tick, 0);
      };
      setTimeout(tick, 0);
      return () => {
        on = false;
        // A tick still waiting counts too (a starved timer is a blocked one).
        return { maxGap: Math.max(maxGap, performance.now() - last), ticks };
      };
    };
    // The work: load, tokenize ~750 KB of made-up words (one long synchronous call: no word
    // repeats, so the tokenizer's cache does not help), generate.
    let seed = 1;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    const words = [];
    for (let i = 0; i < 100000; i++) {
      let w = "";
      for (let j = 0, n = 3 + Math.floor(rand() * 8); j < n; j++) w += String.fromCharCode(97 + Math.floor(rand() * 26));
      words.push(w);
    }
    const text = words.join(" ");
    const work = async (engine) => {
      const n = (await engine.tokenize(text)).length;
      const ids = await collect(engine.generate("Once upon", { maxTokens: 64, ignoreEos: true }));
      return { n, ids };
    };
    let stop = watch();
    const t0 = performance.now();
    const worker = await WorkerEngine.fromBytes(...(await files()));
    const inWorker = await work(worker);
    const workerMs = performance.now() - t0;
    const workerTimer = stop();
    await worker.dispose();

    stop = watch();
    const t1 = performance.now();
    const direct = pkg.Engine.fromBytes(...(await files()));
    const onMain = await work(direct);
    const directMs = performance.now() - t1;
    const directTimer = stop();
    direct.dispose();
    return { inWorker, onMain, workerMs, directMs, workerTimer, directTimer, textBytes: text.length };
  });
  console.log(
    `main-thread timer during load + 750 KB tokenize + 64 tokens: worker: ${r.workerTimer.ticks} ticks, longest gap ${r.workerTimer.maxGap.toFixed(1)} ms ` +
      `(${r.workerMs.toFixed(0)} ms of work); same work on the main thread: longest gap ${r.directTimer.maxGap.toFixed(1)} ms (${r.directMs.toFixed(0)} ms)`,
  );
  assert.deepEqual(r.inWorker, r.onMain);
  assert.ok(r.workerTimer.ticks > 20, "the timer ran while the worker worked");
  // The main thread's longest stall with the worker is a fraction of the work's own length.
  assert.ok(r.workerTimer.maxGap < r.directTimer.maxGap / 2, JSON.stringify(r.workerTimer) + JSON.stringify(r.directTimer));
});

test("abort, named errors and saved state cross the boundary", async () => {
  const r = await page.evaluate(async () => {
    const worker = await WorkerEngine.fromBytes(...(await files()));
    const name = async (p) => p.then(() => "resolved", (e) => `${e.name}: ${e.message}`);
    const out = {};
    const ctl = new AbortController();
    let n = 0;
    out.abort = await name(
      (async () => {
        for await (const _ of worker.generate("Hello", { maxTokens: 50, ignoreEos: true }, ctl.signal)) if (++n === 3) ctl.abort();
      })(),
    );
    out.abortedAfter = n;
    out.badOption = await name(worker.generate("Hello", { topP: 2 }).next());
    out.badState = await name(worker.restoreState(new Uint8Array([1, 2, 3])));
    // Engine.load in the worker: the packed tiny model (its embedding split across shards)
    // gives the unpacked model's tokens, with progress events up to `ready`.
    const events = [];
    const loaded = await WorkerEngine.load("/tests/fixtures/tiny-packed/manifest.json", { cache: "none", onProgress: (e) => events.push(e.type) });
    const greedy = { maxTokens: 12, ignoreEos: true };
    out.loadTokens = [await collect(loaded.generate("Once upon", greedy)), await collect(worker.generate("Once upon", greedy))];
    out.loadEvents = [events[0], events.at(-1), events.filter((t) => t === "progress").length];
    await loaded.dispose();
    out.missing = await name(WorkerEngine.load("/tests/fixtures/no-such-model/manifest.json", { cache: "none", retries: 0 }));

    // Save in the worker mid-generation, restore on the main thread, resume: same tokens.
    const opts = { maxTokens: 12, temperature: 0.8, seed: 9, ignoreEos: true };
    const want = await collect(worker.generate("Once upon", opts));
    const head = await collect(worker.generate("Once upon", opts), 5);
    const state = await worker.saveState();
    const direct = pkg.Engine.fromBytes(...(await files()));
    direct.restoreState(state);
    out.resumed = [[...head, ...(await collect(direct.resume()))], want];
    out.stateBytes = state.length;
    direct.dispose();

    await worker.dispose();
    out.disposed = await name(worker.tokenize("x"));
    return out;
  });
  assert.match(r.abort, /^AbortError/);
  assert.equal(r.abortedAfter, 3);
  assert.match(r.badOption, /^InvalidOptionError: .*topP/);
  assert.match(r.badState, /^InvalidStateError/);
  assert.equal(r.loadTokens[0].length, 12);
  assert.deepEqual(r.loadTokens[0], r.loadTokens[1], "WorkerEngine.load: the packed model's tokens equal the unpacked one's");
  assert.equal(r.loadEvents[0], "manifest");
  assert.equal(r.loadEvents[1], "ready");
  assert.ok(r.loadEvents[2] > 0, "progress events crossed the boundary");
  assert.match(r.missing, /^NetworkError: .*404/);
  assert.deepEqual(r.resumed[0], r.resumed[1]);
  assert.match(r.disposed, /^EngineDisposedError/);
});

test("WorkerEngine has every Engine method and getter; startGeneration steps in the worker", async () => {
  const r = await page.evaluate(async () => {
    const own = (proto) => Object.getOwnPropertyNames(proto).filter((k) => k !== "constructor");
    const internal = ["free", "__destroy_into_raw"];
    const missing = own(pkg.Engine.prototype).filter((k) => !internal.includes(k) && !(k in WorkerEngine.prototype));
    const statics = Object.getOwnPropertyNames(pkg.Engine).filter((k) => typeof pkg.Engine[k] === "function" && !k.startsWith("__"));
    const missingStatic = statics.filter((k) => typeof WorkerEngine[k] !== "function");

    const direct = pkg.Engine.fromBytes(...(await files()));
    const worker = await WorkerEngine.fromBytes(...(await files()));
    const opts = { maxTokens: 6, ignoreEos: true };
    const steps = async (g) => {
      const ids = [];
      for (let t = await g.step(); t !== undefined; t = await g.step()) ids.push(t.tokenId);
      return { ids, finish: await g.finishReason?.() };
    };
    const g = direct.startGeneration("Once upon", opts);
    const d = [];
    for (let t = g.step(); t !== undefined; t = g.step()) d.push(t.tokenId);
    const events = [];
    worker.setEventListener((e) => events.push(e));
    const out = {
      missing,
      missingStatic,
      direct: d,
      worker: await steps(await worker.startGeneration("Once upon", opts)),
      modelVersion: worker.modelVersion,
      // Only engines made by `load` can update: a named error, through the worker.
      update: await worker.update("/none.json").then(() => "resolved", (e) => e.name),
      variant: worker.variant,
      threads: worker.threads,
    };
    direct.free();
    await worker.dispose();
    return out;
  });
  assert.deepEqual(r.missing, []);
  assert.deepEqual(r.missingStatic, []);
  assert.deepEqual(r.worker.ids, r.direct);
  assert.equal(r.worker.finish, "maxTokens");
  assert.equal(r.modelVersion, undefined);
  assert.equal(r.update, "InvalidOptionError");
  assert.ok(["single", "threads"].includes(r.variant) && r.threads >= 1);
});

test("backend webgpu in the worker: the GPU engine loads there and gives the CPU engine's tokens", async () => {
  const r = await page.evaluate(async () => {
    const url = "/tests/fixtures/tiny-packed/manifest.json";
    const opts = { maxTokens: 16, ignoreEos: true };
    const cpu = await pkg.Engine.load(url, { backend: "wasm", cache: "none" });
    const gpu = await WorkerEngine.load(url, { backend: "webgpu", cache: "none" });
    const messages = [{ role: "user", content: "Hi!" }];
    const out = {
      greedy: [await collect(cpu.generate("Once upon", opts)), await collect(gpu.generate("Once upon", opts))],
      chat: [await collect(cpu.chat(messages, opts)), await collect(gpu.chat(messages, opts))],
      stats: await gpu.stats(),
    };
    cpu.dispose();
    await gpu.dispose();
    return out;
  });
  assert.equal(r.stats.backend, "webgpu", JSON.stringify(r.stats));
  for (const k of ["greedy", "chat"]) assert.deepEqual(r[k][1], r[k][0], k);
  assert.equal(r.greedy[0].length, 16);
});
