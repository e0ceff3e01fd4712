//! The invoke endpoint of the AWS Runtime Interface Emulator
//! (`POST /2015-03-31/functions/function/invocations`), with Lambda's `Invoke` semantics: an
//! invocation source for any [`Invoker`].

use crate::async_invoke::AsyncQueue;
use crate::http::{self, BodyError, Reply};
use crate::invoker::Invoker;
use crate::sandbox::{Invocation, InvokeError, Outcome};
use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use proto::invoke_api::{error_type, header, invocation_type, FUNCTION_ERROR_UNHANDLED};
use proto::runtime_api::{ASYNC_PAYLOAD_LIMIT, SYNC_PAYLOAD_LIMIT};

/// The invoke endpoint of one environment. Cheap to clone: one per connection.
#[derive(Clone)]
pub struct Endpoint<I: Invoker> {
    sandbox: I,
    events: AsyncQueue<I>,
}

impl<I: Invoker> Endpoint<I> {
    pub fn new(sandbox: I) -> Endpoint<I> {
        Endpoint {
            events: AsyncQueue::new(sandbox.clone()),
            sandbox,
        }
    }

    /// Answers one HTTP request. Every answer to an invoke carries `X-Amzn-RequestId`.
    pub async fn handle(self, request: Request<Incoming>) -> Reply {
        if !self.is_invoke_path(request.uri().path()) {
            let message = format!("Function not found: {}", request.uri().path());
            return http::error(404, error_type::RESOURCE_NOT_FOUND, &message);
        }
        if request.method() != Method::POST {
            return http::error(405, error_type::INVALID_PARAMETER, "invoke with POST");
        }
        let invocation = Invocation::new(Bytes::new());
        let request_id = invocation.request_id.clone();
        let mut reply = self.invoke(request, invocation).await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            reply.headers_mut().insert(header::REQUEST_ID, value);
        }
        reply
    }

    /// The emulator's path names the function `function`; the configured name is accepted too,
    /// as Lambda's own Invoke path would have it.
    fn is_invoke_path(&self, path: &str) -> bool {
        let Some(name) = path
            .strip_prefix("/2015-03-31/functions/")
            .and_then(|rest| rest.strip_suffix("/invocations"))
        else {
            return false;
        };
        name == "function" || name == self.sandbox.config().function_name
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
                return http::error(400, error_type::INVALID_PARAMETER, &message);
            }
        };
        invocation.trace_id = header_value(header::TRACE_ID);
        if let Some(encoded) = header_value(header::CLIENT_CONTEXT) {
            match client_context(&encoded) {
                Some(context) => invocation.client_context = Some(context),
                None => {
                    let message = "X-Amz-Client-Context must be base64-encoded JSON";
                    return http::error(400, error_type::INVALID_REQUEST_CONTENT, message);
                }
            }
        }
        let body = match http::read_body(request, limit).await {
            Ok(body) => body,
            Err(BodyError::TooLarge(limit)) => {
                let message = format!(
                    "Request must be smaller than {limit} bytes for the InvokeFunction operation"
                );
                return http::close(http::error(413, error_type::REQUEST_TOO_LARGE, &message));
            }
            Err(e) => return http::error(400, error_type::INVALID_REQUEST_CONTENT, &e.to_string()),
        };
        invocation.event = match event(body) {
            Ok(event) => event,
            Err(message) => {
                return http::error(400, error_type::INVALID_REQUEST_CONTENT, &message);
            }
        };
        match kind.as_str() {
            invocation_type::DRY_RUN => http::json(204, Bytes::new()),
            invocation_type::EVENT => match self.events.enqueue(invocation) {
                Ok(()) => http::json(202, Bytes::new()),
                Err(e) => http::error(429, error_type::TOO_MANY_REQUESTS, &e.to_string()),
            },
            _ => match self.sandbox.invoke(invocation).await {
                Ok(Outcome::Success(body)) => http::json(200, body),
                Ok(Outcome::Failure { body, .. }) => {
                    let mut reply = http::json(200, body);
                    reply.headers_mut().insert(
                        header::FUNCTION_ERROR,
                        HeaderValue::from_static(FUNCTION_ERROR_UNHANDLED),
                    );
                    reply
                }
                Err(e @ InvokeError::QueueFull) => {
                    http::error(429, error_type::TOO_MANY_REQUESTS, &e.to_string())
                }
                Err(e) => http::error(500, error_type::SERVICE, &e.to_string()),
            },
        }
    }
}

/// The event of an invoke body: JSON, as Lambda's Invoke API requires (the emulator does not
/// check); an empty body is `{}`.
fn event(body: Bytes) -> Result<Bytes, String> {
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
fn client_context(encoded: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = match serde_json::from_slice::<serde_json::Value>(&decoded) {
        Ok(json) => json.to_string(),
        Err(_) => String::from_utf8(decoded).ok()?,
    };
    HeaderValue::from_str(&text).is_ok().then_some(text)
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
