//! A session's analysis thread: voice activity over the decoded audio,
//! endpointing into segments, and the session's statistics.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use crate::error::SessionError;
use avlm_encoders::{
    EndReason, Endpointer, SpeechEvent, VadStream, VAD_CHUNK_SAMPLES, VAD_SAMPLE_RATE,
};
use avlm_proto as pb;
use tokio::sync::mpsc::Sender;

use crate::media::{DecodeMeter, MediaError, MediaItem};
use crate::session::caption::Captioner;
use crate::session::transcribe::Transcriber;

/// Where server messages go; `false` from `send` means the client is gone.
#[derive(Clone)]
pub struct Outbox {
    pub tx: Sender<crate::replies::Reply>,
}

impl Outbox {
    pub fn send(&self, msg: pb::server_message::Msg) -> bool {
        self.tx
            .blocking_send(Ok(pb::ServerMessage { msg: Some(msg) }))
            .is_ok()
    }

    pub fn fail(&self, status: SessionError) {
        let _ = self.tx.blocking_send(Err(status));
    }
}

/// Shared counters for `Stats`.
pub struct Meters {
    pub decode: Arc<DecodeMeter>,
    pub bytes_received: Arc<std::sync::atomic::AtomicU64>,
}

pub struct Analysis {
    vad: VadStream,
    endpointer: Endpointer,
    out: Outbox,
    meters: Meters,
    stats_interval_s: f64,
    /// Samples not yet run through the VAD, starting at `pending_start_s`.
    pending: Vec<f32>,
    pending_start_s: Option<f64>,
    processed_s: f64,
    next_stats_s: f64,
    /// The analysis thread's CPU time when it began.
    cpu_start: Option<Duration>,
    events: Vec<SpeechEvent>,
    /// TRANSCRIBE sessions: turns closed segments into Finals.
    transcriber: Option<Transcriber>,
    /// The whole stream is one utterance: no VAD, transcribed at the end.
    whole: bool,
    /// Sessions with captions: describes the video frames.
    captioner: Option<Captioner>,
    /// No audio: media time moves with the video frames.
    video_only: bool,
    /// Frames the captioner looked at (kept after it finished, for the last Stats).
    caption_frames: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The transcriber reads lips from every frame (25 a second); the
    /// captioner then sees them at its own rate: the next frame it takes.
    lips: bool,
    caption_period_s: f64,
    next_caption_s: f64,
    /// The first frame's time (whole-utterance video).
    first_frame_s: Option<f64>,
}

/// How the analysis ended.
pub enum Outcome {
    /// Everything was processed and reported.
    Done,
    /// The client went away.
    Gone,
}

impl Analysis {
    pub fn new(
        vad: VadStream,
        endpointer: Endpointer,
        out: Outbox,
        meters: Meters,
        stats_interval_s: f64,
        transcriber: Option<Transcriber>,
    ) -> Self {
        Analysis {
            vad,
            endpointer,
            out,
            meters,
            stats_interval_s,
            pending: Vec::with_capacity(VAD_CHUNK_SAMPLES * 4),
            pending_start_s: None,
            processed_s: 0.0,
            next_stats_s: if stats_interval_s > 0.0 {
                stats_interval_s
            } else {
                f64::INFINITY
            },
            cpu_start: None,
            events: Vec::new(),
            transcriber,
            whole: false,
            captioner: None,
            video_only: false,
            caption_frames: None,
            lips: false,
            caption_period_s: 0.0,
            next_caption_s: f64::NEG_INFINITY,
            first_frame_s: None,
        }
    }

    /// The transcriber reads lips from the frames; a captioner beside it
    /// looks at `caption_fps` of them a second.
    pub fn reading_lips(mut self, lips: bool, caption_fps: Option<f32>) -> Self {
        self.lips = lips;
        self.caption_period_s = caption_fps.map_or(0.0, |f| 1.0 / f64::from(f));
        self
    }

