// An external extension: a separate executable in /opt/extensions. It counts the invocations it
// is told about, reads the function's REPORTs from the Telemetry API, and says so at SHUTDOWN.
use bootstrap::extension::{Buffering, Category, Event, EventType, Extension};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    let extension = match Extension::register(&[EventType::Invoke, EventType::Shutdown]) {
        Ok(extension) => extension,
        Err(e) => {
            eprintln!("extension: cannot register: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let reports = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&reports);
    match extension.subscribe_telemetry(&[Category::Platform], Buffering::default()) {
        Ok(listener) => {
            std::thread::spawn(move || {
                listener.serve(|batch| {
                    for event in batch.iter().filter(|e| e.kind == "platform.report") {
                        seen.fetch_add(1, Ordering::Relaxed);
                        println!("extension: report {}", event.record["metrics"]);
                    }
                })
            });
        }
        Err(e) => eprintln!("extension: no telemetry: {e}"),
    }
    let mut invokes = 0;
    extension.run(|event| {
        match event {
            Event::Invoke { request_id, .. } => {
                invokes += 1;
                println!("extension: invoke {invokes}: {request_id}");
            }
            Event::Shutdown {
                shutdown_reason, ..
            } => println!(
                "extension: shutdown ({shutdown_reason:?}) after {invokes} invokes, {} reports",
                reports.load(Ordering::Relaxed)
            ),
        }
        Ok(())
    })
}
