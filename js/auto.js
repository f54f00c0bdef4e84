// The package's `./auto` entry (pkg/auto.js): picks the multi-threaded build (pkg/threads/, Web
// Workers over shared memory) where the page is cross-origin isolated and more than one thread
// is asked for, else the single-thread build (pkg/index.js), then starts the CPU threads. The
// Worker proxy (worker-entry.js) loads through it too.

/** Whether this page can run the threaded build (COOP/COEP sent, SharedArrayBuffer present). */
export function threadsAvailable() {
  return globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer === "function";
}

/** The default CPU thread count: `navigator.hardwareConcurrency - 1`, at least 1. */
export function defaultThreads() {
  const cores = Number(globalThis.navigator?.hardwareConcurrency) || 1;
  return Math.max(1, cores - 1);
}

/**
 * Load edge-llm and start its CPU threads. `threads`: threads in all, this one included
 * (default `defaultThreads()`); `build`: `"auto"` (default: threaded when `threads > 1` and the
 * page is isolated), `"threads"` (threaded whenever the page is isolated, even at 1 thread) or
 * `"single"`; `wasm`: what the chosen build's `init` takes (default: the `.wasm` next to it).
 * Resolves to `{ edge, threads, variant }`: the module (Engine, ...), the thread count in
 * effect and `"threads"` or `"single"`.
 */
export async function loadEdgeLlm({ threads, build = "auto", wasm } = {}) {
  if (!["auto", "threads", "single"].includes(build)) {
    throw Object.assign(new Error(`invalid option \`build\`: "${build}" is not "auto", "threads" or "single"`), { name: "InvalidOptionError", option: "build" });
  }
  const want = Math.max(1, Math.floor(threads ?? defaultThreads()));
  let edge;
  let variant = "single";
  if (build !== "single" && (want > 1 || build === "threads") && threadsAvailable()) {
    try {
      edge = await import("./threads/index.js");
      variant = "threads";
    } catch (e) {
      console.warn(`edge-llm: threaded build unavailable (${e}); using the single-thread build`);
    }
  }
  edge ??= await import("./index.js");
  await edge.default(wasm === undefined ? undefined : { module_or_path: wasm });
  const n = await edge.initThreads(want);
  return { edge, threads: n, variant };
}
