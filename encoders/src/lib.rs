//! Front ends and ONNX encoders of avlm, free of any transport or LLM code:
//! plain media value types, the ONNX Runtime set-up, Silero voice activity
//! and the endpointer that turns speech probabilities into segments, Whisper's
//! log-mel front end and the Whisper encoder in ONNX, the vision front end
//! (resize, pad, normalise) and vision encoders in ONNX, face detection and
//! live mouth crops for lip reading.

pub mod endpoint;
pub mod error;
pub mod face;
pub mod lip;
pub mod media;
pub mod mel;
pub mod mouth;
pub mod runtime;
pub mod vad;
pub mod vision;
pub mod whisper;

/// The audio rate every model here takes: Whisper's front end and Silero
/// VAD, and so all audio avlm decodes.
pub const SAMPLE_RATE: u32 = 16_000;

pub use endpoint::{EndReason, EndpointConfig, Endpointer, SpeechEvent};
pub use error::EncoderError;
pub use face::{Face, FaceDetector};
pub use lip::{LipEncoder, LipFeatures};
pub use media::{Frame, Pcm};
pub use mel::{LogMel, MelSpectrogram};
pub use mouth::{lip_input, MouthConfig, MouthCrop, MouthStats, MouthTracker};
pub use vad::{SileroVad, VadStream, VAD_CHUNK_SAMPLES, VAD_SAMPLE_RATE};
pub use vision::{VisionEncoder, VisionFeatures, VisionPreprocess};
pub use whisper::{Features, WhisperEncoder};
