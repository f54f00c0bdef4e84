import { defineConfig } from "vite";

// Cross-origin isolation (SharedArrayBuffer, so the threaded build) for `vite` and `vite preview`.
const isolation = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" };

export default defineConfig({
  // edge-llm-wasm finds its .wasm and its Worker with `new URL(..., import.meta.url)`: not from a
  // pre-bundled copy.
  optimizeDeps: { exclude: ["edge-llm-wasm"] },
  worker: { format: "es" },
  server: { headers: isolation },
  preview: { headers: isolation },
  build: { target: "es2022" },
});
