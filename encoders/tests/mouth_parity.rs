//! Mouth crops against the numpy reference (tools/avsr/mouth_reference.py, goldens in
//! tests/golden/mouth from tools/avsr/make_mouth_golden.py) on clips made from a real face
//! photo (scikit-image's public-domain `astronaut`): the face moving and growing, a second
//! smaller face, blank frames, partly out of frame, 30 fps resampled to 25, a leading gap
//! longer than `max_gap`, a long gap held, and a frame-size change.
//!
//! Tolerances: the detector runs the same ONNX model through the same ONNX Runtime as the
//! reference, and the letterbox is the same f64 arithmetic, so boxes and keypoints agree to
//! well under a hundredth of a pixel. Given the reference's detections, the crops are the
//! same bilinear sums rounded to bytes: a pixel may differ by one level where a sum lands on
//! .5 after different float rounding, nowhere by more. With our own detections, keypoints
//! differ by ~1e-4 px, which moves a crop by far less than a pixel: mean difference under
//! 0.05 levels, any pixel within 2.

use std::path::PathBuf;

use avlm_encoders::face::{Face, FaceDetector};
use avlm_encoders::mouth::{lip_input, MouthConfig, MouthCrop, MouthTracker, CROP};
use avlm_encoders::{runtime, EncoderError, Frame};
use serde_json::Value;

mod common;
use common::root;

fn dir() -> PathBuf {
    root().join("tests/golden/mouth")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap()
}

fn photo() -> (usize, usize, Vec<u8>) {
    let bytes = std::fs::read(dir().join("astronaut.ppm")).unwrap();
    // "P6\n160 160\n255\n" then packed RGB.
    let mut fields = Vec::new();
    let mut pos = 0;
    while fields.len() < 4 {
        while bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while !bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        fields.push(String::from_utf8_lossy(&bytes[start..pos]).to_string());
    }
    assert_eq!(fields[0], "P6");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let data = bytes[pos + 1..pos + 1 + w * h * 3].to_vec();
    (w, h, data)
}

/// The clip's frames, composed exactly as make_mouth_golden.py composes them.
fn frames(clip: &Value, background: [u8; 3]) -> Vec<Frame> {
    let (pw, ph, photo) = photo();
    clip["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let (w, h) = (
                f["width"].as_u64().unwrap() as i64,
                f["height"].as_u64().unwrap() as i64,
            );
            let mut data: Vec<u8> = (0..w * h).flat_map(|_| background).collect();
            for p in f["placements"].as_array().unwrap() {
                let v: Vec<i64> = p
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect();
                let (sw, sh, ox, oy) = (v[0], v[1], v[2], v[3]);
                for y in oy.max(0)..(oy + sh).min(h) {
                    let sy = ((y - oy) * ph as i64 / sh) as usize;
                    for x in ox.max(0)..(ox + sw).min(w) {
                        let sx = ((x - ox) * pw as i64 / sw) as usize;
                        let d = ((y * w + x) * 3) as usize;
                        let s = (sy * pw + sx) * 3;
                        data[d..d + 3].copy_from_slice(&photo[s..s + 3]);
                    }
                }
            }
            Frame {
                width: w as u32,
                height: h as u32,
                stride: w as usize * 3,
                data,
                pts_s: f["pts"].as_f64().unwrap(),
            }
        })
        .collect()
}

fn background(g: &Value) -> [u8; 3] {
    let b: Vec<u8> = g["background"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    [b[0], b[1], b[2]]
}

fn golden_faces(clip: &Value, index: usize) -> Vec<Face> {
    clip["detections"][index]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let f = |v: &Value| v.as_f64().unwrap() as f32;
            let b: Vec<f32> = d["box"].as_array().unwrap().iter().map(f).collect();
            let mut keypoints = [[0.0f32; 2]; 6];
            for (k, kp) in d["keypoints"].as_array().unwrap().iter().enumerate() {
                keypoints[k] = [f(&kp[0]), f(&kp[1])];
            }
            Face {
                xmin: b[0],
                ymin: b[1],
                xmax: b[2],
                ymax: b[3],
                score: f(&d["score"]),
                keypoints,
            }
        })
        .collect()
}

fn config(clip: &Value) -> MouthConfig {
    MouthConfig {
        max_gap: clip["max_gap"].as_u64().unwrap() as usize,
        ..MouthConfig::default()
    }
}

