//! The streaming test function (see `tests/functions/README.md`, "Streaming functions") on our
//! `bootstrap` library's streaming handler: the same events as `rust-stream`, and
//! `{"action":"fail_midway","chunks":[...]}`, which writes the first chunk and then fails, so
//! the stream ends with Lambda's error trailers.

use bootstrap::{run_streaming, stream_fn, Context, HandlerError, ResponseWriter};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long a gated stream waits for its gate before it gives up and says so.
const GATE_WAIT: Duration = Duration::from_secs(10);

fn handle(event: &[u8], _ctx: &Context, out: &mut ResponseWriter) -> Result<(), HandlerError> {
    let payload: Value = serde_json::from_slice(event)?;
    out.set_content_type("text/plain");
    if let Some(total) = payload.get("bytes").and_then(Value::as_u64) {
        let block = vec![b'a'; 64 * 1024];
        let mut left = usize::try_from(total).unwrap_or(usize::MAX);
        while left > 0 {
            let n = left.min(block.len());
            out.write_all(&block[..n])?;
            left -= n;
        }
        return Ok(());
    }
    let chunks: Vec<&str> = payload
        .get("chunks")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let action = payload.get("action").and_then(Value::as_str);
    let delay = Duration::from_millis(payload.get("delay_ms").and_then(Value::as_u64).unwrap_or(0));
    let gate = payload.get("gate").and_then(Value::as_str).map(Path::new);
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        out.write_all(chunk.as_bytes())?;
        if i == 0 && action == Some("fail_midway") {
            return Err(HandlerError::new("UpstreamError", "the upstream went away"));
        }
        if i == 0 && action == Some("crash_midway") {
            std::process::exit(3);
        }
        if let (0, Some(gate)) = (i, gate) {
            let started = Instant::now();
            while !gate.exists() {
                if started.elapsed() > GATE_WAIT {
                    out.write_all(b"gate-timeout")?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    run_streaming(|| Ok(stream_fn(handle)))
}
