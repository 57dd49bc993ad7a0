"""Golden outputs of the vision front end and token layouts, from the reference libraries.

Writes tests/golden/vision/frontend/: two frames (a real Tux Paint photo stamp composited on a
gradient, landscape and shrunk; a small portrait picture, enlarged) resized by Pillow's
`Image.resize(..., Image.BICUBIC)` so the longest side is 260, as the default captioner was
trained; PyTorch's `adaptive_avg_pool2d` of patch grids (divisible and not); and Idefics3's
pixel shuffle (the view / permute / reshape sequence of transformers' `Idefics3Connector`).

Needs numpy, Pillow and torch (not the project venv: any environment with them), and the
`tuxpaint-stamps-default` files (`apt-get download` + `dpkg-deb -x`):

    python tools/vision/make_frontend_golden.py STAMPS_DIR [OUT_DIR]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 260


def resized(img: Image.Image) -> Image.Image:
    w, h = img.size
    longest = max(w, h)
    nw = max(1, round(w * SIZE / longest)) if w < longest else SIZE
    nh = max(1, round(h * SIZE / longest)) if h < longest else SIZE
    return img.resize((nw, nh), Image.BICUBIC)


def idefics3_pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    bsz, seq, dim = x.size()
    height = width = int(seq**0.5)
    x = x.view(bsz, height, width, dim)
    x = x.view(bsz, height, int(width / scale), dim * scale)
    x = x.permute(0, 2, 1, 3)
    x = x.reshape(bsz, int(width / scale), int(height / scale), dim * (scale**2))
    x = x.permute(0, 2, 1, 3)
    return x.reshape(bsz, int(seq / (scale**2)), dim * (scale**2))


def main() -> None:
    stamps = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("tests/golden/vision/frontend")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    meta = {"what": __doc__.split("\n\n")[0], "size": SIZE, "frames": [], "pools": [], "shuffles": []}

    # A landscape frame: a photo stamp on a colour gradient, 320x180, shrunk to 260x146.
    stamp_path = stamps / "animals/mammals/cats/tiger.png"
    stamp = Image.open(stamp_path).convert("RGBA")
    stamp.thumbnail((150, 150), Image.BICUBIC)
    gx = np.linspace(0, 255, 320)[None, :, None]
    gy = np.linspace(40, 200, 180)[:, None, None]
    bg = np.concatenate([gx + 0 * gy, gy + 0 * gx, (255 - gx) * 0.5 + 0 * gy], axis=2)
    bg = Image.fromarray(np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8))
    bg.paste(stamp, (120, 20), stamp)
    # A small portrait frame of noise and shapes, 90x150, enlarged to 156x260.
    small = rng.integers(0, 256, (150, 90, 3), dtype=np.uint8)
    small[40:90, 20:70] = [250, 30, 30]
    frames = [("landscape", bg), ("portrait", Image.fromarray(small))]
    for name, img in frames:
        r = resized(img)
        (out / f"{name}.rgb").write_bytes(np.asarray(img, dtype=np.uint8).tobytes())
        (out / f"{name}.resized.rgb").write_bytes(np.asarray(r, dtype=np.uint8).tobytes())
        meta["frames"].append(
            {"name": name, "width": img.size[0], "height": img.size[1],
             "resized_width": r.size[0], "resized_height": r.size[1]}
        )

    for grid, pooled_to, dim in [((9, 9), 3, 8), ((7, 5), 3, 4), ((24, 24), 3, 6)]:
        x = rng.normal(size=(grid[0] * grid[1], dim)).astype(np.float32)
        t = torch.from_numpy(x).T.reshape(1, dim, grid[0], grid[1])
        y = torch.nn.functional.adaptive_avg_pool2d(t, pooled_to)  # [1, dim, g, g]
        y = y.reshape(dim, -1).T.contiguous().numpy()
        name = f"pool_{grid[0]}x{grid[1]}_to_{pooled_to}"
        (out / f"{name}.in.bin").write_bytes(x.astype("<f4").tobytes())
        (out / f"{name}.out.bin").write_bytes(y.astype("<f4").tobytes())
        meta["pools"].append({"name": name, "grid": grid, "dim": dim, "out": pooled_to})

    for side, factor, dim in [(8, 4, 3), (8, 2, 5), (32, 4, 2)]:
        x = rng.normal(size=(side * side, dim)).astype(np.float32)
        y = idefics3_pixel_shuffle(torch.from_numpy(x)[None], factor)[0].numpy()
        name = f"shuffle_{side}_f{factor}"
        (out / f"{name}.in.bin").write_bytes(x.astype("<f4").tobytes())
        (out / f"{name}.out.bin").write_bytes(y.astype("<f4").tobytes())
        meta["shuffles"].append({"name": name, "side": side, "dim": dim, "factor": factor})

    meta["stamp"] = str(stamp_path.relative_to(stamps))
    meta["tolerance"] = {
        "resize": "every 8-bit value within 1 level of Pillow (its weights are fixed point)",
        "pool": 1e-5,
        "shuffle": 0.0,
    }
    (out / "golden.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
