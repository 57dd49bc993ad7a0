#!/usr/bin/env python3
"""Makes the bundled demo clip, samples/demo.webm, and its speech times, samples/demo.json.

Three sentences read by a natural neural voice that the default model never trained on (Kokoro-82M
voice VOICE, one of the four kept out of training; tools/data/kokoro_voices.py), separated by
silences of known length, over a 25 fps test-pattern video: VP8 + Opus in WebM, the way a browser
or a camera app would send it. The speech bounds are measured on the samples (first and last sample
above -40 dBFS), as in tools/make_test_media.py.

The Kokoro model and voices are a tools-only dependency (see kokoro_voices.py for how to install
them from the registries); the demo itself only needs the committed clip.

Usage: .avlm/venv/bin/python tools/make_demo_sample.py [--voice bf_lily] [--out samples]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "data"))
import kokoro_voices as K  # noqa: E402

# The same sentences, gaps and rate as the test media (only the voice differs).
from make_test_media import GAPS, RATE, TAIL, UTTERANCES  # noqa: E402


def resample(x: np.ndarray, sr: int) -> np.ndarray:
    """To 16 kHz with FFmpeg's resampler (soxr is not needed for a 24 kHz -> 16 kHz step)."""
    r = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "f32le", "-ar", str(sr), "-ac", "1",
         "-i", "-", "-ar", str(RATE), "-f", "f32le", "-"],
        input=x.astype("<f4").tobytes(), capture_output=True, check=True)
    return np.frombuffer(r.stdout, dtype="<f4")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voice", default="bf_lily", choices=sorted(K.HELDOUT),
                    help="a Kokoro voice kept out of the default model's training")
    ap.add_argument("--out", default=os.path.normpath(os.path.join(HERE, "..", "samples")))
    args = ap.parse_args()

    tts = K.KokoroTTS(threads=1)
    parts, speech, t = [], [], 0
    for gap_s, text in zip(GAPS, UTTERANCES):
        gap = np.zeros(int(gap_s * RATE), dtype=np.int16)
        parts.append(gap)
        t += len(gap)
        x = resample(tts(text, args.voice, 1.0), K.SR)
        x = np.round(x / (np.abs(x).max() + 1e-9) * 10 ** (-3 / 20) * 32767).astype(np.int16)
        loud = np.nonzero(np.abs(x.astype(np.int32)) > 327)[0]  # -40 dBFS
        utt = x[loud[0] : loud[-1] + 1]
        speech.append({"start_s": t / RATE, "end_s": (t + len(utt)) / RATE, "text": text})
        parts.append(utt)
        t += len(utt)
    parts.append(np.zeros(int(TAIL * RATE), dtype=np.int16))
    audio = np.concatenate(parts)
    duration = len(audio) / RATE

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "demo.wav")
        with wave.open(wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(audio.astype("<i2").tobytes())
        subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", wav,
             "-f", "lavfi", "-i", f"testsrc=size=128x96:rate=25:duration={duration}",
             "-map", "0:a", "-map", "1:v", "-shortest", "-fflags", "+bitexact",
             "-c:v", "libvpx", "-b:v", "40k", "-deadline", "realtime", "-cpu-used", "8",
             "-c:a", "libopus", "-b:a", "48k", os.path.join(args.out, "demo.webm")],
            check=True)
    meta = {"duration_s": duration, "sample_rate": RATE,
            "voice": f"Kokoro-82M {args.voice} (held out of the default model's training)", "speech": speech}
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}/demo.webm ({duration:.2f} s, voice {args.voice})")


if __name__ == "__main__":
    main()
