//! The error type of this crate.

use std::path::PathBuf;

/// What can go wrong loading or running the language model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// A weights or tokenizer file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// The file is readable but not a model this code runs.
    #[error("unsupported model {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// A tensor or metadata entry the architecture needs is missing or has the wrong shape.
    #[error("bad weights: {0}")]
    BadWeights(String),
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The KV cache cannot hold the tokens.
    #[error("KV cache full: {needed} positions needed, capacity {capacity}")]
    CacheFull { needed: usize, capacity: usize },
    /// A caller passed something malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The caller's [`crate::Interrupt`] asked a decode to stop.
    #[error("decoding interrupted: the answer is no longer wanted")]
    Interrupted,
}

impl LlmError {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            LlmError::Io { .. } => "io",
            LlmError::Unsupported { .. } => "unsupported",
            LlmError::BadWeights(_) => "bad_weights",
            LlmError::Tokenizer(_) => "tokenizer",
            LlmError::CacheFull { .. } => "cache_full",
            LlmError::InvalidInput(_) => "invalid_input",
            LlmError::Tensor(_) => "tensor",
            LlmError::Interrupted => "interrupted",
        }
    }
}

pub type Result<T> = std::result::Result<T, LlmError>;
