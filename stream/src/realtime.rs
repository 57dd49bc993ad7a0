//! A WebSocket endpoint that speaks OpenAI's realtime transcription events,
//! so clients written for that API transcribe with avlm. Each socket is
//! bridged to one avlm session on the server's own gRPC listener: the
//! session's options come from `transcription_session.update`, appended
//! base64 PCM16 becomes media chunks, and the session's segments, partials
//! and finals come back as `input_audio_buffer.speech_started` /
//! `speech_stopped` / `committed` and
//! `conversation.item.input_audio_transcription.delta` / `.completed`.
//!
//! The events follow the public schema of the realtime API's transcription
//! sessions: `wss://HOST/v1/realtime?intent=transcription`. Audio is
//! `pcm16` (24 kHz mono little-endian, the API's default) or G.711
//! (`g711_ulaw`, `g711_alaw`, 8 kHz). `turn_detection` `server_vad` maps to
//! avlm's voice activity settings; `null` (manual turns) still segments by
//! voice activity, and `input_audio_buffer.commit` closes the open turn at
//! once.

use std::net::SocketAddr;

use avlm_proto as pb;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::client::{self, Target};

/// Sample rate of `pcm16` in the realtime API.
pub const PCM16_RATE: u32 = 24_000;

/// A running realtime endpoint.
pub struct RealtimeServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RealtimeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Bridge {
    /// The avlm gRPC listener sessions are opened on.
    grpc: String,
}

/// Serves the realtime transcription socket on `listen` (port 0 picks a
/// free one) at `/v1/realtime`, bridging each socket to a session on the
/// plain-HTTP/2 gRPC listener at `grpc_url`. A bearer token in the
/// upgrade's `Authorization` header (or `openai-insecure-api-key.TOKEN` in
/// `Sec-WebSocket-Protocol`, as browser clients send it) is passed on.
pub async fn serve(listen: SocketAddr, grpc_url: String) -> anyhow::Result<RealtimeServer> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the realtime socket on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/v1/realtime", axum::routing::get(upgrade))
        .with_state(Bridge { grpc: grpc_url });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the realtime socket stopped");
        }
    });
    tracing::info!(%addr, "OpenAI realtime transcription socket at /v1/realtime");
    Ok(RealtimeServer { addr, task })
}

async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(bridge): State<Bridge>,
) -> Response {
    let token = bearer(&headers);
    // A browser client names its key as a subprotocol; the reply must
    // accept one of the offered protocols for the browser to open.
    let protocols: Vec<String> = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default();
    let ws = match protocols.iter().find(|p| *p == "realtime") {
        Some(p) => ws.protocols([p.clone()]),
        None => ws,
    };
    ws.on_upgrade(move |socket| run(socket, bridge, token))
}

/// The token of an `Authorization: Bearer` header, or of an
/// `openai-insecure-api-key.TOKEN` subprotocol.
fn bearer(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = authorization_bearer(headers) {
        return Some(t);
    }
    headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("openai-insecure-api-key."))
                .map(String::from)
        })
}

/// The token of an `Authorization: Bearer` header (also read by the
/// browser demo's socket).
pub(crate) fn authorization_bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
}

/// The session settings a client chose, in the API's terms.
#[derive(Debug, Clone)]
struct Settings {
    format: String,
    model: String,
    /// `server_vad` settings, or `None` for manual turns.
    vad: Option<(f32, u32, u32)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            format: "pcm16".into(),
            model: "avlm".into(),
            // The API's own server_vad defaults: threshold, prefix padding,
            // silence duration.
            vad: Some((0.5, 300, 500)),
        }
    }
}

impl Settings {
    fn describe(&self) -> Value {
        json!({
            "object": "realtime.transcription_session",
            "input_audio_format": self.format,
            "input_audio_transcription": {"model": self.model, "language": "en", "prompt": ""},
            "turn_detection": match self.vad {
                Some((threshold, prefix, silence)) => json!({
                    "type": "server_vad",
                    "threshold": threshold,
                    "prefix_padding_ms": prefix,
                    "silence_duration_ms": silence,
                }),
                None => Value::Null,
            },
            "input_audio_noise_reduction": Value::Null,
            "include": [],
        })
    }

