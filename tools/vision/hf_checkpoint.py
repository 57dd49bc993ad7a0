"""Reading Hugging Face checkpoints and writing avlm bundle parts with numpy alone.

Shared by convert_videollm_online.py and convert_smolvlm.py, which run in the
project venv (numpy and onnx, no PyTorch, no `safetensors` package):

* safetensors files and sharded folders read lazily by name (F32, F16, BF16
  converted to float32), and written tensor by tensor (a merged 8B model is
  never whole in memory);
* `check_names`: the one place a converter refuses a checkpoint, naming every
  missing and every unused tensor;
* the bundle's text parts: the Llama `config.json`, the tokenizer with added
  tokens, and `avlm.toml`.
"""

import json
import os
import re
import struct

import numpy as np


class ConversionError(Exception):
    """The checkpoint cannot be converted; the message says why, by name."""


_DTYPES = {
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),
    "F64": (np.float64, 8),
    "I64": (np.int64, 8),
    "I32": (np.int32, 4),
}


class SafeTensors:
    """One safetensors file: names, shapes, dtypes; tensors read on demand."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.header = header

    def names(self):
        return list(self.header)

    def shape(self, name):
        return tuple(self.header[name]["shape"])

    def dtype(self, name):
        return self.header[name]["dtype"]

    def get(self, name):
        """The tensor as float32 (integer tensors keep their type)."""
        info = self.header[name]
        dtype = info["dtype"]
        if dtype not in _DTYPES:
            raise ConversionError(f"{self.path}: tensor {name} has dtype {dtype}, not supported")
        np_type, size = _DTYPES[dtype]
        start, end = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if end - start != count * size:
            raise ConversionError(f"{self.path}: tensor {name} has {end - start} bytes for shape {info['shape']}")
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            raw = np.frombuffer(f.read(end - start), dtype=np.dtype(np_type).newbyteorder("<"))
        if dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        elif raw.dtype.kind == "f":
            raw = raw.astype(np.float32)
        return raw.reshape(info["shape"])


class Checkpoint:
    """The safetensors of a folder (one file, or shards with an index) as one name space."""

    def __init__(self, folder, files=None):
        self.folder = folder
        if files is None:
            files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if not files:
            raise ConversionError(f"{folder}: no .safetensors files")
        self.where = {}
        for name in files:
            st = SafeTensors(os.path.join(folder, name))
            for key in st.names():
                if key in self.where:
                    raise ConversionError(f"{folder}: tensor {key} is in two files")
                self.where[key] = st

    def names(self):
        return set(self.where)

    def shape(self, name):
        return self.where[name].shape(name)

    def dtype(self, name):
        return self.where[name].dtype(name)

    def get(self, name):
        return self.where[name].get(name)


def check_names(what, present, expected, ignorable=()):
    """Refuses unless `present` covers `expected` and has nothing else besides
    names fully matching one of the `ignorable` regular expressions."""
    present, expected = set(present), set(expected)
    missing = sorted(expected - present)
    unused = sorted(n for n in present - expected if not any(re.fullmatch(p, n) for p in ignorable))
    if missing or unused:
        lines = [f"{what} does not match the model it should hold:"]
        if missing:
            lines.append(f"  missing {len(missing)} tensor(s): " + ", ".join(missing))
        if unused:
            lines.append(f"  unused {len(unused)} tensor(s): " + ", ".join(unused))
        raise ConversionError("\n".join(lines))


def check_shape(name, shape, expected):
    if tuple(shape) != tuple(expected):
        raise ConversionError(f"tensor {name} has shape {list(shape)}, expected {list(expected)}")


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns, rounded to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def write_safetensors(path, tensors, dtype="F32"):
    """Writes `tensors`, a list of (name, shape, make) where `make()` returns the
    float32 array, one tensor at a time; stored as F32, F16 or BF16."""
    size = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    header, offset = {}, 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape, dtype=np.int64)) * size
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, make in tensors:
            x = np.asarray(make(), dtype=np.float32)
            if x.shape != tuple(shape):
                raise ConversionError(f"internal: {name} made with shape {x.shape}, declared {shape}")
            if dtype == "BF16":
                data = to_bf16_bits(x)
            elif dtype == "F16":
                data = x.astype("<f2")
            else:
                data = x.astype("<f4")
            f.write(np.ascontiguousarray(data).tobytes())


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


# transformers' LlamaConfig defaults, for keys a nested text config leaves out.
LLAMA_DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

LLAMA_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
    "max_position_embeddings", "tie_word_embeddings", "hidden_act", "bos_token_id", "eos_token_id",
    "attention_bias", "mlp_bias",
)


def llama_config(src):
    """A LlamaForCausalLM config.json from a (possibly partial) Llama config."""
    if src.get("model_type", "llama") != "llama":
        raise ConversionError(f"the language model is {src.get('model_type')!r}, not a Llama")
    for flag in ("attention_bias", "mlp_bias"):
        if src.get(flag):
            raise ConversionError(f"the language model has {flag}; avlm's Llama has no biases")
    if src.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"the language model's activation is {src['hidden_act']!r}, not silu")
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    for key in LLAMA_KEYS:
        if key in src and src[key] is not None:
            out[key] = src[key]
        elif key in LLAMA_DEFAULTS:
            out[key] = LLAMA_DEFAULTS[key]
    out.setdefault("num_key_value_heads", out["num_attention_heads"])
    out.setdefault("head_dim", out["hidden_size"] // out["num_attention_heads"])
    return out


def llama_tensor_names(cfg, prefix="model."):
    """The tensors of a Llama with `cfg` (lm_head unless tied), `prefix` before the decoder's."""
    names = [f"{prefix}embed_tokens.weight", f"{prefix}norm.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        names += [p + m + ".weight" for m in LLAMA_LINEARS]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    if not cfg.get("tie_word_embeddings", False):
        names.append("lm_head.weight")
    return names


LLAMA_LINEARS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


def llama_shapes(cfg):
    """Expected shape of each tensor `llama_tensor_names(cfg)` lists."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per = {
        "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
        "self_attn.o_proj": (d, q), "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d),
        "mlp.down_proj": (d, f),
    }
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for m, s in per.items():
            shapes[p + m + ".weight"] = s
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
    return shapes


def tokenizer_with(tokenizer_json, added):
    """`tokenizer.json` (parsed) with special tokens `added` appended after
    the highest id, as `tokenizer.add_special_tokens` does; returns their ids."""
    tok = json.loads(json.dumps(tokenizer_json))
    present = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab = tok.get("model", {}).get("vocab", {})
    top = max([*present.values(), *(vocab.values() if isinstance(vocab, dict) else [])], default=-1)
    ids = {}
    for content in added:
        if content in present:
            ids[content] = present[content]
            continue
        top += 1
        tok.setdefault("added_tokens", []).append({
            "id": top, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True,
        })
        ids[content] = top
    return tok, ids


def token_ids(tokenizer_json):
    """Every token string -> id (the model's vocabulary and the added tokens)."""
    vocab = dict(tokenizer_json.get("model", {}).get("vocab", {}))
    for t in tokenizer_json.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    return vocab


def special_token(tokenizer_config, key):
    """`bos_token` / `eos_token` of a tokenizer_config.json (a string or an AddedToken dict)."""
    value = tokenizer_config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value


def toml_string(s):
    """A TOML basic string."""
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def audio_half(out_dir, audio_encoder, audio_projector, activation):
    """The manifest's [audio] and [projector.audio] lines for a Whisper-contract
    ONNX encoder and an `audio.fc1/fc2` projector file (copied into the bundle
    as projector.safetensors); [] when neither is given."""
    if audio_encoder is None and audio_projector is None:
        return []
    if audio_encoder is None or audio_projector is None:
        raise ConversionError("--audio-encoder and --audio-projector go together")
    import shutil

    import onnx

    model = onnx.load(audio_encoder, load_external_data=False)
    dims = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    inputs = {i.name: dims(i) for i in model.graph.input}
    outputs = {o.name: dims(o) for o in model.graph.output}
    if "mel" not in inputs or "features" not in outputs:
        raise ConversionError(f"{audio_encoder}: not an avlm audio encoder (mel -> features)")
    n_mels, hidden = inputs["mel"][1], outputs["features"][2]
    proj = SafeTensors(audio_projector)
    check_names(audio_projector, proj.names(),
                ["audio.fc1.weight", "audio.fc1.bias", "audio.fc2.weight", "audio.fc2.bias"])
    shutil.copyfile(audio_projector, os.path.join(out_dir, "projector.safetensors"))
    rel = os.path.relpath(os.path.abspath(audio_encoder), os.path.abspath(out_dir))
    fc1 = proj.shape("audio.fc1.weight")
    if fc1[1] % hidden:
        raise ConversionError(f"audio.fc1.weight is {list(fc1)}; its input is not a multiple of {hidden}")
    return [
        "[audio]",
        f"encoder = {toml_string(rel)}",
        f"n_mels = {n_mels}",
        f"hidden = {hidden}",
        "",
        "[projector]",
        'weights = "projector.safetensors"',
        "",
        "[projector.audio]",
        'prefix = "audio"',
        f'compression = {{ kind = "stack", k = {fc1[1] // hidden} }}',
        f'activation = "{activation}"',
        f"hidden = {fc1[0]}",
        "",
    ]


def no_audio_projector():
    """[projector] for a bundle without an audio half (its vision projector has its own file)."""
    return ["[projector]", 'weights = "vision_projector.safetensors"', ""]
