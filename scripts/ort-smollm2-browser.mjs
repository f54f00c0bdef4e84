// onnxruntime-made SmolLM2 files through the package as a web app loads them: each file packed
// by edge-llm-pack (50 MB shards), served, and loaded with Engine.load in headless Chromium;
// greedy tokens on the prompts onnxruntime ran, compared with onnxruntime's (the <name>.json
// that `scripts/make-ort-references.py --smollm2 GGUF DIR` wrote beside each <name>.onnx).
// By hand: the files are 100-540 MB each.
//   node scripts/ort-smollm2-browser.mjs DIR [NAME...]      (after WASM_OPT=0 scripts/build-pkg.sh)
// PACK names the packer binary (default $CARGO_TARGET_DIR/debug/edge-llm-pack, which
// `cargo test --features pack` builds). Exits 1 when a file fails to pack or load.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { startModelServer } from "../tests/js/model-server.mjs";

const [dirArg, ...only] = process.argv.slice(2);
if (!dirArg) {
  console.error("usage: node scripts/ort-smollm2-browser.mjs DIR [NAME...]");
  process.exit(2);
}
const dir = resolve(dirArg);
const pack = process.env.PACK ?? join(process.env.CARGO_TARGET_DIR ?? "target", "debug/edge-llm-pack");
if (!existsSync(pack)) throw new Error(`no packer at ${pack} (set PACK or build it: cargo build --features pack)`);
const names = only.length ? only : readdirSync(dir).filter((f) => f.endsWith(".onnx") && existsSync(join(dir, f.replace(/\.onnx$/, ".json")))).map((f) => f.replace(/\.onnx$/, "")).sort();

const work = mkdtempSync(join(tmpdir(), "ort-smollm2-"));
const srv = await startModelServer();
const ctx = await chromium.launchPersistentContext("", {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});
let failed = false;
try {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`${srv.base}/test.html`);
  await page.waitForFunction(() => window.edgeReady === true, null, { timeout: 120_000 });
  for (const name of names) {
    const ref = JSON.parse(readFileSync(join(dir, `${name}.json`), "utf8"));
    const src = join(work, name);
    const out = join(work, `${name}-packed`);
    mkdirSync(src);
    symlinkSync(join(dir, `${name}.onnx`), join(src, "model.onnx"));
    for (const f of ["tokenizer.json", "model_config.json"]) symlinkSync(join(dir, f), join(src, f));
    try {
      execFileSync(pack, ["pack", src, out], { stdio: ["ignore", "ignore", "inherit"] });
    } catch (e) {
      console.log(`${name}: pack failed (${e.message.split("\n")[0]})`);
      failed = true;
      continue;
    }
    srv.addModel(name, Object.fromEntries(readdirSync(out).map((f) => [f, readFileSync(join(out, f))])));
    const r = await page.evaluate(
      async ({ url, runs, steps }) => {
        try {
          const t0 = performance.now();
          const engine = await edge.Engine.load(url, { cache: "none", maxModelBytes: 2_000_000_000 });
          const loadMs = performance.now() - t0;
          const results = [];
          for (const run of runs) {
            // The prompt as text (the chat template applied by the reference), and back: the
            // engine must see onnxruntime's prompt ids.
            const text = engine.detokenize(Uint32Array.from(run.prompt));
            const ids = Array.from(engine.tokenize(text));
            const tokens = [];
            const opts = { maxTokens: steps, temperature: 0, topP: 1, repetitionPenalty: 1, ignoreEos: true };
            for await (const t of engine.generate(text, opts)) tokens.push(t.tokenId);
            results.push({ samePrompt: JSON.stringify(ids) === JSON.stringify(run.prompt), tokens });
          }
          engine.free();
          return { loadMs, results };
        } catch (e) {
          return { error: `${e.name}: ${e.message}` };
        }
      },
      { url: srv.url(name), runs: ref.runs.map((r) => ({ prompt: r.prompt })), steps: ref.steps },
    );
    srv.addModel(name, {});
    rmSync(out, { recursive: true, force: true });
    if (r.error) {
      console.log(`${name}: Engine.load / generate failed: ${r.error}`);
      failed = true;
      continue;
    }
    const agree = r.results.map((x, i) => {
      const want = ref.runs[i].tokens;
      const at = x.tokens.findIndex((t, j) => t !== want[j]);
      return at < 0 ? Math.min(x.tokens.length, want.length) : at;
    });
    const total = ref.runs.reduce((a, x) => a + x.tokens.length, 0);
    const prompts = r.results.every((x) => x.samePrompt) ? "prompts as onnxruntime's" : "PROMPT IDS DIFFER";
    console.log(`${name}: Chromium Engine.load ${(r.loadMs / 1000).toFixed(1)} s; ${agree.reduce((a, b) => a + b, 0)}/${total} tokens as onnxruntime, per prompt ${JSON.stringify(agree)}; ${prompts}`);
  }
} finally {
  await ctx.close();
  srv.close();
  rmSync(work, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;
