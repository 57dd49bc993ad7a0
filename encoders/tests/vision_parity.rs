//! The vision front end against Pillow (tests/golden/vision/frontend, from
//! tools/vision/make_frontend_golden.py), and the EfficientNet-Lite2 encoder
//! (converted by tools/vision/efficientnet_to_onnx.py) through our ONNX
//! Runtime session against PyTorch's outputs (tests/golden/vision/efficientnet_lite2).

use avlm_encoders::{runtime, Frame, VisionEncoder, VisionPreprocess};
use serde_json::Value;

mod common;
use common::{read_f32, root};

const IMAGENET: VisionPreprocess = VisionPreprocess {
    size: 260,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

fn rgb_frame(data: Vec<u8>, width: u32, height: u32) -> Frame {
    Frame {
        width,
        height,
        stride: width as usize * 3,
        data,
        pts_s: 0.0,
    }
}

#[test]
fn resizing_matches_pillow_bicubic_within_one_level() {
    let dir = root().join("tests/golden/vision/frontend");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    for f in meta["frames"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let (w, h) = (
            f["width"].as_u64().unwrap() as u32,
            f["height"].as_u64().unwrap() as u32,
        );
        let frame = rgb_frame(
            std::fs::read(dir.join(format!("{name}.rgb"))).unwrap(),
            w,
            h,
        );
        let ours = IMAGENET.resize(&frame);
        assert_eq!(
            (ours.width as u64, ours.height as u64),
            (
                f["resized_width"].as_u64().unwrap(),
                f["resized_height"].as_u64().unwrap()
            ),
            "{name}"
        );
        let theirs = std::fs::read(dir.join(format!("{name}.resized.rgb"))).unwrap();
        assert_eq!(ours.data.len(), theirs.len());
        let off: Vec<i32> = ours
            .data
            .iter()
            .zip(&theirs)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .collect();
        let worst = off.iter().max().copied().unwrap_or(0);
        let exact = off.iter().filter(|&&d| d == 0).count() as f64 / off.len() as f64;
        assert!(
            worst <= 1,
            "{name}: a value is {worst} levels from Pillow's"
        );
        assert!(
            exact > 0.99,
            "{name}: only {exact:.4} of values equal Pillow's"
        );
    }
}

#[test]
fn efficientnet_lite2_matches_pytorch() {
    runtime::init(&root().join(".avlm/lib/libonnxruntime.so.1.31.1"))
        .expect("ONNX Runtime (run tools/setup.sh)");
    let mut encoder = VisionEncoder::load(&root().join(".avlm/models/efficientnet-lite2.onnx"), 2)
        .expect("vision encoder (run tools/setup.sh)");
    assert_eq!(
        (encoder.size(), encoder.patches(), encoder.dim()),
        (260, 81, 1280)
    );
    assert!(encoder.has_pooled());
    let dir = root().join("tests/golden/vision/efficientnet_lite2");
    let input = read_f32(&dir.join("input.bin"));
    let out = encoder.encode(&input).unwrap();
    assert_eq!(out.grid, (9, 9));
    let worst = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let patches = worst(&out.patches, &read_f32(&dir.join("patches.bin")));
    let pooled = worst(
        out.pooled.as_deref().unwrap(),
        &read_f32(&dir.join("pooled.bin")),
    );
    assert!(patches < 1e-4, "patches differ by {patches}");
    assert!(pooled < 1e-4, "pooled differs by {pooled}");
    // A wrongly sized input is refused, not run.
    assert!(encoder.encode(&input[..100]).is_err());
}
