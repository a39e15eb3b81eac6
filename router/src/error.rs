//! The one error type the routing library, the client and the router service
//! answer with. Region errors never appear here: they are consumed by the
//! retry loop, and only their last description survives in
//! [`Error::Unavailable`] when the retry budget runs out.

use tonic::{Code, Status};

/// Metadata key the router sets on every status it answers itself, so a
/// client can tell "the router answered with an error" from "the router
/// could not be reached".
pub const ROUTER_ERROR_METADATA: &str = "concord-router-error";

/// What a request through the router (or the smart client) can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty key, key or value over the limit,
    /// range start after its end); nothing was written and retrying will not
    /// help. The message is the one the store would give.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster could not serve the request within the retry budget; the
    /// message says what was tried and the last failure seen. A write that
    /// ends this way may or may not have been applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The client or router was given an unusable configuration.
    #[error("configuration error: {0}")]
    Config(String),
}

impl From<concord_common::limits::InvalidInput> for Error {
    fn from(e: concord_common::limits::InvalidInput) -> Self {
        Error::InvalidArgument(e.0)
    }
}

/// Result of routing-library calls.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The gRPC status the router answers this error with, marked as coming
    /// from the router (see [`ROUTER_ERROR_METADATA`]).
    pub fn to_status(&self) -> Status {
        Error::mark_router_status(match self {
            Error::InvalidArgument(msg) => Status::invalid_argument(msg.clone()),
            Error::Unavailable(msg) => Status::unavailable(msg.clone()),
            Error::Config(msg) => Status::failed_precondition(msg.clone()),
        })
    }

    /// `status` marked as the router's own answer.
    pub fn mark_router_status(mut status: Status) -> Status {
        status.metadata_mut().insert(
            ROUTER_ERROR_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        status
    }

    /// The error a router's status stands for, if the router itself
    /// answered it; `None` for transport failures (router unreachable).
    pub fn from_router_status(status: &Status) -> Option<Error> {
        status.metadata().get(ROUTER_ERROR_METADATA)?;
        let message = status.message().to_string();
        Some(match status.code() {
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::FailedPrecondition => Error::Config(message),
            _ => Error::Unavailable(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip_keeps_kind_and_message() {
        for err in [
            Error::InvalidArgument("key must not be empty".into()),
            Error::Unavailable("gave up".into()),
            Error::Config("no address".into()),
        ] {
            let status = err.to_status();
            assert_eq!(Error::from_router_status(&status), Some(err));
        }
    }

    #[test]
    fn transport_failures_are_not_router_answers() {
        let status = Status::unavailable("error trying to connect: connection refused");
        assert_eq!(Error::from_router_status(&status), None);
    }
}
