//! The conformance function (see `tests/functions/README.md`) on the unmodified `lambda_runtime`
//! crate, so our Runtime API server is checked against a real third-party Rust client.

use lambda_runtime::{service_fn, BoxFuture, Error, LambdaEvent, Runtime, SnapStartResource};
use serde_json::{json, Value};
use std::sync::Arc;

/// Logs the SnapStart hooks so the suite can see they ran in order.
struct Hooks;

impl SnapStartResource for Hooks {
    fn before_snapshot(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async {
            eprintln!("conformance: before_snapshot");
            Ok(())
        })
    }

    fn after_restore(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async {
            eprintln!("conformance: after_restore");
            Ok(())
        })
    }
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    match payload.get("action").and_then(Value::as_str) {
        None => Ok(payload),
        Some("error") => {
            let message = payload
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("failed");
            Err(message.to_owned().into())
        }
        Some("sleep") => {
            let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Ok(json!({ "slept": ms }))
        }
        Some("crash") => std::process::exit(3),
        Some("log") => {
            let message = payload.get("message").and_then(Value::as_str).unwrap_or("");
            println!("{message}");
            Ok(json!({ "logged": message }))
        }
        Some("context") => Ok(json!({
            "request_id": ctx.request_id,
            "function_arn": ctx.invoked_function_arn,
            "deadline_ms": ctx.deadline,
            "trace_id": ctx.xray_trace_id,
            "env_trace_id": std::env::var("_X_AMZN_TRACE_ID").ok(),
            "function_name": ctx.env_config.function_name,
            "memory_mb": ctx.env_config.memory,
        })),
        Some("big") => {
            let bytes = payload.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            let bytes = usize::try_from(bytes).map_err(|_| format!("{bytes} bytes is too many"))?;
            Ok(Value::String("a".repeat(bytes)))
        }
        Some(other) => Err(format!("unknown action {other}").into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    if std::env::var("ECHO_FAIL_INIT").as_deref() == Ok("1") {
        // lambda_runtime has no init-error call; a Rust function's init failure is its process
        // exiting before it polls, which the server must report as an init failure.
        eprintln!("rust-echo: init failed on purpose (ECHO_FAIL_INIT=1)");
        std::process::exit(1);
    }
    Runtime::new(service_fn(handle))
        .register_snapstart_resource(Arc::new(Hooks))
        .run()
        .await
}
