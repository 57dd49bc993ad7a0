"""Training pictures and streams for the default live captioner, deterministic by seed.

Tux Paint stamps (real photo cut-outs with alpha, a one-line English description beside
each) are pasted over varied backgrounds into frames of varied aspect ratio; a *scene* is an
object set (0, 1 or 2 stamps) on one background, rendered as a few jittered *variants* (small
shift, scale and brightness changes) that stand for consecutive frames of an unchanged view.
A *stream* is 4-8 frames: scenes that hold for 1-4 frames each, then change.

Labels: the first frame of a scene with an object gets the caption (speak); every other
frame, and every frame of an empty scene (background only), gets silence.

Captions: one object -> the first sentence of its description, if at most 10 words (stamps
whose first sentence is longer are left out), with a full stop ("A red kangaroo."); two objects -> "A red kangaroo
and a koala." (the first description without its full stop, "and", the second with its
article lower-cased).

Whole leaf folders of stamps are held out for evaluation (`split_categories`), and
backgrounds are cut from training stamps only, so a held-out object never shows in training.

Run as a program it renders the scene pool and caches the frozen encoder's vision tokens
(`captioner_features.py`) in chunks, resumable:
    python tools/vision/captioner_data.py --out .avlm/captioner --stamps DIR
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
from PIL import Image, ImageEnhance, ImageFilter

STAMPS = "/tmp/stamps/x/usr/share/tuxpaint/stamps"
LEFT_OUT_TOP = ("symbols",)  # flags, letters, money: not things that come into view
ASPECTS = [(16, 9), (4, 3), (1, 1), (3, 4), (9, 16)]
ASPECT_P = [0.4, 0.25, 0.2, 0.1, 0.05]


def load_stamps(root: str = STAMPS) -> list[dict]:
    """Every PNG stamp with an English description, outside LEFT_OUT_TOP, sorted by path."""
    out = []
    for d, _, files in sorted(os.walk(root)):
        rel = os.path.relpath(d, root)
        if rel.split(os.sep)[0] in LEFT_OUT_TOP:
            continue
        for f in sorted(files):
            if not f.endswith(".png"):
                continue
            txt = os.path.join(d, f[:-4] + ".txt")
            if not os.path.exists(txt):
                continue
            with open(txt, encoding="utf-8", errors="replace") as fh:
                line = next((l.strip() for l in fh if l.strip()), "")
            line = first_sentence(line)
            if line:
                out.append({"path": os.path.join(d, f), "desc": line, "cat": rel})
    return out


def first_sentence(line: str, max_words: int = 10) -> str:
    """A description's first sentence as a short caption ending in a full stop, or "" when
    it is no short sentence (many stamps say a fact about the thing after the first one)."""
    line = line.strip().strip("\u2013- ").replace("\u201c", "").replace("\u201d", "").replace('"', "")
    line = re.split(r"(?<=[.!?])\s|\u2014|\s\u2013\s", line)[0].strip()
    line = line.rstrip(".!?\u2026 ")
    if not line or "=" in line.split(" ")[0] or len(line.split()) > max_words:
        return ""
    return line[0].upper() + line[1:] + "."


def split_categories(stamps: list[dict], seed: int, frac: float = 0.1) -> list[str]:
    """Held-out leaf folders: a seeded draw of ~frac of the folders that hold stamps."""
    cats = sorted({s["cat"] for s in stamps})
    rng = random.Random(seed)
    n = max(1, round(frac * len(cats)))
    return sorted(rng.sample(cats, n))


def join_captions(a: str, b: str) -> str:
    a = a.rstrip(".!? ")
    first, _, rest = b.partition(" ")
    if first in ("A", "An", "The", "Some", "Two", "Three"):
        b = first.lower() + " " + rest
    return f"{a} and {b}"


class StampCache:
    """Stamp pictures cropped to their alpha box, loaded once."""

    def __init__(self, stamps):
        self.stamps = stamps
        self.im: dict[int, Image.Image] = {}

    def get(self, i: int) -> Image.Image:
        if i not in self.im:
            im = Image.open(self.stamps[i]["path"]).convert("RGBA")
            box = im.getchannel("A").point(lambda v: 255 if v > 16 else 0).getbbox()
            self.im[i] = im.crop(box) if box else im
        return self.im[i]


def frame_size(rng: random.Random) -> tuple[int, int]:
    aw, ah = rng.choices(ASPECTS, ASPECT_P)[0]
    longest = rng.randint(260, 420)
    if aw >= ah:
        return longest, max(1, round(longest * ah / aw))
    return max(1, round(longest * aw / ah)), longest


def background_spec(rng: random.Random, bg_pool: list[int]) -> dict:
    kind = rng.choices(["photo", "noise", "gradient", "flat", "stripes"], [0.45, 0.15, 0.15, 0.15, 0.1])[0]
    col = lambda: [rng.randint(0, 255) for _ in range(3)]  # noqa: E731
    spec = {"kind": kind, "c1": col(), "c2": col()}
    if kind == "photo":
        spec.update(stamp=rng.choice(bg_pool), zoom=rng.uniform(1.5, 4.0), fx=rng.random(), fy=rng.random(),
                     blur=rng.uniform(0, 6), fill=col(), tint=rng.uniform(0.0, 0.4))
    elif kind == "noise":
        spec.update(cell=rng.choice([2, 4, 8, 16, 32]), blur=rng.uniform(0, 3), seed=rng.randrange(1 << 30))
    elif kind == "gradient":
        spec.update(angle=rng.uniform(0, 2 * math.pi))
    elif kind == "stripes":
        spec.update(period=rng.randint(8, 60), vertical=rng.random() < 0.5)
    return spec


def render_background(spec: dict, W: int, H: int, cache: StampCache) -> Image.Image:
    k = spec["kind"]
    c1, c2 = np.array(spec["c1"], np.float32), np.array(spec["c2"], np.float32)
    if k == "flat":
        return Image.new("RGB", (W, H), tuple(spec["c1"]))
    if k == "gradient":
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        t = (xx / max(W - 1, 1)) * math.cos(spec["angle"]) + (yy / max(H - 1, 1)) * math.sin(spec["angle"])
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        a = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
        return Image.fromarray(a.clip(0, 255).astype(np.uint8))
    if k == "stripes":
        idx = np.arange(W if spec["vertical"] else H) // spec["period"] % 2
        line = np.where(idx[:, None] == 0, c1[None], c2[None])
        a = np.broadcast_to(line[None] if spec["vertical"] else line[:, None], (H, W, 3))
        return Image.fromarray(np.ascontiguousarray(a).astype(np.uint8))
    if k == "noise":
        r = np.random.default_rng(spec["seed"])
        cell = spec["cell"]
        small = r.random((H // cell + 1, W // cell + 1, 1)).astype(np.float32)
        a = c1 * (1 - small) + c2 * small
        im = Image.fromarray(a.clip(0, 255).astype(np.uint8)).resize((W, H), Image.BILINEAR)
        return im.filter(ImageFilter.GaussianBlur(spec["blur"])) if spec["blur"] > 0.3 else im
    # photo: another stamp blown up and cropped, over a flat fill, blurred
    st = cache.get(spec["stamp"])
    scale = spec["zoom"] * max(W / st.width, H / st.height)
    big = st.resize((max(1, int(st.width * scale)), max(1, int(st.height * scale))), Image.BILINEAR)
    x0 = int(spec["fx"] * max(0, big.width - W))
    y0 = int(spec["fy"] * max(0, big.height - H))
    crop = big.crop((x0, y0, x0 + W, y0 + H))
    base = Image.new("RGB", (W, H), tuple(spec["fill"]))
    base.paste(crop, (0, 0), crop)
    if spec["tint"] > 0:
        base = Image.blend(base, Image.new("RGB", (W, H), tuple(spec["c1"])), spec["tint"])
    return base.filter(ImageFilter.GaussianBlur(spec["blur"])) if spec["blur"] > 0.3 else base


def scene_spec(rng: random.Random, objs: list[int], bg_pool: list[int]) -> dict:
    W, H = frame_size(rng)
    n = len(objs)
    placed = []
    for j, o in enumerate(objs):
        s = rng.uniform(0.2, 0.8) if n == 1 else rng.uniform(0.2, 0.55)
        if n == 2:  # left/right halves, so the two rarely hide each other
            cx = rng.uniform(0.2, 0.4) if j == 0 else rng.uniform(0.6, 0.8)
        else:
            cx = rng.uniform(0.25, 0.75)
        placed.append({"stamp": o, "s": s, "cx": cx, "cy": rng.uniform(0.3, 0.7), "flip": rng.random() < 0.5,
                       "bright": rng.uniform(0.75, 1.25), "contrast": rng.uniform(0.8, 1.2),
                       "sat": rng.uniform(0.7, 1.3)})
    return {"W": W, "H": H, "bg": background_spec(rng, bg_pool), "objs": placed}


def render(spec: dict, cache: StampCache, jitter: random.Random | None) -> Image.Image:
    """A scene as an RGB frame; `jitter` (None = the scene as drawn) moves, scales and
    brightens it a little, as consecutive frames of an unchanged view differ."""
    W, H = spec["W"], spec["H"]
    im = render_background(spec["bg"], W, H, cache)
    short = min(W, H)
    for o in spec["objs"]:
        st = cache.get(o["stamp"])
        s, cx, cy = o["s"], o["cx"], o["cy"]
        if jitter is not None:
            s *= jitter.uniform(0.93, 1.07)
            cx += jitter.uniform(-0.04, 0.04)
            cy += jitter.uniform(-0.04, 0.04)
        k = s * short / max(st.width, st.height)
        w, h = max(1, round(st.width * k)), max(1, round(st.height * k))
        ob = st.resize((w, h), Image.BICUBIC)
        if o["flip"]:
            ob = ob.transpose(Image.FLIP_LEFT_RIGHT)
        rgb, a = ob.convert("RGB"), ob.getchannel("A")
        rgb = ImageEnhance.Brightness(rgb).enhance(o["bright"])
        rgb = ImageEnhance.Contrast(rgb).enhance(o["contrast"])
        rgb = ImageEnhance.Color(rgb).enhance(o["sat"])
        im.paste(rgb, (round(cx * W - w / 2), round(cy * H - h / 2)), a)
    if jitter is not None:
        im = ImageEnhance.Brightness(im).enhance(jitter.uniform(0.9, 1.1))
    return im


def make_scenes(stamps: list[dict], which: list[int], bg_pool: list[int], n: int, seed: int,
                p_empty: float = 0.1, p_two: float = 0.25) -> list[dict]:
    """n scene specs drawing objects from `which` (stamp indices), with captions."""
    rng = random.Random(seed)
    order: list[int] = []
    scenes = []
    for _ in range(n):
        u = rng.random()
        k = 0 if u < p_empty else (2 if u < p_empty + p_two else 1)
        objs = []
        for _ in range(k):
            if not order:  # cycle through the stamps in shuffled rounds: even coverage
                order = list(which)
                rng.shuffle(order)
            o = order.pop()
            if o not in objs:
                objs.append(o)
        sp = scene_spec(rng, objs, bg_pool)
        if not objs:
            sp["caption"] = ""
        elif len(objs) == 1:
            sp["caption"] = stamps[objs[0]]["desc"]
        else:
            sp["caption"] = join_captions(stamps[objs[0]]["desc"], stamps[objs[1]]["desc"])
        scenes.append(sp)
    return scenes


def make_stream(rng: random.Random, scene_ids: list[int], scenes: list[dict], n_variants: int,
                p_empty: float | None = None) -> list[dict]:
    """One stream: 4-8 frames of scenes holding 1-4 frames each. Each frame: scene id, variant
    index, speak (first frame of a scene with an object) and the caption."""
    n = rng.randint(4, 8)
    frames: list[dict] = []
    prev = None
    while len(frames) < n:
        sid = rng.choice(scene_ids)
        if sid == prev or (prev is not None and scenes[sid]["caption"] == scenes[prev]["caption"]
                           and scenes[sid]["caption"]):
            continue
        hold = min(rng.randint(1, 4), n - len(frames))
        vs = list(range(n_variants))
        rng.shuffle(vs)
        for j in range(hold):
            frames.append({"scene": sid, "variant": vs[j % n_variants], "speak": j == 0 and bool(scenes[sid]["caption"]),
                           "caption": scenes[sid]["caption"]})
        prev = sid
    return frames


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stamps", default=STAMPS)
    ap.add_argument("--out", default=".avlm/captioner")
    ap.add_argument("--seed", type=int, default=1207)
    ap.add_argument("--train-scenes", type=int, default=2000)
    ap.add_argument("--heldout-scenes", type=int, default=300)
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64, help="scenes per cached chunk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["train", "heldout"], default=None,
                    help="cache only this set's tokens (two processes can share the work)")
    args = ap.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import captioner_features as CF

    os.makedirs(args.out, exist_ok=True)
    stamps = load_stamps(args.stamps)
    held = split_categories(stamps, args.seed)
    train_ids = [i for i, s in enumerate(stamps) if s["cat"] not in held]
    held_ids = [i for i, s in enumerate(stamps) if s["cat"] in held]
    print(f"{len(stamps)} stamps, {len(held)} held-out folders ({len(held_ids)} stamps): {held}", flush=True)
    sets = {
        "train": make_scenes(stamps, train_ids, train_ids, args.train_scenes, args.seed + 1),
        "heldout": make_scenes(stamps, held_ids, train_ids, args.heldout_scenes, args.seed + 2),
    }
    meta = {"seed": args.seed, "variants": args.variants, "held_out_categories": held, "stamps": stamps,
            "train_stamps": train_ids, "heldout_stamps": held_ids,
            "scenes": sets}
    with open(os.path.join(args.out, f"scenes.json.{os.getpid()}"), "w") as f:
        json.dump(meta, f)
    os.replace(os.path.join(args.out, f"scenes.json.{os.getpid()}"), os.path.join(args.out, "scenes.json"))
    enc = CF.Encoder(threads=args.threads)
    cache = StampCache(stamps)
    for name, scenes in sets.items():
        if args.only and name != args.only:
            continue
        for c0 in range(0, len(scenes), args.chunk):
            path = os.path.join(args.out, f"{name}_{c0 // args.chunk:04d}.npy")
            if os.path.exists(path):
                continue
            t = time.time()
            ims = []
            for si in range(c0, min(c0 + args.chunk, len(scenes))):
                for v in range(args.variants):
                    ims.append(render(scenes[si], cache, random.Random(args.seed * 1000003 + si * 17 + v + (0 if name == "train" else 7))))
            tok = enc.tokens(ims).astype(np.float16)  # [scenes*variants, 10, 1280]
            tok = tok.reshape(-1, args.variants, *tok.shape[1:])
            np.save(path + ".tmp.npy", tok)
            os.replace(path + ".tmp.npy", path)
            print(f"{name} chunk {c0 // args.chunk}: {len(ims)} frames in {time.time() - t:.1f} s", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
