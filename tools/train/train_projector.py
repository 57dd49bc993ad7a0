#!/usr/bin/env python3
"""Train avlm's audio projector (and optional LoRA r8 on q_proj/v_proj) on cached
Whisper tiny.en encoder features, with SmolLM2-135M-Instruct frozen: the Llama-AVSR
recipe in miniature.

    # train (background-friendly: everything goes to --work/train.log and loss.jsonl)
    nice -n 10 .avlm/venv/bin/python tools/train/train_projector.py --steps 900 --ckpt-every 100
    # continue an interrupted run from .avlm/train/ckpt/latest.pt
    nice -n 10 .avlm/venv/bin/python tools/train/train_projector.py --resume
    # evaluate only (held-out synthetic + real pocketsphinx clips), from a projector file
    .avlm/venv/bin/python tools/train/train_projector.py --eval-only [--projector P] [--lora L]

Loss: next-token cross-entropy on the transcript tokens, plus (--ctc-weight, default 0.5) a
CTC loss that scores each projected audio vector against SmolLM2's token embeddings (class
CTCAux); the bundle gets the projector, LoRA and that CTC head, which the server uses for
joint CTC/attention decoding (decoding.ctc_head).

Data: the manifest written by tools/data/make_synth_data.py (split "train" for
training; "heldout_voice" / "heldout_joe" for validation loss and WER), or --audio-packs
(tools/train/audio_packs.py), and with --synth FRAC that fraction of every batch made fresh while
training runs (tools/data/synth_stream.py: new sentence, voice and augmentation every time; with
--synth 1 the packs give only the held-out split):

    nice -n 5 .avlm/venv/bin/python tools/train/train_projector.py --audio-packs .avlm/train/packs_ho \
        --init-from weights/default --tune-encoder-top 2 --synth 1 --batch 16 --lr 1e-4 ...

Inference conventions reproduced exactly (the Rust server does the same):
  features [T, 384] -> stack k=4 (G = T // 4, X = feats[:4G].reshape(G, 1536))
  -> fc1 Linear(1536, 576) -> ReLU -> fc2 Linear(576, 576)
  prompt: embed("<|im_start|>user\\n") + audio + embed("\\nTranscribe speech to text.<|im_end|>\\n<|im_start|>assistant\\n")
  (prefix and suffix tokenized separately with the GGUF's own tokenizer, special tokens as single
  ids, no BOS); target = transcript tokens + <|im_end|> (id 2); loss on target tokens only.
  LLM: the GGUF Q4_1 weights dequantized to float32 (transformers' GGUF loader, checked
  against tools/llm/reference.py at start-up with --check-llm).

Outputs (under --work, default .avlm/train):
  ckpt/latest.pt, ckpt/step_NNNNNN.pt     full training state (resumable)
  ckpt/best.pt                            lowest held-out synthetic loss so far
  ckpt/projector-step_NNNNNN.safetensors  bundle-format projector at each checkpoint
  projector.safetensors                   bundle-format projector of the best checkpoint
  lora.safetensors                        LoRA adapters of the best checkpoint (if --lora-rank > 0):
        lora.layers.{i}.q_proj.A [r, 576], lora.layers.{i}.q_proj.B [576, r] (rows in the
        GGUF/llama.cpp order: HF's q rows permuted back the way convert_hf_to_gguf permutes
        them), lora.layers.{i}.v_proj.A [r, 576], ...v_proj.B [192, r]; metadata "scale" =
        alpha / r; the server merges W += scale * B @ A.
  ctc.safetensors                         the CTC head of the best checkpoint (if --ctc-weight > 0):
        ctc.blank_w [576], ctc.blank_b [1]; the bundle's decoding.ctc_head for joint
        CTC/attention decoding (token classes are SmolLM2's embeddings).
  train.log, loss.jsonl, eval/*.json      logs, per-step losses, evaluation results
WER: corpus-level word edit distance / reference words, after lower-casing and stripping
punctuation (tools/data/text_corpus.normalize).  The real clips are only ever evaluated,
never used to choose anything.
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import math
import os
import re
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tools", "data"))
sys.path.insert(0, os.path.join(REPO, "tools", "bundle"))
sys.path.insert(0, os.path.join(REPO, "tools", "llm"))
import avlm_features as F  # noqa: E402
import text_corpus  # noqa: E402
from make_default_bundle import read_safetensors, safetensors_bytes  # noqa: E402

MODELS = os.path.join(REPO, ".avlm", "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_PREFIX = "<|im_start|>user\n"
PROMPT_SUFFIX = "\nTranscribe speech to text.<|im_end|>\n<|im_start|>assistant\n"
IM_END, END_OF_TEXT = 2, 0
D_MODEL = 576
PS_DATA = "/usr/share/pocketsphinx/test/data"

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, *a):
        msg = time.strftime("%H:%M:%S ") + " ".join(str(x) for x in a)
        print(msg, flush=True)
        self.f.write(msg + "\n")


# --------------------------------------------------------------------------- model

class Projector(nn.Module):
    def __init__(self, d_in=F.STACK_K * F.ENC_HIDDEN, d_out=D_MODEL):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_out)
        self.fc2 = nn.Linear(d_out, d_out)

    def forward(self, x):
        return self.fc2(TF.relu(self.fc1(x)))

    def tensors(self) -> dict:
        return {f"audio.{n}": p.detach().cpu().float().numpy().copy() for n, p in
                [("fc1.weight", self.fc1.weight), ("fc1.bias", self.fc1.bias),
                 ("fc2.weight", self.fc2.weight), ("fc2.bias", self.fc2.bias)]}

    def load_tensors(self, t: dict):
        with torch.no_grad():
            self.fc1.weight.copy_(torch.from_numpy(np.array(t["audio.fc1.weight"])))
            self.fc1.bias.copy_(torch.from_numpy(np.array(t["audio.fc1.bias"])))
            self.fc2.weight.copy_(torch.from_numpy(np.array(t["audio.fc2.weight"])))
            self.fc2.bias.copy_(torch.from_numpy(np.array(t["audio.fc2.bias"])))


class LoRALinear(nn.Module):
    """y = base(x) + scale * (x @ A^T) @ B^T, base frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.r, self.scale = r, alpha / r
        dev = base.weight.device
        self.A = nn.Parameter(torch.empty(r, base.in_features, device=dev))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, device=dev))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + self.scale * TF.linear(TF.linear(x, self.A), self.B)


def load_llm(log):
    from transformers import AutoModelForCausalLM

    t = time.time()
    m = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF_NAME, dtype=torch.float32)
    m.to(DEV)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    log(f"LLM loaded from {GGUF_NAME} (dequantized f32) in {time.time() - t:.1f} s")
    return m


