//! The lip encoder (AV-HuBERT's video path, built as ONNX by
//! tools/avsr/avhubert_onnx.py) through our ONNX Runtime session against
//! PyTorch's features (tests/golden/avhubert, from
//! tools/avsr/make_avhubert_golden.py). The goldens carry a seed rather than
//! the 11M ResNet weights, so each model is built here into the test's
//! temporary folder by the project venv's Python (numpy + onnx).

use std::path::PathBuf;
use std::process::Command;

use avlm_encoders::{runtime, EncoderError, LipEncoder};
use serde_json::Value;

mod common;
use common::{read_f32, root};

fn init() {
    runtime::init(&root().join(".avlm/lib/libonnxruntime.so.1.31.1"))
        .expect("ONNX Runtime (run tools/setup.sh)");
}

fn json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Builds the golden `name`'s model; returns its path and the golden's metadata.
fn build(name: &str) -> (PathBuf, Value) {
    let dir = root().join("tests/golden/avhubert").join(name);
    let meta = json(dir.join("golden.json"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("avhubert-{name}.onnx"));
    let run = Command::new(root().join(".avlm/venv/bin/python"))
        .arg(root().join("tools/avsr/avhubert_onnx.py"))
        .arg("--random-seed")
        .arg(meta["seed"].as_u64().unwrap().to_string())
        .arg(&out)
        .arg("--config")
        .arg(dir.join("config.json"))
        .output()
        .expect("the project venv's Python (run tools/setup.sh)");
    assert!(
        run.status.success(),
        "tools/avsr/avhubert_onnx.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    (out, meta)
}

fn check(name: &str) {
    init();
    let (model, meta) = build(name);
    let dir = root().join("tests/golden/avhubert").join(name);
    let mut encoder = LipEncoder::load(&model, 2).unwrap();
    let shape: Vec<usize> = meta["features_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (frames, dim) = (shape[1], shape[2]);
    assert_eq!(encoder.dim(), dim);
    let crops = read_f32(&dir.join("input.bin"));
    let out = encoder.encode(&crops, frames).unwrap();
    assert_eq!((out.frames, out.dim), (frames, dim));
    let want = read_f32(&dir.join("features.bin"));
    assert_eq!(out.data.len(), want.len());
    let worst = out
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let tolerance = meta["tolerance_max_abs"].as_f64().unwrap() as f32;
    eprintln!("{name}: max abs difference from PyTorch {worst:.2e}");
    assert!(worst <= tolerance, "{name}: features differ by {worst}");
    let last = &want[(frames - 1) * dim..];
    assert!(out
        .row(frames - 1)
        .iter()
        .zip(last)
        .all(|(a, b)| (a - b).abs() <= tolerance));

    // One frame is a clip too; a length that is not whole frames is refused.
    let one = encoder.encode(&crops[..88 * 88], 1).unwrap();
    assert_eq!((one.frames, one.data.len()), (1, dim));
    assert!(matches!(
        encoder.encode(&crops[..100], 1),
        Err(EncoderError::Contract { .. })
    ));
    assert!(matches!(
        encoder.encode(&[], 0),
        Err(EncoderError::Contract { .. })
    ));
}

#[test]
fn pre_ln_encoder_with_lora_matches_pytorch() {
    check("pre_ln_lora");
}

#[test]
fn post_ln_encoder_matches_pytorch() {
    check("post_ln");
}

#[test]
fn a_model_with_another_contract_is_refused() {
    init();
    let err =
        LipEncoder::load(&root().join(".avlm/models/efficientnet-lite2.onnx"), 1).unwrap_err();
    assert!(matches!(err, EncoderError::Contract { .. }), "{err}");
    let err = LipEncoder::load(&root().join("no/such/lip.onnx"), 1).unwrap_err();
    assert!(matches!(err, EncoderError::ModelLoad { .. }), "{err}");
}
