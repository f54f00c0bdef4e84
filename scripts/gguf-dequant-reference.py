#!/usr/bin/env python3
"""Reference dequantizations for tests/gguf_dequant.rs, from the `gguf` Python package
(llama.cpp's gguf-py, an implementation independent of src/gguf/dequant.rs).

For every GGML type the importer reads it writes tests/fixtures/gguf-dequant/<TYPE>.bin (random
blocks: random bytes with every f16/f32 scale field set to a random finite value, so each bit
of the quants and sub-block scales is exercised) and <TYPE>.f32 (gguf's dequantization,
little-endian f32). Deterministic (fixed seed). Run with the pinned package:

    python3 -m venv /var/tmp/refvenv && /var/tmp/refvenv/bin/pip install gguf==0.19.0 numpy
    /var/tmp/refvenv/bin/python scripts/gguf-dequant-reference.py

Q8_1 and Q8_K are not in gguf-py (ggml uses them for activations): Q8_1 is dequantized as the
Q8_0 block it extends (its extra sum field dropped), Q8_K as ggml's dequantize_row_q8_K writes
it (d * q), in numpy.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

PINNED = "0.19.0"
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gguf-dequant")

# type -> (elements per block, bytes per block, blocks, [(offset, 'f16'|'f32')] scale fields)
TYPES = {
    "F32": (1, 4, 64, []),
    "F16": (1, 2, 64, []),
    "BF16": (1, 2, 64, []),
    "Q4_0": (32, 18, 8, [(0, "f16")]),
    "Q4_1": (32, 20, 8, [(0, "f16"), (2, "f16")]),
    "Q5_0": (32, 22, 8, [(0, "f16")]),
    "Q5_1": (32, 24, 8, [(0, "f16"), (2, "f16")]),
    "Q8_0": (32, 34, 8, [(0, "f16")]),
    "Q8_1": (32, 36, 8, [(0, "f16"), (2, "f16")]),
    "Q2_K": (256, 84, 2, [(80, "f16"), (82, "f16")]),
    "Q3_K": (256, 110, 2, [(108, "f16")]),
    "Q4_K": (256, 144, 2, [(0, "f16"), (2, "f16")]),
    "Q5_K": (256, 176, 2, [(0, "f16"), (2, "f16")]),
    "Q6_K": (256, 210, 2, [(208, "f16")]),
    "Q8_K": (256, 292, 2, [(0, "f32")]),
}


def blocks(rng, name):
    per, size, n, fields = TYPES[name]
    if name == "F32":
        return rng.standard_normal(n).astype("<f4").tobytes()
    if name == "F16":
        return rng.standard_normal(n).astype("<f2").tobytes()
    if name == "BF16":
        return (rng.standard_normal(n).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    raw = bytearray(rng.integers(0, 256, size * n, dtype=np.uint8).tobytes())
    for b in range(n):
        for off, kind in fields:
            v = rng.uniform(-0.05, 0.05)
            at = b * size + off
            if kind == "f16":
                raw[at : at + 2] = np.array([v], "<f2").tobytes()
            else:
                raw[at : at + 4] = np.array([v], "<f4").tobytes()
    return bytes(raw)


def reference(name, data):
    per, size, n, _ = TYPES[name]
    u8 = np.frombuffer(data, dtype=np.uint8)
    if name == "Q8_1":
        q80 = u8.reshape(n, size)[:, np.r_[0:2, 4:36]].copy()
        return dequantize(q80.reshape(-1), T.Q8_0)
    if name == "Q8_K":
        blk = u8.reshape(n, size)
        d = blk[:, 0:4].copy().view("<f4").astype(np.float32)
        q = blk[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    return dequantize(u8, T[name]).reshape(-1)


def main():
    version = getattr(gguf, "__version__", None)
    if version is None:
        from importlib.metadata import version as v

        version = v("gguf")
    if version != PINNED:
        sys.exit(f"gguf {version} installed; the fixtures are made with gguf=={PINNED}")
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(12)
    for name in TYPES:
        data = blocks(rng, name)
        out = np.asarray(reference(name, data), dtype="<f4")
        per, _, n, _ = TYPES[name]
        assert out.size == per * n, (name, out.size)
        with open(os.path.join(OUT, f"{name}.bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(OUT, f"{name}.f32"), "wb") as f:
            f.write(out.tobytes())
        print(f"{name}: {n} blocks, {len(data)} bytes -> {out.size} floats, max |x| {np.abs(out).max():.4g}")


if __name__ == "__main__":
    main()
