//! The AWS Lambda Runtime API, version 2018-06-01.

use serde::{Deserialize, Deserializer, Serialize};

/// Every Runtime API path starts with this prefix.
pub const PREFIX: &str = "/2018-06-01/runtime";

/// Largest synchronous request or response payload. This is the exact number the AWS Runtime
/// Interface Emulator enforces (6 MiB plus 100 bytes of envelope).
pub const SYNC_PAYLOAD_LIMIT: usize = 6_291_556;
/// Largest streamed response (`Lambda-Runtime-Function-Response-Mode: streaming`): Lambda's
/// default streaming limit, 20 MiB.
pub const STREAM_PAYLOAD_LIMIT: usize = 20 * 1024 * 1024;
/// Largest asynchronous (`Event`) request payload: 1 MiB, the current AWS limit.
pub const ASYNC_PAYLOAD_LIMIT: usize = 1_048_576;

pub mod header {
    pub const REQUEST_ID: &str = "Lambda-Runtime-Aws-Request-Id";
    pub const DEADLINE_MS: &str = "Lambda-Runtime-Deadline-Ms";
    pub const INVOKED_FUNCTION_ARN: &str = "Lambda-Runtime-Invoked-Function-Arn";
    pub const TRACE_ID: &str = "Lambda-Runtime-Trace-Id";
    pub const CLIENT_CONTEXT: &str = "Lambda-Runtime-Client-Context";
    pub const COGNITO_IDENTITY: &str = "Lambda-Runtime-Cognito-Identity";
    pub const FUNCTION_ERROR_TYPE: &str = "Lambda-Runtime-Function-Error-Type";
    /// `streaming` on a response posted as a stream (a chunked body).
    pub const RESPONSE_MODE: &str = "Lambda-Runtime-Function-Response-Mode";
    /// Trailer of a streamed response that broke off: Lambda's error JSON, base64.
    pub const FUNCTION_ERROR_BODY: &str = "Lambda-Runtime-Function-Error-Body";
}

/// The value of [`header::RESPONSE_MODE`] for a streamed response.
pub const RESPONSE_MODE_STREAMING: &str = "streaming";

/// One Runtime API endpoint, as a runtime addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /invocation/next`
    Next,
    /// `POST /invocation/{id}/response`
    Response(String),
    /// `POST /invocation/{id}/error`
    Error(String),
    /// `POST /init/error`
    InitError,
    /// `GET /restore/next`
    RestoreNext,
    /// `POST /restore/error`
    RestoreError,
}

/// Why a request does not name a Runtime API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint has this path.
    NotFound,
    /// The path exists but not for this method.
    MethodNotAllowed,
}

impl Route {
    /// The request path of this endpoint.
    pub fn path(&self) -> String {
        match self {
            Route::Next => format!("{PREFIX}/invocation/next"),
            Route::Response(id) => format!("{PREFIX}/invocation/{id}/response"),
            Route::Error(id) => format!("{PREFIX}/invocation/{id}/error"),
            Route::InitError => format!("{PREFIX}/init/error"),
            Route::RestoreNext => format!("{PREFIX}/restore/next"),
            Route::RestoreError => format!("{PREFIX}/restore/error"),
        }
    }

    /// The HTTP method this endpoint takes.
    pub fn method(&self) -> &'static str {
        match self {
            Route::Next | Route::RestoreNext => "GET",
            _ => "POST",
        }
    }

    /// Parses a request line's method and path (query string already removed).
    pub fn parse(method: &str, path: &str) -> Result<Route, RouteError> {
        let rest = path.strip_prefix(PREFIX).ok_or(RouteError::NotFound)?;
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let route = match segments.as_slice() {
            ["invocation", "next"] => Route::Next,
            ["invocation", id, "response"] if !id.is_empty() => Route::Response((*id).to_owned()),
            ["invocation", id, "error"] if !id.is_empty() => Route::Error((*id).to_owned()),
            ["init", "error"] => Route::InitError,
            ["restore", "next"] => Route::RestoreNext,
            ["restore", "error"] => Route::RestoreError,
            _ => return Err(RouteError::NotFound),
        };
        if route.method().eq_ignore_ascii_case(method) {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed)
        }
    }
}

/// The body a runtime posts to the `error` endpoints, and the body an invoker receives when the
/// function failed.
///
/// Deserialization is tolerant of the differences between the official clients: the Node client
/// sends the stack under `trace`, and some clients send the stack as one string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRequest {
    #[serde(rename = "errorMessage", default)]
    pub error_message: String,
    #[serde(rename = "errorType", default)]
    pub error_type: String,
    #[serde(
        rename = "stackTrace",
        alias = "trace",
        default,
        deserialize_with = "stack_trace_lines",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub stack_trace: Vec<String>,
}

