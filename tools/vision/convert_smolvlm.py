#!/usr/bin/env python3
"""Convert an Idefics3 / SmolVLM checkpoint (Idefics3ForConditionalGeneration) into an avlm bundle.

    convert_smolvlm.py --model SMOLVLM_DIR OUT_DIR
        [--audio-encoder ENCODER.onnx --audio-projector PROJECTOR.safetensors]
        [--dtype bf16|f16|f32]

SMOLVLM_DIR: config.json (model_type idefics3 or smolvlm, vision_config,
text_config, scale_factor), *.safetensors, tokenizer.json, and
preprocessor_config.json when there is one (image_mean / image_std; 0.5
otherwise).

OUT_DIR gets:
  vision_encoder.onnx           the SigLIP vision model with its post layernorm
                                (siglip_onnx.py; `patches` only: Idefics3 has no
                                pooling head)
  vision_projector.safetensors  `connector.modality_projection.proj` (one Linear,
                                no bias) as vision.fc1.weight: layers = 1
  llm/                          the text model as a Llama (config.json,
                                model.safetensors, tokenizer.json)
  avlm.toml                     tokens `pixel_shuffle` with the config's scale
                                factor, and a caption stream in SmolVLM's chat layout

Tensor names: `model.vision_model.*`, `model.connector.modality_projection.
proj.weight`, `model.text_model.*` (written as `model.*`) and `lm_head.weight`
(absent when the text config ties embeddings). Every tensor must be used and
every expected one present; otherwise the checkpoint is refused with the names.

Each frame is one `image_size` tile (the frame resized so its longest side
fits, padded black): SmolVLM's own processor also splits large images into
tiles plus a global image; a live frame here is the global image alone.

The caption stream (the choice is ours: SmolVLM was not trained on
VideoLLM-online's streaming format, so P(separator) after a frame means
nothing until the model is fine-tuned on it):
  system        "<|im_start|>System: ...<end_of_utterance>"
  frame_open    "\\n<|im_start|>User:<fake_token_around_image><global-img>"
  frame         the image tokens
  separator     "<fake_token_around_image>" (what follows an image's tokens in
                SmolVLM's layout; between frames it stands for "stay silent")
  reply_prompt  "<fake_token_around_image><end_of_utterance>\\nAssistant:"
  end           "<end_of_utterance>", then frame_open opens the next user turn.

Needs numpy and onnx only (the project venv).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_checkpoint import (  # noqa: E402
    Checkpoint, ConversionError, audio_half, check_names, check_shape, llama_config, llama_shapes,
    llama_tensor_names, no_audio_projector, read_json, token_ids, toml_string, write_json,
    write_safetensors)

SYSTEM = ("<|im_start|>System: A live video. When something new comes into view, "
          "say what it is in one short sentence.<end_of_utterance>")
FRAME_OPEN = "\n<|im_start|>User:<fake_token_around_image><global-img>"
SEPARATOR = "<fake_token_around_image>"
REPLY_PROMPT = "<fake_token_around_image><end_of_utterance>\nAssistant:"
END = "<end_of_utterance>"
PROJECTION = "model.connector.modality_projection.proj.weight"


def vision_config(cfg):
    vision = dict(cfg.get("vision_config") or {})
    # Idefics3VisionConfig's defaults for what a saved config may leave out.
    for key, value in dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=16, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6).items():
        vision.setdefault(key, value)
    if vision["num_channels"] != 3:
        raise ConversionError("the vision model does not take RGB")
    return vision


def convert(model_dir, out, audio_encoder=None, audio_projector=None, dtype=None):
    from siglip_onnx import siglip_onnx, siglip_tensor_names
    import onnx

    cfg = read_json(os.path.join(model_dir, "config.json"))
    if cfg.get("model_type") not in ("idefics3", "smolvlm"):
        raise ConversionError(f"{model_dir}: model_type {cfg.get('model_type')!r} is not idefics3 / smolvlm")
    v_cfg = vision_config(cfg)
    text = dict(cfg.get("text_config") or {})
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in cfg:
        text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
    llm_cfg = llama_config(text)
    factor = cfg.get("scale_factor", 2)
    grid = v_cfg["image_size"] // v_cfg["patch_size"]
    if grid % factor:
        raise ConversionError(f"scale factor {factor} does not divide the {grid}x{grid} patch grid")

    ckpt = Checkpoint(model_dir)
    text_names = llama_tensor_names(llm_cfg)
    in_file = {n: ("model.text_model." + n[len("model."):] if n.startswith("model.") else n) for n in text_names}
    expected = siglip_tensor_names(v_cfg, "model.vision_model.", head=False) + [PROJECTION] + list(in_file.values())
    check_names(f"{model_dir} (Idefics3)", ckpt.names(), expected)
    shapes = llama_shapes(llm_cfg)
    for ours, theirs in in_file.items():
        check_shape(theirs, ckpt.shape(theirs), shapes[ours])
    width = v_cfg["hidden_size"] * factor * factor
    check_shape(PROJECTION, ckpt.shape(PROJECTION), (llm_cfg["hidden_size"], width))

    tokenizer = read_json(os.path.join(model_dir, "tokenizer.json"))
    vocab = token_ids(tokenizer)
    for token in ("<|im_start|>", "<fake_token_around_image>", "<global-img>", END):
        if token not in vocab:
            raise ConversionError(f"the tokenizer has no {token}")
    mean, std = [0.5] * 3, [0.5] * 3
    pre = os.path.join(model_dir, "preprocessor_config.json")
    if os.path.exists(pre):
        p = read_json(pre)
        mean, std = p.get("image_mean", mean), p.get("image_std", std)

    os.makedirs(os.path.join(out, "llm"), exist_ok=True)
    onnx.save(siglip_onnx(ckpt.get, v_cfg, "model.vision_model.", pooled=False),
              os.path.join(out, "vision_encoder.onnx"))
    write_safetensors(os.path.join(out, "vision_projector.safetensors"),
                      [("vision.fc1.weight", ckpt.shape(PROJECTION), lambda: ckpt.get(PROJECTION))])
    if dtype is None:
        dtype = ckpt.dtype(in_file["model.embed_tokens.weight"])
        dtype = dtype if dtype in ("F32", "F16", "BF16") else "F32"
    llm_cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    write_safetensors(os.path.join(out, "llm", "model.safetensors"),
                      [(n, shapes[n], (lambda k=in_file[n]: ckpt.get(k))) for n in text_names], dtype=dtype)
    write_json(os.path.join(out, "llm", "config.json"), llm_cfg)
    with open(os.path.join(out, "llm", "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f, ensure_ascii=False)

    audio = audio_half(out, audio_encoder, audio_projector, "relu")
    floats = lambda xs: "[" + ", ".join(repr(float(x)) for x in xs) + "]"  # noqa: E731
    lines = [
        "# avlm bundle converted from Idefics3 / SmolVLM (tools/vision/convert_smolvlm.py)",
        f"name = {toml_string(os.path.basename(os.path.abspath(out)))}",
        "description = " + toml_string(
            f"SmolVLM (Idefics3): SigLIP vision model ({v_cfg['image_size']} px, patch {v_cfg['patch_size']}), "
            f"pixel shuffle {factor}, modality projection, Llama text model. The caption stream uses SmolVLM's "
            "chat layout; SmolVLM was not trained on VideoLLM-online's streaming format, so its respond-or-not "
            "decisions are only meaningful after fine-tuning on it."),
        "",
        *(audio or no_audio_projector()),
        "[projector.vision]",
        'prefix = "vision"',
        'weights = "vision_projector.safetensors"',
        'compression = { kind = "stack", k = 1 }',
        "layers = 1                   # connector.modality_projection.proj: one Linear, no bias",
        'activation = "gelu"          # unused with one layer',
        "",
        "[llm]",
        'weights = "llm"',
        'format = "safetensors"',
        'tokenizer = "llm/tokenizer.json"',
        f"max_context = {min(int(llm_cfg.get('max_position_embeddings', 8192)), 8192)}",
        "",
        "[prompts]",
        'transcribe_audio = "{audio}"' if audio else "",
        "",
        "[decoding]",
        f"stop = [{toml_string(END)}]",
        "",
        "[vision]",
        'encoder = "vision_encoder.onnx"',
        f"mean = {floats(mean)}",
        f"std = {floats(std)}",
        f"hidden = {v_cfg['hidden_size']}",
        f'tokens = {{ kind = "pixel_shuffle", factor = {factor} }}',
        "",
        "[caption]",
        "# SmolVLM's chat layout (see convert_smolvlm.py); not a trained streaming format.",
        f"system = {toml_string(SYSTEM)}",
        f"frame_open = {toml_string(FRAME_OPEN)}",
        f"separator = {toml_string(SEPARATOR)}",
        f"reply_prompt = {toml_string(REPLY_PROMPT)}",
        f"end = {toml_string(END)}",
        "threshold = 0.5",
        "max_new_tokens = 32",
    ]
    with open(os.path.join(out, "avlm.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    notes = []
    return notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--audio-encoder")
    ap.add_argument("--audio-projector")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"])
    ap.add_argument("out")
    args = ap.parse_args()
    try:
        notes = convert(args.model, args.out, args.audio_encoder, args.audio_projector,
                args.dtype.upper() if args.dtype else None)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
