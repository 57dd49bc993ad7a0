#!/usr/bin/env python3
"""Weight averages of training checkpoints, scored by held-out loss the way train_projector.py does.

    .avlm/venv/bin/python tools/train/average_ckpts.py --audio-packs .avlm/train/packs2 \\
        NAME=a.pt[,b.pt,...] ... [--out-dir DIR --write NAME]

Each NAME=... is one candidate: the mean of the checkpoints' projector, LoRA (A and B each
averaged) and CTC head (written with the rest; the held-out loss does not use it); a single file scores that checkpoint alone. The held-out loss is
next-token cross-entropy on the held-out utterances of the packs (their audio as packed, no
augmentation), the trainer's `val_loss`, so it compares with the numbers in a run's train.log.
With --write NAME, that candidate's bundle-format projector.safetensors, lora.safetensors and ctc.safetensors go to
--out-dir, with its held-out loss and sources in the metadata.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "data"))
import avlm_features as F  # noqa: E402
import train_projector as T  # noqa: E402


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def heldout_utts(pack_dir, tok):
    import soundfile as sf
    from whisper_torch import WhisperEncoder, load_weights

    import audio_packs as AP

    index = AP.read_index(pack_dir)
    ho = [(k, r) for k, r in enumerate(index) if r["split"] != "train"]
    filters = F.mel_filters()
    mels = {}
    for name in sorted({r["pack"] for _, r in ho}):
        audio, _ = sf.read(os.path.join(pack_dir, name), dtype="float32")
        for k, r in ho:
            if r["pack"] == name:
                mels[k] = F.log_mel(audio[r["start"]:r["start"] + r["n"]], filters)
    enc = WhisperEncoder(load_weights(F.ENCODER))
    utts = []
    with torch.no_grad():
        for k, r in ho:
            feats = enc.features_batch([mels[k]], T.DEV)[0].half().clone()
            utts.append(T.Utt(r, None, tok, views=[feats]))
    return utts


def load_for_heldout(pack_dir, threads):
    """(tokenizer, LLM, prompt, held-out utterances of `pack_dir`) on the CPU."""
    torch.set_num_threads(threads)
    T.DEV = torch.device("cpu")
    tok = T.load_tokenizer()
    m = T.load_llm(log)
    return tok, m, T.Prompt(m, tok), heldout_utts(pack_dir, tok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("candidates", nargs="+", help="NAME=a.pt[,b.pt,...]")
    ap.add_argument("--audio-packs", required=True, help="packs dir whose held-out utterances score the candidates")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--write", default=None, help="NAME of the candidate to write as bundle files")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()
    cands = []
    for c in args.candidates:
        name, sep, paths = c.partition("=")
        if not sep or not paths:
            ap.error(f"{c!r}: expected NAME=a.pt[,b.pt,...]")
        cands.append((name, paths.split(",")))
    if args.write and args.write not in {n for n, _ in cands}:
        ap.error(f"--write {args.write!r} names no candidate")
    if args.write and not args.out_dir:
        ap.error("--write needs --out-dir")

    tok, m, prompt, heldout = load_for_heldout(args.audio_packs, args.threads)
    log(f"{len(heldout)} held-out utterances from {args.audio_packs}")
    proj = T.Projector()
    lora = T.add_lora(m, args.lora_rank, args.lora_alpha) if args.lora_rank > 0 else []
    m.eval()
    for name, paths in cands:
        states = [torch.load(p, weights_only=False, map_location="cpu") for p in paths]
        proj.load_state_dict({k: sum(s["projector"][k].float() for s in states) / len(states)
                              for k in states[0]["projector"]})
        for i, p in enumerate(lora):
            p.data.copy_(sum(s["lora"][i].float() for s in states) / len(states))
        with torch.no_grad():
            vl = T.val_loss(m, proj, prompt, heldout)
        steps = [s.get("step") for s in states]
        log(f"{name}: steps {steps} held-out loss {vl:.4f}")
        if name == args.write:
            os.makedirs(args.out_dir, exist_ok=True)
            meta = {"avlm": "trained projector", "recipe": "stack4 + MLP, SmolLM2-135M-Instruct frozen",
                    "val_loss": f"{vl:.4f}", "average_of": json.dumps(paths), "steps": json.dumps(steps)}
            ctc = None
            if all(s.get("ctc") is not None for s in states):
                ctc = T.CTCAux(m.get_input_embeddings().weight.detach())
                ctc.load_state_dict({k: sum(s["ctc"][k].float() for s in states) / len(states)
                                     for k in states[0]["ctc"]})
            T.save_outputs(args.out_dir, "", proj, m, meta, ctc)
            log(f"wrote {args.out_dir}/projector.safetensors" + (", lora.safetensors" if lora else "")
                + (", ctc.safetensors" if ctc is not None else ""))


if __name__ == "__main__":
    main()
