#!/usr/bin/env python3
"""Write avlm's default model bundle folder.

    make_default_bundle.py BUNDLE_DIR [--untrained]   (normally .avlm/bundles/default)

Writes:
  BUNDLE_DIR/avlm.toml              the bundle manifest (paths relative to BUNDLE_DIR;
                                    models are expected at BUNDLE_DIR/../../models/)
  BUNDLE_DIR/projector.safetensors  the audio projector, audio.fc1 / audio.fc2
  BUNDLE_DIR/lora.safetensors       LoRA r8 adapters on q/v of SmolLM2 (merged at load)
  BUNDLE_DIR/ctc.safetensors        the CTC head's blank class, for joint CTC/attention decoding
  BUNDLE_DIR/encoder_top.safetensors the tuned top blocks of the Whisper encoder, when
                                    weights/default has them; then also
  BUNDLE_DIR/../../models/whisper-tiny.en-encoder.default-top.onnx
                                    the converted encoder with those initializers replaced
                                    (patch_encoder.py), which the manifest names as the encoder

The projector, LoRA and CTC head are the trained ones committed in weights/default/ (see
weights/default/MODEL_CARD.md for how they were made: tools/train/).

--untrained writes instead a deterministic, seeded stand-in projector with
PyTorch's default nn.Linear initialisation (kaiming_uniform_(a=sqrt(5)) for the
weight and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias, both of which come
to U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn from
numpy.random.default_rng(20261126) as rng.random(shape, dtype=float64) * 2b - b,
in the order fc1.weight, fc1.bias, fc2.weight, fc2.bias, stored float32, and no
LoRA. Same seed -> byte-identical file.  Tensors (PyTorch Linear layout [out, in]):
  audio.fc1.weight [576, 1536]  audio.fc1.bias [576]
  audio.fc2.weight [576, 576]   audio.fc2.bias [576]

The safetensors file is written with plain numpy (no torch, no `safetensors`
package): u64 LE header length, JSON header padded with spaces to a multiple of
8 bytes, then the raw little-endian tensor data in header order.

Importable: make_default_bundle(bundle_dir, trained=True) -> (manifest_path, projector_path).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys

import numpy as np

SEED = 20261126
STACK_K = 4
ENC_HIDDEN = 384          # Whisper tiny.en encoder width
LLM_HIDDEN = 576          # SmolLM2-135M d_model
PREFIX = "audio"

# Order matters: it is the order of the RNG draws and of the data in the file.
TENSORS = [
    (f"{PREFIX}.fc1.weight", (LLM_HIDDEN, STACK_K * ENC_HIDDEN), STACK_K * ENC_HIDDEN),
    (f"{PREFIX}.fc1.bias", (LLM_HIDDEN,), STACK_K * ENC_HIDDEN),
    (f"{PREFIX}.fc2.weight", (LLM_HIDDEN, LLM_HIDDEN), LLM_HIDDEN),
    (f"{PREFIX}.fc2.bias", (LLM_HIDDEN,), LLM_HIDDEN),
]

METADATA = {"avlm": "untrained seeded init", "seed": str(SEED)}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINED = os.path.join(ROOT, "weights", "default")
TRAINED_FILES = ("projector.safetensors", "lora.safetensors", "ctc.safetensors")
# Optional: tuned top blocks of the Whisper encoder (train_projector.py --tune-encoder-top). When
# weights/default holds it, the bundle's encoder is the base ONNX with those initializers
# replaced (tools/bundle/patch_encoder.py), written beside the base one in the models folder.
ENCODER_TOP = "encoder_top.safetensors"
BASE_ENCODER = "whisper-tiny.en-encoder.onnx"
TUNED_ENCODER = "whisper-tiny.en-encoder.default-top.onnx"

# Optional: the live captioner (tools/vision/train_captioner.py): its projector, and the
# EfficientNet-Lite2 encoder tools/setup.sh converts into the models folder.
VISION_PROJECTOR = "vision_projector.safetensors"
VISION_ENCODER = "efficientnet-lite2.onnx"
VISION_MANIFEST = r'''
[vision]
encoder = "../../models/efficientnet-lite2.onnx"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
hidden = 1280
tokens = { kind = "pooled_grid", grid = 3 }   # the pooled vector, then the 9x9 map pooled to 3x3

[projector.vision]
prefix = "vision"
weights = "vision_projector.safetensors"
compression = { kind = "stack", k = 1 }
activation = "gelu"
layer_norm = false
hidden = 576

[caption]
system = "<|im_start|>system\nA live video. When something new comes into view, say what it is in one short sentence.<|im_end|>\n"
frame_open = "\n["
separator = ","
reply_prompt = "]\nAssistant:"
end = "<|im_end|>"
threshold = 0.725
max_new_tokens = 32
window = 512
fps = 2.0
question_prompt = "]\nUser: "
answer_prompt = "\nAssistant:"
'''

# Written verbatim.  The \n inside the prompt are TOML basic-string escapes.
MANIFEST = r'''# avlm model bundle: default (Whisper tiny.en encoder + SmolLM2-135M-Instruct)
name = "default"
description = "Whisper tiny.en encoder (ONNX, from CTranslate2 weights) + stack-4 projector + SmolLM2-135M-Instruct (GGUF). @WEIGHTS@"

[audio]
encoder = "../../models/whisper-tiny.en-encoder.onnx"
n_mels = 80
hidden = 384
window = "utterance"        # encode the utterance at its own length ("30s": pad to 3000 frames, keep max(samples/320, 25) of them, as Llama-AVSR)

[projector]
weights = "projector.safetensors"

[projector.audio]
prefix = "audio"
compression = { kind = "stack", k = 4 }
activation = "relu"
layer_norm = false
hidden = 576

[llm]
weights = "../../models/SmolLM2-135M-Instruct.Q4_1.gguf"
format = "gguf"
weight_mode = "mixed"         # f32 prompts (exact), Q8_0 one-token and beam steps (4x fewer bytes per step)
@LORA@tokenizer = "gguf"
max_context = 2048

[prompts]
transcribe_audio = "<|im_start|>user\n{audio}\nTranscribe speech to text.<|im_end|>\n<|im_start|>assistant\n"

[decoding]
@DECODING@max_new_tokens = 64
max_tokens_per_audio_s = 6.0
stop = ["<|im_end|>", "<|endoftext|>"]
'''


def projector_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """name -> float32 array, PyTorch nn.Linear default init from a seeded numpy stream."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, fan_in in TENSORS:
        bound = 1.0 / np.sqrt(fan_in)
        u = rng.random(shape, dtype=np.float64)              # [0, 1)
        out[name] = (u * (2.0 * bound) - bound).astype(np.float32)
    return out


