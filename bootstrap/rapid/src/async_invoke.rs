//! Asynchronous (`Event`) invocations: run later, retried twice on failure, then sent to the
//! on-failure destination as an AWS destination record.

use crate::sandbox::{Handle, Invocation, Outcome};
use serde_json::{json, Value};
use std::path::Path;

/// One attempt and two retries, as Lambda does for asynchronous invokes.
pub const MAX_ATTEMPTS: u32 = 3;

/// Runs `invocation` in the background.
pub fn enqueue(sandbox: Handle, invocation: Invocation) {
    tokio::spawn(async move {
        let mut last = None;
        for attempt in 1..=MAX_ATTEMPTS {
            match sandbox.invoke(invocation.clone()).await {
                Ok(Outcome::Success(_)) => return,
                Ok(Outcome::Failure(body)) => last = Some(body),
                Err(e) => last = Some(e.to_string().into_bytes().into()),
            }
            if attempt < MAX_ATTEMPTS {
                tokio::time::sleep(sandbox.config().async_retry_delay).await;
            }
        }
        let response = last.unwrap_or_default();
        let id = &invocation.request_id;
        let config = sandbox.config();
        let Some(dir) = &config.on_failure_dir else {
            eprintln!("lambda-local: async invoke {id} failed {MAX_ATTEMPTS} times; no --on-failure-dir, dropped");
            return;
        };
        let record = destination_record(
            &invocation,
            &config.function_arn(),
            &config.function_version,
            &response,
        );
        match write_atomically(dir, &format!("{id}.json"), &record) {
            Ok(path) => eprintln!(
                "lambda-local: async invoke {id} failed {MAX_ATTEMPTS} times; record at {}",
                path.display()
            ),
            Err(e) => eprintln!(
                "lambda-local: async invoke {id} failed; cannot write its record in {}: {e}",
                dir.display()
            ),
        }
    });
}

/// The record AWS sends to an on-failure destination.
fn destination_record(
    invocation: &Invocation,
    function_arn: &str,
    version: &str,
    response: &[u8],
) -> Vec<u8> {
    let as_json = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
    };
    let record = json!({
        "version": "1.0",
        "timestamp": crate::time::rfc3339_now(),
        "requestContext": {
            "requestId": invocation.request_id,
            "functionArn": format!("{function_arn}:{version}"),
            "condition": "RetriesExhausted",
            "approximateInvokeCount": MAX_ATTEMPTS,
        },
        "requestPayload": as_json(&invocation.event),
        "responseContext": {
            "statusCode": 200,
            "executedVersion": version,
            "functionError": "Unhandled",
        },
        "responsePayload": as_json(response),
    });
    serde_json::to_vec_pretty(&record).unwrap_or_default()
}

/// Writes `name` in `dir` through a temporary file and a rename, so a reader never sees half a
/// record.
fn write_atomically(
    dir: &Path,
    name: &str,
    contents: &[u8],
) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, contents)?;
    std::fs::rename(&temp, &path)?;
    Ok(path)
}
