//! The log-mel front end against Whisper's reference math on real clips
//! (golden arrays from tools/golden/make_mel_golden.py).

use std::path::{Path, PathBuf};

use avlm_encoders::mel::{slaney_mel_filters, LogMel, N_FFT, SAMPLE_RATE};

mod common;
use common::{read_f32, read_wav, root};

fn golden_dir() -> PathBuf {
    root().join("tests/golden/mel")
}

#[test]
fn mel_filters_equal_whispers_mel_filters_npz() {
    let ours = slaney_mel_filters(SAMPLE_RATE, N_FFT, 80);
    let theirs = read_f32(&golden_dir().join("mel_filters_80.bin"));
    assert_eq!(ours.len(), theirs.len());
    let max = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max <= 1e-6, "mel filters differ by {max}");
}

#[test]
fn log_mel_matches_the_reference_within_1e4_on_real_clips() {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden_dir().join("golden.json")).unwrap()).unwrap();
    let front = LogMel::whisper(80);
    let clips = meta["clips"].as_array().unwrap();
    assert_eq!(clips.len(), 3);
    for clip in clips {
        let name = clip["name"].as_str().unwrap();
        let audio = read_wav(Path::new(clip["wav"].as_str().unwrap()));
        assert_eq!(
            audio.len() as u64,
            clip["samples"].as_u64().unwrap(),
            "{name}: a different recording"
        );
        let mel = front.compute(&audio);
        assert_eq!(
            mel.frames as u64,
            clip["frames"].as_u64().unwrap(),
            "{name}"
        );
        let reference = read_f32(&golden_dir().join(format!("{name}.bin")));
        let max = mel
            .data
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: {} frames, max abs error {max:.2e}", mel.frames);
        assert!(
            max <= 1e-4,
            "{name}: log-mel differs from the reference by {max}"
        );
    }
}
