// examples/vite-app, built by Vite from the package (scripts/test.sh builds it): served as
// static files and run in headless Chromium, the bundled .wasm asset and Worker included.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { openBrowser } from "./chromium.mjs";

const dist = fileURLToPath(new URL("../../examples/vite-app/dist/", import.meta.url));
// With EDGE_LLM_NO_SKIP=1 (.ci/run) a missing build fails the test instead of skipping it.
const built = process.env.EDGE_LLM_NO_SKIP === "1" || existsSync(dist);

test("the Vite build of examples/vite-app generates text, on the main thread and in its worker", { skip: !built && "examples/vite-app is not built (scripts/test.sh builds it)" }, async () => {
  const assets = readdirSync(`${dist}/assets`);
  assert.equal(assets.filter((f) => f.endsWith(".wasm")).length, 1, `one hashed .wasm asset: ${assets}`);
  const browser = await openBrowser(dist);
  try {
    const page = await browser.page("/");
    const r = await page.evaluate(() => window.edgeLlmResult);
    assert.equal(r.error, undefined, r.error);
    assert.equal(r.direct.ids.length, 16);
    assert.ok(r.direct.text.length > 0);
    assert.deepEqual(r.inWorker, r.direct);
  } finally {
    await browser.close();
  }
});