    /// Applies a `session` object from `transcription_session.update`.
    fn update(&mut self, session: &Value) -> Result<(), (String, String)> {
        let bad = |param: &str, message: String| (param.to_string(), message);
        if let Some(f) = session.get("input_audio_format") {
            match f.as_str() {
                Some(f @ ("pcm16" | "g711_ulaw" | "g711_alaw")) => self.format = f.into(),
                _ => {
                    return Err(bad(
                        "session.input_audio_format",
                        format!(
                            "unsupported input_audio_format {f}: pcm16, g711_ulaw or g711_alaw"
                        ),
                    ))
                }
            }
        }
        if let Some(m) = session
            .get("input_audio_transcription")
            .and_then(|t| t.get("model"))
            .and_then(Value::as_str)
        {
            self.model = m.into();
        }
        match session.get("turn_detection") {
            None => {}
            Some(Value::Null) => self.vad = None,
            Some(t) => {
                let kind = t
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("server_vad");
                if kind != "server_vad" {
                    return Err(bad(
                        "session.turn_detection.type",
                        format!("turn_detection type {kind:?} is not supported here: server_vad or null"),
                    ));
                }
                let (mut threshold, mut prefix, mut silence) = self
                    .vad
                    .unwrap_or(Settings::default().vad.expect("default"));
                if let Some(v) = t.get("threshold").and_then(Value::as_f64) {
                    threshold = v as f32;
                }
                if let Some(v) = t.get("prefix_padding_ms").and_then(Value::as_u64) {
                    prefix = v as u32;
                }
                if let Some(v) = t.get("silence_duration_ms").and_then(Value::as_u64) {
                    silence = v as u32;
                }
                self.vad = Some((threshold, prefix, silence));
            }
        }
        Ok(())
    }

    /// The avlm session configuration these settings mean.
    fn stream_config(&self) -> pb::StreamConfig {
        let input = match self.format.as_str() {
            "pcm16" => pb::stream_config::Input::RawPcm(pb::RawPcmInput {
                sample_format: pb::SampleFormat::S16le as i32,
                sample_rate: PCM16_RATE,
                channels: 1,
            }),
            g711 => pb::stream_config::Input::Container(pb::ContainerInput {
                format_hint: if g711 == "g711_ulaw" { "mulaw" } else { "alaw" }.into(),
                audio_track: None,
            }),
        };
        let mut options = pb::StreamOptions {
            partial_results: Some(true),
            stats_interval_ms: Some(0),
            ..Default::default()
        };
        if let Some((threshold, prefix, silence)) = self.vad {
            options.vad_threshold = Some(threshold.clamp(0.01, 0.99));
            options.pre_roll_ms = Some(prefix);
            options.min_silence_ms = Some(silence);
        }
        pb::StreamConfig {
            task: pb::Task::Transcribe as i32,
            modalities: pb::Modalities::Audio as i32,
            input: Some(input),
            options: Some(options),
        }
    }
}

/// Numbers server events and sends them to the socket's writer.
#[derive(Clone)]
struct Events {
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tx: mpsc::Sender<Value>,
}

impl Events {
    async fn send(&self, mut event: Value) -> bool {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        event["event_id"] = json!(format!("event_{n}"));
        self.tx.send(event).await.is_ok()
    }

    /// Closes the socket once the events before this are out.
    async fn close(&self) {
        let _ = self.tx.send(json!({ CLOSE: true })).await;
    }

    async fn error(&self, kind: &str, code: &str, message: String, param: Option<&str>) -> bool {
        self.send(json!({
            "type": "error",
            "error": {"type": kind, "code": code, "message": message, "param": param, "event_id": Value::Null},
        }))
        .await
    }
}

/// Marks the writer's last item: the socket closes after the events before it.
pub(crate) const CLOSE: &str = "\u{0}close";

/// Writes JSON events to a socket as text messages, in order, until the
/// senders are gone or a `{CLOSE: true}` item comes; then closes the socket.
pub(crate) fn spawn_writer(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    queue: usize,
) -> (mpsc::Sender<Value>, tokio::task::JoinHandle<()>) {
    use futures::SinkExt;
    let (tx, mut rx) = mpsc::channel::<Value>(queue);
    let writer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if event.get(CLOSE).is_some() {
                break;
            }
            if sink
                .send(Message::Text(event.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = sink.close().await;
    });
    (tx, writer)
}

/// A `Stream` call on `client` that sends `config`, then what goes into
/// the returned sender (`queue` messages deep); the future opens the call
/// and gives its replies. Dropping the replies cancels the session.
pub(crate) fn start_call(
    mut client: client::Client,
    config: pb::StreamConfig,
    queue: usize,
) -> (
    mpsc::Sender<pb::ClientMessage>,
    impl std::future::Future<Output = Result<tonic::Streaming<pb::ServerMessage>, tonic::Status>>
        + Send
        + 'static,
) {
    use futures::StreamExt;
    let (tx, rx) = mpsc::channel::<pb::ClientMessage>(queue);
    let first = pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Config(config)),
    };
    let requests =
        futures::stream::iter([first]).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
    let replies = async move { client.stream(requests).await.map(|r| r.into_inner()) };
    (tx, replies)
}

