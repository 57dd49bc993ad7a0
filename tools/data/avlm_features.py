#!/usr/bin/env python3
"""Audio -> frozen Whisper tiny.en encoder features, exactly as the Rust server does it.

Shared by the data generator (tools/data/make_synth_data.py) and the trainer
(tools/train/train_projector.py).

Conventions (pinned by the server's golden tests):
  * audio: 16 kHz mono float32 in [-1, 1];
  * mel: Whisper log-mel of the utterance at its OWN length (no 30 s padding),
    computed by `log_mel` from tools/golden/make_mel_golden.py with the filter
    bank `whisper_filters()` (cached here as .avlm/train/mel_filters_80.npy);
  * frames = samples // 160 (what log_mel returns); if odd, drop the LAST frame;
  * encoder: onnxruntime on .avlm/models/whisper-tiny.en-encoder.onnx, input
    `mel` [1, 80, frames], output `features` [1, frames/2, 384].

`stack4(features)` does the projector's k=4 stacking: G = T // 4,
X = features[:4G].reshape(G, 1536).
"""
from __future__ import annotations

import os
import sys
import wave

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TRAIN_DIR = os.path.join(REPO, ".avlm", "train")
ENCODER = os.path.join(REPO, ".avlm", "models", "whisper-tiny.en-encoder.onnx")
FILTERS_CACHE = os.path.join(TRAIN_DIR, "mel_filters_80.npy")
SR = 16000
STACK_K = 4
ENC_HIDDEN = 384

sys.path.insert(0, os.path.join(REPO, "tools", "golden"))
import make_mel_golden  # noqa: E402  (log_mel, whisper_filters)


def mel_filters() -> np.ndarray:
    """Whisper's 80-bin mel filter bank [80, 201]; downloaded once via pip, then cached."""
    if os.path.exists(FILTERS_CACHE):
        return np.load(FILTERS_CACHE)
    f = np.asarray(make_mel_golden.whisper_filters())
    os.makedirs(TRAIN_DIR, exist_ok=True)
    tmp = FILTERS_CACHE + ".tmp.npy"
    np.save(tmp, f)
    os.replace(tmp, FILTERS_CACHE)
    return f


def log_mel(audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """[80, frames] float32, frames even (the last frame dropped when odd)."""
    mel = make_mel_golden.log_mel(np.asarray(audio, dtype=np.float64), filters)
    if mel.shape[1] % 2:
        mel = mel[:, :-1]
    return mel.astype(np.float32)


class Encoder:
    """The frozen Whisper tiny.en encoder (ONNX), single-threaded by default."""

    def __init__(self, path: str = ENCODER, threads: int = 1):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.filters = mel_filters()

    def features(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz float audio -> encoder features [frames/2, 384] float32."""
        mel = log_mel(audio, self.filters)
        if mel.shape[1] < 2:
            raise ValueError("audio too short for one encoder frame")
        out = self.sess.run(["features"], {"mel": mel[None]})[0]
        return out[0]


def stack4(feats: np.ndarray, k: int = STACK_K) -> np.ndarray:
    g = feats.shape[0] // k
    return feats[: g * k].reshape(g, k * feats.shape[1])


def read_wav(path: str) -> np.ndarray:
    """16-bit PCM wav -> float32 [-1, 1]; must be 16 kHz mono."""
    with wave.open(path) as w:
        if w.getframerate() != SR or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16 kHz mono 16-bit, got {w.getframerate()} Hz "
                             f"{w.getnchannels()} ch {8 * w.getsampwidth()} bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: str, audio: np.ndarray, sr: int = SR) -> None:
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    tmp = path + ".tmp"
    with wave.open(tmp, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    os.replace(tmp, path)
