"""The VideoLLM-online and SmolVLM converters on checkpoints written here with numpy
(no PyTorch): the LoRA merge, both PEFT key spellings, the one-Linear connector,
and refusals of a missing and of an unused tensor by name.

    .avlm/venv/bin/python -m unittest tools/vision/test_vision_converters.py
"""

import json
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert_smolvlm  # noqa: E402
import convert_videollm_online  # noqa: E402
from hf_checkpoint import ConversionError, SafeTensors, write_safetensors  # noqa: E402
from siglip_onnx import siglip_tensor_names  # noqa: E402

LLAMA = dict(model_type="llama", vocab_size=12, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-5, tie_word_embeddings=False)
VISION = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
              image_size=8, patch_size=2)
TOKENIZER = {"model": {"type": "BPE", "vocab": {c: i for i, c in enumerate("abcdefghij")}},
             "added_tokens": [{"id": 10, "content": "<s>", "special": True},
                              {"id": 11, "content": "</s>", "special": True}]}


def llama_weights(rng, prefix="model."):
    d, f, v, kv = 8, 12, 12, 4
    shapes = {"embed_tokens.weight": (v, d), "norm.weight": (d,)}
    p = "layers.0."
    for name, shape in [("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (kv, d)), ("self_attn.v_proj", (kv, d)),
                        ("self_attn.o_proj", (d, d)), ("mlp.gate_proj", (f, d)), ("mlp.up_proj", (f, d)),
                        ("mlp.down_proj", (d, f))]:
        shapes[p + name + ".weight"] = shape
    shapes[p + "input_layernorm.weight"] = (d,)
    shapes[p + "post_attention_layernorm.weight"] = (d,)
    out = {prefix + k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    out["lm_head.weight"] = rng.standard_normal((v, d)).astype(np.float32)
    return out


def siglip_weights(rng, prefix, head):
    d, f, n = 8, 16, 16
    out = {}
    for name in siglip_tensor_names(VISION, prefix, head):
        short = name[len(prefix):]
        if short == "embeddings.patch_embedding.weight":
            shape = (d, 3, 2, 2)
        elif short == "embeddings.position_embedding.weight":
            shape = (n, d)
        elif short == "head.probe":
            shape = (1, 1, d)
        elif short == "head.attention.in_proj_weight":
            shape = (3 * d, d)
        elif short == "head.attention.in_proj_bias":
            shape = (3 * d,)
        elif "fc1.weight" in short:
            shape = (f, d)
        elif "fc1.bias" in short:
            shape = (f,)
        elif "fc2.weight" in short:
            shape = (d, f)
        elif short.endswith("weight") and ("proj" in short):
            shape = (d, d)
        else:
            shape = (d,)
        out[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return out


def save(path, tensors):
    write_safetensors(path, [(k, v.shape, (lambda v=v: v)) for k, v in tensors.items()])


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


class VideoLlmOnline(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        rng = np.random.default_rng(0)
        self.base, self.adapter, self.vision = (os.path.join(self.dir, n) for n in ("base", "adapter", "siglip"))
        for d in (self.base, self.adapter, self.vision):
            os.makedirs(d)
        self.llama = llama_weights(rng)
        save(os.path.join(self.base, "model.safetensors"), self.llama)
        write_json(os.path.join(self.base, "config.json"), LLAMA)
        write_json(os.path.join(self.base, "tokenizer.json"), TOKENIZER)
        write_json(os.path.join(self.base, "tokenizer_config.json"), {"bos_token": "<s>", "eos_token": "</s>"})
        self.lora = {}
        for module, shape in [("model.layers.0.self_attn.q_proj", (8, 8)), ("model.layers.0.mlp.down_proj", (8, 12)),
                              ("lm_head", (12, 8))]:
            self.lora[module] = (rng.standard_normal((2, shape[1])).astype(np.float32),
                                 rng.standard_normal((shape[0], 2)).astype(np.float32))
        self.connector = {"0.weight": rng.standard_normal((6, 8)), "0.bias": rng.standard_normal(6),
                          "2.weight": rng.standard_normal((8, 6)), "2.bias": rng.standard_normal(8)}
        write_json(os.path.join(self.adapter, "adapter_config.json"), {
            "peft_type": "LORA", "r": 2, "lora_alpha": 6, "bias": "none", "modules_to_save": ["connector"],
            "target_modules": "model.*(q_proj|down_proj)|lm_head$"})
        save(os.path.join(self.vision, "model.safetensors"), siglip_weights(rng, "vision_model.", head=True))
        write_json(os.path.join(self.vision, "config.json"), dict(model_type="siglip_vision_model", **VISION))

    def tearDown(self):
        self.tmp.cleanup()

    def write_adapter(self, spelling="", drop=None, extra=None):
        t = {}
        for module, (a, b) in self.lora.items():
            t[f"base_model.model.{module}.lora_A{spelling}.weight"] = a
            t[f"base_model.model.{module}.lora_B{spelling}.weight"] = b
        for k, v in self.connector.items():
            t[f"base_model.model.connector.{k}"] = v.astype(np.float32)
        if drop:
            del t[drop]
        if extra:
            t[extra] = np.zeros(3, np.float32)
        save(os.path.join(self.adapter, "adapter_model.safetensors"), t)

    def convert(self):
        out = os.path.join(self.dir, "out")
        convert_videollm_online.convert(self.base, self.adapter, self.vision, out)
        return out

    def test_the_lora_is_merged_and_the_connector_renamed_in_both_key_spellings(self):
        for spelling in ("", ".default"):
            self.write_adapter(spelling)
            out = self.convert()
            llm = SafeTensors(os.path.join(out, "llm", "model.safetensors"))
            a, b = self.lora["model.layers.0.self_attn.q_proj"]
            want = self.llama["model.layers.0.self_attn.q_proj.weight"] + 3.0 * b @ a
            np.testing.assert_allclose(llm.get("model.layers.0.self_attn.q_proj.weight"), want, rtol=1e-6, atol=1e-6)
            a, b = self.lora["lm_head"]
            np.testing.assert_allclose(llm.get("lm_head.weight"), self.llama["lm_head.weight"] + 3.0 * b @ a,
                                       rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(llm.get("model.layers.0.mlp.up_proj.weight"),
                                          self.llama["model.layers.0.mlp.up_proj.weight"])
            proj = SafeTensors(os.path.join(out, "vision_projector.safetensors"))
            self.assertEqual(sorted(proj.names()),
                             ["vision.fc1.bias", "vision.fc1.weight", "vision.fc2.bias", "vision.fc2.weight"])
            np.testing.assert_allclose(proj.get("vision.fc2.weight"), self.connector["2.weight"], rtol=1e-6)
            with open(os.path.join(out, "llm", "tokenizer.json")) as f:
                added = {t["content"]: t["id"] for t in json.load(f)["added_tokens"]}
            self.assertEqual(added["<v>"], 12)
            with open(os.path.join(out, "avlm.toml")) as f:
                toml = f.read()
            self.assertIn('end = "</s>"', toml)
            self.assertIn('tokens = { kind = "pooled_grid", grid = 3 }', toml)

    def test_a_full_siglip_model_leaves_its_text_tower_unused(self):
        self.write_adapter()
        st = SafeTensors(os.path.join(self.vision, "model.safetensors"))
        tensors = {n: st.get(n) for n in st.names()}
        tensors["text_model.embeddings.token_embedding.weight"] = np.zeros((4, 8), np.float32)
        tensors["logit_scale"] = np.zeros(1, np.float32)
        save(os.path.join(self.vision, "model.safetensors"), tensors)
        write_json(os.path.join(self.vision, "config.json"), {"model_type": "siglip", "vision_config": VISION})
        out = self.convert()
        self.assertTrue(os.path.exists(os.path.join(out, "vision_encoder.onnx")))
        tensors["vision_model.extra.weight"] = np.zeros(1, np.float32)
        save(os.path.join(self.vision, "model.safetensors"), tensors)
        with self.assertRaises(ConversionError) as e:
            self.convert()
        self.assertIn("unused 1 tensor(s): vision_model.extra.weight", str(e.exception))

    def test_the_encoder_has_the_avlm_contract(self):
        import onnxruntime as ort

        self.write_adapter()
        out = self.convert()
        s = ort.InferenceSession(os.path.join(out, "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
        patches, pooled = s.run(["patches", "pooled"], {"pixel_values": np.zeros((2, 3, 8, 8), np.float32)})
        self.assertEqual(patches.shape, (2, 16, 8))
        self.assertEqual(pooled.shape, (2, 8))

    def test_a_missing_lora_tensor_is_named(self):
        name = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
        self.write_adapter(".default", drop=name.replace("lora_B", "lora_B.default"))
        with self.assertRaises(ConversionError) as e:
            self.convert()
        # Named as PEFT spells it now (the file cannot say which spelling it lacks).
        self.assertIn("missing 1 tensor(s): " + name, str(e.exception))

    def test_an_unused_tensor_is_named(self):
        name = "base_model.model.model.embed_tokens.weight"
        self.write_adapter(extra=name)
        with self.assertRaises(ConversionError) as e:
            self.convert()
        self.assertIn("unused 1 tensor(s): " + name, str(e.exception))

    def test_a_missing_connector_is_named(self):
        self.write_adapter(drop="base_model.model.connector.2.bias")
        with self.assertRaises(ConversionError) as e:
            self.convert()
        self.assertIn("base_model.model.connector.2.bias", str(e.exception))


class SmolVlm(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = os.path.join(self.tmp.name, "smolvlm")
        os.makedirs(self.dir)
        rng = np.random.default_rng(1)
        self.tensors = {**llama_weights(rng, "model.text_model."),
                        **siglip_weights(rng, "model.vision_model.", head=False),
                        "model.connector.modality_projection.proj.weight":
                            rng.standard_normal((8, 32)).astype(np.float32)}
        write_json(os.path.join(self.dir, "config.json"), {
            "model_type": "idefics3", "scale_factor": 2, "vision_config": VISION, "text_config": LLAMA})
        tok = json.loads(json.dumps(TOKENIZER))
        for i, t in enumerate(["<|im_start|>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]):
            tok["added_tokens"].append({"id": 12 + i, "content": t, "special": True})
        write_json(os.path.join(self.dir, "tokenizer.json"), tok)

    def tearDown(self):
        self.tmp.cleanup()

    def convert(self, drop=None, extra=None):
        t = dict(self.tensors)
        if drop:
            del t[drop]
        if extra:
            t[extra] = np.zeros(2, np.float32)
        save(os.path.join(self.dir, "model.safetensors"), t)
        out = os.path.join(self.tmp.name, "out")
        convert_smolvlm.convert(self.dir, out)
        return out

    def test_the_text_model_is_renamed_and_the_connector_is_one_linear(self):
        out = self.convert()
        llm = SafeTensors(os.path.join(out, "llm", "model.safetensors"))
        np.testing.assert_array_equal(llm.get("model.layers.0.mlp.up_proj.weight"),
                                      self.tensors["model.text_model.layers.0.mlp.up_proj.weight"])
        proj = SafeTensors(os.path.join(out, "vision_projector.safetensors"))
        self.assertEqual(proj.names(), ["vision.fc1.weight"])
        with open(os.path.join(out, "avlm.toml")) as f:
            toml = f.read()
        self.assertIn('tokens = { kind = "pixel_shuffle", factor = 2 }', toml)
        self.assertIn("layers = 1", toml)
        self.assertIn("only meaningful after fine-tuning", toml)

    def test_a_missing_projection_is_named(self):
        name = "model.connector.modality_projection.proj.weight"
        with self.assertRaises(ConversionError) as e:
            self.convert(drop=name)
        self.assertIn("missing 1 tensor(s): " + name, str(e.exception))

    def test_an_unused_tensor_is_named(self):
        name = "model.vision_model.head.probe"
        with self.assertRaises(ConversionError) as e:
            self.convert(extra=name)
        self.assertIn("unused 1 tensor(s): " + name, str(e.exception))


if __name__ == "__main__":
    unittest.main()
