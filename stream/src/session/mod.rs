//! One live session: the async reader that validates client messages and
//! feeds the byte pipe, the decoder thread, and the analysis thread.
//!
//! ```text
//! gRPC reader (async) ──pipe──▶ decoder thread ──channel──▶ analysis thread ──▶ response stream
//! ```
//! Every hop is bounded: a slow consumer slows the producer, nothing is
//! dropped. Any part seeing the client gone tears the others down.

pub mod analysis;
pub mod caption;
pub mod lips;
pub mod resume;
pub mod transcribe;
pub mod valid;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use avlm_encoders::Endpointer;
use avlm_proto as pb;
use tokio::sync::mpsc::Sender;
use tonic::{Status, Streaming};

use crate::error::{ErrorKind, SessionError};

use crate::media::pipe::{byte_pipe, PipeWriter};
use crate::media::sniff::{Mp4Layout, Mp4Sniffer};
use crate::media::{self, DecodeMeter, InputSpec, MediaError, MediaSink};
use crate::state::{ServerState, SessionLease};
use analysis::{Analysis, Meters, Outbox};

/// Decoded media items in flight between decoder and analysis.
const MEDIA_QUEUE: usize = 32;

use crate::replies::Reply;

/// Runs a session to its end. `lease` holds the session's slot.
pub async fn run(
    state: Arc<ServerState>,
    mut inbound: Streaming<pb::ClientMessage>,
    tx: Sender<Reply>,
    lease: SessionLease,
) {
    let lease = Arc::new(lease);
    let call_watch = release_when_the_call_ends(&lease, &tx);
    let idle = state.config.idle_timeout;
    let first = tokio::select! {
        m = inbound.message() => m,
        _ = tx.closed() => return,
        // A stream that never sends its config must not hold a slot.
        _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => {
            return fail(&tx, SessionError::deadline(format!(
                "no StreamConfig from the client within {} s of opening the stream (serve --idle-timeout-s)",
                idle.unwrap_or_default().as_secs_f64()
            )))
            .await;
        }
    };
    let config = match first {
        Ok(Some(pb::ClientMessage {
            msg: Some(pb::client_message::Msg::Config(c)),
        })) => c,
        Ok(Some(pb::ClientMessage {
            msg: Some(pb::client_message::Msg::Resume(r)),
        })) => {
            // This call carries a stream that already runs: it needs no slot.
            drop(lease);
            let attach = resume::Attach {
                inbound,
                tx,
                replies_received: r.replies_received,
            };
            if let Err(attach) = state.resumable.resume(&r.token, attach) {
                return fail(
                    &attach.tx,
                    SessionError::not_found(
                        "Resume.token: no resumable stream with this token on this server (it ended, or its client was away longer than the server's grace period, serve --resume-grace-s)",
                    ),
                )
                .await;
            }
            return;
        }
        Ok(Some(pb::ClientMessage {
            msg: Some(pb::client_message::Msg::Media(_)),
        })) => {
            return fail(&tx, SessionError::bad_input("a MediaChunk came before the StreamConfig: the first message of a stream must be a StreamConfig")).await;
        }
        Ok(Some(pb::ClientMessage {
            msg: Some(pb::client_message::Msg::Control(_)),
        })) => {
            return fail(&tx, SessionError::bad_input("a Control came before the StreamConfig: the first message of a stream must be a StreamConfig")).await;
        }
        Ok(Some(pb::ClientMessage { msg: None })) => {
            return fail(
                &tx,
                SessionError::bad_input(
                    "empty ClientMessage: the first message of a stream must be a StreamConfig",
                ),
            )
            .await;
        }
        Ok(None) => {
            return fail(
                &tx,
                SessionError::bad_input("the stream ended before its StreamConfig"),
            )
            .await
        }
        Err(status) => {
            let error = inbound_status(status, state.config.max_message_bytes);
            if error.kind == ErrorKind::Cancelled {
                tracing::info!(message = %error.message, "client went away before its StreamConfig");
                return;
            }
            return fail(&tx, error).await;
        }
    };
    let caps = valid::Capabilities {
        model_name: state.model_name(),
        transcribe: state.engine.as_ref().is_some_and(|e| e.transcribes()),
        lips: state.engine.as_ref().map(|e| e.lips()).unwrap_or_default(),
        caption: state.engine.as_ref().and_then(|e| e.caption_defaults()),
    };
    let valid = match valid::validate(config, &state.config.defaults, &caps) {
        Ok(v) => v,
        Err(status) => return fail(&tx, status).await,
    };
    if let Some(e) = overloaded(&state, &valid) {
        return fail(&tx, e).await;
    }
    let media = match state.reserve_media(media_bytes(&valid, state.config.pipe_bytes)) {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(&tx, e).await,
    };
    tracing::info!(task = ?valid.task, input = ?valid.decode.input, "session started");
    // A resumable stream replies through a relay that outlives this call.
    let (tx, resume_token, mut resumed) = if valid.resumable {
        let token = resume::new_token();
        let (session_tx, reader_side) = resume::start(
            state.clone(),
            token.clone(),
            tx,
            crate::service::REPLY_QUEUE,
            state.config.resume_grace,
        );
        // The slot is held until the stream is over, not this call.
        call_watch.abort();
        release_when_the_call_ends(&lease, &session_tx);
        (session_tx, token, Some(reader_side))
    } else {
        (tx, String::new(), None)
    };

    let vad = {
        let vad = state.vad.clone();
        match tokio::task::spawn_blocking(move || vad.stream()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return fail(
                    &tx,
                    SessionError::internal(format!("cannot start voice activity detection: {e}")),
                )
                .await
            }
            Err(e) => {
                return fail(
                    &tx,
                    SessionError::internal(format!("cannot start voice activity detection: {e}")),
                )
                .await
            }
        }
    };

    let lips = match (
        valid.lips,
        state.engine.as_ref().and_then(|e| e.face_detector()),
    ) {
        (true, Some(path)) => {
            let path = path.to_path_buf();
            let max_segment_s = valid.endpoint.max_segment_s;
            // A whole-utterance stream is one segment: no face segmentation.
            let video_only = !valid.decode.audio && !valid.whole_utterance;
            match tokio::task::spawn_blocking(move || lips::LipTrack::new(&path)).await {
                Ok(Ok(track)) => Some(if video_only {
                    (track.segmenting(max_segment_s), max_segment_s)
                } else {
                    (track, max_segment_s)
                }),
                Ok(Err(e)) => return fail(&tx, e).await,
                Err(e) => {
                    return fail(
                        &tx,
                        SessionError::internal(format!("cannot start lip reading: {e}")),
                    )
                    .await
                }
            }
        }
        _ => None,
    };

    let ready = pb::Ready {
        resume_token,
        session_id: lease.id.clone(),
        config: Some(valid.effective.clone()),
        model: Some(state.model_info()),
    };
    if tx
        .send(Ok(pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Ready(ready)),
        }))
        .await
        .is_err()
    {
        return;
    }

    let (writer, reader) = byte_pipe(state.config.pipe_bytes);
    let (media_tx, media_rx) = sync_channel(MEDIA_QUEUE);
    let (done_tx, done_rx) = sync_channel::<Result<(), MediaError>>(1);
    let decode_meter = Arc::new(DecodeMeter::default());
    let bytes_received = Arc::new(AtomicU64::new(0));

    let spec = valid.decode.clone();
    let sink = MediaSink {
        tx: media_tx,
        meter: decode_meter.clone(),
    };
    let decoder_media = media.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("avlm-decode-{}", &lease.id[..8]))
        .spawn(move || {
            let result = media::decode(&spec, reader, sink);
            let _ = done_tx.send(result);
            drop(decoder_media);
        });
    if let Err(e) = spawned {
        return fail(
            &tx,
            SessionError::resource(format!("cannot start a decoder thread: {e}")),
        )
        .await;
    }

    let captioner = match (&valid.captions, &state.engine) {
        (Some(config), Some(engine)) => match engine.vision() {
            Some(vision) => match caption::Captioner::start(
                engine,
                vision.clone(),
                *config,
                Outbox { tx: tx.clone() },
                crate::engine::session_number(),
                &lease.id[..8],
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    writer.abort_handle().abort();
                    return fail(&tx, e).await;
                }
            },
            None => None,
        },
        _ => None,
    };
    let asker = captioner.as_ref().map(caption::Captioner::asker);
    let questions = state.engine.as_ref().is_some_and(|e| e.takes_questions());
    let analysis = Analysis::new(
        vad,
        Endpointer::new(valid.endpoint.clone()),
        Outbox { tx: tx.clone() },
        Meters {
            decode: decode_meter,
            bytes_received: bytes_received.clone(),
        },
        valid.stats_interval_s,
        match (valid.task, &state.engine) {
            (valid::Task::Transcribe, Some(engine)) => {
                let t = transcribe::Transcriber::new(
                    engine.clone(),
                    tx.clone(),
                    lease.clone(),
                    valid.partial_interval_s,
                    &tokio::runtime::Handle::current(),
                )
                .reaching_back(&valid.endpoint);
                Some(match lips {
                    Some((track, max_segment_s)) => t.reading_lips(track, max_segment_s),
                    None => t,
                })
            }
            _ => None,
        },
    )
    .whole_utterance(valid.whole_utterance)
    .reading_lips(valid.lips, valid.captions.map(|c| c.fps))
    .captioning(captioner, !valid.decode.audio);
    let analysis_lease = lease.clone();
    // Fires when the analysis thread is done, so a client that sent
    // END_OF_STREAM but keeps its side open still gets the end of the call.
    let (done_signal, mut analysis_done) = tokio::sync::oneshot::channel::<()>();
    let abort = writer.abort_handle();
    let analysis_abort = abort.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("avlm-analyse-{}", &lease.id[..8]))
        .spawn(move || {
            let outcome = analysis.run(media_rx, done_rx, analysis_lease);
            if matches!(outcome, analysis::Outcome::Gone) {
                analysis_abort.abort();
            }
            // The decoded media it consumed is freed: the reservation goes
            // once the decoder is done too.
            drop(media);
            let _ = done_signal.send(());
        });
    if let Err(e) = spawned {
        abort.abort();
        return fail(
            &tx,
            SessionError::resource(format!("cannot start an analysis thread: {e}")),
        )
        .await;
    }

    let is_container = matches!(valid.decode.input, InputSpec::Container { .. });
    let mut reader = Reader {
        writer: Some(writer),
        expected_seq: 0,
        sniffer: is_container.then(Mp4Sniffer::default),
        bytes_received,
        ended: false,
        asker,
        questions,
        acks: resumed.as_ref().map(|r| Acks {
            next_seq: r.next_seq.clone(),
            last: None,
        }),
    };
    loop {
        match reader
            .pump(&mut inbound, &tx, &state, &mut analysis_done)
            .await
        {
            Err(status) => {
                abort.abort();
                tracing::info!(kind = status.kind.label(), message = %status.message, "session failed");
                fail(&tx, status).await;
                break;
            }
            // A resumable stream waits for its client's next call (the
            // relay ends the wait after the grace period).
            Ok(PumpEnd::Dropped) if resumed.is_some() => {
                let next = resumed.as_mut().expect("checked").inbound.recv().await;
                match next {
                    Some(call) => inbound = call,
                    None => {
                        abort.abort();
                        break;
                    }
                }
            }
            Ok(_) => break,
        }
    }
    // The client is gone (its END_OF_STREAM may have come first): nobody
    // will see the rest of what it sent, so decoding stops.
    if tx.is_closed() {
        abort.abort();
    }
    drop(lease);
}

