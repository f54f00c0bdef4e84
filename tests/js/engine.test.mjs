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
  for await (const tok of engine.generate("Café 東京 🙂", { maxTokens: 20, temperature: 1, seed: 3, ignoreEos: true })) {
    assert.equal(typeof tok.tokenId, "number");
    ids.push(tok.tokenId);
    deltas.push(tok.text);
  }
  assert.equal(ids.length, 20);
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

test("a prompt given as token ids runs as given: the text's tokens, from a Uint32Array or an array", async () => {
  const engine = load("model-int4.onnx");
  const greedy = (prompt) => {
    const g = engine.startGeneration(prompt, { maxTokens: 8, ignoreEos: true });
    const out = [];
    for (let t = g.step(); t !== undefined; t = g.step()) out.push(t.tokenId);
    return out;
  };
  const text = "The capital of France is";
  const ids = engine.tokenize(text);
  assert.ok(ids.length > 3);
  const fromText = greedy(text);
  assert.equal(fromText.length, 8);
  assert.deepEqual(greedy(ids), fromText);
  assert.deepEqual(greedy(Array.from(ids)), fromText);
  const streamed = [];
  for await (const t of engine.generate(Array.from(ids), { maxTokens: 8, ignoreEos: true })) streamed.push(t.tokenId);
  assert.deepEqual(streamed, fromText);
  // Ids the model has no embedding for, and values that are no ids, are refused by name.
  const vocab = JSON.parse(fixture("model_config.json")).architecture.vocab_size;
  assert.throws(() => engine.startGeneration([1, vocab]), { name: "InvalidOptionError", message: new RegExp(`token id ${vocab} is outside the vocabulary`) });
  for (const bad of [[1, -1], [1, 2.5], [1, "2"], [], {}, 7]) {
    assert.throws(() => engine.startGeneration(bad), { name: "InvalidOptionError" }, JSON.stringify(bad));
  }
  engine.free();
});

test("chat template renders ChatML", () => {
  const engine = load();
  const s = engine.applyChatTemplate([{ role: "user", content: "Hi" }]);
  assert.match(s, /<\|im_start\|>user\nHi<\|im_end\|>\n<\|im_start\|>assistant\n$/);
  engine.free();
});

/// Drive a generation to its end: { ids, text, reason }.
function drive(engine, prompt, opts) {
  const g = engine.startGeneration(prompt, opts);
  const out = { ids: [], text: "" };
  for (let t; (t = g.step()); ) {
    out.ids.push(t.tokenId);
    out.text += t.text;
  }
  out.reason = g.finishReason();
  g.free();
  return out;
}

test("stopTokenIds ends on the first listed token (emitted last), stopStrings cut the text before the match", () => {
  const engine = load("model-int4.onnx");
  // Seeded sampling: deterministic, and varied enough to hold fresh tokens (greedy on the tiny model repeats one).
  const base = { maxTokens: 24, ignoreEos: true, temperature: 1, seed: 7 };
  const full = drive(engine, "The capital of France", base);
  assert.equal(full.ids.length, 24);
  assert.equal(full.reason, "maxTokens");
  // A token that first appears a few tokens in.
  const k = full.ids.findIndex((id, i) => i >= 3 && full.ids.indexOf(id) === i);
  assert.ok(k >= 3, `no fresh token after the third: ${full.ids}`);
  const byId = drive(engine, "The capital of France", { ...base, stopTokenIds: [full.ids[k]] });
  assert.deepEqual(byId.ids, full.ids.slice(0, k + 1));
  assert.equal(byId.reason, "eos");
  // A stop string from the middle of the text: the text ends right before its first match.
  const stop = full.text.slice(Math.floor(full.text.length / 2)).trim().slice(0, 3);
  assert.ok(stop.length === 3, `text too short: ${JSON.stringify(full.text)}`);
  const byString = drive(engine, "The capital of France", { ...base, stopStrings: ["\u0000never", stop] });
  assert.equal(byString.reason, "stopString");
  assert.equal(byString.text, full.text.slice(0, full.text.indexOf(stop)));
  assert.ok(byString.ids.length < full.ids.length);
  assert.deepEqual(byString.ids, full.ids.slice(0, byString.ids.length));
  engine.free();
});

test("ContextOverflowError: a prompt over the context, and a generation that runs into its end", async () => {
  const engine = load("model-int4.onnx");
  const max = JSON.parse(fixture("model_config.json")).architecture.max_position_embeddings;
  const words = (n) => Array.from({ length: n }, (_, i) => `w${i}`).join(" ");
  let text = words(10);
  while (engine.tokenize(text).length <= max) text += " " + words(10);
  assert.throws(() => engine.startGeneration(text, {}), { name: "ContextOverflowError", message: new RegExp(`maximum of ${max}`) });
  // A prompt that leaves room for a few tokens: exactly max - prompt + 1 come out, then the error.
  let prompt = words(4);
  while (engine.tokenize(prompt + " x").length < max - 5) prompt += " x";
  const p = engine.tokenize(prompt).length;
  const ids = [];
  await assert.rejects(
    (async () => {
      for await (const t of engine.generate(prompt, { maxTokens: 50, ignoreEos: true })) ids.push(t.tokenId);
    })(),
    { name: "ContextOverflowError" },
  );
  assert.equal(ids.length, max - p + 1, `prompt ${p} tokens, context ${max}`);
  engine.free();
});

test("StoreError: a custom cache store that fails is reported by name", async () => {
  const failing = {
    get: async () => undefined,
    put: async () => {},
    delete: async () => {},
    keys: async () => [],
    models: async () => {
      throw new Error("disk is gone");
    },
    putModel: async () => {},
    deleteModel: async () => {},
  };
  await assert.rejects(pkg.listCachedModels(failing), { name: "StoreError", message: /disk is gone/ });
  await assert.rejects(pkg.deleteCachedModel("edge-llm/tiny-llama", undefined, failing), { name: "StoreError", message: /disk is gone/ });
});