/// An item's id: the session's, then the segment's.
fn item_id(session: &str, segment: u64) -> String {
    format!("item_{}_{segment}", session.trim_start_matches("sess_"))
}

/// The avlm session behind a socket, once audio has come.
struct Call {
    tx: mpsc::Sender<pb::ClientMessage>,
    seq: u64,
    reader: tokio::task::JoinHandle<()>,
}

/// One socket, start to end.
async fn run(socket: WebSocket, bridge: Bridge, token: Option<String>) {
    use futures::StreamExt;
    let (sink, mut incoming) = socket.split();
    let (out_tx, writer) = spawn_writer(sink, 256);
    let events = Events {
        next: Default::default(),
        tx: out_tx,
    };
    let mut settings = Settings::default();
    let session = format!("sess_{}", uuid::Uuid::new_v4().simple());
    let mut created = settings.describe();
    created["id"] = json!(session);
    events
        .send(json!({"type": "transcription_session.created", "session": created}))
        .await;
    let mut call: Option<Call> = None;
    while let Some(message) = incoming.next().await {
        let text = match message {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(Message::Binary(_)) => {
                events
                    .error(
                        "invalid_request_error",
                        "invalid_event",
                        "events are JSON text messages".into(),
                        None,
                    )
                    .await;
                continue;
            }
            Ok(_) => continue,
        };
        let event: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                events
                    .error(
                        "invalid_request_error",
                        "invalid_json",
                        format!("the event is not JSON: {e}"),
                        None,
                    )
                    .await;
                continue;
            }
        };
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "transcription_session.update" => {
                if call.is_some() {
                    events
                        .error(
                            "invalid_request_error",
                            "session_already_started",
                            "the session's settings cannot change once audio has been appended"
                                .into(),
                            Some("session"),
                        )
                        .await;
                    continue;
                }
                let update = event.get("session").cloned().unwrap_or(Value::Null);
                match settings.update(&update) {
                    Ok(()) => {
                        let mut updated = settings.describe();
                        updated["id"] = json!(session);
                        events
                            .send(json!({"type": "transcription_session.updated", "session": updated}))
                            .await;
                    }
                    Err((param, message)) => {
                        events
                            .error(
                                "invalid_request_error",
                                "invalid_value",
                                message,
                                Some(&param),
                            )
                            .await;
                    }
                }
            }
            "input_audio_buffer.append" => {
                let audio = event.get("audio").and_then(Value::as_str).unwrap_or("");
                let data = match base64::engine::general_purpose::STANDARD.decode(audio) {
                    Ok(d) => d,
                    Err(e) => {
                        events
                            .error(
                                "invalid_request_error",
                                "invalid_value",
                                format!("audio is not base64: {e}"),
                                Some("audio"),
                            )
                            .await;
                        continue;
                    }
                };
                if data.is_empty() {
                    continue;
                }
                if call.is_none() {
                    match open(&bridge, token.clone(), &settings, &session, events.clone()).await {
                        Ok(c) => call = Some(c),
                        Err(message) => {
                            events
                                .error("server_error", "unavailable", message, None)
                                .await;
                            break;
                        }
                    }
                }
                let c = call.as_mut().expect("opened above");
                let chunk = pb::ClientMessage {
                    msg: Some(pb::client_message::Msg::Media(pb::MediaChunk {
                        data,
                        seq: c.seq,
                    })),
                };
                c.seq += 1;
                if c.tx.send(chunk).await.is_err() {
                    // The session ended; its reader has said why.
                    break;
                }
            }
            "input_audio_buffer.commit" => match &call {
                Some(c) => {
                    let flush = pb::ClientMessage {
                        msg: Some(pb::client_message::Msg::Control(pb::Control {
                            action: pb::control::Action::Flush as i32,
                            text: String::new(),
                        })),
                    };
                    if c.tx.send(flush).await.is_err() {
                        break;
                    }
                }
                None => {
                    events
                        .error(
                            "invalid_request_error",
                            "input_audio_buffer_commit_empty",
                            "no audio has been appended".into(),
                            None,
                        )
                        .await;
                }
            },
            "input_audio_buffer.clear" => {
                events
                    .error(
                        "invalid_request_error",
                        "unsupported",
                        "avlm transcribes audio as it arrives: appended audio cannot be taken back"
                            .into(),
                        None,
                    )
                    .await;
            }
            other => {
                events
                    .error(
                        "invalid_request_error",
                        "unknown_event",
                        format!("unknown event type {other:?} for a transcription session"),
                        Some("type"),
                    )
                    .await;
            }
        }
    }
    // The client closed: its session is dropped (it gets nothing more).
    if let Some(c) = call {
        drop(c.tx);
        c.reader.abort();
    }
    drop(events);
    let _ = writer.await;
}

