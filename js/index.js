// The package entry: the wasm-bindgen module (edge_llm.js) with `engine.chat.completions.create`
// (js/chat.js) installed on its Engine, the error classes, and an `init` that also works in
// Node, whose fetch cannot read the `.wasm` from a file: URL. scripts/build-pkg.sh copies it into
// pkg/ and, for the threaded build, into pkg/threads/.
import initWasm, { Engine } from "./edge_llm.js";
import { installChat } from "./chat.js";

installChat(Engine);

export * from "./edge_llm.js";
export * from "./errors.js";

const inNode = typeof process === "object" && typeof process.versions?.node === "string" && typeof window === "undefined";

/**
 * Load the wasm module: `init()` fetches the `.wasm` next to this file (read from disk in
 * Node); `init({ module_or_path })` takes a URL, a Response, bytes or a WebAssembly.Module.
 */
export default async function init(input, ...rest) {
  if (input === undefined && inNode) {
    // Not a static import: bundlers for the web must not try to resolve a Node module.
    const fs = "node:fs/promises";
    const { readFile } = await import(/* @vite-ignore */ /* webpackIgnore: true */ fs);
    input = { module_or_path: await readFile(new URL("./edge_llm_bg.wasm", import.meta.url)) };
  }
  // `rest`: wasm-bindgen's older `(module, memory)` form, which wasm-bindgen-rayon's thread
  // Workers call on the module they import (in a bundle, this wrapper is that module's default).
  // Dropping the shared memory would start each thread on a memory of its own: the pool hangs.
  return initWasm(input, ...rest);
}
