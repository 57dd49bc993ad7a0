#!/usr/bin/env python3
"""Summarise a training run: loss curve in windows, held-out losses, eval results.

    summarize.py [WORK=.avlm/train] [--window 100]
"""
import argparse
import glob
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work", nargs="?", default=os.path.join(REPO, ".avlm", "train"))
    ap.add_argument("--window", type=int, default=100)
    a = ap.parse_args()
    recs = {}
    for line in open(os.path.join(a.work, "loss.jsonl")):
        r = json.loads(line)
        recs[r["step"]] = r          # a resumed run overwrites replayed steps
    steps = sorted(recs)
    print(f"{len(steps)} steps logged")
    print(" steps        mean train loss   lr(end)")
    for s0 in range(0, steps[-1], a.window):
        w = [recs[s] for s in steps if s0 < s <= s0 + a.window]
        if w:
            print(f" {s0 + 1:5d}-{s0 + a.window:<5d}  {sum(r['loss'] for r in w) / len(w):8.4f}       {w[-1]['lr']:.2e}")
    log = open(os.path.join(a.work, "train.log")).read()
    for m in re.finditer(r"checkpoint step (\d+): held-out synthetic loss ([\d.]+)( \(best\))?", log):
        print(f" checkpoint {m.group(1):>5}: held-out loss {m.group(2)}{m.group(3) or ''}")
    speeds = [float(x) for x in re.findall(r"([\d.]+) steps/s", log)]
    utts = [float(x) for x in re.findall(r"([\d.]+) utt/s", log)]
    if speeds:
        speeds.sort()
        utts.sort()
        print(f" speed: median {speeds[len(speeds) // 2]:.3f} steps/s, {utts[len(utts) // 2]:.2f} utt/s "
              f"(min {speeds[0]:.3f}, max {speeds[-1]:.3f} steps/s)")
    for m in re.finditer(r"eval\[(.*?)\] (.*)", log):
        kv = dict(x.split("=", 1) for x in m.group(2).split() if "=" in x)
        keys = [k for k in kv if k.startswith("wer_")]
        print(f" eval {m.group(1)}: " + ", ".join(f"{k[4:]} {kv[k]}% (n={kv.get('n_' + k[4:], '?')})" for k in keys))
    for p in sorted(glob.glob(os.path.join(a.work, "eval", "*.json"))):
        print(" eval file:", os.path.relpath(p, REPO))


if __name__ == "__main__":
    main()
