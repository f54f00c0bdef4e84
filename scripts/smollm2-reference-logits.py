#!/usr/bin/env python3
"""Reference logits for tests/gguf_import.rs: Hugging Face transformers loading the same
SmolLM2-135M-Instruct Q4_1 GGUF (transformers dequantizes it with the `gguf` package and runs
its own Llama in fp32, independent of our importer, exporter and engine).

Writes tests/fixtures/smollm2-reference.json: for each prompt, its token ids (from the GGUF's
tokenizer as transformers converts it) and the top-k logits of the last position. Run with the
pinned versions (no network needed once installed):

    /var/tmp/refvenv/bin/pip install torch transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 numpy
    /var/tmp/refvenv/bin/python scripts/smollm2-reference-logits.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
import transformers
import gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

PINNED = {"transformers": "5.24.0", "gguf": "0.19.0", "accelerate": "1.15.0"}
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
]
TOP_K = 8
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    from importlib.metadata import version

    for pkg, want in PINNED.items():
        if version(pkg) != want:
            sys.exit(f"{pkg} {version(pkg)} installed; the reference is made with {pkg}=={want}")
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    d, f = os.path.split(os.path.abspath(path))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    out = {
        "model": f,
        "versions": {"transformers": transformers.__version__, "gguf": version("gguf"), "torch": torch.__version__},
        "top_k": TOP_K,
        "prompts": [],
    }
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        top = torch.topk(logits, TOP_K)
        out["prompts"].append(
            {
                "text": p,
                "ids": ids,
                "top_ids": top.indices.tolist(),
                "top_logits": [round(v, 5) for v in top.values.tolist()],
            }
        )
        print(repr(p), len(ids), "tokens, top", top.indices.tolist()[:3], [round(v, 3) for v in top.values.tolist()[:3]])
    dest = os.path.join(ROOT, "tests/fixtures/smollm2-reference.json")
    with open(dest, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print("wrote", dest)


if __name__ == "__main__":
    main()
