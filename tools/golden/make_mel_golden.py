#!/usr/bin/env python3
"""Golden log-mel spectrograms for avlm's Rust front end.

Reference: Whisper's own `log_mel_spectrogram` math (openai-whisper
20250625, whisper/audio.py) re-done in float64 numpy with the mel filter
bank Whisper ships (`whisper/assets/mel_filters.npz` from the PyPI sdist),
cross-checked against faster-whisper 1.2.1's numpy feature extractor.
Inputs are real clips from Debian's pocketsphinx-testdata, at their own
length (no 30 s padding).

Writes tests/golden/mel/:
  mel_filters_80.bin       float32 [80, 201] from mel_filters.npz
  <clip>.bin               float32 [80, frames] log-mel of the clip
  golden.json              clips, shapes, source files, reference versions

Usage: make_mel_golden.py [OUT_DIR]   (needs: numpy, faster-whisper --no-deps,
pip able to download the openai-whisper sdist)
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import wave

import numpy as np

WHISPER_SDIST = "openai-whisper==20250625"
DATA = "/usr/share/pocketsphinx/test/data"
CLIPS = {
    "librivox_0870": f"{DATA}/librivox/sense_and_sensibility_01_austen_64kb-0870.wav",
    "librivox_0890": f"{DATA}/librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
    "cards_001": f"{DATA}/cards/001.wav",
}
N_FFT, HOP = 400, 160


def whisper_filters():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", WHISPER_SDIST, "-d", tmp],
            check=True,
        )
        (sdist,) = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        with tarfile.open(os.path.join(tmp, sdist)) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("whisper/assets/mel_filters.npz"))
            data = tar.extractfile(member).read()
    return np.load(io.BytesIO(data))["mel_80"]


def faster_whisper_extractor():
    # Load the module file alone: the package's __init__ pulls in PyAV and
    # CTranslate2, which the feature extractor does not need.
    import importlib.util
    import site

    for base in site.getsitepackages():
        path = os.path.join(base, "faster_whisper", "feature_extractor.py")
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("fw_feature_extractor", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.FeatureExtractor
    raise SystemExit("faster-whisper is not installed (pip install --no-deps faster-whisper==1.2.1)")


def read_wav(path):
    with wave.open(path) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


def log_mel(audio, filters):
    # torch.stft(center=True, pad_mode="reflect") with a periodic Hann window.
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    n = 1 + (len(padded) - N_FFT) // HOP
    frames = np.stack([padded[i * HOP : i * HOP + N_FFT] * window for i in range(n)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    power = power[:-1].T  # Whisper drops the last frame
    mel = filters.astype(np.float64) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/golden/mel"
    os.makedirs(out, exist_ok=True)
    filters = whisper_filters()
    filters.astype("<f4").tofile(os.path.join(out, "mel_filters_80.bin"))
    FeatureExtractor = faster_whisper_extractor()

    fw = FeatureExtractor(feature_size=80)
    meta = {"reference": f"{WHISPER_SDIST} audio.log_mel_spectrogram math in float64 numpy", "clips": []}
    for name, path in CLIPS.items():
        audio = read_wav(path)
        mel = log_mel(audio, filters)
        # faster-whisper pads 160 zeros and drops the last frame: same frame
        # count; it differs from Whisper only in that padding's effect on the
        # final frame, so compare all but the last frame.
        ref2 = fw(audio.astype(np.float32), padding=0)
        k = min(mel.shape[1], ref2.shape[1]) - 1
        cross = float(np.max(np.abs(mel[:, :k] - ref2[:, :k])))
        mel.astype("<f4").tofile(os.path.join(out, f"{name}.bin"))
        meta["clips"].append(
            {"name": name, "wav": path, "samples": len(audio), "n_mels": 80, "frames": mel.shape[1],
             "faster_whisper_max_abs_diff": cross}
        )
        print(f"{name}: {mel.shape}, vs faster-whisper max abs diff {cross:.2e}")
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
