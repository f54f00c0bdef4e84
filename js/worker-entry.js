// Runs inside the dedicated Worker that `edge-llm-wasm/worker` starts: owns the wasm module and
// one Engine, and answers the proxy's messages. Copied into pkg/ by scripts/build-pkg.sh.
//
// Protocol (structured clone): the proxy sends `{ id, op, args }`; the worker answers
// `{ id, ok: true, value }` or `{ id, ok: false, error: { name, message, option?, ... } }`, and
// for a call given `progress: true`, `{ id, progress: event }` messages before its answer.
// Engine events go out as `{ event, info }`; `info` ({ modelId, modelVersion }) also comes with
// the answers of the calls that change it. `op` is `init` (first), an Engine method, a factory
// (`fromBytes`, `fromPacked`, `load`), or a stream / generation op on an id that `generate` /
// `chat` / `resume` / `startGeneration` / `resumeGeneration` returned.
import { loadEdgeLlm } from "./auto.js";

let edge; // the module: index.js of the build auto.js picked
let engine;
let ready;
const streams = new Map(); // stream id -> { iterator, abort: AbortController }
const generations = new Map(); // generation id -> Generation
const finished = new Map(); // generation id -> finish reason, once it ended
let nextId = 1;

const serializeError = (e) => {
  const out = { name: (e && e.name) || "Error", message: (e && e.message) || String(e) };
  for (const k of ["option", "needed", "available"]) if (e && e[k] !== undefined) out[k] = e[k];
  return out;
};

function named(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

const info = () => ({ modelId: engine?.modelId, modelVersion: engine?.modelVersion });

function startStream(make) {
  const abort = new AbortController();
  const iterator = make(abort.signal);
  const id = nextId++;
  streams.set(id, { iterator, abort });
  return id;
}

function keep(generation) {
  const id = nextId++;
  generations.set(id, generation);
  return id;
}

const factories = {
  fromBytes: (onnx, tokenizer, config) => edge.Engine.fromBytes(onnx, tokenizer, config),
  fromPacked: (manifest, files) => edge.Engine.fromPacked(manifest, files),
  // The loader (shard fetch, IndexedDB cache, OTA) runs here too; its progress events and
  // AbortSignal are marshalled by the proxy.
  load: (source, opts, signal, onProgress) => edge.Engine.load(source, { ...opts, signal, onProgress }),
};

const pendingAborts = new Map(); // call id -> AbortController of an in-flight call

async function withAbort(id, progress, run) {
  const abort = new AbortController();
  pendingAborts.set(id, abort);
  const onProgress = progress ? (event) => postMessage({ id, progress: event }) : undefined;
  try {
    return await run(abort.signal, onProgress);
  } finally {
    pendingAborts.delete(id);
  }
}

async function handle({ id, op, args = [], progress }) {
  await ready;
  if (op === "version") return edge.version();
  if (op === "gpuInfo") return edge.gpuInfo();
  if (op in factories) {
    if (engine) engine.dispose();
    engine = undefined;
    engine = await withAbort(id, progress, (signal, onProgress) => factories[op](...args, signal, onProgress));
    engine.setEventListener((event) => postMessage({ event, info: info() }));
    return undefined;
  }
  if (op === "abortCall") {
    pendingAborts.get(args[0])?.abort();
    return undefined;
  }
  if (op === "next" || op === "return" || op === "abort") {
    const s = streams.get(args[0]);
    if (!s) return { done: true, value: undefined };
    if (op === "abort") {
      s.abort.abort();
      return undefined;
    }
    try {
      const r = op === "next" ? await s.iterator.next() : await s.iterator.return();
      if (r.done) {
        streams.delete(args[0]);
        return { done: true, value: undefined, finishReason: s.iterator.finishReason };
      }
      return r;
    } catch (e) {
      streams.delete(args[0]);
      throw e;
    }
  }
  if (op.startsWith("generation")) {
    const g = generations.get(args[0]);
    if (op === "generationFree") {
      generations.delete(args[0]);
      finished.delete(args[0]);
      g?.free();
      return undefined;
    }
    if (op === "generationFinishReason") return g ? g.finishReason() : finished.get(args[0]);
    if (!g) return undefined; // finished (and freed) already
    const t = await g.stepAsync();
    if (t === undefined) {
      // Freed at its end; its finish reason is kept until `free`.
      finished.set(args[0], g.finishReason());
      generations.delete(args[0]);
      g.free();
    }
    return t;
  }
  if (!engine) throw named("EngineDisposedError", "no model is loaded in the worker");
  switch (op) {
    case "generate":
      return startStream((signal) => engine.generate(args[0], args[1], signal));
    case "chat":
      return startStream((signal) => engine.chat(args[0], args[1], signal));
    case "resume":
      return startStream((signal) => engine.resume(signal));
    case "startGeneration":
      return keep(engine.startGeneration(args[0], args[1]));
    case "resumeGeneration":
      return keep(engine.resumeGeneration());
    case "update":
      return withAbort(id, progress, (signal, onProgress) => engine.update(args[0], { ...args[1], signal, onProgress }));
    case "dispose":
      for (const s of streams.values()) await s.iterator.return();
      streams.clear();
      for (const g of generations.values()) g.free();
      generations.clear();
      engine.dispose();
      return undefined;
    case "tokenize":
    case "detokenize":
    case "applyChatTemplate":
    case "saveState":
    case "restoreState":
    case "clearState":
    case "stats":
      return engine[op](...args);
    default:
      throw named("NotSupportedError", `unknown operation ${op}`);
  }
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  if (msg.op === "init") {
    const { wasm, threads, build, simd } = msg.args[0] ?? {};
    ready = loadEdgeLlm({ wasm, threads, build, simd }).then((loaded) => {
      edge = loaded.edge;
      return loaded;
    });
    try {
      const { threads: n, variant, simd: s } = await ready;
      postMessage({ id: msg.id, ok: true, value: { threads: n, variant, simd: s } });
    } catch (e) {
      postMessage({ id: msg.id, ok: false, error: serializeError(e) });
    }
    return;
  }
  try {
    const value = await handle(msg);
    // The saved state's buffer is moved, not copied.
    const transfer = value instanceof Uint8Array ? [value.buffer] : [];
    const changesInfo = msg.op in factories || msg.op === "update";
    postMessage({ id: msg.id, ok: true, value, ...(changesInfo ? { info: info() } : {}) }, transfer);
  } catch (e) {
    postMessage({ id: msg.id, ok: false, error: serializeError(e) });
  }
};