def check_llm(m, tok, log):
    """Logits of the transformers model vs the independent numpy reference on one prompt."""
    import reference as R

    ids = tok_ids(tok, "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    with torch.no_grad():
        lt = m(torch.tensor([ids], device=DEV)).logits[0].double().cpu().numpy()
    lr = R.forward(R.load(os.path.join(MODELS, GGUF_NAME)), ids)
    diff = float(np.abs(lt - lr).max())
    same = bool((lt.argmax(-1) == lr.argmax(-1)).all())
    log(f"LLM check vs tools/llm/reference.py: max |logit diff| {diff:.2e} (logit scale {np.abs(lr).max():.1f}), "
        f"argmax equal {same}")
    if diff > 1e-2 or not same:
        raise SystemExit("transformers' GGUF model disagrees with the reference: dequantization/rope mismatch")


def gguf_q_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF q_proj row order -> GGUF/llama.cpp row order (convert_hf_to_gguf's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_lora(m, r, alpha):
    layers = m.model.layers
    for L in layers:
        L.self_attn.q_proj = LoRALinear(L.self_attn.q_proj, r, alpha)
        L.self_attn.v_proj = LoRALinear(L.self_attn.v_proj, r, alpha)
    return [p for L in layers for mod in (L.self_attn.q_proj, L.self_attn.v_proj) for p in (mod.A, mod.B)]


def lora_tensors(m) -> dict:
    n_head = m.config.num_attention_heads
    out = {}
    for i, L in enumerate(m.model.layers):
        for name in ("q_proj", "v_proj"):
            mod = getattr(L.self_attn, name)
            if not isinstance(mod, LoRALinear):
                return {}
            A = mod.A.detach().cpu().numpy().astype(np.float32).copy()
            B = mod.B.detach().cpu().numpy().astype(np.float32).copy()
            if name == "q_proj":
                B = np.ascontiguousarray(gguf_q_permute(B, n_head))
            out[f"lora.layers.{i}.{name}.A"] = A
            out[f"lora.layers.{i}.{name}.B"] = B
    return out


def load_lora_tensors(m, t: dict):
    n_head = m.config.num_attention_heads
    for i, L in enumerate(m.model.layers):
        for name in ("q_proj", "v_proj"):
            mod = getattr(L.self_attn, name)
            A = np.array(t[f"lora.layers.{i}.{name}.A"])
            B = np.array(t[f"lora.layers.{i}.{name}.B"])
            if name == "q_proj":  # inverse of gguf_q_permute
                h = n_head
                B = B.reshape(h, B.shape[0] // h // 2, 2, *B.shape[1:]).swapaxes(1, 2).reshape(B.shape)
            with torch.no_grad():
                mod.A.copy_(torch.from_numpy(A).to(mod.A.device))
                mod.B.copy_(torch.from_numpy(np.ascontiguousarray(B)).to(mod.B.device))


# --------------------------------------------------------------------------- tokens / data

def load_tokenizer():
    import reference as R

    return R.load_tokenizer(os.path.join(MODELS, GGUF_NAME))


def tok_ids(tok, text: str) -> list[int]:
    import reference as R

    return R.encode(tok, text)


def tok_decode(tok, ids) -> str:
    import reference as R

    return R.decode(tok, ids)


def bf16_is_fast(device: str) -> bool:
    """Whether bfloat16 autocast speeds training up here.  Without bf16 instructions the CPU
    emulates it: on this project's 2-core AVX2 VM a --tune-encoder-top 2 run at batch 16 had not
    finished its first two steps after 8.5 minutes in bfloat16, against 41 s in float32."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def read_manifest(data_dir):
    path = os.path.join(data_dir, "manifest.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: run tools/data/make_synth_data.py (and --merge)")
    return [json.loads(line) for line in open(path)]


DEV = torch.device("cpu")   # --device
# --tune-encoder-top K: utterance features are the encoder's hidden state before its top K
# blocks, and ENC_TOP = (encoder, first tuned block) turns them into features inside the loss,
# with gradients for those blocks (written as encoder_top.safetensors for the bundle).
ENC_TOP = None


def enc_top(f: torch.Tensor) -> torch.Tensor:
    return f if ENC_TOP is None else ENC_TOP[0].top(f, ENC_TOP[1])


class Utt:
    """One utterance: its target tokens and one or more feature "views" (float16 tensors
    [T, 384] on DEV; view 0 is the audio as generated, others are re-augmented copies)."""
    __slots__ = ("id", "views", "target", "text", "g", "audio")

    def __init__(self, rec, data_dir, tok, views=None):
        self.id = rec["id"]
        if views is None:
            views = [torch.from_numpy(np.load(os.path.join(data_dir, rec["feats"]))).to(DEV)]  # float16 [T, 384]
        self.views = views
        self.audio = None                 # int16 samples on DEV (--online-aug only)
        self.text = rec["text"]
        self.target = tok_ids(tok, rec["text"]) + [IM_END]
        self.g = self.views[0].shape[0] // F.STACK_K

    @property
    def feats(self) -> torch.Tensor:
        return self.views[0]


def spec_augment(feats: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Time masks (2 x up to 8% of frames) and channel masks (2 x up to 24 of 384) on encoder features."""
    x = feats.float().clone()
    T = x.shape[0]
    for _ in range(2):
        w = int(rng.integers(0, max(1, int(0.08 * T)) + 1))
        s = int(rng.integers(0, max(1, T - w) + 1))
        x[s:s + w] = 0.0
    for _ in range(2):
        w = int(rng.integers(0, 25))
        s = int(rng.integers(0, 384 - w + 1))
        x[:, s:s + w] = 0.0
    return x


def epoch_batches(utts, batch, seed, epoch):
    """Length-bucketed batches, deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, 100, epoch])
    order = rng.permutation(len(utts))
    chunk = batch * 50
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: (utts[i].g, len(utts[i].target)))
        batches += [part[j:j + batch] for j in range(0, len(part), batch)]
    batches = [b for b in batches if len(b) == batch] or batches
    return [batches[i] for i in rng.permutation(len(batches))]


class Prompt:
    def __init__(self, m, tok):
        self.pre_ids = tok_ids(tok, PROMPT_PREFIX)
        self.suf_ids = tok_ids(tok, PROMPT_SUFFIX)
        emb = m.get_input_embeddings()
        with torch.no_grad():
            self.pre = emb(torch.tensor(self.pre_ids, device=DEV)).clone()
            self.suf = emb(torch.tensor(self.suf_ids, device=DEV)).clone()
        self.emb = emb


class CTCAux(nn.Module):
    """Auxiliary CTC head on the projector outputs: token logits are dot products with SmolLM2's
    (frozen, tied) token embeddings, plus one learned blank class.  It pulls each projected
    audio vector toward the embedding of the token being spoken, which shortens the long loss
    plateau of a frozen-LLM start.  Its blank class goes to the bundle (ctc.safetensors): the
    server's joint CTC/attention decoding scores hypotheses with it (llm/src/ctc.rs)."""

    def __init__(self, emb: torch.Tensor):
        super().__init__()
        self.emb = emb                                   # [V, D] frozen
        self.blank_w = nn.Parameter(torch.zeros(emb.shape[1], device=emb.device))
        self.blank_b = nn.Parameter(torch.zeros((), device=emb.device))

    def forward(self, audio, utts):
        G = [a.shape[0] for a in audio]
        x = torch.zeros(max(G), len(audio), self.emb.shape[1], device=audio[0].device, dtype=audio[0].dtype)
        for b, a in enumerate(audio):
            x[: a.shape[0], b] = a
        logits = torch.cat([x @ self.emb.T.to(x.dtype), (x @ self.blank_w.to(x.dtype) + self.blank_b.to(x.dtype))[..., None]], -1).float()
        lp = TF.log_softmax(logits, -1)                  # [T, N, V+1], blank = V
        tg = [torch.tensor(u.target[:-1], device=x.device) for u in utts]
        return TF.ctc_loss(lp, torch.cat(tg), torch.tensor(G), torch.tensor([len(t) for t in tg]),
                           blank=self.emb.shape[0], reduction="mean", zero_infinity=True)


def batch_loss(m, proj, prompt, utts, feats_list, bf16=False, ctc=None, top_done=False):
    """Summed token NLL over the target tokens of a batch (right-padded, no mask needed: causal),
    the number of target tokens, and the auxiliary CTC loss (None without `ctc`).
    bf16: autocast the matmuls to bfloat16 (training speed only; parameters, the loss and every
    evaluation stay float32).  top_done: the features already went through ENC_TOP."""
    with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=bf16):
        return _batch_loss(m, proj, prompt, utts, feats_list, ctc, top_done)


def _batch_loss(m, proj, prompt, utts, feats_list, ctc=None, top_done=False):
    top = (lambda f: f) if top_done else enc_top
    stacked = [F.stack4(top(f.to(DEV).float())) for f in feats_list]   # (slicing + reshape: works on tensors)
    audio = list(proj(torch.cat(stacked, 0)).split([x.shape[0] for x in stacked]))
    seqs, tgt_pos, tgt_ids = [], [], []
    P, S = len(prompt.pre_ids), len(prompt.suf_ids)
    for b, (u, a) in enumerate(zip(utts, audio)):
        tgt = torch.tensor(u.target, device=DEV)
        x = torch.cat([prompt.pre.to(a.dtype), a, prompt.suf.to(a.dtype), prompt.emb(tgt[:-1]).to(a.dtype)], 0)
        start = P + a.shape[0] + S - 1      # position whose logits predict target[0]
        seqs.append(x)
        tgt_pos.append(torch.stack([torch.full((len(tgt),), b, device=DEV),
                                    torch.arange(start, start + len(tgt), device=DEV)], 1))
        tgt_ids.append(tgt)
    L = max(s.shape[0] for s in seqs)
    xb = torch.zeros(len(seqs), L, D_MODEL, device=DEV, dtype=seqs[0].dtype)
    for b, s in enumerate(seqs):
        xb[b, : s.shape[0]] = s
    h = m.model(inputs_embeds=xb, use_cache=False).last_hidden_state
    pos = torch.cat(tgt_pos)
    logits = m.lm_head(h[pos[:, 0], pos[:, 1]]).float()
    tgt = torch.cat(tgt_ids)
    ce = TF.cross_entropy(logits, tgt, reduction="sum")
    return ce, len(tgt), (ctc(audio, utts) if ctc is not None else None)


@torch.no_grad()
def greedy(m, proj, prompt, feats, max_new=64):
    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(feats)
    a = proj(F.stack4(enc_top(feats.to(DEV).float())))
    x = torch.cat([prompt.pre, a, prompt.suf], 0)[None]
    out = m(inputs_embeds=x, use_cache=True)
    past, ids = out.past_key_values, []
    lg = out.logits[0, -1]
    for _ in range(max_new):
        t = int(torch.argmax(lg))
        if t in (IM_END, END_OF_TEXT):
            break
        ids.append(t)
        out = m(input_ids=torch.tensor([[t]], device=DEV), past_key_values=past, use_cache=True)
        past, lg = out.past_key_values, out.logits[0, -1]
    return ids


def edit_distance(r, h):
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)]


