#!/usr/bin/env python3
"""Training audio as a few Ogg/Opus "packs", small enough to carry to a GPU machine that has
no TTS, and its decoding into log-mel spectrograms there.

    # pack the utterances of a --no-feats --save-wav all data dir (tools/data/make_synth_data.py)
    .avlm/venv/bin/python tools/train/audio_packs.py pack --data .avlm/train/data_audio \\
        --out .avlm/train/packs --packs 64 --bitrate 16k
    # after the data dir grew: pack only the new utterances, into 16 more packs
    .avlm/venv/bin/python tools/train/audio_packs.py pack --data .avlm/train/data_audio \\
        --out .avlm/train/packs --packs 16 --append
    # all training utterances from number 20,000 on, 20% of the older ones, all held-out
    .avlm/venv/bin/python tools/train/audio_packs.py subset .avlm/train/packs2 \\
        --out .avlm/train/packs2_sub --from-id 20000 --old-frac 0.2

A pack is one Opus stream (16 kHz mono, `--bitrate`, voip mode, 8 kHz bandwidth) of many
utterances laid end to end, each padded with silence to a whole 20 ms Opus frame; index.jsonl
gives each utterance's pack, first sample and length, split and transcript.  One long stream
instead of a file per utterance keeps the container overhead near zero.  Decoded with
libsndfile (PyPI soundfile), the samples line up with the originals (no codec delay left).

Opus at 16 kbps is lossy: on Whisper tiny.en features it changes about as much as white
noise at 30 dB SNR does (measured on held-out clips), which the training data's own
augmentation already exceeds; the real clips and every evaluation stay uncompressed.

`mels_of_pack` (run in worker processes) decodes one pack and returns, for each utterance and
each view, the log-mel spectrogram avlm_features.log_mel computes (the server's math).  View 0
is the audio as packed; views 1.. are re-augmented copies (speed 0.9/0.95/1/1.05/1.1 by resampling, and
with probability 0.5 white or pink noise at 15-40 dB SNR), seeded by (seed, utterance, view).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "data"))
import avlm_features as F  # noqa: E402
import make_synth_data as M  # noqa: E402  (speed, pink: the generator's own augmentation)

FRAME = 320  # 20 ms at 16 kHz
# speed factors as ratios of small integers (resample_poly reduces 100/90 to 10/9: fast)
SPEEDS = [0.9, 0.95, 1.0, 1.05, 1.1]


def _encode_pack(job):
    data, out, name, group, bitrate = job
    chunks, pos, index = [], 0, []
    for r in group:
        x = F.read_wav(os.path.join(data, r["wav"]))
        n = len(x)
        pad = (-n) % FRAME
        chunks.append(np.concatenate([x, np.zeros(pad, np.float32)]))
        index.append({"id": r["id"], "split": r["split"], "text": r["text"], "pack": name, "start": pos, "n": n})
        pos += n + pad
    pcm = np.clip(np.round(np.concatenate(chunks) * 32767.0), -32768, 32767).astype("<i2").tobytes()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "-",
                    "-c:a", "libopus", "-b:a", bitrate, "-application", "voip", "-cutoff", "8000",
                    os.path.join(out, name)], input=pcm, check=True)
    return index, pos / F.SR, os.path.getsize(os.path.join(out, name))


def pack(args):
    from multiprocessing import Pool

    recs = [json.loads(line) for line in open(os.path.join(args.data, "manifest.jsonl"))]
    recs = [r for r in recs if r.get("wav")]
    if args.limit:
        recs = recs[: args.limit]
    os.makedirs(args.out, exist_ok=True)
    index, first = [], 0
    if args.append and os.path.exists(os.path.join(args.out, "index.jsonl")):
        index = read_index(args.out)
        have = {r["id"] for r in index}
        first = len({r["pack"] for r in index})
        recs = [r for r in recs if r["id"] not in have]
        print(f"--append: {len(index)} utterances already in {first} packs; packing {len(recs)} more", flush=True)
        if not recs:
            return
    t0 = time.time()
    jobs = [(args.data, args.out, f"pack_{first + p:02d}.ogg", recs[p:: args.packs], args.bitrate)
            for p in range(args.packs) if recs[p:: args.packs]]
    total_s, total_bytes = 0.0, 0
    with Pool(args.jobs) as pool:
        for (_, _, name, group, _), (idx, secs, size) in zip(jobs, pool.imap(_encode_pack, jobs)):
            index += idx
            total_s += secs
            total_bytes += size
            print(f"{name}: {len(group)} utts, {secs / 3600:.2f} h, {size / 1e6:.1f} MB", flush=True)
    with open(os.path.join(args.out, "index.jsonl"), "w") as f:
        for r in index:
            f.write(json.dumps(r) + "\n")
    print(f"packed {len(index)} utterances in all; this run {total_s / 3600:.2f} h, {total_bytes / 1e6:.1f} MB "
          f"({8 * total_bytes / total_s / 1000:.1f} kbit/s) in {time.time() - t0:.0f} s")


def read_index(pack_dir: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(pack_dir, "index.jsonl"))]


def reaugment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.fft import next_fast_len

    f = SPEEDS[int(rng.integers(len(SPEEDS)))]
    if f != 1.0:
        x = M.speed(x, f)
    if rng.random() < 0.5:
        # pink noise at a fast FFT length, cut to size: an FFT of a prime-ish length is 10x slower
        nz = rng.standard_normal(len(x)) if rng.random() < 0.5 else M.pink(rng, next_fast_len(len(x), real=True))[: len(x)]
        snr = float(rng.uniform(15, 40))
        x = x + nz * np.sqrt((np.mean(x ** 2) + 1e-12) / (np.mean(nz ** 2) * 10 ** (snr / 10)))
    return np.clip(x, -1, 1).astype(np.float32)


def mels_of_pack(job):
    """(pack_dir, pack name, [(uid_number, start, n)], views, seed, filters, keep_audio) ->
    {"mels": [(uid_number, view, mel)], "audio": [(uid_number, int16 samples)]}; "audio" is
    empty unless keep_audio (train_projector.py --online-aug augments it on the device)."""
    import soundfile as sf

    pack_dir, name, items, views, seed, filters, keep_audio = job
    audio, sr = sf.read(os.path.join(pack_dir, name), dtype="float32")
    if sr != F.SR:
        raise SystemExit(f"{name}: decoded at {sr} Hz, expected {F.SR}")
    out, kept = [], []
    for k, start, n in items:
        x = audio[start: start + n]
        for v in range(views):
            y = x if v == 0 else reaugment(x, np.random.default_rng([seed, k, v]))
            out.append((k, v, F.log_mel(y, filters)))
        if keep_audio:
            kept.append((k, np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)))
    return {"mels": out, "audio": kept}


def subset(args) -> None:
    """A packs dir over the same pack files (symlinks) whose index keeps every held-out
    utterance, every training utterance numbered --from-id and up, and each older one with
    probability --old-frac (random.Random(--seed), drawn in index order for the older ones)."""
    import random

    src = os.path.abspath(args.packs_dir)
    rows = read_index(src)
    rng = random.Random(args.seed)

    def recent(r):      # ids are "<split>-<number>"
        return int(r["id"].rsplit("-", 1)[1]) >= args.from_id

    def keep(r):
        return r["split"] != "train" or recent(r) or rng.random() < args.old_frac

    kept = [r for r in rows if keep(r)]
    os.makedirs(args.out, exist_ok=True)
    for name in sorted({r["pack"] for r in kept}):
        dst = os.path.join(args.out, name)
        if not os.path.lexists(dst):
            os.symlink(os.path.join(src, name), dst)
    with open(os.path.join(args.out, "index.jsonl"), "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    tr = [r for r in kept if r["split"] == "train"]
    new = sum(map(recent, tr))
    print(f"{args.out}: {len(kept)} of {len(rows)} utterances ({len(tr)} train: {new} from id "
          f"{args.from_id} on, {len(tr) - new} older; {len(kept) - len(tr)} held-out)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--packs", type=int, default=64,
                   help="number of packs: the GPU machine decodes one pack per worker job (64 for 16 workers)")
    p.add_argument("--bitrate", default="16k")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--append", action="store_true",
                   help="keep the packs and index already in --out; pack only utterances not in it, into --packs new packs")
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p = sub.add_parser("subset", help="a packs dir over the same packs with a smaller index (recent data "
                       "first: a continuation that avoids re-fitting utterances seen for many epochs)")
    p.add_argument("packs_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--from-id", type=int, required=True, help="keep every training utterance with this number or more")
    p.add_argument("--old-frac", type=float, default=0.2, help="keep each older training utterance with this probability")
    p.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args)
    elif args.cmd == "subset":
        subset(args)


if __name__ == "__main__":
    main()