/// A slot counts an open call. The session's parts hold its lease while they
/// run, and a part may outlive the call: after the client went away, the
/// analysis thread may still work through buffered media or wait for room
/// in the model's inbox, and under load that counted sessions that no
/// longer existed for anyone (61 active with 28 calls open) and would turn
/// clients away at --max-sessions. So the slot is released as soon as the
/// reply stream is dropped (the client is gone, or the call ended with an
/// error), whatever the parts still do; they stop as they notice.
fn release_when_the_call_ends(
    lease: &Arc<SessionLease>,
    tx: &Sender<Reply>,
) -> tokio::task::JoinHandle<()> {
    let watched = Arc::downgrade(lease);
    let all_parts_done = lease.dropped();
    // Holds a sender only until every part let go, so it never keeps the
    // call open by itself.
    let tx = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tx.closed() => {
                if let Some(lease) = watched.upgrade() {
                    lease.release();
                }
            }
            () = all_parts_done => {}
        }
    })
}

/// Ends the stream with `status` (if the client still listens).
async fn fail(tx: &Sender<Reply>, status: SessionError) {
    let _ = tx.send(Err(status)).await;
}

/// Client-side failures seen while reading the request stream.
fn inbound_status(status: Status, max_message_bytes: usize) -> SessionError {
    if status.code() == tonic::Code::Internal && status.message().contains("decode") {
        return SessionError::bad_input(format!(
            "a ClientMessage could not be decoded: {}",
            status.message()
        ));
    }
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        return SessionError::resource(format!(
            "a message exceeds the server's limit of {} bytes (serve --max-message-bytes): send media in smaller chunks ({})",
            max_message_bytes,
            status.message()
        ));
    }
    // The call broke below gRPC: the connection was reset or closed under
    // the stream (a client killed, a network gone), which tonic reports as
    // UNKNOWN or INTERNAL "h2 protocol error". Nothing the client sent was
    // wrong, and no status can reach it: it went away.
    if status.code() == tonic::Code::Unknown || status.message().starts_with("h2 protocol error") {
        return SessionError::new(
            ErrorKind::Cancelled,
            format!("the client went away ({})", status.message()),
        );
    }
    SessionError::from_inbound(&status)
}

