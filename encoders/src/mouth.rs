//! Live mouth crops: auto_avsr's mouth region of interest (its MediaPipe
//! detector path, `preparation/detectors/mediapipe/`) computed as frames
//! arrive, and Llama-AVSR's video transform of the crops.
//!
//! Per frame on a 25 fps grid: the largest face's right eye, left eye, nose
//! tip and mouth keypoints; frames without a face filled from the detections
//! around them; the points smoothed over +-6 frames (auto_avsr's window of 12,
//! shrinking at the ends of a run, re-centred on the frame's own centroid);
//! a least-squares similarity from the smoothed points to the mean face's
//! group means (256x256 reference); the 96x96 window of the warped frame
//! (bilinear, black outside) centred on the warped mouth point.
//!
//! Live, a crop is emitted once the 6 frames after it are settled, and a gap
//! without a face is settled when the next face arrives (interpolated
//! linearly) or when it grows longer than `max_gap` frames: then it holds the
//! last detection, as auto_avsr holds the frames after its last detection. So
//! a crop is at most `max_gap + 7` frames late (1.3 s by default) and the
//! tracker keeps at most that many frames. Before the first detection of a
//! segment, frames wait up to `max_gap` frames for a face (and take it, as
//! auto_avsr does); frames that wait longer, and every frame of a stream with
//! no face at all, become the frame's central square scaled to 96x96, with
//! `face: false`.
//!
//! Frames at any rate are resampled to 25 fps: output time origin + k / 25
//! (origin: the first frame) takes the frame nearest in presentation time,
//! ties to the earlier; a jump forward of more than 1 s restarts the grid. A
//! change of frame size ends a segment (its last frames settle as at the end
//! of a stream) and starts a new one: points of one frame size never mix
//! with another's.
//!
//! On purpose unlike auto_avsr: keypoints keep sub-pixel precision (auto_avsr
//! truncates them to pixels), the largest face is the one with the largest
//! box (auto_avsr's loop keeps the last face), the similarity is the plain
//! least-squares fit (OpenCV's LMEDS estimate refines that fit on its
//! inliers: all four points when they agree), the warp is exact bilinear
//! (OpenCV quantises positions to 1/32 pixel), and the crop window stays
//! 96x96 inside the reference frame where auto_avsr would cut a smaller one.
//! `tools/avsr/mouth_reference.py` is the same math in numpy.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::face::{keypoint, sample, Face, FaceDetector};
use crate::media::Frame;
use crate::EncoderError;

/// Side of a mouth crop.
pub const CROP: usize = 96;
/// Side of the lip encoder's input (the centre of a crop).
pub const LIP_SIZE: usize = 88;
/// Side of auto_avsr's reference frame.
const REFERENCE_SIZE: f64 = 256.0;
/// Group means of auto_avsr's mean face (`preparation/detectors/mediapipe/
/// 20words_mean_face.npy`, 68 x 2 in a 256x256 frame): points 36-41 (right
/// eye), 42-47 (left eye), 31-35 (nose), 48-67 (mouth).
pub const MEAN_FACE: [[f64; 2]; 4] = [
    [102.0739430570659, 94.27230352389712],
    [156.3613054162131, 93.57815605186966],
    [129.00373787023733, 135.90343028603127],
    [129.31337322587925, 157.82299634918854],
];
/// Llama-AVSR's normalisation of grayscale `x / 255`.
const LIP_MEAN: f32 = 0.421;
const LIP_STD: f32 = 0.165;

/// Tracker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MouthConfig {
    /// Output frame rate.
    pub fps: f64,
    /// Smoothing reaches this many frames each side (auto_avsr: 12 / 2).
    pub window_margin: usize,
    /// Longest gap without a face that is interpolated (and waited for).
    pub max_gap: usize,
}

impl Default for MouthConfig {
    fn default() -> Self {
        MouthConfig {
            fps: 25.0,
            window_margin: 6,
            max_gap: 25,
        }
    }
}