impl ErrorRequest {
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Self {
        ErrorRequest {
            error_message: error_message.into(),
            error_type: error_type.into(),
            stack_trace: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn stack_trace_lines<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stack {
        Lines(Vec<serde_json::Value>),
        One(String),
        Null(()),
    }
    Ok(match Stack::deserialize(d)? {
        Stack::Lines(values) => values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        Stack::One(s) => s.lines().map(str::to_owned).collect(),
        Stack::Null(()) => Vec::new(),
    })
}

/// The body of a successful `response`/`error` post: `{"status":"OK"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub status: String,
}

impl StatusResponse {
    pub fn ok() -> Self {
        StatusResponse {
            status: "OK".to_owned(),
        }
    }
}

/// The body the server answers a rejected request with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    #[serde(rename = "errorMessage")]
    pub error_message: String,
    #[serde(rename = "errorType")]
    pub error_type: String,
}

/// Error types the Runtime API server answers rejected requests with, as AWS names them.
pub mod error_type {
    pub const INVALID_REQUEST_ID: &str = "InvalidRequestID";
    pub const INVALID_STATE_TRANSITION: &str = "InvalidStateTransition";
    pub const REQUEST_TOO_LARGE: &str = "RequestEntityTooLarge";
    pub const INVALID_ERROR_BODY: &str = "InvalidErrorBody";
    pub const NOT_FOUND: &str = "NotFound";
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    pub const INTERNAL: &str = "InternalError";
    /// A request the server could not read (the body broke off, or is not what the endpoint takes).
    pub const INVALID_REQUEST: &str = "InvalidRequest";
    /// The answer to a runtime still waiting in `/next` after its environment was reset: it is
    /// not the runtime the server serves any more.
    pub const ENVIRONMENT_RESET: &str = "EnvironmentReset";
}

/// Error types the platform reports to an invoker on behalf of a failed runtime.
pub mod function_error_type {
    pub const UNHANDLED: &str = "Unhandled";
    pub const RUNTIME_EXIT: &str = "Runtime.ExitError";
    pub const TIMEOUT: &str = "Sandbox.Timedout";
    pub const RESPONSE_TOO_LARGE: &str = "Function.ResponseSizeTooLarge";
    pub const INIT_TIMEOUT: &str = "Runtime.InitTimeout";
    pub const RESTORE_ERROR: &str = "Runtime.RestoreError";
    /// The runtime executable could not be started (missing, not executable).
    pub const INVALID_ENTRYPOINT: &str = "Runtime.InvalidEntrypoint";
    /// A streamed response broke off without the runtime saying why (its connection closed).
    pub const TRUNCATED_RESPONSE: &str = "Runtime.TruncatedResponse";
    /// A response posted with a `Lambda-Runtime-Function-Response-Mode` that is not `streaming`.
    pub const INVALID_RESPONSE_MODE: &str = "Runtime.InvalidResponseModeHeader";
    /// An error trailer of a streamed response that names no type.
    pub const STREAM_ERROR: &str = "Runtime.StreamError";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_through_their_paths() {
        for route in [
            Route::Next,
            Route::Response("abc-1".into()),
            Route::Error("abc-1".into()),
            Route::InitError,
            Route::RestoreNext,
            Route::RestoreError,
        ] {
            assert_eq!(Route::parse(route.method(), &route.path()), Ok(route));
        }
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_told_apart() {
        assert_eq!(
            Route::parse("GET", "/2018-06-01/runtime/nope"),
            Err(RouteError::NotFound)
        );
        assert_eq!(Route::parse("GET", "/other"), Err(RouteError::NotFound));
        assert_eq!(
            Route::parse("GET", "/2018-06-01/runtime/invocation//response"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            Route::parse("POST", "/2018-06-01/runtime/invocation/next"),
            Err(RouteError::MethodNotAllowed)
        );
    }

    #[test]
    fn error_bodies_from_every_official_client_parse() {
        let python: ErrorRequest = serde_json::from_str(
            r#"{"errorMessage":"boom","errorType":"ValueError","requestId":"1","stackTrace":["  File \"x\"\n"]}"#,
        )
        .unwrap();
        assert_eq!(python.error_type, "ValueError");
        assert_eq!(python.stack_trace.len(), 1);

        let node: ErrorRequest = serde_json::from_str(
            r#"{"errorType":"Error","errorMessage":"boom","trace":["Error: boom","    at x"]}"#,
        )
        .unwrap();
        assert_eq!(node.stack_trace, vec!["Error: boom", "    at x"]);

        let rust: ErrorRequest =
            serde_json::from_str(r#"{"error_type":"x","errorType":"&str","errorMessage":"boom"}"#)
                .unwrap();
        assert!(rust.stack_trace.is_empty());

        let one_string: ErrorRequest =
            serde_json::from_str(r#"{"errorType":"E","errorMessage":"m","stackTrace":"a\nb"}"#)
                .unwrap();
        assert_eq!(one_string.stack_trace, vec!["a", "b"]);
    }
}
