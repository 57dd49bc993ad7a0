#!/usr/bin/env python3
"""Reference (numpy only) of avlm's mouth region of interest: BlazeFace decoding and
auto_avsr's mouth crop, the same math as encoders/src/face.rs and encoders/src/mouth.rs.

Face detection (MediaPipe's face detection graph, as its calculators define it):
  * input: the frame letterboxed into a size x size square (aspect kept, centred, black
    around), bilinear sampling with pixel centres aligned, values x / 127.5 - 1, NHWC;
  * anchors: SSD anchors with fixed size 1: a 16x16 grid with 2 anchors a cell, then an
    8x8 grid with 6 (the three stride-32 layers of the back model, or stride-16 of the
    front model, share one grid); centres (x + 0.5) / grid, row-major, anchors innermost;
  * decoding: raw scores clipped to +-100, sigmoid, kept when >= min_score; box
    (x, y, w, h) and 6 keypoints (x, y) divided by the input size, centres and keypoints
    offset by the anchor centre;
  * weighted NMS: by decreasing score, a detection and every remaining one whose IoU with
    it is above 0.3 are averaged (box corners and keypoints weighted by score), keeping the
    top score;
  * mapping back through the letterbox to frame pixels.

Mouth crop (auto_avsr preparation/detectors/mediapipe): the largest face's keypoints
right eye, left eye, nose tip, mouth centre; gaps without a face filled (linear
interpolation between detections; before the first and after the last detection, the
nearest detection; gaps longer than max_gap frames hold the previous detection, or are
"no face" before any detection); smoothing: mean over +-6 frames (window shrinking at the
ends of a run), re-centred on the frame's own centroid; a least-squares similarity from the
4 smoothed points to the mean face's group means; the frame warped into the 256x256
reference frame (bilinear, black outside), and the 96x96 window centred on the mouth point,
its corners rounded half to even as numpy rounds. Frames with no face: the frame's central
square scaled to 96x96, flagged face=False.

Differences from auto_avsr on purpose: keypoints keep sub-pixel precision (auto_avsr
truncates them to integer pixels), the largest face is picked by box area (auto_avsr's loop
resets its maximum each iteration and keeps the last face), the similarity is the plain
least-squares one (cv2.estimateAffinePartial2D with LMEDS refines the same least-squares
fit on its inliers; with 4 consistent points all are inliers), and the warp is exact
bilinear (OpenCV quantises sub-pixel positions to 1/32).

Frames at any rate are resampled to 25 fps: output times origin + k / 25 take the input
frame nearest in presentation time (ties to the earlier one). A change of frame size ends
a segment: its last frames are settled as at the end of a stream and a new one starts.
"""

import numpy as np

MEAN_FACE_POINTS = np.array(
    [
        # Group means of auto_avsr's preparation/detectors/mediapipe/20words_mean_face.npy
        # (68 x 2, float64, 256x256 reference): points 36-41 (right eye), 42-47 (left eye),
        # 31-35 (nose), 48-67 (mouth).
        [102.0739430570659, 94.27230352389712],
        [156.3613054162131, 93.57815605186966],
        [129.00373787023733, 135.90343028603127],
        [129.31337322587925, 157.82299634918854],
    ]
)
REFERENCE_SIZE = 256
CROP = 96
WINDOW_MARGIN = 6  # auto_avsr window_margin 12 // 2
FPS = 25.0
MIN_SCORE = 0.5
NMS_IOU = 0.3
SCORE_CLIP = 100.0


# ---------------------------------------------------------------------------- detector

def anchors():
    out = []
    for grid, per_cell in ((16, 2), (8, 6)):
        for y in range(grid):
            for x in range(grid):
                for _ in range(per_cell):
                    out.append(((x + 0.5) / grid, (y + 0.5) / grid))
    return np.array(out, dtype=np.float64)


