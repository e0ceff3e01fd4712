//! Asynchronous (`Event`) invocations: accepted at once, run later, retried twice on failure,
//! then sent to the on-failure destination as an AWS destination record. With an
//! [`EventStore`], an accepted event is on disk before it is acknowledged and stays there until
//! it has an outcome, so a crash loses none; what the store holds at start is run again.
//!
//! Memory is bounded whatever the store holds: at most [`MAX_PENDING`] events, and
//! [`MAX_HELD_BYTES`] of their bodies, are in memory at once; the others wait on disk, only
//! their ids in memory, and are read when a place frees.

use crate::event_store::{EventStore, StoreError};
use crate::invoker::Invoker;
use logging::Chain;
use proto::invoke::{Invocation, InvokeError, Outcome};
use proto::time;
use serde_json::{json, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most asynchronous invocations held in memory at once: without a store, the most accepted
/// and not yet done.
pub const MAX_PENDING: usize = 128;

/// Most bytes of event bodies held in memory at once (events are up to 1 MiB each).
pub const MAX_HELD_BYTES: usize = 64 << 20;

/// Most events a store keeps waiting for a place in memory. Lambda queues events rather than
/// refusing them; here the bound is the disk (up to 1 MiB each).
pub const MAX_STORED: usize = 10_000;

/// Why an asynchronous invocation was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("too many asynchronous invocations are pending ({0})")]
    Full(usize),
    #[error("the event could not be stored")]
    Store(#[source] StoreError),
    /// A queue elsewhere (a cluster's replicated stream) did not take the event.
    #[error("the event could not be queued")]
    Queue(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where an endpoint's accepted `Event` invokes go: this host's [`AsyncQueue`], or a queue that
/// other hosts share (the `cluster` crate's stream). `enqueue` returns once the event is kept,
/// since the `202` promises it will run.
pub trait EventQueue: Send + Sync + 'static {
    fn enqueue(
        &self,
        invocation: Invocation,
    ) -> Pin<Box<dyn Future<Output = Result<(), EnqueueError>> + Send + '_>>;
}

impl<I: Invoker> EventQueue for AsyncQueue<I> {
    fn enqueue(
        &self,
        invocation: Invocation,
    ) -> Pin<Box<dyn Future<Output = Result<(), EnqueueError>> + Send + '_>> {
        Box::pin(AsyncQueue::enqueue(self, invocation))
    }
}

/// An event's place in memory: one of [`MAX_PENDING`], and its body's share of
/// [`MAX_HELD_BYTES`] (in KiB).
struct Held {
    _slot: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The asynchronous invocations of one environment.
#[derive(Clone)]
pub struct AsyncQueue<I: Invoker> {
    sandbox: I,
    slots: Arc<Semaphore>,
    /// KiB of bodies that may be held.
    bytes: Arc<Semaphore>,
    store: Option<EventStore>,
    /// One store operation at a time, on one blocking thread (the store serialises them
    /// anyway; this keeps a burst from taking a thread each).
    io: Arc<tokio::sync::Mutex<()>>,
    /// Events in the store (accepted, without an outcome yet).
    stored: Arc<AtomicUsize>,
}

/// An event body's share of [`MAX_HELD_BYTES`], in KiB (at least one).
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

impl<I: Invoker> AsyncQueue<I> {
    /// A queue for `sandbox`; with a `store`, the events it holds from before are queued now
    /// (their ids: bodies are read as places in memory free).
    pub fn new(sandbox: I, store: Option<EventStore>) -> AsyncQueue<I> {
        let queue = AsyncQueue {
            sandbox,
            slots: Arc::new(Semaphore::new(MAX_PENDING)),
            bytes: Arc::new(Semaphore::new(MAX_HELD_BYTES / 1024)),
            store,
            io: Arc::new(tokio::sync::Mutex::new(())),
            stored: Arc::new(AtomicUsize::new(0)),
        };
        queue.resume();
        queue
    }

    /// Runs `work` on the store, on a blocking thread, one at a time.
    async fn with_store<T: Send + 'static>(
        &self,
        store: &EventStore,
        work: impl FnOnce(&EventStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _turn = self.io.lock().await;
        let store = store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    fn try_hold(&self, size: usize) -> Option<Held> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        let bytes = Arc::clone(&self.bytes)
            .try_acquire_many_owned(kib(size))
            .ok()?;
        Some(Held {
            _slot: slot,
            _bytes: bytes,
        })
    }

    async fn hold(&self, size: usize) -> Option<Held> {
        let slot = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        let bytes = Arc::clone(&self.bytes)
            .acquire_many_owned(kib(size))
            .await
            .ok()?;
        Some(Held {
            _slot: slot,
            _bytes: bytes,
        })
    }

    /// Queues the events a previous run of the service accepted and did not finish, oldest
    /// first, each read from the store when it has a place in memory.
    fn resume(&self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let pending = store.pending_ids();
        if pending.is_empty() {
            return;
        }
        self.sandbox.log(&format!(
            "rapid: resuming {} stored asynchronous invocation(s)",
            pending.len()
        ));
        // Accepted already, so they count even beyond MAX_STORED.
        self.stored.fetch_add(pending.len(), Ordering::SeqCst);
        let queue = self.clone();
        tokio::spawn(async move {
            for (request_id, accepted_ms, size) in pending {
                let Some(held) = queue.hold(size).await else {
                    return;
                };
                queue
                    .run_stored(&store, request_id, accepted_ms, held)
                    .await;
            }
        });
    }

    /// Accepts `invocation` to run in the background, with retries; with a store, it is on disk
    /// when this returns, and waits there while memory is taken.
    pub async fn enqueue(&self, invocation: Invocation) -> Result<(), EnqueueError> {
        let accepted_ms = time::epoch_ms();
        let size = invocation.event.len();
        let Some(store) = self.store.clone() else {
            let held = self.try_hold(size).ok_or(EnqueueError::Full(MAX_PENDING))?;
            self.spawn(invocation, accepted_ms, held, None);
            return Ok(());
        };
        if self.stored.fetch_add(1, Ordering::SeqCst) >= MAX_STORED {
            self.stored.fetch_sub(1, Ordering::SeqCst);
            return Err(EnqueueError::Full(MAX_STORED));
        }
        // Its own task: a caller that hangs up mid-write cannot leave an event stored and
        // never run.
        let queue = self.clone();
        tokio::spawn(async move { queue.keep(store, invocation, accepted_ms).await })
            .await
            .map_err(|e| EnqueueError::Store(StoreError::Join(e.to_string())))?
    }

    /// Writes `invocation` to `store`, then runs it when it has a place in memory.
    async fn keep(
        &self,
        store: EventStore,
        invocation: Invocation,
        accepted_ms: u64,
    ) -> Result<(), EnqueueError> {
        let size = invocation.event.len();
        let event = invocation.clone();
        let put = self
            .with_store(&store, move |store| store.put(&event, accepted_ms))
            .await;
        if let Err(e) = put {
            self.stored.fetch_sub(1, Ordering::SeqCst);
            return Err(EnqueueError::Store(e));
        }
        match self.try_hold(size) {
            Some(held) => self.spawn(invocation, accepted_ms, held, Some(store)),
            // Memory is taken: only its id stays in memory until a place frees.
            None => {
                let queue = self.clone();
                tokio::spawn(async move {
                    if let Some(held) = queue.hold(size).await {
                        let id = invocation.request_id;
                        queue.run_stored(&store, id, accepted_ms, held).await;
                    }
                });
            }
        }
        Ok(())
    }

    /// Reads the event `request_id` back from the store and runs it in `held`'s place.
    async fn run_stored(
        &self,
        store: &EventStore,
        request_id: String,
        accepted_ms: u64,
        held: Held,
    ) {
        let id = request_id.clone();
        match self.with_store(store, move |store| store.get(&id)).await {
            Ok(Some(invocation)) => self.spawn(invocation, accepted_ms, held, Some(store.clone())),
            Ok(None) => {
                self.stored.fetch_sub(1, Ordering::SeqCst);
            }
            // Left in the store: the next start tries again.
            Err(e) => self.sandbox.log(&format!(
                "rapid: the stored asynchronous invocation {request_id} cannot be read: {}",
                Chain(&e)
            )),
        }
    }

    fn spawn(
        &self,
        invocation: Invocation,
        accepted_ms: u64,
        held: Held,
        store: Option<EventStore>,
    ) {
        let queue = self.clone();
        tokio::spawn(async move {
            let id = invocation.request_id.clone();
            run(&queue.sandbox, invocation, accepted_ms).await;
            drop(held);
            if let Some(store) = store {
                let removed = queue
                    .with_store(&store, move |store| store.remove(&id))
                    .await;
                queue.stored.fetch_sub(1, Ordering::SeqCst);
                if let Err(e) = removed {
                    queue.sandbox.log(&format!(
                        "rapid: an asynchronous invocation's outcome could not be stored: {}",
                        Chain(&e)
                    ));
                }
            }
        });
    }
}

/// Runs one event to its outcome: a success, or a destination record (`RetriesExhausted` after
/// the function failed `1 + maximum_retry_attempts` times, `EventAgeExceeded` when the event
/// grew older than `maximum_event_age` first). Throttles and the service's own errors are not
/// the function's failures: they are retried, with backoff, without counting.
async fn run<I: Invoker>(sandbox: &I, invocation: Invocation, accepted_ms: u64) {
    let function = sandbox.function();
    let config = &function.events;
    let id = &invocation.request_id;
    let allowed = 1 + config.maximum_retry_attempts;
    let age = || Duration::from_millis(time::epoch_ms().saturating_sub(accepted_ms));
    let (mut failures, mut waits, mut last) = (0u32, 0u32, Vec::new());
    let condition = loop {
        if age() >= config.maximum_event_age {
            break "EventAgeExceeded";
        }
        // Waiting for an environment ends when the event would be too old.
        let deadline = tokio::time::Instant::now() + config.maximum_event_age.saturating_sub(age());
        let delay = match sandbox.invoke_event(invocation.clone(), deadline).await {
            Ok(Outcome::Success(_)) => return,
            Ok(Outcome::Failure { body, .. }) => {
                last = body.to_vec();
                failures += 1;
                if failures >= allowed {
                    break "RetriesExhausted";
                }
                config.retry_delay
            }
            Err(e) => {
                let kind = match e {
                    InvokeError::Throttled { .. } | InvokeError::QueueFull => {
                        proto::invoke_api::error_type::TOO_MANY_REQUESTS
                    }
                    InvokeError::ShutDown | InvokeError::Lost(_) => {
                        proto::invoke_api::error_type::SERVICE
                    }
                };
                last = proto::runtime_api::ErrorRequest::new(kind, e.to_string()).to_json();
                waits = waits.saturating_add(1);
                let backoff = config.retry_delay * 2u32.saturating_pow(waits.min(6));
                backoff.min(MAX_WAIT)
            }
        };
        tokio::time::sleep(delay).await;
    };
    let Some(dir) = &config.on_failure_dir else {
        sandbox.log(&format!(
            "rapid: async invoke {id}: {condition} after {failures} attempt(s); no on-failure destination, dropped"
        ));
        return;
    };
    let record = destination_record(
        &invocation,
        &function.arn(),
        &function.version,
        &last,
        &time::rfc3339_now(),
        (condition, failures),
    );
    // Until the record is written the event stays in the store (a restart runs it again): a
    // full or failing destination delays records, never loses them.
    let mut wait = config.retry_delay.max(Duration::from_millis(100));
    loop {
        match write_record(dir, id, &record) {
            Ok(path) => {
                sandbox.log(&format!(
                    "rapid: async invoke {id}: {condition} after {failures} attempt(s); destination record {}",
                    path.display()
                ));
                return;
            }
            Err(e) => sandbox.log(&format!(
                "rapid: async invoke {id}: {condition}; cannot write its record in {}: {e}; \
                 the event stays stored, trying again in {:.1} s",
                dir.display(),
                wait.as_secs_f64()
            )),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_WAIT);
    }
}

/// The longest wait between two tries of a throttled event.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The record AWS sends to an on-failure destination: `response` is the last failure's body,
/// `condition` `RetriesExhausted` or `EventAgeExceeded`, `invokes` how often the function ran.
pub fn destination_record(
    invocation: &Invocation,
    function_arn: &str,
    version: &str,
    response: &[u8],
    timestamp: &str,
    (condition, invokes): (&str, u32),
) -> Vec<u8> {
    let as_json = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
    };
    let record = json!({
        "version": "1.0",
        "timestamp": timestamp,
        "requestContext": {
            "requestId": invocation.request_id,
            "functionArn": format!("{function_arn}:{version}"),
            "condition": condition,
            "approximateInvokeCount": invokes,
        },
        "requestPayload": as_json(&invocation.event),
        "responseContext": {
            "statusCode": 200,
            "executedVersion": version,
            "functionError": proto::invoke_api::FUNCTION_ERROR_UNHANDLED,
        },
        "responsePayload": as_json(response),
    });
    serde_json::to_vec_pretty(&record).unwrap_or_default()
}

/// Checks, at start, that failure records can be written to `dir` (created if missing): a
/// misconfigured destination is found before any event depends on it. Temporary files a
/// killed server left there are removed.
pub fn check_destination(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let probe = write_atomically(dir, ".lambda-destination-check", b"")?;
    std::fs::remove_file(probe)
}

/// Writes the destination record of event `request_id` into `dir` as `REQUEST_ID.json`, whole
/// (a reader never sees half of it); returns its path.
pub fn write_record(dir: &Path, request_id: &str, record: &[u8]) -> std::io::Result<PathBuf> {
    write_atomically(dir, &format!("{request_id}.json"), record)
}

/// Ends the name of a record being written (`.NAME.tmp`).
const TEMP_SUFFIX: &str = ".tmp";

/// Writes `name` in `dir` through a temporary file, synced, and a rename, so a reader never
/// sees half a record, and a record is on disk before its event is forgotten. On an error the
/// temporary file is removed: nothing is left behind.
fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}{TEMP_SUFFIX}"));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn destination_record_has_awss_shape() {
        let mut invocation = Invocation::new(Bytes::from_static(br#"{"k":1}"#));
        invocation.request_id = "req-1".into();
        let record = destination_record(
            &invocation,
            "arn:aws:lambda:us-east-1:012345678912:function:f",
            "$LATEST",
            br#"{"errorType":"E","errorMessage":"m"}"#,
            "2024-05-01T12:34:56.789Z",
            ("RetriesExhausted", 3),
        );
        let record: Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(
            record,
            json!({
                "version": "1.0",
                "timestamp": "2024-05-01T12:34:56.789Z",
                "requestContext": {
                    "requestId": "req-1",
                    "functionArn": "arn:aws:lambda:us-east-1:012345678912:function:f:$LATEST",
                    "condition": "RetriesExhausted",
                    "approximateInvokeCount": 3
                },
                "requestPayload": {"k": 1},
                "responseContext": {
                    "statusCode": 200,
                    "executedVersion": "$LATEST",
                    "functionError": "Unhandled"
                },
                "responsePayload": {"errorType": "E", "errorMessage": "m"}
            })
        );
    }

    #[test]
    fn records_are_written_whole() {
        let dir = std::env::temp_dir().join(format!("rapid-dest-{}", uuid::Uuid::new_v4()));
        let path = write_atomically(&dir, "r.json", b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
