#!/usr/bin/env python3
"""Train a context CTC head for joint CTC/attention decoding, with the projector and LLM frozen.

The bundle's CTC head scores each projected audio vector (stack-4 projector output, 12.5 per
second) against SmolLM2's frozen token embeddings plus one blank class; until now only the blank
(577 numbers) was trained, as an auxiliary loss of train_projector.py. This tool adds residual
context blocks in front of that scoring and trains them alone:

    x_0 = projected audio [G, 576]
    x_{i+1} = x_i + W2_i relu(W1_i unfold_k(LN_i(x_i)) + b1_i) + b2_i     (i < --blocks)
    logits = [x_n E^T, x_n . blank_w + blank_b]      (E: SmolLM2's embeddings, frozen)

unfold_k stacks each frame with its k // 2 neighbours on either side (zeros past the ends), so
two blocks of k = 5 see +-4 frames (+-320 ms). W2 starts at zero: step 0 is the shipped head.
Needs no LLM forward, so it trains several times faster than the projector on this CPU.

    .avlm/venv/bin/python tools/train/train_ctc_head.py --audio-packs .avlm/train/packs2_sub \\
        --ckpt .avlm/train/cpu3/ckpt/step_000250.pt --work .avlm/train/ctc1 --max-minutes 40

Writes WORK/ctc.safetensors (best held-out CTC loss; the bundle's decoding.ctc_head, read by
llm/src/ctc.rs), WORK/ckpt/latest.pt (resume with --resume) and WORK/train.log. Held-out
numbers: CTC loss and the head's own greedy WER (no LLM) on the packs' held-out split.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as TF

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "data"))
import avlm_features as F  # noqa: E402
import text_corpus  # noqa: E402
import joint_decode as JD  # noqa: E402
import train_projector as T  # noqa: E402


class ContextCtcHead(nn.Module):
    def __init__(self, emb: torch.Tensor, blocks: int, kernel: int, hidden: int):
        super().__init__()
        d = emb.shape[1]
        self.emb = emb                                    # [V, D] frozen
        self.kernel = kernel
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(blocks)])
        self.fc1 = nn.ModuleList([nn.Linear(kernel * d, hidden) for _ in range(blocks)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, d) for _ in range(blocks)])
        for f in self.fc2:
            nn.init.zeros_(f.weight)
            nn.init.zeros_(f.bias)
        self.blank_w = nn.Parameter(torch.zeros(d))
        self.blank_b = nn.Parameter(torch.zeros(()))

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """[T, N, D] (time-major, zero past each utterance's end) -> same shape."""
        half = self.kernel // 2
        for ln, f1, f2 in zip(self.norms, self.fc1, self.fc2):
            h = ln(x)
            h = TF.pad(h, (0, 0, 0, 0, half, half))          # pad time
            win = torch.cat([h[i:i + x.shape[0]] for i in range(self.kernel)], -1)
            x = x + f2(torch.relu(f1(win)))
        return x

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([x @ self.emb.T, (x @ self.blank_w + self.blank_b)[..., None]], -1)
        return TF.log_softmax(logits.float(), -1)

    def tensors(self) -> dict:
        out = {"ctc.blank_w": self.blank_w, "ctc.blank_b": self.blank_b.reshape(1)}
        for i, (ln, f1, f2) in enumerate(zip(self.norms, self.fc1, self.fc2)):
            out[f"ctc.blocks.{i}.norm.weight"] = ln.weight
            out[f"ctc.blocks.{i}.norm.bias"] = ln.bias
            out[f"ctc.blocks.{i}.fc1.weight"] = f1.weight
            out[f"ctc.blocks.{i}.fc1.bias"] = f1.bias
            out[f"ctc.blocks.{i}.fc2.weight"] = f2.weight
            out[f"ctc.blocks.{i}.fc2.bias"] = f2.bias
        return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


def batch_audio(proj, feats_list):
    """Projected audio of a batch, time-major and zero-padded: ([G, N, D], lengths)."""
    with torch.no_grad():
        audio = [proj(F.stack4(f.float())) for f in feats_list]
    G = [a.shape[0] for a in audio]
    x = torch.zeros(max(G), len(audio), audio[0].shape[1])
    for b, a in enumerate(audio):
        x[: a.shape[0], b] = a
    return x, G


def ctc_loss(head, lp, G, utts, reduction="mean"):
    """CTC loss of the head's log-probabilities lp [T, N, V+1] against the transcripts."""
    tg = [torch.tensor(u.target[:-1]) for u in utts]
    return TF.ctc_loss(lp, torch.cat(tg), torch.tensor(G), torch.tensor([len(t) for t in tg]),
                       blank=head.emb.shape[0], reduction=reduction, zero_infinity=True)


@torch.no_grad()
def heldout_eval(head, proj, tok, heldout, batch=16):
    """(mean CTC loss, greedy WER %) on the held-out utterances."""
    losses, pairs = [], []
    blank = head.emb.shape[0]
    for i in range(0, len(heldout), batch):
        us = heldout[i:i + batch]
        x, G = batch_audio(proj, [u.feats for u in us])
        lp = head.log_probs(head.context(x))
        losses.append(float(ctc_loss(head, lp, G, us, reduction="sum")))
        for b, u in enumerate(us):
            ids = JD.ctc_greedy(lp[: G[b], b].numpy(), blank)
            pairs.append((u.text, text_corpus.normalize(T.tok_decode(tok, ids))))
    return sum(losses) / len(heldout), T.wer(pairs)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio-packs", required=True)
    ap.add_argument("--ckpt", required=True, help="train_projector.py checkpoint: its projector (frozen) and CTC blank")
    ap.add_argument("--work", required=True)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--max-minutes", type=float, default=40.0, help="cosine schedule over this wall time")
    ap.add_argument("--online-aug", type=float, default=0.5)
    ap.add_argument("--online-snr", default="0,30")
    ap.add_argument("--specaug", type=float, default=0.5)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    T.DEV = torch.device("cpu")
    os.makedirs(os.path.join(args.work, "ckpt"), exist_ok=True)
    log = T.Log(os.path.join(args.work, "train.log"))
    log(f"start: {' '.join(sys.argv)}")
    packs = T.start_pack_decoding(args.audio_packs, 1, args.seed, args.workers, keep_audio=args.online_aug > 0)
    tok = T.load_tokenizer()
    m = T.load_llm(log)
    emb = m.get_input_embeddings().weight.detach().float().clone()
    del m
    train, heldout, enc = T.load_from_packs(packs, tok, F.ENCODER, log)
    log(f"data: {len(train)} train, {len(heldout)} held-out utterances")

    st = torch.load(args.ckpt, weights_only=False, map_location="cpu")
    proj = T.Projector()
    proj.load_state_dict({k: v.float() for k, v in st["projector"].items()})
    proj.eval()
    for p in proj.parameters():
        p.requires_grad_(False)
    head = ContextCtcHead(emb, args.blocks, args.kernel, args.hidden)
    head.blank_w.data.copy_(st["ctc"]["blank_w"].float())
    head.blank_b.data.copy_(st["ctc"]["blank_b"].float().reshape(()))
    params = [p for n, p in head.named_parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    log(f"trainable parameters: {sum(p.numel() for p in params)} ({args.blocks} blocks, kernel {args.kernel}, "
        f"hidden {args.hidden})")

    step, best, elapsed0 = 0, float("inf"), 0.0
    latest = os.path.join(args.work, "ckpt", "latest.pt")
    if args.resume and os.path.exists(latest):
        s = torch.load(latest, weights_only=False)
        head.load_state_dict(s["head"])
        opt.load_state_dict(s["opt"])
        step, best, elapsed0 = s["step"], s["best"], s["elapsed"]
        log(f"resumed at step {step} ({elapsed0 / 60:.1f} min, best held-out loss {best:.4f})")
    else:
        vl, vw = heldout_eval(head, proj, tok, heldout)
        best = vl      # a head must beat the one it starts from to be written
        log(f"step 0 (the shipped head): held-out CTC loss {vl:.4f}, CTC greedy WER {vw:.1f}%")

    mel_t = torch.from_numpy(F.mel_filters().astype(np.float32))
    snr = tuple(float(v) for v in args.online_snr.split(","))
    per_epoch = len(T.epoch_batches(train, args.batch, args.seed, 0))
    budget = args.max_minutes * 60
    t_start = time.time() - elapsed0
    loss_win, n_win, t_win = 0.0, 0, time.time()
    batches_epoch, batches = None, None

    def save(tag_best):
        nonlocal best
        s = {"head": head.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
             "elapsed": time.time() - t_start, "args": vars(args)}
        torch.save(s, latest + ".tmp")
        os.replace(latest + ".tmp", latest)
        if tag_best:
            meta = {"avlm": "context CTC head", "from": os.path.relpath(args.ckpt), "step": str(step),
                    "heldout_ctc_loss": f"{best:.4f}", "blocks": str(args.blocks), "kernel": str(args.kernel),
                    "hidden": str(args.hidden)}
            T.write_atomic(os.path.join(args.work, "ctc.safetensors"),
                           T.safetensors_bytes(head.tensors(), meta))

    while True:
        el = time.time() - t_start
        if el > budget:
            break
        epoch, idx = divmod(step, per_epoch)
        if epoch != batches_epoch:
            batches_epoch, batches = epoch, T.epoch_batches(train, args.batch, args.seed, epoch)
        us = [train[i] for i in batches[idx]]
        rng = np.random.default_rng([args.seed, 300, step])
        views = [u.feats for u in us]
        if enc is not None:
            fresh = [b for b in range(len(us)) if rng.random() < args.online_aug]
            if fresh:
                others = [train[int(i)].audio for i in rng.integers(0, len(train), size=8)]
                gen = torch.Generator()
                gen.manual_seed(int(rng.integers(1 << 62)))
                for b, f in zip(fresh, T.online_features(enc, [us[b].audio for b in fresh], mel_t, rng, gen,
                                                         others, snr)):
                    views[b] = f
        feats = [T.spec_augment(f, rng) if rng.random() < args.specaug else f for f in views]
        if step < args.warmup:
            fac = (step + 1) / args.warmup
        else:
            fac = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, el / budget)))
        for g in opt.param_groups:
            g["lr"] = args.lr * fac
        x, G = batch_audio(proj, feats)
        loss = ctc_loss(head, head.log_probs(head.context(x)), G, us)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        loss_win += float(loss)
        n_win += 1
        if step % 10 == 0:
            log(f"step {step} loss {loss_win / n_win:.4f} lr {args.lr * fac:.2e} "
                f"{n_win * args.batch / (time.time() - t_win):.1f} utt/s  {el / 60:.1f} min")
            loss_win, n_win, t_win = 0.0, 0, time.time()
        if step % args.eval_every == 0:
            vl, vw = heldout_eval(head, proj, tok, heldout)
            improved = vl < best
            best = min(best, vl)
            log(f"step {step}: held-out CTC loss {vl:.4f}, CTC greedy WER {vw:.1f}%" + (" (best)" if improved else ""))
            with open(os.path.join(args.work, "eval.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "heldout_ctc_loss": vl, "ctc_greedy_wer": vw,
                                    "elapsed_s": round(time.time() - t_start, 1)}) + "\n")
            save(improved)
    vl, vw = heldout_eval(head, proj, tok, heldout)
    improved = vl < best
    best = min(best, vl)
    log(f"end, step {step}: held-out CTC loss {vl:.4f}, CTC greedy WER {vw:.1f}%" + (" (best)" if improved else ""))
    save(improved)


if __name__ == "__main__":
    main()
