#!/usr/bin/env python3
"""Convert a released VideoLLM-online checkpoint (`live1+`) into an avlm bundle.

    convert_videollm_online.py --base LLAMA_DIR --adapter ADAPTER_DIR --vision SIGLIP_DIR OUT_DIR
        [--audio-encoder ENCODER.onnx --audio-projector PROJECTOR.safetensors]
        [--dtype bf16|f16|f32]

Inputs (Hugging Face folders):
  LLAMA_DIR    the base model (Meta-Llama-3-8B-Instruct): config.json,
               *.safetensors, tokenizer.json, tokenizer_config.json
  ADAPTER_DIR  the PEFT adapter (showlab/videollm-online-8b-v1plus):
               adapter_config.json (r, lora_alpha, target_modules,
               modules_to_save = connector), adapter_model.safetensors
  SIGLIP_DIR   google/siglip-large-patch16-384 (a SiglipModel: its text
               tower is not used) or a SiglipVisionModel folder

OUT_DIR gets:
  vision_encoder.onnx           the SigLIP vision tower (siglip_onnx.py):
                                pooled = pooler_output, patches = last_hidden_state
  vision_projector.safetensors  the connector Linear, GELU, Linear as vision.fc1/fc2
  llm/                          the Llama with every LoRA merged,
                                W + (alpha / r) * B @ A (alpha / sqrt(r) with
                                use_rslora), config.json, model.safetensors,
                                tokenizer.json with `<v>` added
  avlm.toml                     VideoLLM-online's stream format (VIDEO.md)

The adapter's key names are derived from PEFT's saving code (no released file
was opened): LoRA weights `base_model.model.<module>.lora_A.weight` (older
PEFT: `lora_A.default.weight`), the connector `base_model.model.connector.
{0,2}.{weight,bias}` (or with `modules_to_save.default.` inside). Every tensor
of every input must be used and every expected one present: a checkpoint
that differs is refused with the names.

`<v>`: VideoLLM-online adds the placeholder to the tokenizer (id = the base
vocabulary size) but never resizes the embeddings: `joint_embed` clamps ids to
vocab_size - 1 and replaces the placeholder rows with frame embeddings, and
the lm_head keeps the base vocabulary. So the LLM keeps its rows as they are
and `<v>` is added to the tokenizer only. A checkpoint whose embeddings were
resized would carry them in the adapter and is refused as unused tensors.

The bundle captions video; to transcribe speech with the same LLM as well,
give an avlm Whisper-contract encoder and an `audio.fc1/fc2` projector whose
output is the Llama's width (--audio-encoder, --audio-projector).

Needs numpy and onnx only (the project venv).
"""

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_checkpoint import (  # noqa: E402
    LLAMA_LINEARS, Checkpoint, ConversionError, SafeTensors, audio_half, check_names, check_shape,
    llama_config, llama_shapes, llama_tensor_names, no_audio_projector, read_json, special_token,
    tokenizer_with, toml_string, write_json, write_safetensors)

SYSTEM_PROMPT = ("A multimodal AI assistant is helping users with some activities. Below is their "
                 "conversation, interleaved with the list of video frames received by the assistant.")
V_PLACEHOLDER = "<v>"
THRESHOLD = 0.725
POOLED_GRID = 3

_LORA = re.compile(r"base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight")
_CONNECTOR = re.compile(r"base_model\.model\.connector\.(?:modules_to_save\.)?(?:default\.)?([02])\.(weight|bias)")


