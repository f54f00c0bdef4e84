/** Whether this page can run the threaded build (COOP/COEP sent, SharedArrayBuffer present). */
export function threadsAvailable(): boolean;
/** The default CPU thread count: `navigator.hardwareConcurrency - 1`, at least 1. */
export function defaultThreads(): number;
export interface LoadOptions {
  /** Threads in all, the calling one included (default `defaultThreads()`). */
  threads?: number;
  /** "auto" (default): threaded when `threads > 1` and the page is cross-origin isolated;
   * "threads": threaded whenever isolated, even at 1 thread; "single": never threaded. */
  build?: "auto" | "threads" | "single";
  /** What the chosen build's `init` takes as `module_or_path` (default: the `.wasm` next to it). */
  wasm?: RequestInfo | URL | Response | BufferSource | WebAssembly.Module;
}
export interface Loaded {
  edge: typeof import("./index.js");
  /** CPU threads in effect. */
  threads: number;
  variant: "threads" | "single";
}
/** Load edge-llm (the threaded build where possible) and start its CPU threads. */
export function loadEdgeLlm(options?: LoadOptions): Promise<Loaded>;
