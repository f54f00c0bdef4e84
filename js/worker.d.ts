// Types of `edge-llm-wasm/worker` (js/worker.js): Engine's API, run in a dedicated Worker.
import type {
  ChatMessage,
  EngineEvent,
  EngineStats,
  FinishReason,
  GenerateOptions,
  GeneratedToken,
  GpuInfo,
  LoadOptions,
  TokenStream,
  UpdateOptions,
  UpdateResult,
} from "./edge_llm.js";
import type { Chat } from "./chat.js";

export interface WorkerOptions {
  /** A Worker you started on `worker-entry.js` (e.g. with your bundler's worker syntax). */
  worker?: Worker;
  /** Where the chosen build's `edge_llm_bg.wasm` is, when not next to its module. */
  wasm?: string | URL;
  /** CPU threads in all (default `navigator.hardwareConcurrency - 1`); more than 1 runs the
   *  threaded build when the page is cross-origin isolated. */
  threads?: number;
  /** As `loadEdgeLlm`'s `build` (edge-llm-wasm/auto). */
  build?: "auto" | "threads" | "single";
  /** As `loadEdgeLlm`'s `simd` (edge-llm-wasm/auto). */
  simd?: "auto" | "relaxed" | "simd128";
}

/** `LoadOptions` as the proxy forwards them: the callbacks run here, the rest in the worker. */
export type WorkerLoadOptions = LoadOptions;

/** `Generation` in the worker, stepped from the main thread. */
export declare class WorkerGeneration {
  /** The next token, or `undefined` when finished (then freed in the worker). */
  step(): Promise<GeneratedToken | undefined>;
  /** The same as `step()`. */
  stepAsync(): Promise<GeneratedToken | undefined>;
  finishReason(): Promise<FinishReason | undefined>;
  free(): Promise<void>;
}

export declare class WorkerEngine {
  constructor(worker: Worker);
  static create(options?: WorkerOptions): Promise<WorkerEngine>;
  /** The arrays are transferred to the worker (detached here). */
  static fromBytes(onnx: Uint8Array, tokenizerJson: Uint8Array, configJson: Uint8Array, options?: WorkerOptions): Promise<WorkerEngine>;
  /** The file arrays are transferred to the worker (detached here). */
  static fromPacked(manifestBytes: Uint8Array, files: Map<string, Uint8Array>, options?: WorkerOptions): Promise<WorkerEngine>;
  /** `Engine.load` in the worker; `onProgress` / `onEvent` are called on this thread. */
  static load(source: string | URL | object | Uint8Array, opts?: WorkerLoadOptions, options?: WorkerOptions): Promise<WorkerEngine>;
  generate(prompt: string | Uint32Array | number[], opts?: GenerateOptions, signal?: AbortSignal): TokenStream;
  /** `chat(messages, opts, signal)` streams tokens; `chat.completions.create` is the OpenAI-style API. */
  readonly chat: Chat;
  resume(signal?: AbortSignal): TokenStream;
  startGeneration(prompt: string | Uint32Array | number[], opts?: GenerateOptions): Promise<WorkerGeneration>;
  resumeGeneration(): Promise<WorkerGeneration>;
  update(manifest: string | URL | object | Uint8Array, options?: UpdateOptions): Promise<UpdateResult>;
  setEventListener(listener: ((event: EngineEvent) => void) | undefined): void;
  readonly modelVersion: string | undefined;
  readonly modelId: string | undefined;
  /** CPU threads the worker's engine runs on. */
  readonly threads: number;
  /** Which build the worker runs. */
  readonly variant: "threads" | "single";
  /** Whether the worker's build runs relaxed SIMD. */
  readonly simd: "relaxed" | "simd128";
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
