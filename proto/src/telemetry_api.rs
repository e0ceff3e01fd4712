//! The AWS Lambda Telemetry API (`PUT /2022-07-01/telemetry`) and the older Logs API
//! (`PUT /2020-08-15/logs`): an extension subscribes, and the platform then POSTs it JSON
//! batches of telemetry events (`[{"time", "type", "record"}, ...]`) at the destination it
//! named.

use serde::{Deserialize, Serialize};

/// The Telemetry API's path.
pub const TELEMETRY_PATH: &str = "/2022-07-01/telemetry";
/// The Logs API's path.
pub const LOGS_PATH: &str = "/2020-08-15/logs";

/// Schema versions the Telemetry API takes (the records of both are the newer one's).
pub const TELEMETRY_SCHEMAS: [&str; 2] = ["2022-07-01", "2022-12-13"];
/// The Logs API's schema version.
pub const LOGS_SCHEMA: &str = "2021-03-18";

/// Lambda's limits on a subscription's buffering, and its defaults.
pub mod buffering {
    use std::ops::RangeInclusive;
    pub const MAX_ITEMS: RangeInclusive<u32> = 1_000..=10_000;
    pub const MAX_BYTES: RangeInclusive<u32> = 262_144..=1_048_576;
    pub const TIMEOUT_MS: RangeInclusive<u32> = 25..=30_000;
    pub const DEFAULT_MAX_ITEMS: u32 = 10_000;
    pub const DEFAULT_MAX_BYTES: u32 = 262_144;
    pub const DEFAULT_TIMEOUT_MS: u32 = 1_000;
}

/// The hosts a destination may name: the sandbox itself.
pub const SANDBOX_HOSTS: [&str; 4] = ["sandbox.localdomain", "sandbox", "localhost", "127.0.0.1"];

/// The body of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub schema_version: String,
    pub types: Vec<Category>,
    #[serde(default)]
    pub buffering: Buffering,
    pub destination: Destination,
}

/// What a subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// `platform.*` records.
    Platform,
    /// The function's log lines (the runtime's stdout and stderr).
    Function,
    /// The extensions' log lines.
    Extension,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Platform => "platform",
            Category::Function => "function",
            Category::Extension => "extension",
        }
    }
}

/// How a subscriber's events are gathered into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Buffering {
    #[serde(default = "default_max_items")]
    pub max_items: u32,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_max_items() -> u32 {
    buffering::DEFAULT_MAX_ITEMS
}
fn default_max_bytes() -> u32 {
    buffering::DEFAULT_MAX_BYTES
}
fn default_timeout_ms() -> u32 {
    buffering::DEFAULT_TIMEOUT_MS
}

impl Default for Buffering {
    fn default() -> Self {
        Buffering {
            max_items: buffering::DEFAULT_MAX_ITEMS,
            max_bytes: buffering::DEFAULT_MAX_BYTES,
            timeout_ms: buffering::DEFAULT_TIMEOUT_MS,
        }
    }
}

/// Where batches go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// `HTTP` (a POST of each batch to `URI`) or `TCP` (newline-delimited JSON to `port`).
    pub protocol: String,
    #[serde(rename = "URI", default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Why a subscription is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("schemaVersion {0:?} is not one of {1:?}")]
    Schema(String, Vec<&'static str>),
    #[error("types must name at least one of platform, function, extension")]
    NoTypes,
    #[error("buffering.{0} must be within {1}..={2}, got {3}")]
    Buffering(&'static str, u32, u32, u32),
    #[error("destination: {0}")]
    Destination(String),
}

/// Where the sandbox delivers a subscriber's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// POST each batch to `http://127.0.0.1:{port}{path}`.
    Http { port: u16, path: String },
    /// Write each event as a JSON line to `127.0.0.1:{port}`.
    Tcp { port: u16 },
}

