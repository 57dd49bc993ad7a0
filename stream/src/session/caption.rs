//! A session's caption thread: frames from the analysis thread go through
//! the vision front end (encoder, token layout, projector) here, off the
//! model thread, into the session's caption row in the engine; the captions
//! the model speaks come back on the same queue and go to the client.
//!
//! Bounded like every other hop: the analysis thread waits while
//! [`MAX_FRAMES_IN_FLIGHT`] frames are handed in and undecided, which slows
//! the decoder and then the client, so nothing accepted is dropped; a live
//! client that sends faster than the model captions sees it as
//! `seconds_buffered` in `Stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use avlm_encoders::Frame;
use avlm_proto as pb;

use crate::engine::{CaptionEvent, CaptionWork, Engine, VisionFrontEnd};
use crate::error::SessionError;
use crate::session::analysis::Outbox;
use crate::session::valid::CaptionConfig;

/// Frames of a session handed on and not yet decided by the model.
pub const MAX_FRAMES_IN_FLIGHT: usize = 3;

enum Msg {
    Frame(Frame, Instant),
    Question(String, Instant),
    Event(CaptionEvent),
    End,
}

/// Frames in flight, and whether the caption thread is still there to
/// count them down.
#[derive(Default)]
struct Flight {
    frames: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Flight {
    fn done(&self, n: usize) {
        let mut f = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        f.0 = f.0.saturating_sub(n);
        self.changed.notify_all();
    }

    fn gone(&self) {
        let mut f = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        f.1 = true;
        self.changed.notify_all();
    }
}

pub struct Captioner {
    tx: Sender<Msg>,
    flight: Arc<Flight>,
    thread: Option<JoinHandle<bool>>,
    /// Frames the model looked at.
    pub frames: Arc<AtomicU64>,
}

impl Captioner {
    /// Opens the session's caption row and starts its thread.
    pub fn start(
        engine: &Engine,
        vision: Arc<VisionFrontEnd>,
        config: CaptionConfig,
        out: Outbox,
        session: u64,
        name: &str,
    ) -> Result<Self, SessionError> {
        let (tx, rx) = channel::<Msg>();
        let events = tx.clone();
        let weak = out.tx.downgrade();
        engine
            .caption_waiting(CaptionWork::Open {
                session,
                settings: config.settings,
                events: Box::new(move |e| {
                    let _ = events.send(Msg::Event(e));
                }),
                cancelled: Arc::new(move || weak.upgrade().is_none_or(|t| t.is_closed())),
            })
            .map_err(|_| SessionError::unavailable("the model thread has stopped"))?;
        let frames = Arc::new(AtomicU64::new(0));
        let flight = Arc::new(Flight::default());
        let thread = {
            let engine = engine.clone();
            let frames = frames.clone();
            let flight = flight.clone();
            std::thread::Builder::new()
                .name(format!("avlm-caption-{name}"))
                .spawn(move || {
                    let ok = run(rx, &engine, &vision, &out, session, &frames, &flight);
                    if !ok {
                        // Told the client or the client is gone: the row leaves.
                        let _ = engine.try_caption(CaptionWork::Close { session });
                    }
                    flight.gone();
                    ok
                })
                .map_err(|e| {
                    SessionError::resource(format!("cannot start a caption thread: {e}"))
                })?
        };
        Ok(Captioner {
            tx,
            flight,
            thread: Some(thread),
            frames,
        })
    }

    /// A handle the session's reader passes client questions through.
    pub fn asker(&self) -> Asker {
        Asker {
            tx: self.tx.clone(),
        }
    }

    /// Hands a decoded frame on, first waiting while
    /// [`MAX_FRAMES_IN_FLIGHT`] are undecided.
    pub fn frame(&self, frame: Frame) {
        {
            let mut f = self.flight.frames.lock().unwrap_or_else(|e| e.into_inner());
            while f.0 >= MAX_FRAMES_IN_FLIGHT && !f.1 {
                f = self
                    .flight
                    .changed
                    .wait(f)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if f.1 {
                return;
            }
            f.0 += 1;
        }
        let _ = self.tx.send(Msg::Frame(frame, Instant::now()));
    }

    /// Waits until every frame handed in is captioned and its captions are
    /// sent; `false` when the client is gone or captioning failed (the
    /// client was told).
    pub fn finish(mut self) -> bool {
        let _ = self.tx.send(Msg::End);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    }
}

/// Passes a client's questions to the caption thread.
pub struct Asker {
    tx: Sender<Msg>,
}

impl Asker {
    /// Asks `text` after the frames handed in so far.
    pub fn ask(&self, text: String) {
        let _ = self.tx.send(Msg::Question(text, Instant::now()));
    }
}

impl Drop for Captioner {
    fn drop(&mut self) {
        // A session that ends early: the thread closes the row and ends.
        let _ = self.tx.send(Msg::End);
    }
}

/// The caption thread: `true` when every frame was captioned and every
/// caption sent.
fn run(
    rx: std::sync::mpsc::Receiver<Msg>,
    engine: &Engine,
    vision: &VisionFrontEnd,
    out: &Outbox,
    session: u64,
    frames: &AtomicU64,
    flight: &Flight,
) -> bool {
    let mut ending = false;
    for msg in rx.iter() {
        match msg {
            Msg::Frame(frame, at) => {
                if ending {
                    flight.done(1);
                    continue;
                }
                let embeds = match vision.embed(&frame) {
                    Ok(e) => e,
                    Err(e) => {
                        out.fail(SessionError::internal(format!(
                            "the vision encoder failed on the frame at {:.3} s: {e}",
                            frame.pts_s
                        )));
                        return false;
                    }
                };
                let work = CaptionWork::Frame {
                    session,
                    embeds,
                    media_time_s: frame.pts_s,
                    at,
                };
                if engine.caption_waiting(work).is_err() {
                    out.fail(SessionError::unavailable("the model thread has stopped"));
                    return false;
                }
            }
            Msg::Event(CaptionEvent::FrameDone) => {
                frames.fetch_add(1, Ordering::AcqRel);
                flight.done(1);
            }
            Msg::Question(text, at) => {
                if ending {
                    continue;
                }
                let work = CaptionWork::Question { session, text, at };
                if engine.caption_waiting(work).is_err() {
                    out.fail(SessionError::unavailable("the model thread has stopped"));
                    return false;
                }
            }
            Msg::Event(CaptionEvent::Caption {
                text,
                question,
                media_time_s,
                frame_at,
                compute,
            }) => {
                let caption = pb::Caption {
                    text,
                    media_time_s,
                    latency_s: frame_at.elapsed().as_secs_f64(),
                    compute_s: compute.as_secs_f64(),
                    question: question.unwrap_or_default(),
                };
                if !out.send(pb::server_message::Msg::Caption(caption)) {
                    return false;
                }
            }
            Msg::Event(CaptionEvent::Closed) => return ending,
            Msg::Event(CaptionEvent::Failed(e)) => {
                out.fail(SessionError::from(&e));
                return false;
            }
            Msg::End => {
                if !ending {
                    ending = true;
                    if engine
                        .caption_waiting(CaptionWork::Close { session })
                        .is_err()
                    {
                        out.fail(SessionError::unavailable("the model thread has stopped"));
                        return false;
                    }
                }
            }
        }
    }
    false
}
