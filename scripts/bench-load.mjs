// Load benchmark in headless Chromium: Engine.load cold (network from localhost, verify, store in
// IndexedDB, build) vs warm (IndexedDB, verify, build) vs the old fetch-everything + fromPacked,
// plus memory after each (`files ready`: the last shard verified and handed to wasm, before the
// engine is built). Usage: node scripts/bench-load.mjs [model dir under the repo] [runs]
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serve } from "./serve.mjs";

const model = process.argv[2] ?? "www/models/smollm2-int4";
const runs = Number(process.argv[3] ?? 3);
const server = await serve();
const base = `http://127.0.0.1:${server.address().port}`;
const url = `${base}/${model}/manifest.json`;
const profile = mkdtempSync(join(tmpdir(), "edge-llm-bench-"));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--no-first-run", "--disable-quic", "--js-flags=--expose-gc", "--enable-precise-memory-info"],
});

async function inFreshPage(fn, arg) {
  const page = await ctx.newPage();
  await page.goto(`${base}/package.json`);
  await page.evaluate(async () => {
    window.edge = await import("/pkg/edge_llm.js");
    await window.edge.default();
  });
  const out = await page.evaluate(fn, arg);
  await page.close();
  return out;
}

const measure = async ({ url, how }) => {
  const { Engine, wasmMemoryBytes } = window.edge;
  if (how === "cold") {
    await new Promise((ok) => {
      const r = indexedDB.deleteDatabase("edge-llm");
      r.onsuccess = r.onerror = r.onblocked = ok;
    });
  }
  let ready;
  let filesMs = 0;
  const t0 = performance.now();
  let engine;
  if (how === "fromPacked") {
    const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
    const m = JSON.parse(new TextDecoder().decode(bytes));
    const files = new Map();
    await Promise.all(m.files.map(async (f) => files.set(f.path, new Uint8Array(await (await fetch(new URL(f.path, url))).arrayBuffer()))));
    filesMs = performance.now() - t0;
    engine = Engine.fromPacked(bytes, files);
  } else {
    const onProgress = (e) => {
      if (e.type === "progress") filesMs = performance.now() - t0;
      if (e.type === "ready") ready = e;
    };
    engine = await Engine.load(url, { cache: "indexeddb", onProgress });
  }
  const ms = performance.now() - t0;
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setTimeout(r, 100));
    window.gc?.();
  }
  const out = { ms, filesMs, wasm: wasmMemoryBytes(), jsHeap: performance.memory?.usedJSHeapSize ?? 0, fromCache: ready?.fromCache ?? 0 };
  engine.free();
  return out;
};

const hashRate = async ({ url }) => {
  const m = await (await fetch(url)).json();
  const bufs = await Promise.all(m.files.map(async (f) => new Uint8Array(await (await fetch(new URL(f.path, url))).arrayBuffer())));
  const t0 = performance.now();
  for (const b of bufs) await crypto.subtle.digest("SHA-256", b);
  const ms = performance.now() - t0;
  return { ms, bytes: bufs.reduce((n, b) => n + b.length, 0) };
};

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const rows = {};
for (let i = 0; i < runs; i++) {
  for (const how of ["fromPacked", "cold", "warm"]) (rows[how] ??= []).push(await inFreshPage(measure, { url, how }));
}
const h = await inFreshPage(hashRate, { url });
console.log(`Engine.load benchmark, headless Chromium ${ctx.browser()?.version() ?? ""}, ${model}, median of ${runs}:`);
const mb = (b) => (b / 1e6).toFixed(1);
for (const [how, rs] of Object.entries(rows)) {
  console.log(
    `  ${how.padEnd(10)}  ${median(rs.map((r) => r.ms)).toFixed(0).padStart(6)} ms (files ready at ${median(rs.map((r) => r.filesMs)).toFixed(0)} ms)   wasm memory ${mb(median(rs.map((r) => r.wasm)))} MB   JS heap after load ${mb(median(rs.map((r) => r.jsHeap)))} MB   files from cache ${rs[0].fromCache}`,
  );
}
console.log(`  WebCrypto SHA-256 over all files: ${h.ms.toFixed(0)} ms for ${mb(h.bytes)} MB (${(h.bytes / 1e6 / (h.ms / 1000)).toFixed(0)} MB/s)`);
await ctx.close();
server.close();
rmSync(profile, { recursive: true, force: true });
