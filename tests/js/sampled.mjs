// The tokens a build samples from a model (seeded, temperature 1, 16 tokens, EOS ignored): a
// difference in the logits would likely change them, so tests compare builds by them. Imported
// by Node tests and, served under /tests/js/, by pages.
export function sampledTokens(edge, onnx, tokenizer, config) {
  const engine = edge.Engine.fromBytes(onnx, tokenizer, config);
  const g = engine.startGeneration("The capital of France is", { maxTokens: 16, ignoreEos: true, temperature: 1, seed: 7 });
  const ids = [];
  for (let t = g.step(); t !== undefined; t = g.step()) ids.push(t.tokenId);
  engine.free();
  return ids;
}
