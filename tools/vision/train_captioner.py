"""Train and evaluate avlm's default live captioner's projector (VideoLLM-online's respond-or-not
stream format on the frozen SmolLM2-135M-Instruct the server runs, audio LoRA merged).

    python tools/vision/captioner_data.py --out .avlm/captioner        # scenes + cached tokens
    python tools/vision/train_captioner.py --data .avlm/captioner --minutes 55
    python tools/vision/train_captioner.py --data .avlm/captioner --eval-only

Vision tokens (10 x 1280 a frame, `captioner_features.py`) -> projector fc1 (1280->576), exact
GELU, fc2 (576->576) -> SmolLM2 input embeddings. Only the projector trains. Inputs are
standardised per channel (training-set mean/std) while training; the standardisation is folded
into fc1 when the projector is written, so the file is the plain contract.

Stream (each piece tokenised alone, no BOS/EOS, specials parsed; F = 10 frame embeddings):
    SYSTEM "\\n[" F1 "," F2 "]\\nAssistant:" " caption" <|im_end|> "\\n[" F3 "," ...
Loss: after every frame, the decision token ("," = silent, "]" = the first token of
"]\\nAssistant:" = speak; the two classes weighted to equal total weight); on the caption
tokens and <|im_end|>. The SYSTEM prefix's KV is computed once (it does not depend on the
projector). Learning rate: linear warm-up, then cosine decay over the wall-clock budget.

Outputs (under --work, default .avlm/captioner/run):
  ckpt.pt                  resumable state (projector, optimiser, step, best), every --ckpt-min
  vision_projector.safetensors   best-validation projector, bundle format (f32:
        vision.fc1.weight [576,1280], vision.fc1.bias, vision.fc2.weight [576,576], vision.fc2.bias)
  train.log, loss.jsonl, metrics.json
With --out, the best projector is also copied there.

Evaluation (held-out leaf folders never seen in training, and training folders):
  caption accuracy: greedy caption after SYSTEM "\\n[" F "]\\nAssistant:" names the object, i.e.
      contains a content word (>= 3 letters, not a stop word; plural/singular matched) of the
      reference; chance = the same test against a random training caption;
  decisions: held-out streams run as the server runs them (speak when P(",") < 0.725, then
      greedy caption, <|im_end|> "\\n[" before the next frame; else "," before it): precision and
      recall of speaking against "first frame of a new scene with an object";
  frames/s: preprocessing + encoder + tokens + projector, PyTorch on the CPU threads given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as TF

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import captioner_data as D  # noqa: E402
import captioner_llm as L  # noqa: E402

ROOT = L.ROOT
VIS, HID = 1280, 576

STOP = set("""a an the and or of on in at to for with from by is are was were be been it its this that
these those as into over under some two three one four five his her their our your my big small large
little old new very much many more most other another there here who what which when where how
made make makes has have had not but they them you we she he also called like just than then""".split())


class Projector(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.fc1 = nn.Linear(VIS, HID)
        self.fc2 = nn.Linear(HID, HID)

    def forward(self, x):
        return self.fc2(TF.gelu(self.fc1((x - self.mean) / self.std), approximate="none"))

    def contract_tensors(self) -> dict[str, np.ndarray]:
        """fc1 with the standardisation folded in: W' = W / std, b' = b - W' @ mean."""
        W = self.fc1.weight.detach().double() / self.std.double()[None, :]
        b = self.fc1.bias.detach().double() - W @ self.mean.double()
        f = lambda t: np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))  # noqa: E731
        return {"vision.fc1.weight": f(W), "vision.fc1.bias": f(b),
                "vision.fc2.weight": f(self.fc2.weight), "vision.fc2.bias": f(self.fc2.bias)}


