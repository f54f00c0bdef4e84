// Writes the npm package's package.json into pkg/ (usage: pkg-json.mjs pkg/package.json
// Cargo.toml; the version is the crate's): the package name (`edge-llm-wasm`: `edge-llm` on npm is an unrelated package), `files` covering every
// module the entries import (wasm-pack left `snippets/` out: wasm-pack issue #1206) and an
// `exports` map for every documented entry. tests/js/install.test.mjs packs pkg/ and checks that
// each relative import in the tarball resolves inside it.
import { readFileSync, writeFileSync } from "node:fs";

const PACKAGE_NAME = "edge-llm-wasm";

const [path, cargoToml] = process.argv.slice(2);
// The first `version = "…"` line of Cargo.toml is [package]'s (it comes first in the file).
const version = readFileSync(cargoToml, "utf8").match(/^version\s*=\s*"([^"]+)"/m)?.[1];
if (!version) throw new Error(`${cargoToml}: no version line`);
const entry = (name) => ({ types: `./${name}.d.ts`, default: `./${name}.js` });
const pkg = {
  name: PACKAGE_NAME,
  type: "module",
  version,
  description: "Run small quantized LLMs in the browser, in Web Workers and in Node/Deno: wasm SIMD (and threads), streaming, OpenAI-style chat, verified cached model shards.",
  license: "MIT OR Apache-2.0",
  keywords: ["llm", "wasm", "webassembly", "inference", "browser", "onnx", "chat", "openai", "worker"],
  files: [
    "index.js", "index.d.ts", "chat.js", "chat.d.ts", "errors.js", "errors.d.ts",
    "edge_llm.js", "edge_llm.d.ts", "edge_llm_bg.wasm", "edge_llm_bg.wasm.d.ts", "snippets/",
    "worker.js", "worker.d.ts", "worker-entry.js", "auto.js", "auto.d.ts", "threads/", "relaxed/", "threads-relaxed/",
    "LICENSE-MIT", "LICENSE-APACHE", "README.md",
  ],
  main: "./index.js",
  module: "./index.js",
  types: "./index.d.ts",
  exports: {
    ".": entry("index"),
    "./worker": entry("worker"),
    "./auto": entry("auto"),
    "./threads": { types: "./threads/index.d.ts", default: "./threads/index.js" },
    // The relaxed-SIMD twins (engines that validate relaxed SIMD only; `./auto` picks them).
    "./relaxed": { types: "./relaxed/index.d.ts", default: "./relaxed/index.js" },
    "./threads-relaxed": { types: "./threads-relaxed/index.d.ts", default: "./threads-relaxed/index.js" },
    // Started by worker.js as `new URL("./worker-entry.js", import.meta.url)`; exported for apps
    // that start the Worker themselves (`WorkerEngine.create({ worker })`).
    "./worker-entry.js": "./worker-entry.js",
    // For bundlers and servers that resolve the .wasm by name.
    "./edge_llm_bg.wasm": "./edge_llm_bg.wasm",
    "./threads/edge_llm_bg.wasm": "./threads/edge_llm_bg.wasm",
    "./relaxed/edge_llm_bg.wasm": "./relaxed/edge_llm_bg.wasm",
    "./threads-relaxed/edge_llm_bg.wasm": "./threads-relaxed/edge_llm_bg.wasm",
    "./package.json": "./package.json",
  },
  // index.js installs `engine.chat.completions` on Engine: bundlers must not skip it.
  sideEffects: ["./index.js", "./threads/index.js", "./relaxed/index.js", "./threads-relaxed/index.js", "./snippets/*", "./threads/snippets/*", "./relaxed/snippets/*", "./threads-relaxed/snippets/*"],
};
writeFileSync(path, JSON.stringify(pkg, null, 2) + "\n");
