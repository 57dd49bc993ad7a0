//! The Whisper tiny.en encoder (ONNX, converted from the CTranslate2 weights
//! by tools/whisper/ct2_to_onnx.py) run through our ONNX Runtime session,
//! against CTranslate2's own encoder on real clips (golden files from
//! tools/whisper/make_golden.py).

use std::path::Path;

use avlm_encoders::{runtime, LogMel, MelSpectrogram, WhisperEncoder};
use serde_json::Value;

mod common;
use common::{read_f32, read_wav, root};

fn encoder() -> WhisperEncoder {
    runtime::init(&root().join(".avlm/lib/libonnxruntime.so.1.31.1"))
        .expect("ONNX Runtime (run tools/setup.sh)");
    WhisperEncoder::load(&root().join(".avlm/models/whisper-tiny.en-encoder.onnx"), 2)
        .expect("encoder (run tools/setup.sh)")
}

/// ||a - b|| / ||b|| over everything, and the worst single row.
fn rel_errors(ours: &[f32], reference: &[f32], dim: usize) -> (f64, f64) {
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = ours.iter().zip(reference).map(|(a, b)| a - b).collect();
    let total = norm(&diff) / norm(reference);
    let worst = diff
        .chunks(dim)
        .zip(reference.chunks(dim))
        .map(|(d, r)| norm(d) / norm(r))
        .fold(0.0, f64::max);
    (total, worst)
}

#[test]
fn onnx_encoder_matches_ctranslate2_on_real_clips() {
    let mut enc = encoder();
    assert_eq!((enc.n_mels(), enc.dim()), (80, 384));
    let dir = root().join("tests/golden/whisper");
    for id in ["librivox-0870", "librivox-0880", "cards-005"] {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{id}.json"))).unwrap())
                .unwrap();
        let mel_full = read_f32(&dir.join(meta["mel"]["file"].as_str().unwrap()));
        let tol = meta["tolerance"]["rel_l2"].as_f64().unwrap();
        let row_tol = meta["tolerance"]["worst_row_rel_l2"].as_f64().unwrap();

        // The whole 30 s window, as CTranslate2 ran it.
        let mel = MelSpectrogram {
            n_mels: 80,
            frames: 3000,
            data: mel_full.clone(),
        };
        let out = enc.encode(&mel).unwrap();
        assert_eq!(out.frames, 1500);
        let ct2 = read_f32(&dir.join(meta["ct2_full"]["file"].as_str().unwrap()));
        let (total, worst) = rel_errors(&out.data[..ct2.len()], &ct2, 384);
        eprintln!("{id} 30 s window: relative error {total:.2e}, worst row {worst:.2e}");
        assert!(
            total <= tol && worst <= row_tol,
            "{id}: {total} / {worst} over {tol} / {row_tol}"
        );

        // A 4 s window at its own length (variable-length input).
        let frames = meta["ct2_short"]["input_frames"].as_u64().unwrap() as usize;
        let mut short = Vec::with_capacity(80 * frames);
        for m in 0..80 {
            short.extend_from_slice(&mel_full[m * 3000..m * 3000 + frames]);
        }
        let out = enc
            .encode(&MelSpectrogram {
                n_mels: 80,
                frames,
                data: short,
            })
            .unwrap();
        assert_eq!(out.frames, frames / 2);
        let ct2 = read_f32(&dir.join(meta["ct2_short"]["file"].as_str().unwrap()));
        let (total, worst) = rel_errors(&out.data[..ct2.len()], &ct2, 384);
        eprintln!("{id} {frames}-frame window: relative error {total:.2e}, worst row {worst:.2e}");
        assert!(
            total <= tol && worst <= row_tol,
            "{id} short: {total} / {worst}"
        );
    }
}

#[test]
fn rust_front_end_feeds_the_encoder_end_to_end() {
    // Our own log-mel of a real clip, at its own length, through the encoder:
    // finite output of the right shape (numerics are pinned by the two
    // parity tests: mel vs Whisper, encoder vs CTranslate2).
    let mut enc = encoder();
    let samples = read_wav(Path::new("/usr/share/pocketsphinx/test/data/cards/001.wav"));
    let mut mel = LogMel::whisper(80).compute(&samples);
    if mel.frames % 2 == 1 {
        let frames = mel.frames - 1;
        mel.data = (0..80)
            .flat_map(|m| mel.data[m * mel.frames..m * mel.frames + frames].to_vec())
            .collect();
        mel.frames = frames;
    }
    let out = enc.encode(&mel).unwrap();
    assert_eq!(out.frames, mel.frames / 2);
    assert!(out.data.iter().all(|v| v.is_finite()));
}

#[test]
fn bad_inputs_are_contract_errors() {
    let mut enc = encoder();
    let odd = MelSpectrogram {
        n_mels: 80,
        frames: 3,
        data: vec![0.0; 240],
    };
    assert!(enc.encode(&odd).unwrap_err().to_string().contains("even"));
    let wrong = MelSpectrogram {
        n_mels: 128,
        frames: 2,
        data: vec![0.0; 256],
    };
    assert!(enc
        .encode(&wrong)
        .unwrap_err()
        .to_string()
        .contains("mel bands"));
}
