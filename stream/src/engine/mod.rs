//! The engine: one model thread that owns the loaded bundle and steps every
//! session's transcriptions together. Sessions hand in requests without
//! ever blocking (a full inbox gives the request back: a state the session
//! reports, not a stall); the thread runs a [`scheduler`] that, each tick,
//! prefills new prompts under a token budget and then runs one batched
//! decode step over the live rows of every transcription in flight.

pub mod asr;
pub mod caption;
pub mod prompt;
pub mod repetition;
pub mod scheduler;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use avlm_proto as pb;

pub use asr::{AsrPipeline, Decode, LipClip, StageTimes, Transcript};
pub use caption::{
    caption_cache, caption_frames, CaptionEvent, CaptionSettings, CaptionSink, CaptionWork,
    FrameOutcome, VisionFrontEnd,
};
pub use prompt::SpeechInput;

use crate::bundle::{BundleError, LoadedBundle};

/// Requests the model thread takes between two ticks.
const INBOX: usize = 64;

/// Where a request's answer goes.
pub type AnswerTo = Box<dyn FnOnce(Result<Transcript, EngineError>) + Send>;

/// Why a transcription failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model code failed on this request (its message says where).
    #[error("{0}")]
    Model(String),
    /// The model code panicked on this request; other requests go on.
    #[error("the model panicked on this utterance")]
    Panicked,
}

/// One utterance to transcribe.
pub struct Request {
    /// 16 kHz mono (empty when the utterance is read from the lips alone).
    pub samples: Vec<f32>,
    /// The speaker's mouth crops over the same time (lip reading), if any.
    pub video: Option<Box<LipClip>>,
    /// Text the answer must start with (already committed to the client).
    pub forced: String,
    /// Who asked (any number unique to the session): finals are admitted
    /// round-robin over sessions, so one client's backlog does not hold up
    /// the others.
    pub session: u64,
    /// A provisional re-decode of an open segment (`decoding.partial_beam_width`):
    /// admitted after every waiting final.
    pub partial: bool,
    /// Asked every tick: once `true` (the session went away, a newer request
    /// replaced it) the request leaves, queued or running, without an answer.
    pub cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    pub reply: AnswerTo,
}

impl Request {
    /// The samples this request adds to the engine's backlog: a final's
    /// audio (a partial is a preview, dropped when superseded).
    fn backlog(&self) -> u64 {
        if self.partial {
            0
        } else {
            self.samples.len() as u64
        }
    }
}

/// A number for a new session, unique in this process: the engine tells
/// sessions apart by it (round-robin finals, caption rows).
pub fn session_number() -> u64 {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    SESSIONS.fetch_add(1, Ordering::Relaxed)
}

/// What the model thread takes in.
pub enum Work {
    Transcribe(Request),
    Caption(CaptionWork),
}

/// Counters the model thread keeps, readable from anywhere.
#[derive(Debug, Default)]
pub struct EngineLoad {
    /// Requests handed in and not yet answered or dropped.
    pub in_flight: AtomicU64,
    /// Most rows one decode step has run.
    pub max_rows: AtomicU64,
    /// Caption streams open.
    pub caption_rows: AtomicU64,
    /// KV cache bytes the caption streams hold.
    pub caption_kv_bytes: AtomicU64,
    /// 16 kHz samples of the finals handed in and not yet answered or dropped.
    pub backlog_samples: AtomicU64,
    /// Model seconds per second of audio over recent transcriptions (an
    /// f64's bits; 0 until the first answer): each request's own share of
    /// the batched work, so it is the engine's throughput at the load it saw.
    compute_per_audio_s: AtomicU64,
}

/// Weight of the newest transcription in [`EngineLoad`]'s running compute rate.
const RATE_WEIGHT: f64 = 0.2;

impl EngineLoad {
    /// Audio seconds of finals waiting for the model or being decoded.
    pub fn backlog_s(&self) -> f64 {
        self.backlog_samples.load(Ordering::Acquire) as f64 / crate::media::AUDIO_RATE as f64
    }