struct Reader {
    writer: Option<PipeWriter>,
    expected_seq: u64,
    sniffer: Option<Mp4Sniffer>,
    bytes_received: Arc<AtomicU64>,
    ended: bool,
    /// Where questions go (caption sessions).
    asker: Option<caption::Asker>,
    /// The model takes questions.
    questions: bool,
    /// Resumable streams: the accepted chunks, told to the client.
    acks: Option<Acks>,
}

/// How a resumable stream acknowledges chunks.
struct Acks {
    /// Shared with the relay: the seq a resuming client sends from.
    next_seq: Arc<AtomicU64>,
    last: Option<std::time::Instant>,
}

/// Acknowledgements at most this often while chunks arrive.
const ACK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Why the reader stopped reading a call.
enum PumpEnd {
    /// The client is done (END_OF_STREAM, half-close) or the stream ended.
    Finished,
    /// The connection dropped under the call.
    Dropped,
}

/// Names the chunks skipped when `got` arrives where `expected` was due
/// (`got > expected`): every seq from `expected` up to, not including, `got`.
fn missing_chunks(expected: u64, got: u64) -> String {
    match got - expected {
        1 => format!("chunk {expected} is missing"),
        n => format!("chunks {expected} to {} are missing ({n} chunks)", got - 1),
    }
}

