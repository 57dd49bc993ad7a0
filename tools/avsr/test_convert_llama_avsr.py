"""The Llama-AVSR converter on state dicts written here with numpy as .safetensors (no PyTorch):
the q/v LoRA merge, the added tokens' ids and rows, the projectors' names and manifest lines, and
refusals by name. The encoders' exports (PyTorch for Whisper, an 11M-weight ResNet for AV-HuBERT)
are replaced by recorders; their own tests cover them.

    .avlm/venv/bin/python -m unittest tools/avsr/test_convert_llama_avsr.py
"""

import json
import os
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_llama_avsr as conv  # noqa: E402
from hf_checkpoint import ConversionError, SafeTensors, write_safetensors  # noqa: E402

H, F, HEADS, KV_HEADS, HD, LAYERS = 8, 12, 2, 1, 4, 2
BASE_VOCAB = 10  # 8 BPE tokens + BOS + EOS
ROWS = BASE_VOCAB + 5
LLAMA = dict(model_type="llama", vocab_size=BASE_VOCAB, hidden_size=H, intermediate_size=F,
             num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HD,
             rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)
TOKENIZER = {"normalizer": None,
             "model": {"type": "BPE", "vocab": {c: i for i, c in enumerate("abcdefgh")}, "merges": []},
             "added_tokens": [{"id": 8, "content": "<|begin_of_text|>", "special": True},
                              {"id": 9, "content": "<|end_of_text|>", "special": True}]}
WHISPER_D, MELS, POSITIONS = 128, 4, 1500  # width 128: two Whisper heads of 64
AVH_D = 16
REDUCTION, ALPHA = 4, 6  # rank round(8 / 4) = 2, scale 6 / 4


def llm_tensors(rng):
    t = {"llm.model.embed_tokens.weight": (ROWS, H), "llm.model.norm.weight": (H,), "llm.lm_head.weight": (ROWS, H)}
    q, kv = HEADS * HD, KV_HEADS * HD
    for i in range(LAYERS):
        p = f"llm.model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
                  p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
                  p + "mlp.gate_proj.weight": (F, H), p + "mlp.up_proj.weight": (F, H),
                  p + "mlp.down_proj.weight": (H, F), p + "input_layernorm.weight": (H,),
                  p + "post_attention_layernorm.weight": (H,),
                  p + "self_attn.lora_down_Q.weight": (2, H), p + "self_attn.lora_up_Q.weight": (q, 2),
                  p + "self_attn.lora_down_V.weight": (2, H), p + "self_attn.lora_up_V.weight": (kv, 2)})
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()}


def whisper_tensors(rng):
    shapes = {"conv1.weight": (WHISPER_D, MELS, 3), "conv1.bias": (WHISPER_D,), "conv2.weight": (WHISPER_D, WHISPER_D, 3),
              "conv2.bias": (WHISPER_D,), "embed_positions.weight": (POSITIONS, WHISPER_D),
              "layer_norm.weight": (WHISPER_D,), "layer_norm.bias": (WHISPER_D,)}
    for n in conv.whisper_names(1):
        if n.startswith("layers."):
            shapes[n] = {"fc1.weight": (16, WHISPER_D), "fc1.bias": (16,), "fc2.weight": (WHISPER_D, 16)}.get(
                n.split(".", 2)[2], (WHISPER_D, WHISPER_D) if n.endswith("proj.weight") else (WHISPER_D,))
    return {"audio_encoder." + k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def projector(rng, module, dim, k, norm=False):
    t = {f"{module}.0.weight": (6, dim * k), f"{module}.0.bias": (6,), f"{module}.2.weight": (H, 6),
         f"{module}.2.bias": (H,)}
    if norm:
        t.update({f"{module}.3.weight": (H,), f"{module}.3.bias": (H,)})
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in t.items()}


def video_encoder_tensors(rng, lora=False):
    """Not a whole AV-HuBERT: the recorder stands in for the builder, which checks the set."""
    t = {"post_extract_proj.weight": (AVH_D, 2 * AVH_D), "post_extract_proj.bias": (AVH_D,),
         "feature_extractor_audio.proj.weight": (AVH_D, 104), "mask_emb": (AVH_D,)}
    if lora:
        t["encoder.layers.0.self_attn.lora_down_Q.weight"] = (4, AVH_D)
    return {"video_encoder." + k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()}


def save(path, tensors):
    write_safetensors(path, [(k, v.shape, (lambda v=v: v)) for k, v in tensors.items()])