def wer(pairs):
    errs = sum(edit_distance(r.split(), h.split()) for r, h in pairs)
    n = sum(len(r.split()) for r, _ in pairs)
    return 100.0 * errs / max(1, n), errs, n


def real_clips():
    """(name, wav, reference) for pocketsphinx-testdata's LibriVox and cards clips."""
    out = []
    for sub, tfile in (("librivox", "transcription"), ("cards", "cards.transcription")):
        path = os.path.join(PS_DATA, sub, tfile)
        if not os.path.exists(path):
            continue
        for line in open(path):
            mm = re.match(r"\s*<s>(.*)</s>\s*\((\S+)\)", line)
            if not mm:
                continue
            ref, name = mm.group(1), mm.group(2)
            wav = os.path.join(PS_DATA, sub, name + ".wav")
            if os.path.exists(wav):
                out.append((f"{sub}/{name}", wav, text_corpus.normalize(ref)))
    return out


@functools.cache
def real_clip_encoder():
    """The onnxruntime encoder for the real clips: built on first use, once per process."""
    return F.Encoder(threads=1)


def evaluate(m, proj, prompt, tok, heldout, log, tag, limit=None):
    m.eval()
    res = {"tag": tag}
    t0 = time.time()
    rows = []
    sel_ho = heldout if not limit or limit >= len(heldout) else \
        [heldout[int(i)] for i in np.linspace(0, len(heldout) - 1, limit).round()]
    for u in sel_ho:
        hyp = text_corpus.normalize(tok_decode(tok, greedy(m, proj, prompt, u.feats)))
        rows.append({"id": u.id, "ref": u.text, "hyp": hyp})
    for split in ("heldout_voice", "heldout_joe", "heldout"):
        sel = [r for r in rows if split == "heldout" or r["id"].startswith(split + "-")]
        if sel:
            w, e, n = wer([(r["ref"], r["hyp"]) for r in sel])
            res[f"wer_{split}"] = round(w, 2)
            res[f"n_{split}"] = len(sel)
            res[f"words_{split}"] = n
    res["synthetic_decode_s"] = round(time.time() - t0, 1)
    real = []
    for name, wav, ref in real_clips():
        if ENC_TOP is None:
            feats = real_clip_encoder().features(F.read_wav(wav))
        else:   # the hidden state below the tuned blocks, from the torch twin
            with torch.no_grad():
                feats = ENC_TOP[0].features_batch([F.log_mel(F.read_wav(wav), F.mel_filters())], DEV)[0]
        hyp = text_corpus.normalize(tok_decode(tok, greedy(m, proj, prompt, feats)))
        real.append({"id": name, "ref": ref, "hyp": hyp})
    if real:
        for grp in ("librivox", "cards", "all"):
            sel = [r for r in real if grp == "all" or r["id"].startswith(grp + "/")]
            w, e, n = wer([(r["ref"], r["hyp"]) for r in sel])
            res[f"wer_real_{grp}"] = round(w, 2)
            res[f"n_real_{grp}"] = len(sel)
            res[f"words_real_{grp}"] = n
    res["rows"] = rows
    res["real_rows"] = real
    log(f"eval[{tag}] " + " ".join(f"{k}={v}" for k, v in res.items() if not k.endswith("rows")))
    for r in rows[:5] + real:
        log(f"   {r['id']}: ref='{r['ref']}' hyp='{r['hyp']}'")
    return res