    /// Captions the video frames; `video_only`: the session decodes no audio.
    pub fn captioning(mut self, captioner: Option<Captioner>, video_only: bool) -> Self {
        self.caption_frames = captioner.as_ref().map(|c| c.frames.clone());
        self.captioner = captioner;
        self.video_only = video_only;
        self
    }

    /// Treats the whole stream as one utterance (TRANSCRIBE without VAD).
    pub fn whole_utterance(mut self, whole: bool) -> Self {
        self.whole = whole;
        self
    }

    /// Consumes decoded media until the decoder finishes, then reports the
    /// decoder's outcome.
    /// `lease` is released before the response stream can end, so a client
    /// that saw the end can start a new session at once.
    pub fn run<L>(
        mut self,
        media: Receiver<MediaItem>,
        decoded: Receiver<Result<(), MediaError>>,
        lease: L,
    ) -> Outcome {
        let outcome = self.analyse(media, decoded);
        drop(lease);
        outcome
    }

    fn analyse(
        &mut self,
        media: Receiver<MediaItem>,
        decoded: Receiver<Result<(), MediaError>>,
    ) -> Outcome {
        self.cpu_start = Some(crate::media::thread_cpu_time());
        for item in media.iter() {
            let alive = match item {
                MediaItem::Audio(pcm) => self.audio(&pcm.samples, pcm.start_s),
                MediaItem::Video(frame) => self.video(frame),
                MediaItem::Flush => self.flush(EndReason::Flush) && self.stats(false),
            };
            if !alive {
                return Outcome::Gone;
            }
        }
        match decoded.recv() {
            Ok(Ok(())) if self.whole => {
                let submitted = match &mut self.transcriber {
                    Some(t) => t.whole() && t.finish(),
                    None => true,
                } && self.finish_captions();
                if submitted && self.stats(true) {
                    Outcome::Done
                } else {
                    Outcome::Gone
                }
            }
            Ok(Ok(())) => {
                let ok = self.drain_tail()
                    && self.flush(EndReason::EndOfStream)
                    && self.finish_lips()
                    && self.hand_in_held()
                    && self.finish_captions()
                    && self.stats(true);
                if ok {
                    Outcome::Done
                } else {
                    Outcome::Gone
                }
            }
            Ok(Err(MediaError::Aborted)) => {
                tracing::debug!("decoder stopped: session aborted");
                Outcome::Gone
            }
            Err(_) => {
                // The decoder thread ended without a result: it panicked.
                self.out.fail(SessionError::internal(
                    "the media decoder stopped unexpectedly",
                ));
                Outcome::Gone
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "media failed");
                self.out.fail(SessionError::from(&e));
                Outcome::Gone
            }
        }
    }

    fn video(&mut self, frame: avlm_encoders::Frame) -> bool {
        if self.video_only {
            self.processed_s = self.processed_s.max(frame.pts_s);
        }
        if self.lips && self.whole && self.video_only {
            let first = *self.first_frame_s.get_or_insert(frame.pts_s);
            if frame.pts_s - first
                > crate::engine::asr::MAX_SAMPLES as f64 / f64::from(VAD_SAMPLE_RATE)
            {
                self.out.fail(SessionError::precondition(
                    "a whole_utterance stream holds at most 30 s of video (the audio encoder's window and the lip reader's segments); stream longer video with face-presence segmentation instead",
                ));
                return false;
            }
        }
        if self.lips {
            if let Some(t) = &mut self.transcriber {
                match t.frame(&frame, &mut self.events) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.out
                            .fail(SessionError::unavailable("the model thread has stopped"));
                        return false;
                    }
                    Err(e) => {
                        self.out.fail(e);
                        return false;
                    }
                }
            }
            // segments that face presence opened or closed
            if !self.events.is_empty() && !self.send_events() {
                return false;
            }
        }
        if let Some(c) = &self.captioner {
            if !self.lips || frame.pts_s >= self.next_caption_s {
                // on the caption grid from the first frame, never drifting
                let on_grid = self.next_caption_s.is_finite()
                    && frame.pts_s - self.next_caption_s < self.caption_period_s;
                self.next_caption_s = if on_grid {
                    self.next_caption_s + self.caption_period_s
                } else {
                    frame.pts_s + self.caption_period_s
                };
                c.frame(frame);
            }
        }
        if self.video_only {
            return self.periodic_stats();
        }
        true
    }

    /// Waits for the captions of every frame handed in.
    fn finish_captions(&mut self) -> bool {
        self.captioner.take().is_none_or(Captioner::finish)
    }

    fn audio(&mut self, samples: &[f32], start_s: f64) -> bool {
        if let Some(t) = &mut self.transcriber {
            t.audio(samples, start_s);
            if self.whole {
                self.processed_s = start_s + samples.len() as f64 / f64::from(VAD_SAMPLE_RATE);
                if t.buffered_samples() > crate::engine::asr::MAX_SAMPLES {
                    self.out.fail(SessionError::precondition(
                        "a whole_utterance stream holds at most 30 s of audio (the audio encoder's window); stream longer audio with voice activity segmentation instead",
                    ));
                    return false;
                }
                return self.periodic_stats();
            }
        }
        if self.pending_start_s.is_none() {
            self.pending_start_s = Some(start_s);
        }
        self.pending.extend_from_slice(samples);
        let mut offset = 0;
        while self.pending.len() - offset >= VAD_CHUNK_SAMPLES {
            let window: &[f32; VAD_CHUNK_SAMPLES] = self.pending
                [offset..offset + VAD_CHUNK_SAMPLES]
                .try_into()
                .expect("slice of window length");
            let window = *window;
            offset += VAD_CHUNK_SAMPLES;
            if !self.window(&window, VAD_CHUNK_SAMPLES) {
                return false;
            }
        }
        self.pending.drain(..offset);
        true
    }

    /// Runs the last partial window, zero-padded, at the end of the stream.
    fn drain_tail(&mut self) -> bool {
        let n = self.pending.len();
        if n < VAD_CHUNK_SAMPLES / 4 {
            return true;
        }
        let mut window = [0.0f32; VAD_CHUNK_SAMPLES];
        window[..n].copy_from_slice(&self.pending);
        self.pending.clear();
        self.window(&window, n)
    }

    /// One VAD window of which `real` samples are media.
    fn window(&mut self, window: &[f32; VAD_CHUNK_SAMPLES], real: usize) -> bool {
        let start = self.pending_start_s.unwrap_or(0.0);
        let end = start + real as f64 / f64::from(VAD_SAMPLE_RATE);
        let prob = match self.vad.probability(window) {
            Ok(p) => p,
            Err(e) => {
                self.out.fail(SessionError::internal(format!(
                    "voice activity detection failed: {e}"
                )));
                return false;
            }
        };
        self.pending_start_s = Some(end);
        self.processed_s = end;
        if let Some(t) = &self.transcriber {
            self.endpointer.keep_whole_until(t.partials_heard_until());
        }
        self.endpointer.push(start, end, prob, &mut self.events);
        if !self.send_events() {
            return false;
        }
        if let Some(t) = &mut self.transcriber {
            if !t.tick(self.endpointer.open_segment(), end) {
                self.out
                    .fail(SessionError::unavailable("the model thread has stopped"));
                return false;
            }
        }
        self.periodic_stats()
    }

    /// Stats when `stats_interval` of media has gone by since the last.
    /// Hands the model thread every final a full inbox held back.
    fn hand_in_held(&mut self) -> bool {
        let handed_in = self.transcriber.as_mut().is_none_or(Transcriber::finish);
        if !handed_in {
            self.out
                .fail(SessionError::unavailable("the model thread has stopped"));
        }
        handed_in
    }

    fn periodic_stats(&mut self) -> bool {
        if self.processed_s >= self.next_stats_s {
            while self.next_stats_s <= self.processed_s {
                self.next_stats_s += self.stats_interval_s;
            }
            return self.stats(false);
        }
        true
    }

    fn flush(&mut self, reason: EndReason) -> bool {
        self.endpointer.finish(reason, &mut self.events);
        if self.video_only && reason == EndReason::Flush {
            if let Some(t) = &mut self.transcriber {
                t.flush_lips(&mut self.events);
            }
        }
        self.send_events()
    }

    /// Settles the last mouth crops at the end of the stream (a
    /// face-presence segment still open closes and is reported).
    fn finish_lips(&mut self) -> bool {
        if let Some(t) = &mut self.transcriber {
            t.finish_lips(&mut self.events);
        }
        self.send_events()
    }

    fn send_events(&mut self) -> bool {
        if let Some(t) = &mut self.transcriber {
            for event in &self.events {
                if !t.event(event) {
                    self.out
                        .fail(SessionError::unavailable("the model thread has stopped"));
                    return false;
                }
            }
            if !self.endpointer.in_speech() {
                t.trim_idle();
            }
        }
        for event in self.events.drain(..) {
            let segment = match event {
                SpeechEvent::Start { id, start_s, .. } => pb::Segment {
                    segment_id: id,
                    kind: pb::segment::Kind::SpeechStart as i32,
                    start_s,
                    end_s: 0.0,
                    end_reason: String::new(),
                },
                SpeechEvent::End {
                    id,
                    start_s,
                    end_s,
                    reason,
                    ..
                } => pb::Segment {
                    segment_id: id,
                    kind: pb::segment::Kind::SpeechEnd as i32,
                    start_s,
                    end_s,
                    end_reason: reason.as_str().to_string(),
                },
            };
            if !self.out.send(pb::server_message::Msg::Segment(segment)) {
                return false;
            }
        }
        true
    }

    /// Sends Stats; `ended`: the whole stream went through, so nothing is
    /// buffered, whatever the container's timestamps promised beyond the
    /// decoded audio (an encoder's end padding, a longer video track).
    fn stats(&self, ended: bool) -> bool {
        let decode = &self.meters.decode;
        let received = decode.received_us.load(Ordering::Acquire) as f64 / 1e6;
        let received = received.max(self.processed_s);
        // The session's own work: CPU time of its decoder and analysis
        // threads (waits for the client or the model are not in it).
        let analysis_cpu = self.cpu_start.map_or(Duration::ZERO, |start| {
            crate::media::thread_cpu_time().saturating_sub(start)
        });
        let busy_s =
            analysis_cpu.as_secs_f64() + decode.busy_us.load(Ordering::Acquire) as f64 / 1e6;
        let rtf = if self.processed_s > 0.0 {
            busy_s / self.processed_s
        } else {
            0.0
        };
        // The last Stats goes out after every final still owed, so it is the
        // stream's last message and nothing is pending by then.
        let backlog = self
            .transcriber
            .as_ref()
            .filter(|_| !ended)
            .map(Transcriber::backlog);
        let stats = pb::server_message::Msg::Stats(pb::Stats {
            media_seconds_received: received,
            media_seconds_processed: self.processed_s,
            real_time_factor: rtf,
            seconds_buffered: if ended {
                0.0
            } else {
                (received - self.processed_s).max(0.0)
            },
            bytes_received: self.meters.bytes_received.load(Ordering::Acquire),
            video_frames: decode.video_frames.load(Ordering::Acquire),
            segments_pending: backlog.map_or(0, |b| b.segments.load(Ordering::Acquire) as u32),
            audio_seconds_pending: backlog.map_or(0.0, |b| {
                b.samples.load(Ordering::Acquire) as f64 / f64::from(VAD_SAMPLE_RATE)
            }),
            model_busy: backlog.is_some_and(|b| b.busy.load(Ordering::Acquire)),
            expected_delay_s: self
                .transcriber
                .as_ref()
                .filter(|_| !ended)
                .map_or(0.0, Transcriber::expected_delay_s),
            caption_frames: self
                .caption_frames
                .as_ref()
                .map_or(0, |c| c.load(Ordering::Acquire)),
        });
        match &self.transcriber {
            Some(t) if ended => t.send_last(stats),
            _ => self.out.send(stats),
        }
    }
}
