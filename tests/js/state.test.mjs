// Save / restore, stats and dispose through the built package in Node.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const root = new URL("../../", import.meta.url);
const pkg = await import(new URL("pkg/edge_llm.js", root));
pkg.initSync({ module: readFileSync(new URL("pkg/edge_llm_bg.wasm", root)) });
const fixture = (f) => readFileSync(new URL(`tests/fixtures/tiny/${f}`, root));
const load = (variant = "model-int4.onnx") =>
  pkg.Engine.fromBytes(fixture(variant), fixture("tokenizer.json"), fixture("model_config.json"));

async function collect(iter, limit = Infinity) {
  const ids = [];
  for await (const t of iter) {
    ids.push(t.tokenId);
    if (ids.length === limit) break;
  }
  return ids;
}

for (const [name, opts] of [
  ["greedy", { maxTokens: 12, ignoreEos: true }],
  ["seeded", { maxTokens: 12, ignoreEos: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 5 }],
]) {
  test(`restoreState continues a ${name} generation with the uninterrupted tokens`, async () => {
    const want = await collect(load().generate("Once upon a time", opts));
    const a = load();
    const head = await collect(a.generate("Once upon a time", opts), 4); // break: iterator freed
    const bytes = a.saveState();
    assert.ok(bytes instanceof Uint8Array);
    a.dispose();
    const b = load();
    b.restoreState(bytes);
    const tail = await collect(b.resume());
    assert.deepEqual([...head, ...tail], want);
    b.dispose();
  });
}

test("a second chat turn after restore reuses the cached prefix", async () => {
  const a = load();
  const first = [{ role: "user", content: "Hello there" }];
  let reply = "";
  for await (const t of a.chat(first, { maxTokens: 6 })) reply += t.text;
  const saved = a.saveState();
  const b = load();
  b.restoreState(saved);
  const second = [...first, { role: "assistant", content: reply }, { role: "user", content: "More?" }];
  const want = await collect(a.chat(second, { maxTokens: 6 }));
  const got = await collect(b.chat(second, { maxTokens: 6 }));
  assert.deepEqual(got, want);
  const s = b.stats();
  assert.ok(s.reusedPromptTokens > 0 && s.reusedPromptTokens < s.promptTokens, JSON.stringify(s));
  a.dispose();
  b.dispose();
});

test("corrupt, truncated and foreign states throw InvalidStateError and change nothing", async () => {
  const a = load();
  await collect(a.generate("Hello", { maxTokens: 3, ignoreEos: true }));
  const good = a.saveState();
  const flipped = good.slice();
  flipped[100] ^= 1;
  for (const bad of [good.subarray(0, good.length - 1), flipped, new Uint8Array(10), new TextEncoder().encode("EDGELLMS but not really")]) {
    assert.throws(() => a.restoreState(bad), { name: "InvalidStateError" });
  }
  assert.deepEqual(a.saveState(), good);
  const other = load("model-fp32.onnx");
  assert.throws(() => other.restoreState(good), { name: "InvalidStateError", message: /different model/ });
  a.dispose();
  other.dispose();
});

test("stats describe the engine and the last generation", async () => {
  const e = load();
  await collect(e.generate("The capital of France", { maxTokens: 8, ignoreEos: true }));
  const s = e.stats();
  assert.equal(s.backend, "cpu-wasm-simd128");
  assert.equal(s.kvCache, "folded"); // the in-place cache (cpu::attention)
  assert.equal(s.generatedTokens, 8);
  assert.equal(s.promptTokens, e.tokenize("The capital of France").length);
  assert.equal(s.contextTokens, s.promptTokens + 7);
  assert.ok(s.loadMs > 0 && s.timeToFirstTokenMs > 0 && s.prefillTokensPerS > 0 && s.decodeTokensPerS > 0, JSON.stringify(s));
  const bytes = ["model-int4.onnx", "tokenizer.json", "model_config.json"].reduce((n, f) => n + fixture(f).length, 0);
  assert.equal(s.modelBytes, bytes);
  assert.ok(s.wasmMemoryBytes > s.modelBytes);
  e.dispose();
});

test("after dispose every call throws EngineDisposedError", async () => {
  const e = load();
  const it = e.generate("Hello", { maxTokens: 10, ignoreEos: true });
  await it.next();
  e.dispose();
  assert.equal(e.disposed, true);
  await assert.rejects(it.next(), { name: "EngineDisposedError" });
  for (const call of [() => e.tokenize("x"), () => e.saveState(), () => e.stats(), () => e.generate("x"), () => e.restoreState(new Uint8Array(1))]) {
    assert.throws(call, { name: "EngineDisposedError" });
  }
  e.dispose(); // twice is fine
});
