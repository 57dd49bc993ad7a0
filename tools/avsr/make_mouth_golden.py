#!/usr/bin/env python3
"""Makes tests/golden/mouth/: the mouth-crop parity goldens (run at development time).

The face is a real photo that ships in a package: scikit-image's `astronaut` (Eileen
Collins, a NASA photo in the public domain; PyPI scikit-image 0.26.0, skimage/data/
astronaut.png), cropped to its head (224x224 at 112,0) and shrunk to 160x160 with FFmpeg's
area filter: tests/golden/mouth/astronaut.ppm. Clips are made from it by placing nearest-
neighbour scaled copies on a grey canvas (integer arithmetic, so encoders/tests/
mouth_parity.rs builds the very same frames), moving and growing, partly out of frame, with
blank frames, a second smaller face, and a frame-size change.

Detections come from ONNX Runtime in Python with the decoding in mouth_reference.py; the
crops from the reference tracker. Written: golden.json (clips, detections per input frame,
per-slot outputs) and crops.u8 (the crops of the slots listed in golden.json, 96x96x3
each, in that order).

Usage: make_mouth_golden.py MODEL.onnx [OUT_DIR]
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mouth_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKGROUND = (90, 100, 110)


def read_ppm(path):
    with open(path, "rb") as f:
        data = f.read()
    parts = data.split(maxsplit=4)
    assert parts[0] == b"P6" and parts[3] == b"255"
    w, h = int(parts[1]), int(parts[2])
    return np.frombuffer(parts[4], np.uint8)[: w * h * 3].reshape(h, w, 3)


def compose(photo, width, height, placements):
    """Canvas with nearest-neighbour copies: placement (w, h, x, y), src = (dst - x) * pw // w."""
    ph, pw = photo.shape[:2]
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    for w, h, ox, oy in placements:
        for y in range(max(oy, 0), min(oy + h, height)):
            sy = (y - oy) * ph // h
            xs = np.arange(max(ox, 0), min(ox + w, width))
            if len(xs):
                canvas[y, xs] = photo[sy, (xs - ox) * pw // w]
    return canvas


def clip_moving():
    """30 fps, 320x240: the face grows and moves right, blank frames 10-14, a second smaller
    face at first, and at the end partly out of frame on the right."""
    frames = []
    for i in range(36):
        size = 130 + 2 * i
        x = 20 + 5 * i
        placements = [] if 10 <= i <= 14 else [(size, size, x, 30 - i)]
        if i < 6 and placements:
            placements.append((70, 70, 240, 150))
        if i >= 32:
            placements = [(size, size, 320 - size * 3 // 4, 20)]
        frames.append({"pts": round(i / 30.0 + 0.04, 6), "width": 320, "height": 240, "placements": placements})
    return {"name": "moving", "max_gap": 25, "frames": frames}


def clip_size_change():
    """25 fps: no face for 6 frames (longer than max_gap 4: no-face crops), a face at
    256x192, then the frame grows to 320x240, with a gap of 7 frames (held)."""
    frames = []
    for i in range(26):
        if i < 12:
            w, h = 256, 192
            placements = [] if i < 6 else [(120, 120, 60 + 2 * i, 30)]
        else:
            w, h = 320, 240
            placements = [] if 15 <= i <= 21 else [(150, 150, 80 + 3 * i, 40)]
        frames.append({"pts": round(i / 25.0, 6), "width": w, "height": h, "placements": placements})
    return {"name": "size_change", "max_gap": 4, "frames": frames}


def main():
    model = sys.argv[1]
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "golden", "mouth")
    photo = read_ppm(os.path.join(out_dir, "astronaut.ppm"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, opts)
    golden = {"photo": "astronaut.ppm", "background": BACKGROUND, "clips": []}
    crops = []
    for clip in (clip_moving(), clip_size_change()):
        frames = [compose(photo, f["width"], f["height"], f["placements"]) for f in clip["frames"]]
        pts = [f["pts"] for f in clip["frames"]]
        dets = [ref.detect(session, fr) for fr in frames]
        by_id = {id(fr): d for fr, d in zip(frames, dets)}
        slots = ref.track(frames, pts, lambda fr: by_id[id(fr)], clip["max_gap"])
        stored = []
        for k, s in enumerate(slots):
            if k % 7 == 3 or k == len(slots) - 1 or not s["face"]:
                stored.append(k)
        # Keep few crops: one no-face crop.
        no_face = [k for k in stored if not slots[k]["face"]]
        stored = sorted(set(k for k in stored if slots[k]["face"]) | set(no_face[:1]))
        clip["detections"] = [
            [{"score": f["score"], "box": f["box"].tolist(), "keypoints": f["keypoints"].tolist()} for f in d]
            for d in dets
        ]
        clip["slots"] = [
            {
                "pts": s["pts"],
                "face": s["face"],
                "landmarks": None if s["landmarks"] is None else s["landmarks"].tolist(),
                "crop_mean": float(s["crop"].astype(np.float64).mean()),
                "crop_index": (len(crops) + stored.index(k)) if k in stored else None,
            }
            for k, s in enumerate(slots)
        ]
        stored_crops = [slots[k]["crop"] for k in stored]
        lip = ref.lip_input(stored_crops)
        clip["lip_input"] = {
            "mean": float(lip.mean()),
            "std": float(lip.std()),
            "samples": [[int(t), int(y), int(x), float(lip[t, y, x])] for t, y, x in
                        [(0, 0, 0), (0, 44, 44), (len(stored) - 1, 87, 87), (len(stored) // 2, 60, 30)]],
        }
        crops.extend(stored_crops)
        golden["clips"].append(clip)
        n_face = sum(s["face"] for s in slots)
        print(f"{clip['name']}: {len(frames)} frames -> {len(slots)} slots, {n_face} with a face, "
              f"{sum(1 for d in dets if d)} frames detected, {len(stored)} crops stored")
    with open(os.path.join(out_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    np.stack(crops).astype(np.uint8).tofile(os.path.join(out_dir, "crops.u8"))


if __name__ == "__main__":
    main()
