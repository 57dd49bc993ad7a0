"""The AV-HuBERT video encoder built by avhubert_onnx.py matches PyTorch's goldens
(tests/golden/avhubert, from make_avhubert_golden.py) through ONNX Runtime, and the builder
refuses tensors that are not exactly the model's. numpy + onnx + onnxruntime only:

    .avlm/venv/bin/python -m unittest tools/avsr/test_avhubert_onnx.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GOLDEN = os.path.join(ROOT, "tests", "golden", "avhubert")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "vision"))

import avhubert_onnx as av  # noqa: E402
from hf_checkpoint import write_safetensors  # noqa: E402


def load_golden(name):
    folder = os.path.join(GOLDEN, name)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "golden.json")) as f:
        meta = json.load(f)
    read = lambda file, key: np.fromfile(os.path.join(folder, file), "<f4").reshape(meta[key])  # noqa: E731
    return cfg, meta, read("input.bin", "input_shape"), read("features.bin", "features_shape")


def session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class GoldenTest(unittest.TestCase):
    def check(self, name):
        cfg, meta, video, want = load_golden(name)
        tensors = av.random_tensors(cfg, meta["seed"])
        self.assertEqual(av.digest(tensors), meta["weights_sha256"],
                         "the random weights differ from the golden's: numpy's PCG64 stream or the recipe changed")
        sess = session(av.build_avhubert_onnx(tensors, cfg))
        got = sess.run(["features"], {"video": video})[0]
        self.assertEqual(got.shape, want.shape)
        diff = float(np.abs(got - want).max())
        self.assertLessEqual(diff, meta["tolerance_max_abs"], f"{name}: max abs diff {diff}")
        # the batch axis is free and a clip's features do not depend on its neighbour
        two = sess.run(["features"], {"video": np.concatenate([video, video[:, :, ::-1]])})[0]
        np.testing.assert_allclose(two[:1], got, atol=1e-5)
        # any number of frames, one included
        one = sess.run(["features"], {"video": video[:, :, :1]})[0]
        self.assertEqual(one.shape, (1, 1, want.shape[2]))
        return diff

    def test_pre_ln_with_lora_matches_pytorch(self):
        self.check("pre_ln_lora")

    def test_post_ln_matches_pytorch(self):
        self.check("post_ln")

    def test_command_line_builds_the_same_model(self):
        cfg_path = os.path.join(GOLDEN, "post_ln", "config.json")
        cfg, meta, video, want = load_golden("post_ln")
        tensors = av.random_tensors(cfg, meta["seed"])
        tensors["mask_emb"] = np.zeros(104, np.float32)  # a pretraining key, ignored
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "avhubert.safetensors")
            write_safetensors(weights, [(n, t.shape, lambda t=t: t) for n, t in sorted(tensors.items())])
            outs = []
            for source in ([weights], ["--random-seed", str(meta["seed"])]):
                out = os.path.join(tmp, f"lip{len(outs)}.onnx")
                subprocess.run([sys.executable, os.path.join(HERE, "avhubert_onnx.py"), *source, out,
                                "--config", cfg_path], check=True, capture_output=True)
                outs.append(out)
            import onnx

            for out in outs:
                got = session(onnx.load(out)).run(["features"], {"video": video})[0]
                self.assertLessEqual(float(np.abs(got - want).max()), meta["tolerance_max_abs"], out)
            refused = subprocess.run([sys.executable, os.path.join(HERE, "avhubert_onnx.py"), weights, outs[0],
                                      "--config", os.path.join(GOLDEN, "pre_ln_lora", "config.json")],
                                     capture_output=True, text=True)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("missing", refused.stderr)


class RefusalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cfg = {"encoder_embed_dim": 16, "encoder_layers": 1, "encoder_attention_heads": 2,
                   "encoder_ffn_embed_dim": 32, "layer_norm_first": True}
        cls.tensors = av.random_tensors(cls.cfg, 5)

    def refused(self, tensors, cfg=None):
        with self.assertRaises(av.ConversionError) as cm:
            av.check_tensors(set(tensors), lambda n: np.shape(tensors[n]), cfg or self.cfg)
        return str(cm.exception)

    def test_complete_tensors_pass_and_pretraining_keys_are_ignored(self):
        t = dict(self.tensors)
        t.update({"mask_emb": np.zeros(104), "final_proj.weight": np.zeros((4, 16)), "final_proj.bias": np.zeros(4),
                  "label_embs_concat": np.zeros((8, 4)), "feature_extractor_audio.proj.weight": np.zeros((16, 104)),
                  "feature_extractor_audio.proj.bias": np.zeros(16),
                  "feature_extractor_video.resnet.frontend3D.1.num_batches_tracked": np.zeros((), np.int64)})
        told = {"encoder_attention_heads": 2, "layer_norm_first": True}
        cfg = av.check_tensors(set(t), lambda n: np.shape(t[n]), told)
        self.assertEqual((cfg["encoder_embed_dim"], cfg["encoder_layers"], cfg["encoder_ffn_embed_dim"]), (16, 1, 32))

    def test_missing_tensor_is_named(self):
        t = dict(self.tensors)
        del t["feature_extractor_video.resnet.trunk.layer3.0.downsample.1.running_var"]
        self.assertIn("missing 1 tensor(s): feature_extractor_video.resnet.trunk.layer3.0.downsample.1.running_var",
                      self.refused(t))

    def test_unused_tensor_is_named(self):
        t = dict(self.tensors)
        t["encoder.layers.0.self_attn.extra.weight"] = np.zeros((16, 16), np.float32)
        self.assertIn("unused 1 tensor(s): encoder.layers.0.self_attn.extra.weight", self.refused(t))

    def test_lora_without_its_scaling_is_unused(self):
        t = dict(self.tensors)
        t["encoder.layers.0.self_attn.lora_down_Q.weight"] = np.zeros((4, 16), np.float32)
        self.assertIn("unused 1 tensor(s): encoder.layers.0.self_attn.lora_down_Q.weight", self.refused(t))

    def test_partial_lora_is_missing(self):
        t = dict(self.tensors)
        t["encoder.layers.0.self_attn.lora_down_Q.weight"] = np.zeros((4, 16), np.float32)
        message = self.refused(t, dict(self.cfg, lora_scaling=2.0))
        self.assertIn("encoder.layers.0.self_attn.lora_up_V.weight", message)

    def test_wrong_shape_is_named(self):
        t = dict(self.tensors)
        t["encoder.layers.0.fc2.bias"] = np.zeros(15, np.float32)
        self.assertIn("encoder.layers.0.fc2.bias [15] (expected [16])", self.refused(t))

    def test_config_must_say_what_weights_cannot(self):
        self.assertIn("encoder_attention_heads", self.refused(self.tensors, {"layer_norm_first": True}))
        self.assertIn("layer_norm_first", self.refused(self.tensors, {"encoder_attention_heads": 2}))
        self.assertIn("config says encoder_layers 2, the tensors say 1",
                      self.refused(self.tensors, dict(self.cfg, encoder_layers=2)))


if __name__ == "__main__":
    unittest.main()
