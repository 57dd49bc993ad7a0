//! The tonic service: a thin edge that turns gRPC calls into sessions, and
//! counts what each session's replies say into the metrics as they are sent.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use avlm_proto as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::metrics::{self, EndLabels, KindLabel, TaskLabel};
use crate::state::ServerState;

/// Server messages buffered per session before the session waits for the client.
pub const REPLY_QUEUE: usize = 64;

/// The loaded server state, set once the models are loaded; calls before
/// that are answered UNAVAILABLE.
#[derive(Clone, Default)]
pub struct StateSlot(Arc<OnceLock<Arc<ServerState>>>);

impl StateSlot {
    pub fn set(&self, state: Arc<ServerState>) {
        let _ = self.0.set(state);
    }

    fn get(&self) -> Result<&Arc<ServerState>, Status> {
        self.0.get().ok_or_else(|| {
            Status::unavailable("the server is still loading its models; retry shortly")
        })
    }
}

pub struct AvlmService {
    state: StateSlot,
    /// Turns true when a shutdown's grace period is over: open streams then
    /// end with UNAVAILABLE (retry elsewhere) instead of a broken connection.
    cut: tokio::sync::watch::Receiver<bool>,
}

impl AvlmService {
    pub fn new(state: StateSlot, cut: tokio::sync::watch::Receiver<bool>) -> Self {
        AvlmService { state, cut }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::avlm_server::Avlm for AvlmService {
    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let state = self.state.get()?;
        let Some(lease) = state.try_lease() else {
            metrics::get()
                .sessions_ended
                .get_or_create(&EndLabels {
                    task: "none",
                    code: code_name(tonic::Code::ResourceExhausted),
                })
                .inc();
            return Err(Status::resource_exhausted(format!(
                "the server is at its limit of {} concurrent sessions (serve --max-sessions); retry later",
                state.config.max_sessions
            )));
        };
        let peer = request.remote_addr();
        let span = tracing::info_span!("session", id = %lease.id, peer = ?peer);
        let (tx, replies) = crate::replies::channel(REPLY_QUEUE, state.config.idle_timeout);
        tokio::spawn(
            crate::session::run(state.clone(), request.into_inner(), tx, lease).instrument(span),
        );
        let mut cut = self.cut.clone();
        Ok(Response::new(Box::pin(Observed {
            inner: Box::pin(replies),
            seen: Seen::default(),
            cut: Some(Box::pin(async move {
                // A dropped sender (the server is gone) never cuts.
                if cut.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })),
        })))
    }

    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let state = self.state.get()?;
        Ok(Response::new(pb::ServerInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            models: vec![state.model_info()],
            max_sessions: state.config.max_sessions as u32,
            active_sessions: state.active_sessions() as u32,
            max_message_bytes: state.config.max_message_bytes as u64,
            tasks: state.tasks().into_iter().map(|t| t as i32).collect(),
        }))
    }
}

/// A session's replies on their way to the client, seen by the metrics.
struct Observed {
    inner: ReplyStream,
    seen: Seen,
    /// Resolves when the server cuts open streams; `None` once it has.
    cut: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl Stream for Observed {
    type Item = Result<pb::ServerMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.cut {
            Some(cut) => {
                if cut.as_mut().poll(cx).is_ready() {
                    self.cut = None;
                    let status = Status::unavailable(
                        "the server is shutting down and its grace period is over; reconnect (to another server) and resend",
                    );
                    self.seen.end(status.code());
                    return Poll::Ready(Some(Err(status)));
                }
            }
            // Cut: the stream has ended.
            None => return Poll::Ready(None),
        }
        let item = self.inner.poll_next_unpin(cx);
        match &item {
            Poll::Ready(Some(Ok(m))) => self.seen.message(m),
            Poll::Ready(Some(Err(status))) => self.seen.end(status.code()),
            Poll::Ready(None) => self.seen.end(tonic::Code::Ok),
            Poll::Pending => {}
        }
        item
    }
}