    /// Model seconds per audio second, recently; 0 before the first answer.
    pub fn compute_per_audio_s(&self) -> f64 {
        f64::from_bits(self.compute_per_audio_s.load(Ordering::Relaxed))
    }

    /// Folds one answered transcription into the running rate.
    fn observe_rate(&self, compute_s: f64, audio_s: f64) {
        if audio_s <= 0.0 {
            return;
        }
        let sample = compute_s / audio_s;
        let old = self.compute_per_audio_s();
        let new = if old == 0.0 {
            sample
        } else {
            old + RATE_WEIGHT * (sample - old)
        };
        self.compute_per_audio_s
            .store(new.to_bits(), Ordering::Relaxed);
    }

    /// Expected wait before a final holding `own_audio_s` more audio than
    /// the model already has is answered: everything queued plus it, at the
    /// recent rate (0 until the model has answered once).
    pub fn expected_delay_s(&self, own_audio_s: f64) -> f64 {
        (self.backlog_s() + own_audio_s) * self.compute_per_audio_s()
    }
}

/// A handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Work>,
    info: Arc<pb::ModelInfo>,
    load: Arc<EngineLoad>,
    vision: Option<Arc<VisionFrontEnd>>,
    caption_defaults: Option<(CaptionSettings, f32)>,
    /// The caption format takes client questions.
    questions: bool,
    /// The bundle transcribes audio alone.
    transcribes: bool,
    /// What the bundle reads lips with.
    lips: crate::session::valid::LipCaps,
    /// The face detector of lip reading.
    face_detector: Option<std::path::PathBuf>,
}

/// Why a request was not accepted.
#[derive(thiserror::Error)]
pub enum SubmitError {
    #[error("the model thread has stopped")]
    Stopped,
    /// The inbox is full: the request comes back to be handed in later.
    #[error("the model thread's inbox is full")]
    Full(Request),
}

impl std::fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubmitError::Stopped => "Stopped",
            SubmitError::Full(_) => "Full",
        })
    }
}

impl Engine {
    /// Loads the bundle in `dir` and starts the model thread.
    pub fn start(dir: &Path, threads: usize) -> Result<Self, BundleError> {
        let mut bundle = LoadedBundle::load(dir, threads)?;
        let (vision, format) = match bundle.vision.take() {
            Some(parts) => {
                let (front, format) = VisionFrontEnd::new(parts);
                (Some(Arc::new(front)), Some(format))
            }
            None => (None, None),
        };
        let caption_defaults = format.as_ref().map(|f| {
            (
                CaptionSettings {
                    threshold: f.threshold,
                    max_new_tokens: f.max_new_tokens,
                },
                f.fps,
            )
        });
        let questions = format.as_ref().is_some_and(|f| f.question.is_some());
        let face_detector = bundle.lip.as_ref().map(|l| l.face_detector.clone());
        let mut info = pb::ModelInfo {
            name: bundle.manifest.name.clone(),
            vad: String::new(),
            audio_encoder: bundle
                .audio
                .as_ref()
                .and_then(|a| a.encoder.path().file_name())
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            vision_encoder: vision
                .as_ref()
                .map(|v| v.name().to_string())
                .unwrap_or_default(),
            llm: bundle.llm.describe().to_string(),
            lip_encoder: bundle
                .lip
                .as_ref()
                .and_then(|l| l.encoder.path().file_name())
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            transcribe_modalities: Vec::new(),
        };
        let pipeline = AsrPipeline::new(bundle)?;
        for (input, m) in [
            (SpeechInput::Audio, pb::Modalities::Audio),
            (SpeechInput::Video, pb::Modalities::Video),
            (SpeechInput::AudioVideo, pb::Modalities::AudioVideo),
        ] {
            if pipeline.transcribes(input) {
                info.transcribe_modalities.push(m as i32);
            }
        }
        let transcribes = pipeline.transcribes(SpeechInput::Audio);
        let lips = crate::session::valid::LipCaps {
            video: pipeline.transcribes(SpeechInput::Video),
            audio_video: pipeline.transcribes(SpeechInput::AudioVideo),
        };
        let (tx, rx) = sync_channel::<Work>(INBOX);
        let load = Arc::new(EngineLoad::default());
        let thread_load = load.clone();
        std::thread::Builder::new()
            .name("avlm-engine".into())
            .spawn(move || scheduler::Scheduler::new(pipeline, format, thread_load).run(rx))
            .map_err(|e| BundleError::Manifest(format!("cannot start the model thread: {e}")))?;
        Ok(Engine {
            tx,
            info: Arc::new(info),
            load,
            vision,
            caption_defaults,
            questions,
            transcribes,
            lips,
            face_detector,
        })
    }

