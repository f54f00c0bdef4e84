// Runs the demo page in headless Chromium: streams the model's answer to stdout as it is
// generated, then prints the benchmark table. Usage: node scripts/demo.mjs [model-dir] [prompt]
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serve } from "./serve.mjs";

const model = process.argv[2] ?? "models/default";
const prompt = process.argv[3] ?? "What is the capital of France?";
const server = await serve();
// THREADS=<n> and BUILD=auto|threads|single pick the CPU threads and wasm build (www/main.js).
const threads = (process.env.THREADS ? `&threads=${encodeURIComponent(process.env.THREADS)}` : "") +
  (process.env.BUILD ? `&build=${encodeURIComponent(process.env.BUILD)}` : "");
const url = `http://127.0.0.1:${server.address().port}/www/index.html?auto=1&model=${encodeURIComponent(model)}&prompt=${encodeURIComponent(prompt)}${threads}`;

const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "edge-llm-")), {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader",
  ],
});
let failed = false;
const done = new Promise((resolve) => {
  const page = browser.pages()[0];
  page.on("console", (msg) => {
    const m = /^EDGE_LLM_(\w+) (.*)$/s.exec(msg.text());
    if (!m) return;
    const value = JSON.parse(m[2]);
    if (m[1] === "TOKEN") process.stdout.write(value);
    else if (m[1] === "ANSWER") process.stdout.write("\n\n");
    else if (m[1] === "BENCH") {
      console.log(`benchmark (headless Chromium ${browser.browser()?.version() ?? ""}, this machine):`);
      const w = Math.max(...Object.keys(value).map((k) => k.length));
      for (const [k, v] of Object.entries(value)) {
        console.log(`  ${k.padEnd(w)}  ${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v}`);
      }
    } else if (m[1] === "ERROR") {
      console.error(`error in page: ${value.name}: ${value.message}`);
      failed = true;
      resolve();
    } else if (m[1] === "DONE") resolve();
  });
  page.on("pageerror", (e) => {
    console.error(`page error: ${e.message}`);
    failed = true;
    resolve();
  });
  console.log(`prompt: ${prompt}\nmodel:  ${model}\n`);
  page.goto(url);
});
await done;
await browser.close();
server.close();
process.exit(failed ? 1 : 0);
