//! One function's `Invoke` (`POST /2015-03-31/functions/{name}/invocations`, the AWS Runtime
//! Interface Emulator's endpoint with `function` as the name), with Lambda's semantics: an
//! invocation source for any [`Invoker`]. Which function a request names is the
//! [`crate::api::Router`]'s business.

use crate::async_invoke::{AsyncQueue, EnqueueError, EventQueue};
use crate::event_store::EventStore;
use crate::invoker::Invoker;
use crate::log_tail::LogTails;
use base64::Engine;
use bytes::Bytes;
use http_server::{self as http, BodyError, Reply};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use proto::invoke::{Invocation, InvokeError, Outcome};
use proto::invoke_api::{
    error_type, header, invocation_type, log_type, FUNCTION_ERROR_UNHANDLED, LATEST,
};
use proto::runtime_api::{ASYNC_PAYLOAD_LIMIT, SYNC_PAYLOAD_LIMIT};
use std::sync::Arc;

/// The invoke endpoint of one environment. Cheap to clone: one per connection.
#[derive(Clone)]
pub struct Endpoint<I: Invoker> {
    pub(crate) sandbox: I,
    events: Arc<dyn EventQueue>,
    pub(crate) tails: LogTails,
}

impl<I: Invoker> Endpoint<I> {
    /// `tails` must see the environment's log lines (see [`LogTails::around`]) for
    /// `X-Amz-Log-Type: Tail` to return them; `events` keeps accepted `Event` invokes across
    /// crashes (and the ones it holds from before are started now).
    pub fn new(sandbox: I, tails: LogTails, events: Option<EventStore>) -> Endpoint<I> {
        let queue = AsyncQueue::new(sandbox.clone(), events);
        Endpoint::with_queue(sandbox, tails, Arc::new(queue))
    }

    /// An endpoint whose accepted `Event` invokes go to `events` (a queue other hosts share)
    /// rather than to a queue of this host's.
    pub fn with_queue(sandbox: I, tails: LogTails, events: Arc<dyn EventQueue>) -> Endpoint<I> {
        Endpoint {
            events,
            sandbox,
            tails,
        }
    }

    /// What runs this function's invocations.
    pub fn invoker(&self) -> &I {
        &self.sandbox
    }

    /// Answers an invoke already routed to this function. Every answer carries
    /// `X-Amzn-RequestId`.
    pub async fn handle_invoke(self, request: Request<Incoming>) -> Reply {
        if request.method() != Method::POST {
            return http::service_error(405, error_type::INVALID_PARAMETER, "invoke with POST");
        }
        let invocation = Invocation::new(Bytes::new());
        let request_id = invocation.request_id.clone();
        let mut reply = self.invoke(request, invocation).await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            reply.headers_mut().insert(header::REQUEST_ID, value);
        }
        reply
    }

    async fn invoke(&self, request: Request<Incoming>, mut invocation: Invocation) -> Reply {
        let header_value = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let kind = header_value(header::INVOCATION_TYPE)
            .unwrap_or_else(|| invocation_type::REQUEST_RESPONSE.into());
        let limit = match kind.as_str() {
            invocation_type::REQUEST_RESPONSE | invocation_type::DRY_RUN => SYNC_PAYLOAD_LIMIT,
            invocation_type::EVENT => ASYNC_PAYLOAD_LIMIT,
            other => {
                let message = format!(
                    "Invalid X-Amz-Invocation-Type: {other:?} (RequestResponse, Event or DryRun)"
                );
                return http::service_error(400, error_type::INVALID_PARAMETER, &message);
            }
        };
        let (tail, caller) =
            match read_invocation(request, &mut invocation, limit, "InvokeFunction").await {
                Ok(read) => read,
                Err(refusal) => return *refusal,
            };
        match kind.as_str() {
            invocation_type::DRY_RUN => http::json(204, Bytes::new()),
            invocation_type::EVENT => match self.events.enqueue(invocation).await {
                Ok(()) => http::json(202, Bytes::new()),
                Err(e @ EnqueueError::Full(_)) => {
                    http::service_error(429, error_type::TOO_MANY_REQUESTS, &e.to_string())
                }
                Err(e) => {
                    let message = logging::Chain(&e).to_string();
                    self.sandbox.log(&format!("rapid: {message}"));
                    http::service_error(500, error_type::SERVICE, &message)
                }
            },
            _ => {
                let watch = tail.then(|| self.tails.watch(&invocation.request_id));
                let invoke = self.sandbox.invoke(invocation);
                // A caller that has gone holds no place in the queue and its invocation does
                // not start: dropping the invoke takes it out (one already running finishes).
                let outcome = match caller {
                    Some(caller) => tokio::select! {
                        outcome = invoke => outcome,
                        () = caller.gone() => {
                            return http::service_error(500, error_type::SERVICE, "the caller has gone");
                        }
                    },
                    None => invoke.await,
                };
                let log = match watch {
                    Some(watch) => Some(watch.finish().await),
                    None => None,
                };
                let (body, failed) = match outcome {
                    Ok(Outcome::Success(body)) => (body, false),
                    Ok(Outcome::Failure { body, .. }) => (body, true),
                    Err(e @ InvokeError::QueueFull) => {
                        let message = e.to_string();
                        return http::service_error(429, error_type::TOO_MANY_REQUESTS, &message);
                    }
                    Err(e @ InvokeError::Throttled { reason }) => {
                        return http::throttled(&e.to_string(), reason);
                    }
                    Err(e) => return http::service_error(500, error_type::SERVICE, &e.to_string()),
                };
                let mut reply = http::json(200, body);
                let headers = reply.headers_mut();
                headers.insert(header::EXECUTED_VERSION, HeaderValue::from_static(LATEST));
                if failed {
                    let unhandled = HeaderValue::from_static(FUNCTION_ERROR_UNHANDLED);
                    headers.insert(header::FUNCTION_ERROR, unhandled);
                }
                if let Some(log) = log {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(log);
                    if let Ok(value) = HeaderValue::from_str(&encoded) {
                        headers.insert(header::LOG_RESULT, value);
                    }
                }
                reply
            }
        }
    }
}

