//! Hands each finished speech segment of a TRANSCRIBE session to the model
//! thread and sends its `Final` back; with partial results on, re-decodes the
//! open segment every `partial_interval` of media and sends `Partial`s.
//!
//! Partials follow LocalAgreement: words two consecutive decodes agree on
//! (their common prefix) are committed and never change; the rest is the
//! unstable tail. The final decode is forced to start with the committed
//! words, so a Final always begins with what was committed. At most one
//! partial per session is queued at a time, and a partial still queued when
//! its segment ends is skipped.
//!
//! Keeps the audio of the open segment plus a few seconds of history so the
//! pre-roll before an onset is there. A stream that reads lips keeps the
//! mouth crops of the same span; a segment waits for the crops up to its
//! end to settle (the tracker smooths over a few frames ahead) before it is
//! handed in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use avlm_encoders::{Frame, SpeechEvent};
use avlm_proto as pb;
use tokio::sync::mpsc::Sender;

use super::lips::LipTrack;
use crate::engine::{Engine, Request, SubmitError};
use crate::error::SessionError;
use crate::media::AUDIO_RATE;
use crate::state::SessionLease;

/// Audio kept while no segment is open, at least.
const IDLE_HISTORY_S: f64 = 5.0;

/// A lip-reading stream whose newest frame lies this far behind its audio
/// has lost its video (a camera gone, a track that ended): segments stop
/// waiting for their crops.
const VIDEO_STALL_S: f64 = 3.0;

/// The session's reply stream.
type ReplyTx = Sender<crate::replies::Reply>;

/// Carries replies from the model thread to the client in order without
/// ever blocking the model thread on one slow client: the engine side pushes
/// into an unbounded queue that a per-session task drains into the bounded
/// reply stream. Partials are dropped while a backlog builds (a newer one or
/// the final supersedes them); finals never are.
#[derive(Clone)]
struct Forwarder {
    queue: tokio::sync::mpsc::UnboundedSender<crate::replies::Reply>,
    backlog: Arc<AtomicU64>,
    order: Arc<Mutex<FinalOrder>>,
    /// The session's model work owed, counted down as finals go out.
    owed: Arc<Backlog>,
}

/// Finals go out in segment order, whatever order the model thread (which
/// decodes many at once) finishes them in.
#[derive(Default)]
struct FinalOrder {
    /// Tickets handed out (one per final).
    issued: u64,
    /// The ticket whose final goes out next.
    next: u64,
    /// Finals done before an earlier one, with the samples of their
    /// segment (`None`: the stream's last Stats, which follows every final).
    ready: std::collections::BTreeMap<u64, (crate::replies::Reply, Option<u64>)>,
    /// A partial done while a final handed in before it was still owed:
    /// (tickets issued when it was handed in, the partial).
    partial: Option<(u64, crate::replies::Reply)>,
}

/// Partials allowed to wait for a slow client.
const PARTIAL_BACKLOG: u64 = 4;

