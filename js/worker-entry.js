// Runs inside the dedicated Worker that `edge-llm/worker` starts: owns the wasm module and one
// Engine, and answers the proxy's messages. Copied into pkg/ by scripts/build-pkg.sh.
//
// Protocol (structured clone): the proxy sends `{ id, op, args }`; the worker answers
// `{ id, ok: true, value }` or `{ id, ok: false, error: { name, message } }`, and for a call
// given `progress: true`, `{ id, progress: event }` messages before its answer.
// `op` is an Engine method, a factory (`fromBytes`, `fromPacked`, `load`), or one of the
// stream ops `next` / `return` / `abort` on a stream id that `generate` / `chat` / `resume` returned.
import init, { Engine, gpuInfo, version } from "./edge_llm.js";

let engine;
let ready;
const streams = new Map(); // stream id -> { iterator, abort: AbortController }
let nextStream = 1;

const serializeError = (e) => ({
  name: (e && e.name) || "Error",
  message: (e && e.message) || String(e),
});

function startStream(make) {
  const abort = new AbortController();
  const iterator = make(abort.signal);
  const id = nextStream++;
  streams.set(id, { iterator, abort });
  return id;
}

const factories = {
  fromBytes: (onnx, tokenizer, config) => Engine.fromBytes(onnx, tokenizer, config),
  fromPacked: (manifest, files) => Engine.fromPacked(manifest, files),
  // The loader (`Engine.load`: shard fetch, IndexedDB cache, OTA) runs here too when the
  // package has it; its progress events and AbortSignal are marshalled by the proxy.
  load: (source, opts, signal, onProgress) => {
    if (typeof Engine.load !== "function") {
      const e = new Error("Engine.load is not in this build of edge-llm");
      e.name = "NotSupportedError";
      throw e;
    }
    return Engine.load(source, { ...opts, signal, onProgress });
  },
};

const pendingAborts = new Map(); // call id -> AbortController of an in-flight factory call

async function handle({ id, op, args = [], progress }) {
  await ready;
  if (op === "version") return version();
  if (op === "gpuInfo") return gpuInfo();
  if (op in factories) {
    if (engine) engine.dispose();
    const abort = new AbortController();
    pendingAborts.set(id, abort);
    const onProgress = progress ? (event) => postMessage({ id, progress: event }) : undefined;
    try {
      engine = await factories[op](...args, abort.signal, onProgress);
    } finally {
      pendingAborts.delete(id);
    }
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
      if (r.done) streams.delete(args[0]);
      return r;
    } catch (e) {
      streams.delete(args[0]);
      throw e;
    }
  }
  if (!engine) {
    const e = new Error("no model is loaded in the worker");
    e.name = "EngineDisposedError";
    throw e;
  }
  switch (op) {
    case "generate":
      return startStream((signal) => engine.generate(args[0], args[1], signal));
    case "chat":
      return startStream((signal) => engine.chat(args[0], args[1], signal));
    case "resume":
      return startStream((signal) => engine.resume(signal));
    case "dispose":
      for (const s of streams.values()) await s.iterator.return();
      streams.clear();
      engine.dispose();
      return undefined;
    case "disposed":
      return engine.disposed;
    case "tokenize":
    case "detokenize":
    case "applyChatTemplate":
    case "saveState":
    case "restoreState":
    case "clearState":
    case "stats":
      return engine[op](...args);
    default: {
      const e = new Error(`unknown operation ${op}`);
      e.name = "InvalidOptionError";
      throw e;
    }
  }
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  if (msg.op === "init") {
    ready = init(msg.wasm ? { module_or_path: msg.wasm } : undefined);
    try {
      await ready;
      postMessage({ id: msg.id, ok: true });
    } catch (e) {
      postMessage({ id: msg.id, ok: false, error: serializeError(e) });
    }
    return;
  }
  try {
    const value = await handle(msg);
    // The saved state's buffer is moved, not copied.
    const transfer = value instanceof Uint8Array ? [value.buffer] : [];
    postMessage({ id: msg.id, ok: true, value }, transfer);
  } catch (e) {
    postMessage({ id: msg.id, ok: false, error: serializeError(e) });
  }
};
