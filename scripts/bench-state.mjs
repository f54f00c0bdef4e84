// Measures saveState / restoreState on a real model with the built package in Node (same V8
// and wasm as Chromium): state size, save and restore time, and the first token after
// restoring vs. a full prefill. Usage: node scripts/bench-state.mjs DIR [tokens...]
// DIR holds model.onnx, tokenizer.json and model_config.json (e.g. `edge-llm-pack import-gguf`).
import { readFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
const sizes = process.argv.slice(3).map(Number);
if (!dir) {
  console.error("usage: node scripts/bench-state.mjs DIR [tokens...]");
  process.exit(2);
}
const pkg = await import(new URL("../pkg/edge_llm.js", import.meta.url));
pkg.initSync({ module: readFileSync(new URL("../pkg/edge_llm_bg.wasm", import.meta.url)) });
const read = (f) => readFileSync(join(dir, f));
const load = () => pkg.Engine.fromBytes(read("model.onnx"), read("tokenizer.json"), read("model_config.json"));

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const time = (f) => {
  const t = performance.now();
  const v = f();
  return [performance.now() - t, v];
};

const a = load();
const b = load();
const prompt = a.applyChatTemplate([{ role: "user", content: "Tell me a long story about a lighthouse keeper." }]);
const promptTokens = a.tokenize(prompt).length;
console.log(`model ${dir}: ${a.stats().modelBytes} bytes; prompt ${promptTokens} tokens; 5 runs each, median`);
for (const total of sizes.length ? sizes : [64, 256, 512]) {
  // Stop one short of `total` cached tokens: the last sampled token is not in the cache yet.
  const gen = a.startGeneration(prompt, { maxTokens: total - promptTokens + 1, ignoreEos: true });
  while (gen.step() !== undefined);
  gen.free();
  const saves = [];
  const restores = [];
  let bytes;
  for (let i = 0; i < 5; i++) {
    const [s, v] = time(() => a.saveState());
    bytes = v;
    saves.push(s);
    restores.push(time(() => b.restoreState(bytes))[0]);
  }
  const tokens = b.stats().contextTokens;
  console.log(
    `${tokens} cached tokens: state ${bytes.length} bytes (${(bytes.length / tokens).toFixed(0)} per token), ` +
      `saveState ${median(saves).toFixed(1)} ms, restoreState ${median(restores).toFixed(1)} ms`,
  );
}

// A second chat turn after restoring: time to first token with the restored cache reused vs.
// recomputing the whole conversation.
a.clearState();
const turn1 = [{ role: "user", content: "Tell me a long story about a lighthouse keeper." }];
let reply = "";
for await (const t of a.chat(turn1, { maxTokens: 200 })) reply += t.text;
const saved = a.saveState();
const turn2 = [...turn1, { role: "assistant", content: reply }, { role: "user", content: "How does it end?" }];
const ttft = async (reusePrefix) => {
  const ms = [];
  let s;
  for (let i = 0; i < 5; i++) {
    b.restoreState(saved);
    const it = b.chat(turn2, { maxTokens: 1, reusePrefix });
    await it.next();
    await it.return();
    s = b.stats();
    ms.push(s.timeToFirstTokenMs);
  }
  return [median(ms), s];
};
const [withReuse, sr] = await ttft(true);
const [without, sn] = await ttft(false);
console.log(
  `second turn (${sr.promptTokens} prompt tokens, ${sr.reusedPromptTokens} from the restored cache): ` +
    `time to first token ${withReuse.toFixed(0)} ms reusing the cache vs ${without.toFixed(0)} ms recomputing ${sn.promptTokens}`,
);
a.dispose();
b.dispose();
