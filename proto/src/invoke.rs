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

#[cfg(feature = "stream")]
pub use stream::{Answer, ResponseStream, StreamEnd, StreamEvent, StreamSender};

/// Streamed answers: a runtime that posts its response with
/// `Lambda-Runtime-Function-Response-Mode: streaming` hands it over chunk by chunk, and the
/// invoker passes each chunk on as it arrives (`InvokeWithResponseStream`), or gathers them
/// (a buffered `Invoke` of a streaming function).
#[cfg(feature = "stream")]
mod stream {
    use super::Outcome;
    use crate::host_link::Reset;
    use crate::runtime_api::{function_error_type, ErrorRequest};
    use bytes::{Bytes, BytesMut};
    use tokio::sync::mpsc;

    /// How an invocation answers its invoker.
    #[derive(Debug)]
    pub enum Answer {
        /// All at once: the runtime's response or error, or the environment's failure.
        Whole(Outcome),
        /// Chunk by chunk, as the runtime writes them.
        Stream(ResponseStream),
    }

    impl Answer {
        /// The whole outcome, gathering a stream of up to `limit` bytes: beyond it the invocation
        /// fails with `Function.ResponseSizeTooLarge`, as a buffered `Invoke` of a streaming
        /// function does on Lambda.
        pub async fn gather(self, limit: usize) -> Outcome {
            match self {
                Answer::Whole(outcome) => outcome,
                Answer::Stream(stream) => stream.gather(limit).await,
            }
        }
    }

    /// One step of a streamed response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum StreamEvent {
        Chunk(Bytes),
        /// The last event.
        End(StreamEnd),
    }

    /// How a streamed response ended.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum StreamEnd {
        /// Everything the runtime wrote was passed on.
        Complete,
        /// It broke off; `body` is Lambda's error JSON, whose `errorType` names the error.
        Failed { body: Bytes, reset: Option<Reset> },
    }

    impl StreamEnd {
        /// A failure of the given type and message that left the environment as it was.
        pub fn failed(error_type: &str, message: impl Into<String>) -> StreamEnd {
            StreamEnd::Failed {
                body: ErrorRequest::new(error_type, message).to_json().into(),
                reset: None,
            }
        }

        /// The failure's `errorType` and `errorMessage`, as `InvokeComplete` carries them.
        pub fn error(&self) -> Option<(String, String)> {
            let StreamEnd::Failed { body, .. } = self else {
                return None;
            };
            let parsed: ErrorRequest = serde_json::from_slice(body).unwrap_or_default();
            Some((parsed.error_type, parsed.error_message))
        }
    }

    /// The receiving end of a streamed response.
    #[derive(Debug)]
    pub struct ResponseStream {
        /// The runtime's `Content-Type` for the stream.
        pub content_type: Option<String>,
        events: mpsc::Receiver<StreamEvent>,
        ended: bool,
    }

    /// The producing end of a streamed response. Cheap to clone; the stream ends at the first
    /// [`StreamEvent::End`].
    #[derive(Debug, Clone)]
    pub struct StreamSender {
        events: mpsc::Sender<StreamEvent>,
    }

    /// Chunks that may wait between the runtime and a slow invoker: beyond them the runtime's
    /// upload waits, so memory stays bounded whatever the function writes.
    const IN_FLIGHT: usize = 16;

    impl ResponseStream {
        /// A new stream and its sender.
        pub fn channel(content_type: Option<String>) -> (StreamSender, ResponseStream) {
            let (events, receiver) = mpsc::channel(IN_FLIGHT);
            let stream = ResponseStream {
                content_type,
                events: receiver,
                ended: false,
            };
            (StreamSender { events }, stream)
        }

        /// The next event; after the end, the end again. A stream whose senders all went
        /// without ending it ends as a truncated response.
        pub async fn next(&mut self) -> StreamEvent {
            if self.ended {
                return StreamEvent::End(StreamEnd::Complete);
            }
            let event = self.events.recv().await.unwrap_or_else(|| {
                StreamEvent::End(StreamEnd::failed(
                    function_error_type::TRUNCATED_RESPONSE,
                    "the response stream broke off",
                ))
            });
            self.ended = matches!(event, StreamEvent::End(_));
            event
        }

        /// All of it, up to `limit` bytes (see [`Answer::gather`]).
        pub async fn gather(mut self, limit: usize) -> Outcome {
            let mut body = BytesMut::new();
            loop {
                match self.next().await {
                    StreamEvent::Chunk(chunk) if body.len() + chunk.len() > limit => {
                        let message = format!(
                            "Response payload size exceeded maximum allowed payload size ({limit} bytes)."
                        );
                        let error =
                            ErrorRequest::new(function_error_type::RESPONSE_TOO_LARGE, message);
                        return Outcome::failure(error.to_json());
                    }
                    StreamEvent::Chunk(chunk) => body.extend_from_slice(&chunk),
                    StreamEvent::End(StreamEnd::Complete) => {
                        return Outcome::Success(body.freeze())
                    }
                    StreamEvent::End(StreamEnd::Failed { body, reset }) => {
                        return Outcome::Failure { body, reset }
                    }
                }
            }
        }
    }

    impl StreamSender {
        /// Passes one chunk on, waiting while the invoker is behind. `false` once the invoker
        /// has gone.
        pub async fn chunk(&self, chunk: Bytes) -> bool {
            chunk.is_empty() || self.events.send(StreamEvent::Chunk(chunk)).await.is_ok()
        }

        /// Ends the stream (waiting behind the chunks already passed on).
        pub async fn end(&self, end: StreamEnd) {
            let _ = self.events.send(StreamEvent::End(end)).await;
        }

        /// Whether the invoker has gone.
        pub fn is_closed(&self) -> bool {
            self.events.is_closed()
        }

        /// [`StreamSender::chunk`] from a thread outside the async runtime.
        pub fn blocking_chunk(&self, chunk: Bytes) -> bool {
            chunk.is_empty() || self.events.blocking_send(StreamEvent::Chunk(chunk)).is_ok()
        }

        /// [`StreamSender::end`] from a thread outside the async runtime.
        pub fn blocking_end(&self, end: StreamEnd) {
            let _ = self.events.blocking_send(StreamEvent::End(end));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test(flavor = "current_thread")]
        async fn a_stream_gathers_into_the_whole_body_or_its_failure() {
            let (sender, stream) = ResponseStream::channel(None);
            tokio::spawn(async move {
                assert!(sender.chunk(Bytes::from_static(b"ab")).await);
                assert!(sender.chunk(Bytes::from_static(b"c")).await);
                sender.end(StreamEnd::Complete).await;
            });
            assert_eq!(
                stream.gather(10).await,
                Outcome::Success(Bytes::from_static(b"abc"))
            );

            let (sender, stream) = ResponseStream::channel(None);
            tokio::spawn(async move {
                sender.chunk(Bytes::from_static(b"abcd")).await;
            });
            let Outcome::Failure { body, .. } = stream.gather(3).await else {
                panic!("over the limit must fail");
            };
            assert!(String::from_utf8_lossy(&body).contains("Function.ResponseSizeTooLarge"));

            let (sender, mut stream) = ResponseStream::channel(None);
            drop(sender);
            let StreamEvent::End(end) = stream.next().await else {
                panic!("a stream whose sender went must end");
            };
            assert_eq!(end.error().unwrap().0, "Runtime.TruncatedResponse");
        }
    }
}
