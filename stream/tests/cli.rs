//! The `avlm` binary end to end: in-process and separate server, JSON
//! output, re-muxing inputs that can't stream as they are, FFmpeg inputs,
//! real-time pacing, and exit codes on failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{avlm, media};

/// Runs `avlm ARGS... INPUT`, requires success, returns the JSON events.
fn stream_ok(args: &[&str], input: &Path) -> Vec<serde_json::Value> {
    let out = avlm().arg("stream").args(args).arg(input).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn segments(events: &[serde_json::Value]) -> Vec<(f64, f64)> {
    events
        .iter()
        .filter(|e| e["type"] == "speech_end")
        .map(|e| (e["start_s"].as_f64().unwrap(), e["end_s"].as_f64().unwrap()))
        .collect()
}

#[test]
fn stream_json_with_an_in_process_server() {
    let events = stream_ok(&["--json"], &media("speech.webm"));
    assert_eq!(events[0]["type"], "ready");
    assert_eq!(segments(&events).len(), 3, "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "stats");
}

#[test]
fn plain_mp4_is_remuxed_by_the_client_and_refused_as_is_by_the_server() {
    assert_eq!(
        segments(&stream_ok(&["--json"], &media("speech.plain.mp4"))).len(),
        3
    );

    let out = avlm()
        .args(["stream", "--json", "--as-is"])
        .arg(media("speech.plain.mp4"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let events = json_lines(&out.stdout);
    let err = events.last().unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "FailedPrecondition");
    assert!(String::from_utf8_lossy(&out.stderr).contains("faststart"));
    // 10 + gRPC code 9 (FAILED_PRECONDITION)
    assert_eq!(out.status.code(), Some(19));
}

#[test]
fn any_ffmpeg_input_streams_through_a_remux() {
    // A lavfi source: a sine burst between silences, synthesised by FFmpeg.
    let graph =
        "aevalsrc=if(between(t\\,1\\,2.5)\\,sin(2*PI*220*t)*0.5*(1+sin(2*PI*3*t))\\,0):s=16000:d=4";
    let out = avlm()
        .args(["stream", "--json", "--format", "lavfi", graph])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "stats");
    assert!(
        (last["media_seconds_processed"].as_f64().unwrap() - 4.0).abs() < 0.1,
        "{last}"
    );
}

#[test]
fn stdin_and_raw_pcm() {
    let pcm = std::fs::read(media("speech.s16le")).unwrap();
    let mut child = avlm()
        .args([
            "stream",
            "--json",
            "--pcm",
            "s16le",
            "--pcm-rate",
            "16000",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for c in pcm.chunks(3000) {
            stdin.write_all(c).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(segments(&json_lines(&out.stdout)).len(), 3);
}

#[test]
fn realtime_sends_at_the_media_pace_against_a_separate_server() {
    let mut server = avlm()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server prints its address on stderr once it listens.
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stderr.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();

    let started = Instant::now();
    let out = avlm()
        .args([
            "stream",
            "--json",
            "--realtime",
            "--chunk-bytes",
            "1024",
            "--server",
            &url,
        ])
        .arg(media("short.webm"))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    assert_eq!(segments(&events).len(), 1, "{events:?}");
    // 3 s of media sent at its own pace cannot finish much sooner.
    assert!(took >= Duration::from_millis(2500), "finished in {took:?}");

    let out = avlm().args(["info", "--server", &url]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("TASK_SEGMENTS"));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn unreachable_server_exits_with_a_clear_error() {
    let out = avlm()
        .args(["stream", "--server", "http://127.0.0.1:9"])
        .arg(media("short.webm"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn transcribe_writes_subtitles_matching_the_finals() {
    let bundle = common::quick_bundle("cli-subtitles-bundle");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let (srt, vtt) = (dir.join("demo.srt"), dir.join("demo.vtt"));
    let out = avlm()
        .args(["stream", "--json", "--task", "transcribe", "--bundle"])
        .arg(&bundle)
        .arg("--srt")
        .arg(&srt)
        .arg("--vtt")
        .arg(&vtt)
        .arg(media("speech.webm"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let finals: Vec<serde_json::Value> = json_lines(&out.stdout)
        .into_iter()
        .filter(|e| e["type"] == "final")
        .collect();
    assert_eq!(finals.len(), 3);
    let srt = std::fs::read_to_string(&srt).unwrap();
    let vtt = std::fs::read_to_string(&vtt).unwrap();
    assert!(vtt.starts_with("WEBVTT\n\n"));
    let blocks: Vec<&str> = srt.split("\n\n").filter(|b| !b.is_empty()).collect();
    assert_eq!(
        blocks.len(),
        finals
            .iter()
            .filter(|f| !f["text"].as_str().unwrap().trim().is_empty())
            .count()
    );
    let first = &finals[0];
    let ms = (first["start_s"].as_f64().unwrap() * 1000.0).round() as u64;
    let stamp = format!("00:00:{:02},{:03} --> ", ms / 1000, ms % 1000);
    assert!(
        blocks[0].lines().nth(1).unwrap().starts_with(&stamp),
        "{} vs {stamp}",
        blocks[0]
    );
}

/// `GET path` over plain HTTP/1.1; the response body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("openmetrics-text"), "{out}");
    out
}

/// A child process killed when the test ends, passed or not.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_exports_metrics_and_drains_on_sigterm() {
    let server = avlm()
        .args([
            "serve",
            "--no-bundle",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Reaped(server);
    use std::io::BufRead;
    let mut stderr = std::io::BufReader::new(server.0.stderr.take().unwrap());
    let mut metrics = None;
    let mut url = None;
    for _ in 0..2 {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let found = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        if line.starts_with("metrics at") {
            metrics = Some(
                found
                    .trim_start_matches("http://")
                    .trim_end_matches("/metrics")
                    .to_string(),
            );
        } else {
            url = Some(found);
        }
    }
    let (metrics, url) = (metrics.unwrap(), url.unwrap());
    let before = http_get(&metrics, "/metrics");
    assert!(
        before.contains("# TYPE avlm_sessions_active gauge"),
        "{before}"
    );
    assert!(
        before.contains(r#"avlm_sessions_active{task="transcribe"} 0"#),
        "{before}"
    );
    assert!(before.trim_end().ends_with("# EOF"), "{before}");

    let out = avlm()
        .args(["stream", "--json", "--server", &url])
        .arg(media("short.webm"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let after = http_get(&metrics, "/metrics");
    assert!(
        after.contains(r#"avlm_sessions_total{task="segments",code="OK"} 1"#),
        "{after}"
    );
    assert!(
        after.contains(r#"avlm_media_seconds_total{kind="audio"}"#),
        "{after}"
    );

    // SIGTERM (what Docker and Kubernetes send) stops the server cleanly.
    let pid = server.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no exit 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    use std::io::Read;
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("shutting down"), "{rest}");
}

/// The first `seconds` of the 16 kHz mono s16le speech, as a file.
fn pcm_prefix(name: &str, seconds: usize) -> PathBuf {
    let pcm = std::fs::read(media("speech.s16le")).unwrap();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, &pcm[..seconds * 16_000 * 2]).unwrap();
    path
}

/// Runs `avlm stream ARGS...` with `stdin` piped in; (status, stdout, wall time).
fn stream_stdin(args: &[&str], stdin: Vec<u8>) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let mut child = avlm()
        .arg("stream")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // The reader may stop early on failure: a broken pipe is not this test's concern.
        let _ = pipe.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (out, started.elapsed())
}

#[test]
fn realtime_paces_raw_pcm_and_stdin() {
    // A PCM file: its byte rate comes from --pcm-rate and --pcm-channels.
    let pcm = pcm_prefix("realtime-3s.s16le", 3);
    let started = Instant::now();
    let out = avlm()
        .args(["stream", "--json", "--realtime", "--pcm", "s16le"])
        .arg(&pcm)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = json_lines(&out.stdout).pop().unwrap();
    assert!(
        (last["media_seconds_processed"].as_f64().unwrap() - 3.0).abs() < 0.1,
        "{last}"
    );
    assert!(took >= Duration::from_millis(2500), "PCM file in {took:?}");

    // The same PCM through stdin.
    let bytes = std::fs::read(&pcm).unwrap();
    let (out, took) = stream_stdin(&["--json", "--realtime", "--pcm", "s16le", "-"], bytes);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took >= Duration::from_millis(2500),
        "PCM on stdin in {took:?}"
    );

    // A container on stdin, paced by its timestamps.
    let webm = std::fs::read(media("short.webm")).unwrap();
    let (out, took) = stream_stdin(&["--json", "--realtime", "-"], webm);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(segments(&json_lines(&out.stdout)).len(), 1);
    assert!(
        took >= Duration::from_millis(2500),
        "WebM on stdin in {took:?}"
    );
}

#[test]
fn a_missing_input_fails_at_once_before_any_server_starts() {
    let started = Instant::now();
    let out = avlm()
        .args(["stream", "--task", "transcribe", "no-such-file.webm"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no-such-file.webm"), "{stderr}");
    assert!(took < Duration::from_secs(5), "failed after {took:?}");

    let out = avlm()
        .args(["stream", "--pcm", "s16le", "no-such-file.pcm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
}

/// Starts `avlm serve ARGS...` on a free port; the child and its `host:port`.
fn serve(args: &[&str]) -> (Reaped, String) {
    let mut server = Reaped(
        avlm()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(server.0.stderr.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    // Keep draining so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (server, addr)
}

#[test]
fn info_and_eval_against_a_server_given_as_host_port() {
    let bundle = common::quick_bundle("cli-info-bundle");
    let bundle_name = bundle.to_string_lossy().into_owned();
    let (_server, addr) = serve(&["--bundle", &bundle_name]);

    // No scheme: http:// is implied.
    let out = avlm().args(["info", "--server", &addr]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in ["vad ", "audio encoder ", "LLM "] {
        assert!(stdout.contains(part), "no {part:?} in {stdout}");
    }

    // eval through the server, piped: progress on stderr, what was used in summary.json.
    let set =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/media/generated/lrs3/synthetic_ci");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-eval-server");
    let out = avlm()
        .args(["eval", "lrs3"])
        .arg(&set)
        .args(["--limit", "2", "--snr", "0,clean", "--modalities", "audio"])
        .args(["--server", &addr, "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("4/4"), "no progress line in {stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).unwrap()).unwrap();
    let run = &summary["run"];
    assert!(
        run["noise"]["file"]
            .as_str()
            .unwrap()
            .ends_with("babble.wav"),
        "{run}"
    );
    assert!(run["noise"]["description"].is_string(), "{run}");
    // The server's model, not a local bundle.
    assert!(run["bundle"].is_null(), "{run}");
    assert!(
        run["server_model"]["llm"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{run}"
    );
}

#[test]
fn info_exits_3_when_it_cannot_connect() {
    let out = avlm()
        .args(["info", "--server", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn piped_output_has_no_colour_and_client_logs_are_quiet_by_default() {
    let bundle = common::quick_bundle("cli-colour-bundle");
    let out = avlm()
        .env_remove("AVLM_LOG")
        .env_remove("NO_COLOR")
        // Paced, so the model has time for partials between the finals.
        .args(["stream", "--task", "transcribe", "--partials", "--realtime"])
        .args(["--partial-interval-ms", "200", "--bundle"])
        .arg(&bundle)
        .arg(media("speech.webm"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("partial "), "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "colour codes in a pipe: {stdout:?}"
    );
    assert!(
        !stderr.contains("INFO"),
        "info logs from a client: {stderr}"
    );
}

#[test]
fn validate_prints_readable_text() {
    let bundle = common::quick_bundle("cli-validate-bundle");
    let out = avlm().arg("validate").arg(&bundle).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("audio encoder"), "{stdout}");
    for debug in ["{", "Some(", "Config", "[\""] {
        assert!(!stdout.contains(debug), "{debug:?} in {stdout}");
    }
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}

#[test]
fn bench_finds_its_default_sample_from_any_directory() {
    let elsewhere = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = avlm()
        .current_dir(&elsewhere)
        .env(
            "AVLM_HOME",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.avlm"),
        )
        .args([
            "bench",
            "--parts",
            "segments",
            "--sessions",
            "1",
            "--repeats",
            "1",
        ])
        .arg("--no-bundle")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo.webm"), "{stdout}");
}

#[test]
fn modality_and_modalities_are_both_accepted() {
    for spelling in ["--modality", "--modalities"] {
        let out = avlm()
            .args(["stream", "--json", spelling, "audio"])
            .arg(media("short.webm"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stream {spelling}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = avlm()
            .args(["eval", "lrs3", "no-such-set", spelling, "av"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("lip encoder"), "eval {spelling}: {stderr}");
    }
}

#[test]
fn subtitles_and_partials_mean_transcription_and_never_an_empty_file_silently() {
    let dir = std::env::temp_dir().join(format!("avlm-cli-srt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let srt = dir.join("out.srt");
    // Asked of a task that cannot give them: refused before anything runs.
    for (args, says) in [
        (vec!["--task", "segments", "--partials"], "--partials"),
        (
            vec!["--task", "segments", "--srt", srt.to_str().unwrap()],
            "--srt",
        ),
    ] {
        let started = Instant::now();
        let out = avlm()
            .arg("stream")
            .args(&args)
            .arg(media("short.webm"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.contains("transcribe"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert!(!srt.exists());
    }
    // Without --task, --srt transcribes and the file has the finals.
    let out = avlm()
        .args(["stream", "--json", "--srt"])
        .arg(&srt)
        .arg(media("speech.webm"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    assert_eq!(events[0]["task"], "TASK_TRANSCRIBE", "{:?}", events[0]);
    let finals = events.iter().filter(|e| e["type"] == "final").count();
    assert!(finals > 0);
    let text = std::fs::read_to_string(&srt).unwrap();
    assert_eq!(text.matches(" --> ").count(), finals, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
