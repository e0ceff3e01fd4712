//! The HTTP/1.1 server behind every listening socket of the platform (the Runtime API, the
//! invoke endpoint, the function host's front door): the accept loop with connection limits
//! ([`serve`]), bounded and paced body reads ([`read_body`]), the watch for a caller who hung up
//! ([`Caller`]), and JSON and Lambda error replies.

mod body;
mod caller;
mod reply;
mod serve;

pub use body::{read_body, BodyError, BodyPace};
pub use caller::Caller;
pub use reply::{Body, BodyClosed, BodySender};
pub use serve::{
    serve, serve_connection, serve_with, ConnectionLimits, LimitsError, MIN_BODY_RATE,
};

use bytes::Bytes;
use hyper::{Response, StatusCode};

/// A reply: its body whole, or streamed ([`Body::channel`]).
pub type Reply = Response<Body>;

/// A reply with a JSON body.
pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Body::full(body));
    *reply.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

/// An error of the service itself, as the Lambda API returns it: the exception's name in
/// `X-Amzn-ErrorType` and a `{"Type", "Message"}` body.
pub fn service_error(status: u16, exception: &'static str, message: &str) -> Reply {
    let body = proto::invoke_api::ServiceError::new(status, message);
    let mut reply = json(status, serde_json::to_vec(&body).unwrap_or_default());
    reply.headers_mut().insert(
        proto::invoke_api::header::ERROR_TYPE,
        hyper::header::HeaderValue::from_static(exception),
    );
    reply
}

/// A `TooManyRequestsException` (429) with Lambda's `Reason` for it.
pub fn throttled(message: &str, reason: &str) -> Reply {
    let mut body = proto::invoke_api::ServiceError::new(429, message);
    body.reason = Some(reason.to_owned());
    let mut reply = json(429, serde_json::to_vec(&body).unwrap_or_default());
    reply.headers_mut().insert(
        proto::invoke_api::header::ERROR_TYPE,
        hyper::header::HeaderValue::from_static(proto::invoke_api::error_type::TOO_MANY_REQUESTS),
    );
    reply
}

/// A reply with the Runtime API's `{"errorMessage", "errorType"}` body.
pub fn error(status: u16, error_type: &str, message: &str) -> Reply {
    let body = proto::runtime_api::ErrorResponse {
        error_message: message.to_owned(),
        error_type: error_type.to_owned(),
    };
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// Marks a reply as the last on its connection: used after refusing a body we did not read.
pub fn close(mut reply: Reply) -> Reply {
    reply.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    reply
}
