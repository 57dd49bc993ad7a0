"""Writes the AV-HuBERT video encoder goldens: PyTorch's features (tools/avsr/avhubert_torch.py)
for tiny random models, which the ONNX export (tools/avsr/avhubert_onnx.py) must reproduce.

    /work/.trainvenv/bin/python tools/avsr/make_avhubert_golden.py   # needs torch

The ResNet-18 trunk is fixed at 64..512 channels (11M weights, 44 MB in float32) whatever the
transformer's size, too big to commit. So the weights are not stored: both this script and the
tests make them with `avhubert_onnx.random_tensors(config, seed)` (numpy's PCG64, a recipe spelled
out there), and each golden records their sha256 so that a change in numpy's stream shows as such.

tests/golden/avhubert/<name>/:
  config.json   the model config (AV-HuBERT's names), the `--config` of avhubert_onnx.py
  golden.json   seed, weights digest, shapes, tolerance
  input.bin     float32 [1, 1, T, 88, 88] normalised mouth crops (little-endian)
  features.bin  float32 [1, T, D] PyTorch's output
"""

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "golden", "avhubert")
sys.path.insert(0, HERE)

import avhubert_onnx  # noqa: E402
from avhubert_torch import AVHubertVideo  # noqa: E402

TINY = {"encoder_embed_dim": 32, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_embed_dim": 64}
GOLDENS = {
    # the released models' layout (pre-LN) with Llama-AVSR's encoder LoRA (its scaling, a tiny rank)
    "pre_ln_lora": (dict(TINY, layer_norm_first=True, lora_scaling=2.0, lora_rank=4), 11, 7),
    # fairseq's other layout (post-LN), no LoRA
    "post_ln": (dict(TINY, layer_norm_first=False), 12, 5),
}
TOLERANCE = 1e-4


def torch_model(cfg, tensors):
    model = AVHubertVideo(cfg).eval()
    own = model.state_dict()
    ours = {k for k in own if not k.endswith("num_batches_tracked")}
    if ours != set(tensors):
        raise SystemExit(f"key sets differ: torch only {sorted(ours - set(tensors))}, "
                         f"numpy only {sorted(set(tensors) - ours)}")
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked")})
    model.load_state_dict(state, strict=True)
    return model


def main():
    torch.manual_seed(0)
    for name, (cfg, seed, frames) in GOLDENS.items():
        tensors = avhubert_onnx.random_tensors(cfg, seed)
        model = torch_model(cfg, tensors)
        rng = np.random.default_rng(seed)
        # smooth-ish crops: a random image per frame plus a drift, in the normalised range
        base = rng.standard_normal((1, 1, 1, 88, 88))
        video = (base + 0.5 * rng.standard_normal((1, 1, frames, 88, 88))).astype(np.float32)
        with torch.no_grad():
            features = model(torch.from_numpy(video)).numpy()
            f64 = model.double()(torch.from_numpy(video).double()).numpy()
        d = cfg["encoder_embed_dim"]
        assert features.shape == (1, frames, d), features.shape
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        video.astype("<f4").tofile(os.path.join(folder, "input.bin"))
        features.astype("<f4").tofile(os.path.join(folder, "features.bin"))
        meta = {
            "what": "AV-HuBERT video path (tools/avsr/avhubert_torch.py) on random weights",
            "made_by": "tools/avsr/make_avhubert_golden.py",
            "torch": torch.__version__,
            "seed": seed,
            "weights": "avhubert_onnx.random_tensors(config, seed)",
            "weights_sha256": avhubert_onnx.digest(tensors),
            "input_shape": list(video.shape),
            "features_shape": list(features.shape),
            "tolerance_max_abs": TOLERANCE,
            "torch_f32_vs_f64_max_abs": float(np.abs(features - f64).max()),
        }
        with open(os.path.join(folder, "golden.json"), "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        print(f"{name}: features {features.shape}, |x| max {np.abs(features).max():.3f}, "
              f"f32 vs f64 {meta['torch_f32_vs_f64_max_abs']:.2e}")


if __name__ == "__main__":
    main()
