//! The library's typed errors, and the error types this runtime reports on its own behalf.

/// Error types the runtime itself posts (the function's own errors carry the function's types).
pub mod error_type {
    /// The handler (or init, or a hook) panicked.
    pub const HANDLER_PANIC: &str = "Runtime.HandlerPanic";
    /// `/next` returned an invocation whose `Lambda-Runtime-*` headers could not be read.
    pub const MALFORMED_INVOCATION: &str = "Runtime.MalformedInvocation";
    /// A worker (the binary's worker form) broke the worker protocol.
    pub const WORKER_PROTOCOL: &str = "Runtime.WorkerProtocolError";
    /// `_HANDLER` does not name an executable that could be started.
    pub const INVALID_ENTRYPOINT: &str = "Runtime.InvalidEntrypoint";
    /// A typed handler's event is not JSON of the handler's event type.
    pub const UNMARSHAL: &str = "Runtime.UnmarshalError";
    /// A typed handler's response could not be written as JSON.
    pub const MARSHAL: &str = "Runtime.MarshalError";
    /// The function process exited; shared with the platform's own name for it.
    pub const EXIT: &str = proto::runtime_api::function_error_type::RUNTIME_EXIT;
}

/// A reserved environment variable that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(&'static str),
    #[error("environment variable {name} has an invalid value {value:?}")]
    Invalid { name: &'static str, value: String },
}

/// Why the `Lambda-Runtime-*` headers of an invocation do not make a [`crate::Context`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {0} is empty")]
    Empty(&'static str),
    #[error("header {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("header {name} is not a time in epoch milliseconds: {value:?}")]
    NotEpochMillis { name: &'static str, value: String },
}

/// A failed call to the Runtime API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Runtime API address {0:?} (expected host:port)")]
    InvalidAddress(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A streamed response could not be written or its answer read.
    #[error("POST {endpoint} (streaming): {source}")]
    Stream {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The request did not get an HTTP answer: the Runtime API is unreachable or hung up.
    #[error("{method} {endpoint}: {source}")]
    Transport {
        method: &'static str,
        endpoint: String,
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with a non-2xx status; `error_type` and `message` come from its
    /// `{errorType, errorMessage}` body when it sent one.
    #[error("{method} {endpoint} answered {status}: {error_type}: {message}")]
    Status {
        method: &'static str,
        endpoint: String,
        status: u16,
        error_type: String,
        message: String,
    },
    /// `/next` answered with headers that do not describe an invocation. With a request id the
    /// invocation can still be failed; without one it cannot be addressed at all.
    #[error("malformed invocation{}: {source}", request_id.as_deref().map(|id| format!(" {id}")).unwrap_or_default())]
    MalformedInvocation {
        request_id: Option<String>,
        #[source]
        source: ContextError,
    },
    /// The event of an otherwise well-formed invocation could not be read (too large, cut off).
    #[error("reading the event of invocation {request_id}: {source}")]
    EventBody {
        request_id: String,
        #[source]
        source: Box<ureq::Error>,
    },
}

impl Error {
    /// The HTTP status the server answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The request id an invocation error can still be posted to, for errors of `/next` that
    /// concern one invocation rather than the Runtime API as a whole.
    pub fn invocation_id(&self) -> Option<&str> {
        match self {
            Error::MalformedInvocation { request_id, .. } => request_id.as_deref(),
            Error::EventBody { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
}
