//! Helpers shared by the binary's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The default bundle with short decoding, so debug-build tests stay quick.
pub fn quick_bundle(name: &str) -> PathBuf {
    let src = root().join(".avlm/bundles/default");
    let manifest = std::fs::read_to_string(src.join("avlm.toml"))
        .expect("default bundle (run tools/setup.sh)");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = manifest
        .replace(
            "\"../../models/",
            &format!("\"{}/", root().join(".avlm/models").display()),
        )
        .replace(
            "\"projector.safetensors\"",
            &format!("\"{}\"", src.join("projector.safetensors").display()),
        )
        .replace(
            "\"lora.safetensors\"",
            &format!("\"{}\"", src.join("lora.safetensors").display()),
        )
        .replace(
            "\"ctc.safetensors\"",
            &format!("\"{}\"", src.join("ctc.safetensors").display()),
        )
        .replace(
            "\"vision_projector.safetensors\"",
            &format!("\"{}\"", src.join("vision_projector.safetensors").display()),
        )
        .replace("max_new_tokens = 64", "max_new_tokens = 6");
    assert!(manifest.contains("max_new_tokens = 6"));
    std::fs::write(dir.join("avlm.toml"), manifest).unwrap();
    dir
}

/// A generated test medium (tools/test.sh makes them).
pub fn media(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/media/generated")
        .join(name);
    assert!(
        p.is_file(),
        "{} missing: run `bash tools/test.sh` first",
        p.display()
    );
    p
}

/// The `avlm` binary under test, quiet logs.
pub fn avlm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_avlm"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AVLM_LOG", "error");
    c
}

/// 16-bit mono PCM of a canonical 44-byte-header WAV file, as f32.
pub fn read_wav(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes[44..]
        .chunks_exact(2)
        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
        .collect()
}

/// The lip encoder of the tiny Llama-AVSR golden (tests/golden/llama_avsr),
/// built from its seed into `out` (its 11M weights are not committed).
pub fn build_golden_lip_encoder(out: &Path) {
    let golden = root().join("tests/golden/llama_avsr");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("expected.json")).unwrap()).unwrap();
    let lip = &expected["lip_encoder"];
    let status = Command::new(root().join(".avlm/venv/bin/python"))
        .current_dir(root())
        .arg("tools/avsr/avhubert_onnx.py")
        .arg("--random-seed")
        .arg(lip["seed"].as_u64().unwrap().to_string())
        .arg(out)
        .arg("--config")
        .arg(golden.join(lip["config"].as_str().unwrap()))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python (tools/setup.sh makes .avlm/venv)");
    assert!(status.success(), "building the lip encoder failed");
}
