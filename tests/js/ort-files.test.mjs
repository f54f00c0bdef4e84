// The shipped single-thread package (pkg/, as scripts/build-pkg.sh built it: release profile with
// its per-crate opt-levels, and wasm-opt unless WASM_OPT=0) on the onnxruntime-made files: every
// file under tests/fixtures/ort with a token reference gives onnxruntime's greedy tokens. The
// wasm-bindgen tests (tests/node_ort_files.rs) run the same files on a test build; this one
// checks the .wasm users download, whose ONNX import is built for size (README "Package size").
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";

const root = new URL("../../", import.meta.url);
const pkg = await import(new URL("pkg/edge_llm.js", root));
pkg.initSync({ module: readFileSync(new URL("pkg/edge_llm_bg.wasm", root)) });
const read = (path) => readFileSync(new URL(path, root));
const ortFiles = readdirSync(new URL("tests/fixtures/ort/", root))
  .filter((f) => f.endsWith(".json") && f !== "model_config.json")
  .filter((f) => "runs" in JSON.parse(read(`tests/fixtures/ort/${f}`)))
  .map((f) => f.slice(0, -".json".length));

test("single-thread package: onnxruntime-made files give onnxruntime's greedy tokens", { timeout: 300_000 }, () => {
  assert.ok(ortFiles.length >= 13, `onnxruntime files found: ${ortFiles}`);
  const [tok, cfg] = [read("tests/fixtures/tiny/tokenizer.json"), read("tests/fixtures/ort/model_config.json")];
  for (const name of ortFiles) {
    const reference = JSON.parse(read(`tests/fixtures/ort/${name}.json`));
    const engine = pkg.Engine.fromBytes(read(`tests/fixtures/ort/${name}.onnx`), tok, cfg);
    reference.runs.forEach((run, i) => {
      const g = engine.startGeneration(Uint32Array.from(run.prompt), { maxTokens: run.tokens.length, ignoreEos: true });
      const ids = [];
      for (let t = g.step(); t !== undefined; t = g.step()) ids.push(t.tokenId);
      assert.deepEqual(ids, run.tokens, `${name}, prompt ${i}: package vs onnxruntime`);
    });
    engine.free();
  }
});

test("single-thread package: an operator tract does not register is an IncompatibleModelError naming it", () => {
  const [tok, cfg] = [read("tests/fixtures/tiny/tokenizer.json"), read("tests/fixtures/ort/model_config.json")];
  const onnx = read("tests/fixtures/ort/fp32.onnx");
  // Rename the first MatMul node's op_type (NodeProto field 4: tag 0x22, length 6) to "MatMuX",
  // the same length so every length prefix stays valid: an operator no ONNX opset has.
  const at = onnx.indexOf(Buffer.from("\x22\x06MatMul", "latin1"));
  assert.ok(at > 0, "no MatMul node in fp32.onnx");
  const bad = Buffer.from(onnx);
  bad.write("MatMuX", at + 2, "latin1");
  assert.throws(() => pkg.Engine.fromBytes(bad, tok, cfg), (e) => e.name === "IncompatibleModelError" && /MatMuX/.test(e.message));
});
