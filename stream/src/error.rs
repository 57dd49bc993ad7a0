//! Mapping failures to gRPC statuses at the service edge.

use tonic::Status;

use crate::media::MediaError;

/// The status a client sees for a media failure.
pub fn media_status(e: &MediaError) -> Status {
    match e {
        MediaError::Undecodable(_) | MediaError::MissingStream(_) => {
            Status::invalid_argument(e.to_string())
        }
        MediaError::IndexAtEnd => Status::failed_precondition(e.to_string()),
        MediaError::Aborted => Status::cancelled(e.to_string()),
        MediaError::Internal(_) => Status::internal(e.to_string()),
    }
}
