// Run by tests/js/install.test.mjs inside a temp project where the packed tarball is installed:
// the package's options, errors and OpenAI-style API as a user imports them. Prints
// `{ failures: [...] }` as JSON; argv[2] is the tiny model's manifest URL.
import assert from "node:assert/strict";
import init, { Engine, EdgeLlmError, InvalidOptionError, IntegrityError, ERROR_NAMES } from "edge-llm-wasm";
import { loadEdgeLlm } from "edge-llm-wasm/auto";

const failures = [];
async function check(name, f) {
  try {
    await f();
  } catch (e) {
    failures.push(`${name}: ${e.stack ?? e}`);
  }
}

async function rejects(f, option) {
  let error;
  try {
    await f();
  } catch (e) {
    error = e;
  }
  assert.ok(error, `no error (expected InvalidOptionError for \`${option}\`)`);
  assert.equal(error.name, "InvalidOptionError", error.message);
  assert.equal(error.option, option, error.message);
  assert.ok(error instanceof InvalidOptionError && error instanceof EdgeLlmError && !(error instanceof IntegrityError));
  return error;
}

await init();
const url = process.argv[2];
const engine = await Engine.load(url, { cache: "none" });
const messages = [{ role: "user", content: "Hello!" }];

await check("unknown options are rejected by name in every API", async () => {
  const e = await rejects(() => engine.chat(messages, { max_tokens: 64 }), "max_tokens");
  assert.match(e.message, /did you mean `maxTokens`/);
  await rejects(() => engine.generate("Hi", { maxTokens: 4, temprature: 1 }), "temprature");
  await rejects(() => engine.startGeneration("Hi", { topk: 3 }), "topk");
  await rejects(() => engine.chat.completions.create({ messages, maxTokens: 4 }), "maxTokens");
  await rejects(() => Engine.load(url, { cache: "none", onprogress: () => {} }), "onprogress");
  await rejects(() => engine.update(url, { windowSize: 3 }), "windowSize");
  await rejects(() => engine.chat(messages, { maxTokens: "many" }), "maxTokens");
  await rejects(() => loadEdgeLlm({ build: "fast" }), "build");
});

await check("the manifest's generation defaults apply when the caller gives none", async () => {
  // install.test.mjs serves the tiny model with max_new_tokens 32; ignoreEos runs to the limit.
  const manifest = await (await fetch(url)).json();
  assert.equal(manifest.generation.max_new_tokens, 32);
  let n = 0;
  for await (const _ of engine.chat(messages, { ignoreEos: true })) n++;
  assert.equal(n, manifest.generation.max_new_tokens);
  assert.equal(engine.stats().generatedTokens, manifest.generation.max_new_tokens);
});

await check("OpenAI-style streaming: deltas, then finish_reason and usage", async () => {
  const chunks = [];
  for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 6, stream_options: { include_usage: true } })) chunks.push(c);
  const last = chunks.at(-1);
  const finish = chunks.at(-2);
  assert.deepEqual(last.choices, []);
  assert.equal(finish.choices[0].finish_reason === "length" || finish.choices[0].finish_reason === "stop", true);
  assert.deepEqual(last.usage, finish.usage);
  assert.equal(finish.usage.total_tokens, finish.usage.prompt_tokens + finish.usage.completion_tokens);
  assert.ok(finish.usage.completion_tokens <= 6);
  const deltas = chunks.slice(0, -2);
  assert.equal(deltas[0].choices[0].delta.role, "assistant");
  for (const c of chunks) assert.equal(c.object, "chat.completion.chunk");
  // The same text as the native stream.
  let native = "";
  for await (const t of engine.chat(messages, { maxTokens: 6 })) native += t.text;
  assert.equal(deltas.map((c) => c.choices[0].delta.content).join(""), native);
});

await check("OpenAI-style non-streaming: a chat.completion object; max_tokens gives finish_reason length", async () => {
  // A stop string the reply never holds (the tiny model's greedy reply is "\n\n\n…"): the
  // generation ends at max_tokens.
  const c = await engine.chat.completions.create({ messages, max_tokens: 3, stop: ["<never>"], seed: 1, temperature: 0, top_p: 1 });
  assert.equal(c.object, "chat.completion");
  assert.equal(c.choices[0].message.role, "assistant");
  assert.equal(typeof c.choices[0].message.content, "string");
  assert.equal(c.usage.completion_tokens, engine.stats().generatedTokens);
  assert.equal(c.usage.completion_tokens, 3);
  assert.equal(c.choices[0].finish_reason, "length");
  const stopped = await engine.chat.completions.create({ messages, max_tokens: 8, stop: ["\n\n"], temperature: 0 });
  assert.equal(stopped.choices[0].finish_reason, "stop");
  assert.ok(!stopped.choices[0].message.content.includes("\n\n"), "the stop string is not in the reply");
  const ac = new AbortController();
  ac.abort(new Error("stop now"));
  await assert.rejects(engine.chat.completions.create({ messages }, { signal: ac.signal }), /stop now/);
});

await check("error names are exported as a list and as classes", async () => {
  assert.ok(ERROR_NAMES.includes("InvalidOptionError"));
  const e = new InvalidOptionError("x", { option: "y" });
  assert.equal(e.name, "InvalidOptionError");
  assert.equal(e.option, "y");
  assert.ok(e instanceof Error);
});

engine.free();
console.log(JSON.stringify({ failures }));
