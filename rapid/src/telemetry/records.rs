//! The platform records of the Telemetry API (schema 2022-12-13), built from what the
//! environment knows when each happens.

use crate::report::{Report, Status};
use proto::telemetry_api::{Span, TraceContext};
use proto::InitializationType;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

fn ms(d: Duration) -> f64 {
    // Three decimals, as Lambda's records show.
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// How an init, restore or invocation ended, as a record's `status` and `errorType`.
pub fn status(status: &Status, function_error: bool) -> (&'static str, Option<String>) {
    match status {
        Status::Success if function_error => ("error", None),
        Status::Success => ("success", None),
        Status::Timeout => ("timeout", Some("Sandbox.Timedout".into())),
        Status::Error(error_type) => ("failure", Some(error_type.clone())),
    }
}

/// The status of a failed init or restore of `error_type`.
pub fn failed_phase(error_type: &str) -> &'static str {
    match error_type {
        "Runtime.InitTimeout" => "timeout",
        "Runtime.ExitError" | "Runtime.InvalidEntrypoint" | "Runtime.OutOfMemory" => "failure",
        t if t.starts_with("Extension.") => "failure",
        _ => "error",
    }
}

fn with_error(mut record: Value, error_type: Option<String>) -> Value {
    if let (Some(error_type), Some(map)) = (error_type, record.as_object_mut()) {
        map.insert("errorType".into(), Value::String(error_type));
    }
    record
}

pub fn init_start(init_type: InitializationType, function: &str, version: &str) -> Value {
    json!({
        "initializationType": init_type.as_str(),
        "phase": "init",
        "functionName": function,
        "functionVersion": version,
    })
}

pub fn init_runtime_done(
    init_type: InitializationType,
    status: &str,
    error_type: Option<String>,
) -> Value {
    with_error(
        json!({"initializationType": init_type.as_str(), "phase": "init", "status": status}),
        error_type,
    )
}

pub fn init_report(
    init_type: InitializationType,
    duration: Duration,
    status: &str,
    error_type: Option<String>,
) -> Value {
    with_error(
        json!({
            "initializationType": init_type.as_str(),
            "phase": "init",
            "status": status,
            "metrics": {"durationMs": ms(duration)},
        }),
        error_type,
    )
}

pub fn extension(name: &str, state: &str, events: Vec<String>) -> Value {
    json!({"name": name, "state": state, "events": events})
}

pub fn start(request_id: &str, version: &str, trace: &str) -> Value {
    json!({
        "requestId": request_id,
        "version": version,
        "tracing": TraceContext::of(trace),
    })
}

/// The runtime's part of one invocation: from its delivery to the runtime's answer, the first
/// byte of which came at `first_byte`.
pub struct RuntimeDone<'a> {
    pub request_id: &'a str,
    pub trace: &'a str,
    pub status: &'static str,
    pub error_type: Option<String>,
    pub delivered: SystemTime,
    pub first_byte: SystemTime,
    pub done: SystemTime,
    pub produced_bytes: u64,
}

pub fn runtime_done(done: RuntimeDone<'_>) -> Value {
    let since = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default();
    let time = |t: SystemTime| {
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        proto::time::rfc3339(ms)
    };
    let spans = [
        Span {
            name: "responseLatency".into(),
            start: time(done.delivered),
            duration_ms: ms(since(done.delivered, done.first_byte)),
        },
        Span {
            name: "responseDuration".into(),
            start: time(done.first_byte),
            duration_ms: ms(since(done.first_byte, done.done)),
        },
    ];
    with_error(
        json!({
            "requestId": done.request_id,
            "status": done.status,
            "metrics": {
                "durationMs": ms(since(done.delivered, done.done)),
                "producedBytes": done.produced_bytes,
            },
            "tracing": TraceContext::of(done.trace),
            "spans": spans,
        }),
        done.error_type,
    )
}

pub fn report(report: &Report, trace: Option<&str>, function_error: bool) -> Value {
    let (status, error_type) = status(&report.status, function_error);
    let mut metrics = json!({
        "durationMs": ms(report.duration),
        "billedDurationMs": report.billed_ms(),
        "memorySizeMB": report.memory_size_mb,
        "maxMemoryUsedMB": report.max_memory_used_mb,
    });
    if let Some(map) = metrics.as_object_mut() {
        if let Some(init) = report.init_duration {
            map.insert("initDurationMs".into(), json!(ms(init)));
        }
        if let Some(restore) = report.restore_duration {
            map.insert("restoreDurationMs".into(), json!(ms(restore)));
            map.insert(
                "billedRestoreDurationMs".into(),
                json!(crate::report::billed_ms(restore)),
            );
        }
    }
    let mut record = json!({"requestId": report.request_id, "status": status, "metrics": metrics});
    if let (Some(trace), Some(map)) = (trace, record.as_object_mut()) {
        map.insert("tracing".into(), json!(TraceContext::of(trace)));
    }
    with_error(record, error_type)
}

pub fn restore_start(function: &str, version: &str) -> Value {
    json!({"functionName": function, "functionVersion": version})
}

pub fn restore_runtime_done(status: &str, error_type: Option<String>) -> Value {
    with_error(json!({"status": status}), error_type)
}

pub fn restore_report(duration: Duration, status: &str, error_type: Option<String>) -> Value {
    with_error(
        json!({"status": status, "metrics": {"durationMs": ms(duration)}}),
        error_type,
    )
}
