//! The browser demo: one page (camera and microphone through
//! `getUserMedia`, MediaRecorder chunks over a WebSocket) and the socket's
//! bridge into a TRANSCRIBE session on the server's own gRPC listener, the
//! way the OpenAI realtime socket is bridged. The page is embedded in the
//! binary and loads nothing from elsewhere.
//!
//! The socket, `ws://ADDR/ws`:
//! - The client's first message is text, JSON:
//!   `{"type": "start", "video": true, "mime": "video/webm;codecs=vp8,opus"}`,
//!   optionally with `"partials"`, `"captions"`, `"lips"` (booleans, all
//!   on by default: captions when there is video and the model has a vision
//!   encoder, lips when there is video and the model's TRANSCRIBE reads
//!   audio with video) and `"token"` (when the server wants a token; an
//!   `Authorization: Bearer` header on the upgrade does as well).
//! - Then binary messages: the recorder's bytes in order, each at most
//!   [`MAX_MEDIA_MESSAGE`] bytes (WebM/Matroska, MP4 or Ogg, as `mime` says).
//! - `{"type": "stop"}` ends the media: the last words are transcribed,
//!   then `end` comes and the socket closes.
//!
//! The server sends JSON text: `ready` (`session_id`, `modalities`,
//! `captions`, `lips`, `model`), `speech_start`, `speech_end`, `partial`
//! (`stable`, `unstable`), `final` (`text`, `start_s`, `end_s`),
//! `caption` (`text`, `media_time_s`), `stats`, `end`, and `error` (`code`:
//! the gRPC status name, e.g. `INVALID_ARGUMENT`; `message`). An error
//! closes the socket; closing the socket ends its session.

use std::net::SocketAddr;
use std::time::Duration;

use avlm_proto as pb;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitStream;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::client::{self, Target};
use crate::realtime::{spawn_writer, start_call, CLOSE};

/// Largest binary message a client may send (a MediaRecorder chunk of a
/// quarter second is tens of kilobytes).
pub const MAX_MEDIA_MESSAGE: usize = 1 << 20;

/// Largest text message (the start and stop messages).
const MAX_TEXT_MESSAGE: usize = 4096;

/// Media messages queued for the session; with [`MAX_MEDIA_MESSAGE`] this
/// bounds the bytes a socket holds. A full queue stops reading the socket.
const MEDIA_QUEUE: usize = 8;

/// Events queued for the browser.
const EVENT_QUEUE: usize = 64;

/// How long a socket may take to send its start message.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the last events may take to reach a client once its session
/// is over, before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Milliseconds of media between `stats` events.
const STATS_INTERVAL_MS: u32 = 1000;

const PAGE: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/style.css");

/// The page may load only itself and talk only to its own server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self' blob: mediastream:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A running browser demo.
pub struct WebServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Bridge {
    /// The avlm gRPC listener sessions are opened on.
    grpc: String,
}

/// Serves the page on `listen` (port 0 picks a free one) at `/` and its
/// socket at `/ws`, bridging each socket to a session on the plain-HTTP/2
/// gRPC listener at `grpc_url`.
pub async fn serve(listen: SocketAddr, grpc_url: String) -> anyhow::Result<WebServer> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the browser demo on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| asset("text/html", PAGE)))
        .route(
            "/app.js",
            axum::routing::get(|| asset("text/javascript", SCRIPT)),
        )
        .route(
            "/style.css",
            axum::routing::get(|| asset("text/css", STYLE)),
        )
        .route("/ws", axum::routing::get(upgrade))
        .with_state(Bridge { grpc: grpc_url });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the browser demo stopped");
        }
    });
    tracing::info!(%addr, "browser demo at /");
    Ok(WebServer { addr, task })
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, format!("{kind}; charset=utf-8")),
            (header::CACHE_CONTROL, "no-cache".into()),
            (header::CONTENT_SECURITY_POLICY, CSP.into()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        ],
        body,
    )
        .into_response()
}

