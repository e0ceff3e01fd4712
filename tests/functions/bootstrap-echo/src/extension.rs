//! An external extension on our `bootstrap` library's extension helper: it prints each event it
//! gets (`bootstrap-extension: INVOKE <request id>`, `bootstrap-extension: SHUTDOWN <reason>`)
//! and each telemetry event it receives (`bootstrap-extension: telemetry <type> <request id or
//! line>`) on its stdout, which is the function's log. With `EXTENSION_TELEMETRY=off` it does
//! not subscribe to telemetry (events only).

use bootstrap::extension::{Buffering, Category, Event, EventType, Extension};
use std::process::ExitCode;

fn main() -> ExitCode {
    let extension = match Extension::register(&[EventType::Invoke, EventType::Shutdown]) {
        Ok(extension) => extension,
        Err(e) => {
            eprintln!("bootstrap-extension: cannot register: {e}");
            return ExitCode::FAILURE;
        }
    };
    let buffering = Buffering {
        max_items: 1000,
        max_bytes: 262_144,
        timeout_ms: 25,
    };
    let telemetry = std::env::var("EXTENSION_TELEMETRY").map_or(true, |v| v != "off");
    let subscribed = telemetry.then(|| {
        extension.subscribe_telemetry(&[Category::Platform, Category::Function], buffering)
    });
    match subscribed {
        None => {}
        Some(Ok(listener)) => {
            std::thread::spawn(move || {
                listener.serve(|batch| {
                    for event in batch {
                        let detail = match event.record.get("requestId") {
                            Some(id) => id.as_str().unwrap_or_default().to_owned(),
                            None => event.record.as_str().unwrap_or_default().to_owned(),
                        };
                        println!("bootstrap-extension: telemetry {} {detail}", event.kind);
                    }
                })
            });
        }
        Some(Err(e)) => eprintln!("bootstrap-extension: no telemetry: {e}"),
    }
    extension.run(|event| {
        match event {
            Event::Invoke { request_id, .. } => {
                println!("bootstrap-extension: INVOKE {request_id}")
            }
            Event::Shutdown {
                shutdown_reason, ..
            } => println!("bootstrap-extension: SHUTDOWN {shutdown_reason:?}"),
        }
        Ok(())
    })
}
