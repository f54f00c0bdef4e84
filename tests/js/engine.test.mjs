// The built npm package (pkg/, wasm-pack --target web) used from Node without any DOM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const root = new URL("../../", import.meta.url);
const pkg = await import(new URL("pkg/edge_llm.js", root));
pkg.initSync({ module: readFileSync(new URL("pkg/edge_llm_bg.wasm", root)) });
const fixture = (f) => readFileSync(new URL(`tests/fixtures/tiny/${f}`, root));
const load = (variant = "model-fp32.onnx") =>
  pkg.Engine.fromBytes(fixture(variant), fixture("tokenizer.json"), fixture("model_config.json"));

test("version matches Cargo.toml", () => {
  const cargo = readFileSync(new URL("Cargo.toml", root), "utf8");
  assert.equal(pkg.version(), /^version = "(.*)"$/m.exec(cargo)[1]);
});

test("streams whole characters that concatenate to the decode", async () => {
  const engine = load("model-int4.onnx");
  const ids = [];
  const deltas = [];
  for await (const tok of engine.generate("Café 東京 🙂", { maxTokens: 20, temperature: 1, seed: 3 })) {
    assert.equal(typeof tok.tokenId, "number");
    ids.push(tok.tokenId);
    deltas.push(tok.text);
  }
  assert.ok(ids.length > 0);
  // Only the final flush may carry U+FFFD (bytes of a character the generation never finished).
  assert.ok(deltas.slice(0, -1).every((d) => !d.includes("\ufffd")), "a delta split a character");
  const text = deltas.join("");
  const eos = JSON.parse(fixture("model_config.json")).eos_token_ids;
  const textIds = ids.filter((i) => !eos.includes(i));
  assert.equal(text, engine.detokenize(Uint32Array.from(textIds)).replace(/<\|[a-z_]+\|>/g, ""));
  engine.free();
});

test("same seed gives the same tokens; greedy ignores the seed", async () => {
  const engine = load("model-int8.onnx");
  const run = async (opts) => {
    const out = [];
    for await (const t of engine.generate("The capital of France", opts)) out.push(t.tokenId);
    return out;
  };
  assert.deepEqual(await run({ maxTokens: 8, temperature: 0.8, seed: 11 }), await run({ maxTokens: 8, temperature: 0.8, seed: 11 }));
  assert.deepEqual(await run({ maxTokens: 8, seed: 1 }), await run({ maxTokens: 8, seed: 2 }));
  engine.free();
});

test("abort signal stops a generation with AbortError", async () => {
  const engine = load();
  const ctl = new AbortController();
  let n = 0;
  await assert.rejects(
    (async () => {
      for await (const _ of engine.generate("Hello", { maxTokens: 50, ignoreEos: true }, ctl.signal)) {
        if (++n === 3) ctl.abort();
      }
    })(),
    { name: "AbortError" },
  );
  assert.equal(n, 3);
  engine.free();
});

test("bad input gives named errors", () => {
  assert.throws(() => pkg.Engine.fromBytes(new Uint8Array([1, 2, 3]), fixture("tokenizer.json"), fixture("model_config.json")), {
    name: "IncompatibleModelError",
  });
  const engine = load();
  assert.throws(() => engine.startGeneration("hi", { topP: 2 }), { name: "InvalidOptionError", message: /topP/ });
  assert.throws(() => engine.startGeneration("hi", { maxTokens: "many" }), { name: "InvalidOptionError" });
  engine.free();
});

test("chat template renders ChatML", () => {
  const engine = load();
  const s = engine.applyChatTemplate([{ role: "user", content: "Hi" }]);
  assert.match(s, /<\|im_start\|>user\nHi<\|im_end\|>\n<\|im_start\|>assistant\n$/);
  engine.free();
});
