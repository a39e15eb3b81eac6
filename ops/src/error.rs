//! Errors of the `concord` command line.

use std::path::PathBuf;

/// Everything that can make a `concord` command fail. Each variant renders
/// as one line meant for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Input on the command line that cannot be used.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A sibling binary (`concord-pd`, ...) is not where we expect it.
    #[error("cannot find `{name}` next to the concord executable (looked in {dir}); build it with `cargo build --workspace --bins`")]
    BinaryMissing {
        /// The binary's name.
        name: String,
        /// The directory searched.
        dir: PathBuf,
    },
    /// A file or directory could not be used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A child process could not be started.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The component.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A child process exited while the playground was starting.
    #[error("{name} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    ChildExited {
        /// The component.
        name: String,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// The cluster did not become ready in time.
    #[error("the cluster did not serve a put/get round trip within {secs} s (last error: {last})")]
    NotReady {
        /// How long we waited.
        secs: u64,
        /// The last error seen.
        last: String,
    },
    /// The router address is malformed or unreachable.
    #[error("cannot connect to router {addr}: {message}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The cluster refused or failed a request.
    #[error("{op} failed: {message}")]
    Request {
        /// The operation.
        op: &'static str,
        /// gRPC status code name.
        message: String,
    },
    /// A feature that is not available (yet) with these binaries.
    #[error("{0}")]
    Unsupported(String),
    /// A signal stopped the command before it finished.
    #[error("stopped by {0} during start-up")]
    Interrupted(&'static str),
    /// A local resource (runtime, HTTP client) could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = OpsError> = std::result::Result<T, E>;

impl OpsError {
    /// An [`OpsError::Io`] for `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> OpsError {
        OpsError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// An [`OpsError::Request`] from a gRPC status.
    pub fn from_status(op: &'static str, status: &tonic::Status) -> OpsError {
        let message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            format!("{} ({:?})", status.message(), status.code())
        };
        OpsError::Request { op, message }
    }
}