def contract_forward(t: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The projector file applied as the server applies it (numpy, for the fold check)."""
    from math import erf

    h = x @ t["vision.fc1.weight"].T + t["vision.fc1.bias"]
    h = 0.5 * h * (1 + np.vectorize(erf)(h / math.sqrt(2)))
    return h @ t["vision.fc2.weight"].T + t["vision.fc2.bias"]


def write_projector(path: str, tensors: dict[str, np.ndarray], meta: dict[str, str]):
    sys.path.insert(0, os.path.join(ROOT, "tools", "bundle"))
    from make_default_bundle import safetensors_bytes

    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(safetensors_bytes(tensors, meta))
    os.replace(tmp, path)


# ---------------------------------------------------------------- data


class Pool:
    """Cached vision tokens of one scene set: tokens[scene, variant] -> [10, 1280]."""

    def __init__(self, data_dir: str, name: str, scenes: list[dict]):
        chunks = sorted(f for f in os.listdir(data_dir) if f.startswith(name + "_") and f.endswith(".npy")
                        and ".tmp" not in f)
        arrs = [np.load(os.path.join(data_dir, f)) for f in chunks]
        self.tokens = torch.from_numpy(np.concatenate(arrs).astype(np.float32)) if arrs else None
        self.n = 0 if self.tokens is None else self.tokens.shape[0]
        self.scenes = scenes[: self.n]
        self.variants = 0 if self.tokens is None else self.tokens.shape[1]


class Builder:
    """Streams -> one batch: input embeddings [B, T, 576] and the loss targets."""

    def __init__(self, fmt: L.Format, embed: nn.Embedding):
        self.fmt, self.embed = fmt, embed
        self.cap_ids: dict[str, list[int]] = {}

    def caption(self, text: str) -> list[int]:
        if text not in self.cap_ids:
            self.cap_ids[text] = self.fmt.caption(text)[: L.MAX_CAPTION - 1]
        return self.cap_ids[text]

    def layout(self, stream: list[dict]):
        """Pieces ('ids', list) / ('frame', k) and targets (position, token, kind)."""
        f = self.fmt
        items, targets, pos = [], [], 0

        def put_ids(ids):
            nonlocal pos
            items.append(("ids", ids))
            pos += len(ids)

        put_ids(f.open)
        for k, fr in enumerate(stream):
            items.append(("frame", k))
            pos += 10
            if fr["speak"]:
                targets.append((pos - 1, f.speak[0], "speak"))
                put_ids(f.speak)
                cap = self.caption(fr["caption"]) + [f.im_end]
                for j, t in enumerate(cap):
                    targets.append((pos - 1 + j, t, "cap"))
                put_ids(cap)
                if k + 1 < len(stream):
                    put_ids(f.open)
            else:
                targets.append((pos - 1, f.sep, "silent"))
                if k + 1 < len(stream):
                    put_ids([f.sep])
        return items, targets, pos

    def batch(self, streams: list[list[dict]], frames: torch.Tensor, proj: Projector, w_speak: float,
              w_silent: float):
        """frames: [sum of stream lengths, 10, 1280] in stream order."""
        vis = proj(frames)  # [nF, 10, 576]
        lays = [self.layout(s) for s in streams]
        T = max(p for _, _, p in lays)
        B = len(streams)
        all_ids = sorted({t for items, _, _ in lays for kind, v in items if kind == "ids" for t in v})
        id_row = {t: i for i, t in enumerate(all_ids)}
        table = torch.cat([self.embed(torch.tensor(all_ids)), vis.reshape(-1, HID),
                           torch.zeros(1, HID)])
        pad = table.shape[0] - 1
        base_vis = len(all_ids)
        idx = torch.full((B, T), pad, dtype=torch.long)
        tb, tp, tt, tw, tk = [], [], [], [], []
        f0 = 0
        for b, (items, targets, _) in enumerate(lays):
            p = 0
            for kind, v in items:
                if kind == "ids":
                    idx[b, p:p + len(v)] = torch.tensor([id_row[t] for t in v])
                    p += len(v)
                else:
                    idx[b, p:p + 10] = base_vis + (f0 + v) * 10 + torch.arange(10)
                    p += 10
            for pos, tok, kind in targets:
                tb.append(b)
                tp.append(pos)
                tt.append(tok)
                tw.append({"speak": w_speak, "silent": w_silent, "cap": 1.0}[kind])
                tk.append(0 if kind == "cap" else 1)
            f0 += len(streams[b])
        return (table[idx], torch.tensor(tb), torch.tensor(tp), torch.tensor(tt), torch.tensor(tw),
                torch.tensor(tk))


class PrefixCache:
    """The SYSTEM prefix's keys and values, computed once, handed out per batch."""

    def __init__(self, m, ids: list[int]):
        from transformers import DynamicCache

        self.DynamicCache = DynamicCache
        with torch.no_grad():
            out = m.model(input_ids=torch.tensor([ids]), use_cache=True)
        c = out.past_key_values
        self.kv = [(c.layers[i].keys, c.layers[i].values) for i in range(len(c.layers))] if hasattr(c, "layers") \
            else [tuple(x) for x in c.to_legacy_cache()]
        self.len = len(ids)

    def get(self, batch: int):
        c = self.DynamicCache()
        for i, (k, v) in enumerate(self.kv):
            c.update(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous(), i)
        return c


def losses(m, prefix: PrefixCache, emb, tb, tp, tt, tw, tk):
    B, T, _ = emb.shape
    pos = torch.arange(prefix.len, prefix.len + T)
    h = m.model(inputs_embeds=emb, past_key_values=prefix.get(B), position_ids=pos[None].expand(B, -1),
                cache_position=pos, use_cache=True).last_hidden_state
    logits = m.lm_head(h[tb, tp])
    ce = TF.cross_entropy(logits, tt, reduction="none")
    cap, dec = tk == 0, tk == 1
    l_cap = (ce[cap] * tw[cap]).sum() / tw[cap].sum().clamp_min(1e-6)
    l_dec = (ce[dec] * tw[dec]).sum() / tw[dec].sum().clamp_min(1e-6)
    return l_cap, l_dec


def stream_frames(pool: Pool, streams):
    return torch.stack([pool.tokens[fr["scene"], fr["variant"]] for s in streams for fr in s])


# ---------------------------------------------------------------- evaluation


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in STOP}


