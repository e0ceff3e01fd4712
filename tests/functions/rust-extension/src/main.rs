//! An external extension on the unmodified `lambda-extension` crate (aws-lambda-rust-runtime):
//! it prints each lifecycle event it gets and each telemetry record (parsed by the crate's own
//! types) to its stdout, which is the function's log, one line each, starting with its name.
//! The telemetry listener's port is `RUST_EXTENSION_TELEMETRY_PORT` (the crate's default 9003
//! otherwise).

use lambda_extension::{
    service_fn, Error, Extension, LambdaEvent, LambdaTelemetry, LambdaTelemetryRecord, NextEvent,
    SharedService,
};

async fn events(event: LambdaEvent) -> Result<(), Error> {
    match event.next {
        NextEvent::Invoke(invoke) => println!(
            "rust-extension: INVOKE {} {}",
            invoke.request_id, invoke.tracing.value
        ),
        NextEvent::Shutdown(shutdown) => {
            println!("rust-extension: SHUTDOWN {}", shutdown.shutdown_reason)
        }
    }
    Ok(())
}

async fn telemetry(batch: Vec<LambdaTelemetry>) -> Result<(), Error> {
    for event in batch {
        let line = match event.record {
            LambdaTelemetryRecord::Function(line) => format!("function {line}"),
            LambdaTelemetryRecord::PlatformStart { request_id, .. } => {
                format!("platform.start {request_id}")
            }
            LambdaTelemetryRecord::PlatformRuntimeDone {
                request_id,
                status,
                metrics,
                ..
            } => format!(
                "platform.runtimeDone {request_id} {status:?} {}",
                metrics.and_then(|m| m.produced_bytes).unwrap_or(0)
            ),
            LambdaTelemetryRecord::PlatformReport {
                request_id,
                status,
                metrics,
                ..
            } => format!(
                "platform.report {request_id} {status:?} {} MB",
                metrics.memory_size_mb
            ),
            LambdaTelemetryRecord::PlatformInitStart {
                initialization_type,
                ..
            } => format!("platform.initStart {initialization_type:?}"),
            LambdaTelemetryRecord::PlatformInitReport { metrics, .. } => {
                format!("platform.initReport {}", metrics.duration_ms >= 0.0)
            }
            other => format!("other {}", serde_json::to_string(&other)?),
        };
        println!("rust-extension: telemetry {line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let port = std::env::var("RUST_EXTENSION_TELEMETRY_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9003);
    Extension::new()
        .with_events_processor(service_fn(events))
        .with_telemetry_processor(SharedService::new(service_fn(telemetry)))
        .with_telemetry_types(&["platform", "function"])
        .with_telemetry_port_number(port)
        .run()
        .await
}
