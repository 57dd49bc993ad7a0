//! The engine: one model thread that owns the loaded bundle and serves every
//! session's transcription jobs from a bounded queue. Sessions submit a
//! finished utterance and get the result through a callback; a full queue
//! blocks the submitting session (backpressure), never drops work.

pub mod asr;
pub mod repetition;

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use avlm_llm::Interrupt;
use avlm_proto as pb;

pub use asr::{AsrPipeline, StageTimes, Transcript};

use crate::bundle::{BundleError, LoadedBundle};

/// Jobs waiting for the model thread.
const QUEUE: usize = 32;

type Reply = Box<dyn FnOnce(Result<Transcript, String>) + Send>;

struct Job {
    samples: Vec<f32>,
    /// Text the answer must start with (already committed to the client).
    forced: String,
    /// A provisional re-decode of an open segment (`decoding.partial_beam_width`).
    partial: bool,
    /// Skips the work, or stops it between decoding steps, once nobody
    /// waits for the answer (the session went away, a newer request replaced it).
    cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    reply: Reply,
}

/// A handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    info: Arc<pb::ModelInfo>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the model thread has stopped")]
    Stopped,
}

impl Engine {
    /// Loads the bundle in `dir` and starts the model thread.
    pub fn start(dir: &Path, threads: usize) -> Result<Self, BundleError> {
        let bundle = LoadedBundle::load(dir, threads)?;
        let info = pb::ModelInfo {
            name: bundle.manifest.name.clone(),
            vad: String::new(),
            audio_encoder: bundle
                .encoder
                .path()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            vision_encoder: String::new(),
            llm: bundle.llm.describe().to_string(),
        };
        let mut pipeline = AsrPipeline::new(bundle)?;
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("avlm-engine".into())
            .spawn(move || {
                for job in rx {
                    if (job.cancelled)() {
                        continue;
                    }
                    pipeline.interrupted_by(Interrupt::when(job.cancelled.clone()));
                    let started = Instant::now();
                    // One job's failure, even a panic, must not take the model
                    // thread (and every other session's transcription) down.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        pipeline
                            .encode_answer(&job.forced)
                            .and_then(|forced| {
                                if job.partial {
                                    pipeline.transcribe_partial(&job.samples, &forced)
                                } else {
                                    pipeline.transcribe_with(&job.samples, &forced)
                                }
                            })
                            .map_err(|e| e.to_string())
                    }))
                    .unwrap_or_else(|_| Err("the model panicked on this utterance".to_string()));
                    if let Ok(t) = &result {
                        tracing::debug!(
                            audio_s = job.samples.len() as f64 / 16_000.0,
                            took_ms = started.elapsed().as_millis() as u64,
                            audio_tokens = t.audio_tokens,
                            new_tokens = t.tokens.len(),
                            "transcribed"
                        );
                    }
                    // The question holds the session's reply sender: keeping
                    // it past its job would hold that call open.
                    pipeline.interrupted_by(Interrupt::never());
                    (job.reply)(result);
                }
            })
            .map_err(|e| BundleError::Manifest(format!("cannot start the model thread: {e}")))?;
        Ok(Engine {
            tx,
            info: Arc::new(info),
        })
    }

    pub fn model_info(&self) -> &pb::ModelInfo {
        &self.info
    }

    /// Queues one utterance (16 kHz mono) whose answer starts with `forced`;
    /// blocks while the queue is full.
    pub fn submit(
        &self,
        samples: Vec<f32>,
        forced: String,
        cancelled: impl Fn() -> bool + Send + Sync + 'static,
        reply: impl FnOnce(Result<Transcript, String>) + Send + 'static,
    ) -> Result<(), SubmitError> {
        self.queue(samples, forced, false, Arc::new(cancelled), Box::new(reply))
    }

    /// Queues a provisional re-decode of an open segment's audio so far,
    /// starting with `forced` (decoded with `decoding.partial_beam_width`);
    /// blocks while the queue is full.
    pub fn submit_partial(
        &self,
        samples: Vec<f32>,
        forced: String,
        cancelled: impl Fn() -> bool + Send + Sync + 'static,
        reply: impl FnOnce(Result<Transcript, String>) + Send + 'static,
    ) -> Result<(), SubmitError> {
        self.queue(samples, forced, true, Arc::new(cancelled), Box::new(reply))
    }

    fn queue(
        &self,
        samples: Vec<f32>,
        forced: String,
        partial: bool,
        cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
        reply: Reply,
    ) -> Result<(), SubmitError> {
        let job = Job {
            samples,
            forced,
            partial,
            cancelled,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => self.tx.send(job).map_err(|_| SubmitError::Stopped),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }
}
