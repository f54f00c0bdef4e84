// Soak: many chat turns on one engine in headless Chromium, with saveState/restoreState every
// turn and an abort every 7th, the tiny int4 model. Prints wasm memory after the first 10 turns
// and at the end; exits 1 on any error or if the end is more than 5 % above turn 10.
// usage: node scripts/soak.mjs [turns=1000]   (after WASM_OPT=0 scripts/build-pkg.sh)
import { openBrowser } from "../tests/js/chromium.mjs";
import { fileURLToPath } from "node:url";

const turns = Number(process.argv[2] ?? 1000);
const root = fileURLToPath(new URL("../", import.meta.url));
const browser = await openBrowser(root);
try {
  const page = await browser.page("/tests/js/blank.html");
  const r = await page.evaluate(async (turns) => {
    const pkg = await import("/pkg/edge_llm.js");
    await pkg.default();
    const get = async (f) => new Uint8Array(await (await fetch(`/tests/fixtures/tiny/${f}`)).arrayBuffer());
    const engine = pkg.Engine.fromBytes(await get("model-int4.onnx"), await get("tokenizer.json"), await get("model_config.json"));
    const words = ["Hi", "Tell me more", "Why?", "And then?", "Thanks"];
    let history = [];
    let at10 = 0;
    let aborted = 0;
    const t0 = performance.now();
    for (let turn = 1; turn <= turns; turn++) {
      // The tiny model's context is 256 tokens: a conversation lasts 3 turns, then starts over.
      if (history.length >= 6) {
        history = [];
        engine.clearState();
      }
      history.push({ role: "user", content: words[turn % words.length] });
      const ctl = new AbortController();
      let reply = "";
      let n = 0;
      try {
        for await (const t of engine.chat(history, { maxTokens: 12, temperature: 0.8, seed: turn }, ctl.signal)) {
          reply += t.text;
          if (turn % 7 === 0 && ++n === 3) ctl.abort();
        }
      } catch (e) {
        if (e.name !== "AbortError") throw e;
        aborted++;
      }
      history.push({ role: "assistant", content: reply });
      // Save and restore every turn (what a page does on pagehide / reload).
      engine.restoreState(engine.saveState());
      if (turn === 10) at10 = engine.stats().wasmMemoryBytes;
    }
    const end = engine.stats().wasmMemoryBytes;
    engine.free();
    return { at10, end, aborted, seconds: (performance.now() - t0) / 1e3 };
  }, turns);
  const growth = r.end / r.at10 - 1;
  console.log(`${turns} turns (${r.aborted} aborted) in ${r.seconds.toFixed(1)} s: wasm memory ${r.at10} B after 10 turns, ${r.end} B at the end (${(growth * 100).toFixed(2)} %)`);
  process.exitCode = growth > 0.05 ? 1 : 0;
} finally {
  await browser.close();
}
