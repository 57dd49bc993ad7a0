"""The frozen language model the captioner is trained against, exactly as the server runs it:
SmolLM2-135M-Instruct from the Q4_1 GGUF (dequantised to f32 by transformers) with avlm's
audio LoRA merged into it the way the Rust loader merges it (`llm/src/lora.rs`):
W += scale * B @ A, B's rows in the GGUF order (q and k rows permuted for ggml's rope, as
convert_hf_to_gguf permutes them), scale from the file's metadata.

Also the stream format's fixed text pieces and their token ids.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, ".avlm", "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = os.path.join(ROOT, "weights", "default", "lora.safetensors")

SYSTEM = ("<|im_start|>system\nA live video. When something new comes into view, say what it is in one "
          "short sentence.<|im_end|>\n")
OPEN = "\n["           # before the first frame, and before the next frame after a reply
SEP = ","              # stay silent; also the separator fed before the next frame
SPEAK = "]\nAssistant:"
IM_END = "<|im_end|>"
THRESHOLD = 0.725      # speak when P(",") < THRESHOLD
MAX_CAPTION = 32       # tokens decoded after SPEAK at most


class Format:
    """Token ids of the stream's fixed pieces, each piece tokenised alone."""

    def __init__(self, tok):
        self.tok = tok
        self.system = self.ids(SYSTEM)
        self.open = self.ids(OPEN)
        self.speak = self.ids(SPEAK)
        (self.sep,) = self.ids(SEP)
        (self.im_end,) = self.ids(IM_END)

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def caption(self, text: str) -> list[int]:
        return self.ids(" " + text)

    def describe(self) -> dict:
        return {"system": self.system, "open": self.open, "speak": self.speak, "sep": self.sep,
                "im_end": self.im_end, "threshold": THRESHOLD, "max_caption_tokens": MAX_CAPTION}


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF_NAME)


def _unpermute(B: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF/llama.cpp row order -> HF row order (inverse of convert_hf_to_gguf's permute)."""
    return B.reshape(n_head, B.shape[0] // n_head // 2, 2, *B.shape[1:]).swapaxes(1, 2).reshape(B.shape)


def _permute(W: np.ndarray, n_head: int) -> np.ndarray:
    return W.reshape(n_head, 2, W.shape[0] // n_head // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def load_lora(path: str = LORA) -> tuple[dict[str, np.ndarray], float]:
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        scale = float(f.metadata()["scale"])
        return {k: f.get_tensor(k).astype(np.float32) for k in f.keys()}, scale


def merge_lora(m, t: dict[str, np.ndarray], scale: float) -> int:
    """Adds scale * B @ A to every adapted projection of the HF model; returns how many."""
    cfg = m.config
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    n = 0
    for i, L in enumerate(m.model.layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            ka, kb = f"lora.layers.{i}.{proj}.A", f"lora.layers.{i}.{proj}.B"
            if ka not in t:
                continue
            A, B = t[ka], t[kb]
            if proj in heads:
                B = _unpermute(B, heads[proj])
            mod = getattr(L.self_attn, proj) if proj.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else getattr(L.mlp, proj)
            with torch.no_grad():
                mod.weight += torch.from_numpy(np.ascontiguousarray(scale * (B @ A))).to(mod.weight.dtype)
            n += 1
    return n


def check_merge(m, t: dict[str, np.ndarray], scale: float, layer: int = 0) -> float:
    """Max |difference| between the merged HF q weight of `layer` (back in GGUF row order) and
    the GGUF tensor dequantised by the gguf package + scale * B @ A, as the server merges it."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(os.path.join(MODELS, GGUF_NAME))
    tt = next(x for x in r.tensors if x.name == f"blk.{layer}.attn_q.weight")
    W = dequantize(tt.data, tt.tensor_type).reshape(576, 576).astype(np.float32)
    want = W + scale * (t[f"lora.layers.{layer}.q_proj.B"] @ t[f"lora.layers.{layer}.q_proj.A"])
    got = _permute(m.model.layers[layer].self_attn.q_proj.weight.detach().numpy(), m.config.num_attention_heads)
    return float(np.abs(got - want).max())


def load_llm(log=print, lora_path: str | None = LORA):
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    m = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF_NAME, dtype=torch.float32)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    info = {"gguf": GGUF_NAME}
    if lora_path:
        t, scale = load_lora(lora_path)
        n = merge_lora(m, t, scale)
        diff = check_merge(m, t, scale)
        log(f"LoRA {os.path.relpath(lora_path, ROOT)} merged into {n} matrices (scale {scale}); layer-0 q vs "
            f"GGUF + scale*B@A: max |diff| {diff:.2e}")
        if diff > 1e-5:
            raise SystemExit("LoRA merge disagrees with the server's W += scale * B @ A")
        info.update(lora=os.path.relpath(lora_path, ROOT), lora_matrices=n, lora_scale=scale, merge_check=diff)
    log(f"LLM ready in {time.time() - t0:.1f} s")
    return m, info
