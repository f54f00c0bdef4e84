// The built package (pkg/) in Deno: load the tiny model, generate, save and restore, and run
// the Worker proxy (Deno has module Workers), Engine.load with the fs store.
// `deno test --no-check --allow-read --allow-write tests/deno/`.
import init, { Engine } from "../../pkg/edge_llm.js";
import { WorkerEngine } from "../../pkg/worker.js";

const root = new URL("../../", import.meta.url);
await init({ module_or_path: await Deno.readFile(new URL("pkg/edge_llm_bg.wasm", root)) });
const fixture = (f) => Deno.readFile(new URL(`tests/fixtures/tiny/${f}`, root));
const files = async () => [await fixture("model-int4.onnx"), await fixture("tokenizer.json"), await fixture("model_config.json")];

function assertEquals(a, b, what) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: ${JSON.stringify(a)} != ${JSON.stringify(b)}`);
}

async function collect(iter, limit = Infinity) {
  const ids = [];
  for await (const t of iter) {
    ids.push(t.tokenId);
    if (ids.length === limit) break;
  }
  return ids;
}

Deno.test("generates, streams whole characters and stops at maxTokens", async () => {
  const engine = Engine.fromBytes(...(await files()));
  let text = "";
  const ids = [];
  for await (const t of engine.chat([{ role: "user", content: "Hello from Deno" }], { maxTokens: 12, ignoreEos: true })) {
    ids.push(t.tokenId);
    text += t.text;
  }
  assertEquals(ids.length, 12, "tokens");
  assertEquals(text, engine.detokenize(Uint32Array.from(ids)).replace(/<\|[a-z_]+\|>/g, ""), "text");
  engine.dispose();
});

Deno.test("saveState / restoreState resume with the uninterrupted tokens", async () => {
  const opts = { maxTokens: 10, temperature: 0.9, seed: 4, ignoreEos: true };
  const want = await collect(Engine.fromBytes(...(await files())).generate("Once upon", opts));
  const a = Engine.fromBytes(...(await files()));
  const head = await collect(a.generate("Once upon", opts), 4);
  const b = Engine.fromBytes(...(await files()));
  b.restoreState(a.saveState());
  assertEquals([...head, ...(await collect(b.resume()))], want, "resumed tokens");
});

Deno.test("the Worker proxy gives the same tokens", async () => {
  const direct = Engine.fromBytes(...(await files()));
  const worker = await WorkerEngine.fromBytes(...(await files()), { wasm: new URL("pkg/edge_llm_bg.wasm", root) });
  const opts = { maxTokens: 10, ignoreEos: true };
  assertEquals(await collect(worker.generate("Once upon", opts)), await collect(direct.generate("Once upon", opts)), "worker tokens");
  await worker.dispose();
  direct.dispose();
});

Deno.test("Engine.load from file URLs with the fs store, directly and through the Worker proxy", async () => {
  const manifest = new URL("tests/fixtures/tiny-packed/manifest.json", root).href;
  const cacheDir = await Deno.makeTempDir({ prefix: "edge-llm-deno-" });
  try {
    const events = [];
    const engine = await Engine.load(manifest, { cache: "fs", cacheDir, onProgress: (e) => events.push(e) });
    assertEquals(events.at(-1).type, "ready", "last progress event");
    // `auto` (the default) keeps Deno on the CPU without asking its WebGPU for an adapter (that
    // crashed Deno at exit, src/web/load.rs): no adapter was judged, so no reason is given.
    const stats = engine.stats();
    assertEquals([stats.backend, stats.backendReason ?? null], ["cpu-wasm-simd128", null], "auto in Deno");
    const opts = { maxTokens: 8, ignoreEos: true };
    const want = await collect(Engine.fromBytes(...(await files())).generate("Once upon", opts));
    // The packed fixture is the int4 tiny model: same tokens as the unpacked one.
    assertEquals(await collect(engine.generate("Once upon", opts)), want, "Engine.load tokens");
    engine.dispose();
    assertEquals(events.at(-1).fromCache, 0, "first load: nothing cached yet");
    // Second load: every file from the fs store, none from the network.
    const second = [];
    const again = await Engine.load(manifest, { cache: "fs", cacheDir, onProgress: (e) => second.push(e) });
    assertEquals([second.at(-1).fromNetwork > 0, second.at(-1).fromCache > 0], [false, true], "second load from the store");
    again.dispose();
    const seen = [];
    const worker = await WorkerEngine.load(manifest, { cache: "fs", cacheDir, onProgress: (e) => seen.push(e.type) }, { wasm: new URL("pkg/edge_llm_bg.wasm", root) });
    assertEquals(seen.at(-1), "ready", "worker progress");
    assertEquals(await collect(worker.generate("Once upon", opts)), want, "worker Engine.load tokens");
    await worker.dispose();
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});
