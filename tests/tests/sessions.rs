//! Session lifecycle: concurrency, limits, disconnects, and the standard
//! health and info services.

mod common;

use std::time::{Duration, Instant};

use avlm_proto as pb;
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_clients_all_get_correct_segments() {
    let server = start_server(server_config()).await;
    let files = ["speech.webm", "speech.frag.mp4", "speech.ts", "speech.ogg"];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = server.url();
        let file = files[i % files.len()];
        let bytes = read_media(file);
        tasks.push(tokio::spawn(async move {
            let run = stream_bytes(&url, container_config(), bytes, 1024 + i * 977).await;
            (file, run)
        }));
    }
    for t in tasks {
        let (file, run) = t.await.unwrap();
        let run = run.unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_matches_speech(&run.segments(), 0.125, file);
    }
    wait_for_sessions(&server, 0).await;
    server.shutdown().await.unwrap();
}

async fn wait_for_sessions(server: &avlm_stream::server::RunningServer, n: usize) -> Duration {
    let start = Instant::now();
    while server.state.active_sessions() != n {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{} sessions still active after 1 s (expected {n})",
            server.state.active_sessions()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_is_freed_within_a_second() {
    let server = start_server(server_config()).await;
    let webm = read_media("speech.webm");
    for cut_at_ready in [true, false] {
        let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
        let (tx, mut inbound) =
            open_stream(&mut client, vec![config_msg(container_config())], 4).await;
        let first = inbound.message().await.unwrap().unwrap();
        assert!(matches!(first.msg, Some(pb::server_message::Msg::Ready(_))));
        if !cut_at_ready {
            // Half the media, some of it processed, then the client vanishes.
            for (i, c) in webm[..webm.len() / 2].chunks(4096).enumerate() {
                tx.send(media_msg(c, i as u64)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(server.state.active_sessions(), 1);
        drop(inbound);
        drop(tx);
        drop(client);
        let took = wait_for_sessions(&server, 0).await;
        eprintln!("session freed {took:?} after the disconnect");
    }
    assert_server_still_serves(&server.url()).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_sessions_is_resource_exhausted_and_a_slot_frees_on_end() {
    let mut config = server_config();
    config.max_sessions = 1;
    let server = start_server(config).await;

    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let (tx, mut held) = open_stream(&mut client, vec![config_msg(container_config())], 4).await;
    held.message().await.unwrap().unwrap();

    let (_, status) = raw_call(&server.url(), whole_stream(container_config(), b"", 1)).await;
    let status = status.expect_err("a second session must be refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limit of 1"),
        "{}",
        status.message()
    );

    tx.send(control_msg(pb::control::Action::EndOfStream))
        .await
        .unwrap();
    drop(tx);
    while held.message().await.unwrap().is_some() {}
    wait_for_sessions(&server, 0).await;
    assert_server_still_serves(&server.url()).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_health_and_reflection_are_served() {
    let server = start_server(server_config()).await;
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let info = client
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.max_sessions, 16);
    assert_eq!(info.tasks, vec![pb::Task::Segments as i32]);
    assert!(info.models[0].vad.contains("silero"));

    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "avlm.v1.Avlm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_holds_bytes_instead_of_dropping_them() {
    // A tiny pipe forces the reader to wait on the decoder for every few
    // bytes: all bytes must still arrive and give the same segments.
    let mut config = server_config();
    config.pipe_bytes = 512;
    let server = start_server(config).await;
    let bytes = read_media("speech.webm");
    let run = stream_bytes(&server.url(), container_config(), bytes.clone(), 64 * 1024)
        .await
        .unwrap();
    assert_eq!(run.last_stats().unwrap().bytes_received, bytes.len() as u64);
    assert_matches_speech(&run.segments(), 0.1, "512-byte pipe");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_silent_is_ended_and_its_slot_freed() {
    let server = start_server(short_idle_config()).await;
    let webm = read_media("speech.webm");
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let (tx, mut inbound) =
        open_stream(&mut client, vec![config_msg(container_config())], 64).await;
    // Some media, a pause shorter than the limit, more media: still fine.
    for (i, c) in webm[..webm.len() / 2].chunks(4096).enumerate() {
        tx.send(media_msg(c, i as u64)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let half = webm.len() / 2;
    tx.send(media_msg(
        &webm[half..half + 4096],
        half.div_ceil(4096) as u64,
    ))
    .await
    .unwrap();
    // Then nothing, with the stream held open.
    let started = Instant::now();
    let status = loop {
        match inbound.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended OK"),
            Err(status) => break status,
        }
    };
    ended_and_freed(server, status, "no message from the client", started).await;
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_sends_its_config_is_ended_and_its_slot_freed() {
    let server = start_server(short_idle_config()).await;
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    // The stream is open, but no message ever comes.
    let (tx, mut inbound) = open_stream(&mut client, vec![], 1).await;
    let started = Instant::now();
    let status = inbound
        .message()
        .await
        .expect_err("the stream must end with a status");
    ended_and_freed(server, status, "no StreamConfig", started).await;
    drop(tx);
}

/// One session at a time, ended after 0.8 s without progress: a session that
/// fails to end holds the only slot, which the tests then see.
fn short_idle_config() -> avlm_stream::config::ServerConfig {
    avlm_stream::config::ServerConfig {
        idle_timeout: Some(Duration::from_millis(800)),
        max_sessions: 1,
        ..server_config()
    }
}

/// The end of a session the server cut off: DEADLINE_EXCEEDED naming
/// `why`, within 5 s of `started`, its slot free and the server serving.
async fn ended_and_freed(
    server: avlm_stream::server::RunningServer,
    status: tonic::Status,
    why: &str,
    started: Instant,
) {
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains(why), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_for_sessions(&server, 0).await;
    assert_server_still_serves(&server.url()).await;
    server.shutdown().await.unwrap();
}

/// A client that sends but never reads fills its reply queue; the session
/// must not wait on it forever: it ends and its slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_and_its_slot_freed() {
    let server = start_server(short_idle_config()).await;
    // A small HTTP/2 stream window, so flow control stops the server's
    // replies after a few dozen: with a large one, the client library's own
    // flood protection would end the connection first (h2 buffers at most a
    // budget of small unread frames), which is not what is tested here.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(2048)
        .connect()
        .await
        .unwrap();
    let mut client = avlm_stream::client::on_channel(channel);
    // Raw PCM with a Stats message every millisecond of media: replies pile
    // up much faster than media bytes.
    let mut config = container_config();
    config.input = Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
        sample_format: pb::SampleFormat::S16le as i32,
        sample_rate: 8000,
        channels: 1,
    }));
    config.options.as_mut().unwrap().stats_interval_ms = Some(1);
    let (tx, mut unread) = open_stream(&mut client, vec![config_msg(config)], 4).await;
    let sender = tokio::spawn(async move {
        let silence = vec![0u8; 16_000];
        for seq in 0.. {
            if tx.send(media_msg(&silence, seq)).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.state.active_sessions(), 1);
    let started = Instant::now();
    while server.state.active_sessions() != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a client that reads nothing still holds its slot after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("slot freed {:?} after the check began", started.elapsed());
    sender.abort();
    // Reading again, the client finds what was queued, then why it ended.
    let status = loop {
        match unread.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("read no reply"), "{status:?}");
    assert_server_still_serves(&server.url()).await;
    server.shutdown().await.unwrap();
}

/// A shutdown waits for open calls only so long: a client holding a call
/// open (here one that sent its config and then nothing, well within the
/// idle timeout) must not keep the server from stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drops_calls_still_open_after_its_grace_period() {
    let server = start_server(avlm_stream::config::ServerConfig {
        shutdown_grace: Duration::from_millis(500),
        ..server_config()
    })
    .await;
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let (_tx, mut held) = open_stream(&mut client, vec![config_msg(container_config())], 1).await;
    held.message().await.unwrap().unwrap();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        loop {
            match held.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("the shutdown returns after its grace period")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    // The client is told why, in a status it can act on (retry elsewhere),
    // not a broken connection.
    let status = reader.await.unwrap().expect_err("the call was ended");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
}

/// Decoded media is budgeted across sessions: each reserves its worst case
/// (its byte ring plus a queue of frames at its frame size) when it starts,
/// and one that would pass the server's limit is refused with
/// RESOURCE_EXHAUSTED naming it, until others end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_media_past_the_servers_memory_limit_is_refused_until_sessions_end() {
    let server = start_server(avlm_stream::config::ServerConfig {
        // One default-sized video session (1 MiB ring + 32 frames of
        // 224x224 RGB = 5.6 MiB) and one audio session (3 MiB) fit; a
        // second video session does not.
        max_media_memory_bytes: Some(10 << 20),
        ..server_config()
    })
    .await;
    let url = server.url();
    let video = || {
        let mut c = container_config();
        c.modalities = pb::Modalities::AudioVideo as i32;
        c
    };
    let mut client = avlm_stream::client::connect(&url).await.unwrap();
    let (held_tx, mut held) = open_stream(&mut client, vec![config_msg(video())], 1).await;
    held.message().await.unwrap().expect("Ready");
    let mut other = avlm_stream::client::connect(&url).await.unwrap();
    let (_audio_tx, mut audio) =
        open_stream(&mut other, vec![config_msg(container_config())], 1).await;
    audio
        .message()
        .await
        .unwrap()
        .expect("an audio session fits");

    let (_, refused) = raw_call(&url, vec![config_msg(video())]).await;
    let status = refused.expect_err("a second video session is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max-media-memory-mb"),
        "{}",
        status.message()
    );
    assert!(server.state.media_reserved() <= 10 << 20);

    // The held video session ends: its reservation is given back.
    drop(held_tx);
    while held.message().await.unwrap().is_some() {}
    let started = Instant::now();
    loop {
        let (_, status) = raw_call(&url, vec![config_msg(video())]).await;
        if status.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still refused after the first video session ended: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
}