/// What the metrics need to remember of one session.
#[derive(Default)]
struct Seen {
    /// The task from `Ready` (the gauge is raised then).
    task: Option<&'static str>,
    ended: bool,
    /// When each open segment's SPEECH_START went out (until its first Partial).
    started: HashMap<u64, Instant>,
    /// When each closed segment's SPEECH_END went out (until its Final).
    closed: HashMap<u64, Instant>,
    audio_s: f64,
    caption_frames: u64,
    caption_fps: f32,
}

fn task_name(task: i32) -> &'static str {
    match pb::Task::try_from(task).unwrap_or(pb::Task::Unspecified) {
        pb::Task::Transcribe => "transcribe",
        pb::Task::Caption => "caption",
        pb::Task::Segments | pb::Task::Unspecified => "segments",
    }
}

/// The gRPC status name of `code` (`INVALID_ARGUMENT`), as Prometheus labels
/// and the browser socket spell it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Seen {
    fn message(&mut self, m: &pb::ServerMessage) {
        use pb::server_message::Msg;
        let metrics = metrics::get();
        match &m.msg {
            Some(Msg::Ready(r)) => {
                let config = r.config.clone().unwrap_or_default();
                let task = task_name(config.task);
                self.caption_fps = config.options.and_then(|o| o.caption_fps).unwrap_or(0.0);
                if self.task.is_none() {
                    metrics
                        .sessions_active
                        .get_or_create(&TaskLabel { task })
                        .inc();
                }
                self.task = Some(task);
            }
            Some(Msg::Segment(s)) => {
                if s.kind == pb::segment::Kind::SpeechStart as i32 {
                    self.started.insert(s.segment_id, Instant::now());
                } else if s.kind == pb::segment::Kind::SpeechEnd as i32 {
                    self.started.remove(&s.segment_id);
                    if self.task == Some("transcribe") {
                        self.closed.insert(s.segment_id, Instant::now());
                    }
                }
            }
            Some(Msg::Partial(p)) => {
                if let Some(t) = self.started.remove(&p.segment_id) {
                    metrics
                        .first_partial_latency
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            Some(Msg::Final(f)) => {
                metrics.finals.inc();
                if let Some(t) = self.closed.remove(&f.segment_id) {
                    metrics.final_latency.observe(t.elapsed().as_secs_f64());
                }
            }
            Some(Msg::Caption(_)) => {
                metrics.captions.inc();
            }
            Some(Msg::Ack(_) | Msg::Resumed(_)) => {}
            Some(Msg::Stats(s)) => {
                let audio = s.media_seconds_processed - self.audio_s;
                if audio > 0.0 {
                    metrics
                        .media_seconds
                        .get_or_create(&KindLabel { kind: "audio" })
                        .inc_by(audio);
                    self.audio_s = s.media_seconds_processed;
                }
                let frames = s.caption_frames.saturating_sub(self.caption_frames);
                if frames > 0 {
                    metrics.caption_frames.inc_by(frames);
                    if self.caption_fps > 0.0 {
                        metrics
                            .media_seconds
                            .get_or_create(&KindLabel { kind: "video" })
                            .inc_by(frames as f64 / self.caption_fps as f64);
                    }
                    self.caption_frames = s.caption_frames;
                }
            }
            None => {}
        }
    }

    fn end(&mut self, code: tonic::Code) {
        if self.ended {
            return;
        }
        self.ended = true;
        let metrics = metrics::get();
        let task = self.task.unwrap_or("none");
        if self.task.is_some() {
            metrics
                .sessions_active
                .get_or_create(&TaskLabel { task })
                .dec();
        }
        metrics
            .sessions_ended
            .get_or_create(&EndLabels {
                task,
                code: code_name(code),
            })
            .inc();
    }
}

impl Drop for Seen {
    /// A call dropped before its end: the client went away.
    fn drop(&mut self) {
        self.end(tonic::Code::Cancelled);
    }
}
