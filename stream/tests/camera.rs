//! `avlm camera` headless: a file and a lavfi graph stand in for the camera
//! and microphone (read at their own pace, as a device delivers), the live
//! capture's Matroska output decodes, Ctrl-C keeps the last words, and bad
//! inputs fail with a clear message.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use avlm_stream::capture::{self, CaptureInput, CaptureSpec};
use ffmpeg_next as ffmpeg;

mod common;

use common::{avlm, media};

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn of_type<'a>(events: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// Parses SubRip strictly: numbered blocks from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, text.
fn parse_srt(text: &str) -> Vec<(u64, u64, String)> {
    let ts = |s: &str| -> u64 {
        let (hms, ms) = s.split_once(',').expect("comma before milliseconds");
        let p: Vec<u64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
        assert_eq!(p.len(), 3, "{s}");
        assert_eq!(ms.len(), 3, "{s}");
        ((p[0] * 60 + p[1]) * 60 + p[2]) * 1000 + ms.parse::<u64>().unwrap()
    };
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .enumerate()
        .map(|(i, block)| {
            let mut lines = block.lines();
            assert_eq!(lines.next().unwrap(), (i + 1).to_string());
            let (a, b) = lines.next().unwrap().split_once(" --> ").unwrap();
            let body: Vec<&str> = lines.collect();
            assert!(!body.is_empty(), "cue {} has no text", i + 1);
            let (a, b) = (ts(a), ts(b));
            assert!(a < b, "{block}");
            (a, b, body.join("\n"))
        })
        .collect()
}

