//! The conformance function (see `tests/functions/README.md`) on our `bootstrap` library, so the
//! library's loop is checked by the same cases as the third-party runtimes.

use bootstrap::{Context, Function, HandlerError};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

struct Echo;

/// This process's execution-environment id: 16 random hex digits, drawn once.
fn environment_id() -> Result<String, HandlerError> {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let mut random = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| HandlerError::new("EchoError", e.to_string()))?;
    let id = random
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok(ID.get_or_init(|| id).clone())
}

impl Function for Echo {
    fn handle(&mut self, event: &[u8], ctx: &Context) -> Result<Vec<u8>, HandlerError> {
        let payload: Value = serde_json::from_slice(event)?;
        let reply = match payload.get("action").and_then(Value::as_str) {
            // Echo the bytes as they came, not a re-serialization of them.
            None => return Ok(event.to_vec()),
            Some("error") => {
                let message = payload
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("failed");
                return Err(HandlerError::new("EchoError", message));
            }
            Some("sleep") => {
                let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                json!({ "slept": ms })
            }
            Some("crash") => std::process::exit(3),
            Some("log") => {
                let message = payload.get("message").and_then(Value::as_str).unwrap_or("");
                println!("{message}");
                json!({ "logged": message })
            }
            // For the function-host tests: which execution environment answered. The id is
            // drawn on first use, after any SnapStart restore, so restored copies differ.
            Some("whoami") => {
                let sleep = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(sleep));
                json!({ "environment": environment_id()?, "tag": payload.get("tag") })
            }
            Some("context") => json!({
                "request_id": ctx.request_id,
                "function_arn": ctx.invoked_function_arn,
                "deadline_ms": ctx.deadline_ms,
                "trace_id": ctx.trace_id,
                "env_trace_id": std::env::var("_X_AMZN_TRACE_ID").ok(),
                "function_name": ctx.env_config.function_name,
                "memory_mb": ctx.env_config.memory_mb,
            }),
            // For the SnapStart tests: what must differ between restored copies of one
            // snapshot (fresh kernel randomness) and what must be right in each (the clock).
            Some("unique") => {
                let mut random = [0u8; 16];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
                    .map_err(|e| HandlerError::new("EchoError", e.to_string()))?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
                json!({ "random": hex, "time_ms": now })
            }
            Some("big") => {
                let bytes = payload.get("bytes").and_then(Value::as_u64).unwrap_or(0);
                let bytes = usize::try_from(bytes)
                    .map_err(|_| HandlerError::new("EchoError", "bytes is too large"))?;
                Value::String("a".repeat(bytes))
            }
            Some(other) => {
                return Err(HandlerError::new(
                    "EchoError",
                    format!("unknown action {other}"),
                ))
            }
        };
        Ok(serde_json::to_vec(&reply)?)
    }

    fn before_snapshot(&mut self) -> Result<(), HandlerError> {
        eprintln!("conformance: before_snapshot");
        Ok(())
    }

    fn after_restore(&mut self) -> Result<(), HandlerError> {
        eprintln!("conformance: after_restore");
        Ok(())
    }
}

fn main() -> ExitCode {
    bootstrap::run(|| {
        if std::env::var("ECHO_FAIL_INIT").as_deref() == Ok("1") {
            return Err(HandlerError::new(
                "EchoInitError",
                "init failed on purpose (ECHO_FAIL_INIT=1)",
            ));
        }
        Ok(Echo)
    })
}