# safetensors dtypes read and written here (float16 for the committed encoder_top.safetensors)
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """float32 or float16 arrays (each kept in its own dtype) -> safetensors file bytes."""
    header: dict = {"__metadata__": dict(metadata)}
    blobs, off = [], 0
    for name, arr in tensors.items():
        tag = next((t for t, dt in _DTYPES.items() if arr.dtype == dt), None)
        if tag is None:
            raise ValueError(f"{name}: only F32 and F16 written here, got {arr.dtype}")
        b = np.ascontiguousarray(arr, dtype=_DTYPES[tag]).tobytes()
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A safetensors file of F32/F16 tensors -> name -> float32 array, and its metadata. A
    malformed file is refused (SystemExit) with what is wrong and the tensor named."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise SystemExit(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise SystemExit(f"{path}: header length {n} runs past the end of the file")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise SystemExit(f"{path}: header is not JSON ({e})")
    if not isinstance(header, dict):
        raise SystemExit(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    base, out = 8 + n, {}
    for name, info in header.items():
        try:
            dtype, shape, (s, e) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SystemExit(f"{path}: {name} lacks a dtype, shape or data_offsets")
        dt = _DTYPES.get(dtype)
        if dt is None:
            raise SystemExit(f"{path}: {name} has dtype {dtype}; only F32 and F16 are read")
        if not (0 <= s <= e <= len(data) - base) or (e - s) % dt.itemsize:
            raise SystemExit(f"{path}: {name} has data offsets [{s}, {e}] outside the data or not whole values")
        arr = np.frombuffer(data[base + s:base + e], dtype=dt)
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise SystemExit(f"{path}: {name} holds {arr.size} values for shape {shape}")
        out[name] = arr.reshape(shape).astype(np.float32)
    return out, meta


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# Joint CTC/attention beam search with the trained CTC head (MODEL_CARD.md: "Decoding").
TRAINED_DECODING = """beam_width = 4
partial_beam_width = 1
length_penalty = 1.0
ctc_head = "ctc.safetensors"
ctc_weight = 0.3
"""
GREEDY_DECODING = """beam_width = 1
length_penalty = 1.0
"""


def manifest_text(trained: bool, tuned_encoder: bool = False) -> str:
    if trained:
        text = MANIFEST
        if tuned_encoder:
            for old, new in ((f'encoder = "../../models/{BASE_ENCODER}"', f'encoder = "../../models/{TUNED_ENCODER}"'),
                             ("Whisper tiny.en encoder (ONNX, from CTranslate2 weights)",
                              "Whisper tiny.en encoder (ONNX, from CTranslate2 weights; top blocks tuned)")):
                assert old in text, f"MANIFEST no longer has {old!r}"
                text = text.replace(old, new)
        return (text.replace("@WEIGHTS@", "Projector + LoRA r8 on q/v + CTC head: trained (weights/default/MODEL_CARD.md).")
                .replace("@LORA@", 'lora = "lora.safetensors"\n').replace("@DECODING@", TRAINED_DECODING))
    return (MANIFEST.replace("@WEIGHTS@", "Projector: untrained seeded init.").replace("@LORA@", "")
            .replace("@DECODING@", GREEDY_DECODING))


def make_default_bundle(bundle_dir: str, trained: bool = True) -> tuple[str, str]:
    os.makedirs(bundle_dir, exist_ok=True)
    manifest = os.path.join(bundle_dir, "avlm.toml")
    projector = os.path.join(bundle_dir, "projector.safetensors")
    if trained:
        for name in TRAINED_FILES:
            src = os.path.join(TRAINED, name)
            if not os.path.exists(src):
                raise SystemExit(f"{src} missing: the trained weights are part of the repository")
            shutil.copyfile(src, os.path.join(bundle_dir, name + ".tmp"))
            os.replace(os.path.join(bundle_dir, name + ".tmp"), os.path.join(bundle_dir, name))
    tuned = trained and os.path.exists(os.path.join(TRAINED, ENCODER_TOP))
    if tuned:
        from patch_encoder import patch_encoder   # (it imports this module: not at the top)

        models = os.path.join(bundle_dir, "..", "..", "models")
        base = os.path.join(models, BASE_ENCODER)
        if not os.path.exists(base):
            raise SystemExit(f"{base} missing: tools/setup.sh converts it first")
        patch_encoder(base, os.path.join(TRAINED, ENCODER_TOP), os.path.join(models, TUNED_ENCODER))
        shutil.copyfile(os.path.join(TRAINED, ENCODER_TOP), os.path.join(bundle_dir, ENCODER_TOP))
    elif os.path.exists(os.path.join(bundle_dir, ENCODER_TOP)):
        os.remove(os.path.join(bundle_dir, ENCODER_TOP))
    if not trained:
        _write(projector, safetensors_bytes(projector_weights(), METADATA))
        for name in TRAINED_FILES[1:]:
            if os.path.exists(os.path.join(bundle_dir, name)):
                os.remove(os.path.join(bundle_dir, name))
    text = manifest_text(trained, tuned)
    vision = os.path.join(TRAINED, VISION_PROJECTOR)
    encoder = os.path.join(bundle_dir, "..", "..", "models", VISION_ENCODER)
    if trained and os.path.exists(vision) and os.path.exists(encoder):
        shutil.copyfile(vision, os.path.join(bundle_dir, VISION_PROJECTOR + ".tmp"))
        os.replace(os.path.join(bundle_dir, VISION_PROJECTOR + ".tmp"), os.path.join(bundle_dir, VISION_PROJECTOR))
        text = text.replace("SmolLM2-135M-Instruct (GGUF).",
                            "SmolLM2-135M-Instruct (GGUF); live captions from EfficientNet-Lite2 (ImageNet) frames.", 1)
        text += VISION_MANIFEST
    elif os.path.exists(os.path.join(bundle_dir, VISION_PROJECTOR)):
        os.remove(os.path.join(bundle_dir, VISION_PROJECTOR))
    _write(manifest, text.encode("utf-8"))
    return manifest, projector


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    trained = "--untrained" not in argv
    args = [a for a in argv if a != "--untrained"]
    if len(args) != 1 or args[0].startswith("-"):
        print(__doc__.strip().split("\n\n")[0], file=sys.stderr)
        print("usage: make_default_bundle.py BUNDLE_DIR [--untrained]", file=sys.stderr)
        return 2
    manifest, projector = make_default_bundle(args[0], trained)
    # Self-check: the manifest parses and the projector reads back.
    try:
        import tomllib
        with open(manifest, "rb") as f:
            tomllib.load(f)
    except ImportError:  # Python < 3.11: skip the parse check
        pass
    back, meta = read_safetensors(projector)
    assert [k for k in back] == [name for name, _, _ in TENSORS], list(back)
    assert all(back[name].shape == shape for name, shape, _ in TENSORS)
    if not trained:
        ref = projector_weights()
        assert meta == METADATA and all(np.array_equal(back[k], ref[k]) for k in ref)
    print(f"wrote {manifest}")
    print(f"wrote {projector} ({os.path.getsize(projector)} bytes; "
          + ", ".join(f"{k} {list(v.shape)}" for k, v in back.items()) + ")"
          + ("" if not trained else ", lora.safetensors and ctc.safetensors")
          + (f", encoder {TUNED_ENCODER} (tuned top blocks)" if os.path.exists(os.path.join(args[0], ENCODER_TOP)) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
