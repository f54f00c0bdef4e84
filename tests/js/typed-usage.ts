// Typed usage of edge-llm-wasm, type-checked (not run) by tests/js/install.test.mjs with
// `tsc --noEmit --strict --exactOptionalPropertyTypes` against the installed package's .d.ts.
// Lines marked @ts-expect-error must fail to type-check: the types reject them.
import init, { Engine, InvalidOptionError, EdgeLlmError, type ErrorName, type ChatCompletionChunk, type EngineStats, type LoadProgress, type EngineEvent } from "edge-llm-wasm";
import { WorkerEngine, type WorkerGeneration } from "edge-llm-wasm/worker";
import { loadEdgeLlm, relaxedSimdAvailable } from "edge-llm-wasm/auto";

export async function usage(): Promise<void> {
  await init();
  const engine = await Engine.load("/model/manifest.json", {
    cache: "indexeddb",
    onProgress: (e: LoadProgress) => {
      if (e.type === "progress") console.log(e.loaded / e.total);
    },
    onEvent: (e: EngineEvent) => console.log(e.type),
  });
  // @ts-expect-error an unknown load option
  await Engine.load("/m.json", { onprogress: () => {} });

  // The native stream, and its finish reason.
  const stream = engine.chat([{ role: "user", content: "Hi" }], { maxTokens: 8, temperature: 0.7 });
  for await (const t of stream) console.log(t.tokenId, t.text);
  const reason: "eos" | "stopString" | "maxTokens" | undefined = stream.finishReason;
  console.log(reason);
  // @ts-expect-error snake_case is the OpenAI API's spelling, not the native one
  engine.chat([{ role: "user", content: "Hi" }], { max_tokens: 8 });

  // OpenAI-style, streaming and not.
  const chunks = await engine.chat.completions.create({ messages: [{ role: "user", content: "Hi" }], stream: true, max_tokens: 16 });
  for await (const c of chunks) {
    const chunk: ChatCompletionChunk = c;
    const text: string | undefined = chunk.choices[0]?.delta.content;
    console.log(text, chunk.choices[0]?.finish_reason, chunk.usage?.total_tokens);
  }
  const done = await engine.chat.completions.create({ messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }], stop: ["\n"], seed: 1 });
  const content: string = done.choices[0]!.message.content;
  const finish: "stop" | "length" = done.choices[0]!.finish_reason;
  console.log(content, finish, done.usage.prompt_tokens);
  // @ts-expect-error an option OpenAI's API does not have
  await engine.chat.completions.create({ messages: [], maxTokens: 3 });

  const stats: EngineStats = engine.stats();
  console.log(stats.decodeTokensPerS, stats.contextTokens, engine.modelVersion);

  try {
    engine.generate("x", { topK: 3 });
  } catch (e) {
    if (e instanceof InvalidOptionError) console.log(e.option);
    if (e instanceof EdgeLlmError) {
      const name: ErrorName = e.name;
      console.log(name);
    }
  }

  // The Worker proxy: the same API, returning promises.
  const worker = await WorkerEngine.load("/model/manifest.json", { onProgress: (e) => console.log(e.type) }, { threads: 2 });
  for await (const t of worker.chat([{ role: "user", content: "Hi" }], { maxTokens: 8 })) console.log(t.text);
  const wc = await worker.chat.completions.create({ messages: [{ role: "user", content: "Hi" }] });
  console.log(wc.choices[0]?.message.content, worker.variant, worker.simd, worker.threads, worker.modelVersion);
  worker.setEventListener((e) => console.log(e.type));
  const g: WorkerGeneration = await worker.startGeneration("x", { maxTokens: 2 });
  console.log(await g.step(), (await worker.stats()).generatedTokens);
  await worker.update("/model/v2/manifest.json", { probation: 10 });
  await worker.dispose();

  const { edge, variant, simd } = await loadEdgeLlm({ threads: 2, simd: "auto" });
  console.log(variant, simd === "relaxed", edge.Engine === Engine, edge.relaxedSimdBuild(), relaxedSimdAvailable());
}

// Worker parity: every Engine member (but wasm-bindgen's own `free`) exists on WorkerEngine.
type Missing = Exclude<keyof Engine, keyof WorkerEngine | "free" | typeof Symbol.dispose>;
const parity: [Missing] extends [never] ? true : Missing = true;
console.log(parity);
