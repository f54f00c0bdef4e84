#!/usr/bin/env python3
"""Independent check of the quantization formats with transformers (not edge-llm's engine):
SmolLM2-135M-Instruct loaded from its Q4_1 GGUF by transformers (dequantized: "FP32"), each
format applied as quantize-dequantize of the weights (and activation rounding where the format
rounds activations), perplexity and greedy top-1 agreement with FP32 on the eval texts
(tests/fixtures/eval: prose, code, multilingual; windows of 256 tokens, at most 4 per text).

Usage: /var/tmp/refvenv/bin/python scripts/quant-sim.py GGUF_DIR GGUF_NAME CALIBRATION.txt
(the calibration text from scripts/eval-texts.py --calibration, for the importance weights).
"""
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
d, f, calib = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
windows = []
for name in ["prose", "code", "multilingual"]:
    ids = tok(open(f"tests/fixtures/eval/{name}.txt").read(), return_tensors="pt").input_ids[0]
    windows += [ids[s : s + 256] for s in range(0, min(len(ids), 1024), 256) if len(ids[s : s + 256]) > 1]
orig = {n: p.detach().clone() for n, p in model.named_parameters()}


def run():
    out = []
    with torch.no_grad():
        for w in windows:
            out.append(model(w[None]).logits[0, :-1])
    return out


def score(logits, ref):
    nll = cnt = agree = 0
    for lg, rf, w in zip(logits, ref, windows):
        nll += torch.nn.functional.cross_entropy(lg, w[1:], reduction="sum").item()
        agree += (lg.argmax(-1) == rf.argmax(-1)).sum().item()
        cnt += len(w) - 1
    return np.exp(nll / cnt), agree / cnt


def f16(x):
    return x.half().float()


def q8_block(w):
    b = w.reshape(-1, 32)
    s = (b.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
    return (torch.round(b / s) * s).reshape(w.shape)


def q8_row(w):
    s = (w.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
    return torch.round(w / s) * s


def q4_sym_rtn(w):
    b = w.reshape(-1, 32)
    s = f16(b.abs().amax(1, keepdim=True) / 7).clamp(min=1e-12)
    return ((torch.clamp(torch.round(b / s) + 8, 0, 15) - 8) * s).reshape(w.shape)


def q4_min(w):
    """Float zero points, min/max (exact on a Q4_1 block)."""
    b = w.reshape(-1, 32)
    lo, hi = b.amin(1, keepdim=True), b.amax(1, keepdim=True)
    s = ((hi - lo) / 15).clamp(min=1e-12)
    return (torch.clamp(torch.round((b - lo) / s), 0, 15) * s + lo).reshape(w.shape)


def q4_search(w, imp):
    """Integer zero points, scale searched for the least importance-weighted error."""
    V, H = w.shape
    b = w.reshape(-1, 32)
    a = imp.reshape(1, H).expand(V, H).reshape(-1, 32)
    lo, hi = b.amin(1, keepdim=True).clamp(max=0), b.amax(1, keepdim=True).clamp(min=0)
    base = (hi - lo) / 15
    best = be = None
    for t in np.arange(0.76, 1.2401, 0.02):
        s = f16(base * t).clamp(min=1e-12)
        for z in [torch.clamp(fn(-lo / s), 0, 15) for fn in (torch.floor, torch.round, torch.ceil)]:
            for refit in (False, True):
                ss = s
                if refit:
                    c = torch.clamp(torch.round(b / s) + z, 0, 15) - z
                    ss = f16((a * b * c).sum(1, keepdim=True) / (a * c * c).sum(1, keepdim=True).clamp(min=1e-20)).clamp(min=1e-12)
                dq = (torch.clamp(torch.round(b / ss) + z, 0, 15) - z) * ss
                e = (a * (b - dq) ** 2).sum(1, keepdim=True)
                if best is None:
                    best, be = dq, e
                else:
                    m = e < be
                    best, be = torch.where(m, dq, best), torch.where(m, e, be)
    return best.reshape(w.shape)


hooks = []


def activations(mode):
    for h in hooks:
        h.remove()
    hooks.clear()
    if mode is None:
        return

    def pre(m, inp):
        x = inp[0]
        if mode == "tensor":  # DynamicQuantizeLinear: uint8, one scale and zero point per tensor
            lo, hi = min(x.min().item(), 0), max(x.max().item(), 0)
            s = (hi - lo) / 255
            zp = round(-lo / s)
            return ((((torch.round(x / s) + zp).clamp(0, 255)) - zp) * s,)
        b = x.reshape(-1, 32)  # int8 per block of 32
        s = (b.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
        return ((torch.round(b / s) * s).reshape(x.shape),)

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_pre_hook(pre))


def apply(layers, emb):
    for n, p in model.named_parameters():
        fn = (emb if "embed" in n else layers) if p.dim() == 2 else None
        p.data = fn(orig[n]) if fn else orig[n].clone()


# Importance of the head's input channels (mean square) from 500 calibration samples of 32 tokens.
cal = tok(open(calib).read()[:400000], return_tensors="pt").input_ids[0]
acc, cnt = torch.zeros(model.config.hidden_size), 0


def grab(m, inp):
    global acc, cnt
    x = inp[0].reshape(-1, acc.shape[0])
    acc += (x * x).sum(0)
    cnt += x.shape[0]


h = model.lm_head.register_forward_pre_hook(grab)
with torch.no_grad():
    stride = (len(cal) - 32) // 500
    for i in range(500):
        model(cal[i * stride : i * stride + 32][None])
h.remove()
imp = acc / cnt

ref = run()
rows = [
    ("fp32 (GGUF dequantized)", None, None, None),
    ("fp16", f16, f16, None),
    ("int8 per-channel, per-tensor activations (quantize_dynamic; before)", q8_row, q8_row, "tensor"),
    ("int8 blocks of 32, weights and activations (after)", q8_block, q8_block, "block"),
    ("int4 symmetric RTN (before)", q4_sym_rtn, q4_sym_rtn, None),
    ("int4 float zero points; head int4 searched, calibrated (after)", q4_min, lambda w: q4_search(w, imp), "block"),
    ("int4 float zero points; head int8 (over 100 MB)", q4_min, q8_block, "block"),
]
base = None
print("| format | perplexity | vs fp32 | top-1 agreement |\n|---|---:|---:|---:|")
for name, lf, ef, act in rows:
    apply(lf, ef)
    activations(act)
    p, a = score(run(), ref)
    base = base or p
    print(f"| {name} | {p:.3f} | {(p / base - 1) * 100:+.2f} % | {a * 100:.1f} % |", flush=True)
