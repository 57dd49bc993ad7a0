#!/usr/bin/env python3
"""A caption bundle with a SigLIP vision tower of a released size and random
weights, for measuring speed (`avlm bench --parts captions --bundle DIR`):
no SigLIP weights ship in any registry, and speed does not depend on them.

    python tools/vision/make_random_siglip_bundle.py [--size b16-384|b16-512|l16-384] [OUT_DIR]

The tower is written as ONNX by tools/vision/siglip_onnx.py (the same graph the
VideoLLM-online and SmolVLM converters write, with the attention-pooling head),
with VideoLLM-online's 10 tokens a frame (pooled + 3x3 grid), a random
Linear-GELU-Linear projector into SmolLM2-135M's width, the default bundle's
LLM and caption format. OUT_DIR defaults to .avlm/bundles/siglip-<size>-random;
the LLM path is relative to it, as in the default bundle. Needs numpy and onnx.
"""

import argparse
import os
import sys

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle"))
from siglip_onnx import siglip_onnx, siglip_tensor_names  # noqa: E402
from make_default_bundle import VISION_MANIFEST, safetensors_bytes  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Released SigLIP vision towers: width, layers, heads, MLP width, image size, patch.
SIZES = {
    "b16-384": (768, 12, 12, 3072, 384, 16),   # siglip-base-patch16-384
    "b16-512": (768, 12, 12, 3072, 512, 16),   # SmolVLM's tower
    "l16-384": (1024, 24, 16, 4096, 384, 16),  # VideoLLM-online's tower
}
LLM_WIDTH = 576  # SmolLM2-135M


def shape_of(name, d, inner, grid, patch):
    leaf = name.split(".", 1)[1] if name.startswith("vision_model.") else name
    if leaf.endswith("patch_embedding.weight"):
        return (d, 3, patch, patch)
    if leaf.endswith("position_embedding.weight"):
        return (grid * grid, d)
    if leaf.endswith("head.probe"):
        return (1, 1, d)
    if leaf.endswith("in_proj_weight"):
        return (3 * d, d)
    if leaf.endswith("in_proj_bias"):
        return (3 * d,)
    if ".fc1.weight" in leaf:
        return (inner, d)
    if ".fc1.bias" in leaf:
        return (inner,)
    if ".fc2.weight" in leaf:
        return (d, inner)
    if leaf.endswith(".weight") and ("proj" in leaf):
        return (d, d)
    return (d,)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="b16-384")
    ap.add_argument("out", nargs="?")
    args = ap.parse_args()
    d, layers, heads, inner, size, patch = SIZES[args.size]
    out = args.out or os.path.join(ROOT, ".avlm", "bundles", f"siglip-{args.size}-random")
    os.makedirs(out, exist_ok=True)
    grid = size // patch
    cfg = {"hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads,
           "intermediate_size": inner, "image_size": size, "patch_size": patch,
           "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}
    rng = np.random.default_rng(0)
    prefix = "vision_model."
    tensors = {}
    for name in siglip_tensor_names(cfg, prefix, head=True):
        shape = shape_of(name, d, inner, grid, patch)
        if "layernorm" in name or "layer_norm" in name:
            tensors[name] = np.ones(shape, np.float32) if name.endswith("weight") else np.zeros(shape, np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    model = siglip_onnx(lambda n: tensors[n], cfg, prefix, pooled=True)
    encoder = os.path.join(out, "vision_encoder.onnx")
    onnx.save(model, encoder + ".tmp")
    os.replace(encoder + ".tmp", encoder)

    proj = {
        "vision.fc1.weight": (rng.standard_normal((LLM_WIDTH, d)) * 0.02).astype(np.float32),
        "vision.fc1.bias": np.zeros(LLM_WIDTH, np.float32),
        "vision.fc2.weight": (rng.standard_normal((LLM_WIDTH, LLM_WIDTH)) * 0.02).astype(np.float32),
        "vision.fc2.bias": np.zeros(LLM_WIDTH, np.float32),
    }
    with open(os.path.join(out, "vision_projector.safetensors"), "wb") as f:
        f.write(safetensors_bytes(proj, {"avlm": f"random, for speed only (SigLIP {args.size})"}))
    vision = (VISION_MANIFEST
              .replace('encoder = "../../models/efficientnet-lite2.onnx"', 'encoder = "vision_encoder.onnx"')
              .replace("mean = [0.485, 0.456, 0.406]", "mean = [0.5, 0.5, 0.5]")
              .replace("std = [0.229, 0.224, 0.225]", "std = [0.5, 0.5, 0.5]")
              .replace("hidden = 1280", f"hidden = {d}")
              .replace("# the pooled vector, then the 9x9 map pooled to 3x3",
                       f"# the pooled vector, then the {grid}x{grid} grid pooled to 3x3"))
    for old in ('encoder = "vision_encoder.onnx"', f"hidden = {d}", "mean = [0.5, 0.5, 0.5]"):
        assert old in vision, f"VISION_MANIFEST no longer has what {old!r} replaces"
    manifest = f'''# avlm bundle for speed measurements: a random SigLIP {args.size} tower (tools/vision/make_random_siglip_bundle.py)
name = "siglip-{args.size}-random"
description = "Random SigLIP {args.size} vision tower ({size} px, {grid}x{grid} patches, width {d}) + random projector + SmolLM2-135M-Instruct: for speed, not captions"

[projector]
weights = "vision_projector.safetensors"

[llm]
weights = "../../models/SmolLM2-135M-Instruct.Q4_1.gguf"
format = "gguf"
weight_mode = "mixed"
tokenizer = "gguf"
max_context = 2048

[prompts]

[decoding]
stop = ["<|im_end|>", "<|endoftext|>"]
''' + vision
    with open(os.path.join(out, "avlm.toml"), "w") as f:
        f.write(manifest)
    print(f"wrote {out} ({os.path.getsize(encoder) >> 20} MiB encoder)")


if __name__ == "__main__":
    main()
