//! The OpenAI realtime transcription socket, driven by a client written from
//! the API's public event schema: session update, base64 PCM16 appends,
//! commit; speech started/stopped, committed, transcription deltas and
//! completed transcripts, and errors as `error` events.

mod common;

use std::time::Duration;

use avlm_proto as pb;
use base64::Engine as _;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// speech.wav as 24 kHz mono s16le, the API's pcm16.
fn pcm16_24k() -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(media("speech.wav"))
        .args(["-ac", "1", "-ar", "24000", "-f", "s16le", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    out.stdout
}

async fn next_event(ws: &mut Socket) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("an event within 120 s")
        {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(_))) | None => return None,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error: {e}"),
        }
    }
}

async fn send(ws: &mut Socket, event: Value) {
    ws.send(Message::Text(event.to_string().into()))
        .await
        .expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_realtime_schema_gets_its_transcripts() {
    let server = start_server(transcribe_server_config()).await;
    let socket = avlm_stream::realtime::serve("127.0.0.1:0".parse().unwrap(), server.url())
        .await
        .unwrap();
    let audio = pcm16_24k();

    // What the same audio gives over gRPC, with the same settings.
    let reference = stream_bytes(
        &server.url(),
        pb::StreamConfig {
            task: pb::Task::Transcribe as i32,
            modalities: pb::Modalities::Audio as i32,
            input: Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
                sample_format: pb::SampleFormat::S16le as i32,
                sample_rate: 24_000,
                channels: 1,
            })),
            options: Some(pb::StreamOptions {
                stats_interval_ms: Some(0),
                vad_threshold: Some(0.5),
                pre_roll_ms: Some(300),
                min_silence_ms: Some(500),
                ..Default::default()
            }),
        },
        audio.clone(),
        4800,
    )
    .await
    .unwrap();
    let segments = reference.segments();
    assert!(!segments.is_empty());

    let url = format!("ws://{}/v1/realtime?intent=transcription", socket.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let created = next_event(&mut ws).await.unwrap();
    assert_eq!(created["type"], "transcription_session.created");
    assert!(created["event_id"].is_string());
    assert_eq!(created["session"]["input_audio_format"], "pcm16");

    // A bad setting is an error event; the socket stays usable.
    send(
        &mut ws,
        json!({"type": "transcription_session.update", "session": {"input_audio_format": "opus"}}),
    )
    .await;
    let error = next_event(&mut ws).await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["param"], "session.input_audio_format");

    send(
        &mut ws,
        json!({
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500},
            },
        }),
    )
    .await;
    let updated = next_event(&mut ws).await.unwrap();
    assert_eq!(updated["type"], "transcription_session.updated");
    assert_eq!(
        updated["session"]["turn_detection"]["silence_duration_ms"],
        500
    );

    // Audio in 100 ms appends, then one that is not base64, then a commit.
    for chunk in audio.chunks(4800) {
        send(
            &mut ws,
            json!({
                "type": "input_audio_buffer.append",
                "audio": base64::engine::general_purpose::STANDARD.encode(chunk),
            }),
        )
        .await;
    }
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.append", "audio": "not base64 !"}),
    )
    .await;
    send(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;

    let mut events = Vec::new();
    let mut completed = 0;
    while completed < segments.len() {
        let e = next_event(&mut ws)
            .await
            .unwrap_or_else(|| panic!("the socket closed early after {events:#?}"));
        if e["type"] == "conversation.item.input_audio_transcription.completed" {
            completed += 1;
        }
        events.push(e);
    }
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    let errors = of("error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error"]["param"], "audio");

    let started = of("input_audio_buffer.speech_started");
    let stopped = of("input_audio_buffer.speech_stopped");
    let committed = of("input_audio_buffer.committed");
    let done = of("conversation.item.input_audio_transcription.completed");
    assert_eq!(started.len(), segments.len());
    assert_eq!(stopped.len(), segments.len());
    assert_eq!(committed.len(), segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let item = &stopped[i]["item_id"];
        assert_eq!(started[i]["item_id"], *item);
        assert_eq!(committed[i]["item_id"], *item);
        assert_eq!(done[i]["item_id"], *item);
        // The turns are the session's segments, in ms of the audio.
        assert_eq!(
            started[i]["audio_start_ms"],
            (seg.start_s * 1000.0).round() as u64
        );
        assert_eq!(
            stopped[i]["audio_end_ms"],
            (seg.end_s * 1000.0).round() as u64
        );
        if i > 0 {
            assert_eq!(committed[i]["previous_item_id"], stopped[i - 1]["item_id"]);
        }
        // Deltas only append, and add up to the completed transcript.
        let deltas: String = events
            .iter()
            .filter(|e| {
                e["type"] == "conversation.item.input_audio_transcription.delta"
                    && e["item_id"] == *item
            })
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        let transcript = done[i]["transcript"].as_str().unwrap();
        assert_eq!(deltas, transcript, "item {item}");
        assert!(!transcript.is_empty());
        // Event order within a turn.
        let at = |e: &Value| events.iter().position(|x| std::ptr::eq(x, e)).unwrap();
        assert!(at(started[i]) < at(stopped[i]) && at(stopped[i]) < at(committed[i]));
        assert!(at(committed[i]) < at(done[i]));
    }
    // The transcripts are the session's finals (the first words of each may
    // differ only where partials committed them).
    let finals: Vec<String> = reference
        .messages
        .iter()
        .filter_map(|m| match &m.msg {
            Some(pb::server_message::Msg::Final(f)) => Some(f.text.clone()),
            _ => None,
        })
        .collect();
    for (d, f) in done.iter().zip(&finals) {
        let got: Vec<&str> = d["transcript"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .collect();
        let want: Vec<&str> = f.split_whitespace().collect();
        let shared = got.iter().filter(|w| want.contains(w)).count();
        assert!(shared * 2 >= want.len(), "socket: {got:?}\ngRPC: {want:?}");
    }
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "event ids are unique");

    // A change of settings after audio is refused.
    send(
        &mut ws,
        json!({"type": "transcription_session.update", "session": {"turn_detection": null}}),
    )
    .await;
    let e = next_event(&mut ws).await.unwrap();
    assert_eq!(e["error"]["code"], "session_already_started");
    ws.close(None).await.unwrap();
    drop(socket);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_before_any_audio_and_an_unknown_event_are_errors() {
    let server = start_server(transcribe_server_config()).await;
    let socket = avlm_stream::realtime::serve("127.0.0.1:0".parse().unwrap(), server.url())
        .await
        .unwrap();
    let url = format!("ws://{}/v1/realtime?intent=transcription", socket.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    assert_eq!(
        next_event(&mut ws).await.unwrap()["type"],
        "transcription_session.created"
    );
    send(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;
    let e = next_event(&mut ws).await.unwrap();
    assert_eq!(e["error"]["code"], "input_audio_buffer_commit_empty");
    send(&mut ws, json!({"type": "response.create"})).await;
    let e = next_event(&mut ws).await.unwrap();
    assert_eq!(e["error"]["code"], "unknown_event");
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let e = next_event(&mut ws).await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_json");
    ws.close(None).await.unwrap();
    drop(socket);
    server.shutdown().await.unwrap();
}
