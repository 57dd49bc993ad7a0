//! Shared helpers: an in-process server on loopback with the real runtime
//! files, the generated test media, and small client wrappers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use avlm_proto as pb;
use avlm_stream::client::{self, ClientError, SendOptions, Source};
use avlm_stream::config::ServerConfig;
use avlm_stream::server::RunningServer;
use serde::Deserialize;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The test media folder; made by tools/make_test_media.py (tools/test.sh runs it).
pub fn media(name: &str) -> PathBuf {
    let path = repo_root().join("tests/media/generated").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `bash tools/test.sh` (or tools/make_test_media.py tests/media/generated) first",
        path.display()
    );
    path
}

pub fn read_media(name: &str) -> Vec<u8> {
    std::fs::read(media(name)).expect("read test media")
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub duration_s: f64,
    pub speech: Vec<SpeechSpan>,
}

#[derive(Debug, Deserialize)]
pub struct SpeechSpan {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

pub fn manifest() -> Manifest {
    serde_json::from_slice(&std::fs::read(media("speech.json")).expect("manifest"))
        .expect("parse manifest")
}

/// A segmentation-only server (no model bundle: fast to start, small).
pub fn server_config() -> ServerConfig {
    ServerConfig {
        bundle: None,
        ..ServerConfig::with_runtime_in(&repo_root())
    }
}

/// A TRANSCRIBE server whose bundle decodes at most `max_new_tokens`
/// (the default bundle with a shorter decode, for quick debug-build tests).
pub fn short_decode_server_config(name: &str, max_new_tokens: usize) -> ServerConfig {
    let src = repo_root().join(".avlm/bundles/default");
    let manifest = std::fs::read_to_string(src.join("avlm.toml"))
        .expect("default bundle (run tools/setup.sh)");
    // under the build's own tmp dir (not /tmp): it goes with the checkout's target/
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avlm-test-bundle-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = manifest
        .replace(
            "\"../../models/",
            &format!("\"{}/", repo_root().join(".avlm/models").display()),
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
        .replace(
            "max_new_tokens = 64",
            &format!("max_new_tokens = {max_new_tokens}"),
        );
    std::fs::write(dir.join("avlm.toml"), manifest).unwrap();
    ServerConfig {
        bundle: Some(dir),
        ..ServerConfig::with_runtime_in(&repo_root())
    }
}

/// A server with the default model bundle loaded (TRANSCRIBE).
pub fn transcribe_server_config() -> ServerConfig {
    let config = ServerConfig::with_runtime_in(&repo_root());
    assert!(
        config.bundle.is_some(),
        "no default bundle in .avlm/bundles/default: run tools/setup.sh"
    );
    config
}

pub async fn start_server(config: ServerConfig) -> RunningServer {
    avlm_stream::server::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts (run tools/setup.sh for the runtime files)")
}

/// `container_config` reading `input`.
pub fn container_input(input: pb::ContainerInput) -> pb::StreamConfig {
    pb::StreamConfig {
        input: Some(pb::stream_config::Input::Container(input)),
        ..container_config()
    }
}

/// `container_config` with a format hint.
pub fn with_hint(hint: &str) -> pb::StreamConfig {
    container_input(pb::ContainerInput {
        format_hint: hint.into(),
        ..Default::default()
    })
}

pub fn container_config() -> pb::StreamConfig {
    pb::StreamConfig {
        task: pb::Task::Segments as i32,
        modalities: pb::Modalities::Audio as i32,
        input: Some(pb::stream_config::Input::Container(
            pb::ContainerInput::default(),
        )),
        options: Some(pb::StreamOptions {
            stats_interval_ms: Some(0),
            ..Default::default()
        }),
    }
}

/// A closed speech segment as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Seg {
    pub id: u64,
    pub start_s: f64,
    pub end_s: f64,
    pub reason: String,
}

/// Everything a stream returned.
#[derive(Debug, Default)]
pub struct Run {
    pub messages: Vec<pb::ServerMessage>,
}

impl Run {
    pub fn segments(&self) -> Vec<Seg> {
        self.messages
            .iter()
            .filter_map(|m| match &m.msg {
                Some(pb::server_message::Msg::Segment(s))
                    if s.kind == pb::segment::Kind::SpeechEnd as i32 =>
                {
                    Some(Seg {
                        id: s.segment_id,
                        start_s: s.start_s,
                        end_s: s.end_s,
                        reason: s.end_reason.clone(),
                    })
                }
                _ => None,
            })
            .collect()
    }

