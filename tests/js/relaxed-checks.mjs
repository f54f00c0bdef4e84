// One body for tests/js/relaxed.test.mjs, run in Node (as is and with
// --experimental-wasm-relaxed-simd, as a child) and in headless Chromium: pkg/auto.js's
// relaxed-SIMD pick in whatever engine runs it. `base`: the URL of pkg/; `bytes(path)`: a file
// under the repository root as a Uint8Array. Returns what it saw; throws on a failed check.
import { sampledTokens } from "./sampled.mjs";

export async function relaxedChecks(base, bytes) {
  const fail = (m) => {
    throw new Error(m);
  };
  const { loadEdgeLlm, relaxedSimdAvailable } = await import(`${base}auto.js`);
  const available = relaxedSimdAvailable();
  const plainWasm = await bytes("pkg/edge_llm_bg.wasm");
  const relaxedWasm = await bytes("pkg/relaxed/edge_llm_bg.wasm");
  // The probe says what the shipped builds do: where it says yes, the relaxed build validates;
  // where the build does not, it says no (it may say no where the build validates: an engine
  // whose relaxed dot product is not the standard's).
  const validates = WebAssembly.validate(relaxedWasm);
  if (!WebAssembly.validate(plainWasm)) fail("the SIMD128 build does not validate");
  if (available && !validates) fail("relaxedSimdAvailable() is true, the relaxed build does not validate");
  const [onnx, tok, cfg] = [await bytes("tests/fixtures/tiny/model-int4.onnx"), await bytes("tests/fixtures/tiny/tokenizer.json"), await bytes("tests/fixtures/tiny/model_config.json")];
  // The tiny int4 model's MatMulNBits nodes ask for int8 activations (accuracy_level 4): the
  // kernel relaxed SIMD replaces.
  const tokens = (edge) => sampledTokens(edge, onnx, tok, cfg);
  const plain = await loadEdgeLlm({ threads: 1, simd: "simd128", wasm: plainWasm });
  if (plain.simd !== "simd128" || plain.edge.relaxedSimdBuild()) fail(`simd: "simd128" loaded ${plain.simd}`);
  // A `wasm` given with simd "auto" is a SIMD128 build's.
  const given = await loadEdgeLlm({ threads: 1, wasm: plainWasm });
  if (given.simd !== "simd128") fail(`an explicit wasm under simd "auto" loaded the ${given.simd} build`);
  const want = tokens(plain.edge);
  const out = { available, validates, tokens: want.length };
  let error;
  try {
    const relaxed = await loadEdgeLlm({ threads: 1, simd: "relaxed", wasm: relaxedWasm });
    if (relaxed.simd !== "relaxed" || !relaxed.edge.relaxedSimdBuild()) fail(`simd: "relaxed" loaded ${relaxed.simd}`);
    const got = tokens(relaxed.edge);
    if (JSON.stringify(got) !== JSON.stringify(want)) fail(`relaxed build ${JSON.stringify(got)} vs SIMD128 ${JSON.stringify(want)}`);
  } catch (e) {
    error = e;
  }
  if (available && error) throw error;
  if (!available && error?.name !== "NotSupportedError") fail(`simd: "relaxed" without relaxed SIMD: ${error?.name ?? "no error"}`);
  return out;
}
