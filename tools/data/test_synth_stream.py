#!/usr/bin/env python3
"""Checks of tools/data/synth_stream.py that need only espeak-ng and numpy (run by tools/test.sh).

* Every random voice variant it writes is accepted by the installed espeak-ng (exit 0, nothing on
  stderr, speech out), and the variants really change the voice: each one's audio differs from
  the plain accent's and from the other variants'.
* Random variants are never the held-out ones: the draws use only training accents, the variant
  file has a name of its own, and the held-out accent and variant files stay untouched.
* The draws are a function of (seed, worker, k): the same arguments give the same file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synth_stream as S  # noqa: E402


def speak(root: str, voice: str, text: str) -> np.ndarray:
    out = os.path.join(root, "out.wav")
    r = subprocess.run([S.espeak_binary(), f"--path={root}", "-v", voice, "-s", "160", "-w", out, text],
                       capture_output=True)
    assert r.returncode == 0 and not r.stderr.strip(), (voice, r.returncode, r.stderr)
    with wave.open(out) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class SynthStreamTest(unittest.TestCase):
    def test_draws_only_training_voices(self):
        self.assertNotIn("en-029", S.TRAIN_ACCENTS)
        self.assertLessEqual(set(S.TRAIN_ACCENTS), set(S.M.ACCENTS))
        self.assertFalse(set(S.TRAIN_VARIANTS) & S.M.HELDOUT_VARIANTS)
        self.assertEqual(S.voice_name("en-gb", "f2"), "en+f2")
        self.assertEqual(S.voice_name("en-us", "f2"), "en-us+f2")
        self.assertEqual(S.voice_name("en-gb", ""), "en-gb")

    def test_random_variant_is_a_function_of_the_seed(self):
        a = S.random_variant(np.random.default_rng([1, 400, 0, 7]), "avlmrnd0")
        b = S.random_variant(np.random.default_rng([1, 400, 0, 7]), "avlmrnd0")
        c = S.random_variant(np.random.default_rng([1, 400, 0, 8]), "avlmrnd0")
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_random_variants_are_spoken_and_distinct(self):
        src = S.espeak_data_dir()
        root = tempfile.mkdtemp(prefix="avlm-test-espeak-")
        try:
            shutil.copytree(src, os.path.join(root, "espeak-ng-data"))
            vdir = os.path.join(root, "espeak-ng-data", "voices", "!v")
            held = {v: read_bytes(os.path.join(vdir, v)) for v in sorted(S.M.HELDOUT_VARIANTS)
                    if os.path.exists(os.path.join(vdir, v))}
            self.assertTrue(held, "no held-out variant files found")
            text = "The quick brown fox jumps over the lazy dog near the old mill."
            base = speak(root, "en-gb", text)
            plain = S.voice_fingerprint(base)
            # the reason for voice_name: after `en` a variant is applied to the en-gb voice
            self.assertFalse(np.array_equal(speak(root, S.voice_name("en-gb", "f2"), text), base))
            fps = []
            for k in range(30):
                rng = np.random.default_rng([20261126, 400, 0, k])
                with open(os.path.join(vdir, "avlmrnd0"), "w") as f:
                    f.write(S.random_variant(rng, "avlmrnd0"))
                x = speak(root, S.voice_name("en-gb", "avlmrnd0"), text)
                self.assertGreater(len(x), 16000, f"variant {k}: no speech")
                self.assertGreater(np.max(np.abs(x)), 1000, f"variant {k}: silent")
                fp = S.voice_fingerprint(x)
                self.assertGreater(np.mean(np.abs(fp - plain)), 0.05, f"variant {k} sounds like the plain voice")
                fps.append(fp)
            dists = [np.mean(np.abs(fps[i] - fps[j])) for i in range(len(fps)) for j in range(i)]
            self.assertGreater(min(dists), 0.02, "two random variants came out alike")
            for v, raw in held.items():
                self.assertEqual(read_bytes(os.path.join(vdir, v)), raw, f"held-out variant {v} changed")
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
