/** Whether this page can run the threaded build (COOP/COEP sent, SharedArrayBuffer present). */
export function threadsAvailable(): boolean;
/** Whether this engine has WebAssembly relaxed SIMD whose dot product gives the standard's result
 * (the relaxed-SIMD builds validate and compute right here; Node 20's pre-standard flagged one
 * does not). */
export function relaxedSimdAvailable(): boolean;
/** The default CPU thread count: `navigator.hardwareConcurrency - 1`, at least 1. */
export function defaultThreads(): number;
export interface LoadOptions {
  /** Threads in all, the calling one included (default `defaultThreads()`). */
  threads?: number;
  /** "auto" (default): threaded when `threads > 1` and the page is cross-origin isolated;
   * "threads": threaded whenever isolated, even at 1 thread; "single": never threaded. */
  build?: "auto" | "threads" | "single";
  /** "auto" (default): the relaxed-SIMD build where `relaxedSimdAvailable()` and no `wasm` is
   * given (a `wasm` is then taken to be a SIMD128 build's); "relaxed": that build or a
   * `NotSupportedError`; "simd128": the plain SIMD128 build. */
  simd?: "auto" | "relaxed" | "simd128";
  /** What the chosen build's `init` takes as `module_or_path` (default: the `.wasm` next to it). */
  wasm?: RequestInfo | URL | Response | BufferSource | WebAssembly.Module;
}
export interface Loaded {
  edge: typeof import("./index.js");
  /** CPU threads in effect. */
  threads: number;
  variant: "threads" | "single";
  /** Whether the build runs relaxed SIMD. */
  simd: "relaxed" | "simd128";
}
/** Load edge-llm (the threaded and relaxed-SIMD builds where possible) and start its CPU threads. */
export function loadEdgeLlm(options?: LoadOptions): Promise<Loaded>;