impl Subscription {
    /// Checks a subscription against Lambda's rules and says where its batches go. `schemas`
    /// are the versions the API takes.
    pub fn check(&self, schemas: &[&'static str]) -> Result<Target, Invalid> {
        if !schemas.contains(&self.schema_version.as_str()) {
            return Err(Invalid::Schema(
                self.schema_version.clone(),
                schemas.to_vec(),
            ));
        }
        if self.types.is_empty() {
            return Err(Invalid::NoTypes);
        }
        let b = &self.buffering;
        for (name, value, range) in [
            ("maxItems", b.max_items, buffering::MAX_ITEMS),
            ("maxBytes", b.max_bytes, buffering::MAX_BYTES),
            ("timeoutMs", b.timeout_ms, buffering::TIMEOUT_MS),
        ] {
            if !range.contains(&value) {
                return Err(Invalid::Buffering(
                    name,
                    *range.start(),
                    *range.end(),
                    value,
                ));
            }
        }
        let destination = &self.destination;
        match destination.protocol.as_str() {
            "HTTP" => {
                let uri = destination.uri.as_deref().ok_or_else(|| {
                    Invalid::Destination("an HTTP destination needs a URI".into())
                })?;
                http_target(uri).map_err(Invalid::Destination)
            }
            "TCP" => match destination.port {
                Some(port) if port > 0 => Ok(Target::Tcp { port }),
                _ => Err(Invalid::Destination(
                    "a TCP destination needs a port".into(),
                )),
            },
            other => Err(Invalid::Destination(format!(
                "protocol {other:?} is not HTTP or TCP"
            ))),
        }
    }
}

/// `http://HOST:PORT[/path]` with HOST the sandbox.
fn http_target(uri: &str) -> Result<Target, String> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| format!("{uri:?} is not an http:// URI"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{uri:?} names no port"))?;
    if !SANDBOX_HOSTS.contains(&host) {
        return Err(format!(
            "{uri:?}: the destination must be the sandbox (sandbox.localdomain)"
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("{uri:?}: bad port"))?;
    Ok(Target::Http {
        port,
        path: path.to_owned(),
    })
}

/// One telemetry event, as a batch carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 with milliseconds.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub record: serde_json::Value,
}

/// The status of an init, restore or invocation in a platform record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    /// The function reported an error.
    Error,
    /// The runtime or the environment failed.
    Failure,
    Timeout,
}

/// The X-Ray trace of a platform record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl TraceContext {
    /// The context of an `X-Amzn-Trace-Id` header value: its `Parent` is the span.
    pub fn of(trace: &str) -> TraceContext {
        let span_id = trace
            .split(';')
            .find_map(|part| part.strip_prefix("Parent="))
            .map(str::to_owned);
        TraceContext {
            span_id,
            kind: "X-Amzn-Trace-Id".into(),
            value: trace.to_owned(),
        }
    }
}

/// A timed part of an invocation (`responseLatency`, `responseDuration`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub name: String,
    pub start: String,
    pub duration_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(json: &str) -> Subscription {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn subscriptions_are_checked_against_lambdas_limits() {
        let ok = subscription(
            r#"{"schemaVersion":"2022-12-13","types":["platform","function"],
                "buffering":{"maxItems":1000,"maxBytes":262144,"timeoutMs":25},
                "destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:8080/telemetry"}}"#,
        );
        assert_eq!(
            ok.check(&TELEMETRY_SCHEMAS),
            Ok(Target::Http {
                port: 8080,
                path: "/telemetry".into()
            })
        );
        let defaults = subscription(
            r#"{"schemaVersion":"2022-07-01","types":["extension"],
                "destination":{"protocol":"TCP","port":4243}}"#,
        );
        assert_eq!(defaults.buffering, Buffering::default());
        assert_eq!(
            defaults.check(&TELEMETRY_SCHEMAS),
            Ok(Target::Tcp { port: 4243 })
        );

        let mut bad = ok.clone();
        bad.buffering.timeout_ms = 10;
        assert!(matches!(
            bad.check(&TELEMETRY_SCHEMAS),
            Err(Invalid::Buffering("timeoutMs", ..))
        ));
        let mut bad = ok.clone();
        bad.destination.uri = Some("http://example.com:80".into());
        assert!(matches!(
            bad.check(&TELEMETRY_SCHEMAS),
            Err(Invalid::Destination(_))
        ));
        let mut bad = ok.clone();
        bad.schema_version = "2021-03-18".into();
        assert!(matches!(
            bad.check(&TELEMETRY_SCHEMAS),
            Err(Invalid::Schema(..))
        ));
        assert!(bad.check(&[LOGS_SCHEMA]).is_ok());
        let mut bad = ok;
        bad.types.clear();
        assert_eq!(bad.check(&TELEMETRY_SCHEMAS), Err(Invalid::NoTypes));
        assert!(serde_json::from_str::<Subscription>(
            r#"{"schemaVersion":"2022-12-13","types":["metrics"],"destination":{"protocol":"HTTP","URI":"http://sandbox:1"}}"#
        )
        .is_err());
    }

    #[test]
    fn a_trace_context_takes_its_span_from_the_parent() {
        let context = TraceContext::of(
            "Root=1-5f35ae12-0c0fec141ab77a00bc047aa2;Parent=2be948a625588e32;Sampled=1",
        );
        assert_eq!(context.span_id.as_deref(), Some("2be948a625588e32"));
        assert_eq!(context.kind, "X-Amzn-Trace-Id");
    }
}
