// Engine.load from Node (no DOM): the built package against the test model server, with the
// memory and file-system stores. The IndexedDB paths run in Chromium (browser-loader.test.mjs).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, mkdtempSync, readdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startModelServer, tinyPacked, variant, root } from "./model-server.mjs";

const pkg = await import(new URL("pkg/edge_llm.js", `file://${root}`));
pkg.initSync({ module: readFileSync(join(root, "pkg/edge_llm_bg.wasm")) });
const { Engine } = pkg;

const tiny = tinyPacked();
let srv;
before(async () => {
  srv = await startModelServer();
  srv.addModel("v1", tiny);
  srv.addModel("v2", variant(tiny, { version: "2.0.0" }));
  srv.addModel("nan", variant(tiny, { version: "2.0.0-nan", nan: true }));
  srv.addModel("future", variant(tiny, { edit: (m) => (m.min_runtime_version = "99.0.0") }));
});
after(() => srv.close());

const quick = { retries: 2 };
const greedy = async (engine) => {
  const ids = [];
  for await (const t of engine.generate("The capital of France", { maxTokens: 6, ignoreEos: true })) ids.push(t.tokenId);
  return ids;
};
const wantTokens = await (async () => {
  const fx = (f) => readFileSync(join(root, "tests/fixtures/tiny", f));
  const e = Engine.fromBytes(fx("model-int4.onnx"), fx("tokenizer.json"), fx("model_config.json"));
  const ids = await greedy(e);
  e.free();
  return ids;
})();

/// The progress contract: a tagged union, `loaded` never decreases, `total` never changes,
/// ends with `ready` at the total.
function checkProgress(events) {
  const total = Number(JSON.parse(tiny["manifest.json"]).total_bytes);
  let last = 0;
  for (const e of events.filter((e) => e.type === "progress")) {
    assert.equal(e.total, total);
    assert.ok(e.loaded >= last, `loaded went back: ${last} -> ${e.loaded}`);
    last = e.loaded;
  }
  assert.equal(events[0].type, "manifest");
  const end = events.at(-1);
  assert.equal(end.type, "ready");
  assert.equal(end.loaded, total);
  assert.equal(last, total);
}

test("Engine.load fetches, verifies and runs the packed model; progress keeps its contract", async () => {
  const events = [];
  const engine = await Engine.load(srv.url("v1"), { cache: "none", onProgress: (e) => events.push(e) });
  checkProgress(events);
  assert.equal(engine.modelVersion, "1.0.0");
  assert.deepEqual(await greedy(engine), wantTokens, "same tokens as the unpacked model");
  engine.free();
});

test("exactActivations: the float layers in f32 give the default's greedy tokens; a non-boolean is refused", async () => {
  const exact = await Engine.load(srv.url("v1"), { cache: "none", exactActivations: true });
  assert.deepEqual(await greedy(exact), wantTokens);
  exact.free();
  await assert.rejects(Engine.load(srv.url("v1"), { cache: "none", exactActivations: "yes" }), { name: "InvalidOptionError", message: /exactActivations/ });
});

test("gpuPrecision: \"f32\" and \"f16\" load (on the CPU, which has no GPU precision to report), anything else is refused", async () => {
  for (const gpuPrecision of ["f32", "f16"]) {
    const engine = await Engine.load(srv.url("v1"), { cache: "none", backend: "wasm", gpuPrecision });
    assert.equal(engine.stats().gpuPrecision, undefined, "no GPU precision on the CPU");
    assert.deepEqual(await greedy(engine), wantTokens);
    engine.free();
  }
  for (const gpuPrecision of ["f64", "F16", 16, true]) {
    await assert.rejects(Engine.load(srv.url("v1"), { cache: "none", gpuPrecision }), { name: "InvalidOptionError", message: /gpuPrecision/ });
  }
});

