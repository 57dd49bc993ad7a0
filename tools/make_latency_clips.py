#!/usr/bin/env python3
"""Clips with known word timings for `avlm bench --parts latency`.

Each word is synthesised on its own with espeak-ng, trimmed to its audible
part and joined with short gaps (shorter than any endpointing silence), so
every word's start and end in the clip are exact. Sentences are separated by
pauses long enough to close a segment. Writes DIR/<name>.flac (16 kHz mono)
and DIR/<name>.json with the words and their times.

    python3 tools/make_latency_clips.py samples/latency

Needs espeak-ng and ffmpeg (tools/setup.sh installs both); numpy only.
"""

import json
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

RATE = 16000
WORD_GAP_S = 0.07
SENTENCE_GAP_S = 1.6
LEAD_S = 0.8
TAIL_S = 1.5

# Original sentences (written for this benchmark), two per clip.
CLIPS = [
    ("en-us", 165, ["the morning train was late again today",
                    "please send the report before noon"]),
    ("en-gb", 150, ["we walked along the river until it got dark",
                    "her brother fixed the old radio last week"]),
    ("en-us+m3", 180, ["turn left at the second traffic light",
                       "the library closes at six on fridays"]),
    ("en-gb-scotland", 155, ["seven small boats waited near the harbour",
                             "nobody could find the keys to the blue van"]),
]


def synth(word, voice, rate):
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "w.wav")
        out = os.path.join(d, "w16.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", raw, word], check=True)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", raw, "-ac", "1", "-ar", str(RATE),
                        "-c:a", "pcm_s16le", out], check=True)
        with wave.open(out) as w:
            x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(x) > 0.01)
    if len(loud) == 0:
        raise SystemExit(f"espeak-ng produced no sound for {word!r}")
    return x[loud[0]:loud[-1] + 1]


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "samples/latency"
    os.makedirs(out_dir, exist_ok=True)
    for i, (voice, rate, sentences) in enumerate(CLIPS):
        name = f"clip{i + 1}"
        pieces = [np.zeros(int(LEAD_S * RATE), np.float32)]
        t = LEAD_S
        words = []
        for s, sentence in enumerate(sentences):
            if s > 0:
                pieces.append(np.zeros(int(SENTENCE_GAP_S * RATE), np.float32))
                t += int(SENTENCE_GAP_S * RATE) / RATE
            for j, word in enumerate(sentence.split()):
                if j > 0:
                    pieces.append(np.zeros(int(WORD_GAP_S * RATE), np.float32))
                    t += int(WORD_GAP_S * RATE) / RATE
                audio = synth(word, voice, rate)
                words.append({"word": word, "sentence": s, "start_s": round(t, 4),
                              "end_s": round(t + len(audio) / RATE, 4)})
                pieces.append(audio)
                t += len(audio) / RATE
        pieces.append(np.zeros(int(TAIL_S * RATE), np.float32))
        clip = np.concatenate(pieces)
        pcm = (np.clip(clip, -1, 1) * 32767).astype(np.int16)
        flac = os.path.join(out_dir, f"{name}.flac")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "s16le", "-ar", str(RATE), "-ac", "1",
                        "-i", "-", "-c:a", "flac", flac], input=pcm.tobytes(), check=True)
        meta = {"media": f"{name}.flac", "voice": voice, "rate_wpm": rate,
                "duration_s": round(len(clip) / RATE, 4),
                "sentences": sentences, "words": words}
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"{flac}: {len(words)} words, {len(clip) / RATE:.1f} s")


if __name__ == "__main__":
    main()
