//! The session entry point: a protocol input's client messages sent as one
//! `Stream` call to a segmentation-only server (no model bundle; the VAD
//! and ONNX Runtime from `.avlm/`), started once per process on loopback.
//! Shared with the regression replay test like `entry.rs`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use avlm_proto as pb;
use avlm_stream::config::ServerConfig;
use avlm_stream::server::RunningServer;
use tonic::Code;

/// Most messages of one input sent (a longer input is cut here).
const MAX_MESSAGES: usize = 64;
/// Longest a call may take before it counts as a hang (libFuzzer's own
/// -timeout is longer, so this is what reports it, with the replies so far).
const CALL_LIMIT: Duration = Duration::from_secs(8);
/// Longest the server may take to count a finished call's session out.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

struct Server {
    runtime: tokio::runtime::Runtime,
    server: RunningServer,
}

/// The repository root: `AVLM_ROOT`, or the parent of this crate's folder
/// (the fuzz crate and the stream crate both sit one level down).
fn repo_root() -> PathBuf {
    match std::env::var_os("AVLM_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("a crate folder has a parent")
            .to_path_buf(),
    }
}

/// Whether the runtime files a session needs are there (tools/setup.sh).
pub fn runtime_present() -> bool {
    let config = ServerConfig::with_runtime_in(&repo_root());
    config.ort_lib.is_file() && config.vad_model.is_file()
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let config = ServerConfig {
            bundle: None,
            ..ServerConfig::with_runtime_in(&repo_root())
        };
        let server = runtime
            .block_on(avlm_stream::server::start(
                config,
                "127.0.0.1:0".parse().expect("an address"),
            ))
            .expect("the server starts (run tools/setup.sh for .avlm/)");
        Server { runtime, server }
    })
}

/// How a call ended.
#[derive(Debug)]
pub struct CallOutcome {
    pub replies: usize,
    pub status: Code,
}

/// Sends the messages of `data` (see `entry::client_messages`) as one call,
/// half-closes, and reads every reply. Panics when the server answers
/// INTERNAL or UNKNOWN, takes longer than [`CALL_LIMIT`], or still counts
/// the session as active [`RELEASE_LIMIT`] after the call ended.
pub fn session(data: &[u8]) -> CallOutcome {
    let mut messages = super::entry::client_messages(data);
    messages.truncate(MAX_MESSAGES);
    let s = server();
    let url = s.server.url();
    let outcome = s.runtime.block_on(async move {
        let call = async {
            let mut client = avlm_stream::client::connect(url.as_str())
                .await
                .expect("connect to the in-process server");
            let mut inbound = match client.stream(tokio_stream::iter(messages)).await {
                Ok(r) => r.into_inner(),
                Err(status) => return (Vec::new(), status),
            };
            let mut replies = Vec::new();
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => replies.push(m),
                    Ok(None) => return (replies, tonic::Status::ok("")),
                    Err(status) => return (replies, status),
                }
            }
        };
        match tokio::time::timeout(CALL_LIMIT, call).await {
            Ok(done) => done,
            Err(_) => panic!("the call did not end within {CALL_LIMIT:?}"),
        }
    });
    let (replies, status) = outcome;
    assert!(
        !matches!(status.code(), Code::Internal | Code::Unknown),
        "the server answered {:?}: {} (after {} replies: {:?})",
        status.code(),
        status.message(),
        replies.len(),
        replies.iter().map(kind).collect::<Vec<_>>()
    );
    let ended = Instant::now();
    while s.server.state.active_sessions() > 0 {
        assert!(
            ended.elapsed() < RELEASE_LIMIT,
            "{} sessions still active {RELEASE_LIMIT:?} after the call ended",
            s.server.state.active_sessions()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    CallOutcome {
        replies: replies.len(),
        status: status.code(),
    }
}

fn kind(m: &pb::ServerMessage) -> &'static str {
    use pb::server_message::Msg;
    match &m.msg {
        Some(Msg::Ready(_)) => "Ready",
        Some(Msg::Segment(_)) => "Segment",
        Some(Msg::Stats(_)) => "Stats",
        Some(_) => "other",
        None => "empty",
    }
}
