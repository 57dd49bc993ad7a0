#!/usr/bin/env python3
"""Write two tiny random LLaMA checkpoints in the Hugging Face layout, plus
float64 numpy reference outputs, for llm/tests/hf_safetensors_parity.rs.

Usage:  .avlm/venv/bin/python tools/llm/make_tiny_hf.py [OUT_DIR]
        (OUT_DIR defaults to tests/golden/tiny_hf)

Writes, for each model, OUT_DIR/<model>/:
  config.json                    HF LlamaForCausalLM config
  *.safetensors                  the weights (written here with plain numpy:
                                 u64 LE header length, JSON header padded with
                                 spaces to a multiple of 8, raw LE data)
  model.safetensors.index.json   (sharded model only) HF weight_map
  golden.json                    prompts, ids, greedy ids and margins, the
                                 names of the logits files, sensitivity numbers
  <prompt>_logits.bin            float32 LE, row-major [n_tokens, vocab]:
                                 reference logits at every prompt position

Models:
  tiny-llama3  vocab 256, d 64, ffn 160, 2 layers, 4 heads / 2 kv heads (GQA),
               head_dim 16, rope_theta 5e5 with llama3 rope_scaling (factor 8,
               low 1, high 4, original_max_position_embeddings 64, so that all
               three branches of the scaling hit: head_dim 16 gives
               wavelengths 6.3 (< 16, kept), 32.4 (smoothed), >= 167 (/ 8)),
               untied lm_head, bf16 weights (round-to-nearest-even from f32).
  tiny-tied    vocab 200, d 48, ffn 96, 3 layers, 6 heads / 6 kv heads (MHA),
               rope_theta 1e4, no rope_scaling, tie_word_embeddings (no
               lm_head.weight), f16 weights split over two shard files.

The reference is the HF LlamaForCausalLM math in float64 on exactly the
stored (bf16/f16-rounded) weight values: RMSNorm x * rsqrt(mean(x^2) + eps) * w,
half-split rotary embedding (rotate_half) with cos/sin from inv_freq (llama3
scaling as in transformers' _compute_llama3_parameters), causal softmax
attention scaled by 1/sqrt(head_dim) with repeat_kv (query head h reads kv head
h // (heads / kv_heads)), o_proj, SwiGLU down(silu(gate) * up), final norm,
lm_head.

Prompts are byte strings (ids = bytes), ASCII so they fit both vocabularies.
Everything is seeded (np.random.default_rng) and BLAS runs single-threaded, so
re-running reproduces the files byte for byte.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

N_GREEDY = 16

PROMPTS = [
    # (name, text)
    ("short", "Hello, av!"),  # 10 tokens
    ("long", "The quick brown fox jumps over lazy dogs."),  # 41 tokens
]
GREEDY_PROMPT = "short"

MODELS = [
    dict(
        name="tiny-llama3",
        seed=20240701,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_type": "llama3",
        },
        max_position_embeddings=512,
        tie_word_embeddings=False,
        dtype="bfloat16",
        shards=None,
    ),
    dict(
        name="tiny-tied",
        # Seed and embedding scale picked so the greedy continuation is not one
        # token repeated (tied heads favour echoing the last input) and its
        # smallest top-1/top-2 gap stays far above f32 error (0.09 here).
        seed=7,
        embed_scale=0.3,
        vocab_size=200,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=6,
        head_dim=8,
        omit_head_dim=True,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        dtype="float16",
        # Shard 2 holds the last layer and the final norm; shard 1 the rest.
        shards=lambda name: 2 if name.startswith("model.layers.2.") or name == "model.norm.weight" else 1,
    ),
]


# ---------------------------------------------------------------- numbers

def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    assert np.all(np.isfinite(x))
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def bf16_to_f64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def make_weights(cfg: dict):
    """Returns ordered [(name, float32 master)] with HF names and shapes [out, in]."""
    rng = np.random.default_rng(cfg["seed"])
    d = cfg["hidden_size"]
    f = cfg["intermediate_size"]
    hd = cfg["head_dim"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    v = cfg["vocab_size"]

    def lin(out_f, in_f, scale=0.1):
        return (rng.standard_normal((out_f, in_f)) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = [("model.embed_tokens.weight", (rng.standard_normal((v, d)) * cfg.get("embed_scale", 0.5)).astype(np.float32))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        # q/k a bit larger than 0.1 so attention is far from uniform and the
        # rotary embedding (hence rope scaling, GQA mapping) visibly matters.
        w += [
            (f"{p}.input_layernorm.weight", norm(d)),
            (f"{p}.self_attn.q_proj.weight", lin(nh * hd, d, 0.25)),
            (f"{p}.self_attn.k_proj.weight", lin(nkv * hd, d, 0.25)),
            (f"{p}.self_attn.v_proj.weight", lin(nkv * hd, d)),
            (f"{p}.self_attn.o_proj.weight", lin(d, nh * hd)),
            (f"{p}.post_attention_layernorm.weight", norm(d)),
            (f"{p}.mlp.gate_proj.weight", lin(f, d)),
            (f"{p}.mlp.up_proj.weight", lin(f, d)),
            (f"{p}.mlp.down_proj.weight", lin(d, f)),
        ]
    w.append(("model.norm.weight", norm(d)))
    if not cfg["tie_word_embeddings"]:
        w.append(("lm_head.weight", lin(v, d, 0.3)))
    return w


def quantize(w, dtype: str):
    """Returns ([(name, st_dtype, shape, raw bytes)], {name: float64 stored value})."""
    stored, exact = [], {}
    for name, x in w:
        if dtype == "bfloat16":
            bits = bf16_bits(x)
            stored.append((name, "BF16", list(x.shape), bits.astype("<u2").tobytes()))
            exact[name] = bf16_to_f64(bits)
        elif dtype == "float16":
            h = x.astype(np.float16)
            assert np.all(np.isfinite(h))
            stored.append((name, "F16", list(x.shape), h.astype("<f2").tobytes()))
            exact[name] = h.astype(np.float64)
        else:
            raise ValueError(dtype)
    return stored, exact


def write_safetensors(path: str, tensors) -> None:
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(len(h).to_bytes(8, "little"))
        fh.write(h)
        for _, _, _, raw in tensors:
            fh.write(raw)


# ---------------------------------------------------------------- reference

def inv_freq(cfg: dict, scaling=True) -> np.ndarray:
    hd = cfg["head_dim"]
    base = cfg["rope_theta"]
    f = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    s = cfg["rope_scaling"] if scaling else None
    if s is None:
        return f
    # transformers.modeling_rope_utils._compute_llama3_parameters
    factor = s["factor"]
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    low_wavelen = old / low
    high_wavelen = old / high
    wavelen = 2 * math.pi / f
    llama = np.where(wavelen > low_wavelen, f / factor, f)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * llama / factor + smooth * llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, llama)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(cfg: dict, W: dict, ids, variant: str = "hf") -> np.ndarray:
    """All-position logits [n, vocab] in float64.

    variant != "hf" computes deliberately wrong models, only to measure how
    far the tests' tolerance is from the errors they must catch:
      no_scaling   llama3 rope_scaling ignored
      interleaved  rope on adjacent pairs (2i, 2i+1) instead of (i, i + d/2)
      gqa_modulo   query head h reads kv head h % kv_heads (not h // group)
      no_rope      no rotary embedding at all
    """
    n = len(ids)
    d, hd = cfg["hidden_size"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    group = nh // nkv

    freqs = np.outer(np.arange(n, dtype=np.float64), inv_freq(cfg, variant != "no_scaling"))
    emb = np.concatenate([freqs, freqs], axis=-1)  # [n, hd]
    cos, sin = np.cos(emb), np.sin(emb)

    def rope(x):  # x [heads, n, hd]
        if variant == "no_rope":
            return x
        if variant == "interleaved":
            c, s_ = np.cos(freqs), np.sin(freqs)
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = a * c - b * s_
            out[..., 1::2] = a * s_ + b * c
            return out
        return x * cos + rotate_half(x) * sin

    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms_norm(x, W[f"{p}.input_layernorm.weight"], eps)
        q = (h @ W[f"{p}.self_attn.q_proj.weight"].T).reshape(n, nh, hd).transpose(1, 0, 2)
        k = (h @ W[f"{p}.self_attn.k_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        v = (h @ W[f"{p}.self_attn.v_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        if variant == "gqa_modulo":
            kv_of = np.arange(nh) % nkv
        else:
            kv_of = np.arange(nh) // group  # repeat_kv
        k, v = k[kv_of], v[kv_of]
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(axis=-1, keepdims=True)
        a = (pr @ v).transpose(1, 0, 2).reshape(n, nh * hd)
        x = x + a @ W[f"{p}.self_attn.o_proj.weight"].T
        h = rms_norm(x, W[f"{p}.post_attention_layernorm.weight"], eps)
        g = h @ W[f"{p}.mlp.gate_proj.weight"].T
        u = h @ W[f"{p}.mlp.up_proj.weight"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ W[f"{p}.mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T


def greedy(cfg, W, ids, n):
    """Greedy continuation; also the top-1 minus top-2 logit gap at each step."""
    ids = list(ids)
    out, margins = [], []
    for _ in range(n):
        last = forward(cfg, W, ids)[-1]
        top = int(np.argmax(last))  # lowest id on ties, like Llama::argmax
        srt = np.sort(last)
        margins.append(float(srt[-1] - srt[-2]))
        out.append(top)
        ids.append(top)
    return out, margins


# ---------------------------------------------------------------- output

def hf_config(cfg: dict) -> dict:
    c = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": cfg["head_dim"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "rope_scaling": cfg["rope_scaling"],
        "tie_word_embeddings": cfg["tie_word_embeddings"],
        "torch_dtype": cfg["dtype"],
        "use_cache": True,
    }
    if cfg.get("omit_head_dim"):
        # Exercise the loader's default head_dim = hidden_size / heads.
        assert cfg["head_dim"] * cfg["num_attention_heads"] == cfg["hidden_size"]
        del c["head_dim"]
    return c


def build(cfg: dict, out: str) -> dict:
    d = os.path.join(out, cfg["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(hf_config(cfg), fh, indent=2)
        fh.write("\n")

    stored, W = quantize(make_weights(cfg), cfg["dtype"])
    if cfg["shards"] is None:
        write_safetensors(os.path.join(d, "model.safetensors"), stored)
    else:
        files = {1: [], 2: []}
        for t in stored:
            files[cfg["shards"](t[0])].append(t)
        assert files[1] and files[2]
        weight_map = {}
        total = 0
        for k, ts in files.items():
            fname = f"model-{k:05d}-of-00002.safetensors"
            write_safetensors(os.path.join(d, fname), ts)
            for name, _, _, raw in ts:
                weight_map[name] = fname
                total += len(raw)
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
            fh.write("\n")

    golden = {
        "model": cfg["name"],
        "generator": "tools/llm/make_tiny_hf.py",
        "weights_dtype": cfg["dtype"],
        "reference": "numpy float64 on the stored (rounded) weights, HF LlamaForCausalLM math",
        "inv_freq": [float(x) for x in inv_freq(cfg)],
        "inv_freq_unscaled": [float(x) for x in inv_freq(cfg, False)],
        "prompts": [],
        "greedy": None,
        "sensitivity": {},
    }
    sens = {k: 0.0 for k in ("no_scaling", "interleaved", "gqa_modulo", "no_rope")}
    for name, text in PROMPTS:
        ids = list(text.encode("ascii"))
        assert max(ids) < cfg["vocab_size"]
        logits = forward(cfg, W, ids)
        fname = f"{name}_logits.bin"
        logits.astype("<f4").tofile(os.path.join(d, fname))
        golden["prompts"].append({
            "name": name,
            "text": text,
            "ids": ids,
            "logits_file": fname,
            "shape": list(logits.shape),
            "max_abs_logit": float(np.abs(logits).max()),
        })
        for var in sens:
            if var == "no_scaling" and cfg["rope_scaling"] is None:
                continue
            if var == "gqa_modulo" and cfg["num_key_value_heads"] == cfg["num_attention_heads"]:
                continue
            diff = float(np.abs(forward(cfg, W, ids, var) - logits).max())
            sens[var] = max(sens[var], diff)
    golden["sensitivity"] = {
        "what": "max abs logit difference over both prompts between the reference "
                "and a deliberately wrong variant (0 where not applicable)",
        **sens,
    }
    text = dict(PROMPTS)[GREEDY_PROMPT]
    ids = list(text.encode("ascii"))
    g, margins = greedy(cfg, W, ids, N_GREEDY)
    golden["greedy"] = {
        "prompt": GREEDY_PROMPT,
        "ids": ids,
        "greedy_ids": g,
        "margins": margins,
        "min_margin": min(margins),
    }
    with open(os.path.join(d, "golden.json"), "w") as fh:
        json.dump(golden, fh, indent=1)
        fh.write("\n")
    return golden


def main(argv) -> int:
    out = argv[1] if len(argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden", "tiny_hf")
    out = os.path.normpath(out)
    os.makedirs(out, exist_ok=True)
    for cfg in MODELS:
        g = build(cfg, out)
        d = os.path.join(out, cfg["name"])
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{cfg['name']}: {size} bytes in {d}")
        for p in g["prompts"]:
            print(f"  {p['name']}: {len(p['ids'])} ids, max |logit| {p['max_abs_logit']:.3f}")
        print(f"  greedy {g['greedy']['greedy_ids']} (min margin {g['greedy']['min_margin']:.4f})")
        print(f"  sensitivity {json.dumps({k: v for k, v in g['sensitivity'].items() if k != 'what'})}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