/// The event of an invoke body: JSON, as Lambda's Invoke API requires (the emulator does not
/// check); an empty body is `{}`.
pub(crate) fn event(body: Bytes) -> Result<Bytes, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        Ok(_) => Ok(body),
        Err(e) => Err(format!("Could not parse request body into json: {e}")),
    }
}

/// Decodes `X-Amz-Client-Context` into the value of `Lambda-Runtime-Client-Context`. JSON is
/// re-written compactly, since a pretty-printed context holds newlines a header cannot carry.
pub(crate) fn client_context(encoded: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = match serde_json::from_slice::<serde_json::Value>(&decoded) {
        Ok(json) => json.to_string(),
        Err(_) => String::from_utf8(decoded).ok()?,
    };
    HeaderValue::from_str(&text).is_ok().then_some(text)
}

/// What both invoke operations read alike: the log type (whether to return the log's tail),
/// the trace and client-context headers into `invocation`, and the body, at most `limit` bytes,
/// as its event; also the caller's hang-up watch. `operation` names the API operation in the
/// too-large refusal, as Lambda's does. `Err` is the refusal to send.
pub(crate) async fn read_invocation(
    request: Request<Incoming>,
    invocation: &mut Invocation,
    limit: usize,
    operation: &str,
) -> Result<(bool, Option<http::Caller>), Box<Reply>> {
    let refused =
        |status, kind, message: &str| Box::new(http::service_error(status, kind, message));
    let header_value = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let tail = match header_value(header::LOG_TYPE).as_deref() {
        None | Some(log_type::NONE) => false,
        Some(log_type::TAIL) => true,
        Some(other) => {
            let message = format!("Invalid X-Amz-Log-Type: {other:?} (None or Tail)");
            return Err(refused(400, error_type::INVALID_PARAMETER, &message));
        }
    };
    invocation.trace_id = header_value(header::TRACE_ID);
    if let Some(encoded) = header_value(header::CLIENT_CONTEXT) {
        match client_context(&encoded) {
            Some(context) => invocation.client_context = Some(context),
            None => {
                let message = "X-Amz-Client-Context must be base64-encoded JSON";
                return Err(refused(400, error_type::INVALID_REQUEST_CONTENT, message));
            }
        }
    }
    let caller = request.extensions().get::<http::Caller>().cloned();
    let body = match http::read_body(request, limit).await {
        Ok(body) => body,
        Err(BodyError::TooLarge { limit, .. }) => {
            let message = format!(
                "Request must be smaller than {} bytes for the {operation} operation",
                limit + 1
            );
            let refusal = refused(413, error_type::REQUEST_TOO_LARGE, &message);
            return Err(Box::new(http::close(*refusal)));
        }
        Err(e @ BodyError::TooSlow { .. }) => {
            let refusal = refused(408, error_type::REQUEST_TIMEOUT, &e.to_string());
            return Err(Box::new(http::close(*refusal)));
        }
        Err(e) => {
            return Err(refused(
                400,
                error_type::INVALID_REQUEST_CONTENT,
                &e.to_string(),
            ));
        }
    };
    match event(body) {
        Ok(event) => invocation.event = event,
        Err(message) => {
            return Err(refused(400, error_type::INVALID_REQUEST_CONTENT, &message));
        }
    }
    Ok((tail, caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_must_be_json_and_empty_means_an_empty_object() {
        assert_eq!(event(Bytes::new()).unwrap(), "{}");
        assert_eq!(event(Bytes::from_static(b" \n")).unwrap(), "{}");
        assert_eq!(event(Bytes::from_static(b"[1]")).unwrap(), "[1]");
        assert_eq!(event(Bytes::from_static(b"\"s\"")).unwrap(), "\"s\"");
        let error = event(Bytes::from_static(b"{nope")).unwrap_err();
        assert!(error.starts_with("Could not parse request body into json: "));
    }

    #[test]
    fn client_context_is_decoded_and_made_header_safe() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            client_context(&b64("{\n  \"custom\": {\"k\": \"v\"}\n}")).as_deref(),
            Some(r#"{"custom":{"k":"v"}}"#)
        );
        assert_eq!(client_context(&b64("plain")).as_deref(), Some("plain"));
        assert_eq!(client_context("%%% not base64"), None);
        assert_eq!(client_context(&b64("two\nlines")), None);
    }
}
