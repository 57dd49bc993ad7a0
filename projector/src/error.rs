//! The error type of this crate.

use std::path::PathBuf;

/// What can go wrong loading or running a projector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectorError {
    /// The weights file could not be opened or is not a safetensors file.
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// A tensor the projector needs is not in the weights.
    #[error("missing tensor `{name}` in {source_name}")]
    MissingTensor { name: String, source_name: String },
    /// A weight tensor has a shape the configuration does not allow.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    BadShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A weight tensor is stored in a dtype other than f32, f16 or bf16.
    #[error("tensor `{name}` has unsupported dtype {dtype} (want f32, f16 or bf16)")]
    UnsupportedDtype { name: String, dtype: String },
    /// The configuration itself is unusable (k = 0, a zero dimension).
    #[error("invalid projector config: {0}")]
    InvalidConfig(String),
    /// The projector does not fit the encoder or LLM it is paired with.
    #[error("projector {what} is {actual}, but {expected} is expected")]
    Incompatible {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A caller passed features of the wrong rank, width or dtype.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl ProjectorError {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProjectorError::Io { .. } => "io",
            ProjectorError::MissingTensor { .. } => "missing_tensor",
            ProjectorError::BadShape { .. } => "bad_shape",
            ProjectorError::UnsupportedDtype { .. } => "unsupported_dtype",
            ProjectorError::InvalidConfig(_) => "invalid_config",
            ProjectorError::Incompatible { .. } => "incompatible",
            ProjectorError::InvalidInput(_) => "invalid_input",
            ProjectorError::Tensor(_) => "tensor",
        }
    }
}

pub type Result<T> = std::result::Result<T, ProjectorError>;