def stem(w: str) -> str:
    for suf in ("ies", "es", "s"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


def names_object(generated: str, reference: str) -> bool:
    ref = {stem(w) for w in words(reference)} | words(reference)
    gen = {stem(w) for w in words(generated)} | words(generated)
    return bool(ref & gen)


class Live:
    """One stream run the way the server runs it, with a KV cache."""

    def __init__(self, m, fmt: L.Format, prefix: PrefixCache):
        self.m, self.fmt, self.prefix = m, fmt, prefix

    def start(self):
        self.cache = self.prefix.get(1)
        self.n = self.prefix.len
        self.pending = list(self.fmt.open)

    def _feed(self, emb):
        T = emb.shape[1]
        pos = torch.arange(self.n, self.n + T)
        out = self.m.model(inputs_embeds=emb, past_key_values=self.cache, position_ids=pos[None],
                           cache_position=pos, use_cache=True)
        self.n += T
        return self.m.lm_head(out.last_hidden_state[:, -1])[0]

    def ids_emb(self, ids):
        return self.m.model.embed_tokens(torch.tensor([ids]))

    def frame(self, vis: torch.Tensor) -> float:
        """Feeds the pending text and one frame's 10 embeddings; returns P(",")."""
        emb = torch.cat([self.ids_emb(self.pending), vis[None]], 1) if self.pending else vis[None]
        logits = self._feed(emb)
        return float(torch.softmax(logits.double(), -1)[self.fmt.sep])

    def silent(self):
        self.pending = [self.fmt.sep]

    def speak(self) -> str:
        logits = self._feed(self.ids_emb(self.fmt.speak))
        out = []
        for _ in range(L.MAX_CAPTION):
            t = int(logits.argmax())
            if t == self.fmt.im_end:
                break
            out.append(t)
            logits = self._feed(self.ids_emb([t]))
        self.pending = [self.fmt.im_end] + list(self.fmt.open)
        return self.fmt.tok.decode(out).strip()


@torch.no_grad()
def caption_eval(m, fmt, prefix, proj, pool: Pool, idx: list[int], train_caps: list[str], seed: int):
    live = Live(m, fmt, prefix)
    rng = random.Random(seed)
    hits, chance, examples = 0, 0, []
    for i in idx:
        live.start()
        live.frame(proj(pool.tokens[i, 0]))
        gen = live.speak()
        ref = pool.scenes[i]["caption"]
        ok = names_object(gen, ref)
        hits += ok
        chance += names_object(rng.choice(train_caps), ref)
        examples.append({"reference": ref, "generated": gen, "named": ok})
    n = max(len(idx), 1)
    return {"n": len(idx), "accuracy": hits / n, "chance": chance / n, "examples": examples}


@torch.no_grad()
def decision_eval(m, fmt, prefix, proj, pool: Pool, streams):
    live = Live(m, fmt, prefix)
    tp = fp = fn = tn = 0
    named, spoken_true, examples = 0, 0, []
    for s in streams:
        live.start()
        for fr in s:
            p_sep = live.frame(proj(pool.tokens[fr["scene"], fr["variant"]]))
            said = p_sep < L.THRESHOLD
            if said:
                cap = live.speak()
                if fr["speak"]:
                    spoken_true += 1
                    named += names_object(cap, fr["caption"])
                if len(examples) < 12:
                    examples.append({"reference": fr["caption"] or "(empty)", "speak_label": fr["speak"],
                                     "generated": cap, "p_sep": round(p_sep, 3)})
            else:
                live.silent()
            tp += said and fr["speak"]
            fp += said and not fr["speak"]
            fn += (not said) and fr["speak"]
            tn += (not said) and not fr["speak"]
    return {"streams": len(streams), "frames": tp + fp + fn + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "accuracy": (tp + tn) / max(tp + fp + fn + tn, 1),
            "caption_named_when_spoken": named / max(spoken_true, 1), "examples": examples}


def fps_eval(proj: Projector, threads: int, n: int = 48, seed: int = 3):
    import captioner_features as CF
    from PIL import Image

    enc = CF.Encoder(threads=threads)
    rng = np.random.default_rng(seed)
    ims = [Image.fromarray(rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)) for _ in range(n)]
    out = {}
    for batch in (1, 8):
        enc.tokens(ims[:batch], batch=batch)  # warm-up
        t = time.time()
        tok = enc.tokens(ims, batch=batch)
        with torch.no_grad():
            proj(torch.from_numpy(tok))
        out[f"batch{batch}_frames_per_s"] = n / (time.time() - t)
    out["threads"] = threads
    out["input"] = "640x360 RGB"
    return out


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, ".avlm", "captioner"))
    ap.add_argument("--work", default=None, help="default DATA/run")
    ap.add_argument("--out", default=None, help="also copy the best projector here")
    ap.add_argument("--minutes", type=float, default=55.0, help="training wall-clock budget")
    ap.add_argument("--batch", type=int, default=8, help="streams a step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--dec-weight", type=float, default=1.0, help="decision loss weight vs caption loss")
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--ckpt-min", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1207)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--eval-caption-n", type=int, default=150)
    ap.add_argument("--eval-streams", type=int, default=80)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = args.work or os.path.join(args.data, "run")
    os.makedirs(work, exist_ok=True)
    logf = open(os.path.join(work, "train.log"), "a")

    def log(msg):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    meta = json.load(open(os.path.join(args.data, "scenes.json")))
    train = Pool(args.data, "train", meta["scenes"]["train"])
    held = Pool(args.data, "heldout", meta["scenes"]["heldout"])
    log(f"scenes: {train.n} training, {held.n} held-out ({train.variants} variants each); held-out folders "
        f"{meta['held_out_categories']}")
    tok = L.load_tokenizer()
    fmt = L.Format(tok)
    m, llm_info = L.load_llm(log)
    prefix = PrefixCache(m, fmt.system)
    builder = Builder(fmt, m.model.embed_tokens)

    flat = train.tokens.reshape(-1, VIS)
    proj = Projector(flat.mean(0), flat.std(0).clamp_min(1e-3))
    del flat
    ckpt_path = os.path.join(work, "ckpt.pt")
    best_path = os.path.join(work, "vision_projector.safetensors")
    state = {"step": 0, "best": float("inf"), "best_step": -1, "elapsed": 0.0}
    opt = torch.optim.AdamW([p for n, p in proj.named_parameters()], lr=args.lr, weight_decay=args.weight_decay)
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        proj.load_state_dict(ck["proj"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log(f"resumed at step {state['step']} ({state['elapsed'] / 60:.1f} min trained)")

    # fixed validation streams (held-out folders) and the silent/speak balance
    vrng = random.Random(args.seed + 11)
    val_streams = [D.make_stream(vrng, list(range(held.n)), held.scenes, held.variants) for _ in range(48)]
    srng = random.Random(args.seed + 5)
    probe = [fr for _ in range(400) for fr in D.make_stream(srng, list(range(train.n)), train.scenes, train.variants)]
    p_speak = sum(fr["speak"] for fr in probe) / len(probe)
    w_speak, w_silent = 0.5 / p_speak, 0.5 / (1 - p_speak)
    log(f"speak on {p_speak:.1%} of training frames: decision weights speak {w_speak:.2f}, silent {w_silent:.2f}")

    def val_loss():
        proj.eval()
        tot_c = tot_d = 0.0
        with torch.no_grad():
            for i in range(0, len(val_streams), 16):
                ss = val_streams[i:i + 16]
                batch = builder.batch(ss, stream_frames(held, ss), proj, w_speak, w_silent)
                c, d = losses(m, prefix, *batch)
                tot_c += float(c) * len(ss)
                tot_d += float(d) * len(ss)
        proj.train()
        return tot_c / len(val_streams), tot_d / len(val_streams)

    def save_best(step):
        t = proj.contract_tensors()
        x = held.tokens[0, 0, :3]
        with torch.no_grad():
            state["fold_diff"] = float(np.abs(contract_forward(t, x.numpy().astype(np.float64))
                                              - proj(x).numpy()).max())
        write_projector(best_path, t, {
            "avlm": "trained vision projector (default live captioner)", "step": str(step),
            "encoder": "efficientnet-lite2 head 1280, 10 tokens a frame (pooled + 3x3 block means)",
            "llm": "SmolLM2-135M-Instruct Q4_1 + weights/default/lora.safetensors merged",
            "format": "VideoLLM-online respond-or-not; speak when P(',') < 0.725"})

    def checkpoint():
        torch.save({"proj": proj.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)

    if not args.eval_only:
        budget = args.minutes * 60
        rng = random.Random(args.seed * 31 + state["step"])
        ids = list(range(train.n))
        lossf = open(os.path.join(work, "loss.jsonl"), "a")
        t_start, elapsed0, last_ck = time.time(), state["elapsed"], time.time()
        run_c = run_d = None
        log(f"training: batch {args.batch} streams, lr {args.lr}, budget {args.minutes} min")
        while state["elapsed"] < budget:
            step = state["step"]
            frac = state["elapsed"] / budget
            lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            streams = [D.make_stream(rng, ids, train.scenes, train.variants) for _ in range(args.batch)]
            batch = builder.batch(streams, stream_frames(train, streams), proj, w_speak, w_silent)
            l_cap, l_dec = losses(m, prefix, *batch)
            loss = l_cap + args.dec_weight * l_dec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(proj.parameters(), 1.0)
            opt.step()
            state["step"] = step + 1
            state["elapsed"] = elapsed0 + time.time() - t_start
            l_cap, l_dec = l_cap.detach(), l_dec.detach()
            run_c = float(l_cap) if run_c is None else 0.95 * run_c + 0.05 * float(l_cap)
            run_d = float(l_dec) if run_d is None else 0.95 * run_d + 0.05 * float(l_dec)
            lossf.write(json.dumps({"step": step + 1, "t": round(state["elapsed"], 1), "lr": lr,
                                    "cap": float(l_cap), "dec": float(l_dec)}) + "\n")
            lossf.flush()
            if (step + 1) % 20 == 0:
                log(f"step {step + 1} ({state['elapsed'] / 60:.1f} min) lr {lr:.2e} caption {run_c:.3f} "
                    f"decision {run_d:.3f}")
            if (step + 1) % args.val_every == 0:
                grown = Pool(args.data, "train", meta["scenes"]["train"])
                if grown.n > train.n:  # the token cache was still being written when training began
                    log(f"training scenes: {train.n} -> {grown.n}")
                    train, ids = grown, list(range(grown.n))
                vc, vd = val_loss()
                v = vc + args.dec_weight * vd
                better = v < state["best"]
                if better:
                    state["best"], state["best_step"] = v, step + 1
                    save_best(step + 1)
                log(f"val (held-out folders) step {step + 1}: caption {vc:.3f} decision {vd:.3f}"
                    f"{' (best)' if better else ''}")
                state.setdefault("val", []).append({"step": step + 1, "caption": vc, "decision": vd})
            if time.time() - last_ck > args.ckpt_min * 60:
                checkpoint()
                last_ck = time.time()
        vc, vd = val_loss()
        state.setdefault("val", []).append({"step": state["step"], "caption": vc, "decision": vd})
        if vc + args.dec_weight * vd < state["best"]:
            state["best"], state["best_step"] = vc + args.dec_weight * vd, state["step"]
            save_best(state["step"])
        checkpoint()
        log(f"training done: {state['step']} steps, {state['elapsed'] / 60:.1f} min; best val at step "
            f"{state['best_step']}")

    # evaluate the projector file itself, as the server will load it
    sys.path.insert(0, os.path.join(ROOT, "tools", "bundle"))
    from make_default_bundle import read_safetensors

    t, fmeta = read_safetensors(best_path)
    assert sorted(t) == ["vision.fc1.bias", "vision.fc1.weight", "vision.fc2.bias", "vision.fc2.weight"]
    ev = Projector(torch.zeros(VIS), torch.ones(VIS))
    with torch.no_grad():
        for k in ("fc1", "fc2"):
            getattr(ev, k).weight.copy_(torch.from_numpy(t[f"vision.{k}.weight"]))
            getattr(ev, k).bias.copy_(torch.from_numpy(t[f"vision.{k}.bias"]))
    ev.eval()
    log(f"evaluating {best_path} (step {fmeta.get('step')})")
    train_caps = sorted({s["caption"] for s in train.scenes if s["caption"]})
    erng = random.Random(args.seed + 99)
    held_idx = [i for i in range(held.n) if held.scenes[i]["caption"]][: args.eval_caption_n]
    with_obj = [i for i in range(train.n) if train.scenes[i]["caption"]]
    train_idx = erng.sample(with_obj, min(args.eval_caption_n, len(with_obj)))
    t0 = time.time()
    cap_held = caption_eval(m, fmt, prefix, ev, held, held_idx, train_caps, args.seed)
    cap_train = caption_eval(m, fmt, prefix, ev, train, train_idx, train_caps, args.seed)
    log(f"caption accuracy (object named): held-out {cap_held['accuracy']:.1%} (chance {cap_held['chance']:.1%}, "
        f"n={cap_held['n']}), training folders {cap_train['accuracy']:.1%} (chance {cap_train['chance']:.1%}, "
        f"n={cap_train['n']}) [{time.time() - t0:.0f} s]")
    drng = random.Random(args.seed + 202)
    streams = [D.make_stream(drng, list(range(held.n)), held.scenes, held.variants) for _ in range(args.eval_streams)]
    t0 = time.time()
    dec = decision_eval(m, fmt, prefix, ev, held, streams)
    log(f"decisions on {dec['streams']} held-out streams ({dec['frames']} frames): precision {dec['precision']:.1%} "
        f"recall {dec['recall']:.1%} accuracy {dec['accuracy']:.1%} [{time.time() - t0:.0f} s]")
    fps = fps_eval(ev, args.threads)
    log(f"frames/s (preprocess + EfficientNet-Lite2 + tokens + projector, PyTorch, {args.threads} threads): "
        f"{fps['batch1_frames_per_s']:.1f} (batch 1), {fps['batch8_frames_per_s']:.1f} (batch 8)")
    metrics = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "projector": os.path.relpath(best_path, ROOT),
        "projector_step": fmeta.get("step"), "fold_check_max_abs_diff": state.get("fold_diff"),
        "train_steps": state["step"], "train_minutes": state["elapsed"] / 60, "best_step": state.get("best_step"),
        "val": state.get("val", []), "batch_streams": args.batch, "lr": args.lr,
        "decision_weights": {"speak": w_speak, "silent": w_silent, "speak_fraction": p_speak},
        "llm": llm_info, "format": fmt.describe(), "held_out_categories": meta["held_out_categories"],
        "scenes": {"train": train.n, "heldout": held.n, "variants": train.variants},
        "stamps": {"train": len(meta["train_stamps"]), "heldout": len(meta["heldout_stamps"])},
        "caption_heldout": cap_held, "caption_train": cap_train, "decisions_heldout": dec, "speed": fps,
    }
    with open(os.path.join(work, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    if args.out:
        import shutil

        shutil.copyfile(best_path, args.out)
        log(f"copied to {args.out}")


if __name__ == "__main__":
    main()