/// Opens the avlm session for a socket and starts turning its replies
/// into events.
async fn open(
    bridge: &Bridge,
    token: Option<String>,
    settings: &Settings,
    session: &str,
    events: Events,
) -> Result<Call, String> {
    let target = Target {
        url: bridge.grpc.clone(),
        token,
        ..Default::default()
    };
    let client = client::connect(target).await.map_err(|e| e.to_string())?;
    let (tx, replies) = start_call(client, settings.stream_config(), 64);
    let session = session.to_string();
    let reader = tokio::spawn(async move {
        let replies = match replies.await {
            Ok(r) => r,
            Err(status) => {
                report(&events, &status).await;
                events.close().await;
                return;
            }
        };
        translate(replies, &session, &events).await;
        // The session is over (its status reported if it failed).
        events.close().await;
    });
    Ok(Call { tx, seq: 0, reader })
}

/// Turns a session's replies into realtime events until it ends.
async fn translate(
    mut replies: tonic::Streaming<pb::ServerMessage>,
    session: &str,
    events: &Events,
) {
    use pb::server_message::Msg;
    use std::collections::HashMap;
    // Text of each item already sent as deltas.
    let mut sent: HashMap<u64, String> = HashMap::new();
    let mut previous: Option<String> = None;
    loop {
        let message = match replies.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(status) => {
                report(events, &status).await;
                return;
            }
        };
        let ok = match message.msg {
            Some(Msg::Segment(s)) if s.kind == pb::segment::Kind::SpeechStart as i32 => {
                events
                    .send(json!({
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": (s.start_s * 1000.0).round() as u64,
                        "item_id": item_id(session, s.segment_id),
                    }))
                    .await
            }
            Some(Msg::Segment(s)) if s.kind == pb::segment::Kind::SpeechEnd as i32 => {
                let item = item_id(session, s.segment_id);
                let stopped = events
                    .send(json!({
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": (s.end_s * 1000.0).round() as u64,
                        "item_id": item,
                    }))
                    .await;
                let committed = events
                    .send(json!({
                        "type": "input_audio_buffer.committed",
                        "previous_item_id": previous,
                        "item_id": item,
                    }))
                    .await;
                let created = events
                    .send(json!({
                        "type": "conversation.item.created",
                        "previous_item_id": previous,
                        "item": {
                            "id": item,
                            "object": "realtime.item",
                            "type": "message",
                            "status": "completed",
                            "role": "user",
                            "content": [{"type": "input_audio", "transcript": Value::Null}],
                        },
                    }))
                    .await;
                previous = Some(item);
                stopped && committed && created
            }
            Some(Msg::Partial(p)) => {
                // Deltas only ever append: the committed words of a partial
                // never change, its unstable tail may.
                let done = sent.entry(p.segment_id).or_default();
                match p.stable_text.strip_prefix(done.as_str()) {
                    Some(delta) if !delta.is_empty() => {
                        let delta = delta.to_string();
                        done.push_str(&delta);
                        events
                            .send(json!({
                                "type": "conversation.item.input_audio_transcription.delta",
                                "item_id": item_id(session, p.segment_id),
                                "content_index": 0,
                                "delta": delta,
                            }))
                            .await
                    }
                    _ => true,
                }
            }
            Some(Msg::Final(f)) => {
                let item = item_id(session, f.segment_id);
                let done = sent.remove(&f.segment_id).unwrap_or_default();
                let delta_ok = match f.text.strip_prefix(done.as_str()) {
                    Some(rest) if !rest.is_empty() => {
                        events
                            .send(json!({
                                "type": "conversation.item.input_audio_transcription.delta",
                                "item_id": item,
                                "content_index": 0,
                                "delta": rest,
                            }))
                            .await
                    }
                    _ => true,
                };
                delta_ok
                    && events
                        .send(json!({
                            "type": "conversation.item.input_audio_transcription.completed",
                            "item_id": item,
                            "content_index": 0,
                            "transcript": f.text,
                        }))
                        .await
            }
            _ => true,
        };
        if !ok {
            return;
        }
    }
}

/// Says why the session ended with an error, in the API's terms.
async fn report(events: &Events, status: &tonic::Status) {
    use tonic::Code;
    let kind = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::NotFound => {
            "invalid_request_error"
        }
        Code::Unauthenticated | Code::PermissionDenied => "authentication_error",
        Code::ResourceExhausted => "rate_limit_error",
        _ => "server_error",
    };
    let code = format!("{:?}", status.code()).to_lowercase();
    events
        .error(kind, &code, status.message().to_string(), None)
        .await;
}
