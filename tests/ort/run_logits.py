"""Run an edge-llm test model with onnxruntime: prints its logits for the given prompt as JSON.

Usage: python3 run_logits.py MODEL.onnx TOKEN_ID...  (called by tests/ort_compat.rs)
"""
import json
import sys

import numpy as np
import onnxruntime as ort

path, ids = sys.argv[1], [int(t) for t in sys.argv[2:]]
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
feeds = {}
for i in sess.get_inputs():
    if i.name == "input_ids":
        feeds[i.name] = np.array([ids], dtype=np.int64)
    elif i.name == "attention_mask":
        feeds[i.name] = np.ones((1, len(ids)), dtype=np.int64)
    elif i.name == "position_ids":
        feeds[i.name] = np.arange(len(ids), dtype=np.int64)[None, :]
    else:  # past_key_values.*: [batch, kv_heads, 0, head_dim]
        feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
logits = sess.run(["logits"], feeds)[0]
json.dump(logits.reshape(-1).tolist(), sys.stdout)
