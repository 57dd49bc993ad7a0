//! What the server shares between sessions: loaded models, limits, and the
//! session count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use avlm_encoders::SileroVad;
use avlm_proto as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::error::SessionError;

/// Name of the model set this server runs.
pub const MODEL_NAME: &str = "default";

pub struct ServerState {
    pub config: ServerConfig,
    pub vad: SileroVad,
    /// The model thread, when a bundle is loaded.
    pub engine: Option<Engine>,
    sessions: Arc<Semaphore>,
    active: Arc<AtomicUsize>,
    /// Decoded-media bytes the open sessions have reserved.
    media_reserved: Arc<AtomicU64>,
    /// Resumable streams by resume token: where a resuming call is handed.
    pub resumable: crate::session::resume::Registry,
}

/// The decoded-media memory a session may hold at most, reserved for as long
/// as any part of it holds this.
pub struct MediaReservation {
    bytes: u64,
    reserved: Arc<AtomicU64>,
}

impl Drop for MediaReservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A running session's claim on one of the server's session slots, shared
/// by the parts of the session. A slot counts an open call: it frees when
/// the last part drops the lease, or when [`SessionLease::release`] says
/// the call is over while parts still wind down (a thread waiting for room
/// in the model's inbox, say, after its client went away).
pub struct SessionLease {
    slot: Mutex<Option<Slot>>,
    /// Never sent on: dropped with the lease, which is what
    /// [`SessionLease::dropped`] waits for.
    dropped: tokio::sync::watch::Sender<()>,
    pub id: String,
}

/// The slot itself: the permit and the count of active sessions.
struct Slot {
    _permit: OwnedSemaphorePermit,
    active: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionLease {
    /// Frees the slot now (once; later calls and the drop do nothing more).
    pub fn release(&self) {
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if slot.is_some() {
            tracing::debug!(session = %self.id, "session released");
        }
    }

    /// Resolves once the lease is dropped: every part of the session let go.
    pub fn dropped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.dropped.subscribe();
        async move {
            // Nothing is ever sent: this returns when the sender is dropped.
            let _ = rx.changed().await;
        }
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.release();
    }
}

impl ServerState {
    /// Loads ONNX Runtime and the models named in `config`.
    pub fn load(config: ServerConfig) -> anyhow::Result<Self> {
        avlm_encoders::runtime::init(&config.ort_lib)?;
        let vad = SileroVad::load(&config.vad_model)?;
        let engine = match &config.bundle {
            Some(dir) => Some(
                Engine::start(dir, config.engine_threads)
                    .map_err(|e| anyhow::anyhow!("model bundle {}: {e}", dir.display()))?,
            ),
            None => None,
        };
        Ok(ServerState {
            engine,
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            active: Arc::new(AtomicUsize::new(0)),
            media_reserved: Arc::new(AtomicU64::new(0)),
            resumable: Default::default(),
            config,
            vad,
        })
    }

    /// Claims a session slot, or `None` when the server is full.
    pub fn try_lease(&self) -> Option<SessionLease> {
        let permit = self.sessions.clone().try_acquire_owned().ok()?;
        self.active.fetch_add(1, Ordering::AcqRel);
        Some(SessionLease {
            slot: Mutex::new(Some(Slot {
                _permit: permit,
                active: self.active.clone(),
            })),
            dropped: tokio::sync::watch::channel(()).0,
            id: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Reserves `bytes` of decoded media for a new session, or says which
    /// limit it would pass.
    pub fn reserve_media(&self, bytes: u64) -> Result<MediaReservation, SessionError> {
        let limit = self.config.max_media_memory_bytes.unwrap_or(u64::MAX);
        let taken = self
            .media_reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(bytes).filter(|&total| total <= limit)
            });
        match taken {
            Ok(_) => Ok(MediaReservation {
                bytes,
                reserved: self.media_reserved.clone(),
            }),
            Err(now) => Err(SessionError::resource(format!(
                "this session's decoded media (up to {} MiB at its frame size) would take the open sessions past the server's limit of {} MiB ({} MiB held; serve --max-media-memory-mb); ask for smaller video frames (options.video_width/height) or retry later",
                bytes.div_ceil(1 << 20),
                limit >> 20,
                now.div_ceil(1 << 20)
            ))),
        }
    }

    /// Decoded-media bytes the open sessions have reserved.
    pub fn media_reserved(&self) -> u64 {
        self.media_reserved.load(Ordering::Acquire)
    }

    /// Sessions whose call is open now.
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn model_info(&self) -> pb::ModelInfo {
        let vad = format!(
            "silero-vad v5 ({})",
            self.vad
                .path()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        match &self.engine {
            Some(engine) => pb::ModelInfo {
                vad,
                ..engine.model_info().clone()
            },
            None => pb::ModelInfo {
                name: MODEL_NAME.into(),
                vad,
                audio_encoder: String::new(),
                vision_encoder: String::new(),
                llm: String::new(),
                lip_encoder: String::new(),
                transcribe_modalities: Vec::new(),
            },
        }
    }

    /// The model name clients may ask for.
    pub fn model_name(&self) -> String {
        self.engine
            .as_ref()
            .map(|e| e.model_info().name.clone())
            .unwrap_or_else(|| MODEL_NAME.to_string())
    }

    /// Tasks this server runs.
    pub fn tasks(&self) -> Vec<pb::Task> {
        let mut tasks = vec![pb::Task::Segments];
        if self.engine.as_ref().is_some_and(|e| e.transcribes()) {
            tasks.push(pb::Task::Transcribe);
        }
        if self.engine.as_ref().is_some_and(|e| e.vision().is_some()) {
            tasks.push(pb::Task::Caption);
        }
        tasks
    }
}