/// One 96x96 mouth crop on the output grid.
#[derive(Debug, Clone, PartialEq)]
pub struct MouthCrop {
    /// Output time in seconds of media time.
    pub pts_s: f64,
    /// A face was detected in this frame or filled in from detections
    /// around it; false: no face, the crop is the frame's centre.
    pub face: bool,
    /// Packed RGB, `96 * 96 * 3` bytes.
    pub rgb: Vec<u8>,
    /// No face was found here or after: the crop holds the last detection's
    /// place (a gap longer than `max_gap`, or the end of the stream), as
    /// auto_avsr does; the face may well have left (`face` is true).
    pub held: bool,
}

/// What the tracker has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MouthStats {
    /// Input frames pushed.
    pub frames_in: u64,
    /// Output frames (25 fps slots).
    pub slots: u64,
    /// Crops out whose frame had a face.
    pub detected: u64,
    /// Crops out without a face that took points from detections around them.
    pub filled: u64,
    /// Crops out with no face at all (the frame's centre).
    pub no_face: u64,
    /// Frame-size changes.
    pub size_changes: u64,
}

/// Four points: right eye, left eye, nose tip, mouth.
pub type Points = [[f64; 2]; 4];

/// The least-squares similarity `x' = a x - b y + tx, y' = b x + a y + ty`
/// taking `src` to `dst`, as a 2x3 matrix.
pub fn similarity(src: &Points, dst: &Points) -> [[f64; 3]; 2] {
    let mean = |p: &Points| {
        let mut m = [0.0; 2];
        for q in p {
            m[0] += q[0] / 4.0;
            m[1] += q[1] / 4.0;
        }
        m
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut num_a, mut num_b, mut den) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (px, py) = (s[0] - ms[0], s[1] - ms[1]);
        let (qx, qy) = (d[0] - md[0], d[1] - md[1]);
        num_a += px * qx + py * qy;
        num_b += px * qy - py * qx;
        den += px * px + py * py;
    }
    let (a, b) = if den > 0.0 {
        (num_a / den, num_b / den)
    } else {
        (1.0, 0.0)
    };
    [
        [a, -b, md[0] - (a * ms[0] - b * ms[1])],
        [b, a, md[1] - (b * ms[0] + a * ms[1])],
    ]
}

/// The `w` x `h` window at (`x0`, `y0`) of `frame` warped by `m` (output =
/// m * input), bilinear, black outside, rounded to bytes.
fn warp_window(frame: &Frame, m: &[[f64; 3]; 2], x0: i64, y0: i64, w: usize, h: usize) -> Vec<u8> {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let inv = if det.abs() > 1e-12 {
        [
            [m[1][1] / det, -m[0][1] / det],
            [-m[1][0] / det, m[0][0] / det],
        ]
    } else {
        [[0.0; 2]; 2]
    };
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let dy = (y0 + y as i64) as f64 - m[1][2];
        for x in 0..w {
            let dx = (x0 + x as i64) as f64 - m[0][2];
            let sx = inv[0][0] * dx + inv[0][1] * dy;
            let sy = inv[1][0] * dx + inv[1][1] * dy;
            let v = sample(frame, sx, sy);
            out.extend(v.iter().map(|c| (c + 0.5).floor().clamp(0.0, 255.0) as u8));
        }
    }
    out
}

/// The 96x96 mouth crop of `frame` for smoothed points.
pub fn mouth_crop(frame: &Frame, smoothed: &Points) -> Vec<u8> {
    let m = similarity(smoothed, &MEAN_FACE);
    let p = smoothed[keypoint::MOUTH];
    let mx = m[0][0] * p[0] + m[0][1] * p[1] + m[0][2];
    let my = m[1][0] * p[0] + m[1][1] * p[1] + m[1][2];
    let half = (CROP / 2) as f64;
    let corner = |c: f64| -> i64 {
        let c = (c - half).clamp(0.0, REFERENCE_SIZE).round_ties_even() as i64;
        c.clamp(0, REFERENCE_SIZE as i64 - CROP as i64)
    };
    warp_window(frame, &m, corner(mx), corner(my), CROP, CROP)
}

/// The frame's central square scaled to 96x96 (a frame with no face).
pub fn centre_crop(frame: &Frame) -> Vec<u8> {
    let (w, h) = (f64::from(frame.width), f64::from(frame.height));
    let side = w.min(h).max(1.0);
    let k = CROP as f64 / side;
    let m = [
        [k, 0.0, -(w - side) / 2.0 * k],
        [0.0, k, -(h - side) / 2.0 * k],
    ];
    warp_window(frame, &m, 0, 0, CROP, CROP)
}