impl Forwarder {
    /// `lease` (the session's slot) is held until every reply queued or still
    /// to come from the model thread has been delivered, or the client left:
    /// a session whose client waits for its transcripts still counts against
    /// `--max-sessions` (its call is open). It is released before `reply`,
    /// so a client that saw the end of its call finds the slot free.
    fn start(reply: ReplyTx, lease: Arc<SessionLease>, runtime: &tokio::runtime::Handle) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicU64::new(0));
        let pending = backlog.clone();
        runtime.spawn(async move {
            loop {
                let msg = tokio::select! {
                    msg = rx.recv() => msg,
                    // Gone: queued jobs see the closed reply stream and skip.
                    () = reply.closed() => None,
                };
                let Some(msg) = msg else { break };
                pending.fetch_sub(1, Ordering::AcqRel);
                if reply.send(msg).await.is_err() {
                    break;
                }
            }
            drop(lease);
            drop(reply);
        });
        Forwarder {
            queue,
            backlog,
            order: Arc::default(),
            owed: Arc::default(),
        }
    }

    /// The place in line of the next final.
    fn ticket(&self) -> u64 {
        let mut o = self.order.lock().unwrap_or_else(|e| e.into_inner());
        o.issued += 1;
        o.issued - 1
    }

    /// Sends the final of `ticket` once every earlier one is out.
    fn deliver_final(&self, ticket: u64, msg: crate::replies::Reply, samples: Option<u64>) {
        let mut o = self.order.lock().unwrap_or_else(|e| e.into_inner());
        o.ready.insert(ticket, (msg, samples));
        loop {
            let next = o.next;
            let Some((msg, samples)) = o.ready.remove(&next) else {
                break;
            };
            o.next += 1;
            self.deliver(msg, false);
            // Counted out once it is on its way, so Stats never report fewer
            // segments owed than the client is still waiting for.
            if let Some(samples) = samples {
                self.owed.segments.fetch_sub(1, Ordering::AcqRel);
                self.owed.samples.fetch_sub(samples, Ordering::AcqRel);
            }
        }
        // The partial waited for the finals before it; once its own
        // segment's final is out it is stale.
        match o.partial.take() {
            Some((before, msg)) if o.next == before => self.deliver(msg, true),
            Some((before, msg)) if o.next < before => o.partial = Some((before, msg)),
            _ => {}
        }
    }

    /// Finals handed in so far: a partial handed in now goes out after them.
    fn finals_issued(&self) -> u64 {
        self.order.lock().unwrap_or_else(|e| e.into_inner()).issued
    }

    /// Sends a partial handed in after `before` finals once they are out
    /// (the batched engine may finish it first); a newer one replaces it.
    fn deliver_partial(&self, before: u64, msg: crate::replies::Reply) {
        let mut o = self.order.lock().unwrap_or_else(|e| e.into_inner());
        match o.next.cmp(&before) {
            std::cmp::Ordering::Equal => self.deliver(msg, true),
            std::cmp::Ordering::Less => o.partial = Some((before, msg)),
            // Its own segment's final is out: stale.
            std::cmp::Ordering::Greater => {}
        }
    }

    fn deliver(&self, msg: crate::replies::Reply, droppable: bool) {
        if droppable && self.backlog.load(Ordering::Acquire) >= PARTIAL_BACKLOG {
            return;
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(msg).is_err() {
            self.backlog.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// LocalAgreement state of the open segment, shared with engine callbacks.
#[derive(Debug, Default)]
struct Agreement {
    segment: Option<u64>,
    committed: Vec<String>,
    previous: Vec<String>,
    /// A partial decode is queued or running.
    in_flight: bool,
}

impl Agreement {
    /// Folds in a new hypothesis; returns (stable, unstable) text, such that
    /// `stable + unstable` reads as the whole partial transcript: the
    /// unstable words start with a space when they follow stable ones.
    fn update(&mut self, words: Vec<String>) -> (String, String) {
        let agreed = words
            .iter()
            .zip(&self.previous)
            .take_while(|(a, b)| a == b)
            .count();
        let keeps_committed = words.len() >= self.committed.len()
            && words[..self.committed.len()] == self.committed[..];
        if keeps_committed && agreed > self.committed.len() {
            self.committed = words[..agreed].to_vec();
        }
        // Partials are decoded from the committed words on, so a decode
        // starts with them; one that does not (its detokenized words differ)
        // still shows only what follows as many words, so that
        // `stable + unstable` never repeats them.
        let tail_from = self.committed.len().min(words.len());
        let mut unstable = words[tail_from..].join(" ");
        if !self.committed.is_empty() && !unstable.is_empty() {
            unstable.insert(0, ' ');
        }
        self.previous = words;
        (self.committed.join(" "), unstable)
    }
}

/// Model work a session is owed, for `Stats`.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Closed segments whose Final is not out yet.
    pub segments: AtomicU64,
    /// Their audio, in samples.
    pub samples: AtomicU64,
    /// The model thread's inbox was full at the last try.
    pub busy: AtomicBool,
}

pub struct Transcriber {
    engine: Engine,
    /// This session's number for the engine.
    session: u64,
    /// Finals the model thread's inbox had no room for, or whose mouth
    /// crops are not settled yet, in order: handed in before anything newer.
    held: VecDeque<Held>,
    /// The mouth crops of a stream that reads lips.
    lips: Option<LipTrack>,
    /// Crops kept behind the newest settled one (the longest segment and
    /// its pre-roll).
    lip_history_s: f64,
    /// Watched to skip work for a client that went away.
    tx: ReplyTx,
    out: Forwarder,
    buffer: Vec<f32>,
    buffer_start_s: f64,
    partial_interval_s: Option<f64>,
    last_partial_s: f64,
    agreement: Arc<Mutex<Agreement>>,
    /// Bumped whenever a segment closes: queued partials of older segments skip.
    generation: Arc<AtomicU64>,
    /// Audio kept while no segment is open.
    history_s: f64,
}

impl Transcriber {
    /// `runtime` runs the task that forwards replies to the client.
    /// `lease` is the session's slot, held until the last transcript is out.
    pub fn new(
        engine: Engine,
        tx: ReplyTx,
        lease: Arc<SessionLease>,
        partial_interval_s: Option<f64>,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        Transcriber {
            engine,
            session: crate::engine::session_number(),
            held: VecDeque::new(),
            lips: None,
            lip_history_s: IDLE_HISTORY_S,
            out: Forwarder::start(tx.clone(), lease, runtime),
            tx,
            buffer: Vec::new(),
            buffer_start_s: 0.0,
            partial_interval_s,
            last_partial_s: 0.0,
            agreement: Arc::new(Mutex::new(Agreement::default())),
            generation: Arc::new(AtomicU64::new(0)),
            history_s: IDLE_HISTORY_S,
        }
    }

    /// Keeps enough idle audio for the furthest a segment's start can reach
    /// back under `endpoint`: a tentative onset (min_speech, and up to
    /// min_silence of gaps inside it), its refinement, and the pre-roll.
    pub fn reaching_back(mut self, endpoint: &avlm_encoders::EndpointConfig) -> Self {
        let reach = endpoint.pre_roll_s + endpoint.min_speech_s + endpoint.min_silence_s + 1.0;
        self.history_s = reach.max(IDLE_HISTORY_S);
        self
    }

    /// Reads the speaker's lips from the frames given to [`Transcriber::frame`].
    pub fn reading_lips(mut self, track: LipTrack, max_segment_s: f64) -> Self {
        self.lip_history_s = max_segment_s + self.history_s + 1.0;
        self.lips = Some(track);
        self
    }

    /// Takes one decoded frame of a stream that reads lips: its mouth crop;
    /// for a stream without audio, the segments face presence opens and
    /// closes go to `events` (to be reported and handed back through
    /// [`Transcriber::event`]). `Ok(false)` when the model thread is gone.
    pub fn frame(
        &mut self,
        frame: &Frame,
        events: &mut Vec<SpeechEvent>,
    ) -> Result<bool, SessionError> {
        let Some(lips) = &mut self.lips else {
            return Ok(true);
        };
        lips.frame(frame, events)?;
        let horizon = lips.settled_until() - self.lip_history_s;
        lips.forget_before(horizon);
        // Video alone: partials of the open face-presence segment, on the
        // settled crops (with audio the VAD's windows drive them).
        if let Some(open) = lips.open_segment() {
            let now = lips.settled_until();
            return Ok(self.tick(Some(open), now));
        }
        Ok(self.hand_in_held())
    }

    /// At the end of the stream: settles the last mouth crops; a
    /// face-presence segment still open closes into `events`.
    pub fn finish_lips(&mut self, events: &mut Vec<SpeechEvent>) {
        if let Some(lips) = &mut self.lips {
            lips.finish(events);
        }
    }

    /// Control FLUSH on a stream without audio: closes its open
    /// face-presence segment into `events`.
    pub fn flush_lips(&mut self, events: &mut Vec<SpeechEvent>) {
        if let Some(lips) = &mut self.lips {
            lips.flush(events);
        }
    }

    /// Whether the crops up to `to_s` are as settled as they will get: they
    /// are, or the video stopped coming (a camera gone, a track that ended:
    /// no frame for [`VIDEO_STALL_S`] of the audio's time).
    fn video_ready(&self, to_s: f64) -> bool {
        let Some(lips) = &self.lips else {
            return true;
        };
        let audio_end = self.buffer_start_s + self.buffer.len() as f64 / f64::from(AUDIO_RATE);
        lips.settled_until() >= to_s || audio_end - lips.last_frame_s() > VIDEO_STALL_S
    }

    /// Media time up to which a stream that reads lips has settled crops.
    pub fn lips_settled_until(&self) -> Option<f64> {
        self.lips.as_ref().map(LipTrack::settled_until)
    }

    /// The mouth crops of `from_s..to_s` for `request` (on the segment's
    /// 25 fps grid, so the audio keeps its length). None when the video
    /// missed most of the segment or shows no face there, and the model
    /// can hear the audio alone (a segment without audio and without a
    /// face has nothing to read: an empty Final).
    fn attach_video(&self, request: &mut Request, from_s: f64, to_s: f64) {
        let Some(lips) = &self.lips else {
            return;
        };
        request.video = super::lips::video_for(
            lips.clip(from_s, to_s),
            !request.samples.is_empty(),
            self.engine.transcribes(),
        )
        .map(Box::new);
    }

    /// Appends decoded audio that starts at `start_s`.
    pub fn audio(&mut self, samples: &[f32], start_s: f64) {
        if self.buffer.is_empty() {
            self.buffer_start_s = start_s;
        }
        self.buffer.extend_from_slice(samples);
    }

    /// Samples held now.
    pub fn buffered_samples(&self) -> usize {
        self.buffer.len()
    }

    fn slice(&self, from_s: f64, to_s: f64) -> Vec<f32> {
        let rate = f64::from(AUDIO_RATE);
        let index = |t: f64| {
            (((t - self.buffer_start_s) * rate).round().max(0.0) as usize).min(self.buffer.len())
        };
        self.buffer[index(from_s)..index(to_s)].to_vec()
    }

    /// Called after each VAD window with the open segment, if any: queues a
    /// partial re-decode when one is due. `false` when the engine is gone.
    pub fn tick(&mut self, open: Option<(u64, f64, f64)>, now_s: f64) -> bool {
        if !self.hand_in_held() {
            return false;
        }
        let (Some(interval), Some((id, start_s, audio_start_s))) = (self.partial_interval_s, open)
        else {
            return true;
        };
        // Decoded on from the committed words, as the Final will be.
        let forced = {
            let mut a = self.agreement.lock().unwrap_or_else(|e| e.into_inner());
            if a.segment != Some(id) {
                *a = Agreement {
                    segment: Some(id),
                    ..Agreement::default()
                };
                self.last_partial_s = start_s;
            }
            if a.in_flight || now_s - self.last_partial_s < interval {
                return true;
            }
            a.in_flight = true;
            a.committed.join(" ")
        };
        self.last_partial_s = now_s;
        let samples = self.slice(audio_start_s, now_s);
        let generation = self.generation.load(Ordering::Acquire);
        let (gen_watch, tx_watch) = (self.generation.clone(), self.tx.clone());
        let (agreement, out) = (self.agreement.clone(), self.out.clone());
        let before = out.finals_issued();
        let mut request = Request {
            video: None,
            samples,
            forced,
            session: self.session,
            partial: true,
            cancelled: Arc::new(move || {
                tx_watch.is_closed() || gen_watch.load(Ordering::Acquire) != generation
            }),
            reply: Box::new(move |result| {
                let mut a = agreement.lock().unwrap_or_else(|e| e.into_inner());
                // A reply for a segment that already closed must not touch
                // the next segment's state.
                if a.segment != Some(id) {
                    return;
                }
                a.in_flight = false;
                let Ok(t) = result else {
                    return; // a failed partial is not fatal: the final reports
                };
                let compute_s = t.times.total().as_secs_f64();
                let (stable, unstable) =
                    a.update(t.text.split_whitespace().map(str::to_string).collect());
                drop(a);
                // The committed words lead this decode's text (it was forced
                // to start with them): their times are its first words'.
                let committed = stable.split_whitespace().count();
                let words = t
                    .words
                    .iter()
                    .take(committed)
                    .map(|w| {
                        let start = (audio_start_s + w.start_s).min(now_s);
                        pb::Word {
                            text: w.text.clone(),
                            start_s: start,
                            end_s: (audio_start_s + w.end_s).clamp(start, now_s),
                        }
                    })
                    .collect();
                let partial = pb::Partial {
                    segment_id: id,
                    stable_text: stable,
                    unstable_text: unstable,
                    start_s,
                    end_s: now_s,
                    compute_s,
                    words,
                };
                out.deliver_partial(
                    before,
                    Ok(pb::ServerMessage {
                        msg: Some(pb::server_message::Msg::Partial(partial)),
                    }),
                );
            }),
        };
        if let Some(settled) = self.lips_settled_until() {
            self.attach_video(&mut request, audio_start_s, now_s.min(settled));
        }
        match self.engine.try_submit(request) {
            Ok(()) => true,
            // A busy model skips this partial; the next one is due soon.
            Err(SubmitError::Full(_)) => {
                self.out.owed.busy.store(true, Ordering::Release);
                self.agreement
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .in_flight = false;
                true
            }
            Err(SubmitError::Stopped) => false,
        }
    }

    /// Sends the stream's last message (its final Stats) after every final
    /// still owed; `false` when the client is gone.
    pub fn send_last(&self, msg: pb::server_message::Msg) -> bool {
        let ticket = self.out.ticket();
        self.out
            .deliver_final(ticket, Ok(pb::ServerMessage { msg: Some(msg) }), None);
        !self.tx.is_closed()
    }

    /// Model work this stream is still owed, for `Stats`.
    pub fn backlog(&self) -> &Backlog {
        &self.out.owed
    }

    /// Seconds until this stream's pending finals are likely all out (see
    /// `Stats.expected_delay_s`).
    pub fn expected_delay_s(&self) -> f64 {
        if self.out.owed.segments.load(Ordering::Acquire) == 0 {
            return 0.0;
        }
        let held: usize = self.held.iter().map(|h| h.request.samples.len()).sum();
        self.engine
            .load()
            .expected_delay_s(held as f64 / f64::from(AUDIO_RATE))
    }

    /// Hands in the finals held back by a full inbox, oldest first, while
    /// there is room; `false` when the model thread is gone.
    fn hand_in_held(&mut self) -> bool {
        while let Some(mut h) = self.held.pop_front() {
            if let Some((from, to)) = h.video.take() {
                if !self.video_ready(to) {
                    // its crops are not settled yet: it and all after it wait
                    h.video = Some((from, to));
                    self.held.push_front(h);
                    return true;
                }
                self.attach_video(&mut h.request, from, to);
            }
            match self.engine.try_submit(h.request) {
                Ok(()) => {}
                Err(SubmitError::Full(request)) => {
                    self.held.push_front(Held {
                        request,
                        video: None,
                    });
                    self.out.owed.busy.store(true, Ordering::Release);
                    return true;
                }
                Err(SubmitError::Stopped) => return false,
            }
        }
        self.out.owed.busy.store(false, Ordering::Release);
        true
    }

    /// At the end of the stream: settles the last mouth crops (closing a
    /// face-presence segment still open), then hands in every held final,
    /// waiting for room (nothing else is left to do); `false` when the
    /// model thread is gone.
    pub fn finish(&mut self) -> bool {
        let mut events = Vec::new();
        self.finish_lips(&mut events);
        for e in &events {
            if !self.event(e) {
                return false;
            }
        }
        while let Some(mut h) = self.held.pop_front() {
            // A client that went away is owed nothing: its finals do not
            // wait in line behind other sessions' work.
            if self.tx.is_closed() {
                self.held.clear();
                break;
            }
            if let Some((from, to)) = h.video.take() {
                self.attach_video(&mut h.request, from, to);
            }
            if self.engine.submit_waiting(h.request).is_err() {
                return false;
            }
        }
        self.out.owed.busy.store(false, Ordering::Release);
        true
    }

    /// Media time of the newest audio a partial of the open segment was
    /// decoded from: words committed so far lie before it, so the segment
    /// must not be split earlier.
    pub fn partials_heard_until(&self) -> f64 {
        self.last_partial_s
    }

    /// Submits everything buffered as one utterance (segment 0).
    pub fn whole(&mut self) -> bool {
        let lip_span = self.lips.as_mut().and_then(|l| {
            l.finish(&mut Vec::new());
            l.span()
        });
        let (start, end) = match lip_span {
            // No audio, no utterance: the stream ends with no Final.
            None if self.buffer.is_empty() => return true,
            Some(span) if self.buffer.is_empty() => span,
            _ => (
                self.buffer_start_s,
                self.buffer_start_s + self.buffer.len() as f64 / f64::from(AUDIO_RATE),
            ),
        };
        self.event(&SpeechEvent::End {
            id: 0,
            start_s: start,
            end_s: end,
            audio_start_s: start,
            audio_end_s: end,
            reason: avlm_encoders::EndReason::EndOfStream,
        })
    }

    /// Drops history no future segment can reach (call while no segment is open).
    pub fn trim_idle(&mut self) {
        let keep = (self.history_s * f64::from(AUDIO_RATE)) as usize;
        if self.buffer.len() > 2 * keep {
            let drop = self.buffer.len() - keep;
            self.buffer.drain(..drop);
            self.buffer_start_s += drop as f64 / f64::from(AUDIO_RATE);
        }
    }

    /// Submits a closed segment; `false` when the model thread is gone.
    pub fn event(&mut self, event: &SpeechEvent) -> bool {
        let SpeechEvent::End {
            id,
            start_s,
            end_s,
            audio_start_s,
            audio_end_s,
            ..
        } = *event
        else {
            return true;
        };
        let samples = self.slice(audio_start_s, audio_end_s);
        // Partials of this segment still queued are now pointless.
        self.generation.fetch_add(1, Ordering::AcqRel);
        let forced = {
            let mut a = self.agreement.lock().unwrap_or_else(|e| e.into_inner());
            let committed = if a.segment == Some(id) {
                a.committed.join(" ")
            } else {
                String::new()
            };
            *a = Agreement::default();
            committed
        };
        let ended = Instant::now();
        let out = self.out.clone();
        let watch = self.tx.clone();
        let backlog = self.out.owed.clone();
        let owed = samples.len() as u64;
        let ticket = out.ticket();
        backlog.segments.fetch_add(1, Ordering::AcqRel);
        backlog.samples.fetch_add(owed, Ordering::AcqRel);
        let request = Request {
            video: None,
            samples,
            forced,
            session: self.session,
            partial: false,
            cancelled: Arc::new(move || watch.is_closed()),
            reply: Box::new(move |result| {
                let msg = match result {
                    Ok(t) => Ok(pb::ServerMessage {
                        msg: Some(pb::server_message::Msg::Final(pb::Final {
                            segment_id: id,
                            start_s,
                            end_s,
                            decode_latency_s: ended.elapsed().as_secs_f64(),
                            compute_s: t.times.total().as_secs_f64(),
                            words: t
                                .words
                                .iter()
                                .map(|w| {
                                    // Within the segment: the audio around it
                                    // (pre- and post-roll) is not speech.
                                    let start = (audio_start_s + w.start_s).min(end_s);
                                    pb::Word {
                                        text: w.text.clone(),
                                        start_s: start,
                                        end_s: (audio_start_s + w.end_s).clamp(start, end_s),
                                    }
                                })
                                .collect(),
                            text: t.text,
                        })),
                    }),
                    Err(e) => Err(SessionError::internal(format!(
                        "transcribing segment {id} failed: {e}"
                    ))),
                };
                out.deliver_final(ticket, msg, Some(owed));
            }),
        };
        self.held.push_back(Held {
            request,
            video: self.lips.is_some().then_some((audio_start_s, audio_end_s)),
        });
        self.hand_in_held()
    }
}

/// A final not handed in yet.
struct Held {
    request: Request,
    /// The span whose mouth crops it still needs.
    video: Option<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn local_agreement_commits_what_two_decodes_share_and_never_takes_it_back() {
        let mut a = Agreement::default();
        assert_eq!(
            a.update(words("the cat")),
            (String::new(), "the cat".into())
        );
        assert_eq!(
            a.update(words("the cat sat on")),
            ("the cat".into(), " sat on".into())
        );
        assert_eq!(
            a.update(words("the cat sat on the")),
            ("the cat sat on".into(), " the".into())
        );
        // A decode that disagrees with committed words does not undo them,
        // and its words in their place are not shown again after them.
        assert_eq!(
            a.update(words("a cat sat on mats")),
            ("the cat sat on".into(), " mats".into())
        );
        assert_eq!(
            a.update(words("a cat")),
            ("the cat sat on".into(), String::new())
        );
        assert_eq!(
            a.update(words("the cat sat on the mat")),
            ("the cat sat on".into(), " the mat".into())
        );
        assert_eq!(
            a.update(words("the cat sat on the mat")),
            ("the cat sat on the mat".into(), String::new())
        );
    }
}
