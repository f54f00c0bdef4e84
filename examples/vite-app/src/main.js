// edge-llm-wasm in a Vite app, with a packed model in public/model/ (`edge-llm-pack pack`
// writes one). quickstart() is the npm README's browser quickstart, line for line
// (tests/js/install.test.mjs checks that, then runs this app from the installed tarball).
import init, { Engine } from "edge-llm-wasm";
import { InvalidOptionError } from "edge-llm-wasm";
import { WorkerEngine } from "edge-llm-wasm/worker";

async function quickstart() {
  await init();
  const engine = await Engine.load("/model/manifest.json");
  const chunks = await engine.chat.completions.create({ messages: [{ role: "user", content: "Hello!" }], stream: true });
  for await (const chunk of chunks) document.body.append(chunk.choices[0]?.delta.content ?? "");
  return engine;
}

const messages = [{ role: "user", content: "Hello from Vite" }];

// The same greedy tokens on the main thread and in the Worker (any build, any thread count).
async function tokens(engine) {
  const ids = [];
  let text = "";
  for await (const t of engine.chat(messages, { maxTokens: 16, ignoreEos: true })) {
    ids.push(t.tokenId);
    text += t.text;
  }
  return { ids, text };
}

async function completion(engine) {
  const c = await engine.chat.completions.create({ messages, max_tokens: 8 });
  return { content: c.choices[0].message.content, finish: c.choices[0].finish_reason, usage: c.usage };
}

async function rejected(f) {
  try {
    await f();
    return undefined;
  } catch (e) {
    return { name: e.name, option: e.option, isClass: e instanceof InvalidOptionError };
  }
}

async function main() {
  const before = document.body.textContent.length;
  const engine = await quickstart();
  const quickstartReply = document.body.textContent.slice(before);
  const direct = { ...(await tokens(engine)), completion: await completion(engine) };
  const unknownOption = await rejected(() => engine.chat(messages, { max_tokens: 64 }));
  // More than one thread: the threaded build where the page is isolated (the dev server and the
  // test's static server send COOP/COEP).
  const worker = await WorkerEngine.load("/model/manifest.json", {}, { threads: 2 });
  const inWorker = {
    ...(await tokens(worker)),
    completion: await completion(worker),
    variant: worker.variant,
    simd: worker.simd,
    threads: worker.threads,
    modelVersion: worker.modelVersion,
  };
  const workerUnknownOption = await rejected(() => worker.chat.completions.create({ messages, maxTokens: 8 }));
  await worker.dispose();
  engine.free();
  document.getElementById("status").textContent = "done";
  return { quickstartReply, direct, inWorker, unknownOption, workerUnknownOption, isolated: globalThis.crossOriginIsolated === true };
}

window.edgeLlmResult = main().catch((e) => ({ error: `${e.name}: ${e.message}\n${e.stack}` }));