@torch.no_grad()
def val_loss(m, proj, prompt, heldout, batch=None):
    batch = batch or (8 if DEV.type == "cpu" else 50)
    tot, n = 0.0, 0
    for i in range(0, len(heldout), batch):
        us = heldout[i:i + batch]
        loss, k, _ = batch_loss(m, proj, prompt, us, [u.feats for u in us])
        tot += float(loss)
        n += k
    return tot / max(1, n)


def start_pack_decoding(pack_dir, views, seed, workers, keep_audio=False):
    """Start decoding audio packs (tools/train/audio_packs.py) into log-mels (the server's math)
    in worker processes; the LLM loads meanwhile.  Returns the handle for load_from_packs."""
    import multiprocessing as mp

    import audio_packs as AP

    index = AP.read_index(pack_dir)
    filters = F.mel_filters()
    by_pack: dict[str, list] = {}
    for k, r in enumerate(index):
        by_pack.setdefault(r["pack"], []).append((k, r["start"], r["n"]))
    # one job per pack (a pack decodes as a whole): pack with several packs per worker
    jobs = [(pack_dir, name, items, views, seed, filters, keep_audio) for name, items in sorted(by_pack.items())]
    pool = mp.get_context("spawn").Pool(max(1, min(workers, len(jobs))))
    return {"index": index, "views": views, "jobs": len(jobs), "t": time.time(), "pool": pool,
            "result": pool.map_async(AP.mels_of_pack, jobs, chunksize=1)}


def load_from_packs(h, tok, encoder_path, log, enc=None, keep_enc=False):
    """Collect the log-mels of start_pack_decoding, then features from the torch twin of the
    encoder on DEV, kept there; `enc`, if given, is that twin (--tune-encoder-top's, which stops
    below the tuned blocks).  The twin is returned when training needs it (audio kept for
    online views, or `keep_enc` for --synth), else None."""
    from whisper_torch import WhisperEncoder, load_weights

    index, views = h["index"], h["views"]
    mels, audio = {}, {}
    for res in h["result"].get():
        for k, v, mel in res["mels"]:
            mels[(k, v)] = mel
        for k, x in res["audio"]:
            audio[k] = torch.from_numpy(x).to(DEV)      # int16 samples (--online-aug)
    h["pool"].close()
    h["pool"].join()
    log(f"decoded {len(index)} utterances x {views} view(s) in {h['jobs']} jobs into log-mel "
        f"in {time.time() - h['t']:.1f} s (from the start of decoding)")
    t = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if enc is None:
        enc = WhisperEncoder(load_weights(encoder_path)).to(DEV)
    feats = {}
    keys = sorted(mels, key=lambda kv: mels[kv].shape[1])
    step = 8 if DEV.type == "cpu" else 128
    for i in range(0, len(keys), step):
        ks = keys[i:i + step]
        for kv, f in zip(ks, enc.features_batch([mels.pop(kv) for kv in ks], DEV)):
            feats[kv] = f.half().clone()
    log(f"encoder features on {DEV}: {len(feats)} in {time.time() - t:.1f} s")
    train, heldout = [], []
    for k, r in enumerate(index):
        u = Utt(r, None, tok, views=[feats[(k, v)] for v in range(views)])
        if r["split"] == "train":
            u.audio = audio.get(k)
            train.append(u)
        else:
            heldout.append(u)
    if audio:
        log(f"kept the audio of {len(audio)} utterances on {DEV} for online augmentation "
            f"({sum(a.numel() for a in audio.values()) * 2 / 1e9:.2f} GB)")
    if audio or keep_enc:
        return train, heldout, enc
    del enc
    return train, heldout, None


@torch.no_grad()
def online_features(enc, audios, filters, rng, g, others, snr_range=(5.0, 30.0)):
    """Fresh augmented views (tools/train/torch_aug.py) of int16 audio on DEV -> encoder
    features [frames/2, 384] float16, one padded encoder batch."""
    import torch_aug

    oth = [a.float() / 32768.0 for a in others]
    return encode_mels(enc, [torch_aug.augmented_mel(a.float() / 32768.0, filters, rng, g, oth, snr_range=snr_range)
                             for a in audios])


