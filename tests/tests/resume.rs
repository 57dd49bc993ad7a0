//! Resumable streams across a dropped connection: a TCP proxy in the test
//! cuts the client's connection mid-utterance; the client reconnects with
//! the stream's token, sends again what was not acknowledged, and the
//! stream ends with the same finals as an uncut run (no accepted audio lost
//! or taken twice). A token nobody holds is NOT_FOUND; a stream whose
//! client stays away past the grace period ends and frees its slot.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use avlm_proto as pb;
use avlm_stream::client::{self, SendOptions, Source};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// A TCP proxy to `upstream` that cuts its first connection once the client
/// has sent `cut_after` bytes through it (0: never); later connections pass.
struct Proxy {
    url: String,
    connections: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
    /// Cuts every open connection.
    kill: Arc<tokio::sync::Notify>,
}

async fn proxy(upstream: String, cut_after: u64) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let kill = Arc::new(tokio::sync::Notify::new());
    let (conns, cut_flag, killer) = (connections.clone(), cut.clone(), kill.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let n = conns.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            let cut_flag = cut_flag.clone();
            let killer = killer.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let limit = if n == 0 && cut_after > 0 {
                    cut_after
                } else {
                    u64::MAX
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let sent = Arc::new(AtomicU64::new(0));
                let up = async {
                    let mut buf = vec![0u8; 8192];
                    while let Ok(k) = cr.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        let total = sent.fetch_add(k as u64, Ordering::SeqCst) + k as u64;
                        if total > limit {
                            cut_flag.store(true, Ordering::SeqCst);
                            break;
                        }
                        if sw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let mut buf = vec![0u8; 8192];
                    while let Ok(k) = sr.read(&mut buf).await {
                        if k == 0 || cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                };
                // Either side ending drops both sockets: a cut connection.
                tokio::select! {
                    () = up => {}
                    () = down => {}
                    () = killer.notified() => {}
                }
            });
        }
    });
    Proxy {
        url,
        connections,
        cut,
        kill,
    }
}

fn config() -> pb::StreamConfig {
    pb::StreamConfig {
        task: pb::Task::Transcribe as i32,
        options: Some(pb::StreamOptions {
            resumable: Some(true),
            stats_interval_ms: Some(0),
            ..Default::default()
        }),
        ..container_config()
    }
}

/// Finals (segment, text) and every message kind seen.
async fn run(url: &str, media: &[u8]) -> Result<(Vec<(u64, String)>, usize), client::ClientError> {
    let mut finals = Vec::new();
    let mut readies = 0;
    client::stream(
        url,
        config(),
        Source::Memory(media.to_vec()),
        SendOptions {
            chunk_bytes: 4096,
            realtime: false,
            stop: None,
        },
        |m| match &m.msg {
            Some(pb::server_message::Msg::Final(f)) => finals.push((f.segment_id, f.text.clone())),
            Some(pb::server_message::Msg::Ready(_)) => readies += 1,
            _ => {}
        },
    )
    .await?;
    Ok((finals, readies))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_resumed_with_the_same_finals() {
    let server = start_server(short_decode_server_config("resume", 12)).await;
    let upstream = server.url().trim_start_matches("http://").to_string();
    let media = read_media("speech.webm");

    let (uncut, _) = run(&server.url(), &media).await.expect("uncut run");
    assert!(uncut.len() >= 2, "finals of the uncut run: {uncut:?}");

    for fraction in [0.3, 0.7] {
        let cut_after = (media.len() as f64 * fraction) as u64;
        let p = proxy(upstream.clone(), cut_after).await;
        let (finals, readies) = run(&p.url, &media).await.expect("resumed run");
        assert!(p.cut.load(Ordering::SeqCst), "the proxy never cut");
        assert!(
            p.connections.load(Ordering::SeqCst) >= 2,
            "the client never reconnected"
        );
        assert_eq!(readies, 1, "Ready is seen once");
        assert_eq!(finals, uncut, "finals after a cut at {fraction}");
    }
    assert_server_still_serves(&server.url()).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_not_found_and_an_abandoned_stream_ends() {
    let server = start_server(avlm_stream::config::ServerConfig {
        resume_grace: Duration::from_secs(2),
        ..server_config()
    })
    .await;
    let resume = pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Resume(pb::Resume {
            token: "no-such-token".into(),
            replies_received: 0,
        })),
    };
    let (_, status) = raw_call(&server.url(), vec![resume]).await;
    let status = status.expect_err("an unknown token");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(
        status.message().contains("Resume.token"),
        "{}",
        status.message()
    );

    // A resumable SEGMENTS stream whose client vanishes holds its slot for
    // the grace period, then frees it.
    let mut c = pb::StreamConfig {
        options: Some(pb::StreamOptions {
            resumable: Some(true),
            ..Default::default()
        }),
        ..container_config()
    };
    c.task = pb::Task::Segments as i32;
    let p = proxy(server.url().trim_start_matches("http://").to_string(), 0).await;
    let mut client = client::connect(&p.url).await.unwrap();
    let (_held_tx, mut replies) = open_stream(&mut client, vec![config_msg(c)], 1).await;
    let ready = replies.message().await.unwrap().expect("Ready");
    let Some(pb::server_message::Msg::Ready(ready)) = ready.msg else {
        panic!("not Ready: {ready:?}")
    };
    assert!(!ready.resume_token.is_empty());
    let active = || async {
        let mut c = client::connect(&server.url()).await.unwrap();
        c.get_info(pb::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .active_sessions
    };
    p.kill.notify_waiters();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(active().await, 1, "the stream waits for its client");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if active().await == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned stream still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and its token is gone
    let resume = pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Resume(pb::Resume {
            token: ready.resume_token,
            replies_received: 1,
        })),
    };
    let (_, status) = raw_call(&server.url(), vec![resume]).await;
    assert_eq!(status.expect_err("gone").code(), Code::NotFound);
    server.shutdown().await.unwrap();
}
