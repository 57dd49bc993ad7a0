#!/usr/bin/env python3
"""The Whisper tiny.en encoder in PyTorch (frozen, or its top blocks tuned), built from the
initializers of avlm's own ONNX export (.avlm/models/whisper-tiny.en-encoder.onnx), for feature
extraction on a GPU.

It computes what tools/data/avlm_features.Encoder (onnxruntime, the server's graph) computes:
conv1 (k3, pad 1) + GELU(erf), conv2 (k3, stride 2, pad 1) + GELU, + sinusoidal positions,
4 pre-LN blocks (fused qkv, q scaled by 1/8, 6 heads of 64; erf-GELU MLP 1536), final LN,
eps 1e-5.  Several utterances run as one padded batch: the mel is padded with zeros (what
conv's own zero padding sees at the end of a shorter utterance) and padded key positions are
masked, so each utterance's features equal the unpadded run (checked by `--check`).

    # compare with onnxruntime on the real clips / a few training wavs
    .avlm/venv/bin/python tools/train/whisper_torch.py --check [--device cpu]

Weights can also come from a safetensors file (`save_weights`), e.g. float16 for transfer.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as TF

N_LAYERS, D, HEADS = 4, 384, 6


def onnx_weights(path: str) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name.startswith("encoder/")}


def save_weights(w: dict[str, np.ndarray], path: str, dtype=np.float16) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in w.items()}, path)


def load_weights(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".onnx"):
        return onnx_weights(path)
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(path).items()}


def key_mask(lengths: list[int], T: int, like: torch.Tensor) -> torch.Tensor | None:
    """Additive attention mask [B, 1, 1, T]: -inf on key positions at or past each row's length;
    None when every row is T long."""
    if all(n == T for n in lengths):
        return None
    valid = torch.arange(T, device=like.device)[None] < torch.tensor(lengths, device=like.device)[:, None]
    mask = torch.zeros(len(lengths), 1, 1, T, device=like.device, dtype=like.dtype)
    return mask.masked_fill_(~valid[:, None, None, :], float("-inf"))


class WhisperEncoder(torch.nn.Module):
    """`upto` < N_LAYERS stops after that many blocks and skips the final LN: the hidden state that
    `top` (with `first` = upto) carries on from, for tuning the top blocks (train_projector.py
    --tune-encoder-top)."""

    def __init__(self, w: dict[str, np.ndarray], upto: int = N_LAYERS):
        super().__init__()
        if not 0 <= upto <= N_LAYERS:
            raise ValueError(f"upto must be 0..{N_LAYERS}, got {upto}")
        self.upto = upto
        self.w = torch.nn.ParameterDict()
        for k, v in w.items():
            self.w[k.replace("/", "__")] = torch.nn.Parameter(torch.from_numpy(np.asarray(v, np.float32).copy()),
                                                             requires_grad=False)

    def p(self, name: str) -> torch.Tensor:
        return self.w[("encoder/" + name).replace("/", "__")]

    @torch.no_grad()
    def forward(self, mel: torch.Tensor, frames: list[int] | None = None) -> torch.Tensor:
        """mel [B, 80, T] (T even; zero-padded past each utterance's own `frames`) ->
        features [B, T/2, 384]; rows past frames[b]/2 are garbage."""
        T = mel.shape[2]
        x = TF.gelu(TF.conv1d(mel, self.p("conv1/weight"), self.p("conv1/bias"), padding=1))
        x = TF.gelu(TF.conv1d(x, self.p("conv2/weight"), self.p("conv2/bias"), stride=2, padding=1))
        x = x.transpose(1, 2) + self.p("position_encodings/encodings")[: T // 2]
        mask = None if frames is None else key_mask([f // 2 for f in frames], T // 2, x)
        for i in range(self.upto):
            x = self._block(x, i, mask)
        if self.upto < N_LAYERS:
            return x
        return TF.layer_norm(x, (D,), self.p("layer_norm/gamma"), self.p("layer_norm/beta"), 1e-5)

    def _block(self, x: torch.Tensor, i: int, mask: torch.Tensor | None) -> torch.Tensor:
        B = x.shape[0]
        a = f"layer_{i}/self_attention/"
        h = TF.layer_norm(x, (D,), self.p(a + "layer_norm/gamma"), self.p(a + "layer_norm/beta"), 1e-5)
        qkv = h @ self.p(a + "linear_0/weight_t") + self.p(a + "linear_0/bias")
        q, k, v = (t.reshape(B, -1, HEADS, D // HEADS).transpose(1, 2) for t in qkv.split(D, -1))
        s = (q * 0.125) @ k.transpose(-1, -2)
        if mask is not None:
            s = s + mask
        ctx = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, D)
        x = x + ctx @ self.p(a + "linear_1/weight_t") + self.p(a + "linear_1/bias")
        f = f"layer_{i}/ffn/"
        h = TF.layer_norm(x, (D,), self.p(f + "layer_norm/gamma"), self.p(f + "layer_norm/beta"), 1e-5)
        h = TF.gelu(h @ self.p(f + "linear_0/weight_t") + self.p(f + "linear_0/bias"))
        return x + h @ self.p(f + "linear_1/weight_t") + self.p(f + "linear_1/bias")

    def top_names(self, first: int) -> list[str]:
        """Parameter keys of blocks first..N_LAYERS-1 and the final LN."""
        pre = tuple(f"encoder__layer_{i}__" for i in range(first, N_LAYERS)) + ("encoder__layer_norm__",)
        return [k for k in self.w.keys() if k.startswith(pre)]

    def top(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """One utterance's hidden state after `first` blocks [T, D] -> its features [T, D], with
        gradients for the top blocks' parameters (when they require them)."""
        return self.top_batch([x], first)[0]

    def top_batch(self, xs: list[torch.Tensor], first: int) -> list[torch.Tensor]:
        """`top` for several utterances as one padded batch (padded keys masked, so each
        result equals its own `top` run)."""
        T = max(x.shape[0] for x in xs)
        y = xs[0].new_zeros(len(xs), T, D)
        for b, x in enumerate(xs):
            y[b, : x.shape[0]] = x
        mask = key_mask([x.shape[0] for x in xs], T, y)
        for i in range(first, N_LAYERS):
            y = self._block(y, i, mask)
        y = TF.layer_norm(y, (D,), self.p("layer_norm/gamma"), self.p("layer_norm/beta"), 1e-5)
        return [y[b, : x.shape[0]] for b, x in enumerate(xs)]

    def top_tensors(self, first: int) -> dict[str, np.ndarray]:
        """The tuned parameters (`top_names(first)`) under their ONNX initializer names, float32:
        what tools/bundle/patch_encoder.py writes into the encoder graph."""
        return {k.replace("__", "/"): self.w[k].detach().float().cpu().numpy() for k in self.top_names(first)}

    def features_batch(self, mels: list[np.ndarray], device) -> list[torch.Tensor]:
        """Each mel [80, frames] (frames even, avlm_features.log_mel) -> features [frames/2, 384]."""
        T = max(m.shape[1] for m in mels)
        x = torch.zeros(len(mels), 80, T, device=device)
        for b, m in enumerate(mels):
            x[b, :, : m.shape[1]] = torch.from_numpy(m).to(device)
        out = self.forward(x, [m.shape[1] for m in mels])
        return [out[b, : m.shape[1] // 2] for b, m in enumerate(mels)]


def check(device: str) -> None:
    """Features of the torch encoder vs onnxruntime: single utterances and one padded batch."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    import glob

    import avlm_features as F

    ort_enc = F.Encoder(threads=2)
    enc = WhisperEncoder(onnx_weights(F.ENCODER)).to(device)
    wavs = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav"))[:3]
    wavs += sorted(glob.glob(os.path.join(F.TRAIN_DIR, "data", "wav", "*.wav")))[:5]
    mels = [F.log_mel(F.read_wav(p), ort_enc.filters) for p in wavs]
    ref = [ort_enc.sess.run(["features"], {"mel": m[None]})[0][0] for m in mels]
    got = [t.cpu().numpy() for t in enc.features_batch(mels, device)]
    worst = 0.0
    for p, r, g in zip(wavs, ref, got):
        d = float(np.abs(r - g).max())
        worst = max(worst, d)
        print(f"{os.path.basename(p)}: frames {r.shape[0]}  max |torch - onnxruntime| {d:.2e} (scale {np.abs(r).max():.1f})")
    w16 = {k: v.astype(np.float16).astype(np.float32) for k, v in onnx_weights(F.ENCODER).items()}
    g16 = WhisperEncoder(w16).to(device).features_batch(mels, device)
    d16 = max(float(np.abs(r - g.cpu().numpy()).max()) for r, g in zip(ref, g16))
    print(f"worst (f32 weights, batched with padding): {worst:.2e}; with float16-rounded weights: {d16:.2e}")
    if worst > 1e-3:
        raise SystemExit("torch encoder disagrees with onnxruntime")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.check:
        check(a.device)