fn detector() -> FaceDetector {
    runtime::init(&root().join(".avlm/lib/libonnxruntime.so.1.31.1"))
        .expect("ONNX Runtime (run tools/setup.sh)");
    FaceDetector::load(
        &root().join(".avlm/models/face_detection_back_256x256.onnx"),
        1,
    )
    .expect("BlazeFace (run tools/setup.sh)")
}

/// Runs a tracker over a clip, checking that no crop comes later than the
/// stated bound; returns every crop.
fn track<D>(frames: &[Frame], config: MouthConfig, mut detect: D) -> Vec<MouthCrop>
where
    D: FnMut(&Frame) -> Result<Vec<Face>, EncoderError>,
{
    let bound = (config.max_gap + config.window_margin + 2) as f64 / config.fps;
    let mut tracker = MouthTracker::new(config);
    let mut out = Vec::new();
    for f in frames {
        for c in tracker.push_with(f, &mut detect).unwrap() {
            assert!(
                f.pts_s - c.pts_s <= bound,
                "crop at {} came out at {}",
                c.pts_s,
                f.pts_s
            );
            out.push(c);
        }
    }
    out.extend(tracker.finish());
    out
}

struct Diff {
    mean: f64,
    max: i32,
}

fn compare(ours: &[u8], theirs: &[u8]) -> Diff {
    assert_eq!(ours.len(), theirs.len());
    let d: Vec<i32> = ours
        .iter()
        .zip(theirs)
        .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
        .collect();
    Diff {
        mean: d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64,
        max: d.into_iter().max().unwrap_or(0),
    }
}

fn check_crops(clip: &Value, crops: &[MouthCrop], mean_tol: f64, max_tol: i32) {
    let name = clip["name"].as_str().unwrap();
    let stored = std::fs::read(dir().join("crops.u8")).unwrap();
    let slots = clip["slots"].as_array().unwrap();
    assert_eq!(crops.len(), slots.len(), "{name}: crops");
    let (mut worst_mean, mut worst_max) = (0.0f64, 0);
    for (k, (c, s)) in crops.iter().zip(slots).enumerate() {
        assert!(
            (c.pts_s - s["pts"].as_f64().unwrap()).abs() < 1e-9,
            "{name} slot {k}: pts {} vs {}",
            c.pts_s,
            s["pts"]
        );
        assert_eq!(
            c.face,
            s["face"].as_bool().unwrap(),
            "{name} slot {k}: face"
        );
        assert_eq!(c.rgb.len(), CROP * CROP * 3);
        let mean = c.rgb.iter().map(|&v| f64::from(v)).sum::<f64>() / c.rgb.len() as f64;
        assert!(
            (mean - s["crop_mean"].as_f64().unwrap()).abs() < mean_tol.max(0.01),
            "{name} slot {k}: crop mean {mean} vs {}",
            s["crop_mean"]
        );
        if let Some(i) = s["crop_index"].as_u64() {
            let n = CROP * CROP * 3;
            let theirs = &stored[i as usize * n..(i as usize + 1) * n];
            let d = compare(&c.rgb, theirs);
            worst_mean = worst_mean.max(d.mean);
            worst_max = worst_max.max(d.max);
        }
    }
    println!(
        "{name}: crops vs reference: worst mean abs diff {worst_mean:.5}, worst max {worst_max}"
    );
    assert!(worst_mean < mean_tol, "{name}: mean abs diff {worst_mean}");
    assert!(worst_max <= max_tol, "{name}: max abs diff {worst_max}");
}

#[test]
fn detections_match_onnx_runtime_in_python() {
    let g = golden();
    let mut det = detector();
    let (mut worst_px, mut worst_score) = (0.0f64, 0.0f64);
    for clip in g["clips"].as_array().unwrap() {
        for (i, frame) in frames(clip, background(&g)).iter().enumerate() {
            let ours = det.detect(frame).unwrap();
            let theirs = golden_faces(clip, i);
            assert_eq!(ours.len(), theirs.len(), "frame {i}: face count");
            for (a, b) in ours.iter().zip(&theirs) {
                worst_score = worst_score.max(f64::from((a.score - b.score).abs()));
                let pa = [a.xmin, a.ymin, a.xmax, a.ymax];
                let pb = [b.xmin, b.ymin, b.xmax, b.ymax];
                for (x, y) in pa.iter().zip(&pb) {
                    worst_px = worst_px.max(f64::from((x - y).abs()));
                }
                for (x, y) in a.keypoints.iter().zip(&b.keypoints) {
                    worst_px =
                        worst_px.max(f64::from((x[0] - y[0]).abs().max((x[1] - y[1]).abs())));
                }
            }
        }
    }
    println!(
        "detector vs reference: worst coordinate {worst_px:.2e} px, worst score {worst_score:.2e}"
    );
    assert!(worst_px < 0.01, "coordinates differ by {worst_px} px");
    assert!(worst_score < 1e-4, "scores differ by {worst_score}");
}