def bilinear(img, xs, ys):
    """Samples img (H, W, C) at float coordinates (pixel-index units); taps outside are 0."""
    h, w = img.shape[:2]
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    fx = xs - x0
    fy = ys - y0
    out = np.zeros(xs.shape + (img.shape[2],), dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi = x0 + dx
            yi = y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            vals = np.zeros(xs.shape + (img.shape[2],), dtype=np.float64)
            vals[ok] = img[yi[ok], xi[ok]]
            out += vals * (wx * wy)[..., None]
    return out


def letterbox(frame, size):
    """The model input [1, size, size, 3] and (scale, pad_x, pad_y)."""
    h, w = frame.shape[:2]
    scale = size / max(w, h)
    pad_x = (size - w * scale) / 2.0
    pad_y = (size - h * scale) / 2.0
    u = np.arange(size, dtype=np.float64)
    xs = (u + 0.5 - pad_x) / scale - 0.5
    ys = (u + 0.5 - pad_y) / scale - 0.5
    gx, gy = np.meshgrid(xs, ys)
    rgb = bilinear(frame.astype(np.float64), gx, gy)
    return (rgb / 127.5 - 1.0).astype(np.float32)[None], (scale, pad_x, pad_y)


def decode(scores, boxes, size, min_score=MIN_SCORE):
    """Raw outputs (896,), (896, 16) -> list of (score, [x0, y0, x1, y1], kps (6, 2)) in
    normalised input coordinates."""
    anc = anchors()
    s = 1.0 / (1.0 + np.exp(-np.clip(scores.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
    out = []
    for i in np.nonzero(s >= min_score)[0]:
        b = boxes[i].astype(np.float64)
        cx = b[0] / size + anc[i, 0]
        cy = b[1] / size + anc[i, 1]
        w = b[2] / size
        h = b[3] / size
        if w <= 0 or h <= 0:
            continue
        kps = b[4:16].reshape(6, 2) / size + anc[i]
        out.append((s[i], np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), kps))
    return out


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def weighted_nms(dets, threshold=NMS_IOU):
    order = sorted(range(len(dets)), key=lambda i: (-dets[i][0], i))
    out = []
    while order:
        top = dets[order[0]]
        near = [i for i in order if iou(dets[i][1], top[1]) > threshold]
        rest = [i for i in order if iou(dets[i][1], top[1]) <= threshold]
        total = sum(dets[i][0] for i in near)
        box = sum(dets[i][1] * dets[i][0] for i in near) / total
        kps = sum(dets[i][2] * dets[i][0] for i in near) / total
        out.append((top[0], box, kps))
        if len(rest) == len(order):
            break
        order = rest
    return out


def detect(session, frame, min_score=MIN_SCORE):
    """Faces in frame pixels: dicts with score, box [x0, y0, x1, y1], keypoints (6, 2)."""
    size = session.get_inputs()[0].shape[1]
    x, (scale, pad_x, pad_y) = letterbox(frame, size)
    outs = session.run(None, {session.get_inputs()[0].name: x})
    by_name = {o.name: v for o, v in zip(session.get_outputs(), outs)}
    # Identity:0 / Identity_2:0: the 16x16 grid (512 anchors); Identity_1:0 / Identity_3:0: 8x8.
    scores = np.concatenate([by_name["Identity:0"][0, :, 0], by_name["Identity_1:0"][0, :, 0]])
    boxes = np.concatenate([by_name["Identity_2:0"][0], by_name["Identity_3:0"][0]])
    faces = []
    for score, box, kps in weighted_nms(decode(scores, boxes, size, min_score)):
        to_px = lambda pts: (pts * size - np.array([pad_x, pad_y])) / scale
        b = to_px(box.reshape(2, 2)).reshape(4)
        faces.append({"score": float(score), "box": b, "keypoints": to_px(kps)})
    return faces


def largest(faces):
    best = None
    for f in faces:
        area = (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])
        if best is None or area > best[0]:
            best = (area, f)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------- geometry

def similarity(src, dst):
    """Least-squares x' = a x - b y + tx, y' = b x + a y + ty; returns the 2x3 matrix."""
    ps = src - src.mean(axis=0)
    qs = dst - dst.mean(axis=0)
    den = (ps ** 2).sum()
    a = (ps[:, 0] * qs[:, 0] + ps[:, 1] * qs[:, 1]).sum() / den
    b = (ps[:, 0] * qs[:, 1] - ps[:, 1] * qs[:, 0]).sum() / den
    m = np.array([[a, -b, 0.0], [b, a, 0.0]])
    m[:, 2] = dst.mean(axis=0) - m[:, :2] @ src.mean(axis=0)
    return m


def warp_window(frame, m, x0, y0, w, h):
    """Pixels (x0..x0+w, y0..y0+h) of the frame warped by the 2x3 matrix m (dst = m src)."""
    a = m[:, :2]
    inv = np.linalg.inv(a)
    t = m[:, 2]
    X, Y = np.meshgrid(np.arange(x0, x0 + w, dtype=np.float64), np.arange(y0, y0 + h, dtype=np.float64))
    dx = X - t[0]
    dy = Y - t[1]
    sx = inv[0, 0] * dx + inv[0, 1] * dy
    sy = inv[1, 0] * dx + inv[1, 1] * dy
    v = bilinear(frame.astype(np.float64), sx, sy)
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)


def mouth_crop(frame, smoothed):
    """The 96x96 crop of frame for smoothed landmarks (4, 2); returns (crop, matrix, corner)."""
    m = similarity(smoothed, MEAN_FACE_POINTS)
    mouth = m[:, :2] @ smoothed[3] + m[:, 2]
    half = CROP // 2
    x0 = int(np.round(np.clip(mouth[0] - half, 0, REFERENCE_SIZE)))
    y0 = int(np.round(np.clip(mouth[1] - half, 0, REFERENCE_SIZE)))
    # auto_avsr cuts a smaller patch at the border; keep 96x96 by moving the window inside.
    x0 = min(max(x0, 0), REFERENCE_SIZE - CROP)
    y0 = min(max(y0, 0), REFERENCE_SIZE - CROP)
    return warp_window(frame, m, x0, y0, CROP, CROP), m, (x0, y0)


def centre_crop(frame):
    h, w = frame.shape[:2]
    side = min(w, h)
    k = CROP / side
    m = np.array([[k, 0.0, -(w - side) / 2.0 * k], [0.0, k, -(h - side) / 2.0 * k]])
    return warp_window(frame, m, 0, 0, CROP, CROP)


def fill_gaps(dets, max_gap):
    """Per-frame landmarks (4, 2) or None -> filled landmarks and a face flag per frame."""
    n = len(dets)
    filled = [None] * n
    known = [i for i, d in enumerate(dets) if d is not None]
    if not known:
        return filled
    first = known[0]
    if first <= max_gap:
        for i in range(first):
            filled[i] = dets[first]
    for a, b in zip(known, known[1:] + [None]):
        filled[a] = dets[a]
        end = n if b is None else b
        gap = end - a - 1
        for i in range(a + 1, end):
            if b is None or gap > max_gap:
                filled[i] = dets[a]
            else:
                filled[i] = dets[a] + (i - a) / float(b - a) * (dets[b] - dets[a])
    return filled


def smooth(run):
    """auto_avsr's smoothing over one run of landmarks (list of (4, 2))."""
    n = len(run)
    out = []
    for i in range(n):
        m = min(WINDOW_MARGIN, i, n - 1 - i)
        s = np.mean(np.stack(run[i - m:i + m + 1]), axis=0)
        s = s + (run[i].mean(axis=0) - s.mean(axis=0))
        out.append(s)
    return out


def resample(pts):
    """Indices of input frames (by presentation time) picked for each 25 fps slot, and the
    slot times. A jump forward of more than 1 s restarts the grid at the new frame."""
    period = 1.0 / FPS
    picks = []
    origin = pts[0]
    k = 0
    for i in range(len(pts)):
        if i + 1 < len(pts):
            nxt = pts[i + 1]
            if nxt - (origin + k * period) > 1.0:
                limit = pts[i] + period / 2.0
                while origin + k * period < limit:
                    picks.append((origin + k * period, i))
                    k += 1
                origin, k = nxt, 0
                continue
            mid = (pts[i] + nxt) / 2.0
            while origin + k * period <= mid:
                picks.append((origin + k * period, i))
                k += 1
        else:
            while origin + k * period < pts[i] + period / 2.0:
                picks.append((origin + k * period, i))
                k += 1
    return picks


def track(frames, pts, detect_fn, max_gap=25):
    """Whole-stream reference of MouthTracker: returns a list of dicts (pts, face, crop,
    landmarks or None)."""
    picks = resample(pts)
    slots = []
    cache = {}
    for t, i in picks:
        if i not in cache:
            f = largest(detect_fn(frames[i]))
            cache[i] = None if f is None else f["keypoints"][:4].astype(np.float64)
        slots.append((t, i, cache[i]))
    # Segments: runs of slots whose frames share a size.
    out = []
    start = 0
    while start < len(slots):
        shape = frames[slots[start][1]].shape
        end = start
        while end < len(slots) and frames[slots[end][1]].shape == shape:
            end += 1
        seg = slots[start:end]
        filled = fill_gaps([s[2] for s in seg], max_gap)
        face_idx = [i for i, f in enumerate(filled) if f is not None]
        smoothed = {}
        if face_idx:
            run0 = face_idx[0]
            for j, s in enumerate(smooth(filled[run0:])):
                smoothed[run0 + j] = s
        for j, (t, i, _) in enumerate(seg):
            if j in smoothed:
                crop, m, corner = mouth_crop(frames[i], smoothed[j])
                out.append({"pts": t, "face": True, "crop": crop, "landmarks": smoothed[j], "matrix": m})
            else:
                out.append({"pts": t, "face": False, "crop": centre_crop(frames[i]), "landmarks": None, "matrix": None})
        start = end
    return out


def lip_input(crops):
    """Llama-AVSR's video transform: x / 255, centre crop 88, grayscale (0.2989, 0.587,
    0.114), normalise (0.421, 0.165) -> [T, 88, 88] float32."""
    x = np.stack(crops).astype(np.float32) / 255.0
    x = x[:, 4:92, 4:92, :]
    g = 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return ((g - 0.421) / 0.165).astype(np.float32)
