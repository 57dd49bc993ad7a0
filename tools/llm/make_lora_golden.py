#!/usr/bin/env python3
"""Golden output for merging LoRA adapters into the SmolLM2 GGUF weights.

Writes a seeded rank-4 adapter on q_proj and v_proj of layers 0-3 in the
format the server loads (tests/golden/lora/lora.safetensors: tensors
lora.layers.{i}.{q,v}_proj.{A,B}, B rows in GGUF order, metadata scale =
alpha / rank) and the reference logits of one prompt with W += scale * B @ A
applied in the numpy reference (tools/llm/reference.py, float64).

Usage: make_lora_golden.py [OUT_DIR]
"""

import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

RANK, ALPHA, LAYERS = 4, 8.0, 4
PROMPT = [6403, 1980, 253, 655, 28, 665, 436, 253]  # "Once upon a time, there was a"


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/lora"
    os.makedirs(out, exist_ok=True)
    m = reference.load()
    rng = np.random.default_rng(4242)
    scale = ALPHA / RANK
    tensors = {}
    for i in range(LAYERS):
        layer = m.layers[i]
        for proj, attr in [("q_proj", "wq"), ("v_proj", "wv")]:
            w = getattr(layer, attr)
            a = (rng.random((RANK, w.shape[1])) * 2 - 1) * 0.05
            b = (rng.random((w.shape[0], RANK)) * 2 - 1) * 0.05
            a, b = a.astype(np.float32), b.astype(np.float32)
            tensors[f"lora.layers.{i}.{proj}.A"] = a
            tensors[f"lora.layers.{i}.{proj}.B"] = b
            setattr(layer, attr, w + scale * (b.astype(np.float64) @ a.astype(np.float64)))
    write_safetensors(os.path.join(out, "lora.safetensors"), tensors, {"scale": str(scale), "rank": str(RANK)})
    logits = reference.forward(m, PROMPT)[-1].astype("<f4")
    logits.tofile(os.path.join(out, "last_logits.bin"))
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump({"prompt_ids": PROMPT, "rank": RANK, "alpha": ALPHA, "layers": LAYERS,
                   "last_logits_file": "last_logits.bin", "argmax": int(np.argmax(logits))}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