/// Llama-AVSR's video transform of mouth crops: `x / 255`, the centre 88x88,
/// grayscale (0.2989 R + 0.587 G + 0.114 B, torchvision's weights),
/// normalised with mean 0.421 and std 0.165: `[T, 88, 88]`, row-major.
pub fn lip_input(crops: &[MouthCrop]) -> Vec<f32> {
    let off = (CROP - LIP_SIZE) / 2;
    let mut out = Vec::with_capacity(crops.len() * LIP_SIZE * LIP_SIZE);
    for crop in crops {
        for y in off..off + LIP_SIZE {
            let row = &crop.rgb[y * CROP * 3..(y + 1) * CROP * 3];
            for x in off..off + LIP_SIZE {
                let [r, g, b] = [0, 1, 2].map(|c| f32::from(row[x * 3 + c]) / 255.0);
                let gray = 0.2989f32 * r + 0.587f32 * g + 0.114f32 * b;
                out.push((gray - LIP_MEAN) / LIP_STD);
            }
        }
    }
    out
}

/// The points auto_avsr aligns, from the largest face.
fn largest_points(faces: &[Face]) -> Option<Points> {
    let mut best: Option<&Face> = None;
    for f in faces {
        if best.is_none_or(|b| f.area() > b.area()) {
            best = Some(f);
        }
    }
    best.map(|f| {
        [
            keypoint::RIGHT_EYE,
            keypoint::LEFT_EYE,
            keypoint::NOSE_TIP,
            keypoint::MOUTH,
        ]
        .map(|k| [f64::from(f.keypoints[k][0]), f64::from(f.keypoints[k][1])])
    })
}

/// One output frame of a segment.
struct Slot {
    pts: f64,
    /// Dropped once the crop is out.
    frame: Option<Arc<Frame>>,
    /// Points once settled: `Some(None)` means no face.
    points: Option<Option<Points>>,
    /// The frame itself had a face.
    detected: bool,
    /// Its points hold the last detection's (no detection came after).
    held: bool,
}

/// A run of slots of one frame size.
struct Segment {
    size: (u32, u32),
    slots: VecDeque<Slot>,
    /// Index (within the segment) of `slots[0]`.
    base: usize,
    /// Slots pushed so far.
    len: usize,
    /// Slots before this index are settled.
    settled: usize,
    /// Slots before this index are emitted.
    emitted: usize,
    /// The last slot with a detection, and its points.
    last_detection: Option<(usize, Points)>,
    /// The first slot with points.
    run_start: Option<usize>,
    ended: bool,
}

impl Segment {
    fn new(size: (u32, u32)) -> Self {
        Segment {
            size,
            slots: VecDeque::new(),
            base: 0,
            len: 0,
            settled: 0,
            emitted: 0,
            last_detection: None,
            run_start: None,
            ended: false,
        }
    }