test("the fs store: cached shards are not fetched again, offline loads work, a corrupt entry is refetched", async () => {
  const dir = mkdtempSync(join(tmpdir(), "edge-llm-fs-"));
  try {
    const before = srv.shardRequests("v1");
    const e1 = await Engine.load(srv.url("v1"), { cache: "fs", cacheDir: dir });
    const files = JSON.parse(tiny["manifest.json"]).files;
    assert.equal(srv.shardRequests("v1") - before, files.length);
    assert.equal(readdirSync(join(dir, "shards")).length, files.length);
    e1.free();

    srv.state.offline = true;
    const events = [];
    const e2 = await Engine.load(srv.url("v1"), { cache: "fs", cacheDir: dir, onProgress: (e) => events.push(e) }).finally(() => (srv.state.offline = false));
    assert.equal(events[0].source, "cache", "manifest from the cache while offline");
    assert.equal(events.at(-1).fromCache, files.length);
    checkProgress(events);
    assert.deepEqual(await greedy(e2), wantTokens);
    e2.free();

    const listed = await pkg.listCachedModels(pkg.fsStore(dir));
    assert.equal(listed.length, 1);
    assert.equal(listed[0].modelVersion, "1.0.0");
    assert.equal(listed[0].complete, true);

    const victim = files.find((f) => f.role === "weights");
    writeFileSync(join(dir, "shards", victim.sha256), Buffer.from("not the shard"));
    const ev = [];
    const n = srv.requests("v1", victim.path);
    const e3 = await Engine.load(srv.url("v1"), { cache: "fs", cacheDir: dir, onProgress: (e) => ev.push(e) });
    assert.ok(ev.some((e) => e.type === "evicted" && e.file === victim.path));
    assert.equal(srv.requests("v1", victim.path), n + 1, "refetched once");
    assert.equal(readFileSync(join(dir, "shards", victim.sha256)).length, victim.bytes, "store repaired");
    e3.free();

    assert.equal(await pkg.deleteCachedModel(listed[0].modelId, undefined, pkg.fsStore(dir)), 1);
    assert.deepEqual(readdirSync(join(dir, "shards")), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("named errors: 404, integrity, incompatible model, backend, options", async () => {
  await assert.rejects(Engine.load(srv.url("missing"), { cache: "none", ...quick }), { name: "NetworkError", message: /HTTP 404/ });

  const shard = JSON.parse(tiny["manifest.json"]).files.find((f) => f.role === "weights");
  for (const mode of ["corrupt", "extend"]) {
    srv.fault("v1", shard.path, { mode }, { mode });
    await assert.rejects(Engine.load(srv.url("v1"), { cache: "none", ...quick }), (e) => {
      assert.equal(e.name, "IntegrityError", mode);
      assert.ok(e.message.includes(shard.path) && e.message.includes(shard.sha256), e.message);
      return true;
    });
  }
  srv.fault("v1", shard.path, { mode: "drop" }, { mode: "status", status: 503 });
  const retries = [];
  const e = await Engine.load(srv.url("v1"), { cache: "none", onProgress: (p) => p.type === "retry" && retries.push(p) });
  assert.equal(retries.length, 2, "a dropped connection and a 503 are retried");
  e.free();

  await assert.rejects(Engine.load(srv.url("future"), { cache: "none" }), { name: "IncompatibleModelError", message: /99\.0\.0/ });
  await assert.rejects(Engine.load(srv.url("v1"), { backend: "webgpu" }), { name: "UnsupportedBackendError", message: /webgpu/i });
  await assert.rejects(Engine.load(srv.url("v1"), { threads: 0 }), { name: "InvalidOptionError", message: /threads/ });
  await assert.rejects(Engine.load(srv.url("v1"), { cache: "indexeddb" }), { name: "InvalidOptionError", message: /IndexedDB/ });
  const warnings = [];
  const t = await Engine.load(srv.url("v1"), { cache: "memory", threads: 4, onProgress: (p) => p.type === "warning" && warnings.push(p) });
  assert.equal(warnings[0].name, "ThreadsUnavailable");
  t.free();
});

test("an AbortSignal stops a slow download with AbortError", async () => {
  const files = JSON.parse(tiny["manifest.json"]).files;
  for (const f of files) srv.fault("v2", f.path, { mode: "delay", ms: 200 });
  const ctl = new AbortController();
  const p = Engine.load(srv.url("v2"), { cache: "none", signal: ctl.signal, onProgress: (e) => e.type === "progress" && ctl.abort() });
  await assert.rejects(p, { name: "AbortError" });
  srv.clearFaults();
});

test("OTA: a bad update (NaN logits) is rolled back to the previous version from the store", async () => {
  const engine = await Engine.load(srv.url("v1"), { cache: "memory" });
  for (let i = 0; i < 3; i++) assert.deepEqual(await greedy(engine), wantTokens);
  const events = [];
  const rolledBack = new Promise((resolve) =>
    engine.setEventListener((e) => {
      events.push(e);
      if (e.type === "rollback" || e.type === "rollbackFailed") resolve(e);
    }),
  );
  const r = await engine.update(srv.url("nan"), { window: 10 });
  // 3 outcomes are too few to measure 1.0.0's rate: the baseline is the unmeasured 5 %, and
  // the window of 10 is judged over 20, so the third error in a row (> 10 %) rolls back.
  assert.deepEqual(r, { updated: true, from: "1.0.0", to: "2.0.0-nan", baseline: 0.05 });
  assert.equal(engine.modelVersion, "2.0.0-nan");
  const v1Requests = srv.shardRequests("v1");
  for (let i = 0; i < 3; i++) await assert.rejects(greedy(engine), { name: "InferenceError", message: /NaN/ });
  const rb = await rolledBack;
  assert.equal(rb.type, "rollback", JSON.stringify(rb));
  assert.deepEqual([rb.from, rb.to, rb.errors, rb.samples], ["2.0.0-nan", "1.0.0", 3, 3]);
  assert.ok(rb.errorRate > rb.baseline + 0.05);
  assert.equal(engine.modelVersion, "1.0.0");
  assert.equal(srv.shardRequests("v1"), v1Requests, "the previous version came from the store");
  assert.deepEqual(await greedy(engine), wantTokens);
  assert.deepEqual(events.map((e) => e.type), ["updated", "rollback"]);
  // The rolled-back version is remembered in the store: not tried again, also after a reload.
  const n0 = srv.log.length;
  assert.deepEqual(await engine.update(srv.url("nan")), { updated: false, from: "1.0.0", to: "2.0.0-nan", rolledBack: true });
  assert.deepEqual(srv.log.slice(n0), ["nan/manifest.json"]);
  const reloaded = await Engine.load(srv.url("v1"), { cache: "memory" });
  assert.equal((await reloaded.update(srv.url("nan"))).rolledBack, true);
  reloaded.free();
  const n = srv.log.length;
  assert.deepEqual(await engine.update(srv.url("v1")), { updated: false, from: "1.0.0", to: "1.0.0" });
  assert.deepEqual(srv.log.slice(n), ["v1/manifest.json"], "the same version: only its manifest is fetched");

  const ok = await engine.update(srv.url("v2"), { window: 10, probation: 5 });
  assert.equal(ok.to, "2.0.0");
  for (let i = 0; i < 5; i++) await greedy(engine);
  assert.deepEqual(events.map((e) => e.type), ["updated", "rollback", "updated", "updateConfirmed"]);
  engine.free();
});

test("dispose() during update(): the update fails with EngineDisposedError and does not bring the engine back", async () => {
  const engine = await Engine.load(srv.url("v1"), { cache: "none" });
  const p = engine.update(srv.url("v2"));
  engine.dispose();
  await assert.rejects(p, { name: "EngineDisposedError" });
  assert.equal(engine.modelVersion, "1.0.0");
  await assert.rejects(greedy(engine), { name: "EngineDisposedError" });
  engine.free();
});

test("a stalled server: the read times out and is retried, timeoutMs ends the load, a fatal error cancels the rest", async () => {
  const files = JSON.parse(tiny["manifest.json"]).files;
  const shard = files.find((f) => f.role === "weights");
  // Headers and half the body, then silence: retried after idleTimeoutMs.
  srv.fault("v1", shard.path, { mode: "stall" });
  const retries = [];
  const e = await Engine.load(srv.url("v1"), { cache: "none", idleTimeoutMs: 300, onProgress: (p) => p.type === "retry" && retries.push(p) });
  assert.equal(retries.length, 1);
  assert.match(retries[0].reason, /no data for 300 ms/);
  assert.deepEqual(await greedy(e), wantTokens);
  e.free();

  // Every file stalls for ever and there is no idle limit: the deadline ends it.
  for (const f of files) srv.fault("v2", f.path, { mode: "stall", bytes: 0 });
  const t0 = Date.now();
  await assert.rejects(Engine.load(srv.url("v2"), { cache: "none", idleTimeoutMs: 0, timeoutMs: 800 }), { name: "TimeoutError" });
  assert.ok(Date.now() - t0 < 5000, `${Date.now() - t0} ms`);
  srv.clearFaults();

  // One file stalls for ever, another is a 404: the load fails on the 404 at once.
  const [a, b] = files.filter((f) => f.role !== "graph");
  srv.fault("v1", a.path, { mode: "stall", bytes: 0 });
  srv.fault("v1", b.path, { mode: "status", status: 404 });
  await assert.rejects(Engine.load(srv.url("v1"), { cache: "none", idleTimeoutMs: 0, concurrency: 4 }), { name: "NetworkError", message: /404/ });
  srv.clearFaults();
});

test("integrity pins the manifest, online and offline", async () => {
  const { createHash } = await import("node:crypto");
  const digest = createHash("sha256").update(tiny["manifest.json"]).digest();
  const sri = `sha256-${digest.toString("base64")}`;
  const e = await Engine.load(srv.url("v1"), { cache: "none", integrity: sri });
  const other = `sha256-${createHash("sha256").update("another manifest").digest("base64")}`;
  // An update pins its own manifest (or none): the first load's pin was for v1's.
  await assert.rejects(e.update(srv.url("v2"), { integrity: other }), { name: "IntegrityError" });
  const v2 = Buffer.from(await (await fetch(srv.url("v2"))).arrayBuffer());
  assert.equal((await e.update(srv.url("v2"), { integrity: `sha256-${createHash("sha256").update(v2).digest("base64")}` })).to, "2.0.0");
  e.free();
  const before = srv.shardRequests("v1");
  await assert.rejects(Engine.load(srv.url("v1"), { cache: "none", integrity: other }), { name: "IntegrityError" });
  assert.equal(srv.shardRequests("v1"), before, "refused before any shard");
  await assert.rejects(Engine.load(srv.url("v1"), { integrity: "md5-x" }), { name: "InvalidOptionError", message: /integrity/ });

  const dir = mkdtempSync(join(tmpdir(), "edge-llm-pin-"));
  try {
    (await Engine.load(srv.url("v1"), { cache: "fs", cacheDir: dir })).free();
    srv.state.offline = true;
    const pinned = await Engine.load(srv.url("v1"), { cache: "fs", cacheDir: dir, integrity: digest.toString("hex"), ...quick });
    pinned.free();
    await assert.rejects(Engine.load(srv.url("v1"), { cache: "fs", cacheDir: dir, integrity: other, retries: 0 }), { name: "NetworkError" });
  } finally {
    srv.state.offline = false;
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the fs store: orphaned shards and stale temp files are collected; names that are not SHA-256 are refused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "edge-llm-gc-"));
  try {
    const { mkdirSync, utimesSync, existsSync } = await import("node:fs");
    mkdirSync(join(dir, "shards"), { recursive: true });
    mkdirSync(join(dir, "models"), { recursive: true });
    const orphan = "ab".repeat(32);
    writeFileSync(join(dir, "shards", orphan), "an aborted load's shard");
    const stale = join(dir, "shards", `${orphan}.1-x.tmp`);
    writeFileSync(stale, "a killed write");
    utimesSync(stale, new Date(0), new Date(0));
    const fresh = join(dir, "shards", `${orphan}.2-y.tmp`);
    writeFileSync(fresh, "a write in progress elsewhere");
    (await Engine.load(srv.url("v1"), { cache: "fs", cacheDir: dir })).free();
    assert.ok(!existsSync(join(dir, "shards", orphan)), "the orphan is collected after the load");
    assert.ok(!existsSync(stale) && existsSync(fresh), "only stale temp files go");
    assert.equal(await pkg.collectGarbage(pkg.fsStore(dir)), 0);

    // A planted record naming a path outside the cache: deleting it deletes nothing there.
    const victim = join(dir, "victim.txt");
    writeFileSync(victim, "keep me");
    writeFileSync(join(dir, "models", "evil.json"), JSON.stringify({ key: "evil@1", modelSha256: "", modelId: "evil", modelVersion: "1", manifestJson: "{}", shards: ["../victim.txt"], totalBytes: 1, storedAt: 0 }));
    assert.equal(await pkg.deleteCachedModel("evil", undefined, pkg.fsStore(dir)), 1);
    assert.ok(existsSync(victim));
    const store = pkg.fsStore(dir);
    for (const op of [() => store.get("../victim.txt"), () => store.delete("../victim.txt"), () => store.put("x", new Uint8Array(1))]) {
      await assert.rejects(op(), { name: "StoreError" });
    }
    assert.ok(existsSync(victim));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
