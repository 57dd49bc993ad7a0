#!/usr/bin/env python3
"""Golden logits for a bounded "attention sink + recent window" KV cache on
tests/golden/tiny_hf/tiny-llama3 (written by make_tiny_hf.py).

Usage:  .avlm/venv/bin/python tools/llm/make_window_golden.py [OUT_DIR]
        (OUT_DIR defaults to tests/golden/tiny_hf/window)

Semantics (per layer; S sinks, W window, E minimum eviction, C = S + W):
  The cache holds at most C positions: keys after rotary embedding, values
  as computed. Before appending a token, if len + 1 > C, evict
  d = min(max(len + 1 - C, E), len - S) positions: cache indices S .. S+d-1
  (the oldest non-sinks). Later positions move down by d and each moved key is
  re-rotated by -d positions (HF half-split rope with angle -d * inv_freq);
  sinks never move. len -= d. The new token's q and k are rotated at
  p = len (its cache index, not its stream position), k/v appended, and it
  attends to the whole cache (scale 1/sqrt(head_dim), GQA h -> h // group).
  So every cached key is rotated by its current cache index (StreamingLLM).
  The reference computes this twice, by re-rotation and by rotating stored
  pre-rope keys afresh at their cache index every step, and asserts they
  agree; before the first overflow the windowed logits must equal the
  full-context causal logits of make_tiny_hf.forward.

Writes OUT_DIR/:
  golden.json        model, sinks, window, evict, ids, file names, cache
                     lengths, and numbers showing the test is not vacuous
  window_logits.bin  float32 LE [len(ids), vocab]: windowed logits, tokens fed
                     one at a time
  full_logits.bin    same shape, plain full-context causal logits

Weights are read from the model's model.safetensors (bf16) and asserted equal
to make_tiny_hf's deterministic builder. Re-running is byte for byte identical.
"""
from __future__ import annotations

import json
import math
import os
import sys

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_hf import (  # noqa: E402
    MODELS, bf16_to_f64, forward, inv_freq, make_weights, quantize, rms_norm, rotate_half)

MODEL = "tiny-llama3"
S, WIN, E = 4, 16, 4
TEXT = "Sinks stay put; the window slides and old keys get rerotated"  # 60 bytes
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden", "tiny_hf")


def load_bf16_safetensors(path: str) -> dict:
    with open(path, "rb") as fh:
        raw = fh.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "BF16", (name, t["dtype"])
        a, b = t["data_offsets"]
        bits = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<u2").reshape(t["shape"])
        out[name] = bf16_to_f64(bits)
    return out


