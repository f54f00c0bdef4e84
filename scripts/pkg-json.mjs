// Adds the Worker proxy to the package.json wasm-pack wrote: `files` and an `exports` map
// (`edge-llm`, `edge-llm/worker`, and the .wasm for bundlers that resolve it by name).
import { readFileSync, writeFileSync } from "node:fs";

const path = process.argv[2];
const pkg = JSON.parse(readFileSync(path, "utf8"));
pkg.files = [...new Set([...(pkg.files ?? []), "worker.js", "worker-entry.js", "worker.d.ts"])];
pkg.exports = {
  ".": { types: "./edge_llm.d.ts", default: "./edge_llm.js" },
  "./worker": { types: "./worker.d.ts", default: "./worker.js" },
  "./worker-entry.js": "./worker-entry.js",
  "./edge_llm_bg.wasm": "./edge_llm_bg.wasm",
  "./package.json": "./package.json",
};
writeFileSync(path, JSON.stringify(pkg, null, 2) + "\n");
