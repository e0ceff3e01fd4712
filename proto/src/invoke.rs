//! One invocation and how it ends, as every invocation source (the invoke endpoint, the
//! asynchronous queue, the guest's host link, the function host) and every environment (a local
//! sandbox, a microVM) hand them to each other.

use crate::host_link::Reset;
use bytes::Bytes;

/// Most invocations that may wait for the environment at once.
pub const MAX_QUEUED: usize = 128;

/// One invocation, as any source hands it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub request_id: String,
    /// The event: JSON, at most [`SYNC_PAYLOAD_LIMIT`](crate::runtime_api::SYNC_PAYLOAD_LIMIT)
    /// bytes (the source checks both).
    pub event: Bytes,
    /// `Lambda-Runtime-Trace-Id`; one is generated when absent.
    pub trace_id: Option<String>,
    /// `Lambda-Runtime-Client-Context`: the decoded client context JSON.
    pub client_context: Option<String>,
    /// `Lambda-Runtime-Cognito-Identity`.
    pub cognito_identity: Option<String>,
}

impl Invocation {
    /// An invocation of `event` with a fresh request id and nothing else set.
    pub fn new(event: Bytes) -> Self {
        Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            event,
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        }
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runtime's response body.
    Success(Bytes),
    /// The function or its environment failed; the body is Lambda's error JSON
    /// (`{"errorMessage","errorType",...}`), the invoker answers it with
    /// `X-Amz-Function-Error: Unhandled`. `reset` is set when the failure also reset the
    /// environment (the function timed out, or its runtime exited).
    Failure { body: Bytes, reset: Option<Reset> },
}

impl Outcome {
    /// A failure that left the environment as it was.
    pub fn failure(body: impl Into<Bytes>) -> Outcome {
        Outcome::Failure {
            body: body.into(),
            reset: None,
        }
    }
}

/// Why an invocation got no outcome.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    #[error("too many invocations are waiting ({MAX_QUEUED})")]
    QueueFull,
    /// A concurrency limit is reached; `reason` is Lambda's name for which one
    /// ([`crate::invoke_api::throttle_reason`]).
    #[error("Rate Exceeded.")]
    Throttled { reason: &'static str },
    #[error("the environment shut down before the invocation finished")]
    ShutDown,
    /// The host running it (in a cluster) stopped answering: it may have run, in part or whole.
    #[error("the invocation was lost: {0}")]
    Lost(String),
}
