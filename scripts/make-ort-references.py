#!/usr/bin/env python3
"""Decoder files as users make them with third-party tools, and what onnxruntime computes on them.

An independent check of edge-llm's loader (tests/ort_files.rs): nothing here uses edge-llm's
exporter or reference. A small Llama (seeded, random weights, the tiny tokenizer's vocabulary)
is built with Hugging Face transformers, exported with optimum (`text-generation-with-past`)
and converted the ways users convert such files:

  fp32           optimum's export as is
  fp16           onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types)
  fp16-io        ... with its defaults: fp16 logits, past_key_values and present too
  int8           onnxruntime.quantization.quantize_dynamic (DynamicQuantizeLinear + MatMulInteger)
  int4-b32-sym   MatMulNBitsQuantizer block 32, symmetric   (accuracy_level unset)
  int4-b32-asym  ... block 32, asymmetric (zero points; 3 or 5 blocks per row: odd counts)
  int4-b128-sym / int4-b128-asym   block 128 (K = 96 and 160: padded blocks)
  int4-b32-acc4  block 32 symmetric, accuracy_level 4 (onnxruntime computes with int8 activations)
  int4-qdq       MatMulNBitsQuantizer QDQ mode: DequantizeLinear of INT4 weights (opset 21)
  int4-qdq-asym  ... asymmetric: UINT4 weights and zero points
  int4-bias      int4-b32-asym with a bias input on every MatMulNBits (as some exporters write)
  int4-gidx      int4-b32-sym with the trivial g_idx (k / block) on every MatMulNBits

For each it writes tests/fixtures/ort/<name>.onnx and <name>.json: onnxruntime's greedy tokens
for a few prompts (prefill, then one token per step through present -> past_key_values) and the
logits of the last prompt position and of the last step.

  /var/tmp/ortvenv/bin/python scripts/make-ort-references.py            # the fixtures
  /var/tmp/ortvenv/bin/python scripts/make-ort-references.py --dynamic-quantize
      # only dynamic-quantize.onnx/.json: DynamicQuantizeLinear + MatMulInteger on rounding cases
  /var/tmp/ortvenv/bin/python scripts/make-ort-references.py --matmulnbits-int8
      # only matmulnbits-int8.onnx/.json: MatMulNBits accuracy_level 4 (int8 activations) on
      # rounding cases
  /var/tmp/ortvenv/bin/python scripts/make-ort-references.py --self-agreement OUT/ NAME...
      # onnxruntime unoptimized (ORT_DISABLE_ALL) against its recorded default run: how far a
      # file's tokens depend on summation order; written into NAME.json (unoptimized_tokens)
  python scripts/make-ort-references.py --long-prompts
      # tests/fixtures/ort/long/<name>.json: onnxruntime on each committed file with one
      # 150-token prompt (longer than both backends' 64-token prefill chunk) x 12 steps; needs
      # only onnxruntime and onnx (pinned as below) and numpy
  /var/tmp/ortvenv/bin/python scripts/make-ort-references.py --smollm2 GGUF OUT/
      # the same conversions of SmolLM2 from its GGUF, 6 prompts x 32 tokens (by hand; the
      # files are ~100-500 MB): `cargo test --release --features pack --test ort_files -- --ignored`
      # with EDGE_LLM_ORT_SMOLLM2=OUT compares them

Pinned (printed, and recorded in every JSON): torch 2.15.0, transformers 4.57.6,
optimum 2.1.0 + optimum-onnx 0.1.0, onnxruntime 1.32.0, onnx 1.23.2 (/var/tmp/ortvenv: the
shared /var/tmp/refvenv plus transformers/optimum versions optimum-onnx accepts).
"""
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile

# optimum's tied-weight handling iterates over sets: without a fixed hash seed the lm_head comes
# out as its own initializer in some runs and as Transpose(embedding) in others.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})

import numpy as np
import onnx
import onnxruntime as ort

# --long-prompts reads the committed files: onnxruntime and onnx only.
LIGHT = sys.argv[1:2] == ["--long-prompts"]
if not LIGHT:
    import torch
    import transformers
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from optimum.exporters.onnx import main_export

