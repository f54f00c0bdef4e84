// `edge-llm-wasm/worker`: the Engine API on the main thread, with the model running in a
// dedicated Worker, so loading and generation never block the page. Copied into pkg/ by
// scripts/build-pkg.sh (beside worker-entry.js, which runs inside the Worker).
//
//   import { WorkerEngine } from "edge-llm-wasm/worker";
//   const engine = await WorkerEngine.load("/models/smollm2/manifest.json");
//   for await (const { text } of engine.chat(messages, { maxTokens: 64 }, signal)) ...
//
// Every Engine method and event is here, returning promises (`await` works the same on both);
// `generate` / `chat` / `resume` return async iterators as `Engine`'s do, and `chat` carries
// the same `completions.create`. Errors keep their `name` (and `option`, `needed`, `available`)
// across the boundary; an AbortSignal aborts the call in the worker. On a cross-origin isolated
// page the worker runs the threaded build (js/auto.js picks it).
import { completions } from "./chat.js";

// The fields an error carries across the boundary besides name and message.
const ERROR_FIELDS = ["option", "needed", "available"];

function remoteError(error) {
  const e = new Error(error.message);
  e.name = error.name;
  for (const k of ERROR_FIELDS) if (error[k] !== undefined) e[k] = error[k];
  return e;
}

function abortReason(signal) {
  return signal.reason ?? new DOMException("generation aborted", "AbortError");
}

export class WorkerEngine {
  #worker;
  #calls = new Map(); // id -> { resolve, reject, onProgress }
  #nextId = 1;
  #closed = false;
  #listener;
  #info = { modelId: undefined, modelVersion: undefined };
  #threads = 1;
  #variant = "single";
  #simd = "simd128";
  #chat;

  /** @param {Worker} worker  a Worker running `worker-entry.js` */
  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = (ev) => {
      const { id, ok, value, error, progress, event, info } = ev.data;
      if (event !== undefined) {
        this.#info = info;
        this.#listener?.(event);
        return;
      }
      const call = this.#calls.get(id);
      if (!call) return;
      if (progress !== undefined) {
        call.onProgress?.(progress);
        return;
      }
      this.#calls.delete(id);
      if (info !== undefined) this.#info = info;
      if (ok) call.resolve(value);
      else call.reject(remoteError(error));
    };
    worker.onerror = (ev) => {
      const err = remoteError({ name: "WorkerError", message: ev.message || "the worker failed" });
      for (const c of this.#calls.values()) c.reject(err);
      this.#calls.clear();
    };
  }

