//! The one error type of a session, with a kind: sessions, the engine and
//! media code say what went wrong and what kind of failure it is; only the
//! service edge turns a kind into a gRPC status (the one map is here, in
//! `From<SessionError> for Status`).

use tonic::{Code, Status};

use crate::engine::EngineError;
use crate::media::MediaError;

/// What kind of failure ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The client sent something malformed or out of range.
    BadInput,
    /// A task or model this server does not serve.
    Unsupported,
    /// A model name this server does not know.
    NotFound,
    /// Valid input this server cannot take as it is (an MP4 indexed at its end).
    Precondition,
    /// Media chunks went missing.
    DataLoss,
    /// A limit of the server (sessions, message size, threads).
    Resource,
    /// A client took too long (to configure, to send, to read).
    Deadline,
    /// A part of the server stopped (the model thread).
    Unavailable,
    /// The session was stopped on purpose.
    Cancelled,
    /// A fault of the server.
    Internal,
}

impl ErrorKind {
    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadInput => "bad_input",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Precondition => "precondition",
            ErrorKind::DataLoss => "data_loss",
            ErrorKind::Resource => "resource",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Why a session ended with an error: its kind and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SessionError {
    pub kind: ErrorKind,
    pub message: String,
}

impl SessionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SessionError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadInput, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Precondition, message)
    }

    pub fn data_loss(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::DataLoss, message)
    }

    pub fn resource(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Resource, message)
    }

    pub fn deadline(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Deadline, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// A failure tonic reported while reading the client's messages.
    pub fn from_inbound(status: &Status) -> Self {
        let kind = match status.code() {
            Code::InvalidArgument => ErrorKind::BadInput,
            Code::ResourceExhausted => ErrorKind::Resource,
            Code::DeadlineExceeded => ErrorKind::Deadline,
            Code::Cancelled => ErrorKind::Cancelled,
            Code::DataLoss => ErrorKind::DataLoss,
            Code::Unavailable => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, status.message())
    }
}

impl From<&MediaError> for SessionError {
    fn from(e: &MediaError) -> Self {
        let kind = match e {
            MediaError::Undecodable(_) | MediaError::MissingStream(_) => ErrorKind::BadInput,
            MediaError::IndexAtEnd => ErrorKind::Precondition,
            MediaError::Aborted => ErrorKind::Cancelled,
            MediaError::Internal(_) => ErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<&EngineError> for SessionError {
    fn from(e: &EngineError) -> Self {
        Self::internal(e.to_string())
    }
}

/// The status a client sees: the one place kinds become gRPC codes.
impl From<SessionError> for Status {
    fn from(e: SessionError) -> Self {
        let code = match e.kind {
            ErrorKind::BadInput => Code::InvalidArgument,
            ErrorKind::Unsupported => Code::Unimplemented,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Precondition => Code::FailedPrecondition,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Resource => Code::ResourceExhausted,
            ErrorKind::Deadline => Code::DeadlineExceeded,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Cancelled => Code::Cancelled,
            ErrorKind::Internal => Code::Internal,
        };
        Status::new(code, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_meaning_through_the_status_map() {
        let media = SessionError::from(&MediaError::IndexAtEnd);
        assert_eq!(media.kind, ErrorKind::Precondition);
        assert_eq!(Status::from(media).code(), Code::FailedPrecondition);
        // A status read from the client comes back as the same status.
        for code in [
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::DataLoss,
            Code::Unavailable,
            Code::Cancelled,
            Code::Internal,
        ] {
            let e = SessionError::from_inbound(&Status::new(code, "why"));
            assert_eq!(e.message, "why");
            assert_eq!(Status::from(e).code(), code);
        }
        let engine = SessionError::from(&EngineError::Panicked);
        assert_eq!(engine.kind.label(), "internal");
    }
}
