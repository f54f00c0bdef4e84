// Imports the package as an app would: the .wasm URL and the Worker are resolved by Vite.
import init, { Engine } from "edge-llm";
import { WorkerEngine } from "edge-llm/worker";

const bytes = async (f) => new Uint8Array(await (await fetch(`/${f}`)).arrayBuffer());
const files = async () => [await bytes("model-int4.onnx"), await bytes("tokenizer.json"), await bytes("model_config.json")];
const $ = (id) => document.getElementById(id);

async function run(engine) {
  const ids = [];
  let text = "";
  for await (const t of engine.chat([{ role: "user", content: "Hello from Vite" }], { maxTokens: 16, ignoreEos: true })) {
    ids.push(t.tokenId);
    text += t.text;
  }
  return { ids, text };
}

async function main() {
  await init();
  const direct = await run(Engine.fromBytes(...(await files())));
  const worker = await WorkerEngine.fromBytes(...(await files()));
  const inWorker = await run(worker);
  await worker.dispose();
  $("out").textContent = direct.text;
  $("status").textContent = "done";
  return { direct, inWorker };
}

window.edgeLlmResult = main().catch((e) => ({ error: `${e.name}: ${e.message}` }));
