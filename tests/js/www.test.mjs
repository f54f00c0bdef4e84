// The www/ demo keeps its conversation across page loads: hidden -> saved to IndexedDB,
// loaded again -> restored, and the next turn reuses the restored cache. Runs on the tiny
// model packed into www/models/tiny-int4 (scripts/test.sh packs it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { openBrowser } from "./chromium.mjs";

const model = "models/tiny-int4";
const packed = existsSync(new URL(`../../www/${model}/manifest.json`, import.meta.url));

function reports(page) {
  const seen = [];
  const waiters = [];
  page.on("console", (msg) => {
    const m = /^EDGE_LLM_(\w+) (.*)$/s.exec(msg.text());
    if (!m) return;
    seen.push({ kind: m[1], value: JSON.parse(m[2]) });
    for (const w of waiters) w();
  });
  return (kind, after = 0) =>
    new Promise((resolve, reject) => {
      const look = () => {
        const hit = seen.slice(after).find((r) => r.kind === kind);
        const err = seen.find((r) => r.kind === "ERROR");
        if (err) reject(new Error(`${err.value.name}: ${err.value.message}`));
        else if (hit) resolve({ ...hit.value, at: seen.length });
        return hit;
      };
      if (!look()) waiters.push(look);
    });
}

test("the demo saves its conversation when hidden and restores it on the next load", { skip: !packed && `www/${model} is not packed (scripts/test.sh packs it)` }, async () => {
  const browser = await openBrowser();
  try {
    const page = browser.context.pages()[0];
    const wait = reports(page);
    await page.goto(`${browser.base}/www/index.html?model=${model}&max=12&prompt=Hello`);
    await page.click("#run:not([disabled])");
    const first = await wait("TURN");
    assert.equal(first.reusedPromptTokens, 0);
    // What a phone does when the tab goes to the background.
    await page.evaluate(() => {
      Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    });
    const saved = await wait("SAVED");
    assert.equal(saved.tokens, first.contextTokens);
    assert.equal(saved.unfinished, false);

    await page.reload();
    const restored = await wait("RESTORED", saved.at);
    assert.equal(restored.tokens, saved.tokens);
    assert.equal(restored.bytes, saved.bytes);
    assert.equal(restored.turns, 2);
    await page.fill("#prompt", "And then?");
    await page.click("#run:not([disabled])");
    const second = await wait("TURN", restored.at);
    assert.ok(second.reusedPromptTokens > 0 && second.reusedPromptTokens <= restored.tokens, JSON.stringify(second));
  } finally {
    await browser.close();
  }
});
