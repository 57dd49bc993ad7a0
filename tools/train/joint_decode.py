#!/usr/bin/env python3
"""Held-out WER of decoding strategies for one training checkpoint: the LLM's greedy decode,
its beam search, the CTC head alone, and joint CTC/attention beam search (Watanabe et al. 2017:
hypotheses scored by (1 - w) * log p_llm + w * log p_ctc-prefix).

    .avlm/venv/bin/python tools/train/joint_decode.py --audio-packs .avlm/train/packs2 \\
        --ckpt .avlm/train/cpu3/ckpt/step_000250.pt [--beam 4] [--ctc-weights 0.3,0.5]

The checkpoint must hold the training-only CTC head (train_projector.py --ctc-weight > 0).
Utterances: the held-out split of the packs (as packed, no augmentation).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as TF

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "data"))
import avlm_features as F  # noqa: E402
import text_corpus  # noqa: E402
import train_projector as T  # noqa: E402
from average_ckpts import load_for_heldout, log  # noqa: E402

NEG = -1e30


class CTCPrefix:
    """CTC prefix scores of one utterance (log domain). State of a prefix: (r_n, r_b) over frames,
    the log probabilities that frames 0..t emit the prefix ending in a non-blank / a blank."""

    def __init__(self, lp: np.ndarray, blank: int):
        self.lp, self.blank, self.T = lp, blank, lp.shape[0]

    def initial(self):
        r_n = np.full(self.T, NEG)
        r_b = np.cumsum(self.lp[:, self.blank])
        return r_n, r_b, 0.0

    def extend(self, state, last, cands):
        """Prefix scores and states of prefix+c for each c in cands (no end token)."""
        r_n, r_b, _ = state
        lp_c = self.lp[:, cands].T                         # [K, T]
        K = len(cands)
        same = (np.asarray(cands) == last)[:, None]
        phi = np.where(same, r_b[None, :], np.logaddexp(r_n, r_b)[None, :])   # [K, T]
        nn_ = np.full((K, self.T), NEG)
        nb = np.full((K, self.T), NEG)
        if last is None:
            nn_[:, 0] = lp_c[:, 0]
        psi = nn_[:, 0].copy()
        lb = self.lp[:, self.blank]
        for t in range(1, self.T):
            nn_[:, t] = np.logaddexp(nn_[:, t - 1], phi[:, t - 1]) + lp_c[:, t]
            nb[:, t] = np.logaddexp(nn_[:, t - 1], nb[:, t - 1]) + lb[t]
            psi = np.logaddexp(psi, phi[:, t - 1] + lp_c[:, t])
        return [(nn_[k], nb[k], float(psi[k])) for k in range(K)]

    def final(self, state):
        r_n, r_b, _ = state
        return float(np.logaddexp(r_n[-1], r_b[-1]))


def ctc_logprobs(ctc, audio):
    emb = ctc.emb
    logits = torch.cat([audio @ emb.T, (audio @ ctc.blank_w + ctc.blank_b)[:, None]], -1).float()
    return TF.log_softmax(logits, -1).numpy().astype(np.float64)


def ctc_greedy(lp, blank):
    ids, prev = [], None
    for t in lp.argmax(-1):
        t = int(t)
        if t != blank and t != prev:
            ids.append(t)
        prev = t
    return ids


@torch.no_grad()
def beam_search(m, prompt, audio, lp, beam, w, max_new=64, cand=None):
    """Joint CTC/attention beam search (w = 0: plain LLM beam search)."""
    blank = lp.shape[1] - 1
    cp = CTCPrefix(lp, blank) if w > 0 else None
    cand = cand or beam * 2
    x = torch.cat([prompt.pre, audio, prompt.suf], 0)[None]
    out = m(inputs_embeds=x, use_cache=True)
    # hyp: (score, ids, att_logp_sum, ctc_state, past, next_logprobs)
    hyps = [(0.0, [], 0.0, cp.initial() if cp else None, out.past_key_values,
             TF.log_softmax(out.logits[0, -1].float(), -1))]
    finished = []
    for _ in range(max_new):
        pool = []
        for score, ids, att, cst, past, nlp in hyps:
            top = torch.topk(nlp, cand).indices.tolist()
            ends = [c for c in top if c in (T.IM_END, T.END_OF_TEXT)]
            words = [c for c in top if c not in (T.IM_END, T.END_OF_TEXT)]
            for c in ends:
                a = att + float(nlp[c])
                s = (1 - w) * a + (w * cp.final(cst) if cp else 0.0)
                finished.append((s, ids))
            if words:
                states = cp.extend(cst, ids[-1] if ids else None, words) if cp else [None] * len(words)
                for c, st in zip(words, states):
                    a = att + float(nlp[c])
                    s = (1 - w) * a + (w * st[2] if cp else 0.0)
                    pool.append((s, ids + [c], a, st, past))
        pool.sort(key=lambda h: -h[0])
        pool = pool[:beam]
        best_done = max((f[0] for f in finished), default=NEG)
        pool = [h for h in pool if h[0] > best_done]       # scores only fall as hypotheses grow
        if not pool:
            break
        hyps = []
        for s, ids, a, st, past in pool:
            p = copy.deepcopy(past)
            o = m(input_ids=torch.tensor([[ids[-1]]]), past_key_values=p, use_cache=True)
            hyps.append((s, ids, a, st, o.past_key_values, TF.log_softmax(o.logits[0, -1].float(), -1)))
    if not finished:
        finished = [(h[0], h[1]) for h in hyps]
    return max(finished, key=lambda f: f[0])[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio-packs", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--ctc-weights", default="0.3")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--no-plain", action="store_true", help="skip greedy and plain beam")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    tok, m, prompt, heldout = load_for_heldout(args.audio_packs, args.threads)
    if args.limit:
        heldout = [heldout[int(i)] for i in np.linspace(0, len(heldout) - 1, args.limit).round()]
    st = torch.load(args.ckpt, weights_only=False, map_location="cpu")
    proj = T.Projector()
    proj.load_state_dict({k: v.float() for k, v in st["projector"].items()})
    lora = T.add_lora(m, 8, 16.0)
    for i, p in enumerate(lora):
        p.data.copy_(st["lora"][i].float())
    ctc = T.CTCAux(m.get_input_embeddings().weight.detach())
    ctc.load_state_dict(st["ctc"])
    m.eval()
    log(f"{len(heldout)} held-out utterances; checkpoint step {st.get('step')}")

    def dec(ids):
        return text_corpus.normalize(T.tok_decode(tok, ids))

    modes = [] if args.no_plain else [("greedy", None), ("ctc_greedy", None), (f"beam{args.beam}", 0.0)]
    modes += [(f"joint{args.beam}_w{w}", float(w)) for w in args.ctc_weights.split(",")]
    rows = {name: [] for name, _ in modes}
    secs = {name: 0.0 for name, _ in modes}
    for u in heldout:
        with torch.no_grad():
            audio = proj(F.stack4(u.feats.float()))
            lp = ctc_logprobs(ctc, audio)
        for name, w in modes:
            t0 = time.time()
            if name == "greedy":
                ids = T.greedy(m, proj, prompt, u.feats)
            elif name == "ctc_greedy":
                ids = ctc_greedy(lp, lp.shape[1] - 1)
            else:
                ids = beam_search(m, prompt, audio, lp, args.beam, w)
            secs[name] += time.time() - t0
            rows[name].append((u.id, u.text, dec(ids)))
    for name, _ in modes:
        out = []
        for split in ("heldout_voice", "heldout_joe", "heldout"):
            sel = [(r, h) for i, r, h in rows[name] if split == "heldout" or i.startswith(split + "-")]
            if sel:
                out.append(f"{split} {T.wer(sel)[0]:.1f}%")
        log(f"{name}: " + "  ".join(out) + f"  ({secs[name]:.0f} s)")
    for k in range(min(8, len(heldout))):
        log(f"  ref: {rows[modes[0][0]][k][1]}")
        for name, _ in modes:
            log(f"  {name:>14}: {rows[name][k][2]}")


if __name__ == "__main__":
    main()
