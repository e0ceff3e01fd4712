//! `InvokeWithResponseStream`: `POST /2021-11-15/functions/{name}/response-streaming-invocations`.
//! The answer is an AWS event stream ([`crate::event_stream`]): each chunk the function writes
//! goes out as a `PayloadChunk` event as soon as the runtime hands it over, and an
//! `InvokeComplete` event ends it, with the error code and details of a function that failed
//! midway and, with `X-Amz-Log-Type: Tail`, the log tail. A function that answers whole (not
//! streaming) is sent as one chunk, as Lambda does.

use crate::event_stream;
use crate::invoke_http::{read_invocation, Endpoint};
use crate::invoker::Invoker;
use base64::Engine;
use bytes::Bytes;
use http_server::{self as http, Body, BodySender, Reply};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use proto::invoke::{Answer, Invocation, InvokeError, Outcome, StreamEnd, StreamEvent};
use proto::invoke_api::{error_type, header, invocation_type, LATEST};
use proto::runtime_api::{ErrorRequest, SYNC_PAYLOAD_LIMIT};

/// The content type of an event stream.
pub const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// Events that may wait unsent for a slow client before the function's upload waits too.
const EVENTS_IN_FLIGHT: usize = 16;

impl<I: Invoker> Endpoint<I> {
    /// Answers an `InvokeWithResponseStream` already routed to this function. Every answer
    /// carries `X-Amzn-RequestId`.
    pub async fn handle_stream(self, request: Request<Incoming>) -> Reply {
        let invocation = Invocation::new(Bytes::new());
        let request_id = invocation.request_id.clone();
        let mut reply = if request.method() == Method::POST {
            self.stream(request, invocation).await
        } else {
            http::service_error(405, error_type::INVALID_PARAMETER, "invoke with POST")
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            reply.headers_mut().insert(header::REQUEST_ID, value);
        }
        reply
    }

    async fn stream(&self, request: Request<Incoming>, mut invocation: Invocation) -> Reply {
        let header_value = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let dry_run = match header_value(header::INVOCATION_TYPE).as_deref() {
            None | Some(invocation_type::REQUEST_RESPONSE) => false,
            Some(invocation_type::DRY_RUN) => true,
            Some(other) => {
                let message =
                    format!("Invalid X-Amz-Invocation-Type: {other:?} (RequestResponse or DryRun)");
                return http::service_error(400, error_type::INVALID_PARAMETER, &message);
            }
        };
        let read = read_invocation(
            request,
            &mut invocation,
            SYNC_PAYLOAD_LIMIT,
            "InvokeWithResponseStream",
        );
        let (tail, caller) = match read.await {
            Ok(read) => read,
            Err(refusal) => return *refusal,
        };
        if dry_run {
            return http::json(204, Bytes::new());
        }
        let watch = tail.then(|| self.tails.watch(&invocation.request_id));
        let invoke = self.sandbox.invoke_streaming(invocation);
        // As for `Invoke`: a caller that has gone holds no place in the queue.
        let answer = match caller {
            Some(caller) => tokio::select! {
                answer = invoke => answer,
                () = caller.gone() => {
                    return http::service_error(500, error_type::SERVICE, "the caller has gone");
                }
            },
            None => invoke.await,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e @ InvokeError::QueueFull) => {
                return http::service_error(429, error_type::TOO_MANY_REQUESTS, &e.to_string());
            }
            Err(e @ InvokeError::Throttled { reason }) => {
                return http::throttled(&e.to_string(), reason);
            }
            Err(e) => return http::service_error(500, error_type::SERVICE, &e.to_string()),
        };
        let content_type = match &answer {
            Answer::Stream(stream) => stream.content_type.clone(),
            Answer::Whole(_) => None,
        };
        let (sender, body) = Body::channel(EVENTS_IN_FLIGHT);
        tokio::spawn(async move {
            let end = relay(answer, &sender).await;
            let log = match watch {
                Some(watch) => {
                    Some(base64::engine::general_purpose::STANDARD.encode(watch.finish().await))
                }
                None => None,
            };
            let error = end
                .as_ref()
                .map(|(code, details)| (code.as_str(), details.as_str()));
            let _ = sender
                .send(event_stream::invoke_complete(error, log.as_deref()))
                .await;
        });
        let mut reply = Response::new(body);
        let headers = reply.headers_mut();
        headers.insert(header::EXECUTED_VERSION, HeaderValue::from_static(LATEST));
        // The model reads `ResponseStreamContentType` from `Content-Type`: the function's type.
        let content_type = content_type
            .and_then(|t| HeaderValue::from_str(&t).ok())
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        headers.insert(hyper::header::CONTENT_TYPE, content_type);
        reply
    }
}

/// Passes the answer on as `PayloadChunk` events; returns the error code and details when the
/// invocation failed. A client that stops reading stops the relay (the invocation goes on, its
/// chunks discarded).
async fn relay(answer: Answer, sender: &BodySender) -> Option<(String, String)> {
    let mut stream = match answer {
        Answer::Whole(Outcome::Success(body)) => {
            if !body.is_empty() {
                let _ = sender.send(event_stream::payload_chunk(&body)).await;
            }
            return None;
        }
        Answer::Whole(Outcome::Failure { body, .. }) => return Some(error_of(&body)),
        Answer::Stream(stream) => stream,
    };
    loop {
        match stream.next().await {
            StreamEvent::Chunk(chunk) => {
                if sender
                    .send(event_stream::payload_chunk(&chunk))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
            StreamEvent::End(StreamEnd::Complete) => return None,
            StreamEvent::End(end @ StreamEnd::Failed { .. }) => return end.error(),
        }
    }
}

/// The error code and details of a failed invocation's error JSON.
fn error_of(body: &[u8]) -> (String, String) {
    let parsed: ErrorRequest = serde_json::from_slice(body).unwrap_or_default();
    let code = match parsed.error_type.as_str() {
        "" => proto::invoke_api::FUNCTION_ERROR_UNHANDLED.to_owned(),
        _ => parsed.error_type,
    };
    (code, parsed.error_message)
}
