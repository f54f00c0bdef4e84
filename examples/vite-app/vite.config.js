import { defineConfig } from "vite";

export default defineConfig({
  // The tiny test model is served from the app's root (copied into dist/ by the build).
  publicDir: "../../tests/fixtures/tiny",
  // edge-llm/worker starts `new Worker(new URL("./worker-entry.js", import.meta.url), { type: "module" })`.
  worker: { format: "es" },
  build: { target: "es2022" },
});