    fn slot(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i - self.base]
    }

    fn points(&self, i: usize) -> Option<Points> {
        self.slots[i - self.base].points.flatten()
    }

    /// Settles slots `from..to` with `points`.
    fn settle(&mut self, from: usize, to: usize, points: Option<Points>) {
        for i in from..to {
            self.slot(i).points = Some(points);
        }
        if points.is_some() && self.run_start.is_none() && from < to {
            self.run_start = Some(from);
        }
        self.settled = self.settled.max(to);
    }

    /// Settles slots `from..to` holding the last detection's points.
    fn hold(&mut self, from: usize, to: usize) {
        let held = self.last_detection.map(|(_, p)| p);
        for i in from..to {
            self.slot(i).held = held.is_some();
        }
        self.settle(from, to, held);
    }

    fn push(&mut self, pts: f64, frame: Arc<Frame>, detected: Option<Points>, max_gap: usize) {
        let j = self.len;
        self.slots.push_back(Slot {
            pts,
            frame: Some(frame),
            points: None,
            detected: detected.is_some(),
            held: false,
        });
        self.len += 1;
        match detected {
            Some(p) => {
                match self.last_detection {
                    None => self.settle(self.settled, j, Some(p)),
                    Some((d, q)) => {
                        for i in self.settled..j {
                            let t = (i - d) as f64 / (j - d) as f64;
                            let mut v = q;
                            for (v, (a, b)) in v.iter_mut().zip(q.iter().zip(&p)) {
                                v[0] = a[0] + t * (b[0] - a[0]);
                                v[1] = a[1] + t * (b[1] - a[1]);
                            }
                            self.slot(i).points = Some(Some(v));
                        }
                    }
                }
                self.settle(j, j + 1, Some(p));
                self.last_detection = Some((j, p));
            }
            None => {
                // The gap so far (since the last detection or the segment's
                // start), including frames already settled for being in it.
                let gap_start = self.last_detection.map_or(0, |(d, _)| d + 1);
                if j + 1 - gap_start > max_gap {
                    self.hold(self.settled, j + 1);
                }
            }
        }
    }

    fn end(&mut self) {
        self.hold(self.settled, self.len);
        self.ended = true;
    }

    /// Crops that are settled, with their smoothing windows.
    fn emit(&mut self, margin: usize, out: &mut Vec<MouthCrop>, stats: &mut MouthStats) {
        while self.emitted < self.settled {
            let i = self.emitted;
            let crop = match self.points(i) {
                None => {
                    let frame = self.slot(i).frame.take();
                    frame.map(|f| (false, centre_crop(&f)))
                }
                Some(own) => {
                    let r0 = self.run_start.unwrap_or(i);
                    let m = if self.ended {
                        margin.min(i - r0).min(self.len - 1 - i)
                    } else if i + margin < self.settled {
                        margin.min(i - r0)
                    } else {
                        break;
                    };
                    let mut s = [[0.0f64; 2]; 4];
                    let n = (2 * m + 1) as f64;
                    for k in i - m..=i + m {
                        let p = self.points(k).unwrap_or(own);
                        for (s, p) in s.iter_mut().zip(&p) {
                            s[0] += p[0];
                            s[1] += p[1];
                        }
                    }
                    for v in s.iter_mut() {
                        v[0] /= n;
                        v[1] /= n;
                    }
                    let centroid = |p: &Points| {
                        let mut c = [0.0; 2];
                        for q in p {
                            c[0] += q[0];
                            c[1] += q[1];
                        }
                        [c[0] / 4.0, c[1] / 4.0]
                    };
                    let (co, cs) = (centroid(&own), centroid(&s));
                    for v in s.iter_mut() {
                        v[0] += co[0] - cs[0];
                        v[1] += co[1] - cs[1];
                    }
                    let frame = self.slot(i).frame.take();
                    frame.map(|f| (true, mouth_crop(&f, &s)))
                }
            };
            let (pts, detected, held) = {
                let slot = self.slot(i);
                (slot.pts, slot.detected, slot.held)
            };
            if let Some((face, rgb)) = crop {
                match (face, detected) {
                    (false, _) => stats.no_face += 1,
                    (true, true) => stats.detected += 1,
                    (true, false) => stats.filled += 1,
                }
                out.push(MouthCrop {
                    pts_s: pts,
                    face,
                    rgb,
                    held: face && held,
                });
            }
            self.emitted += 1;
        }
        // Keep the points a later smoothing window still reads.
        while self.base + margin < self.emitted && !self.slots.is_empty() {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

/// Streaming mouth crops; the caller owns one per stream.
pub struct MouthTracker {
    config: MouthConfig,
    /// The last input frame, waiting for the next to decide which output
    /// times it is nearest to, and its detection once run.
    pending: Option<(Arc<Frame>, Option<Option<Points>>)>,
    origin: Option<f64>,
    next: u64,
    segment: Option<Segment>,
    stats: MouthStats,
}

impl std::fmt::Debug for MouthTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MouthTracker")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish()
    }
}

impl MouthTracker {
    pub fn new(config: MouthConfig) -> Self {
        MouthTracker {
            config,
            pending: None,
            origin: None,
            next: 0,
            segment: None,
            stats: MouthStats::default(),
        }
    }

    pub fn config(&self) -> &MouthConfig {
        &self.config
    }

    pub fn stats(&self) -> MouthStats {
        self.stats
    }

