#!/usr/bin/env python3
"""Write golden outputs of tools/llm/reference.py for the Rust SmolLM2 parity tests.

Output (tests/golden/smollm2/ by default):
  golden.json              metadata, prompts, token ids, greedy ids, file index
  p<N>_<name>_last_logits.bin   last-position logits of prompt N,
                                float32 LE, shape [vocab]
  full_<name>_logits.bin        logits at every position of a short prompt,
                                float32 LE, row-major [n_tokens, vocab]

Run:  .avlm/venv/bin/python tools/llm/make_golden.py [--gguf PATH] [--out DIR]
Everything is deterministic (greedy argmax, fixed prompts); re-running should
only ever change the float bits if the BLAS summation order changes, which in
float64 stays far below float32 resolution.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import time

# Single-threaded BLAS: on this 2-core box, threaded OpenBLAS spin-waits and
# runs ~10x slower whenever anything else (cargo) is busy; one thread also keeps
# the float summation order, and so the golden bits, fixed.  Must precede numpy.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as R  # noqa: E402

N_GREEDY = 32

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# (name, text).  Names become file names, so keep them [a-z0-9_].
PROMPTS = [
    # The model's own chat template (with its default system prompt), so the
    # continuation is a real assistant answer and <|im_start|>/<|im_end|> are
    # exercised as single special ids.
    ("chatml", f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
               "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
               "<|im_start|>assistant\n"),
    ("english", "The quick brown fox jumps over the lazy dog, and then it"),
    # Digits are split one per token by the "smollm" pre-tokenizer; punctuation
    # runs and " $" exercise the GPT-2 regex branches.
    ("digits", "Order #4521: 3 apples @ $1.25 each = $3.75 (incl. 8% tax). Total for 12 orders:"),
    # Multi-byte UTF-8 (2- and 3-byte chars) through the byte-level alphabet.
    ("unicode", "café naïve 日本 — «Grüße» aus Zürich, señor! In English, this means"),
    ("long", "The history of the printing press begins in the fifteenth century, when "
             "Johannes Gutenberg combined movable metal type, oil-based ink and a wooden "
             "screw press into a practical system for producing books. Before his "
             "invention, most books in Europe were copied by hand, which made them rare "
             "and expensive. Within a few decades, printing shops had spread to more than "
             "two hundred cities, and millions of volumes were in circulation. Historians "
             "often argue that this sudden flood of printed material"),
]

# 8 tokens: all-position logits are 8 x 49152 x 4 B = 1.5 MB.
FULL_PROMPT = ("story", "Once upon a time, there was a")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_f32(path: str, a: np.ndarray) -> None:
    # Explicit '<f4' so the file is little-endian regardless of host.
    np.ascontiguousarray(a, dtype="<f4").tofile(path)


def top_k(logits: np.ndarray, k: int = 5) -> list[list]:
    idx = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), float(np.float32(logits[i]))] for i in idx]


def main(argv=None) -> int:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--out", default=os.path.join(root, "tests", "golden", "smollm2"))
    args = ap.parse_args(argv)

    t0 = time.time()
    m = R.load(args.gguf)
    ti = R.load_tokenizer(m.path)
    os.makedirs(args.out, exist_ok=True)
    t_load = time.time() - t0

    t1 = time.time()
    all_ids = []
    for name, text in PROMPTS:
        ids = R.encode(ti, text)
        # Goldens are only useful if the tokenizer round-trips them exactly.
        assert R.decode(ti, ids) == text, name
        all_ids.append(ids)
    results = R.greedy_batch(m, all_ids, N_GREEDY)

    prompts = []
    for n, ((name, text), ids, (greedy_ids, margins, last)) in enumerate(
            zip(PROMPTS, all_ids, results)):
        fname = f"p{n}_{name}_last_logits.bin"
        write_f32(os.path.join(args.out, fname), last)
        prompts.append({
            "name": name,
            "text": text,
            "ids": ids,
            "n_tokens": len(ids),
            "last_logits_file": fname,
            "last_logits_shape": [m.vocab_size],
            "last_top5": top_k(last),
            "greedy_ids": greedy_ids,
            "greedy_text": R.decode(ti, greedy_ids),
            # top1 - top2 logit gap at each greedy step; a float32 port can only
            # be held to exact greedy ids where these are well above its error.
            "greedy_margins": [round(x, 6) for x in margins],
            "greedy_min_margin": round(min(margins), 6),
        })
        print(f"[{name}] {len(ids)} tok, min margin {min(margins):.3f}: "
              f"{prompts[-1]['greedy_text']!r}")
    print(f"prefill + {N_GREEDY} greedy steps x {len(PROMPTS)} prompts: {time.time() - t1:.1f}s")

    name, text = FULL_PROMPT
    ids = R.encode(ti, text)
    assert R.decode(ti, ids) == text
    full = R.forward(m, ids)
    full_file = f"full_{name}_logits.bin"
    write_f32(os.path.join(args.out, full_file), full)
    full_entry = {
        "name": name, "text": text, "ids": ids, "n_tokens": len(ids),
        "logits_file": full_file, "logits_shape": [len(ids), m.vocab_size],
        "argmax_per_position": [int(i) for i in np.argmax(full, axis=-1)],
    }
    print(f"[full:{name}] {len(ids)} tok -> {full.shape}")

    pkg = lambda n: importlib.metadata.version(n)  # noqa: E731
    golden = {
        "format": 1,
        "generator": "tools/llm/make_golden.py (reference: tools/llm/reference.py)",
        "model": {
            "package": R.GGUF_PACKAGE,
            "package_version": pkg(R.GGUF_PACKAGE),
            "gguf_file": os.path.basename(m.path),
            "gguf_sha256": sha256(m.path),
            "architecture": m.arch,
            "n_layer": m.n_layer, "n_head": m.n_head, "n_head_kv": m.n_head_kv,
            "d_model": m.d_model, "d_ff": m.d_ff, "head_dim": m.head_dim,
            "rope_base": m.rope_base, "rms_eps": m.rms_eps,
            "vocab_size": m.vocab_size, "tied_embeddings": m.tied_embeddings,
        },
        "reference": {
            "weights": "dequantized to float32 by gguf.quants, computed in float64",
            "rope": "ggml NORM mode: rotate adjacent pairs (2i, 2i+1), "
                    "theta_i = pos * base^(-2i/head_dim)",
            "logits_dtype": "float32 little-endian, row-major",
            "greedy": "argmax (lowest id on ties), no stop token, KV-cached decode",
            "versions": {n: pkg(n) for n in ("gguf", "numpy", "tokenizers")},
        },
        "tokenizer": {
            "model": ti.model, "pre": ti.pre, "add_bos": ti.add_bos,
            "bos_id": ti.bos_id, "eos_id": ti.eos_id, "unk_id": ti.unk_id, "pad_id": ti.pad_id,
            "special": ti.special,
        },
        "n_greedy": N_GREEDY,
        "prompts": prompts,
        "full_sequence": full_entry,
    }
    text = json.dumps(golden, indent=1, ensure_ascii=False)
    # Put arrays of plain numbers on one line so the file stays reviewable; the
    # pattern cannot match inside strings because it excludes quotes.
    text = re.sub(r"\[\s*([-0-9.e+, \n]+?)\s*\]",
                  lambda mt: "[" + re.sub(r"\s+", " ", mt.group(1)) + "]", text)
    with open(os.path.join(args.out, "golden.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    total = sum(os.path.getsize(os.path.join(args.out, x)) for x in os.listdir(args.out))
    print(f"wrote {args.out} ({total / 1e6:.2f} MB) in {time.time() - t0:.1f}s (load {t_load:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