async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(bridge): State<Bridge>,
) -> Response {
    let token = crate::realtime::authorization_bearer(&headers);
    // Messages a little over the limit still arrive, to be refused with an
    // error event rather than a dropped connection.
    ws.max_message_size(MAX_MEDIA_MESSAGE + 64 * 1024)
        .max_frame_size(MAX_MEDIA_MESSAGE + 64 * 1024)
        .on_upgrade(move |socket| run(socket, bridge, token))
}

/// A refusal or a failed session, as the client sees it.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn event(&self) -> Value {
        json!({"type": "error", "code": self.code, "message": self.message})
    }
}

impl From<&tonic::Status> for Refusal {
    fn from(status: &tonic::Status) -> Self {
        Refusal {
            code: crate::service::code_name(status.code()),
            message: status.message().to_string(),
        }
    }
}

/// A checked start message.
#[derive(Debug, Clone, PartialEq)]
struct Start {
    video: bool,
    partials: bool,
    captions: bool,
    lips: bool,
    /// FFmpeg's name for the recorder's container.
    format: &'static str,
    token: Option<String>,
}

/// The start message as sent.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartMessage {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(default)]
    video: bool,
    #[serde(default)]
    mime: Option<String>,
    partials: Option<bool>,
    captions: Option<bool>,
    lips: Option<bool>,
    token: Option<String>,
}

/// What a client's text message asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Start(Start),
    Stop,
}

fn parse_command(text: &str) -> Result<Command, Refusal> {
    let bad = |m: String| Refusal::new("INVALID_ARGUMENT", m);
    if text.len() > MAX_TEXT_MESSAGE {
        return Err(bad(format!(
            "text messages are at most {MAX_TEXT_MESSAGE} bytes"
        )));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("the message is not JSON: {e}")))?;
    match value.get("type").and_then(Value::as_str) {
        Some("start") => {}
        Some("stop") => return Ok(Command::Stop),
        Some(other) => {
            return Err(bad(format!(
                "unknown message type {other:?}: \"start\" or \"stop\""
            )))
        }
        None => return Err(bad("the message has no \"type\"".into())),
    }
    let m: StartMessage =
        serde_json::from_value(value).map_err(|e| bad(format!("start message: {e}")))?;
    let mime = m.mime.unwrap_or_else(|| "video/webm".into());
    let lower = mime.to_ascii_lowercase();
    let format = if lower.contains("webm") || lower.contains("matroska") {
        "matroska"
    } else if lower.contains("mp4") {
        "mp4"
    } else if lower.contains("ogg") {
        "ogg"
    } else {
        return Err(bad(format!(
            "start message: mime {mime:?} is not a recording this server reads (WebM, Matroska, MP4 or Ogg)"
        )));
    };
    Ok(Command::Start(Start {
        video: m.video,
        partials: m.partials.unwrap_or(true),
        captions: m.captions.unwrap_or(true),
        lips: m.lips.unwrap_or(true),
        format,
        token: m.token.filter(|t| !t.trim().is_empty()),
    }))
}

/// What a start message asks of this server's model.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    captions: bool,
    lips: bool,
    /// Bytes of a media chunk sent on (under the server's message limit).
    chunk: usize,
}

impl Plan {
    fn new(start: &Start, info: &pb::ServerInfo) -> Self {
        let captions =
            start.video && start.captions && info.tasks.contains(&(pb::Task::Caption as i32));
        let lips = start.video
            && start.lips
            && info.models.first().is_some_and(|m| {
                m.transcribe_modalities
                    .contains(&(pb::Modalities::AudioVideo as i32))
            });
        let chunk = (info.max_message_bytes as usize)
            .saturating_sub(1024)
            .clamp(4096, MAX_MEDIA_MESSAGE);
        Plan {
            captions,
            lips,
            chunk,
        }
    }

