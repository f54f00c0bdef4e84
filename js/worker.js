// `edge-llm/worker`: the Engine API on the main thread, with the model running in a dedicated
// Worker, so loading and generation never block the page. Copied into pkg/ by
// scripts/build-pkg.sh (beside worker-entry.js, which runs inside the Worker).
//
//   import { WorkerEngine } from "edge-llm/worker";
//   const engine = await WorkerEngine.fromPacked(manifestBytes, files);
//   for await (const { text } of engine.chat(messages, { maxTokens: 64 }, signal)) ...
//
// Methods are those of `Engine`, returning promises (`await` works the same on both);
// `generate` / `chat` / `resume` return async iterators as `Engine`'s do. Errors keep their
// `name` across the boundary; an AbortSignal aborts the generation in the worker.

function remoteError({ name, message }) {
  const e = new Error(message);
  e.name = name;
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

  /** @param {Worker} worker  a Worker running `worker-entry.js` */
  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = (ev) => {
      const { id, ok, value, error, progress } = ev.data;
      const call = this.#calls.get(id);
      if (!call) return;
      if (progress !== undefined) {
        call.onProgress?.(progress);
        return;
      }
      this.#calls.delete(id);
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
   * Start a worker and initialise the wasm module in it.
   * @param {{ worker?: Worker, wasm?: string | URL }} [options]  `worker`: one you started on
   *   `worker-entry.js` (e.g. with your bundler's worker syntax); `wasm`: where the .wasm is, when
   *   not next to the module.
   */
  static async create(options = {}) {
    const worker = options.worker ?? new Worker(new URL("./worker-entry.js", import.meta.url), { type: "module" });
    const engine = new WorkerEngine(worker);
    await engine.#call("init", [], { wasm: options.wasm === undefined ? undefined : String(options.wasm) });
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
   * `Engine.load(urlOrManifest, opts)` in a new worker: `opts.onProgress` is called here with the
   * worker's progress events, `opts.signal` aborts the load there. Needs a build with `Engine.load`
   * (else `NotSupportedError`).
   */
  static async load(source, opts = {}, options) {
    const { onProgress, signal, ...rest } = opts;
    const e = await WorkerEngine.create(options);
    signal?.throwIfAborted();
    await e.#call("load", [source instanceof URL ? String(source) : source, rest], { onProgress, signal });
    return e;
  }

  #call(op, args, { onProgress, signal, wasm } = {}, transfer = []) {
    if (this.#closed) return Promise.reject(remoteError({ name: "EngineDisposedError", message: "the engine was disposed" }));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#calls.set(id, { resolve, reject, onProgress });
      if (signal) {
        signal.addEventListener("abort", () => this.#worker.postMessage({ id: this.#nextId++, op: "abortCall", args: [id] }), { once: true });
      }
      this.#worker.postMessage({ id, op, args, wasm, progress: onProgress !== undefined }, transfer);
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
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      next: async () => {
        if (done) return { done: true, value: undefined };
        try {
          streamId ??= await started;
          if (signal?.aborted) throw abortReason(signal);
          const r = await this.#call("next", [streamId]);
          if (r.done) {
            done = true;
            signal?.removeEventListener("abort", onAbort);
          }
          return r;
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
  }

  /** @returns {AsyncIterableIterator<import("./edge_llm.js").GeneratedToken>} */
  generate(prompt, opts, signal) {
    return this.#stream("generate", [prompt, opts], signal);
  }

  /** @returns {AsyncIterableIterator<import("./edge_llm.js").GeneratedToken>} */
  chat(messages, opts, signal) {
    return this.#stream("chat", [messages, opts], signal);
  }

  /** @returns {AsyncIterableIterator<import("./edge_llm.js").GeneratedToken>} */
  resume(signal) {
    return this.#stream("resume", [], signal);
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
