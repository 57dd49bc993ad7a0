//! Server settings and the defaults a session starts from.

use std::path::PathBuf;

/// Session defaults the server applies to options a client leaves unset.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDefaults {
    pub vad_threshold: f32,
    pub min_silence_ms: u32,
    pub min_speech_ms: u32,
    pub pre_roll_ms: u32,
    pub max_segment_ms: u32,
    pub video_fps: f32,
    pub video_width: u32,
    pub video_height: u32,
    pub stats_interval_ms: u32,
}

impl Default for SessionDefaults {
    /// Endpointing as the endpointer's own defaults say.
    fn default() -> Self {
        let e = avlm_encoders::EndpointConfig::default();
        let ms = |s: f64| (s * 1000.0).round() as u32;
        SessionDefaults {
            vad_threshold: e.threshold,
            min_silence_ms: ms(e.min_silence_s),
            min_speech_ms: ms(e.min_speech_s),
            pre_roll_ms: ms(e.pre_roll_s),
            max_segment_ms: ms(e.max_segment_s),
            video_fps: 25.0,
            video_width: 224,
            video_height: 224,
            stats_interval_ms: 5_000,
        }
    }
}

/// Everything `avlm serve` needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// ONNX Runtime shared library.
    pub ort_lib: PathBuf,
    /// Silero VAD ONNX model.
    pub vad_model: PathBuf,
    /// Concurrent sessions; more are refused with RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Largest client message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Bytes a session may hold between the connection and its decoder.
    pub pipe_bytes: usize,
    pub defaults: SessionDefaults,
    /// Model bundle for TRANSCRIBE; none: the server only segments.
    pub bundle: Option<PathBuf>,
    /// Threads the model thread's encoder uses.
    pub engine_threads: usize,
    /// A session whose client sends nothing for this long is ended with
    /// DEADLINE_EXCEEDED and its slot freed (None: never).
    pub idle_timeout: Option<std::time::Duration>,
    /// How long a shutdown waits for open calls to finish before it drops
    /// them (a client that stopped reading would otherwise hold it forever).
    pub shutdown_grace: std::time::Duration,
    /// Audio seconds of finals queued for the model (all sessions) beyond
    /// which new transcription or caption streams are refused with
    /// RESOURCE_EXHAUSTED, so a full server sheds load instead of making
    /// every client wait (None: no limit).
    pub max_queued_audio_s: Option<f64>,
    /// Decoded media (the byte ring, decoded frames and audio waiting for
    /// analysis) all open sessions may hold together, counted at each
    /// session's worst case when it starts; a session that would go past it
    /// is refused with RESOURCE_EXHAUSTED (None: no limit).
    pub max_media_memory_bytes: Option<u64>,
    /// How long a resumable stream waits for its client to come back after
    /// its connection dropped (StreamOptions.resumable).
    pub resume_grace: std::time::Duration,
}

/// Seconds a resumable stream waits for its client after a dropped connection.
pub const DEFAULT_RESUME_GRACE_S: u64 = 30;

/// The ONNX Runtime library tools/setup.sh installs, inside the `.avlm` folder.
pub const ORT_LIB: &str = "lib/libonnxruntime.so.1.31.1";

/// The Silero VAD model tools/setup.sh installs, inside the `.avlm` folder.
pub const VAD_MODEL: &str = "models/silero_vad.onnx";

/// Default `max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 16;

/// Default `max_message_bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Default `partial_interval_ms` of a session with partial results.
pub const DEFAULT_PARTIAL_INTERVAL_MS: u32 = 500;

/// Most frames a second a caption session may ask the captioner to see.
pub const MAX_CAPTION_FPS: f32 = 10.0;

/// Default `max_queued_audio_s`: about a minute of model work on a small
/// CPU machine.
pub const DEFAULT_MAX_QUEUED_AUDIO_S: f64 = 120.0;

/// Default `max_media_memory_bytes`: room for every default-sized session
/// many times over, and for about ten at the largest frame size.
pub const DEFAULT_MAX_MEDIA_MEMORY_MB: u64 = 1024;

/// Default `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 10;

/// Default `idle_timeout`: a live client sends media every few hundred ms.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 60;

impl ServerConfig {
    /// A configuration with the project-local runtime files found from `root`
    /// (where tools/setup.sh puts them).
    pub fn with_runtime_in(root: &std::path::Path) -> Self {
        let state = root.join(".avlm");
        ServerConfig {
            ort_lib: state.join(ORT_LIB),
            vad_model: state.join(VAD_MODEL),
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            pipe_bytes: 1 << 20,
            defaults: SessionDefaults::default(),
            bundle: Some(state.join("bundles/default")).filter(|b| b.join("avlm.toml").is_file()),
            engine_threads: 2,
            idle_timeout: Some(std::time::Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S)),
            shutdown_grace: std::time::Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_S),
            max_queued_audio_s: Some(DEFAULT_MAX_QUEUED_AUDIO_S),
            max_media_memory_bytes: Some(DEFAULT_MAX_MEDIA_MEMORY_MB << 20),
            resume_grace: std::time::Duration::from_secs(DEFAULT_RESUME_GRACE_S),
        }
    }
}
