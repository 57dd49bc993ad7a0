//! Lip reading end to end with a converted Llama-AVSR-structured bundle
//! (the tiny random golden of tests/golden/llama_avsr, every prompt):
//! `avlm eval lrs3 --modalities av|video` in process and through a server
//! give the same hypotheses; a live TRANSCRIBE stream of a talking face
//! (a face photo moving over a background, with speech) gets Finals with
//! audio and video, and by face presence with video alone; bad inputs get
//! a named status and the server goes on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;
use common::{avlm, media};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("avsr-{name}"))
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error"])
        .args(args)
        .output()
        .expect("ffmpeg (run tools/setup.sh)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The golden Llama-AVSR bundle with absolute paths and its lip encoder
/// built from its seed.
fn avsr_bundle() -> PathBuf {
    let golden = root().join("tests/golden/llama_avsr");
    let src = golden.join("bundle");
    let dir = tmp("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let lip = dir.join("lip_encoder.onnx");
    if !lip.is_file() {
        common::build_golden_lip_encoder(&lip);
    }
    let manifest = std::fs::read_to_string(src.join("avlm.toml")).unwrap();
    let abs = |p: &str| format!("\"{}\"", src.join(p).display());
    let manifest = manifest
        .replace("\"whisper_encoder.onnx\"", &abs("whisper_encoder.onnx"))
        .replace("\"projector.safetensors\"", &abs("projector.safetensors"))
        .replace("weights = \"llm\"", &format!("weights = {}", abs("llm")))
        .replace("\"llm/tokenizer.json\"", &abs("llm/tokenizer.json"))
        .replace(
            "\"../../../../.avlm/models/",
            &format!("\"{}/", root().join(".avlm/models").display()),
        );
    std::fs::write(dir.join("avlm.toml"), manifest).unwrap();
    dir
}

/// A face photo moving over a grey background for the length of `speech`,
/// with it as the sound track.
fn talking_face(name: &str, speech: &Path) -> PathBuf {
    face_clip(name, speech, "1", None)
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(bundle: &Path) -> Server {
    let mut child = avlm()
        .args(["serve", "--listen", "127.0.0.1:0", "--bundle"])
        .arg(bundle)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("server URL in {line:?}"))
        .to_string();
    Server { child, url }
}

fn eval(set: &Path, out: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let output = avlm()
        .args(["eval", "lrs3"])
        .arg(set)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "eval {extra:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(out.join("clips.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["hypothesis"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// JSON events of `avlm stream` against `url`.
fn stream(url: &str, file: &Path, extra: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = avlm()
        .args(["stream", "--json", "--task", "transcribe", "--server", url])
        .args(extra)
        .arg(file)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.success(),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn finals(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events
        .iter()
        .filter(|e| e.get("final").is_some() || e["type"] == "final")
        .collect()
}

#[test]
fn lip_reading_in_eval_and_over_grpc() {
    let bundle = avsr_bundle();
    // An LRS3-layout set: a talking face, and the golden's 96x96 mouth crops as a clip.
    let set = tmp("set");
    let speaker = set.join("spk");
    std::fs::create_dir_all(&speaker).unwrap();
    let golden = root().join("tests/golden/llama_avsr");
    let speech = golden.join("speech.wav");
    std::fs::rename(talking_face("face.mkv", &speech), speaker.join("00001.mkv")).unwrap();
    std::fs::write(speaker.join("00001.txt"), "Text:  HELLO THERE\n").unwrap();
    ffmpeg(&[
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        "96x96",
        "-r",
        "25",
        "-i",
        golden.join("crops_rgb24.raw").to_str().unwrap(),
        "-i",
        speech.to_str().unwrap(),
        "-shortest",
        "-c:v",
        "ffv1",
        "-c:a",
        "flac",
        speaker.join("00002.mkv").to_str().unwrap(),
    ]);
    std::fs::write(speaker.join("00002.txt"), "Text:  GOOD MORNING\n").unwrap();
    let b = bundle.to_str().unwrap();

    let av = eval(
        &set,
        &tmp("eval-av"),
        &["--modalities", "av", "--bundle", b],
    );
    let video = eval(
        &set,
        &tmp("eval-video"),
        &["--modalities", "video", "--bundle", b],
    );
    let audio = eval(
        &set,
        &tmp("eval-audio"),
        &["--modalities", "audio", "--bundle", b],
    );
    assert_eq!(av.len(), 2);
    for (a, v) in av.iter().zip(&video) {
        assert!(!a.1.is_empty() && !v.1.is_empty(), "{a:?} {v:?}");
    }
    // the same audio read with and without the lips is not the same prompt
    assert_ne!(av, audio);

    let server = serve(&bundle);
    let av_grpc = eval(
        &set,
        &tmp("eval-av-grpc"),
        &["--modalities", "av", "--server", &server.url],
    );
    assert_eq!(av, av_grpc, "in-process and gRPC hypotheses differ (av)");
    let video_grpc = eval(
        &set,
        &tmp("eval-video-grpc"),
        &["--modalities", "video", "--server", &server.url],
    );
    assert_eq!(
        video, video_grpc,
        "in-process and gRPC hypotheses differ (video)"
    );

    // A live stream with voice activity segments: Finals with audio and video.
    let face = talking_face("stream.mkv", &media("speech.wav"));
    let (ok, events, stderr) = stream(&server.url, &face, &["--modalities", "av"]);
    assert!(ok, "{stderr}");
    assert!(!finals(&events).is_empty(), "no finals: {events:?}");
    // Video alone: segments by face presence.
    let (ok, events, stderr) = stream(&server.url, &face, &["--modalities", "video"]);
    assert!(ok, "{stderr}");
    assert!(!finals(&events).is_empty(), "no finals: {events:?}");

    // Bad inputs: audio-only media asked for video, video-only media asked
    // for audio; the server serves on.
    let (ok, _, stderr) = stream(&server.url, &media("speech.wav"), &["--modalities", "av"]);
    assert!(!ok && stderr.contains("video"), "{stderr}");
    let silent = tmp("silent.mkv");
    ffmpeg(&[
        "-i",
        face.to_str().unwrap(),
        "-an",
        "-c:v",
        "copy",
        silent.to_str().unwrap(),
    ]);
    let (ok, _, stderr) = stream(&server.url, &silent, &["--modalities", "av"]);
    assert!(!ok && stderr.contains("audio"), "{stderr}");
    let (ok, events, stderr) = stream(&server.url, &silent, &["--modalities", "video"]);
    assert!(ok, "{stderr}");
    assert!(!finals(&events).is_empty(), "no finals: {events:?}");
}

/// A face photo moving over a grey background, shown while `enable` (an
/// ffmpeg expression of t) holds, with `speech` as the sound track; the
/// video is cut at `video_s`, else both end with the speech.
fn face_clip(name: &str, speech: &Path, enable: &str, video_s: Option<f64>) -> PathBuf {
    let out = tmp(name);
    let trim = video_s.map_or(String::new(), |d| format!(",trim=duration={d}"));
    let graph = format!(
        "color=c=0x5a646e:s=320x240:r=25[bg];[0:v]scale=150:150[f];\
         [bg][f]overlay=x='40+10*sin(t)':y=40:shortest=1:enable='{enable}'{trim}[v]"
    );
    let photo = root().join("tests/golden/mouth/astronaut.ppm");
    let mut args = vec![
        "-loop",
        "1",
        "-framerate",
        "25",
        "-i",
        photo.to_str().unwrap(),
        "-i",
        speech.to_str().unwrap(),
        "-filter_complex",
        &graph,
        "-map",
        "[v]",
        "-map",
        "1:a",
    ];
    if video_s.is_none() {
        args.push("-shortest");
    }
    args.extend([
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "flac",
        out.to_str().unwrap(),
    ]);
    ffmpeg(&args);
    out
}

fn events_of<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[test]
fn video_that_ends_leaves_or_runs_long_is_handled() {
    let bundle = avsr_bundle();
    let server = serve(&bundle);
    let speech = media("speech.wav");

    // The video ends at 4 s while the speech goes on to 16 s: later
    // segments do not wait for crops that never come (each Final comes
    // before the next segment ends), and they are heard from the audio.
    let early = face_clip("early.mkv", &speech, "1", Some(4.0));
    let (ok, events, stderr) = stream(&server.url, &early, &["--modalities", "av", "--realtime"]);
    assert!(ok, "{stderr}");
    let order: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["type"] == "final" || e["type"] == "speech_end")
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["segment_id"].as_u64().unwrap(),
            )
        })
        .collect();
    let at = |kind: &str, id: u64| order.iter().position(|(k, i)| k == kind && *i == id);
    let ends = events_of(&events, "speech_end").len() as u64;
    assert!(ends >= 3, "{order:?}");
    for id in 1..ends - 1 {
        let fin = at("final", id).unwrap_or_else(|| panic!("no final {id}: {order:?}"));
        let next_end = at("speech_end", id + 1).unwrap();
        assert!(fin < next_end, "final {id} waited for the end: {order:?}");
    }

    // Video alone: the face shows for 3 s of 8 and then leaves; the
    // segment opens and closes with it (SPEECH_START / SPEECH_END), not at
    // the end of the stream.
    let gone = face_clip("gone.mkv", &speech, "lt(t,3)", Some(8.0));
    let (ok, events, stderr) = stream(&server.url, &gone, &["--modalities", "video"]);
    assert!(ok, "{stderr}");
    let starts = events_of(&events, "speech_start");
    let ends = events_of(&events, "speech_end");
    let finals = finals(&events);
    assert_eq!(
        (starts.len(), ends.len(), finals.len()),
        (1, 1, 1),
        "{events:?}"
    );
    let end_s = finals[0]["end_s"].as_f64().unwrap();
    assert!(
        end_s > 2.5 && end_s < 3.5,
        "the face left at 3 s: {events:?}"
    );
    // with partials, at the media's pace: provisional text while the face shows
    let (ok, events, stderr) = stream(
        &server.url,
        &gone,
        &["--modalities", "video", "--partials", "--realtime"],
    );
    assert!(ok, "{stderr}");
    let partials = events_of(&events, "partial");
    assert!(!partials.is_empty(), "no partials: {events:?}");
    assert!(partials.iter().all(|p| p["end_s"].as_f64().unwrap() <= 3.5));

    // A whole-utterance stream of video alone holds at most 30 s.
    let long = tmp("long.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=0x5a646e:s=64x48:r=25:d=32",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        long.to_str().unwrap(),
    ]);
    let (ok, _, stderr) = stream(
        &server.url,
        &long,
        &["--modalities", "video", "--whole-utterance"],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("FailedPrecondition") && stderr.contains("30 s of video"),
        "{stderr}"
    );
}

#[test]
fn a_model_without_a_lip_encoder_refuses_video_by_name() {
    let bundle = common::quick_bundle("avsr-no-lips");
    let server = serve(&bundle);
    let (ok, _, stderr) = stream(
        &server.url,
        &media("slides_speech.webm"),
        &["--modalities", "av"],
    );
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("FailedPrecondition"), "{stderr}");
    assert!(stderr.contains("no lip encoder"), "{stderr}");
    // and it still transcribes audio
    let (ok, events, stderr) = stream(
        &server.url,
        &media("short.webm"),
        &["--modalities", "audio"],
    );
    assert!(ok, "{stderr}");
    assert!(!events.is_empty());
}
