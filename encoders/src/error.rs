//! The error type of this crate.

use std::path::PathBuf;

/// What can go wrong in a front end or encoder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncoderError {
    /// The ONNX Runtime shared library could not be loaded or initialised.
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Runtime { path: PathBuf, reason: String },
    /// A model file is missing or ONNX Runtime rejected it.
    #[error("cannot load model {path}: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    /// A model's inputs or outputs are not what this code expects.
    #[error("model {model} does not match the expected contract: {reason}")]
    Contract { model: String, reason: String },
    /// Running a model failed.
    #[error("inference of {model} failed: {source}")]
    Inference {
        model: String,
        #[source]
        source: ort::Error,
    },
}

impl EncoderError {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EncoderError::Runtime { .. } => "runtime",
            EncoderError::ModelLoad { .. } => "model_load",
            EncoderError::Contract { .. } => "contract",
            EncoderError::Inference { .. } => "inference",
        }
    }
}
