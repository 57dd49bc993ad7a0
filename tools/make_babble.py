#!/usr/bin/env python3
"""The default babble noise for `avlm eval lrs3 --snr`: six espeak-ng
talkers (different voices, rates and texts) reading at once, 60 s, 16 kHz
mono, peak-normalised. Deterministic.

Usage: make_babble.py OUT.wav
"""

import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

TALKERS = [
    ("en-us+m1", 165, "Markets opened higher this morning as traders weighed the latest figures on employment and prices across the region."),
    ("en-gb+f3", 150, "The committee will meet again on Thursday to discuss the budget, the new library and repairs to the bridge."),
    ("en-us+f1", 175, "Remember to water the tomatoes twice a week and to keep the greenhouse door open on warm afternoons."),
    ("en-sc+m4", 140, "After the storm the fishermen counted their boats and found that two were missing from the harbour."),
    ("en-us+m7", 185, "Our flight was delayed for three hours, so we walked around the terminal and ate noodles by the window."),
    ("en-gb-x-rp+f4", 160, "She tuned the violin carefully, played a slow scale, and then began the first movement from memory."),
]
RATE = 16000
SECONDS = 60


def main():
    out = sys.argv[1]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    mix = np.zeros(RATE * SECONDS)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (voice, speed, text) in enumerate(TALKERS):
            raw = os.path.join(tmp, f"{k}.wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, (text + " ") * 8], check=True)
            res = os.path.join(tmp, f"{k}_16k.wav")
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", raw, "-ar", str(RATE), "-ac", "1", res], check=True)
            with wave.open(res) as w:
                x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
            x = np.roll(np.resize(x, mix.size), k * RATE * 7)  # talkers start at different points
            mix += x / (np.sqrt(np.mean(x**2)) + 1e-9)
    mix *= 0.9 / np.max(np.abs(mix))
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((mix * 32767).astype("<i2").tobytes())


if __name__ == "__main__":
    main()
