// The chat demo's in-page benchmark (www/main.js); the benchmark page is www/bench.html.
// Standards (see README): >= 100 measured decode steps after 10 warm-ups, p50/p95/p99,
// cold start reported apart from steady state, memory and model size alongside.

import { percentile } from "./bench-core.js";

/** Time prefill and >= `measured` decode steps after `warmup` ones, token by token. */
export function benchDecode(engine, prompt, { warmup = 10, measured = 100 } = {}) {
  // Tokenizer cost on its own (the seed: it can add 50-100 ms per request on devices).
  const tok = [];
  let promptTokens = 0;
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    promptTokens = engine.tokenize(prompt).length;
    tok.push(performance.now() - t0);
  }
  const tokenizeMsFirst = tok[0]; // before the tokenizer's word cache is warm
  tok.sort((a, b) => a - b);
  // reusePrefix off: the prefill is measured over the whole prompt, whatever was cached.
  const gen = engine.startGeneration(prompt, { maxTokens: warmup + measured, ignoreEos: true, reusePrefix: false });
  let t = performance.now();
  gen.step(); // prefill + first token
  const prefillMs = performance.now() - t;
  const steps = [];
  for (let i = 1; i < warmup + measured; i++) {
    t = performance.now();
    if (gen.step() === undefined) break;
    if (i >= warmup) steps.push(performance.now() - t);
  }
  gen.free();
  const sorted = [...steps].sort((a, b) => a - b);
  const total = steps.reduce((a, b) => a + b, 0);
  return {
    promptTokens,
    tokenizeMsFirst,
    tokenizeMsP50: percentile(tok, 50),
    prefillMs,
    prefillTokPerS: (promptTokens / prefillMs) * 1000,
    decodeSteps: steps.length,
    decodeTokPerS: (steps.length / total) * 1000,
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
  };
}
