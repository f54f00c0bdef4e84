// Headless Chromium (playwright-core, the system's /usr/bin/chromium) over scripts/serve.mjs,
// for the package tests that need a browser: the Worker proxy, the Vite app, the www demo.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serve } from "../../scripts/serve.mjs";

/// `webgpu`: expose SwiftShader's WebGPU adapter (a software one) to pages and workers.
export async function openBrowser(root, { webgpu = false } = {}) {
  const server = await serve(0, "127.0.0.1", { dir: root });
  const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "edge-llm-test-")), {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", ...(webgpu ? ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"] : [])],
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    base,
    context,
    async page(path) {
      const page = context.pages()[0] ?? (await context.newPage());
      page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
      await page.goto(`${base}${path}`);
      return page;
    },
    async close() {
      await context.close();
      server.close();
    },
  };
}