/// Longest question a client may ask, in bytes.
const MAX_QUESTION_BYTES: usize = 1000;

/// The most bytes of audio one decoded item carries (FFmpeg's audio frames
/// are a few thousand samples; resampled to 16 kHz mono f32).
const MAX_AUDIO_ITEM_BYTES: u64 = 64 << 10;

/// The most decoded media a session can hold at once: its byte ring plus a
/// full queue of its largest items (RGB frames at its frame size, or audio).
fn media_bytes(valid: &valid::ValidConfig, pipe_bytes: usize) -> u64 {
    let frame = valid
        .decode
        .video
        .as_ref()
        .map_or(0, |v| u64::from(v.width) * u64::from(v.height) * 3);
    pipe_bytes as u64 + MEDIA_QUEUE as u64 * frame.max(MAX_AUDIO_ITEM_BYTES)
}

/// Why a new session that needs the model is refused, when the model's
/// queue is over the server's limit: a balancer or client retries elsewhere
/// instead of every session waiting longer.
fn overloaded(state: &ServerState, valid: &valid::ValidConfig) -> Option<SessionError> {
    let limit = state.config.max_queued_audio_s?;
    let engine = state.engine.as_ref()?;
    let uses_model = valid.task == valid::Task::Transcribe || valid.captions.is_some();
    let queued = engine.load().backlog_s();
    (uses_model && queued > limit).then(|| {
        SessionError::resource(format!(
            "the model has {queued:.0} s of audio queued, over this server's limit of {limit:.0} s (serve --max-queued-audio-s); retry later or on another server"
        ))
    })
}