#[test]
fn camera_input_file_runs_headless_and_writes_subtitles() {
    let bundle = common::quick_bundle("camera-file-bundle");
    let (srt, vtt) = (tmp("camera.srt"), tmp("camera.vtt"));
    let started = Instant::now();
    let out = avlm()
        .args(["camera", "--json", "--no-captions", "--bundle"])
        .arg(&bundle)
        .arg("--input")
        .arg(media("speech.webm"))
        .arg("--srt")
        .arg(&srt)
        .arg("--vtt")
        .arg(&vtt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    // Read at its own pace: the 16 s clip takes at least that long.
    let duration = avlm_stream::client::media_duration(&media("speech.webm")).unwrap();
    assert!(started.elapsed().as_secs_f64() > duration * 0.9);
    let finals = of_type(&events, "final");
    assert_eq!(finals.len(), 3, "{events:?}");
    let cues = parse_srt(&std::fs::read_to_string(&srt).unwrap());
    let spoken: Vec<_> = finals
        .iter()
        .filter(|f| !f["text"].as_str().unwrap().trim().is_empty())
        .collect();
    assert_eq!(cues.len(), spoken.len());
    for (cue, f) in cues.iter().zip(&spoken) {
        let start = (f["start_s"].as_f64().unwrap() * 1000.0).round() as u64;
        assert!(cue.0.abs_diff(start) <= 1, "{cue:?} vs {f}");
        assert_eq!(cue.2, f["text"].as_str().unwrap().trim());
    }
    let vtt = std::fs::read_to_string(&vtt).unwrap();
    assert!(vtt.starts_with("WEBVTT\n\n"));
    assert_eq!(vtt.matches(" --> ").count(), cues.len());
}

#[test]
fn camera_captions_the_video_next_to_the_transcript() {
    let bundle = common::quick_bundle("camera-captions-bundle");
    let srt = tmp("camera-captions.srt");
    let out = avlm()
        .args(["camera", "--json", "--bundle"])
        .arg(&bundle)
        .arg("--input")
        .arg(media("slides_speech.webm"))
        .arg("--srt")
        .arg(&srt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    assert_eq!(of_type(&events, "final").len(), 3, "{events:?}");
    let captions = of_type(&events, "caption");
    assert!(!captions.is_empty(), "{events:?}");
    let srt = std::fs::read_to_string(&srt).unwrap();
    assert_eq!(srt.matches("[video] ").count(), captions.len(), "{srt}");
}

#[test]
fn camera_tone_and_test_pattern_give_no_text_and_empty_subtitles() {
    let bundle = common::quick_bundle("camera-lavfi-bundle");
    let srt = tmp("camera-tone.srt");
    let out = avlm()
        .args(["camera", "--json", "--no-captions", "--bundle"])
        .arg(&bundle)
        .args([
            "--format",
            "lavfi",
            "--input",
            "testsrc=size=320x240:rate=25:d=3[out0];sine=f=440:d=3[out1]",
        ])
        .arg("--srt")
        .arg(&srt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    assert!(of_type(&events, "partial").is_empty(), "{events:?}");
    assert!(of_type(&events, "final").is_empty(), "{events:?}");
    let stats = of_type(&events, "stats");
    let last = stats.last().expect("a closing Stats message");
    assert!((last["media_seconds_received"].as_f64().unwrap() - 3.0).abs() < 0.2);
    assert_eq!(std::fs::read_to_string(&srt).unwrap(), "");
}

#[cfg(unix)]
#[test]
fn ctrl_c_ends_the_capture_cleanly_and_keeps_the_open_segment() {
    let bundle = common::quick_bundle("camera-sigint-bundle");
    let srt = tmp("camera-sigint.srt");
    let mut child = avlm()
        .args(["camera", "--json", "--no-captions", "--bundle"])
        .arg(&bundle)
        .arg("--input")
        .arg(media("speech.webm"))
        .arg("--srt")
        .arg(&srt)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut lines = stdout.lines();
    // Wait until the second utterance (6.0–10.2 s in the clip) has begun.
    for line in lines.by_ref() {
        let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let second_started = e["type"] == "speech_start" && e["segment_id"] == 1;
        seen.push(e);
        if second_started {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|e| e["type"] == "speech_start" && e["segment_id"] == 1),
        "{seen:?}"
    );
    // Interrupt a moment into the utterance.
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let interrupted = Instant::now();
    for line in lines {
        seen.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
    assert!(interrupted.elapsed() < Duration::from_secs(30));
    let finals = of_type(&seen, "final");
    assert_eq!(finals.len(), 2, "{seen:?}");
    // The second final is the utterance cut off by the stop, not all of it.
    let end = finals[1]["end_s"].as_f64().unwrap();
    assert!(end > 6.0 && end < 10.0, "{}", finals[1]);
    let cues = parse_srt(&std::fs::read_to_string(&srt).unwrap());
    let spoken = finals
        .iter()
        .filter(|f| !f["text"].as_str().unwrap().trim().is_empty())
        .count();
    assert_eq!(cues.len(), spoken);
}

#[test]
fn capture_codes_audio_as_16k_pcm_and_video_as_scaled_mjpeg() {
    let spec = CaptureSpec {
        inputs: vec![CaptureInput {
            url: "testsrc=size=1280x720:rate=30:d=2[out0];sine=f=300:sample_rate=44100:d=2[out1]"
                .into(),
            format: Some("lavfi".into()),
            options: vec![],
        }],
        audio: true,
        video: true,
        max_width: 640,
        max_fps: 10.0,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(1024);
    let collector = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            bytes.extend(chunk.expect("capture chunk"));
        }
        bytes
    });
    capture::capture(&spec, 4096, Arc::new(AtomicBool::new(false)), &tx).unwrap();
    drop(tx);
    let bytes = collector.join().unwrap();
    let path = tmp("capture.mkv");
    std::fs::write(&path, &bytes).unwrap();

    ffmpeg::init().unwrap();
    let mut input = ffmpeg::format::input(&path).unwrap();
    let audio = input.streams().best(ffmpeg::media::Type::Audio).unwrap();
    let video = input.streams().best(ffmpeg::media::Type::Video).unwrap();
    let (ai, vi) = (audio.index(), video.index());
    let a = ffmpeg::codec::context::Context::from_parameters(audio.parameters())
        .unwrap()
        .decoder()
        .audio()
        .unwrap();
    assert_eq!(a.id(), ffmpeg::codec::Id::PCM_S16LE);
    assert_eq!((a.rate(), a.channels()), (16_000, 1));
    let mut v = ffmpeg::codec::context::Context::from_parameters(video.parameters())
        .unwrap()
        .decoder()
        .video()
        .unwrap();
    assert_eq!(v.id(), ffmpeg::codec::Id::MJPEG);
    assert_eq!((v.width(), v.height()), (640, 360));
    let (mut audio_bytes, mut frames) = (0usize, 0usize);
    let mut frame = ffmpeg::frame::Video::empty();
    for (stream, packet) in input.packets() {
        if stream.index() == ai {
            audio_bytes += packet.size();
        } else if stream.index() == vi {
            v.send_packet(&packet).unwrap();
            while v.receive_frame(&mut frame).is_ok() {
                frames += 1;
            }
        }
    }
    // 2 s of 16 kHz s16 mono; 30 fps capped to 10.
    let seconds = audio_bytes as f64 / 32_000.0;
    assert!((seconds - 2.0).abs() < 0.05, "{seconds} s of audio");
    assert!((19..=21).contains(&frames), "{frames} frames");
}

#[test]
fn bad_capture_inputs_fail_with_a_clear_message() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--input", "/nonexistent/clip.webm"],
            "cannot open /nonexistent/clip.webm",
        ),
        (
            &["--input", "x", "--format", "nosuchformat"],
            "no input format \"nosuchformat\"",
        ),
        (
            &["--input", "testsrc=d=1", "--format", "lavfi"],
            "no audio stream",
        ),
    ];
    for (args, expected) in cases {
        let out = avlm()
            .args(["camera", "--no-bundle"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_camera_that_cannot_open_says_what_to_try() {
    let out = avlm()
        .args(["camera", "--no-captions", "--video-device", "none"])
        .args(["--audio-device", "avlm-no-such-microphone"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("avlm-no-such-microphone"), "{stderr}");
    assert!(
        stderr.contains("--list-devices") && stderr.contains("--input"),
        "no hint in {stderr}"
    );
    assert!(!stderr.contains("ALSA lib"), "ALSA noise in {stderr}");
}
