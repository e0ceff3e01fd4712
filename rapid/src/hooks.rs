//! The seam between the environment and what hosts it at SnapStart's snapshot point (the other
//! seam, where log lines go, is [`proto::log::LogSink`]). Local mode uses the default; the guest's
//! init plugs in the host link.

use std::future::Future;
use std::pin::Pin;

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
