#!/usr/bin/env python3
"""Tests of tools/bundle/patch_encoder.py on the real converted Whisper tiny.en encoder
(tools/setup.sh makes it). Run by tools/test.sh:

    .avlm/venv/bin/python -m unittest tools/bundle/test_patch_encoder.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from make_default_bundle import read_safetensors, safetensors_bytes  # noqa: E402
from patch_encoder import patch_encoder, write_f16  # noqa: E402

BASE = os.path.join(ROOT, ".avlm", "models", "whisper-tiny.en-encoder.onnx")
NAME = "encoder/layer_3/ffn/linear_1/bias"          # [384]
GAMMA = "encoder/layer_norm/gamma"                  # [384]


def initializers(path: str) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


class PatchEncoder(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(BASE):
            raise unittest.SkipTest(f"{BASE} missing: run tools/setup.sh")
        cls.base = initializers(BASE)

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def path(self, name):
        return os.path.join(self.dir.name, name)

    def write(self, tensors, name="top.safetensors"):
        with open(self.path(name), "wb") as f:
            f.write(safetensors_bytes(tensors, {"test": "1"}))
        return self.path(name)

    def test_replaces_exactly_the_named_initializers_and_runs(self):
        rng = np.random.default_rng(1)
        new = {NAME: rng.standard_normal(384).astype(np.float32),
               GAMMA: (1 + 0.1 * rng.standard_normal(384)).astype(np.float32)}
        out = self.path("out.onnx")
        self.assertEqual(patch_encoder(BASE, self.write(new), out), 2)
        got = initializers(out)
        self.assertEqual(set(got), set(self.base))
        for k, v in got.items():
            np.testing.assert_array_equal(v, new[k] if k in new else self.base[k], err_msg=k)
        import onnxruntime as ort

        mel = np.random.default_rng(2).standard_normal((1, 80, 64)).astype(np.float32)
        a = ort.InferenceSession(BASE).run(None, {"mel": mel})[0]
        b = ort.InferenceSession(out).run(None, {"mel": mel})[0]
        self.assertEqual(a.shape, b.shape)
        self.assertGreater(float(np.abs(a - b).max()), 1e-3)      # the new weights are used

    def test_float16_copy_round_trips_and_patches_the_same_values(self):
        v = np.random.default_rng(3).standard_normal(384).astype(np.float32)
        src = self.write({NAME: v})
        write_f16(src, self.path("top16.safetensors"))
        back, meta = read_safetensors(self.path("top16.safetensors"))
        np.testing.assert_array_equal(back[NAME], v.astype(np.float16).astype(np.float32))
        self.assertEqual(meta["test"], "1")
        self.assertLess(os.path.getsize(self.path("top16.safetensors")), os.path.getsize(src))
        patch_encoder(BASE, self.path("top16.safetensors"), self.path("out.onnx"))
        np.testing.assert_array_equal(initializers(self.path("out.onnx"))[NAME], back[NAME])

    def refused(self, tensors, words):
        out = self.path("out.onnx")
        with self.assertRaises(SystemExit) as cm:
            patch_encoder(BASE, self.write(tensors), out)
        for w in words:
            self.assertIn(w, str(cm.exception))
        self.assertFalse(os.path.exists(out))

    def test_bad_tensors_are_refused_with_the_name_and_nothing_written(self):
        good = np.zeros(384, np.float32)
        self.refused({"encoder/layer_9/ffn/linear_1/bias": good}, ["layer_9", "not an initializer"])
        self.refused({NAME: np.zeros(383, np.float32)}, [NAME, "[383]", "[384]"])
        bad = good.copy()
        bad[7] = np.nan
        self.refused({GAMMA: good, NAME: bad}, [NAME, "non-finite"])

    def test_malformed_files_are_refused(self):
        with open(self.path("short"), "wb") as f:
            f.write(b"\x01\x02")
        with self.assertRaises(SystemExit) as cm:
            read_safetensors(self.path("short"))
        self.assertIn("too short", str(cm.exception))
        with open(self.path("long"), "wb") as f:
            f.write((1 << 40).to_bytes(8, "little") + b"{}")
        with self.assertRaises(SystemExit) as cm:
            read_safetensors(self.path("long"))
        self.assertIn("past the end", str(cm.exception))
        for header, words in ((b"not json", "not JSON"), (b'{"x": {"shape": [1]}}', "lacks a dtype"),
                              (b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 6]}}', "not whole values"),
                              (b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 64]}}', "outside the data")):
            with open(self.path("bad"), "wb") as f:
                f.write(len(header).to_bytes(8, "little") + header + bytes(8))
            with self.assertRaises(SystemExit) as cm:
                read_safetensors(self.path("bad"))
            self.assertIn(words, str(cm.exception))


if __name__ == "__main__":
    unittest.main()
