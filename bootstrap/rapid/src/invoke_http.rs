//! The invoke endpoint of the AWS Runtime Interface Emulator
//! (`POST /2015-03-31/functions/function/invocations`), with Lambda's `Invoke` semantics: an
//! invocation source for a [`Handle`].

use crate::async_invoke;
use crate::http::{self, BodyError, Reply};
use crate::sandbox::{Handle, Invocation, InvokeError, Outcome};
use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use proto::invoke_api::{
    error_type, header, invocation_type, FUNCTION_ERROR_UNHANDLED, INVOKE_PATH,
};
use proto::runtime_api::{ASYNC_PAYLOAD_LIMIT, SYNC_PAYLOAD_LIMIT};

pub async fn handle(sandbox: Handle, request: Request<Incoming>) -> Reply {
    if request.uri().path() != INVOKE_PATH {
        let message = format!("Function not found: {}", request.uri().path());
        return http::error(404, error_type::RESOURCE_NOT_FOUND, &message);
    }
    if request.method() != Method::POST {
        return http::error(405, error_type::INVALID_PARAMETER, "invoke with POST");
    }
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
                "Invalid X-Amz-Invocation-Type: {other} (RequestResponse, Event or DryRun)"
            );
            return http::error(400, error_type::INVALID_PARAMETER, &message);
        }
    };
    let mut invocation = Invocation::new(Bytes::new());
    invocation.trace_id = header_value(header::TRACE_ID);
    if let Some(encoded) = header_value(header::CLIENT_CONTEXT) {
        match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
            Ok(decoded) if HeaderValue::from_bytes(&decoded).is_ok() => {
                invocation.client_context = String::from_utf8(decoded).ok();
            }
            _ => {
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
    invocation.event = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        let message = format!("Could not parse request body into json: {e}");
        return http::error(400, error_type::INVALID_REQUEST_CONTENT, &message);
    } else {
        body
    };
    let request_id = invocation.request_id.clone();
    let mut reply = match kind.as_str() {
        invocation_type::DRY_RUN => http::json(204, Bytes::new()),
        invocation_type::EVENT => {
            async_invoke::enqueue(sandbox, invocation);
            http::json(202, Bytes::new())
        }
        _ => match sandbox.invoke(invocation).await {
            Ok(Outcome::Success(body)) => http::json(200, body),
            Ok(Outcome::Failure(body)) => {
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
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        reply.headers_mut().insert(header::REQUEST_ID, value);
    }
    reply
}