impl Reader {
    /// Reads client messages until the client is done or something is wrong.
    async fn pump(
        &mut self,
        inbound: &mut Streaming<pb::ClientMessage>,
        tx: &Sender<Reply>,
        state: &ServerState,
        analysis_done: &mut tokio::sync::oneshot::Receiver<()>,
    ) -> Result<PumpEnd, SessionError> {
        let idle = state.config.idle_timeout;
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                // The response side closed: the client is gone or the session failed.
                _ = tx.closed() => return Ok(PumpEnd::Finished),
                // Everything after END_OF_STREAM is reported: end the call.
                _ = &mut *analysis_done, if self.ended => return Ok(PumpEnd::Finished),
                // A client that holds a stream open without sending frees its slot.
                _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() && !self.ended => {
                    if let Some(w) = self.writer.take() {
                        w.abort_handle().abort();
                    }
                    return Err(SessionError::deadline(format!(
                        "no message from the client for {} s: a live stream sends media as it is captured (serve --idle-timeout-s)",
                        idle.unwrap_or_default().as_secs_f64()
                    )));
                }
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => {
                    // Half-close counts as end of stream.
                    self.close(tx).await;
                    return Ok(PumpEnd::Finished);
                }
                Err(status) => {
                    let error = inbound_status(status, state.config.max_message_bytes);
                    if error.kind == ErrorKind::Cancelled && self.acks.is_some() {
                        // A resumable stream keeps what it accepted.
                        tracing::info!(message = %error.message, "connection dropped: the stream waits for its client");
                        return Ok(PumpEnd::Dropped);
                    }
                    if let Some(w) = self.writer.take() {
                        w.abort_handle().abort();
                    }
                    if error.kind == ErrorKind::Cancelled {
                        tracing::info!(message = %error.message, "client went away");
                        return Ok(PumpEnd::Finished);
                    }
                    return Err(error);
                }
            };
            match msg.msg {
                Some(pb::client_message::Msg::Config(_)) => {
                    return Err(SessionError::bad_input(
                        "a second StreamConfig: a stream takes exactly one, as its first message",
                    ));
                }
                Some(pb::client_message::Msg::Resume(_)) => {
                    return Err(SessionError::bad_input(
                        "a Resume inside a stream: Resume is the first message of a call that continues a stream",
                    ));
                }
                Some(pb::client_message::Msg::Media(chunk)) => self.media(chunk, tx).await?,
                Some(pb::client_message::Msg::Control(control)) => {
                    match pb::control::Action::try_from(control.action) {
                        Ok(pb::control::Action::Flush) => {
                            if self.ended {
                                return Err(SessionError::bad_input(
                                    "Control FLUSH after END_OF_STREAM",
                                ));
                            }
                            if let Some(w) = &self.writer {
                                w.mark_flush();
                            }
                        }
                        Ok(pb::control::Action::EndOfStream) => self.close(tx).await,
                        Ok(pb::control::Action::Ask) => self.ask(control.text)?,
                        _ => {
                            return Err(SessionError::bad_input(format!(
                                "Control.action {} is not a known action",
                                control.action
                            )))
                        }
                    }
                }
                None => return Err(SessionError::bad_input("empty ClientMessage")),
            }
        }
    }

    async fn media(
        &mut self,
        chunk: pb::MediaChunk,
        tx: &Sender<Reply>,
    ) -> Result<(), SessionError> {
        if self.ended {
            return Err(SessionError::bad_input(format!(
                "MediaChunk seq {} after END_OF_STREAM",
                chunk.seq
            )));
        }
        // A resumed client sends again what it was not told was accepted:
        // chunks the server has already taken are skipped, once.
        if self.acks.is_some() && chunk.seq < self.expected_seq {
            return Ok(());
        }
        if chunk.seq != self.expected_seq {
            return Err(if chunk.seq > self.expected_seq {
                SessionError::data_loss(format!(
                    "MediaChunk seq {} arrived where {} was expected: {}",
                    chunk.seq,
                    self.expected_seq,
                    missing_chunks(self.expected_seq, chunk.seq)
                ))
            } else {
                SessionError::bad_input(format!(
                    "MediaChunk seq {} repeats or goes back (expected {}): seq starts at 0 and grows by one per chunk",
                    chunk.seq, self.expected_seq
                ))
            });
        }
        self.expected_seq += 1;
        if let Some(sniffer) = &mut self.sniffer {
            if sniffer.push(&chunk.data) == Mp4Layout::IndexAtEnd {
                return Err(SessionError::from(&MediaError::IndexAtEnd));
            }
            if sniffer.verdict() == Mp4Layout::Streamable {
                self.sniffer = None;
            }
        }
        self.bytes_received
            .fetch_add(chunk.data.len() as u64, Ordering::AcqRel);
        if let Some(w) = &mut self.writer {
            // The decoder stopped (it failed or finished): its error reaches
            // the client from the analysis thread; stop reading.
            if w.write_all(&chunk.data).await.is_err() {
                self.writer = None;
            }
        }
        self.ack(tx, false).await;
        Ok(())
    }

    /// Resumable streams: tells the client which chunks are accepted, at
    /// most every [`ACK_INTERVAL`] unless `now`.
    async fn ack(&mut self, tx: &Sender<Reply>, now: bool) {
        let Some(acks) = &mut self.acks else {
            return;
        };
        acks.next_seq.store(self.expected_seq, Ordering::Release);
        if !now && acks.last.is_some_and(|t| t.elapsed() < ACK_INTERVAL) {
            return;
        }
        acks.last = Some(std::time::Instant::now());
        let ack = pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Ack(pb::Ack {
                next_seq: self.expected_seq,
            })),
        };
        let _ = tx.send(Ok(ack)).await;
    }

    fn ask(&mut self, text: String) -> Result<(), SessionError> {
        let refuse = |why: &str| Err(SessionError::bad_input(format!("Control ASK: {why}")));
        if self.ended {
            return refuse("after END_OF_STREAM");
        }
        let Some(asker) = &self.asker else {
            return refuse(
                "questions are about the video: the session needs captions (task CAPTION or options.captions)",
            );
        };
        if !self.questions {
            return refuse("this server's caption model takes no questions (its [caption] has no question_prompt)");
        }
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_QUESTION_BYTES {
            return refuse(&format!(
                "the question (Control.text) must have 1..={MAX_QUESTION_BYTES} bytes, got {}",
                text.len()
            ));
        }
        asker.ask(text.to_string());
        Ok(())
    }

    async fn close(&mut self, tx: &Sender<Reply>) {
        let first = !self.ended;
        self.ended = true;
        if let Some(w) = &self.writer {
            w.close();
        }
        if first {
            self.ack(tx, true).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_a_client_that_went_away_not_a_failure() {
        // What tonic reports when a client is killed mid-stream.
        let killed = Status::unknown("h2 protocol error: error reading a body from connection");
        assert_eq!(inbound_status(killed, 1000).kind, ErrorKind::Cancelled);
        let reset = Status::internal(
            "h2 protocol error: stream error received: unspecific protocol error detected",
        );
        assert_eq!(inbound_status(reset, 1000).kind, ErrorKind::Cancelled);
        // What a client sent wrong is still its error.
        let garbled = Status::internal("failed to decode Protobuf message: invalid wire type");
        assert_eq!(inbound_status(garbled, 1000).kind, ErrorKind::BadInput);
        let large = Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 1000 bytes",
        );
        assert_eq!(inbound_status(large, 1000).kind, ErrorKind::Resource);
    }

    #[test]
    fn a_gap_names_the_chunks_missing() {
        assert_eq!(missing_chunks(17, 18), "chunk 17 is missing");
        assert_eq!(
            missing_chunks(17, 20),
            "chunks 17 to 19 are missing (3 chunks)"
        );
    }
}