    fn stream_config(&self, start: &Start) -> pb::StreamConfig {
        pb::StreamConfig {
            task: pb::Task::Transcribe as i32,
            modalities: if self.captions || self.lips {
                pb::Modalities::AudioVideo
            } else {
                pb::Modalities::Audio
            } as i32,
            input: Some(pb::stream_config::Input::Container(pb::ContainerInput {
                format_hint: start.format.into(),
                audio_track: None,
            })),
            options: Some(pb::StreamOptions {
                partial_results: Some(start.partials),
                captions: self.captions.then_some(true),
                stats_interval_ms: Some(STATS_INTERVAL_MS),
                ..Default::default()
            }),
        }
    }
}

/// The event a session's reply becomes, if any; `ready` adds `plan`.
fn event(message: &pb::ServerMessage, plan: &Plan) -> Option<Value> {
    use pb::server_message::Msg;
    Some(match message.msg.as_ref()? {
        Msg::Ready(r) => json!({
            "type": "ready",
            "session_id": r.session_id,
            "modalities": if plan.captions || plan.lips { "audio+video" } else { "audio" },
            "captions": plan.captions,
            "lips": plan.lips,
            "model": r.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        }),
        Msg::Segment(s) if s.kind == pb::segment::Kind::SpeechStart as i32 => json!({
            "type": "speech_start", "segment_id": s.segment_id, "start_s": s.start_s,
        }),
        Msg::Segment(s) => json!({
            "type": "speech_end", "segment_id": s.segment_id,
            "start_s": s.start_s, "end_s": s.end_s,
        }),
        Msg::Partial(p) => json!({
            "type": "partial", "segment_id": p.segment_id,
            "stable": p.stable_text, "unstable": p.unstable_text,
            "start_s": p.start_s, "end_s": p.end_s,
        }),
        Msg::Final(f) => json!({
            "type": "final", "segment_id": f.segment_id, "text": f.text,
            "start_s": f.start_s, "end_s": f.end_s, "latency_s": f.decode_latency_s,
        }),
        Msg::Caption(c) => json!({
            "type": "caption", "text": c.text, "media_time_s": c.media_time_s,
            "latency_s": c.latency_s, "question": c.question,
        }),
        Msg::Stats(s) => json!({
            "type": "stats",
            "media_s": s.media_seconds_received,
            "processed_s": s.media_seconds_processed,
            "buffered_s": s.seconds_buffered,
            "expected_delay_s": s.expected_delay_s,
            "real_time_factor": s.real_time_factor,
            "video_frames": s.video_frames,
            "caption_frames": s.caption_frames,
            "segments_pending": s.segments_pending,
        }),
        // Nothing else is drawn on the page.
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// One socket, start to end.
async fn run(socket: WebSocket, bridge: Bridge, header_token: Option<String>) {
    let (sink, mut incoming) = socket.split();
    let (events, writer) = spawn_writer(sink, EVENT_QUEUE);
    if let Err(refusal) = bridge_socket(&mut incoming, &events, &bridge, header_token).await {
        tracing::debug!(code = refusal.code, message = %refusal.message, "browser socket refused");
        let _ = events.send(refusal.event()).await;
    }
    let _ = events.send(json!({ CLOSE: true })).await;
    drop(events);
    // A client that no longer reads is not waited for.
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_TIMEOUT, writer).await.is_err() {
        abort.abort();
    }
}

/// Reads the start message, opens the session, and passes media on until
/// the session ends or the client leaves; a refusal of the client's input
/// is returned (the session, if open, is then cancelled).
async fn bridge_socket(
    incoming: &mut SplitStream<WebSocket>,
    events: &mpsc::Sender<Value>,
    bridge: &Bridge,
    header_token: Option<String>,
) -> Result<(), Refusal> {
    let first = match tokio::time::timeout(START_TIMEOUT, incoming.next()).await {
        Err(_) => {
            return Err(Refusal::new(
                "DEADLINE_EXCEEDED",
                format!("no start message within {} s", START_TIMEOUT.as_secs()),
            ))
        }
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Ok(()),
        Ok(Some(Ok(m))) => m,
    };
    let start = match first {
        Message::Text(t) => match parse_command(t.as_str())? {
            Command::Start(s) => s,
            Command::Stop => {
                return Err(Refusal::new(
                    "INVALID_ARGUMENT",
                    "the first message must be {\"type\": \"start\", ...}",
                ))
            }
        },
        _ => {
            return Err(Refusal::new(
                "INVALID_ARGUMENT",
                "the first message must be the JSON start message, before any media",
            ))
        }
    };
    let target = Target {
        url: bridge.grpc.clone(),
        token: start.token.clone().or(header_token),
        ..Default::default()
    };
    let mut client = client::connect(target)
        .await
        .map_err(|e| Refusal::new("UNAVAILABLE", e.to_string()))?;
    // GetInfo checks the token too, before any media is taken.
    let info = client
        .get_info(pb::GetInfoRequest {})
        .await
        .map_err(|s| Refusal::from(&s))?
        .into_inner();
    let plan = Plan::new(&start, &info);
    let (media, replies) = start_call(client, plan.stream_config(&start), MEDIA_QUEUE);
    let (done_tx, mut done) = watch::channel(false);
    let reader = {
        let events = events.clone();
        let plan = plan.clone();
        tokio::spawn(async move {
            forward(replies, &events, &plan).await;
            let _ = done_tx.send(true);
        })
    };
    let result = pass_media(incoming, &media, &mut done, &plan).await;
    // The client left or was refused: its session is cancelled (a session
    // that ended by itself has said so already).
    drop(media);
    if !*done.borrow() {
        reader.abort();
    }
    result
}

/// Passes the client's media and stop message to the session until it ends.
async fn pass_media(
    incoming: &mut SplitStream<WebSocket>,
    media: &mpsc::Sender<pb::ClientMessage>,
    done: &mut watch::Receiver<bool>,
    plan: &Plan,
) -> Result<(), Refusal> {
    let mut seq = 0u64;
    let mut stopped = false;
    loop {
        let message = tokio::select! {
            m = incoming.next() => m,
            _ = done.wait_for(|d| *d) => return Ok(()),
        };
        let message = match message {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
            Some(Ok(m)) => m,
        };
        let out: Vec<pb::ClientMessage> = match message {
            Message::Binary(data) => {
                if stopped {
                    return Err(Refusal::new(
                        "INVALID_ARGUMENT",
                        "media after the stop message",
                    ));
                }
                if data.len() > MAX_MEDIA_MESSAGE {
                    return Err(Refusal::new(
                        "RESOURCE_EXHAUSTED",
                        format!(
                            "a media message of {} bytes: they are at most {MAX_MEDIA_MESSAGE} bytes",
                            data.len()
                        ),
                    ));
                }
                data.chunks(plan.chunk)
                    .map(|piece| {
                        seq += 1;
                        pb::ClientMessage {
                            msg: Some(pb::client_message::Msg::Media(pb::MediaChunk {
                                data: piece.to_vec(),
                                seq: seq - 1,
                            })),
                        }
                    })
                    .collect()
            }
            Message::Text(t) => match parse_command(t.as_str())? {
                Command::Stop if !stopped => {
                    stopped = true;
                    vec![pb::ClientMessage {
                        msg: Some(pb::client_message::Msg::Control(pb::Control {
                            action: pb::control::Action::EndOfStream as i32,
                            ..Default::default()
                        })),
                    }]
                }
                Command::Stop => Vec::new(),
                Command::Start(_) => {
                    return Err(Refusal::new(
                        "INVALID_ARGUMENT",
                        "a second start message: one stream a socket",
                    ))
                }
            },
            _ => Vec::new(),
        };
        for m in out {
            tokio::select! {
                sent = media.send(m) => if sent.is_err() { return Ok(()) },
                _ = done.wait_for(|d| *d) => return Ok(()),
            }
        }
    }
}

/// Turns a session's replies into events until it ends, then closes the
/// socket after them.
async fn forward(
    replies: impl std::future::Future<
        Output = Result<tonic::Streaming<pb::ServerMessage>, tonic::Status>,
    >,
    events: &mpsc::Sender<Value>,
    plan: &Plan,
) {
    let last = match replies.await {
        Err(status) => Refusal::from(&status).event(),
        Ok(mut replies) => loop {
            match replies.message().await {
                Ok(Some(m)) => {
                    if let Some(e) = event(&m, plan) {
                        if events.send(e).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break json!({"type": "end"}),
                Err(status) => break Refusal::from(&status).event(),
            }
        },
    };
    let _ = events.send(last).await;
    let _ = events.send(json!({ CLOSE: true })).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(text: &str) -> Start {
        match parse_command(text) {
            Ok(Command::Start(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn start_messages_are_checked() {
        let s = start(r#"{"type":"start","video":true,"mime":"video/webm;codecs=vp8,opus"}"#);
        assert!(s.video && s.partials && s.captions && s.lips);
        assert_eq!(s.format, "matroska");
        assert_eq!(
            start(r#"{"type":"start","mime":"audio/mp4"}"#).format,
            "mp4"
        );
        assert_eq!(start(r#"{"type":"start","token":" "}"#).token, None);
        assert_eq!(parse_command(r#"{"type":"stop"}"#), Ok(Command::Stop));
        for (bad, needle) in [
            ("{", "not JSON"),
            (r#"{"video":true}"#, "no \"type\""),
            (r#"{"type":"begin"}"#, "unknown message type"),
            (r#"{"type":"start","colour":1}"#, "unknown field `colour`"),
            (r#"{"type":"start","video":"yes"}"#, "invalid type"),
            (r#"{"type":"start","mime":"audio/wav"}"#, "audio/wav"),
        ] {
            let e = parse_command(bad).expect_err(bad);
            assert_eq!(e.code, "INVALID_ARGUMENT");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
        let long = format!(r#"{{"type":"start","token":"{}"}}"#, "x".repeat(5000));
        assert!(parse_command(&long).is_err());
    }

    #[test]
    fn captions_and_lips_follow_the_model_and_the_video() {
        let mut info = pb::ServerInfo {
            max_message_bytes: 4 << 20,
            tasks: vec![pb::Task::Transcribe as i32, pb::Task::Caption as i32],
            models: vec![pb::ModelInfo {
                transcribe_modalities: vec![pb::Modalities::Audio as i32],
                ..Default::default()
            }],
            ..Default::default()
        };
        let video = start(r#"{"type":"start","video":true}"#);
        let plan = Plan::new(&video, &info);
        assert!(plan.captions && !plan.lips);
        assert_eq!(plan.chunk, MAX_MEDIA_MESSAGE);
        let config = plan.stream_config(&video);
        assert_eq!(config.modalities, pb::Modalities::AudioVideo as i32);
        assert_eq!(config.options.unwrap().captions, Some(true));

        let audio = start(r#"{"type":"start","video":false}"#);
        let plan = Plan::new(&audio, &info);
        assert!(!plan.captions && !plan.lips);
        assert_eq!(
            plan.stream_config(&audio).modalities,
            pb::Modalities::Audio as i32
        );

        info.tasks = vec![pb::Task::Transcribe as i32];
        info.models[0]
            .transcribe_modalities
            .push(pb::Modalities::AudioVideo as i32);
        info.max_message_bytes = 64 << 10;
        let plan = Plan::new(&video, &info);
        assert!(!plan.captions && plan.lips);
        assert_eq!(plan.chunk, (64 << 10) - 1024);
        let plan = Plan::new(
            &start(r#"{"type":"start","video":true,"lips":false}"#),
            &info,
        );
        assert!(!plan.lips);
    }

    #[test]
    fn status_codes_keep_their_grpc_names() {
        let r = Refusal::from(&tonic::Status::unauthenticated("no token"));
        assert_eq!(
            r.event(),
            json!({"type": "error", "code": "UNAUTHENTICATED", "message": "no token"})
        );
    }
}
