//! The AWS Lambda Extensions API, version 2020-01-01, spoken between an extension (a process in
//! `/opt/extensions`, or a thread of the runtime) and the Runtime API server, on the same
//! address as the Runtime API (`AWS_LAMBDA_RUNTIME_API`).

use serde::{Deserialize, Serialize};

/// Every Extensions API path starts with this prefix.
pub const PREFIX: &str = "/2020-01-01/extension";

/// Most extensions one environment takes, as on Lambda.
pub const MAX_EXTENSIONS: usize = 10;

pub mod header {
    /// On `register`: the extension's name (an external extension's is its file name).
    pub const NAME: &str = "Lambda-Extension-Name";
    /// The id `register` hands out; every later call carries it.
    pub const IDENTIFIER: &str = "Lambda-Extension-Identifier";
    /// On `init/error` and `exit/error`: the error's type.
    pub const FUNCTION_ERROR_TYPE: &str = "Lambda-Extension-Function-Error-Type";
    /// On `register`: optional features, comma-separated (`accountId`).
    pub const ACCEPT_FEATURE: &str = "Lambda-Extension-Accept-Feature";
    /// On an event: the event's id.
    pub const EVENT_IDENTIFIER: &str = "Lambda-Extension-Event-Identifier";
}

/// One Extensions API endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /register`
    Register,
    /// `GET /event/next`
    Next,
    /// `POST /init/error`
    InitError,
    /// `POST /exit/error`
    ExitError,
}

impl Route {
    /// The endpoint `method path` names: `Err(true)` when the path exists for another method,
    /// `Err(false)` when no endpoint has it.
    pub fn parse(method: &str, path: &str) -> Result<Route, bool> {
        let route = match path.strip_prefix(PREFIX).ok_or(false)? {
            "/register" => Route::Register,
            "/event/next" => Route::Next,
            "/init/error" => Route::InitError,
            "/exit/error" => Route::ExitError,
            _ => return Err(false),
        };
        let wanted = if route == Route::Next { "GET" } else { "POST" };
        if wanted.eq_ignore_ascii_case(method) {
            Ok(route)
        } else {
            Err(true)
        }
    }
}

/// The events an extension can register for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Invoke,
    Shutdown,
}

/// The body of `register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    #[serde(default)]
    pub events: Vec<EventType>,
}

/// The answer to `register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub function_name: String,
    pub function_version: String,
    pub handler: String,
    /// Only with `Lambda-Extension-Accept-Feature: accountId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// Why the environment shuts down, as a `SHUTDOWN` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownReason {
    /// The environment is no longer needed (idle, or the service stops).
    Spindown,
    /// The function timed out.
    Timeout,
    /// The runtime or an extension failed.
    Failure,
}

/// The X-Ray tracing of an `INVOKE` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracing {
    /// `X-Amzn-Trace-Id`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// What `event/next` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "eventType", rename_all = "UPPERCASE")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    Invoke {
        deadline_ms: u64,
        request_id: String,
        invoked_function_arn: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracing: Option<Tracing>,
    },
    #[serde(rename_all = "camelCase")]
    Shutdown {
        shutdown_reason: ShutdownReason,
        deadline_ms: u64,
    },
}

impl Event {
    pub fn event_type(&self) -> EventType {
        match self {
            Event::Invoke { .. } => EventType::Invoke,
            Event::Shutdown { .. } => EventType::Shutdown,
        }
    }
}

/// Error types of the Extensions API's refusals, as Lambda names them.
pub mod error_type {
    pub const MISSING_IDENTIFIER: &str = "Extension.MissingExtensionIdentifier";
    pub const UNKNOWN_IDENTIFIER: &str = "Extension.UnknownExtensionIdentifier";
    pub const INVALID_NAME: &str = "Extension.InvalidExtensionName";
    pub const REGISTRATION_CLOSED: &str = "Extension.RegistrationClosed";
    pub const INVALID_STATE: &str = "Extension.InvalidExtensionState";
    pub const MISSING_HEADER: &str = "Extension.MissingHeader";
    pub const TOO_MANY: &str = "Extension.TooManyExtensions";
    pub const INVALID_EVENT_TYPE: &str = "Extension.InvalidEventType";
    pub const INVALID_REQUEST_FORMAT: &str = "InvalidRequestFormat";
}

/// Error types the platform reports when an extension fails the environment.
pub mod failure_type {
    /// It exited after `init/error` (or posted one and init failed).
    pub const INIT_ERROR: &str = "Extension.InitError";
    /// It posted `exit/error`.
    pub const EXIT_ERROR: &str = "Extension.ExitError";
    /// It exited when it should not have.
    pub const CRASH: &str = "Extension.Crash";
    /// It could not be started.
    pub const LAUNCH_ERROR: &str = "Extension.LaunchError";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_lambdas_shape() {
        let invoke = Event::Invoke {
            deadline_ms: 676_051,
            request_id: "3da1".into(),
            invoked_function_arn: "arn:aws:lambda:us-east-1:1:function:f".into(),
            tracing: Some(Tracing {
                kind: "X-Amzn-Trace-Id".into(),
                value: "Root=1-5f35ae12-0c0fec141ab77a00bc047aa2".into(),
            }),
        };
        let json: serde_json::Value = serde_json::to_value(&invoke).unwrap();
        assert_eq!(json["eventType"], "INVOKE");
        assert_eq!(json["deadlineMs"], 676_051);
        assert_eq!(json["requestId"], "3da1");
        assert_eq!(
            json["invokedFunctionArn"],
            "arn:aws:lambda:us-east-1:1:function:f"
        );
        assert_eq!(json["tracing"]["type"], "X-Amzn-Trace-Id");
        let shutdown = Event::Shutdown {
            shutdown_reason: ShutdownReason::Spindown,
            deadline_ms: 42,
        };
        let json = serde_json::to_string(&shutdown).unwrap();
        assert_eq!(
            json,
            r#"{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":42}"#
        );
    }

    #[test]
    fn routes_and_registrations_parse() {
        assert_eq!(
            Route::parse("POST", "/2020-01-01/extension/register"),
            Ok(Route::Register)
        );
        assert_eq!(
            Route::parse("GET", "/2020-01-01/extension/event/next"),
            Ok(Route::Next)
        );
        assert_eq!(
            Route::parse("GET", "/2020-01-01/extension/register"),
            Err(true)
        );
        assert_eq!(
            Route::parse("GET", "/2020-01-01/extension/nope"),
            Err(false)
        );
        let request: RegisterRequest =
            serde_json::from_str(r#"{"events":["INVOKE","SHUTDOWN"]}"#).unwrap();
        assert_eq!(request.events, [EventType::Invoke, EventType::Shutdown]);
        assert!(serde_json::from_str::<RegisterRequest>(r#"{"events":["BOOT"]}"#).is_err());
    }
}