class Converter(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.base = os.path.join(self.dir, "llama")
        os.makedirs(self.base)
        for name, value in (("config.json", LLAMA), ("tokenizer.json", TOKENIZER),
                            ("tokenizer_config.json", {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})):
            with open(os.path.join(self.base, name), "w") as f:
                json.dump(value, f)
        self.rng = np.random.default_rng(0)
        self.exports = {}
        self.saved = conv.export_whisper_encoder, conv.export_lip_encoder

        def whisper(names, get, cfg, out_path, source):
            self.exports["whisper"] = (sorted(names), cfg)
            open(out_path, "wb").close()

        def lip(tensors, cfg, out_path):
            self.exports["lip"] = (sorted(tensors), cfg)
            open(out_path, "wb").close()

        conv.export_whisper_encoder, conv.export_lip_encoder = whisper, lip

    def tearDown(self):
        conv.export_whisper_encoder, conv.export_lip_encoder = self.saved
        self.tmp.cleanup()

    def checkpoint(self, tensors, prefix=""):
        path = os.path.join(self.dir, "ckpt.safetensors")
        save(path, {prefix + k: v for k, v in tensors.items()})
        return path

    def avsr(self, **kw):
        t = llm_tensors(self.rng)
        t.update(whisper_tensors(self.rng))
        t.update(projector(self.rng, "audio_proj", WHISPER_D, 4, norm=kw.get("norm", False)))
        t.update(video_encoder_tensors(self.rng, lora=kw.get("lora", False)))
        t.update(projector(self.rng, "video_proj", AVH_D, 2))
        return t

    def convert(self, path, **kw):
        out = os.path.join(self.dir, "out")
        kw.setdefault("lora_alpha", ALPHA)
        kw.setdefault("lora_reduction", REDUCTION)
        conv.convert(path, out, self.base, **kw)
        return out

    def test_the_lora_is_merged_into_q_and_v_and_the_rest_is_copied(self):
        t = self.avsr()
        out = self.convert(self.checkpoint(t))
        llm = SafeTensors(os.path.join(out, "llm", "model.safetensors"))
        for i in range(LAYERS):
            p = f"model.layers.{i}.self_attn."
            for proj, m in (("q_proj", "Q"), ("v_proj", "V")):
                want = t[f"llm.{p}{proj}.weight"] + ALPHA / REDUCTION * (
                    t[f"llm.{p}lora_up_{m}.weight"] @ t[f"llm.{p}lora_down_{m}.weight"])
                np.testing.assert_allclose(llm.get(p + proj + ".weight"), want, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(llm.get(p + "k_proj.weight"), t[f"llm.{p}k_proj.weight"])
        self.assertFalse(any("lora" in n for n in llm.names()))
        # the added tokens' rows come from the checkpoint, in the lm_head too
        np.testing.assert_array_equal(llm.get("model.embed_tokens.weight"), t["llm.model.embed_tokens.weight"])
        np.testing.assert_array_equal(llm.get("lm_head.weight"), t["llm.lm_head.weight"])
        self.assertEqual(llm.dtype("lm_head.weight"), "F32")

    def test_the_added_tokens_have_the_checkpoint_ids(self):
        out = self.convert(self.checkpoint(self.avsr()))
        with open(os.path.join(out, "llm", "tokenizer.json")) as f:
            added = {t["content"]: t["id"] for t in json.load(f)["added_tokens"]}
        self.assertEqual([added[t] for t in conv.ADDED_TOKENS], list(range(BASE_VOCAB, ROWS)))
        with open(os.path.join(out, "llm", "config.json")) as f:
            cfg = json.load(f)
        self.assertEqual((cfg["vocab_size"], cfg["pad_token_id"], cfg["bos_token_id"], cfg["eos_token_id"]),
                         (ROWS, BASE_VOCAB, 8, 9))

    def test_projectors_are_renamed_with_their_norm_and_the_manifest_reads_the_shapes(self):
        t = self.avsr(norm=True)
        out = self.convert(self.checkpoint(t))
        proj = SafeTensors(os.path.join(out, "projector.safetensors"))
        self.assertEqual(sorted(proj.names()), sorted(
            [f"audio_proj.{m}.{p}" for m in ("fc1", "fc2", "norm") for p in ("weight", "bias")]
            + [f"video_proj.{m}.{p}" for m in ("fc1", "fc2") for p in ("weight", "bias")]))
        np.testing.assert_array_equal(proj.get("audio_proj.norm.weight"), t["audio_proj.3.weight"])
        np.testing.assert_array_equal(proj.get("video_proj.fc2.bias"), t["video_proj.2.bias"])
        with open(os.path.join(out, "avlm.toml")) as f:
            toml = f.read()
        for line in ('compression = { kind = "stack", k = 4 }', 'compression = { kind = "stack", k = 2 }',
                     "layer_norm = true", "hidden = 6", f"hidden = {WHISPER_D}", f"hidden = {AVH_D}",
                     f"n_mels = {MELS}", 'window = "30s"', "normalize_waveform = true", "beam_width = 15",
                     "max_new_tokens = 32", 'stop = ["<|end_of_text|>"]',
                     'face_detector = "../../models/face_detection_back_256x256.onnx"',
                     'transcribe_audio_video = "<|begin_of_text|><audio>{audio}</audio><video>{video}</video>'
                     'Transcribe speech and video to text."'):
            self.assertIn(line, toml)
        # an AVSR checkpoint was trained on the audio-visual prompt alone
        self.assertNotIn("transcribe_audio =", toml)
        self.assertNotIn("transcribe_video =", toml)

    def test_the_encoders_get_their_tensors_and_configs(self):
        self.convert(self.checkpoint(self.avsr(lora=True)))
        names, cfg = self.exports["whisper"]
        self.assertEqual(names, sorted(conv.whisper_names(1)))
        self.assertEqual((cfg["d_model"], cfg["encoder_attention_heads"], cfg["num_mel_bins"], cfg["encoder_layers"]),
                         (WHISPER_D, 2, MELS, 1))
        names, cfg = self.exports["lip"]
        self.assertIn("feature_extractor_audio.proj.weight", names)  # the builder ignores it by name
        self.assertEqual(cfg["lora_scaling"], 2.0)
        self.assertTrue(cfg["layer_norm_first"])

    def test_a_lightning_prefix_is_stripped_and_an_asr_checkpoint_has_no_lip_half(self):
        t = {k: v for k, v in self.avsr().items() if not k.startswith("video")}
        out = self.convert(self.checkpoint(t, prefix="model."), all_prompts=True)
        with open(os.path.join(out, "avlm.toml")) as f:
            toml = f.read()
        self.assertNotIn("[lip]", toml)
        self.assertIn('transcribe_audio = "<|begin_of_text|><audio>{audio}</audio>Transcribe speech to text."', toml)
        self.assertNotIn("lip", self.exports)

    def test_without_audio_encoder_tensors_the_whisper_folder_gives_them(self):
        t = {k: v for k, v in self.avsr().items() if not k.startswith("audio_encoder.")}
        path = self.checkpoint(t)
        with self.assertRaises(ConversionError) as e:
            self.convert(path)
        self.assertIn("give --whisper", str(e.exception))
        whisper = os.path.join(self.dir, "whisper")
        os.makedirs(whisper)
        save(os.path.join(whisper, "model.safetensors"),
             {"model.encoder." + k[len("audio_encoder."):]: v for k, v in whisper_tensors(self.rng).items()})
        with open(os.path.join(whisper, "config.json"), "w") as f:
            json.dump({"model_type": "whisper", "d_model": WHISPER_D, "encoder_attention_heads": 4}, f)
        self.convert(path, whisper=whisper)
        names, cfg = self.exports["whisper"]
        self.assertEqual(names, sorted(conv.whisper_names(1)))
        self.assertEqual(cfg["encoder_attention_heads"], 4)

    def test_a_missing_tensor_is_named(self):
        t = self.avsr()
        del t["llm.model.layers.1.self_attn.lora_up_V.weight"]
        with self.assertRaises(ConversionError) as e:
            self.convert(self.checkpoint(t))
        self.assertIn("missing 1 tensor(s): llm.model.layers.1.self_attn.lora_up_V.weight", str(e.exception))

    def test_unused_tensors_are_named(self):
        t = self.avsr()
        t["llm.model.layers.0.self_attn.lora_down_K.weight"] = np.zeros((2, H), np.float32)
        with self.assertRaises(ConversionError) as e:
            self.convert(self.checkpoint(t))
        self.assertIn("unused 1 tensor(s): llm.model.layers.0.self_attn.lora_down_K.weight", str(e.exception))
        t = self.avsr()
        t["audiovisual_proj.0.weight"] = np.zeros((2, 2), np.float32)
        with self.assertRaises(ConversionError) as e:
            self.convert(self.checkpoint(t))
        self.assertIn("unused 1 tensor(s): audiovisual_proj.0.weight", str(e.exception))
        t = self.avsr()
        t["audio_encoder.layers.0.extra.weight"] = np.zeros(2, np.float32)
        with self.assertRaises(ConversionError) as e:
            self.convert(self.checkpoint(t))
        self.assertIn("unused 1 tensor(s): audio_encoder.layers.0.extra.weight", str(e.exception))

    def test_a_checkpoint_with_only_the_lora_is_refused(self):
        t = {k: v for k, v in self.avsr().items() if not k.startswith("llm.") or ".lora_" in k}
        with self.assertRaises(ConversionError) as e:
            self.convert(self.checkpoint(t))
        self.assertIn("only LoRA tensors of the LLM", str(e.exception))
        self.assertIn("resize_token_embeddings", str(e.exception))

    def test_a_wrong_reduction_or_base_tokenizer_is_refused(self):
        path = self.checkpoint(self.avsr())
        with self.assertRaises(ConversionError) as e:
            self.convert(path, lora_reduction=2)
        self.assertIn("rank 2", str(e.exception))
        t = self.avsr()
        for n in ("llm.model.embed_tokens.weight", "llm.lm_head.weight"):
            t[n] = t[n][:-1]
        with self.assertRaises(ConversionError) as e:
            self.convert(self.checkpoint(t))
        self.assertIn(f"has {ROWS - 1} rows", str(e.exception))

    def test_a_projector_whose_width_is_not_a_multiple_of_the_encoder_is_refused(self):
        t = self.avsr()
        t.update(projector(self.rng, "video_proj", 5, 1))
        with self.assertRaises(ConversionError) as e:
            self.convert(self.checkpoint(t))
        self.assertIn("video_proj.0.weight takes 5 features", str(e.exception))


if __name__ == "__main__":
    unittest.main()