    pub fn last_stats(&self) -> Option<pb::Stats> {
        self.messages.iter().rev().find_map(|m| match &m.msg {
            Some(pb::server_message::Msg::Stats(s)) => Some(*s),
            _ => None,
        })
    }
}

/// Streams bytes in `chunk`-byte messages and collects the result.
pub async fn stream_bytes(
    url: &str,
    config: pb::StreamConfig,
    bytes: Vec<u8>,
    chunk: usize,
) -> Result<Run, ClientError> {
    let mut run = Run::default();
    client::stream(
        url,
        config,
        Source::Memory(bytes),
        SendOptions {
            chunk_bytes: chunk,
            realtime: false,
            stop: None,
        },
        |m| run.messages.push(m.clone()),
    )
    .await?;
    Ok(run)
}

/// Sends exactly `messages` (then half-closes) and returns what came back,
/// with the final status.
pub async fn raw_call(
    url: &str,
    messages: Vec<pb::ClientMessage>,
) -> (Vec<pb::ServerMessage>, Result<(), tonic::Status>) {
    let mut client = client::connect(url).await.expect("connect");
    let response = match client.stream(tokio_stream::iter(messages)).await {
        Ok(r) => r,
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut inbound = response.into_inner();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(m))) => got.push(m),
            Ok(Ok(None)) => return (got, Ok(())),
            Ok(Err(status)) => return (got, Err(status)),
            Err(_) => panic!("no answer within 30 s; got {got:?}"),
        }
    }
}

pub fn config_msg(config: pb::StreamConfig) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Config(config)),
    }
}

pub fn media_msg(data: &[u8], seq: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Media(pb::MediaChunk {
            data: data.to_vec(),
            seq,
        })),
    }
}

pub fn control_msg(action: pb::control::Action) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Control(pb::Control {
            action: action as i32,
            ..Default::default()
        })),
    }
}

/// Config, then `bytes` in chunks with correct seqs, then end of stream.
pub fn whole_stream(
    config: pb::StreamConfig,
    bytes: &[u8],
    chunk: usize,
) -> Vec<pb::ClientMessage> {
    let mut v = vec![config_msg(config)];
    v.extend(
        bytes
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| media_msg(c, i as u64)),
    );
    v.push(control_msg(pb::control::Action::EndOfStream));
    v
}

/// Asserts each known speech span is matched, in order, by one segment whose
/// boundaries lie within `tol` seconds.
pub fn assert_matches_speech(segments: &[Seg], tol: f64, what: &str) {
    let known = manifest().speech;
    assert_eq!(
        segments.len(),
        known.len(),
        "{what}: expected {} segments, got {segments:?}",
        known.len()
    );
    for (seg, span) in segments.iter().zip(&known) {
        assert!(
            (seg.start_s - span.start_s).abs() <= tol && (seg.end_s - span.end_s).abs() <= tol,
            "{what}: segment {seg:?} is not within {tol} s of speech [{}, {}]",
            span.start_s,
            span.end_s
        );
    }
}

/// A second, ordinary client right after a failure: it must be served normally.
pub async fn assert_server_still_serves(url: &str) {
    let run = stream_bytes(url, container_config(), read_media("speech.ogg"), 16 * 1024)
        .await
        .expect("a healthy client is served after another client's failure");
    assert_eq!(run.segments().len(), manifest().speech.len());
}

/// Opens a `Stream` call the test drives itself: `first` goes out at once,
/// later messages through the returned sender (`buffer` deep, at least
/// `first.len()`); the call stays open, with no half-close, while the
/// sender lives.
pub async fn open_stream(
    client: &mut avlm_stream::client::Client,
    first: Vec<pb::ClientMessage>,
    buffer: usize,
) -> (
    tokio::sync::mpsc::Sender<pb::ClientMessage>,
    tonic::Streaming<pb::ServerMessage>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(first.len()).max(1));
    for m in first {
        tx.send(m)
            .await
            .expect("the channel holds the first messages");
    }
    let inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the call opens")
        .into_inner();
    (tx, inbound)
}