#[test]
fn crops_match_the_reference_given_its_detections() {
    let g = golden();
    for clip in g["clips"].as_array().unwrap() {
        let frames = frames(clip, background(&g));
        let pts: Vec<f64> = frames.iter().map(|f| f.pts_s).collect();
        let crops = track(&frames, config(clip), |f| {
            let i = pts.iter().position(|&p| p == f.pts_s).unwrap();
            Ok(golden_faces(clip, i))
        });
        check_crops(clip, &crops, 0.01, 1);
    }
}

#[test]
fn crops_match_the_reference_with_our_detector() {
    let g = golden();
    let mut det = detector();
    for clip in g["clips"].as_array().unwrap() {
        let frames = frames(clip, background(&g));
        let crops = track(&frames, config(clip), |f| det.detect(f));
        check_crops(clip, &crops, 0.05, 2);
    }
}

#[test]
fn lip_input_matches_the_reference() {
    let g = golden();
    let stored = std::fs::read(dir().join("crops.u8")).unwrap();
    let n = CROP * CROP * 3;
    let mut first = 0;
    for clip in g["clips"].as_array().unwrap() {
        let count = clip["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["crop_index"].is_u64())
            .count();
        let crops: Vec<MouthCrop> = (first..first + count)
            .map(|i| MouthCrop {
                pts_s: 0.0,
                face: true,
                rgb: stored[i * n..(i + 1) * n].to_vec(),
                held: false,
            })
            .collect();
        first += count;
        let x = lip_input(&crops);
        assert_eq!(x.len(), count * 88 * 88);
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        let std = (x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / x.len() as f64)
            .sqrt();
        let want = &clip["lip_input"];
        assert!((mean - want["mean"].as_f64().unwrap()).abs() < 1e-5);
        assert!((std - want["std"].as_f64().unwrap()).abs() < 1e-5);
        for s in want["samples"].as_array().unwrap() {
            let (t, y, xx) = (
                s[0].as_u64().unwrap() as usize,
                s[1].as_u64().unwrap() as usize,
                s[2].as_u64().unwrap() as usize,
            );
            let v = x[(t * 88 + y) * 88 + xx];
            assert!(
                (f64::from(v) - s[3].as_f64().unwrap()).abs() < 1e-5,
                "{s}: {v}"
            );
        }
    }
}

#[test]
fn a_stream_without_a_face_gives_centre_crops_without_delay_beyond_the_gap() {
    let frame = |i: usize| Frame {
        width: 64,
        height: 48,
        stride: 64 * 3,
        data: (0..64 * 48)
            .flat_map(|p| [(p % 64 * 4) as u8, 0, 0])
            .collect(),
        pts_s: i as f64 / 25.0,
    };
    let config = MouthConfig {
        max_gap: 3,
        ..MouthConfig::default()
    };
    let mut tracker = MouthTracker::new(config);
    let mut out = Vec::new();
    for i in 0..10 {
        out.extend(tracker.push_with(&frame(i), |_| Ok(Vec::new())).unwrap());
    }
    // Output k waits for input k + 1 (nearest frame), and a faceless gap
    // settles once it is longer than max_gap.
    assert!(
        out.len() >= 10 - 1 - 3,
        "{} crops out after 10 frames",
        out.len()
    );
    out.extend(tracker.finish());
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|c| !c.face));
    // The central 48x48 square, scaled to 96: the red ramp runs from 8*4 to
    // 56*4 across the crop.
    let first_red = out[0].rgb[(48 * CROP) * 3];
    let last_red = out[0].rgb[(48 * CROP + CROP - 1) * 3];
    assert!((30..=36).contains(&first_red), "{first_red}");
    assert!((218..=226).contains(&last_red), "{last_red}");
    let stats = tracker.stats();
    assert_eq!((stats.slots, stats.no_face, stats.detected), (10, 10, 0));
}
