//! The whole Llama-AVSR chain through avlm against its PyTorch reference
//! (tools/avsr/make_llama_avsr_golden.py, tools/avsr/llama_avsr_reference.py):
//! a tiny random checkpoint with the released key layout, converted by
//! tools/avsr/convert_llama_avsr.py into tests/golden/llama_avsr/bundle;
//! 96x96 mouth crops through Llama-AVSR's video transform, the AV-HuBERT
//! lip encoder (ONNX, rebuilt here from its seed), the stack-2 video
//! projector; speech through the waveform norm, Whisper (30 s window, the
//! reference's frame cut) and the stack-4 audio projector; the LLM on the
//! reference's layout. The same 32 greedy tokens as PyTorch, for audio,
//! video, and audio with video.

use std::path::{Path, PathBuf};

use avlm_encoders::mouth::{lip_input, MouthCrop, CROP};
use avlm_stream::bundle::manifest::Manifest;
use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::{AsrPipeline, LipClip};
use serde_json::Value;

mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden() -> PathBuf {
    root().join("tests/golden/llama_avsr")
}

fn read_wav(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes[44..]
        .chunks_exact(2)
        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
        .collect()
}

#[test]
fn tiny_llama_avsr_gives_the_reference_tokens_for_audio_video_and_both() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(golden().join("expected.json")).unwrap()).unwrap();
    let tmp = std::env::temp_dir().join(format!("avlm-avsr-golden-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let lip_encoder = tmp.join("lip_encoder.onnx");
    common::build_golden_lip_encoder(&lip_encoder);

    avlm_encoders::runtime::init(&root().join(".avlm").join(avlm_stream::config::ORT_LIB)).unwrap();
    let bundle_dir = golden().join("bundle");
    let mut manifest = Manifest::read(&bundle_dir).unwrap();
    let lip = manifest.lip.as_mut().expect("the golden bundle reads lips");
    lip.encoder = lip_encoder;
    // The crops are given cut; the detector only has to exist.
    lip.face_detector = root().join(".avlm/models/face_detection_back_256x256.onnx");
    // The reference decodes greedily for 32 steps without stopping.
    manifest.decoding.beam_width = 1;
    manifest.decoding.stop.clear();
    manifest.decoding.max_new_tokens = expected["steps"].as_u64().unwrap() as usize;
    manifest.decoding.max_tokens_per_audio_s = 0.0;
    let bundle = LoadedBundle::load_with(&bundle_dir, manifest, 1).unwrap();
    let mut pipeline = AsrPipeline::new(bundle).unwrap();

    let inputs = &expected["inputs"];
    let raw = std::fs::read(golden().join(inputs["crops"]["file"].as_str().unwrap())).unwrap();
    let frame = CROP * CROP * 3;
    assert_eq!(raw.len() % frame, 0);
    let crops: Vec<MouthCrop> = raw
        .chunks_exact(frame)
        .enumerate()
        .map(|(i, rgb)| MouthCrop {
            pts_s: i as f64 / 25.0,
            face: true,
            rgb: rgb.to_vec(),
            held: false,
        })
        .collect();
    assert_eq!(
        crops.len() as u64,
        inputs["crops"]["shape"][0].as_u64().unwrap()
    );
    let clip = LipClip {
        frames: crops.len(),
        data: lip_input(&crops),
    };
    let speech = read_wav(&golden().join(inputs["audio"]["file"].as_str().unwrap()));
    assert_eq!(
        speech.len() as u64,
        inputs["audio"]["samples"].as_u64().unwrap()
    );

    for (name, samples, video) in [
        ("audio", &speech[..], None),
        ("video", &[][..], Some(&clip)),
        ("audio_video", &speech[..], Some(&clip)),
    ] {
        let want = &expected["modalities"][name];
        let t = pipeline.transcribe_clip(samples, video).unwrap();
        let tokens: Vec<u64> = t.tokens.iter().map(|&x| u64::from(x)).collect();
        let reference: Vec<u64> = want["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            t.prompt_tokens as u64,
            want["prompt_length"].as_u64().unwrap(),
            "{name}: prompt length"
        );
        assert_eq!(tokens, reference, "{name}: tokens");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
