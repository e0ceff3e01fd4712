//! The records a Logs API (schema 2021-03-18) subscriber gets: the function's and extensions'
//! lines as they are, and of the platform's only what that schema has (`platform.start`,
//! `platform.end`, `platform.report`, `platform.runtimeDone`, `platform.extension`,
//! `platform.logsSubscription`, `platform.logsDropped`), in its shapes.

use proto::telemetry_api::{Category, Event};
use serde_json::{json, Value};

/// What `event` becomes for a Logs API subscriber: nothing, one event, or (a report) two.
pub fn translate(category: Category, event: &Event) -> Vec<Event> {
    if category != Category::Platform {
        return vec![event.clone()];
    }
    let record = &event.record;
    let with = |kind: &str, record: Value| Event {
        time: event.time.clone(),
        kind: kind.to_owned(),
        record,
    };
    let request_id = record.get("requestId").cloned().unwrap_or(Value::Null);
    match event.kind.as_str() {
        "platform.start" => vec![with(
            "platform.start",
            json!({"requestId": request_id, "version": record.get("version")}),
        )],
        "platform.runtimeDone" => vec![with(
            "platform.runtimeDone",
            json!({"requestId": request_id, "status": record.get("status")}),
        )],
        "platform.report" => {
            let metrics = record.get("metrics").cloned().unwrap_or(Value::Null);
            let mut kept = serde_json::Map::new();
            for key in [
                "durationMs",
                "billedDurationMs",
                "memorySizeMB",
                "maxMemoryUsedMB",
                "initDurationMs",
            ] {
                if let Some(value) = metrics.get(key) {
                    kept.insert(key.to_owned(), value.clone());
                }
            }
            vec![
                with("platform.end", json!({"requestId": request_id})),
                with(
                    "platform.report",
                    json!({"requestId": request_id, "metrics": Value::Object(kept)}),
                ),
            ]
        }
        "platform.extension" | "platform.logsDropped" => vec![event.clone()],
        "platform.telemetrySubscription" => vec![with("platform.logsSubscription", record.clone())],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, record: Value) -> Event {
        Event {
            time: "2024-05-01T12:34:56.789Z".into(),
            kind: kind.into(),
            record,
        }
    }

    #[test]
    fn reports_become_end_and_report_and_init_records_are_dropped() {
        let report = event(
            "platform.report",
            json!({"requestId": "r", "status": "success", "metrics": {
                "durationMs": 1.5, "billedDurationMs": 2, "memorySizeMB": 128,
                "maxMemoryUsedMB": 20, "restoreDurationMs": 3.0}}),
        );
        let got = translate(Category::Platform, &report);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, "platform.end");
        assert_eq!(got[0].record, json!({"requestId": "r"}));
        assert_eq!(got[1].record["metrics"]["billedDurationMs"], 2);
        assert!(got[1].record["metrics"].get("restoreDurationMs").is_none());
        assert!(translate(Category::Platform, &event("platform.initStart", json!({}))).is_empty());
        let line = event("function", json!("hello"));
        assert_eq!(translate(Category::Function, &line), vec![line]);
        let subscribed = event("platform.telemetrySubscription", json!({"name": "x"}));
        assert_eq!(
            translate(Category::Platform, &subscribed)[0].kind,
            "platform.logsSubscription"
        );
    }
}