    /// Takes a decoded frame; returns the crops that are now settled (often
    /// none: they come a few frames late).
    pub fn push(
        &mut self,
        frame: &Frame,
        detector: &mut FaceDetector,
    ) -> Result<Vec<MouthCrop>, EncoderError> {
        self.push_with(frame, |f| detector.detect(f))
    }

    /// [`push`](Self::push) with any face detector (for tests, or faces found
    /// elsewhere).
    pub fn push_with<D>(
        &mut self,
        frame: &Frame,
        mut detect: D,
    ) -> Result<Vec<MouthCrop>, EncoderError>
    where
        D: FnMut(&Frame) -> Result<Vec<Face>, EncoderError>,
    {
        let mut out = Vec::new();
        if !frame.pts_s.is_finite() || frame.width == 0 || frame.height == 0 {
            return Ok(out);
        }
        self.stats.frames_in += 1;
        let period = 1.0 / self.config.fps;
        let pts = frame.pts_s;
        match self.pending.take() {
            None => {
                self.origin = Some(pts);
                self.next = 0;
            }
            Some(prev) => {
                if pts - self.due() > 1.0 {
                    // A jump forward: the last frame takes what is nearest to
                    // it, and the grid restarts here.
                    let limit = prev.0.pts_s + period / 2.0;
                    self.assign(prev, |t| t < limit, &mut detect, &mut out)?;
                    self.origin = Some(pts);
                    self.next = 0;
                } else {
                    let mid = (prev.0.pts_s + pts) / 2.0;
                    self.assign(prev, |t| t <= mid, &mut detect, &mut out)?;
                }
            }
        }
        let frame = Arc::new(frame.clone());
        // A frame that would get an output time even as the last one is
        // detected now, so `finish` needs no detector.
        let detection = if self.due() < pts + period / 2.0 {
            Some(largest_points(&detect(&frame)?))
        } else {
            None
        };
        self.pending = Some((frame, detection));
        Ok(out)
    }

    /// Ends the stream: the crops still held back.
    pub fn finish(&mut self) -> Vec<MouthCrop> {
        let mut out = Vec::new();
        if let Some(prev) = self.pending.take() {
            let limit = prev.0.pts_s + 0.5 / self.config.fps;
            // Detected already when any output time is due (see `push_with`).
            let mut none = |_: &Frame| Ok(Vec::new());
            let _ = self.assign(prev, |t| t < limit, &mut none, &mut out);
        }
        if let Some(mut seg) = self.segment.take() {
            seg.end();
            seg.emit(self.config.window_margin, &mut out, &mut self.stats);
        }
        self.origin = None;
        out
    }

    fn due(&self) -> f64 {
        self.origin.unwrap_or(0.0) + self.next as f64 / self.config.fps
    }

    /// Gives `frame` the output times from the next one while `takes` holds.
    fn assign<D>(
        &mut self,
        (frame, mut detection): (Arc<Frame>, Option<Option<Points>>),
        takes: impl Fn(f64) -> bool,
        detect: &mut D,
        out: &mut Vec<MouthCrop>,
    ) -> Result<(), EncoderError>
    where
        D: FnMut(&Frame) -> Result<Vec<Face>, EncoderError>,
    {
        while takes(self.due()) {
            let pts = self.due();
            self.next += 1;
            let points = match detection {
                Some(p) => p,
                None => {
                    let p = largest_points(&detect(&frame)?);
                    detection = Some(p);
                    p
                }
            };
            self.slot(pts, frame.clone(), points, out);
        }
        Ok(())
    }

    fn slot(
        &mut self,
        pts: f64,
        frame: Arc<Frame>,
        points: Option<Points>,
        out: &mut Vec<MouthCrop>,
    ) {
        let size = (frame.width, frame.height);
        let margin = self.config.window_margin;
        if let Some(seg) = self.segment.as_mut() {
            if seg.size != size {
                seg.end();
                seg.emit(margin, out, &mut self.stats);
                self.segment = None;
                self.stats.size_changes += 1;
            }
        }
        let seg = self.segment.get_or_insert_with(|| Segment::new(size));
        seg.push(pts, frame, points, self.config.max_gap);
        self.stats.slots += 1;
        seg.emit(margin, out, &mut self.stats);
    }
}
