//! Replays every input the fuzz targets found a bug with, kept in
//! tests/fuzz/regressions/<target>/, through the same entry points the
//! targets use (fuzz/src/entry.rs and session.rs, included here), so CI
//! checks them without libFuzzer. tools/fuzz/run.sh --keep adds new ones.

#[path = "../../fuzz/src/entry.rs"]
#[allow(dead_code)]
mod entry;
#[path = "../../fuzz/src/session.rs"]
#[allow(dead_code)]
mod session;

use std::path::{Path, PathBuf};

fn reproducers(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("a readable folder").path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `entry` on every reproducer of `target`; fails naming each input
/// that still panics.
fn replay(target: &str, entry: impl Fn(&[u8])) -> usize {
    let files = reproducers(target);
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("a readable reproducer");
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry(&data)));
        if run.is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: these reproducers still fail: {failed:#?}"
    );
    files.len()
}

#[test]
fn ingest_reproducers() {
    replay("ingest", |d| {
        let _ = entry::ingest(d);
    });
}

#[test]
fn wav_header_reproducers() {
    replay("wav_header", |d| {
        let _ = entry::wav_header(d);
    });
}

#[test]
fn raw_pcm_reproducers() {
    replay("raw_pcm", |d| {
        let _ = entry::raw_pcm(d);
    });
}

#[test]
fn protocol_reproducers() {
    replay("protocol", |d| {
        let _ = entry::protocol(d);
    });
}

#[test]
fn session_reproducers() {
    if reproducers("session").is_empty() {
        return;
    }
    assert!(
        session::runtime_present(),
        "the session reproducers need ONNX Runtime and the VAD model in .avlm/: run tools/setup.sh"
    );
    replay("session", |d| {
        let _ = session::session(d);
    });
}

/// The test media (tools/make_test_media.py), cut to at most `len` bytes.
fn media(name: &str, len: usize) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/media/generated")
        .join(name);
    let mut data = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tools/make_test_media.py tests/media/generated)",
            path.display()
        )
    });
    data.truncate(len);
    data
}

/// The entry points run the real decoder: good media decodes to what it
/// holds, so a reproducer that passes here is decoded, not refused early.
#[test]
fn the_entry_points_decode_good_media() {
    let speech = media("speech.webm", usize::MAX);
    let audio = entry::ingest(&[[0, 0].as_slice(), &speech].concat())
        .expect("an input with its selector bytes")
        .expect("speech.webm decodes");
    let seconds = audio.audio_samples as f64 / 16_000.0;
    assert!((seconds - 16.2).abs() < 0.2, "{seconds} s of audio");

    let slides = media("slides.webm", usize::MAX);
    let video = entry::ingest(&[[1 | 4, 0].as_slice(), &slides].concat())
        .expect("an input with its selector bytes")
        .expect("slides.webm decodes as video");
    assert!(video.video_frames > 25, "{video:?}");
    assert_eq!((video.audio_samples, video.flushes), (0, 1));

    // 16 kHz s16le: 16,000 bytes are 8,000 samples, 0.5 s.
    let pcm = media("speech.s16le", 16_000);
    let raw = entry::raw_pcm(&[[0, 0x40, 0x1f, 0].as_slice(), &pcm].concat())
        .expect("an input with its selector bytes")
        .expect("PCM decodes");
    assert!(raw.audio_samples.abs_diff(8_000) <= 64, "{raw:?}");

    assert_eq!(
        entry::wav_header(&[[0].as_slice(), &media("speech.wav", 4096)].concat()),
        Some(())
    );

    let config = avlm_proto::StreamConfig {
        options: Some(avlm_proto::StreamOptions {
            stats_interval_ms: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut messages = vec![avlm_proto::ClientMessage {
        msg: Some(avlm_proto::client_message::Msg::Config(config)),
    }];
    for (seq, chunk) in speech.chunks(16 * 1024).enumerate() {
        messages.push(avlm_proto::ClientMessage {
            msg: Some(avlm_proto::client_message::Msg::Media(
                avlm_proto::MediaChunk {
                    data: chunk.to_vec(),
                    seq: seq as u64,
                },
            )),
        });
    }
    let input = entry::encode_messages(&messages);
    assert_eq!(entry::protocol(&input), messages.len());
    let call = session::session(&input);
    assert_eq!(call.status, tonic::Code::Ok);
    // Ready, the speech segments (start and end of each) and the last Stats.
    assert!(call.replies > 4, "{call:?}");
}
