//! The Python client (clients/python) against a real server: its CLI and
//! its `stream_file` get the same finals as the Rust client for the same
//! file, `--json` parses, bad media surfaces INVALID_ARGUMENT (as an
//! exception and as exit code 13), GetInfo answers, TLS and bearer tokens
//! work, and its unit tests pass with the committed stubs checked against
//! the proto.
//!
//! The package runs from source (`PYTHONPATH=clients/python/src`) with the
//! grpcio and protobuf of `.avlm/venv` (tools/setup.sh installs them): no
//! install step, nothing written into the shared environment.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use avlm_proto as pb;
use avlm_stream::server::{Auth, RunningServer, TlsFiles, Transport};
use common::*;

/// Longest a Python run may take before `timeout` ends it (a debug-build
/// server transcribes the 15 s clip in well under this).
const PYTHON_LIMIT_S: &str = "600";

fn python_src() -> PathBuf {
    repo_root().join("clients/python/src")
}

/// Runs `.avlm/venv/bin/python ARGS` from the repository root with the
/// package on its path, `stdin` fed in, and the extra environment `env`.
async fn python(args: Vec<String>, env: Vec<(String, String)>, stdin: Option<PathBuf>) -> Output {
    let python = repo_root().join(".avlm/venv/bin/python");
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("timeout");
        cmd.arg(PYTHON_LIMIT_S)
            .arg(&python)
            .args(&args)
            .current_dir(repo_root())
            .env("PYTHONPATH", python_src())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("AVLM_TOKEN")
            .env_remove("AVLM_CA")
            .env_remove("AVLM_SERVER")
            .envs(env)
            .stdin(match &stdin {
                Some(path) => Stdio::from(std::fs::File::open(path).expect("open stdin file")),
                None => Stdio::null(),
            });
        cmd.output()
            .expect("run .avlm/venv/bin/python (tools/setup.sh makes it)")
    })
    .await
    .unwrap()
}

