//! Hands each finished speech segment of a TRANSCRIBE session to the model
//! thread and sends its `Final` back. Keeps the audio of the open segment
//! plus a few seconds of history so the pre-roll before an onset is there.

use std::time::Instant;

use avlm_encoders::SpeechEvent;
use avlm_proto as pb;
use tokio::sync::mpsc::Sender;
use tonic::Status;

use crate::engine::Engine;
use crate::media::AUDIO_RATE;

/// Audio kept while no segment is open: enough for the longest pre-roll
/// plus the onset refinement and the confirmation delay.
const IDLE_HISTORY_S: f64 = 5.0;

pub struct Transcriber {
    engine: Engine,
    tx: Sender<Result<pb::ServerMessage, Status>>,
    buffer: Vec<f32>,
    buffer_start_s: f64,
}

impl Transcriber {
    pub fn new(engine: Engine, tx: Sender<Result<pb::ServerMessage, Status>>) -> Self {
        Transcriber {
            engine,
            tx,
            buffer: Vec::new(),
            buffer_start_s: 0.0,
        }
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

    /// Submits everything buffered as one utterance (segment 0).
    pub fn whole(&mut self) -> bool {
        let start = self.buffer_start_s;
        let end = start + self.buffer.len() as f64 / f64::from(AUDIO_RATE);
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
        let keep = (IDLE_HISTORY_S * f64::from(AUDIO_RATE)) as usize;
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
        let rate = f64::from(AUDIO_RATE);
        let index = |t: f64| {
            (((t - self.buffer_start_s) * rate).round().max(0.0) as usize).min(self.buffer.len())
        };
        let samples = self.buffer[index(audio_start_s)..index(audio_end_s)].to_vec();
        let ended = Instant::now();
        let tx = self.tx.clone();
        let watch = self.tx.clone();
        let submitted = self.engine.submit(
            samples,
            move || watch.is_closed(),
            move |result| {
                let msg = match result {
                    Ok(t) => Ok(pb::ServerMessage {
                        msg: Some(pb::server_message::Msg::Final(pb::Final {
                            segment_id: id,
                            text: t.text,
                            start_s,
                            end_s,
                            decode_latency_s: ended.elapsed().as_secs_f64(),
                        })),
                    }),
                    Err(e) => Err(Status::internal(format!(
                        "transcribing segment {id} failed: {e}"
                    ))),
                };
                let _ = tx.blocking_send(msg);
            },
        );
        submitted.is_ok()
    }
}