  /**
   * Start a worker and initialise the wasm module in it: the threaded build where the page is
   * cross-origin isolated and `threads` (default `navigator.hardwareConcurrency - 1`) > 1, its
   * relaxed-SIMD twin where the engine has relaxed SIMD (`simd`, as `loadEdgeLlm`'s).
   * @param {{ worker?: Worker, wasm?: string | URL, threads?: number, build?: "auto" | "threads" | "single", simd?: "auto" | "relaxed" | "simd128" }} [options]
   */
  static async create(options = {}) {
    for (const k of Object.keys(options)) {
      if (!["worker", "wasm", "threads", "build", "simd"].includes(k)) throw remoteError({ name: "InvalidOptionError", message: `unknown worker option \`${k}\``, option: k });
    }
    const worker = options.worker ?? new Worker(new URL("./worker-entry.js", import.meta.url), { type: "module" });
    const engine = new WorkerEngine(worker);
    const { threads, variant, simd } = await engine.#call("init", [
      { wasm: options.wasm === undefined ? undefined : String(options.wasm), threads: options.threads, build: options.build, simd: options.simd },
    ]);
    engine.#threads = threads;
    engine.#variant = variant;
    engine.#simd = simd;
    return engine;
  }

  /** `Engine.fromBytes` in a new worker. The arrays are moved to the worker (detached here). */
  static async fromBytes(onnx, tokenizerJson, configJson, options) {
    const e = await WorkerEngine.create(options);
    await e.#call("fromBytes", [onnx, tokenizerJson, configJson], {}, [onnx.buffer, tokenizerJson.buffer, configJson.buffer]);
    return e;
  }

  /** `Engine.fromPacked` in a new worker. The file arrays are moved to the worker. */
  static async fromPacked(manifestBytes, files, options) {
    const e = await WorkerEngine.create(options);
    await e.#call("fromPacked", [manifestBytes, files], {}, [...files.values()].map((f) => f.buffer));
    return e;
  }

  /**
   * `Engine.load(urlOrManifest, opts)` in a new worker: `opts.onProgress` and `opts.onEvent` are
   * called here with the worker's progress and engine events, `opts.signal` aborts the load there.
   */
  static async load(source, opts = {}, options) {
    const { onProgress, onEvent, signal, ...rest } = opts ?? {};
    const e = await WorkerEngine.create(options);
    e.#listener = onEvent;
    signal?.throwIfAborted();
    await e.#call("load", [source instanceof URL ? String(source) : source, rest], { onProgress, signal });
    return e;
  }

  #call(op, args, { onProgress, signal } = {}, transfer = []) {
    if (this.#closed) return Promise.reject(remoteError({ name: "EngineDisposedError", message: "the engine was disposed" }));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#calls.set(id, { resolve, reject, onProgress });
      if (signal) {
        signal.addEventListener("abort", () => this.#worker.postMessage({ id: this.#nextId++, op: "abortCall", args: [id] }), { once: true });
      }
      this.#worker.postMessage({ id, op, args, progress: onProgress !== undefined }, transfer);
    });
  }

  #stream(op, args, signal) {
    const started = this.#call(op, args);
    let streamId;
    let done = false;
    const onAbort = () => {
      if (streamId !== undefined && !done) this.#call("abort", [streamId]).catch(() => {});
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const finish = async () => {
      if (done) return;
      done = true;
      signal?.removeEventListener("abort", onAbort);
      if (streamId !== undefined) await this.#call("return", [streamId]).catch(() => {});
    };
    const it = {
      /** Why the generation ended, once it has (as `Engine`'s streams). */
      finishReason: undefined,
      [Symbol.asyncIterator]() {
        return this;
      },
      next: async () => {
        if (done) return { done: true, value: undefined };
        try {
          streamId ??= await started;
          if (signal?.aborted) throw abortReason(signal);
          const { done: last, value, finishReason } = await this.#call("next", [streamId]);
          if (last) {
            done = true;
            it.finishReason = finishReason;
            signal?.removeEventListener("abort", onAbort);
          }
          return { done: last, value };
        } catch (e) {
          await finish();
          // The worker threw its own AbortError; the caller's reason wins, as with Engine.
          throw signal?.aborted ? abortReason(signal) : e;
        }
      },
      return: async () => {
        await finish();
        return { done: true, value: undefined };
      },
    };
    return it;
  }

  /** @returns {AsyncIterableIterator<import("./edge_llm.js").GeneratedToken>} */
  generate(prompt, opts, signal) {
    return this.#stream("generate", [prompt, opts], signal);
  }

  /** `chat(messages, opts, signal)` streams tokens; `chat.completions.create` is the OpenAI-style API. */
  get chat() {
    if (!this.#chat) {
      this.#chat = (messages, opts, signal) => this.#stream("chat", [messages, opts], signal);
      this.#chat.completions = completions(this, this.#chat);
    }
    return this.#chat;
  }

  resume(signal) {
    return this.#stream("resume", [], signal);
  }

  /** `Engine.startGeneration`: a generation driven step by step (each step a round trip). */
  async startGeneration(prompt, opts) {
    return new WorkerGeneration((op) => this.#call(op[0], op.slice(1)), await this.#call("startGeneration", [prompt, opts]));
  }

  async resumeGeneration() {
    return new WorkerGeneration((op) => this.#call(op[0], op.slice(1)), await this.#call("resumeGeneration", []));
  }

  /** `engine.update` in the worker: `opts.onProgress` is called here, `opts.signal` aborts there. */
  update(source, opts = {}) {
    const { onProgress, signal, ...rest } = opts ?? {};
    return this.#call("update", [source instanceof URL ? String(source) : source, rest], { onProgress, signal });
  }

  /** Receive engine events (`EngineEvent`: OTA updates, rollbacks); `undefined` removes it. */
  setEventListener(listener) {
    this.#listener = listener ?? undefined;
  }

  /** The running model version (`undefined` for engines not made by `load`). */
  get modelVersion() {
    return this.#info.modelVersion;
  }

  get modelId() {
    return this.#info.modelId;
  }

  /** CPU threads the worker's engine runs on. */
  get threads() {
    return this.#threads;
  }

  /** `"threads"` (the multi-threaded build) or `"single"`. */
  get variant() {
    return this.#variant;
  }

  /** `"relaxed"` (the relaxed-SIMD build) or `"simd128"`. */
  get simd() {
    return this.#simd;
  }

  tokenize(text) {
    return this.#call("tokenize", [text]);
  }
  detokenize(ids) {
    return this.#call("detokenize", [ids]);
  }
  applyChatTemplate(messages) {
    return this.#call("applyChatTemplate", [messages]);
  }
  saveState() {
    return this.#call("saveState", []);
  }
  /** The bytes are copied to the worker (pass `bytes.slice()` if you reuse a shared buffer). */
  restoreState(bytes) {
    return this.#call("restoreState", [bytes]);
  }
  clearState() {
    return this.#call("clearState", []);
  }
  stats() {
    return this.#call("stats", []);
  }
  version() {
    return this.#call("version", []);
  }
  gpuInfo() {
    return this.#call("gpuInfo", []);
  }

  /** Free the model and stop the worker; later calls reject with `EngineDisposedError`. */
  async dispose() {
    if (this.#closed) return;
    await this.#call("dispose", []).catch(() => {});
    this.#closed = true;
    this.#worker.terminate();
  }

  get disposed() {
    return this.#closed;
  }
}

/** A generation in the worker, stepped from here: `Generation`'s methods, returning promises. */
export class WorkerGeneration {
  #call;
  #id;
  constructor(call, id) {
    this.#call = call;
    this.#id = id;
  }
  /** The next token, or `undefined` when finished. */
  step() {
    return this.#call(["generationStep", this.#id]);
  }
  /** The same as `step()` (every step through the worker is a promise). */
  stepAsync() {
    return this.step();
  }
  /** Why the generation ended, or `undefined`. */
  finishReason() {
    return this.#call(["generationFinishReason", this.#id]);
  }
  /** Free it in the worker (a finished generation is freed by itself). */
  free() {
    return this.#call(["generationFree", this.#id]);
  }
}
