// The relaxed-SIMD builds (pkg/relaxed/, pkg/threads-relaxed/; scripts/build-pkg.sh): pkg/auto.js
// picks them exactly where the engine runs relaxed SIMD as the standard says, and they give the
// SIMD128 build's tokens. One body (relaxed-checks.mjs) in Node 20 (no relaxed SIMD), Node 20 with
// --experimental-wasm-relaxed-simd (a pre-standard dot product: refused) and headless Chromium
// (relaxed SIMD; the default pick there). The real model on the relaxed build:
// tests/js/smollm2.test.mjs; the threaded one: tests/js/threads.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { openBrowser } from "./chromium.mjs";
import { relaxedChecks } from "./relaxed-checks.mjs";

const root = new URL("../../", import.meta.url);
const bytes = async (p) => new Uint8Array(readFileSync(new URL(p, root)));

test("relaxed SIMD in Node: auto.js picks by relaxedSimdAvailable(), which never says yes where the build does not validate", async () => {
  const r = await relaxedChecks(new URL("pkg/", root).href, bytes);
  console.log(`node ${process.version}: relaxed SIMD ${r.available}`);
});

// Node 20's relaxed SIMD behind the flag predates the standard: the relaxed build validates, but
// its dot product answers otherwise (it gave wrong tokens). auto.js must refuse it.
test("relaxed SIMD in Node with --experimental-wasm-relaxed-simd: a pre-standard relaxed dot product is refused", { skip: !process.versions.node.startsWith("20.") && "Node 20's flagged relaxed SIMD only" }, () => {
  const script = `import { relaxedChecks } from ${JSON.stringify(new URL("tests/js/relaxed-checks.mjs", root).href)};
import { readFileSync } from "node:fs";
const root = new URL(${JSON.stringify(root.href)});
console.log(JSON.stringify(await relaxedChecks(new URL("pkg/", root).href, async (p) => new Uint8Array(readFileSync(new URL(p, root))))));`;
  const out = execFileSync(process.execPath, ["--experimental-wasm-relaxed-simd", "--input-type=module", "-e", script], { encoding: "utf8" });
  const r = JSON.parse(out.trim().split("\n").pop());
  assert.deepEqual([r.validates, r.available], [true, false], JSON.stringify(r));
});

test("relaxed SIMD in headless Chromium: available, picked by default, the SIMD128 build's tokens", { timeout: 120_000 }, async () => {
  const b = await openBrowser(root.pathname);
  try {
    const page = await b.page("/tests/js/blank.html");
    const r = await page.evaluate(async () => {
      const { relaxedChecks } = await import("/tests/js/relaxed-checks.mjs");
      const out = await relaxedChecks(`${location.origin}/pkg/`, async (p) => new Uint8Array(await (await fetch(`/${p}`)).arrayBuffer()));
      const { loadEdgeLlm } = await import("/pkg/auto.js");
      const auto = await loadEdgeLlm({ threads: 1 });
      return { ...out, auto: auto.simd, built: auto.edge.relaxedSimdBuild() };
    });
    assert.deepEqual([r.available, r.auto, r.built], [true, "relaxed", true], JSON.stringify(r));
  } finally {
    await b.close();
  }
});
