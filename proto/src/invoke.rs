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
}

/// An invocation as the host link carries it to the guest.
impl From<Invocation> for crate::host_link::Invoke {
    fn from(invocation: Invocation) -> Self {
        crate::host_link::Invoke {
            request_id: invocation.request_id,
            event: crate::host_link::Blob(invocation.event.to_vec()),
            trace_id: invocation.trace_id,
            client_context: invocation.client_context,
            cognito_identity: invocation.cognito_identity,
        }
    }
}

/// The guest's side of [`From<Invocation>`]: the invocation a host-link frame carries.
impl From<crate::host_link::Invoke> for Invocation {
    fn from(invoke: crate::host_link::Invoke) -> Self {
        Invocation {
            request_id: invoke.request_id,
            event: Bytes::from(invoke.event.0),
            trace_id: invoke.trace_id,
            client_context: invoke.client_context,
            cognito_identity: invoke.cognito_identity,
        }
    }
}

impl Outcome {
    /// The host-link frame that answers invocation `request_id` with this outcome.
    pub fn into_answer(self, request_id: String) -> crate::host_link::Message {
        use crate::host_link::{Blob, Message};
        match self {
            Outcome::Success(body) => Message::Response {
                request_id,
                body: Blob(body.to_vec()),
            },
            Outcome::Failure { body, reset } => Message::Error {
                request_id,
                body: Blob(body.to_vec()),
                reset,
            },
        }
    }

    /// The outcome `message` carries if it answers invocation `request_id`.
    pub fn from_answer(message: crate::host_link::Message, request_id: &str) -> Option<Outcome> {
        use crate::host_link::Message;
        match message {
            Message::Response {
                request_id: id,
                body,
            } if id == request_id => Some(Outcome::Success(body.0.into())),
            Message::Error {
                request_id: id,
                body,
                reset,
            } if id == request_id => Some(Outcome::Failure {
                body: body.0.into(),
                reset,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_link::Invoke;

    #[test]
    fn invocations_and_outcomes_cross_the_host_link_unchanged() {
        let mut invocation = Invocation::new(Bytes::from_static(b"{\"k\":1}"));
        invocation.trace_id = Some("Root=1".into());
        invocation.client_context = Some("{}".into());
        let frame = Invoke::from(invocation.clone());
        assert_eq!(Invocation::from(frame), invocation);

        let outcomes = [
            Outcome::Success(Bytes::from_static(b"[1]")),
            Outcome::Failure {
                body: Bytes::from_static(b"{}"),
                reset: Some(Reset::Timeout),
            },
        ];
        for outcome in outcomes {
            let answer = outcome.clone().into_answer("r1".into());
            assert_eq!(Outcome::from_answer(answer.clone(), "r1"), Some(outcome));
            assert_eq!(Outcome::from_answer(answer, "r2"), None);
        }
    }
}
