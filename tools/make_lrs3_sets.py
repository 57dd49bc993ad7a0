#!/usr/bin/env python3
"""Test sets in the LRS3 layout for `avlm eval lrs3`, deterministically.

  OUT/real/<speaker>/<clip>.mp4 + .txt   the real recordings of Debian's
      pocketsphinx-testdata: 5 LibriVox readings (speaker "librivox") and 5
      "cards" utterances (speaker "cards"), each wrapped as MP4 (AAC audio +
      a test-pattern video track) with its transcript
  OUT/synthetic_ci/<speaker>/<clip>.mp4 + .txt   six short espeak-ng
      sentences by two voices: the small set CI evaluates

  OUT/heldout_synthetic/<split>/<id>.mp4 + .txt   (with --heldout DATA_DIR) the
      held-out split of the training data (tools/data/make_synth_data.py: voices
      and sentences never trained on), speaker = split (heldout_voice: espeak-ng
      variants, heldout_joe: the Piper voice)

Transcript files follow LRS3: `Text:  THE WORDS` then a `Conf:` line.

Usage: make_lrs3_sets.py OUT_DIR [--heldout DATA_DIR]
"""

import json
import os
import re
import subprocess
import sys
import tempfile

DATA = "/usr/share/pocketsphinx/test/data"

CI_SENTENCES = {
    "en-us+m3": [
        "the river runs past the old stone mill",
        "please bring the blue folder to my desk",
        "seven children played football in the park",
    ],
    "en-gb+f2": [
        "the train leaves the station at noon",
        "we painted the kitchen a bright yellow",
        "a small dog barked at the passing bicycle",
    ],
}


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def write_clip(wav, text, out_base):
    os.makedirs(os.path.dirname(out_base), exist_ok=True)
    # AAC audio plus a small test pattern, faststart so it also streams.
    ffmpeg("-i", wav, "-f", "lavfi", "-i", "testsrc=size=96x96:rate=25", "-map", "0:a", "-map", "1:v",
           "-shortest", "-c:v", "libx264", "-preset", "veryfast", "-crf", "40", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", "-fflags", "+bitexact", out_base + ".mp4")
    with open(out_base + ".txt", "w") as f:
        f.write(f"Text:  {text.upper()}\nConf:  1\n")


def pocketsphinx_transcripts(path):
    out = {}
    for line in open(path):
        m = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line)
        if m:
            out[m.group(2).strip()] = " ".join(m.group(1).split())
    return out


def heldout(data_dir, out):
    """The held-out split of tools/data/make_synth_data.py as LRS3 clips."""
    n = 0
    for line in open(os.path.join(data_dir, "manifest.jsonl")):
        rec = json.loads(line)
        if not rec["split"].startswith("heldout") or not rec.get("wav"):
            continue
        base = os.path.join(out, "heldout_synthetic", rec["split"], rec["id"])
        if not os.path.exists(base + ".mp4"):
            write_clip(os.path.join(data_dir, rec["wav"]), rec["text"], base)
        n += 1
    print(f"{n} held-out clips in {os.path.join(out, 'heldout_synthetic')}")


def main():
    args = sys.argv[1:]
    if "--heldout" in args:
        i = args.index("--heldout")
        heldout(args[i + 1], args[0] if i != 0 else args[2])
        return
    out = args[0]
    real = os.path.join(out, "real")
    for speaker, folder, trans in [
        ("librivox", "librivox", "transcription"),
        ("cards", "cards", "cards.transcription"),
    ]:
        texts = pocketsphinx_transcripts(os.path.join(DATA, folder, trans))
        for clip_id, text in sorted(texts.items()):
            wav = os.path.join(DATA, folder, clip_id + ".wav")
            if os.path.exists(wav):
                write_clip(wav, text, os.path.join(real, speaker, clip_id))
    ci = os.path.join(out, "synthetic_ci")
    with tempfile.TemporaryDirectory() as tmp:
        for v, (voice, sentences) in enumerate(CI_SENTENCES.items()):
            for i, text in enumerate(sentences):
                wav = os.path.join(tmp, f"{v}_{i}.wav")
                subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", wav, text], check=True)
                write_clip(wav, text, os.path.join(ci, f"speaker{v}", f"{i:05d}"))


if __name__ == "__main__":
    main()
