// The package's `./auto` entry (pkg/auto.js): picks the multi-threaded build (pkg/threads/, Web
// Workers over shared memory) where the page is cross-origin isolated and more than one thread
// is asked for, else the single-thread build (pkg/index.js); of either, its relaxed-SIMD twin
// (pkg/threads-relaxed/, pkg/relaxed/) where the engine has relaxed SIMD; then starts the CPU
// threads. The Worker proxy (worker-entry.js) loads through it too.

/** Whether this page can run the threaded build (COOP/COEP sent, SharedArrayBuffer present). */
export function threadsAvailable() {
  return globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer === "function";
}

// A module exporting `f: () -> i32`: lane 0 of i32x4.relaxed_dot_i8x16_i7x16_add_s (the
// instruction the relaxed builds' int4 GEMV runs) on a = [-128, 127, -1, 3, 0...] (signed),
// b = [15, 15, 7, 1, 0...] (the 7-bit operand), c = [1000, 0...]: the standard's result is
// -1920 + 1905 - 7 + 3 + 1000 = 981. Engines without relaxed SIMD fail to validate it, as they
// would the build; Node 20's pre-standard one behind --experimental-wasm-relaxed-simd validates
// it but answers -38 (and gave the relaxed build wrong tokens), so it is run, not only validated.
const v128 = (bytes) => [0xfd, 0x0c, ...bytes, ...new Array(16 - bytes.length).fill(0)];
const PROBE_BODY = [0, ...v128([0x80, 0x7f, 0xff, 0x03]), ...v128([15, 15, 7, 1]), ...v128([0xe8, 0x03]), 0xfd, 0x93, 0x02, 0xfd, 0x1b, 0, 0x0b];
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // "\0asm", version 1
  1, 5, 1, 0x60, 0, 1, 0x7f, // types: () -> i32
  3, 2, 1, 0, // one function of type 0
  7, 5, 1, 1, 0x66, 0, 0, // exported as "f"
  0x0a, PROBE_BODY.length + 2, 1, PROBE_BODY.length, ...PROBE_BODY, // its code
]);
let relaxedProbe;

/** Whether this engine has WebAssembly relaxed SIMD whose dot product gives the standard's
 * result (the relaxed builds validate and compute right here). */
export function relaxedSimdAvailable() {
  if (relaxedProbe === undefined) {
    try {
      relaxedProbe = WebAssembly.validate(RELAXED_PROBE) && new WebAssembly.Instance(new WebAssembly.Module(RELAXED_PROBE)).exports.f() === 981;
    } catch {
      relaxedProbe = false;
    }
  }
  return relaxedProbe;
}

/** The default CPU thread count: `navigator.hardwareConcurrency - 1`, at least 1. */
export function defaultThreads() {
  const cores = Number(globalThis.navigator?.hardwareConcurrency) || 1;
  return Math.max(1, cores - 1);
}

// Literal specifiers, so bundlers see every build.
const BUILDS = {
  "threads-relaxed": () => import("./threads-relaxed/index.js"),
  threads: () => import("./threads/index.js"),
  relaxed: () => import("./relaxed/index.js"),
  single: () => import("./index.js"),
};

const invalid = (option, message) => Object.assign(new Error(`invalid option \`${option}\`: ${message}`), { name: "InvalidOptionError", option });

/**
 * Load edge-llm and start its CPU threads. `threads`: threads in all, this one included
 * (default `defaultThreads()`); `build`: `"auto"` (default: threaded when `threads > 1` and the
 * page is isolated), `"threads"` (threaded whenever the page is isolated, even at 1 thread) or
 * `"single"`; `simd`: `"auto"` (default: the relaxed-SIMD build where the engine has relaxed
 * SIMD and no `wasm` is given), `"relaxed"` (that build or a `NotSupportedError`) or `"simd128"`
 * (never it); `wasm`: what the chosen build's `init` takes (default: the `.wasm` next to it; a
 * `wasm` given with `simd: "auto"` is taken to be a SIMD128 build's, the file the package's root
 * entry uses, so the relaxed builds are only chosen when asked for then). Resolves to
 * `{ edge, threads, variant, simd }`: the module (Engine, ...), the thread count in effect,
 * `"threads"` or `"single"`, and `"relaxed"` or `"simd128"`.
 */
export async function loadEdgeLlm({ threads, build = "auto", simd = "auto", wasm } = {}) {
  if (!["auto", "threads", "single"].includes(build)) throw invalid("build", `"${build}" is not "auto", "threads" or "single"`);
  if (!["auto", "relaxed", "simd128"].includes(simd)) throw invalid("simd", `"${simd}" is not "auto", "relaxed" or "simd128"`);
  const relaxed = (simd === "relaxed" || (simd === "auto" && wasm === undefined)) && relaxedSimdAvailable();
  if (simd === "relaxed" && !relaxed) {
    throw Object.assign(new Error("this engine has no WebAssembly relaxed SIMD (simd: \"relaxed\")"), { name: "NotSupportedError" });
  }
  const want = Math.max(1, Math.floor(threads ?? defaultThreads()));
  const threaded = build !== "single" && (want > 1 || build === "threads") && threadsAvailable();
  // Best first; a build that fails to import (not built into this package) falls to the next.
  const order = [
    ...(threaded ? [...(relaxed ? ["threads-relaxed"] : []), "threads"] : []),
    ...(relaxed ? ["relaxed"] : []),
    "single",
  ];
  let edge;
  let name;
  for (const candidate of order) {
    try {
      edge = await BUILDS[candidate]();
      name = candidate;
      break;
    } catch (e) {
      if (candidate === "single") throw e;
      console.warn(`edge-llm: the ${candidate} build is unavailable (${e}); trying the next`);
    }
  }
  if (simd === "relaxed" && !name.endsWith("relaxed")) {
    throw Object.assign(new Error("this package was built without its relaxed-SIMD builds (simd: \"relaxed\")"), { name: "NotSupportedError" });
  }
  await edge.default(wasm === undefined ? undefined : { module_or_path: wasm });
  const n = await edge.initThreads(want);
  return { edge, threads: n, variant: name.startsWith("threads") ? "threads" : "single", simd: name.endsWith("relaxed") ? "relaxed" : "simd128" };
}