def rope(x, pos, f):
    """HF half-split rotary embedding of x [..., n, hd] at positions pos [n]."""
    ang = np.asarray(pos, dtype=np.float64)[:, None] * f[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


def decode(cfg, W, ids, sinks, window, evict, mode="rerotate"):
    """Logits [n, vocab] feeding ids one at a time through the windowed cache.

    mode: rerotate  keys stored post-rope, re-rotated by -d on eviction (the spec)
          fresh     keys stored pre-rope, rotated at their cache index every step
          stale     like rerotate but moved keys are NOT re-rotated (a bug)
          absolute  q/k rotated at stream position, keys never re-rotated (a bug)
    Also returns the cache length after each token.
    """
    d_, hd = cfg["hidden_size"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps, f = cfg["rms_norm_eps"], inv_freq(cfg)
    kv_of = np.arange(nh) // (nh // nkv)
    cap = sinks + window
    K = [np.zeros((nkv, 0, hd)) for _ in range(cfg["num_hidden_layers"])]
    V = [np.zeros((nkv, 0, hd)) for _ in range(cfg["num_hidden_layers"])]
    logits, lens = [], []
    for t, tok in enumerate(ids):
        n = K[0].shape[1]
        if n + 1 > cap:
            d = min(max(n + 1 - cap, evict), n - sinks)
            for i in range(len(K)):
                moved = K[i][:, sinks + d:]
                if mode == "rerotate":
                    moved = rope(moved, np.full(moved.shape[1], -d), f)
                K[i] = np.concatenate([K[i][:, :sinks], moved], axis=1)
                V[i] = np.concatenate([V[i][:, :sinks], V[i][:, sinks + d:]], axis=1)
            n -= d
        p = t if mode == "absolute" else n
        x = W["model.embed_tokens.weight"][tok][None, :]  # [1, d]
        for i in range(cfg["num_hidden_layers"]):
            pre = f"model.layers.{i}"
            h = rms_norm(x, W[f"{pre}.input_layernorm.weight"], eps)
            q = (h @ W[f"{pre}.self_attn.q_proj.weight"].T).reshape(1, nh, hd).transpose(1, 0, 2)
            k = (h @ W[f"{pre}.self_attn.k_proj.weight"].T).reshape(1, nkv, hd).transpose(1, 0, 2)
            v = (h @ W[f"{pre}.self_attn.v_proj.weight"].T).reshape(1, nkv, hd).transpose(1, 0, 2)
            q = rope(q, [p], f)
            K[i] = np.concatenate([K[i], k if mode == "fresh" else rope(k, [p], f)], axis=1)
            V[i] = np.concatenate([V[i], v], axis=1)
            keys = rope(K[i], np.arange(n + 1), f) if mode == "fresh" else K[i]
            s = q @ keys[kv_of].transpose(0, 2, 1) / math.sqrt(hd)  # [nh, 1, n+1]
            pr = np.exp(s - s.max(axis=-1, keepdims=True))
            pr /= pr.sum(axis=-1, keepdims=True)
            a = (pr @ V[i][kv_of]).transpose(1, 0, 2).reshape(1, nh * hd)
            x = x + a @ W[f"{pre}.self_attn.o_proj.weight"].T
            h = rms_norm(x, W[f"{pre}.post_attention_layernorm.weight"], eps)
            g = h @ W[f"{pre}.mlp.gate_proj.weight"].T
            u = h @ W[f"{pre}.mlp.up_proj.weight"].T
            x = x + ((g / (1.0 + np.exp(-g))) * u) @ W[f"{pre}.mlp.down_proj.weight"].T
        x = rms_norm(x, W["model.norm.weight"], eps)
        logits.append((x @ W["lm_head.weight"].T)[0])
        lens.append(n + 1)
    return np.array(logits), lens


def main(argv) -> int:
    out = os.path.normpath(argv[1] if len(argv) > 1 else os.path.join(ROOT, "window"))
    cfg = next(c for c in MODELS if c["name"] == MODEL)
    W = load_bf16_safetensors(os.path.join(os.path.normpath(ROOT), MODEL, "model.safetensors"))
    _, built = quantize(make_weights(cfg), cfg["dtype"])
    assert W.keys() == built.keys() and all(np.array_equal(W[k], built[k]) for k in W)

    ids = list(TEXT.encode("ascii"))
    cap = S + WIN
    assert len(ids) == 3 * cap
    full = forward(cfg, W, ids)
    win, lens = decode(cfg, W, ids, S, WIN, E)
    fresh, lens2 = decode(cfg, W, ids, S, WIN, E, "fresh")
    assert lens == lens2 and max(lens) == cap
    self_check = float(np.abs(win - fresh).max())
    assert self_check < 1e-9, self_check
    pre_overflow = float(np.abs(win[:cap] - full[:cap]).max())
    assert pre_overflow < 1e-12, pre_overflow
    after = float(np.abs(win[cap:] - full[cap:]).max())
    sens = {m: float(np.abs(decode(cfg, W, ids, S, WIN, E, m)[0][cap:] - win[cap:]).max())
            for m in ("stale", "absolute")}

    os.makedirs(out, exist_ok=True)
    win.astype("<f4").tofile(os.path.join(out, "window_logits.bin"))
    full.astype("<f4").tofile(os.path.join(out, "full_logits.bin"))
    golden = {
        "model": MODEL,
        "generator": "tools/llm/make_window_golden.py",
        "reference": "numpy float64 on the stored bf16 weights; sink + window KV cache, "
                     "keys re-rotated to their cache index on eviction",
        "sinks": S,
        "window": WIN,
        "evict": E,
        "text": TEXT,
        "ids": ids,
        "shape": list(win.shape),
        "logits": "window_logits.bin",
        "full_logits": "full_logits.bin",
        "cache_len": lens,
        "first_overflow": cap,
        "max_abs_logit": float(np.abs(win).max()),
        "max_abs_window_vs_full_before_overflow": pre_overflow,
        "max_abs_window_vs_full_after_overflow": after,
        "self_check_rerotate_vs_fresh": self_check,
        "sensitivity": {
            "what": "max abs logit difference after the first overflow between the "
                    "reference and a deliberately wrong cache",
            "stale": sens["stale"],
            "absolute": sens["absolute"],
        },
    }
    with open(os.path.join(out, "golden.json"), "w") as fh:
        json.dump(golden, fh, indent=1)
        fh.write("\n")
    print(f"{out}: {len(ids)} ids, cache lens {lens}")
    print(f"  max |window - full| before overflow {pre_overflow:.3g}, after {after:.4f}")
    print(f"  self-check rerotate vs fresh {self_check:.3g}; sensitivity {json.dumps(sens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
