// Types of `edge-llm/worker` (js/worker.js): Engine's API, run in a dedicated Worker.
import type { ChatMessage, EngineStats, GenerateOptions, GeneratedToken, GpuInfo } from "./edge_llm.js";

export interface WorkerOptions {
  /** A Worker you started on `worker-entry.js` (e.g. with your bundler's worker syntax). */
  worker?: Worker;
  /** Where `edge_llm_bg.wasm` is, when not next to the module. */
  wasm?: string | URL;
}

/** Options the proxy forwards to `Engine.load` in the worker. */
export interface WorkerLoadOptions {
  /** Called on the main thread with each progress event the loader reports in the worker. */
  onProgress?: (event: unknown) => void;
  /** Aborts the load in the worker. */
  signal?: AbortSignal;
  [option: string]: unknown;
}

export declare class WorkerEngine {
  constructor(worker: Worker);
  static create(options?: WorkerOptions): Promise<WorkerEngine>;
  /** The arrays are transferred to the worker (detached here). */
  static fromBytes(onnx: Uint8Array, tokenizerJson: Uint8Array, configJson: Uint8Array, options?: WorkerOptions): Promise<WorkerEngine>;
  /** The file arrays are transferred to the worker (detached here). */
  static fromPacked(manifestBytes: Uint8Array, files: Map<string, Uint8Array>, options?: WorkerOptions): Promise<WorkerEngine>;
  /** `Engine.load` in the worker (`NotSupportedError` when this build has none). */
  static load(source: string | URL | object, opts?: WorkerLoadOptions, options?: WorkerOptions): Promise<WorkerEngine>;
  generate(prompt: string, opts?: GenerateOptions, signal?: AbortSignal): AsyncIterableIterator<GeneratedToken>;
  chat(messages: ChatMessage[], opts?: GenerateOptions, signal?: AbortSignal): AsyncIterableIterator<GeneratedToken>;
  resume(signal?: AbortSignal): AsyncIterableIterator<GeneratedToken>;
  tokenize(text: string): Promise<Uint32Array>;
  detokenize(ids: Uint32Array): Promise<string>;
  applyChatTemplate(messages: ChatMessage[]): Promise<string>;
  saveState(): Promise<Uint8Array>;
  restoreState(bytes: Uint8Array): Promise<void>;
  clearState(): Promise<void>;
  stats(): Promise<EngineStats>;
  version(): Promise<string>;
  gpuInfo(): Promise<GpuInfo | undefined>;
  /** Frees the model and terminates the worker; later calls reject with `EngineDisposedError`. */
  dispose(): Promise<void>;
  readonly disposed: boolean;
}
