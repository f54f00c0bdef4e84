#!/usr/bin/env node
// The GPU kernel benchmark in headless Chromium: `benchGpuKernels` of the built package (pkg/,
// scripts/build-pkg.sh) on the browser's WebGPU adapter: int4 GEMV GB/s and the prefill GEMM's
// GFLOP/s at SmolLM2-135M's shapes, the token pick; the same kernels and report as the native
// `edge-llm-pack bench-gpu`. Here Chromium's adapter is SwiftShader (a CPU rasterizer: its
// numbers say nothing about GPUs); on a machine with a GPU, pass --adapter default.
// --no-subgroups leaves WebGPU's `subgroups` unused (the kernels' path for adapters without).
//
//   node scripts/bench-gpu-browser.mjs [--warmup N] [--steps N] [--adapter swiftshader|default] [--no-subgroups]
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "./serve.mjs";

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const warmup = Number(opt("warmup", "3"));
const steps = Number(opt("steps", "20"));
const adapter = opt("adapter", "swiftshader");
const noSubgroups = args.includes("--no-subgroups");
const root = join(dirname(fileURLToPath(import.meta.url)), "..");

const server = await serve(0, "127.0.0.1", { dir: root });
const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "edge-llm-bench-gpu-")), {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--no-first-run", "--enable-unsafe-webgpu", ...(adapter === "default" ? [] : [`--use-webgpu-adapter=${adapter}`])],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(`http://127.0.0.1:${server.address().port}/tests/js/blank.html`);
  const lines = await page.evaluate(
    async ({ warmup, steps, noSubgroups }) => {
      const m = await import("/pkg/edge_llm.js");
      await m.default();
      return { ua: navigator.userAgent, lines: await m.benchGpuKernels(warmup, steps, noSubgroups) };
    },
    { warmup, steps, noSubgroups },
  );
  console.log(`headless Chromium (${lines.ua}), WebGPU adapter flag: ${adapter}${noSubgroups ? ", subgroups unused" : ""}`);
  for (const l of lines.lines) console.log(l);
} finally {
  await context.close();
  server.close();
}
