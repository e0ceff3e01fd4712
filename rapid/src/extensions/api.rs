//! The Extensions API routes (`/2020-01-01/extension/*`) over a [`Handle`], served on the
//! Runtime API's address.

use crate::runtime_api::to_http;
use crate::sandbox::{ApiReply, Handle};
use bytes::Bytes;
use http_server::{self as http, Reply};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::Request;
use proto::extensions_api::{error_type, header, EventType, Route};
use proto::runtime_api::error_type as runtime_error;

/// Register and error bodies are small; more is a misbehaving extension.
const BODY_LIMIT: usize = 1024 * 1024;

/// Whether `path` is the Extensions API's.
pub fn serves(path: &str) -> bool {
    path.starts_with(proto::extensions_api::PREFIX)
}

/// Answers one Extensions API request. `event/next` long-polls.
pub async fn handle(sandbox: Handle, request: Request<Incoming>) -> Reply {
    let route = match Route::parse(request.method().as_str(), request.uri().path()) {
        Ok(route) => route,
        Err(false) => {
            let message = format!("no such endpoint: {}", request.uri().path());
            return http::error(404, runtime_error::NOT_FOUND, &message);
        }
        Err(true) => {
            let message = "method not allowed on this endpoint";
            return http::error(405, runtime_error::METHOD_NOT_ALLOWED, message);
        }
    };
    match route {
        Route::Register => register(sandbox, request).await,
        Route::Next => {
            let Some(id) = text(&request, header::IDENTIFIER) else {
                return missing_identifier();
            };
            match sandbox.extension_next(&id).await {
                Ok(event) => {
                    let body = serde_json::to_vec(&event).unwrap_or_default();
                    let mut reply = http::json(200, body);
                    let event_id = uuid::Uuid::new_v4().to_string();
                    if let Ok(event_id) = HeaderValue::from_str(&event_id) {
                        reply
                            .headers_mut()
                            .insert(header::EVENT_IDENTIFIER, event_id);
                    }
                    reply
                }
                Err(refusal) => to_http(refusal),
            }
        }
        Route::InitError | Route::ExitError => {
            let Some(id) = text(&request, header::IDENTIFIER) else {
                return missing_identifier();
            };
            let Some(error_type) = text(&request, header::FUNCTION_ERROR_TYPE) else {
                let message = format!("{} not found", header::FUNCTION_ERROR_TYPE);
                return to_http(forbidden(error_type::MISSING_HEADER, message));
            };
            let body = match read(request).await {
                Ok(body) => body,
                Err(reply) => return *reply,
            };
            let reply = if route == Route::InitError {
                sandbox.extension_init_error(&id, &error_type, body)
            } else {
                sandbox.extension_exit_error(&id, &error_type, body)
            };
            to_http(reply)
        }
    }
}

async fn register(sandbox: Handle, request: Request<Incoming>) -> Reply {
    let name = text(&request, header::NAME).unwrap_or_default();
    let with_account = text(&request, header::ACCEPT_FEATURE)
        .is_some_and(|f| f.split(',').any(|f| f.trim() == "accountId"));
    let body = match read(request).await {
        Ok(body) => body,
        Err(reply) => return *reply,
    };
    let events = match events(&body) {
        Ok(events) => events,
        Err(reply) => return to_http(reply),
    };
    match sandbox.register(&name, events, with_account) {
        Ok(registered) => {
            let body = serde_json::to_vec(&registered.response).unwrap_or_default();
            let mut reply = http::json(200, body);
            if let Ok(id) = HeaderValue::from_str(&registered.id) {
                reply.headers_mut().insert(header::IDENTIFIER, id);
            }
            reply
        }
        Err(refusal) => to_http(refusal),
    }
}

/// A header's value, trimmed; `None` when absent or empty.
fn text(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The refusal of a call without the `Lambda-Extension-Identifier` every call but `register`
/// carries.
fn missing_identifier() -> Reply {
    let message = format!("{} header not found", header::IDENTIFIER);
    to_http(forbidden(error_type::MISSING_IDENTIFIER, message))
}

fn forbidden(error_type: &'static str, message: String) -> ApiReply {
    ApiReply::Rejected(403, error_type, message)
}

/// The body of a call, or the refusal of one too large or broken.
async fn read(request: Request<Incoming>) -> Result<Bytes, Box<Reply>> {
    let refusal = match http::read_body(request, BODY_LIMIT).await {
        Ok(body) => return Ok(body),
        Err(http_server::BodyError::TooLarge { .. }) => http::close(http::error(
            413,
            runtime_error::REQUEST_TOO_LARGE,
            &format!("the body is larger than {BODY_LIMIT} bytes"),
        )),
        Err(e) => http::error(400, runtime_error::INVALID_REQUEST, &e.to_string()),
    };
    Err(Box::new(refusal))
}

/// The events of a `register` body: `{"events": ["INVOKE", "SHUTDOWN"]}`.
fn events(body: &[u8]) -> Result<Vec<EventType>, ApiReply> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        events: Vec<String>,
    }
    let parsed: Body = serde_json::from_slice(body)
        .map_err(|e| forbidden(error_type::INVALID_REQUEST_FORMAT, e.to_string()))?;
    let mut events = Vec::new();
    for name in parsed.events {
        let event = match name.as_str() {
            "INVOKE" => EventType::Invoke,
            "SHUTDOWN" => EventType::Shutdown,
            other => {
                let message = format!("{other}: not an event type (INVOKE or SHUTDOWN)");
                return Err(forbidden(error_type::INVALID_EVENT_TYPE, message));
            }
        };
        if !events.contains(&event) {
            events.push(event);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_bodies_name_known_events_only() {
        assert_eq!(
            events(br#"{"events":["INVOKE","SHUTDOWN","INVOKE"]}"#).unwrap(),
            [EventType::Invoke, EventType::Shutdown]
        );
        assert_eq!(events(b"{}").unwrap(), []);
        let refusal = |body: &[u8]| match events(body) {
            Err(ApiReply::Rejected(403, error_type, _)) => error_type,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refusal(br#"{"events":["BOOT"]}"#),
            error_type::INVALID_EVENT_TYPE
        );
        assert_eq!(refusal(b"not json"), error_type::INVALID_REQUEST_FORMAT);
    }
}
