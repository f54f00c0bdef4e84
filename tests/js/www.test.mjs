// The www/ demo keeps its conversation across page loads: hidden -> saved to IndexedDB,
// loaded again -> restored, and the next turn reuses the restored cache. Runs on the tiny
// model packed into www/models/tiny-int4 (scripts/test.sh packs it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { openBrowser } from "./chromium.mjs";

const model = "models/tiny-int4";
// With EDGE_LLM_NO_SKIP=1 (.ci/run) a missing build fails the test instead of skipping it.
const packed = process.env.EDGE_LLM_NO_SKIP === "1" || existsSync(new URL(`../../www/${model}/manifest.json`, import.meta.url));

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
      setTimeout(() => reject(new Error(`no ${kind} report in 60 s; saw ${seen.map((r) => r.kind).join(" ")}`)), 60_000).unref();
      const look = () => {
        const hit = seen.slice(after).find((r) => r.kind === kind);
        const err = seen.find((r) => r.kind === "ERROR");
        if (err) reject(new Error(`${err.value.name}: ${err.value.message}`));
        else if (hit) {
          const at = seen.indexOf(hit) + 1;
          resolve(typeof hit.value === "object" ? { ...hit.value, at } : { value: hit.value, at });
        }
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

test("a reply cut by the page going away is finished after the reload, as if never cut", { skip: !packed && `www/${model} is not packed (scripts/test.sh packs it)` }, async () => {
  const browser = await openBrowser();
  try {
    const url = `${browser.base}/www/index.html?model=${model}&max=150&prompt=Tell%20me%20more`;
    const page = browser.context.pages()[0];
    const wait = reports(page);
    await page.goto(url);
    await page.click("#run:not([disabled])");
    const whole = await wait("ANSWER");
    await page.click("#reset");

    // Hide the page as soon as the first text of the next reply is on screen (a mutation
    // observer runs between two tokens), then let the OS kill the tab: no pagehide, no more saves.
    await page.evaluate(() => {
      const out = document.getElementById("out");
      const mo = new MutationObserver(() => {
        if (!out.textContent) return;
        mo.disconnect();
        Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
        document.dispatchEvent(new Event("visibilitychange"));
      });
      mo.observe(out, { childList: true, characterData: true, subtree: true });
    });
    await page.click("#run:not([disabled])");
    const saved = await wait("SAVED", whole.at);
    assert.equal(saved.unfinished, true, "saved while the reply was being generated");
    const cdp = await browser.context.newCDPSession(page);
    const crashed = new Promise((resolve) => page.once("crash", resolve));
    cdp.send("Page.crash").catch(() => {}); // never answers: the renderer is gone
    await crashed;

    const again = await browser.context.newPage();
    const waitAgain = reports(again);
    await again.goto(url);
    const restored = await waitAgain("RESTORED");
    assert.equal(restored.unfinished, true);
    assert.equal(restored.tokens, saved.tokens);
    const resumed = await waitAgain("RESUMED", restored.at);
    assert.equal(resumed.reply, whole.value);
  } finally {
    await browser.close();
  }
});