/// `avlm-client ARGS` (as `python -m avlm_client`).
async fn cli(args: &[&str], env: &[(&str, &str)], stdin: Option<PathBuf>) -> Output {
    let mut all = vec!["-m".to_string(), "avlm_client".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    python(all, env, stdin).await
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn exit(out: &Output) -> i32 {
    let code = out.status.code().expect("exited, not killed");
    assert_ne!(
        code,
        124,
        "Python ran past {PYTHON_LIMIT_S} s: {:?}",
        text(out)
    );
    code
}

fn transcribe_config() -> pb::StreamConfig {
    pb::StreamConfig {
        task: pb::Task::Transcribe as i32,
        ..container_config()
    }
}

fn finals(run: &Run) -> Vec<(u64, String)> {
    run.messages
        .iter()
        .filter_map(|m| match &m.msg {
            Some(pb::server_message::Msg::Final(f)) => Some((f.segment_id, f.text.clone())),
            _ => None,
        })
        .collect()
}

/// A file of bytes no demuxer takes (a fixed pseudo-random pattern).
fn garbage_file(name: &str) -> PathBuf {
    let mut x: u32 = 0x9e37_79b9;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("python-client-{name}-{}.bin", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Streams with `stream_file`, prints the finals as JSON, then streams
/// garbage and prints the AvlmError's code, then GetInfo.
const SNIPPET: &str = r#"
import json, sys
import avlm_client
target, media, garbage = sys.argv[1:4]
finals = [
    [m.final.segment_id, m.final.text]
    for m in avlm_client.stream_file(target, media, task="transcribe", options={"stats_interval_ms": 0})
    if m.WhichOneof("msg") == "final"
]
try:
    list(avlm_client.stream_file(target, garbage, task="segments"))
    error = None
except avlm_client.AvlmError as e:
    error = [e.code.name, e.details]
info = avlm_client.get_info(target)
print(json.dumps({
    "finals": finals,
    "error": error,
    "version": info.version,
    "max_sessions": info.max_sessions,
    "models": [m.name for m in info.models],
    "tasks": [avlm_client.avlm_pb2.Task.Name(t) for t in info.tasks],
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_transcribes_like_the_rust_client() {
    let server = start_server(transcribe_server_config()).await;
    let url = server.url();
    let speech = media("speech.webm");
    let reference = stream_bytes(&url, transcribe_config(), read_media("speech.webm"), 16384)
        .await
        .expect("the Rust client transcribes");
    let want = finals(&reference);
    assert_eq!(want.len(), manifest().speech.len(), "{want:?}");

    // The library: stream_file, AvlmError, get_info.
    let garbage = garbage_file("lib");
    let out = python(
        vec![
            "-c".into(),
            SNIPPET.into(),
            url.clone(),
            speech.display().to_string(),
            garbage.display().to_string(),
        ],
        vec![],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 0, "{stdout}{stderr}");
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let got_finals: Vec<(u64, String)> =
        serde_json::from_value(got["finals"].clone()).expect("finals");
    assert_eq!(
        got_finals, want,
        "stream_file's finals against the Rust client's"
    );
    assert_eq!(got["error"][0], "INVALID_ARGUMENT", "{got}");
    assert!(!got["error"][1].as_str().unwrap().is_empty(), "{got}");
    assert_eq!(got["version"], env!("CARGO_PKG_VERSION"), "{got}");
    assert_eq!(
        got["max_sessions"], server.state.config.max_sessions as u64,
        "{got}"
    );
    assert!(
        got["tasks"]
            .as_array()
            .unwrap()
            .contains(&"TASK_TRANSCRIBE".into()),
        "{got}"
    );
    assert!(!got["models"].as_array().unwrap().is_empty(), "{got}");

    // The CLI, --json: every line parses, the finals are the same, the
    // stream starts with ready and ends with the last stats.
    let path = speech.display().to_string();
    let out = cli(
        &["--server", &url, "--task", "transcribe", "--json", &path],
        &[],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 0, "{stdout}{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert_eq!(lines.first().map(|l| &l["type"]), Some(&"ready".into()));
    assert_eq!(lines.last().map(|l| &l["type"]), Some(&"stats".into()));
    let json_finals: Vec<(u64, String)> = lines
        .iter()
        .filter(|l| l["type"] == "final")
        .map(|l| {
            (
                l["segment_id"].as_u64().unwrap(),
                l["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(json_finals, want, "--json finals against the Rust client's");

    // The CLI's text: `avlm stream`'s layout, from stdin this time.
    let out = cli(
        &["--server", &url, "--task", "transcribe", "-"],
        &[],
        Some(speech.clone()),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 0, "{stdout}{stderr}");
    let text_finals: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("final     #"))
        .map(String::from)
        .collect();
    let want_lines: Vec<String> = reference
        .messages
        .iter()
        .filter_map(|m| match &m.msg {
            Some(pb::server_message::Msg::Final(f)) => Some(format!(
                "final     #{:<3} {:>8.2}s – {:>8.2}s  {}",
                f.segment_id, f.start_s, f.end_s, f.text
            )),
            _ => None,
        })
        .collect();
    assert_eq!(text_finals, want_lines, "{stdout}");
    assert!(stdout.starts_with("ready     session "), "{stdout}");

    std::fs::remove_file(garbage).ok();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cli_reports_bad_media_missing_files_and_no_server_by_exit_code() {
    let server = start_server(server_config()).await;
    let url = server.url();
    let garbage = garbage_file("cli");
    let out = cli(
        &[
            "--server",
            &url,
            "--task",
            "segments",
            &garbage.display().to_string(),
        ],
        &[],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 13, "10 + INVALID_ARGUMENT: {stdout}{stderr}");
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");

    // --json says it on stdout too, as `avlm stream --json` does.
    let out = cli(
        &[
            "--server",
            &url,
            "--json",
            "--task",
            "segments",
            &garbage.display().to_string(),
        ],
        &[],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 13, "{stdout}{stderr}");
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("an error line")).unwrap();
    assert_eq!(last["type"], "error", "{stdout}");
    assert_eq!(last["code"], "InvalidArgument", "{stdout}");

    // The segments of a good file after that, with --realtime pacing a short clip.
    let out = cli(
        &[
            "--server",
            &url,
            "--task",
            "segments",
            "--realtime",
            &media("short.webm").display().to_string(),
        ],
        &[],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 0, "{stdout}{stderr}");
    assert!(
        !stderr.contains("warning"),
        "ffprobe gives the duration: {stderr}"
    );

    let missing = repo_root().join("tests/media/generated/no-such-file.webm");
    let out = cli(
        &["--server", &url, &missing.display().to_string()],
        &[],
        None,
    )
    .await;
    assert_eq!(exit(&out), 4, "{:?}", text(&out));
    server.shutdown().await.unwrap();

    // Nobody listens there any more.
    let out = cli(
        &[
            "--server",
            &url,
            "--task",
            "segments",
            &media("short.webm").display().to_string(),
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(exit(&out), 3, "cannot connect: {:?}", text(&out));
    std::fs::remove_file(garbage).ok();
}

/// A CA and a localhost server certificate signed by it, as PEM files.
fn make_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A subject of its own: with rcgen's default one the server's
    // certificate would name itself as issuer and look self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "avlm python client test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_speaks_tls_with_a_bearer_token() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("python-client-pki-{}", std::process::id()));
    make_pki(&dir);
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "# test\ns3cret\n").unwrap();
    let server: RunningServer = avlm_stream::server::start_with(
        server_config(),
        "127.0.0.1:0".parse().unwrap(),
        Transport {
            tls: Some(TlsFiles {
                cert: dir.join("server.pem"),
                key: dir.join("server.key"),
                client_ca: None,
            }),
            auth: Some(Auth::from_file(&tokens, vec![]).unwrap()),
        },
    )
    .await
    .expect("server starts");
    let target = format!("localhost:{}", server.addr.port());
    let ca = dir.join("ca.pem").display().to_string();
    let short = media("short.webm").display().to_string();

    // --ca implies TLS; the token comes from AVLM_TOKEN.
    let out = cli(
        &[
            "--server", &target, "--ca", &ca, "--task", "segments", &short,
        ],
        &[("AVLM_TOKEN", "s3cret")],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("ready "), "{stdout}");

    let out = cli(
        &[
            "--server", &target, "--task", "segments", "--token", "wrong", &short,
        ],
        &[("AVLM_CA", &ca)],
        None,
    )
    .await;
    assert_eq!(exit(&out), 26, "10 + UNAUTHENTICATED: {:?}", text(&out));

    let out = cli(
        &[
            "--server", &target, "--ca", &ca, "--token", "s3cret", "--info",
        ],
        &[],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 0, "{stdout}{stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).expect("GetInfo as JSON");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");

    server.shutdown().await.unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_unit_tests_pass_and_the_stubs_match_the_proto() {
    let set = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "python-client-descriptor-{}.bin",
        std::process::id()
    ));
    std::fs::write(&set, pb::FILE_DESCRIPTOR_SET).unwrap();
    let env: HashMap<String, String> =
        [("AVLM_DESCRIPTOR_SET".to_string(), set.display().to_string())].into();
    let out = python(
        vec![
            "-m".into(),
            "unittest".into(),
            "discover".into(),
            "-v".into(),
            "-s".into(),
            "clients/python/tests".into(),
        ],
        env.into_iter().collect(),
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(exit(&out), 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("test_stubs_match_the_proto") && !stderr.contains("skipped"),
        "the stub check ran: {stderr}"
    );
    std::fs::remove_file(set).ok();
}
