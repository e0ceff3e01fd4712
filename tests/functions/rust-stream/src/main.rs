//! The streaming test function (see `tests/functions/README.md`, "Streaming functions") on the
//! unmodified `lambda_runtime` crate's streaming response: the handler returns a
//! `streaming::Response` whose body a task writes chunk by chunk.

use lambda_runtime::streaming::{channel, Body, Response};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a gated stream waits for its gate before it gives up and says so.
const GATE_WAIT: Duration = Duration::from_secs(10);

async fn handle(event: LambdaEvent<Value>) -> Result<Response<Body>, Error> {
    let payload = event.payload;
    let (mut sender, body) = channel();
    let strings = |key: &str| -> Vec<String> {
        payload
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let chunks = strings("chunks");
    let gate = payload
        .get("gate")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    let bytes = payload.get("bytes").and_then(Value::as_u64);
    let crash = payload.get("action").and_then(Value::as_str) == Some("crash_midway");
    let delay = Duration::from_millis(payload.get("delay_ms").and_then(Value::as_u64).unwrap_or(0));
    tokio::spawn(async move {
        if let Some(total) = bytes {
            let block = vec![b'a'; 64 * 1024];
            let mut left = usize::try_from(total).unwrap_or(usize::MAX);
            while left > 0 {
                let n = left.min(block.len());
                if sender.send_data(block[..n].to_vec().into()).await.is_err() {
                    return;
                }
                left -= n;
            }
            return;
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if sender.send_data(chunk.into()).await.is_err() {
                return;
            }
            if i == 0 && crash {
                // Give the chunk time to leave, then die mid-stream.
                tokio::time::sleep(Duration::from_millis(200)).await;
                std::process::exit(3);
            }
            if let (0, Some(gate)) = (i, &gate) {
                let started = Instant::now();
                while !gate.exists() {
                    if started.elapsed() > GATE_WAIT {
                        let _ = sender.send_data("gate-timeout".into()).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(Response::from(body))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