PINNED = {
    "torch": "2.15.0",
    "transformers": "4.57.6",
    "optimum": "2.1.0",
    "optimum-onnx": "0.1.0",
    "onnxruntime": "1.32.0",
    "onnx": "1.23.2",
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20261201


def versions():
    if LIGHT:
        got = {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
        for k, v in got.items():
            if PINNED[k] != v:
                sys.exit(f"{k} {v} is not the pinned {PINNED[k]}")
        return got
    got = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "optimum": importlib.metadata.version("optimum"),
        "optimum-onnx": importlib.metadata.version("optimum-onnx"),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
    }
    for k, v in PINNED.items():
        if got[k] != v:
            sys.exit(f"{k} {got[k]} is not the pinned {v}")
    return got


def tiny_model(dir):
    """A seeded Llama: hidden 96 (3 blocks of 32), MLP 160 (5 blocks), GQA 6:2, tied head."""
    cfg = transformers.LlamaConfig(
        vocab_size=332,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(SEED)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        # Norm weights away from 1 so a wrong norm convention shows.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    model.save_pretrained(dir)
    shutil.copy(os.path.join(ROOT, "tests/fixtures/tiny/tokenizer.json"), os.path.join(dir, "tokenizer.json"))


def smollm2_model(gguf, dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf), torch_dtype=torch.float32)
    model.save_pretrained(dir)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    tok.save_pretrained(dir)
    return tok


def export(hf_dir, out_dir):
    main_export(hf_dir, output=out_dir, task="text-generation-with-past", device="cpu", do_validation=False, no_post_process=False)
    return os.path.join(out_dir, "model.onnx")


def save(model, path):
    # One file: the fixtures are small, and edge-llm loads a single protobuf.
    large = model.ByteSize() > 1_900_000_000
    onnx.save_model(model, path, save_as_external_data=large, location=os.path.basename(path) + "_data" if large else None)


def nbits(fp32, path, block, sym, acc=None, qdq=False):
    q = MatMulNBitsQuantizer(onnx.load(fp32), block_size=block, is_symmetric=sym, accuracy_level=acc, quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator)
    q.process()
    save(q.model.model, path)


def add_bias(src, path, seed):
    """Every MatMulNBits gets a bias input (input 5), drawn from a seeded normal."""
    m = onnx.load(src)
    rng = np.random.default_rng(seed)
    for node in m.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        n = next(a.i for a in node.attribute if a.name == "N")
        bias = onnx.numpy_helper.from_array((0.1 * rng.standard_normal(n)).astype(np.float32), node.name + ".bias")
        m.graph.initializer.append(bias)
        while len(node.input) < 5:
            node.input.append("")
        node.input.append(bias.name)
    save(m, path)


def add_g_idx(src, path):
    """Every MatMulNBits gets the trivial g_idx (row k in block k / block_size), int32 [K]."""
    m = onnx.load(src)
    for node in m.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        a = {x.name: x.i for x in node.attribute}
        g = onnx.numpy_helper.from_array((np.arange(a["K"]) // a["block_size"]).astype(np.int32), node.name + ".g_idx")
        m.graph.initializer.append(g)
        while len(node.input) < 4:
            node.input.append("")
        node.input.append(g.name)
    save(m, path)


def make_variants(fp32, out, synthetic=True, prefix=""):
    """The conversions users make of an fp32 export; returns {name: path}."""
    files = {}

    def p(name):
        files[name] = os.path.join(out, f"{prefix}{name}.onnx")
        return files[name]

    shutil.copy(fp32, p("fp32"))
    save(convert_float_to_float16(onnx.load(fp32), keep_io_types=True), p("fp16"))
    save(convert_float_to_float16(onnx.load(fp32)), p("fp16-io"))
    quantize_dynamic(fp32, p("int8"), weight_type=QuantType.QInt8)
    nbits(fp32, p("int4-b32-sym"), 32, True)
    nbits(fp32, p("int4-b32-asym"), 32, False)
    nbits(fp32, p("int4-b128-sym"), 128, True)
    nbits(fp32, p("int4-b128-asym"), 128, False)
    nbits(fp32, p("int4-b32-acc4"), 32, True, acc=4)
    nbits(fp32, p("int4-qdq"), 32, True, qdq=True)
    nbits(fp32, p("int4-qdq-asym"), 32, False, qdq=True)
    if synthetic:
        add_bias(files["int4-b32-asym"], p("int4-bias"), SEED)
        add_g_idx(files["int4-b32-sym"], p("int4-gidx"))
    return files


def np_dtype(ort_type):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16}[ort_type]


def run_steps(path, prompt, steps, choose, optimize=True):
    """onnxruntime decoding `steps` tokens: the prompt in one run, then one token per run with
    the previous run's present.* as past_key_values.*; `choose(step, logits)` picks each next
    token. Returns the logits of every step (row 0: the last prompt position).
    `optimize=False`: ORT_DISABLE_ALL (no fusions)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    past = {n: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np_dtype(i.type)) for n, i in inputs.items() if n.startswith("past_key_values.")}
    rows, ids, done = [], list(prompt), 0
    for step in range(steps):
        n = len(ids)
        feeds = dict(past)
        feeds["input_ids"] = np.array([ids], dtype=np.int64)
        feeds["attention_mask"] = np.ones((1, done + n), dtype=np.int64)
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(done, done + n, dtype=np.int64)[None, :]
        res = dict(zip(outputs, sess.run(outputs, feeds)))
        rows.append(res["logits"][0, -1].astype(np.float32))
        past = {"past_key_values." + k[len("present."):]: v for k, v in res.items() if k.startswith("present.")}
        done += n
        ids = [choose(step, rows[-1])]
    return rows


def greedy(path, prompt, steps, optimize=True):
    """onnxruntime's greedy decode. Returns (tokens, logits of the last prompt position, logits
    of the last step)."""
    rows = run_steps(path, prompt, steps, lambda _, logits: int(np.argmax(logits)), optimize)
    return [int(np.argmax(r)) for r in rows], rows[0], rows[-1]


def forced_logits(path, prompt, tokens, optimize=True):
    """onnxruntime's logits at every step of a recorded greedy run, fed that run's tokens: row 0
    after the prompt, row i after tokens[i-1]."""
    return run_steps(path, prompt, len(tokens), lambda step, _: tokens[step], optimize)


def references(files, prompts, steps, out, info):
    for name, path in files.items():
        runs = []
        for prompt in prompts:
            tokens, first, last = greedy(path, prompt, steps)
            runs.append({"prompt": prompt, "tokens": tokens, "prefill_logits": [float(f"{v:.7g}") for v in first], "last_logits": [float(f"{v:.7g}") for v in last]})
        ops = sorted({f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in onnx.load(path).graph.node})
        doc = {"file": os.path.basename(path), "bytes": os.path.getsize(path), "ops": ops, "steps": steps, "runs": runs, **info}
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(doc, f, indent=0)
        print(f"{name}: {os.path.getsize(path)} bytes, tokens {[r['tokens'][:8] for r in runs]}")


def self_agreement(dir, names):
    """How far onnxruntime agrees with itself on each file of a folder `--smollm2` wrote: its
    greedy tokens with graph optimizations off (ORT_DISABLE_ALL: no fused norms, no fused
    quantized matmuls, other summation orders) against the recorded default run. A file where
    onnxruntime departs from itself is chaotic (one rounding moves the tokens): no
    implementation can give its tokens exactly without its summation order. The tokens are
    written into NAME.json (`unoptimized_tokens` of each run), with `self_spread`: at each step
    of the recorded run, fed its tokens, the max |logit diff| between the two runs — how far
    onnxruntime's own logits move with its summation order there. tests/ort_files.rs's SmolLM2
    check reads both to judge a departure against onnxruntime's own spread."""
    for name in names:
        doc = json.load(open(os.path.join(dir, f"{name}.json")))
        same, total, diff = [], 0, 0.0
        for run in doc["runs"]:
            tokens, first, _ = greedy(os.path.join(dir, f"{name}.onnx"), run["prompt"], doc["steps"], optimize=False)
            agree = next((i for i, (a, b) in enumerate(zip(tokens, run["tokens"])) if a != b), len(tokens))
            same.append(agree)
            total += len(tokens)
            diff = max(diff, float(np.abs(first - np.array(run["prefill_logits"], np.float32)).max()))
            run["unoptimized_tokens"] = [int(t) for t in tokens]
            path = os.path.join(dir, f"{name}.onnx")
            default = forced_logits(path, run["prompt"], run["tokens"])
            unoptimized = forced_logits(path, run["prompt"], run["tokens"], optimize=False)
            run["self_spread"] = [float(np.abs(a - b).max()) for a, b in zip(default, unoptimized)]
        with open(os.path.join(dir, f"{name}.json"), "w") as f:
            json.dump(doc, f, indent=0)
        print(f"{name}: onnxruntime unoptimized vs default: {sum(same)}/{total} tokens, per prompt {same}; max |prefill logit diff| {diff:.3g}", flush=True)


def dynamic_quantize_cases(out):
    """`DynamicQuantizeLinear` -> `MatMulInteger` (uint8 activations x int8 weights), the pair
    `quantize_dynamic` writes before every MatMul, and what onnxruntime computes on inputs
    chosen to hit its rounding rules: x / scale and the zero point exactly halfway between two
    integers (ties go to even), ranges on one side of zero (zero point clamped to 0 or 255),
    all zeros (scale 1 by onnxruntime's rule), and seeded random values. Writes
    dynamic-quantize.onnx and dynamic-quantize.json (tests/ort_files.rs pins these bit for bit)."""
    k, n = 32, 8
    rng = np.random.default_rng(SEED)
    w = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    h, T = onnx.helper, onnx.TensorProto
    graph = h.make_graph(
        [
            h.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"]),
            h.make_node("MatMulInteger", ["y", "w", "y_zero_point", "w_zero_point"], ["acc"]),
        ],
        "dynamic_quantize",
        [h.make_tensor_value_info("x", T.FLOAT, ["m", k])],
        [
            h.make_tensor_value_info("y", T.UINT8, ["m", k]),
            h.make_tensor_value_info("y_scale", T.FLOAT, []),
            h.make_tensor_value_info("y_zero_point", T.UINT8, []),
            h.make_tensor_value_info("acc", T.INT32, ["m", n]),
        ],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.array(0, np.int8), "w_zero_point")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path = os.path.join(out, "dynamic-quantize.onnx")
    onnx.save_model(model, path)
    # scale = (max - min) / 255 is exactly 1/16 when max - min = 255/16: x = j/16 + 1/32 sits
    # halfway between two steps.
    step = 1 / 16
    ties = np.arange(-128, 127) * step + step / 2
    halfway_x = np.concatenate([[-8.0, 7.9375], ties, -ties])[: 4 * k]
    # min = -2.5 steps: the zero point itself is 2.5.
    halfway_zp = np.concatenate([[-2.5 * step, 252.5 * step], rng.uniform(-2.5 * step, 252.5 * step, k - 2)])
    cases = {
        "x_halfway": halfway_x.reshape(4, k),
        "zero_point_halfway": halfway_zp.reshape(1, k),
        "all_positive": rng.uniform(0.5, 3.0, (2, k)),
        "all_negative": -rng.uniform(0.5, 3.0, (2, k)),
        "all_zero": np.zeros((1, k)),
        "normal": rng.standard_normal((3, k)),
        "outlier": np.concatenate([rng.standard_normal(k - 1), [900.0]]).reshape(1, k),
        "wide": 50 * rng.standard_normal((6, k)),
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    doc = {"k": k, "n": n, "cases": []}
    for name, x in cases.items():
        x = x.astype(np.float32)
        y, scale, zp, acc = sess.run(["y", "y_scale", "y_zero_point", "acc"], {"x": x})
        doc["cases"].append({
            "name": name,
            "shape": list(x.shape),
            # f32 values as their bit patterns: exact, whatever prints them.
            "x_bits": x.view(np.uint32).ravel().tolist(),
            "y": y.ravel().tolist(),
            "scale_bits": int(np.array(scale, np.float32).view(np.uint32)),
            "zero_point": int(zp),
            "acc": acc.ravel().tolist(),
        })
    doc["versions"] = versions()
    doc["generator"] = "scripts/make-ort-references.py --dynamic-quantize"
    with open(os.path.join(out, "dynamic-quantize.json"), "w") as f:
        json.dump(doc, f, indent=0)
    print("dynamic-quantize:", {c["name"]: (c["zero_point"], float(np.array(c["scale_bits"], np.uint32).view(np.float32))) for c in doc["cases"]})


def matmulnbits_int8_cases(out):
    """One `MatMulNBits` node (4 bits, block 32, symmetric) with `accuracy_level` 4: onnxruntime
    quantizes each 32-block of the activations to int8 (MLAS `QuantizeARow_CompInt8`: multiplier
    127 / amax, ties to even) and computes integer dot products. Inputs chosen to hit its rounding:
    blocks whose amax is 127 (multiplier exactly 1) with values on halves, amaxes where 127 / amax
    and 1 / (amax / 127) differ by an ulp with values where that moves the rounding, and seeded
    random rows; one row (decode) and several (prefill). Weight scales are powers of two, so on
    the rounding cases every product and sum is exact and the outputs can be pinned bit for bit.
    Writes matmulnbits-int8.onnx and matmulnbits-int8.json (tests/ort_files.rs)."""
    # K = 256: MLAS's int8 kernels take 4 blocks (128 values) at a time, then the rest.
    k, n, block = 288, 8, 32
    rng = np.random.default_rng(SEED)
    h, T = onnx.helper, onnx.TensorProto
    b = rng.integers(0, 256, size=(n, k // block, block // 2), dtype=np.uint8)
    scales = rng.choice(np.array([0.25, 0.5, 1.0, 2.0], np.float32), size=n * (k // block))
    # The second node has zero points (4-bit, two blocks a byte; odd block count), which
    # onnxruntime's int8 kernels apply through per-block sums of the activations.
    blocks = k // block
    zp = rng.integers(0, 16, size=(n, blocks + 1), dtype=np.uint8)
    zp_packed = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    nbits = dict(domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=4)
    graph = h.make_graph(
        [
            h.make_node("MatMulNBits", ["a", "b", "scales"], ["y"], **nbits),
            h.make_node("MatMulNBits", ["a", "b", "scales", "zero_points"], ["y_zp"], **nbits),
        ],
        "matmulnbits_int8",
        [h.make_tensor_value_info("a", T.FLOAT, ["m", k])],
        [h.make_tensor_value_info("y", T.FLOAT, ["m", n]), h.make_tensor_value_info("y_zp", T.FLOAT, ["m", n])],
        [
            onnx.numpy_helper.from_array(b, "b"),
            onnx.numpy_helper.from_array(scales, "scales"),
            onnx.numpy_helper.from_array(zp_packed, "zero_points"),
        ],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)], ir_version=10)
    onnx.checker.check_model(model)
    path = os.path.join(out, "matmulnbits-int8.onnx")
    onnx.save_model(model, path)

    def halves(rows):
        x = rng.integers(-100, 100, size=(rows, k)).astype(np.float32) + 0.5
        x[:, ::block] = 127.0
        x[:, block::2 * block] = -127.0
        return x

    def ulp_rows(rows):
        # amaxes where the one-division multiplier differs from the two-division one, and values
        # that round differently under them (or under ties-away instead of ties-to-even).
        x = np.zeros((rows, k), np.float32)
        f = np.float32
        for blk in range(rows * k // block):
            while True:
                amax = f(rng.uniform(20.0, 100.0))  # scale >= 0.157: a flipped rounding moves y by >= 0.039
                one, two = f(127) / amax, f(1) / (amax / f(127))
                if one != two:
                    break
            vals = [amax]
            while len(vals) < block:
                v = f(rng.uniform(-amax, amax))
                t = np.round((v * one)) + f(0.5) * rng.choice([-1, 1])
                v = f(t / one)
                if abs(v) < amax and (np.round(f(v * one)) != np.round(f(v * two)) or f(v * one) % 1 == 0.5):
                    vals.append(v)
            x.reshape(-1, block)[blk] = vals
        return x

    cases = {
        "halves_1": halves(1),
        "halves_3": halves(3),
        "ulp_1": ulp_rows(1),
        "ulp_4": ulp_rows(4),
        "normal_1": rng.standard_normal((1, k)),
        "normal_5": 10 * rng.standard_normal((5, k)),
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    w = np.stack([(b >> 0) & 15, (b >> 4) & 15], axis=-1).reshape(n, k).astype(np.float32) - 8
    w *= np.repeat(scales.reshape(n, k // block), block, axis=1)
    doc = {"k": k, "n": n, "block_size": block, "cases": []}
    for name, x in cases.items():
        x = x.astype(np.float32)
        y, y_zp = sess.run(["y", "y_zp"], {"a": x})
        # onnxruntime really computed on int8 activations: float activations give other numbers.
        float_diff = float(np.abs(y - x @ w.T).max())
        doc["cases"].append({
            "name": name,
            "shape": list(x.shape),
            "x_bits": x.view(np.uint32).ravel().tolist(),
            "y_bits": y.astype(np.float32).view(np.uint32).ravel().tolist(),
            "y_zp_bits": y_zp.astype(np.float32).view(np.uint32).ravel().tolist(),
            "exact": name.startswith("halves"),
            "max_diff_to_float_activations": float_diff,
        })
    doc["versions"] = versions()
    doc["generator"] = "scripts/make-ort-references.py --matmulnbits-int8"
    with open(os.path.join(out, "matmulnbits-int8.json"), "w") as f:
        json.dump(doc, f, indent=0)
    print("matmulnbits-int8:", {c["name"]: c["max_diff_to_float_activations"] for c in doc["cases"]})


FIXTURES = ["fp32", "fp16", "fp16-io", "int8", "int4-b32-sym", "int4-b32-asym", "int4-b128-sym", "int4-b128-asym", "int4-b32-acc4", "int4-qdq", "int4-qdq-asym", "int4-bias", "int4-gidx"]


def long_prompts(info):
    """onnxruntime on every committed tiny file with one seeded 150-token prompt (the prompt in
    one run, as users run it: longer than the 64-token chunks edge-llm's backends prefill in,
    where a per-tensor dynamic quantization must still see the whole prompt) x 12 steps."""
    src = os.path.join(ROOT, "tests/fixtures/ort")
    out = os.path.join(src, "long")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(SEED + 150)
    prompt = [1] + [int(t) for t in rng.integers(3, 332, 149)]
    references({name: os.path.join(src, f"{name}.onnx") for name in FIXTURES}, [prompt], 12, out, {**info, "generator": "scripts/make-ort-references.py --long-prompts"})


def main():
    info = {"versions": versions(), "generator": "scripts/make-ort-references.py"}
    print("versions:", info["versions"])
    with tempfile.TemporaryDirectory() as tmp:
        if LIGHT:
            long_prompts(info)
        elif len(sys.argv) > 1 and sys.argv[1] == "--dynamic-quantize":
            dynamic_quantize_cases(os.path.join(ROOT, "tests/fixtures/ort"))
        elif len(sys.argv) > 1 and sys.argv[1] == "--self-agreement":
            self_agreement(sys.argv[2], sys.argv[3:])
        elif len(sys.argv) > 1 and sys.argv[1] == "--matmulnbits-int8":
            matmulnbits_int8_cases(os.path.join(ROOT, "tests/fixtures/ort"))
        elif len(sys.argv) > 1 and sys.argv[1] == "--smollm2":
            gguf, out = sys.argv[2], sys.argv[3]
            os.makedirs(out, exist_ok=True)
            tok = smollm2_model(gguf, os.path.join(tmp, "hf"))
            fp32 = export(os.path.join(tmp, "hf"), os.path.join(tmp, "onnx"))
            files = make_variants(fp32, out, synthetic=False)
            shutil.copy(os.path.join(tmp, "hf", "tokenizer.json"), os.path.join(out, "tokenizer.json"))
            questions = [
                "What is the capital of France?",
                "Write a haiku about the sea.",
                "Explain photosynthesis in one sentence.",
                "List three prime numbers.",
                "Who wrote Romeo and Juliet?",
                "Translate 'good morning' into Spanish.",
            ]
            prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
            references(files, prompts, 32, out, info)
        else:
            out = os.path.join(ROOT, "tests/fixtures/ort")
            os.makedirs(out, exist_ok=True)
            tiny_model(os.path.join(tmp, "hf"))
            fp32 = export(os.path.join(tmp, "hf"), os.path.join(tmp, "onnx"))
            files = make_variants(fp32, out)
            prompts = [[1, 80, 17, 200], [5], [1, 44, 97, 120, 33, 250, 7, 61, 300, 12], [1, 2, 3]]
            references(files, prompts, 12, out, info)
            dynamic_quantize_cases(out)
            matmulnbits_int8_cases(out)


if __name__ == "__main__":
    main()
