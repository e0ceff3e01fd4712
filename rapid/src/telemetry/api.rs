//! `PUT /2022-07-01/telemetry` (the Telemetry API) and `PUT /2020-08-15/logs` (the Logs API):
//! an extension subscribes, during init, to what it wants delivered where.

use super::Flavour;
use crate::runtime_api::to_http;
use crate::sandbox::{ApiReply, Handle};
use http_server::{self as http, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request};
use proto::extensions_api::header;
use proto::telemetry_api::{
    Subscription, LOGS_PATH, LOGS_SCHEMA, TELEMETRY_PATH, TELEMETRY_SCHEMAS,
};

/// A subscription is a small JSON document.
const BODY_LIMIT: usize = 64 * 1024;

/// The error type of a refused subscription, as Lambda names it.
const VALIDATION_ERROR: &str = "ValidationError";

/// Whether `path` is the Telemetry API's or the Logs API's.
pub fn serves(path: &str) -> bool {
    path == TELEMETRY_PATH || path == LOGS_PATH
}

/// Answers one subscription.
pub async fn handle(sandbox: Handle, request: Request<Incoming>) -> Reply {
    let flavour = if request.uri().path() == LOGS_PATH {
        Flavour::Logs
    } else {
        Flavour::Telemetry
    };
    if request.method() != Method::PUT {
        let message = "subscribe with PUT";
        return http::error(
            405,
            proto::runtime_api::error_type::METHOD_NOT_ALLOWED,
            message,
        );
    }
    let id = request
        .headers()
        .get(header::IDENTIFIER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if id.is_empty() {
        let message = format!("{} header not found", header::IDENTIFIER);
        let refusal = ApiReply::Rejected(
            403,
            proto::extensions_api::error_type::MISSING_IDENTIFIER,
            message,
        );
        return to_http(refusal);
    }
    let body = match http::read_body(request, BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return http::close(http::error(400, VALIDATION_ERROR, &e.to_string())),
    };
    let subscription: Subscription = match serde_json::from_slice(&body) {
        Ok(subscription) => subscription,
        Err(e) => return http::error(400, VALIDATION_ERROR, &format!("Invalid subscription: {e}")),
    };
    let schemas: &[&'static str] = match flavour {
        Flavour::Telemetry => &TELEMETRY_SCHEMAS,
        Flavour::Logs => &[LOGS_SCHEMA],
    };
    let target = match subscription.check(schemas) {
        Ok(target) => target,
        Err(e) => return http::error(400, VALIDATION_ERROR, &e.to_string()),
    };
    match sandbox.subscribe_telemetry(&id, subscription, target, flavour) {
        Ok(()) => http::json(200, &b"\"OK\""[..]),
        Err(refusal) => to_http(refusal),
    }
}