@torch.no_grad()
def encode_mels(enc, mels):
    """log-mels [80, frames] on DEV -> encoder features [frames/2, 384] float16, one padded batch."""
    T = max(m.shape[1] for m in mels)
    x = torch.zeros(len(mels), 80, T, device=DEV)
    for b, m in enumerate(mels):
        x[b, :, : m.shape[1]] = m
    out = enc(x, [m.shape[1] for m in mels])
    return [out[b, : m.shape[1] // 2].half() for b, m in enumerate(mels)]


# --------------------------------------------------------------------------- checkpoints

def write_atomic(path, data: bytes):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ctc_tensors(ctc):
    """The bundle's ctc.safetensors tensors (decoding.ctc_head): the blank class only; the
    token classes are the LLM's own embeddings."""
    return {"ctc.blank_w": ctc.blank_w.detach().float().cpu().numpy().reshape(-1),
            "ctc.blank_b": ctc.blank_b.detach().float().cpu().numpy().reshape(1)}


def save_outputs(prefix_dir, name_suffix, proj, m, meta, ctc=None):
    """Bundle-format projector (and LoRA, the CTC head for joint decoding, and with
    --tune-encoder-top the tuned encoder blocks) safetensors."""
    p = os.path.join(prefix_dir, f"projector{name_suffix}.safetensors")
    write_atomic(p, safetensors_bytes(proj.tensors(), meta))
    if ctc is not None:
        write_atomic(os.path.join(prefix_dir, f"ctc{name_suffix}.safetensors"), safetensors_bytes(ctc_tensors(ctc), meta))
    if ENC_TOP is not None:
        # the tuned encoder blocks, under their ONNX initializer names (tools/bundle/patch_encoder.py)
        write_atomic(os.path.join(prefix_dir, f"encoder_top{name_suffix}.safetensors"),
                     safetensors_bytes(ENC_TOP[0].top_tensors(ENC_TOP[1]), dict(meta, first_block=str(ENC_TOP[1]))))
    lt = lora_tensors(m)
    if lt:
        lmeta = dict(meta)
        mod = m.model.layers[0].self_attn.q_proj
        lmeta.update({"scale": repr(float(mod.scale)), "rank": str(mod.r), "alpha": repr(float(mod.scale * mod.r)),
                      "targets": "q_proj,v_proj", "layout": "gguf rows (q_proj B permuted like convert_hf_to_gguf)",
                      "merge": "W += scale * B @ A"})
        write_atomic(os.path.join(prefix_dir, f"lora{name_suffix}.safetensors"), safetensors_bytes(lt, lmeta))
    return p


def use_encoder_top(t: dict, encoder_path, where: str) -> None:
    """A projector trained with tuned encoder blocks `t` (ONNX initializer name -> float32 array)
    needs them. This run tunes blocks (ENC_TOP): they are loaded there, and must lie within the
    blocks it tunes (its hidden states below were computed with the plain encoder). It tunes
    none: --encoder must already hold them (the patched ONNX, within one float16 step)."""
    if not t:
        return
    if ENC_TOP is not None:
        tuned = set(ENC_TOP[0].top_names(ENC_TOP[1]))
        extra = sorted(k for k in t if k.replace("/", "__") not in tuned)
        if extra:
            raise SystemExit(f"{where}: holds tuned encoder tensors below the blocks this run tunes "
                             f"(from block {ENC_TOP[1]} on), e.g. {extra[0]}: raise --tune-encoder-top")
        with torch.no_grad():
            for k, v in t.items():
                ENC_TOP[0].w[k.replace("/", "__")].copy_(torch.as_tensor(np.asarray(v, np.float32)))
        return
    if encoder_path is None:
        raise SystemExit(f"{where}: its projector was trained with tuned encoder blocks, and cached "
                         "features come from the plain encoder: use --audio-packs with --encoder the "
                         "patched ONNX (.avlm/models/whisper-tiny.en-encoder.default-top.onnx) or --tune-encoder-top")
    from whisper_torch import load_weights

    have = load_weights(encoder_path)
    for k, v in t.items():
        v = np.asarray(v, np.float32)
        if k not in have or have[k].shape != v.shape or not np.allclose(have[k], v, rtol=2.0 ** -10, atol=1e-7):
            raise SystemExit(f"{where}: its projector was trained with tuned encoder blocks that "
                             f"--encoder {encoder_path} lacks ({k}); pass --tune-encoder-top with their "
                             "count, or --encoder the patched ONNX (.avlm/models/whisper-tiny.en-encoder.default-top.onnx)")


def init_from_files(d, proj, m, lora_params, ctc, log, encoder_path=None):
    """--init-from DIR: start from bundle-format files (weights/default, or a run's --export-dir):
    projector.safetensors, and each of lora / ctc .safetensors that the run trains, and
    encoder_top.safetensors when DIR has it (use_encoder_top). A file the run trains but DIR
    lacks is an error; one it has no place for is named in the log and skipped."""
    def path(name):
        return os.path.join(d, name + ".safetensors")

    if not os.path.exists(path("projector")):
        raise SystemExit(f"--init-from {d}: projector.safetensors missing")
    t, meta = read_safetensors(path("projector"))
    proj.load_tensors(t)
    wanted = {"lora": bool(lora_params), "ctc": ctc is not None, "encoder_top": ENC_TOP is not None}
    for name, used in wanted.items():
        if used and not os.path.exists(path(name)):
            raise SystemExit(f"--init-from {d}: {name}.safetensors missing (this run trains one)")
        if not used and name != "encoder_top" and os.path.exists(path(name)):
            log(f"--init-from {d}: {name}.safetensors not used by this run")
    if lora_params:
        load_lora_tensors(m, read_safetensors(path("lora"))[0])
    if ctc is not None:
        t = read_safetensors(path("ctc"))[0]
        with torch.no_grad():
            ctc.blank_w.copy_(torch.from_numpy(np.array(t["ctc.blank_w"])).reshape(ctc.blank_w.shape))
            ctc.blank_b.copy_(torch.from_numpy(np.array(t["ctc.blank_b"])).reshape(ctc.blank_b.shape))
    if os.path.exists(path("encoder_top")):
        use_encoder_top(read_safetensors(path("encoder_top"))[0], encoder_path, f"--init-from {d}")
    return {"step": meta.get("step", "?")}


def small_state(st):
    """Projector, LoRA, CTC head and tuned encoder blocks of a training state, on the CPU (no
    optimizer): enough for --init-from, small enough to bring back from a GPU machine."""
    def cpu(x):
        if isinstance(x, torch.Tensor):
            return x.detach().cpu()
        if isinstance(x, dict):
            return {k: cpu(v) for k, v in x.items()}
        if isinstance(x, list):
            return [cpu(v) for v in x]
        return x
    out = {k: cpu(st.get(k)) for k in ("step", "best", "history", "args", "projector", "lora", "ctc", "enc_top")}
    if out["enc_top"]:
        # float16 (as weights/default keeps them): the whole file then stays under the 16 MB a
        # file may come back from a device call with (float32 tuned blocks alone are 14 MB)
        out["enc_top"] = {k: v.half() for k, v in out["enc_top"].items()}
    return out


def export(args, work, small=None):
    """Copy the best projector/LoRA, the logs and (given) the small state of the last checkpoint
    to --export-dir, each file replaced atomically."""
    if not args.export_dir:
        return
    import shutil

    os.makedirs(args.export_dir, exist_ok=True)
    for name in ("projector.safetensors", "lora.safetensors", "ctc.safetensors", "encoder_top.safetensors",
                 "train.log", "loss.jsonl"):
        src = os.path.join(work, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(args.export_dir, name + ".tmp"))
            os.replace(os.path.join(args.export_dir, name + ".tmp"), os.path.join(args.export_dir, name))
    if small is not None:
        save_ckpt(os.path.join(args.export_dir, "last-small.pt"), small)


def save_ckpt(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=F.TRAIN_DIR)
    ap.add_argument("--data", default=None, help="data dir (default WORK/data)")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-lr", type=float, default=None, help="default: --lr")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--lora-rank", type=int, default=8, help="0 = projector only")
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--ctc-weight", type=float, default=0.5,
                    help="weight of the auxiliary CTC loss on projector outputs (its head also serves joint decoding; 0: off, "
                         "the plain recipe; 0.5 broke the frozen-LLM loss plateau ~2x sooner in the first runs)")
    ap.add_argument("--specaug", type=float, default=0.5, help="probability of SpecAugment per utterance")
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--keep-ckpts", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=0, help="WER eval every N steps on --eval-limit held-out (0: end only)")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=0, help="stop (after a checkpoint) past this wall time")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--check-llm", action="store_true", help="compare LLM logits with tools/llm/reference.py first")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--projector", default=None, help="--eval-only: projector safetensors (default WORK/projector.safetensors)")
    ap.add_argument("--lora", default=None, help="--eval-only: lora safetensors (default WORK/lora.safetensors if present)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (tools/train/gpu_run.sh)")
    ap.add_argument("--audio-packs", default=None,
                    help="train from audio packs (tools/train/audio_packs.py) instead of cached features: "
                         "log-mels in --workers processes, features from tools/train/whisper_torch.py on --device")
    ap.add_argument("--encoder", default=F.ENCODER, help="with --audio-packs: encoder weights (.onnx or .safetensors)")
    ap.add_argument("--views", type=int, default=1, help="with --audio-packs: feature views per utterance "
                                                         "(view 0 as packed, others re-augmented); one is drawn per step")
    ap.add_argument("--online-aug", type=float, default=0.0,
                    help="with --audio-packs: probability per utterance and step of a fresh on-device augmented "
                         "view (tools/train/torch_aug.py: speed, reverberation, white/pink/babble noise, level) "
                         "instead of a cached view")
    ap.add_argument("--online-snr", default="5,30",
                    help="with --online-aug: SNR range in dB (low,high) of its white/pink/babble noise")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--tune-encoder-top", type=int, default=0,
                    help="with --audio-packs: also train the Whisper encoder's top K blocks and final LN "
                         "(the best are written as encoder_top.safetensors: tools/bundle/patch_encoder.py)")
    ap.add_argument("--encoder-lr", type=float, default=None, help="--tune-encoder-top's lr (default: --lr)")
    ap.add_argument("--init-from", default=None,
                    help="start from this checkpoint's projector/LoRA/CTC (and tuned encoder) weights with a fresh "
                         "optimizer and schedule; a folder: its bundle-format *.safetensors (e.g. weights/default)")
    ap.add_argument("--time-schedule", action="store_true",
                    help="warmup then cosine over --max-minutes of wall time instead of over --steps")
    ap.add_argument("--export-dir", default=None,
                    help="also copy the best projector/LoRA and the logs here whenever they change")
    ap.add_argument("--synth", type=float, default=0.0,
                    help="with --audio-packs: this fraction of every batch is fresh synthetic speech made while "
                         "training runs (tools/data/synth_stream.py: training sentences, espeak-ng training accents "
                         "with random voice variants, Piper); 1 = only that (the packs then give the held-out split)")
    ap.add_argument("--synth-workers", type=int, default=1, help="--synth: synthesis processes")
    ap.add_argument("--synth-random", type=float, default=0.5,
                    help="--synth: probability of a random espeak-ng voice variant (else a named training one)")
    ap.add_argument("--synth-piper", type=float, default=0.2, help="--synth: probability of the Piper voice")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                    help="bfloat16 autocast for the training forward/backward (default where the hardware has it: "
                         "CUDA with bf16, or a CPU with AVX512-BF16/AMX; evaluation is always float32)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in plain float32")
    args = ap.parse_args()
    if args.bf16 is None:
        args.bf16 = bf16_is_fast(args.device)

    global DEV, ENC_TOP
    DEV = torch.device(args.device)
    # the encoder this run's features come from (cached features in a data dir: the plain one)
    enc_path = args.encoder if args.audio_packs else None
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = args.work
    data_dir = args.data or os.path.join(work, "data")
    ck_dir = os.path.join(work, "ckpt")
    os.makedirs(ck_dir, exist_ok=True)
    os.makedirs(os.path.join(work, "eval"), exist_ok=True)
    log = Log(os.path.join(work, "train.log"))
    log(f"start: {' '.join(sys.argv)}  (torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{'bfloat16 autocast' if args.bf16 else 'float32'} training)")

    if args.online_aug and not args.audio_packs:
        raise SystemExit("--online-aug needs --audio-packs (it augments the decoded audio)")
    if args.tune_encoder_top and not args.audio_packs:
        raise SystemExit("--tune-encoder-top needs --audio-packs (features are computed at load time)")
    if not 0.0 <= args.synth <= 1.0:
        raise SystemExit(f"--synth {args.synth}: a fraction of the batch, 0..1")
    if args.synth and not args.audio_packs:
        raise SystemExit("--synth needs --audio-packs (the held-out split, and the encoder its features come from)")
    n_synth = int(round(args.batch * args.synth))
    if args.synth and not args.eval_only and n_synth == 0:
        raise SystemExit(f"--synth {args.synth} of --batch {args.batch} is no utterance: raise one of them")
    synth = None
    if n_synth and not args.eval_only:
        import torch_aug
        from synth_stream import SynthStream

        # started first: the workers build their sentence pools and babble banks while the LLM loads
        synth = SynthStream(args.synth_workers, args.seed, args.synth_random, args.synth_piper)
    packs = (start_pack_decoding(args.audio_packs, args.views, args.seed, args.workers, keep_audio=args.online_aug > 0)
             if args.audio_packs else None)
    tok = load_tokenizer()
    m = load_llm(log)
    if args.check_llm:
        check_llm(m, tok, log)
    prompt = Prompt(m, tok)
    log(f"prompt ids: prefix {prompt.pre_ids} suffix {prompt.suf_ids}")

    t = time.time()
    enc = None
    if args.audio_packs:
        top = None
        if args.tune_encoder_top:
            from whisper_torch import N_LAYERS, WhisperEncoder, load_weights

            if not 0 < args.tune_encoder_top <= N_LAYERS:
                raise SystemExit(f"--tune-encoder-top must be 1..{N_LAYERS}")
            upto = N_LAYERS - args.tune_encoder_top
            top = WhisperEncoder(load_weights(args.encoder), upto=upto).to(DEV)
            tuned = set(top.top_names(upto))
            for k, p in top.w.items():
                p.requires_grad_(k in tuned)
            ENC_TOP = (top, upto)
        train, heldout, enc = load_from_packs(packs, tok, args.encoder, log, top, keep_enc=synth is not None)
    else:
        recs = read_manifest(data_dir)
        train = [Utt(r, data_dir, tok) for r in recs if r["split"] == "train"]
        heldout = [Utt(r, data_dir, tok) for r in recs if r["split"].startswith("heldout")]
    if synth is not None and n_synth < args.batch and not train:
        raise SystemExit(f"{args.audio_packs} has no training utterances: use --synth 1 to train on fresh synthesis only")
    log(f"data: {len(train)} train utts ({sum(u.feats.shape[0] for u in train) / 50 / 3600:.2f} h), "
        f"{len(heldout)} held-out; loaded in {time.time() - t:.1f} s")

    proj = Projector().to(DEV)
    lora_params = []
    use_lora = args.lora_rank > 0
    if args.eval_only:
        ppath = args.projector or os.path.join(work, "projector.safetensors")
        t_, meta = read_safetensors(ppath)
        proj.load_tensors(t_)
        lpath = args.lora or os.path.join(os.path.dirname(ppath), "lora.safetensors")
        if args.lora or (use_lora and os.path.exists(lpath)):
            lt, lmeta = read_safetensors(lpath)
            r = lt["lora.layers.0.q_proj.A"].shape[0]
            add_lora(m, r, float(lmeta["scale"]) * r)
            load_lora_tensors(m, lt)
            log(f"loaded LoRA {lpath} (r={r}, scale={lmeta['scale']})")
        tpath = os.path.join(os.path.dirname(ppath), "encoder_top.safetensors")
        if os.path.exists(tpath):
            use_encoder_top(read_safetensors(tpath)[0], enc_path, f"--eval-only {ppath}")
            log(f"tuned encoder blocks from {tpath}")
        log(f"eval-only with {ppath} ({meta})")
        res = evaluate(m, proj, prompt, tok, heldout, log, "eval-only", args.eval_limit)
        res["val_loss"] = round(val_loss(m, proj, prompt, heldout), 4)
        log(f"val_loss={res['val_loss']}")
        with open(os.path.join(work, "eval", "eval-only.json"), "w") as f:
            json.dump(res, f, indent=1)
        return
    if use_lora:
        lora_params = add_lora(m, args.lora_rank, args.lora_alpha)
    groups = [{"params": list(proj.parameters()), "lr": args.lr}]
    if lora_params:
        groups.append({"params": lora_params, "lr": args.lora_lr or args.lr})
    top_params = [p for p in ENC_TOP[0].parameters() if p.requires_grad] if ENC_TOP else []
    if top_params:
        groups.append({"params": top_params, "lr": args.encoder_lr or args.lr})
    ctc = None
    if args.ctc_weight > 0:
        ctc = CTCAux(m.get_input_embeddings().weight.detach())
        groups.append({"params": list(ctc.parameters()), "lr": args.lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    base_lrs = [g["lr"] for g in groups]
    n_train_params = sum(p.numel() for g in groups for p in g["params"])
    log(f"trainable parameters: {n_train_params} (projector {sum(p.numel() for p in proj.parameters())}, "
        f"LoRA {sum(p.numel() for p in lora_params)}, encoder top {sum(p.numel() for p in top_params)})")

    def lr_factor(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        if args.time_schedule and args.max_minutes:
            # the cosine ends when --max-minutes (counted from the first step) runs out
            left_s = max(1.0, args.max_minutes * 60 - (t_sched - t_start))
            pr = min(1.0, (time.time() - t_sched) / left_s)
        else:
            pr = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        return args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * pr))

    def load_enc_top(st, where="checkpoint"):
        if st.get("enc_top"):
            use_encoder_top({k.replace("__", "/"): v.float().cpu().numpy() for k, v in st["enc_top"].items()},
                            enc_path, where)

    step, best, history = 0, float("inf"), []
    t_sched = time.time()   # reset when warmup ends (the time schedule starts there)
    latest = os.path.join(ck_dir, "latest.pt")
    if args.init_from and os.path.isdir(args.init_from):
        st = init_from_files(args.init_from, proj, m, lora_params, ctc, log, enc_path)
    elif args.init_from:
        st = torch.load(args.init_from, weights_only=False, map_location=DEV)
        proj.load_state_dict(st["projector"])
        if st.get("lora") is not None and lora_params:
            for p, v in zip(lora_params, st["lora"]):
                p.data.copy_(v)
        if ctc is not None and st.get("ctc") is not None:
            ctc.load_state_dict(st["ctc"])
        load_enc_top(st, f"--init-from {args.init_from}")
    if args.init_from:
        log(f"initialised from {args.init_from} (its step {st.get('step')}); fresh optimizer and schedule")
        if heldout and not args.resume:
            # the bar a continuation must clear, measured here on the same held-out clips
            m.eval()
            with torch.no_grad():
                vl0 = val_loss(m, proj, prompt, heldout)
            history.append({"step": 0, "val_loss": round(vl0, 4), "elapsed_s": 0.0, "start": True})
            log(f"held-out synthetic loss of the start: {vl0:.4f}")
    if args.resume:
        if not os.path.exists(latest):
            raise SystemExit(f"--resume: {latest} not found")
        st = torch.load(latest, weights_only=False, map_location=DEV)
        proj.load_state_dict(st["projector"])
        if st.get("lora") is not None:
            if not use_lora:
                raise SystemExit("checkpoint has LoRA: resume with the same --lora-rank")
            for p, v in zip(lora_params, st["lora"]):
                p.data.copy_(v)
        if ctc is not None:
            if st.get("ctc") is None:
                raise SystemExit("checkpoint has no CTC head: resume with the same --ctc-weight")
            ctc.load_state_dict(st["ctc"])
        load_enc_top(st)
        opt.load_state_dict(st["opt"])
        step, best, history = st["step"], st["best"], st.get("history", [])
        torch.set_rng_state(st["torch_rng"])
        if st["args"].get("steps") != args.steps:
            log(f"note: --steps {args.steps} differs from the checkpoint's {st['args'].get('steps')} (schedule follows --steps)")
        log(f"resumed from {latest} at step {step} (best held-out loss {best:.4f})")

    def state():
        return {"step": step, "best": best, "history": history, "args": vars(args),
                "projector": proj.state_dict(), "lora": [p.detach().clone() for p in lora_params] if lora_params else None,
                "ctc": ctc.state_dict() if ctc is not None else None,
                "enc_top": ({k: v.detach().clone() for k, v in ENC_TOP[0].w.items() if v.requires_grad}
                            if ENC_TOP else None),
                "opt": opt.state_dict(), "torch_rng": torch.get_rng_state()}

    meta = {"avlm": "trained projector", "recipe": "stack4 + MLP, SmolLM2-135M-Instruct frozen",
            "data": (f"audio packs {args.audio_packs} ({len(train)} train utterances, {args.views} view(s)"
                     + (f", online augmentation p {args.online_aug})" if args.online_aug else ")")
                     + (f" + {n_synth} of every {args.batch} synthesised fresh (espeak-ng random variants p "
                        f"{args.synth_random}, Piper p {args.synth_piper})" if synth is not None else "")
                     if args.audio_packs else os.path.relpath(data_dir, REPO))}
    loss_log = open(os.path.join(work, "loss.jsonl"), "a", buffering=1)
    mel_t = torch.from_numpy(F.mel_filters().astype(np.float32)).to(DEV) if enc is not None else None
    snr_range = tuple(float(v) for v in args.online_snr.split(","))
    n_online = 0
    # pack utterances per step (the rest of the batch is --synth's)
    n_pack = args.batch - n_synth
    per_epoch = len(epoch_batches(train, args.batch, args.seed, 0)) if n_pack else 0
    t_start = time.time()
    t_win, utt_win, tok_sum, loss_sum, ctc_sum = time.time(), 0, 0, 0.0, 0.0
    batches_epoch, batches = None, None
    while step < args.steps:
        epoch, us = 0, []
        if per_epoch:
            epoch, idx = divmod(step, per_epoch)
            if epoch != batches_epoch:   # one shuffle per epoch, not per step
                batches_epoch, batches = epoch, epoch_batches(train, args.batch, args.seed, epoch)
            us = [train[i] for i in batches[idx][:n_pack]]
        rng = np.random.default_rng([args.seed, 200, step])
        views = [u.views[int(rng.integers(len(u.views)))] if len(u.views) > 1 else u.feats for u in us]
        if args.online_aug and enc is not None and us:
            fresh = [b for b in range(len(us)) if rng.random() < args.online_aug]
            if fresh:
                others = [train[int(i)].audio for i in rng.integers(0, len(train), size=8)]
                gen = torch.Generator(device=DEV)
                gen.manual_seed(int(rng.integers(1 << 62)))
                for b, f in zip(fresh, online_features(enc, [us[b].audio for b in fresh], mel_t, rng, gen, others, snr_range)):
                    views[b] = f
                n_online += len(fresh)
        if synth is not None:   # fresh utterances, augmented by their worker: their plain log-mel
            items = synth.batch(n_synth)
            mels = [torch_aug.log_mel(torch.from_numpy(it["audio"]).to(DEV).float() / 32768.0, mel_t) for it in items]
            for it, f in zip(items, encode_mels(enc, mels)):
                us.append(Utt({"id": f"synth-{it['worker']}-{it['k']}", "text": it["text"]}, None, tok, views=[f]))
                views.append(f)
        if ENC_TOP is not None:   # SpecAugment masks features, not the hidden state below the tuned blocks
            with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=args.bf16):
                views = ENC_TOP[0].top_batch([f.to(DEV).float() for f in views], ENC_TOP[1])
            views = [v.float() for v in views]
        feats = [spec_augment(f, rng) if rng.random() < args.specaug else f for f in views]
        fac = lr_factor(step)
        for g, b in zip(opt.param_groups, base_lrs):
            g["lr"] = b * fac
        m.train()
        loss, n, ctc_loss = batch_loss(m, proj, prompt, us, feats, bf16=args.bf16, ctc=ctc, top_done=ENC_TOP is not None)
        opt.zero_grad(set_to_none=True)
        total = loss / n + (args.ctc_weight * ctc_loss if ctc_loss is not None else 0.0)
        total.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        utt_win += len(us)
        loss_sum += float(loss.detach())
        tok_sum += n
        ctc_sum += float(ctc_loss.detach()) if ctc_loss is not None else 0.0
        rec = {"step": step, "loss": round(float(loss.detach()) / n, 4), "lr": round(opt.param_groups[0]["lr"], 7),
               "gnorm": round(float(gn), 3),
               "ctc": round(float(ctc_loss.detach()), 4) if ctc_loss is not None else None, "elapsed_s": round(time.time() - t_start, 1), "epoch": epoch}
        loss_log.write(json.dumps(rec) + "\n")
        if step == args.warmup:
            t_sched = time.time()
        if step % args.log_every == 0:
            dt = time.time() - t_win
            k = args.log_every
            log(f"step {step}/{args.steps} ep {epoch} loss {loss_sum / tok_sum:.4f} "
                + (f"ctc {ctc_sum / k:.3f} " if ctc is not None else "") + f"lr {rec['lr']:.2e} "
                f"gnorm {rec['gnorm']:.2f} {k / dt:.3f} steps/s {utt_win / dt:.2f} utt/s"
                + (f" ({n_online} online views so far)" if args.online_aug else "")
                + (f" ({synth.n} synthesised so far, {synth.wait_s:.0f} s waited for them)" if synth is not None else ""))
            t_win, utt_win, tok_sum, loss_sum, ctc_sum = time.time(), 0, 0, 0.0, 0.0
        out_of_time = args.max_minutes and (time.time() - t_start) / 60 > args.max_minutes
        if step % args.ckpt_every == 0 or step == args.steps or out_of_time:
            m.eval()
            vl = val_loss(m, proj, prompt, heldout)
            history.append({"step": step, "val_loss": round(vl, 4), "elapsed_s": round(time.time() - t_start, 1)})
            is_best = vl < best
            best = min(best, vl)
            log(f"checkpoint step {step}: held-out synthetic loss {vl:.4f}{' (best)' if is_best else ''}")
            st = state()
            save_ckpt(os.path.join(ck_dir, f"step_{step:06d}.pt"), st)
            save_ckpt(latest, st)
            save_outputs(ck_dir, f"-step_{step:06d}", proj, m, dict(meta, step=str(step), val_loss=f"{vl:.4f}"), ctc)
            if is_best:
                save_ckpt(os.path.join(ck_dir, "best.pt"), st)
                save_outputs(work, "", proj, m, dict(meta, step=str(step), val_loss=f"{vl:.4f}"), ctc)
            export(args, work, small_state(st))
            old = sorted(glob.glob(os.path.join(ck_dir, "step_*.pt")))[:-args.keep_ckpts]
            # per-checkpoint tuned encoder blocks are 14 MB each: kept like the checkpoints
            old += sorted(glob.glob(os.path.join(ck_dir, "encoder_top-step_*.safetensors")))[:-args.keep_ckpts]
            for p in old:
                os.remove(p)
            if args.eval_every and step % args.eval_every == 0 and step != args.steps:
                evaluate(m, proj, prompt, tok, heldout, log, f"step{step}", args.eval_limit)
            t_win, utt_win, tok_sum, loss_sum, ctc_sum = time.time(), 0, 0, 0.0, 0.0
            if out_of_time:
                log(f"--max-minutes {args.max_minutes} reached at step {step}: stopping (resume with --resume)")
                break
    train_s = time.time() - t_start
    log(f"training stopped at step {step}, {train_s / 60:.1f} min in this run")

    # final evaluation with the best checkpoint (chosen on held-out synthetic loss only)
    bst = torch.load(os.path.join(ck_dir, "best.pt"), weights_only=False, map_location=DEV)
    proj.load_state_dict(bst["projector"])
    if bst.get("lora") is not None:
        for p, v in zip(lora_params, bst["lora"]):
            p.data.copy_(v)
    load_enc_top(bst)
    res = evaluate(m, proj, prompt, tok, heldout, log, f"best@{bst['step']}", args.eval_limit)
    res.update({"best_step": bst["step"], "best_val_loss": bst["best"], "history": history})
    with open(os.path.join(work, "eval", f"final-step{step}.json"), "w") as f:
        json.dump(res, f, indent=1)
    if synth is not None:
        synth.close()
    log("done")
    export(args, work)


if __name__ == "__main__":
    main()