    pub fn model_info(&self) -> &pb::ModelInfo {
        &self.info
    }

    /// What the model thread is doing now.
    pub fn load(&self) -> &EngineLoad {
        &self.load
    }

    /// The vision front end, when the bundle captions video.
    pub fn vision(&self) -> Option<&Arc<VisionFrontEnd>> {
        self.vision.as_ref()
    }

    /// The bundle's caption settings and frame rate, when it captions video.
    pub fn caption_defaults(&self) -> Option<(CaptionSettings, f32)> {
        self.caption_defaults
    }

    /// Whether the bundle transcribes audio alone (it may caption only).
    pub fn transcribes(&self) -> bool {
        self.transcribes
    }

    /// What the bundle reads lips with.
    pub fn lips(&self) -> crate::session::valid::LipCaps {
        self.lips
    }

    /// The face detector's ONNX file, when the bundle reads lips.
    pub fn face_detector(&self) -> Option<&std::path::Path> {
        self.face_detector.as_deref()
    }

    /// Whether caption sessions may ask questions (Control ACTION_ASK).
    pub fn takes_questions(&self) -> bool {
        self.questions
    }

    /// Hands in `request` without blocking.
    pub fn try_submit(&self, request: Request) -> Result<(), SubmitError> {
        let backlog = request.backlog();
        self.load.in_flight.fetch_add(1, Ordering::AcqRel);
        self.load
            .backlog_samples
            .fetch_add(backlog, Ordering::AcqRel);
        match self.tx.try_send(Work::Transcribe(request)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.load
                    .backlog_samples
                    .fetch_sub(backlog, Ordering::AcqRel);
                match e {
                    TrySendError::Full(Work::Transcribe(request)) => {
                        Err(SubmitError::Full(request))
                    }
                    _ => Err(SubmitError::Stopped),
                }
            }
        }
    }

    /// Hands in caption work without blocking: `Ok(false)` when the inbox
    /// is full (the caller drops the frame).
    pub fn try_caption(&self, work: CaptionWork) -> Result<bool, SubmitError> {
        match self.tx.try_send(Work::Caption(work)) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Hands in caption work, waiting while the inbox is full (opening and
    /// closing a stream must not be lost).
    pub fn caption_waiting(&self, work: CaptionWork) -> Result<(), SubmitError> {
        self.tx
            .send(Work::Caption(work))
            .map_err(|_| SubmitError::Stopped)
    }

    /// Hands in `request`, waiting while the inbox is full (for callers
    /// with nothing else to do, such as a session whose stream has ended).
    pub fn submit_waiting(&self, request: Request) -> Result<(), SubmitError> {
        let backlog = request.backlog();
        self.load.in_flight.fetch_add(1, Ordering::AcqRel);
        self.load
            .backlog_samples
            .fetch_add(backlog, Ordering::AcqRel);
        self.tx.send(Work::Transcribe(request)).map_err(|_| {
            self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.load
                .backlog_samples
                .fetch_sub(backlog, Ordering::AcqRel);
            SubmitError::Stopped
        })
    }
}