def adapter_plan(adapter_config, names, llm_cfg):
    """Maps the adapter's tensor names onto the model: {module: {'A': key, 'B': key}},
    {connector key: adapter key}, the scale; refuses missing and unused tensors."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise ConversionError(f"adapter is {adapter_config.get('peft_type')}, not LORA")
    for key in ("use_dora", "fan_in_fan_out"):
        if adapter_config.get(key):
            raise ConversionError(f"adapter_config {key} is set; only plain LoRA is supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            raise ConversionError(f"adapter_config {key} is set; per-module ranks are not supported")
    if adapter_config.get("bias", "none") != "none":
        raise ConversionError("adapter trains biases (bias != 'none'); not supported")
    r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    scale = alpha / (r ** 0.5) if adapter_config.get("use_rslora") else alpha / r

    targets = adapter_config.get("target_modules") or []
    linears = [f"model.layers.{i}.{m}" for i in range(llm_cfg["num_hidden_layers"]) for m in LLAMA_LINEARS]
    linears.append("lm_head")
    if isinstance(targets, str):
        targeted = [m for m in linears if re.fullmatch(targets, m)]
    else:
        targeted = [m for m in linears if m.split(".")[-1] in targets or m in targets]
    if not targeted:
        raise ConversionError(f"adapter target_modules {targets!r} match none of the Llama's linear layers")
    if "connector" not in (adapter_config.get("modules_to_save") or []):
        raise ConversionError("adapter_config modules_to_save has no 'connector': this is not a VideoLLM-online adapter")

    lora, connector, canonical = {}, {}, {}
    for name in names:
        m = _LORA.fullmatch(name)
        if m:
            lora.setdefault(m.group(1), {})[m.group(2)] = name
            canonical[name] = f"base_model.model.{m.group(1)}.lora_{m.group(2)}.weight"
            continue
        m = _CONNECTOR.fullmatch(name)
        if m:
            connector[f"connector.{m.group(1)}.{m.group(2)}"] = name
            canonical[name] = f"base_model.model.connector.{m.group(1)}.{m.group(2)}"
    expected = [f"base_model.model.{mod}.lora_{ab}.weight" for mod in targeted for ab in "AB"]
    expected += [f"base_model.model.connector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    # Compare in canonical spelling, report in the file's own.
    seen = {canonical.get(n, n) for n in names}
    try:
        check_names("adapter_model.safetensors", seen, expected)
    except ConversionError as e:
        spelled = {canonical.get(n, n): n for n in names}
        raise ConversionError(re.sub(r"base_model\.model\.[\w.]+", lambda m: spelled.get(m.group(0), m.group(0)),
                                     str(e))) from None
    return {mod: lora[mod] for mod in targeted}, connector, scale


def vision_tower(folder):
    """(config, tensor name prefix, names the converter may leave unused) of a SigLIP folder."""
    cfg = read_json(os.path.join(folder, "config.json"))
    kind = cfg.get("model_type")
    if kind == "siglip":
        vision = dict(cfg.get("vision_config") or {})
        ignorable = [r"text_model\..*", r"logit_scale", r"logit_bias"]
    elif kind == "siglip_vision_model":
        vision, ignorable = cfg, []
    else:
        raise ConversionError(f"{folder}: model_type {kind!r} is not SigLIP")
    # SiglipVisionConfig's defaults for what a saved config may leave out.
    defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                    num_channels=3, vision_use_head=True)
    for key, value in defaults.items():
        vision.setdefault(key, value)
    if not vision["vision_use_head"]:
        raise ConversionError("the SigLIP tower has no pooling head; VideoLLM-online's first token is its output")
    if vision["num_channels"] != 3:
        raise ConversionError("the SigLIP tower does not take RGB")
    return vision, "vision_model.", ignorable


def convert(base, adapter, vision, out, audio_encoder=None, audio_projector=None, dtype=None):
    from siglip_onnx import siglip_onnx, siglip_tensor_names
    import onnx

    llm_cfg = llama_config(read_json(os.path.join(base, "config.json")))
    base_ckpt = Checkpoint(base)
    check_names(f"{base} (the base Llama)", base_ckpt.names(), llama_tensor_names(llm_cfg),
                ignorable=[r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"])
    shapes = llama_shapes(llm_cfg)
    for name in llama_tensor_names(llm_cfg):
        check_shape(name, base_ckpt.shape(name), shapes[name])

    adapter_cfg = read_json(os.path.join(adapter, "adapter_config.json"))
    ad = SafeTensors(os.path.join(adapter, "adapter_model.safetensors"))
    lora, connector, scale = adapter_plan(adapter_cfg, ad.names(), llm_cfg)
    r = adapter_cfg["r"]
    for module, keys in lora.items():
        out_dim, in_dim = shapes[module + ".weight"]
        check_shape(keys["A"], ad.shape(keys["A"]), (r, in_dim))
        check_shape(keys["B"], ad.shape(keys["B"]), (out_dim, r))

    v_cfg, v_prefix, v_ignorable = vision_tower(vision)
    v_ckpt = Checkpoint(vision)
    check_names(f"{vision} (the SigLIP vision tower)", v_ckpt.names(),
                siglip_tensor_names(v_cfg, v_prefix, head=True), ignorable=v_ignorable)
    width, d_llm = v_cfg["hidden_size"], llm_cfg["hidden_size"]
    c1 = ad.shape(connector["connector.0.weight"])
    check_shape(connector["connector.0.weight"], c1, (c1[0], width))
    check_shape(connector["connector.0.bias"], ad.shape(connector["connector.0.bias"]), (c1[0],))
    check_shape(connector["connector.2.weight"], ad.shape(connector["connector.2.weight"]), (d_llm, c1[0]))
    check_shape(connector["connector.2.bias"], ad.shape(connector["connector.2.bias"]), (d_llm,))

    tok_cfg = read_json(os.path.join(base, "tokenizer_config.json"))
    bos, eos = special_token(tok_cfg, "bos_token"), special_token(tok_cfg, "eos_token")
    if not eos:
        raise ConversionError(f"{base}/tokenizer_config.json names no eos_token")
    tokenizer, ids = tokenizer_with(read_json(os.path.join(base, "tokenizer.json")), [V_PLACEHOLDER])

    os.makedirs(os.path.join(out, "llm"), exist_ok=True)
    model = siglip_onnx(v_ckpt.get, v_cfg, v_prefix, pooled=True)
    onnx.save(model, os.path.join(out, "vision_encoder.onnx"))
    write_safetensors(os.path.join(out, "vision_projector.safetensors"), [
        (f"vision.fc{1 if i == 0 else 2}.{p}", ad.shape(connector[f"connector.{i}.{p}"]),
         (lambda k=connector[f"connector.{i}.{p}"]: ad.get(k)))
        for i in (0, 2) for p in ("weight", "bias")])

    def merged(name):
        w = base_ckpt.get(name)
        module = name[: -len(".weight")]
        if module in lora:
            a = ad.get(lora[module]["A"]).astype(np.float64)
            b = ad.get(lora[module]["B"]).astype(np.float64)
            w = (w.astype(np.float64) + scale * (b @ a)).astype(np.float32)
        return w

    names = llama_tensor_names(llm_cfg)
    if "lm_head" in lora and llm_cfg.get("tie_word_embeddings"):
        # The LoRA on lm_head unties it from the embeddings.
        llm_cfg["tie_word_embeddings"] = False
        names.append("lm_head.weight")
    if dtype is None:
        dtype = base_ckpt.dtype("model.embed_tokens.weight")
        dtype = dtype if dtype in ("F32", "F16", "BF16") else "F32"
    llm_cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]

    def source(name):
        if name == "lm_head.weight" and name not in base_ckpt.names():
            return lambda: merged_tied()
        return lambda: merged(name)

    def merged_tied():
        w = base_ckpt.get("model.embed_tokens.weight").astype(np.float64)
        a, b = (ad.get(lora["lm_head"][k]).astype(np.float64) for k in "AB")
        return (w + scale * (b @ a)).astype(np.float32)

    write_safetensors(os.path.join(out, "llm", "model.safetensors"),
                      [(n, shapes[n], source(n)) for n in names], dtype=dtype)
    write_json(os.path.join(out, "llm", "config.json"), llm_cfg)
    with open(os.path.join(out, "llm", "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f, ensure_ascii=False)

    audio = audio_half(out, audio_encoder, audio_projector, "relu")
    lines = [
        "# avlm bundle converted from VideoLLM-online (tools/vision/convert_videollm_online.py)",
        f"name = {toml_string(os.path.basename(os.path.abspath(out)))}",
        "description = " + toml_string(
            f"VideoLLM-online: SigLIP vision tower ({v_cfg['image_size']} px, patch {v_cfg['patch_size']}) + "
            f"connector + Llama with the LoRA merged (r {r}, alpha {adapter_cfg['lora_alpha']}); "
            "the respond-or-not stream format of its demo"),
        "",
        *(audio or no_audio_projector()),
        "[projector.vision]",
        'prefix = "vision"',
        'weights = "vision_projector.safetensors"',
        'compression = { kind = "stack", k = 1 }',
        'activation = "gelu"',
        f"hidden = {c1[0]}",
        "",
        "[llm]",
        'weights = "llm"',
        'format = "safetensors"',
        'tokenizer = "llm/tokenizer.json"',
        "max_context = 8192",
        "",
        "[prompts]",
        'transcribe_audio = "{audio}"' if audio else "",
        "",
        "[decoding]",
        f"stop = [{toml_string(eos)}]",
        "",
        "[vision]",
        'encoder = "vision_encoder.onnx"',
        "mean = [0.5, 0.5, 0.5]",
        "std = [0.5, 0.5, 0.5]",
        f"hidden = {width}",
        f'tokens = {{ kind = "pooled_grid", grid = {POOLED_GRID} }}',
        "",
        "[caption]",
        "# demo/inference.py: bos + system + '\\n', '\\n[' before the first frame, ',' between",
        "# silent frames, ']\\nAssistant:' to speak, eos + '\\n[' after a reply.",
        f"system = {toml_string((bos or '') + SYSTEM_PROMPT + chr(10))}",
        'frame_open = "\\n["',
        'separator = ","',
        'reply_prompt = "]\\nAssistant:"',
        f"end = {toml_string(eos)}",
        f"threshold = {THRESHOLD}",
        "max_new_tokens = 100",
    ]
    with open(os.path.join(out, "avlm.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    notes = []
    if ids[V_PLACEHOLDER] != llm_cfg["vocab_size"]:
        notes.append(f"<v> has id {ids[V_PLACEHOLDER]}; the LLM's vocabulary is {llm_cfg['vocab_size']}")
    return notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--vision", required=True)
    ap.add_argument("--audio-encoder")
    ap.add_argument("--audio-projector")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"])
    ap.add_argument("out")
    args = ap.parse_args()
    try:
        notes = convert(args.base, args.adapter, args.vision, args.out, args.audio_encoder, args.audio_projector,
                args.dtype.upper() if args.dtype else None)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
