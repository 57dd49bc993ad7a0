//! What the server shares between sessions: loaded models, limits, and the
//! session count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use avlm_encoders::SileroVad;
use avlm_proto as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::engine::Engine;

/// Name of the model set this server runs.
pub const MODEL_NAME: &str = "default";

pub struct ServerState {
    pub config: ServerConfig,
    pub vad: SileroVad,
    /// The model thread, when a bundle is loaded.
    pub engine: Option<Engine>,
    sessions: Arc<Semaphore>,
    active: Arc<AtomicUsize>,
}

/// A running session's claim on one of the server's session slots; the slot
/// frees when the last part of the session drops its lease.
pub struct SessionLease {
    _permit: OwnedSemaphorePermit,
    active: Arc<AtomicUsize>,
    pub id: String,
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(session = %self.id, "session released");
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
            config,
            vad,
        })
    }

    /// Claims a session slot, or `None` when the server is full.
    pub fn try_lease(&self) -> Option<SessionLease> {
        let permit = self.sessions.clone().try_acquire_owned().ok()?;
        self.active.fetch_add(1, Ordering::AcqRel);
        Some(SessionLease {
            _permit: permit,
            active: self.active.clone(),
            id: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Sessions running now.
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
