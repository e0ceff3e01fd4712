//! The two seams between the environment and what hosts it: where log lines go, and what happens
//! at SnapStart's snapshot point. Local mode uses the defaults; the guest's init plugs in the host
//! link.

use std::future::Future;
use std::pin::Pin;

/// Where platform and function log lines go. Called synchronously, sometimes while the
/// environment's state is locked, so an implementation must not block for long nor call back
/// into the [`Handle`](crate::Handle).
pub trait LogSink: Send + Sync {
    fn line(&self, line: &str);
}

/// Writes each line to stdout at once, so lines interleave correctly with anything else the
/// process prints.
pub struct StdoutLog;

impl LogSink for StdoutLog {
    fn line(&self, line: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Called when a SnapStart runtime has finished init, before its `restore/next` is answered: the
/// place to pause the environment and snapshot it. The future resolves when the environment runs
/// again (in this process or in a restored copy); the runtime's after-restore hooks run then.
/// An `Err` is logged and the restore goes on: a failed snapshot does not break the environment.
pub trait SnapshotHook: Send + Sync {
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Local mode has nothing to snapshot: the runtime is released at once.
pub struct NoSnapshot;

impl SnapshotHook for NoSnapshot {
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}
