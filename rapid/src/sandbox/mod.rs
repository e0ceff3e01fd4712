//! One function environment: the runtime's lifecycle (init, restore, invoke, reset) and the
//! queue of invocations, shared by the Runtime API routes and every invocation source.
//!
//! - [`Handle::invoke`] is the invocation API every source (the HTTP invoke endpoint, the guest's
//!   host link, a test) calls.
//! - `lifecycle.rs` starts and resets the runtime and ends invocations (timeouts, crashes).
//! - `runtime_calls.rs` answers the runtime's Runtime API calls.
//!
//! State lives behind one mutex that is never held across an `.await`. Each runtime process
//! gets a new generation number; events from an older generation (a late exit, a timer of a
//! killed runtime, a `/next` waiter of a dead runtime) are ignored, which is what keeps a reset
//! from leaking into the next environment.

mod extension_calls;
mod lifecycle;
mod runtime_calls;
mod streaming;

pub use crate::hooks::{NoSnapshot, SnapshotHook};
pub use proto::log::{LogSink, StdoutLog};
pub use runtime_calls::too_large;
pub use streaming::StreamUpload;

use crate::config::EnvironmentConfig;
use crate::extensions::{Agent, Registry};
use crate::process::Output;
use crate::telemetry::Telemetry;
use proto::extensions_api::ShutdownReason;
pub use proto::host_link::Reset;
pub use proto::invoke::{
    Answer, Invocation, InvokeError, Outcome, ResponseStream, StreamEnd, StreamSender, MAX_QUEUED,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

/// The answer to a runtime's Runtime API request, before it is turned into HTTP.
#[derive(Debug)]
pub enum ApiReply {
    /// 200 with an invocation and its headers.
    Next(Box<Delivered>),
    /// 200 with an empty body (`restore/next`).
    Empty,
    /// 202 `{"status":"OK"}`.
    Accepted,
    /// A rejected request: status, errorType, errorMessage.
    Rejected(u16, &'static str, String),
}

/// An invocation handed to the runtime by `/next`.
#[derive(Debug)]
pub struct Delivered {
    pub invocation: Invocation,
    /// `Lambda-Runtime-Deadline-Ms`: delivery plus the function timeout, in epoch ms.
    pub deadline_ms: u64,
    pub function_arn: String,
}

struct Queued {
    invocation: Invocation,
    reply: oneshot::Sender<Answer>,
}

/// The invocation last delivered to the runtime. It stays after it finished, so that a second
/// response for it is told apart from one for an unknown id.
struct Current {
    request_id: String,
    started: Instant,
    /// `None` once the answer was sent (for a streamed response, when its stream began).
    reply: Option<oneshot::Sender<Answer>>,
    /// The response stream, while the runtime streams its response.
    stream: Option<StreamSender>,
    finished: bool,
    init_duration: Option<Duration>,
    restore_duration: Option<Duration>,
    /// The function timeout; it also bounds the extensions' work on the invocation.
    timer: Option<AbortHandle>,
    /// Its X-Ray trace header, as the runtime and the extensions got it.
    trace: String,
    /// When it was delivered, and when the runtime's answer began, on the wall clock (for the
    /// Telemetry API's spans).
    delivered_at: std::time::SystemTime,
    first_byte: Option<std::time::SystemTime>,
    /// The size of the runtime's answer.
    produced_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No runtime process.
    Down,
    /// Started, not yet in its first `/next` (or `restore/next`).
    Initializing { started: Instant },
    /// In `restore/next` (snapshot, then after-restore hooks); the first `/next` ends it.
    Restoring { started: Instant },
    /// Polling for invocations, or running one.
    Ready,
}

/// The runtime process of the current generation.
struct Process {
    pgid: i32,
    output: Output,
}

/// What the environment's processes use, across its runtime and its extensions.
#[derive(Default)]
struct Usage {
    /// The highest `Max Memory Used` seen so far, so that a runtime that died still has one.
    peak_memory_mb: u64,
    /// Forks refused by the cgroup's process limit, as of the last look.
    process_limit_hits: u64,
    /// The kernel log's OOM kills before it started (`EnvironmentConfig::oom_log`).
    oom_kills_before: u64,
}

struct State {
    generation: u64,
    process: Option<Process>,
    /// The cgroup of this generation's runtime and extensions, when the environment confines
    /// them (`EnvironmentConfig::cgroups`).
    cgroup: Option<crate::cgroup::Cgroup>,
    usage: Usage,
    /// This generation's extensions.
    extensions: Registry,
    /// Extensions of generations that were reset, until they have exited or been killed.
    retiring: Vec<Agent>,
    /// A reset's teardown is still under way (extensions handling `SHUTDOWN`); the next
    /// environment starts once it is over.
    tearing_down: bool,
    /// During init: the runtime has asked for its first invocation.
    runtime_ready: bool,
    /// SnapStart: init is over, and the runtime waiting in `/next` takes the snapshot.
    snapshot_due: bool,
    phase: Phase,
    /// The init or restore timeout of the current generation.
    phase_timer: Option<AbortHandle>,
    queue: VecDeque<Queued>,
    current: Option<Current>,
    /// Durations for the REPORT of the first invocation after an init or a restore.
    pending_init_duration: Option<Duration>,
    pending_restore_duration: Option<Duration>,
    /// A restore failure that found no invocation waiting: on Lambda a restore belongs to an
    /// invocation, so the next one gets it.
    kept_failure: Option<Outcome>,
    /// An ended invocation whose END, REPORT and answer wait for the runtime's own word on it
    /// (see `Handle::finish_after_runtime_speaks`).
    deferred: Option<lifecycle::Ending>,
    /// The REPORT of an answered invocation, written (with its END) once the answer has left
    /// (see `Handle::complete`).
    unreported: Option<lifecycle::Unreported>,
    /// An invocation the runtime has answered whose END and REPORT wait for the extensions to
    /// finish their work on it (Lambda's post-invoke phase).
    post_invoke: Option<lifecycle::Ending>,
    shut_down: bool,
}

struct Shared {
    config: EnvironmentConfig,
    runtime_api: SocketAddr,
    log: Arc<dyn LogSink>,
    snapshot: Arc<dyn SnapshotHook>,
    state: Mutex<State>,
    /// Wakes `/next` and `event/next` waiters: an invocation was queued, finished, an
    /// extension moved on, or the environment was reset.
    work: Notify,
    /// Wakes those waiting for a teardown to end.
    teardown_done: Notify,
    /// The Telemetry API's subscribers and what they get.
    telemetry: Telemetry,
}

/// A cloneable handle on the environment, for invocation sources and the Runtime API routes.
/// Its methods spawn tasks, so they must be called within a tokio runtime.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// A new environment whose runtime will reach the Runtime API at `runtime_api`. Nothing
    /// starts until [`Handle::start`] or the first invoke. `snapshot` defaults to
    /// [`NoSnapshot`].
    pub fn new(
        config: EnvironmentConfig,
        runtime_api: SocketAddr,
        log: Arc<dyn LogSink>,
        snapshot: Option<Arc<dyn SnapshotHook>>,
    ) -> Handle {
        Handle {
            shared: Arc::new(Shared {
                config,
                runtime_api,
                log,
                snapshot: snapshot.unwrap_or_else(|| Arc::new(NoSnapshot)),
                state: Mutex::new(State {
                    generation: 0,
                    process: None,
                    cgroup: None,
                    usage: Usage::default(),
                    extensions: Registry::default(),
                    retiring: Vec::new(),
                    tearing_down: false,
                    runtime_ready: false,
                    snapshot_due: false,
                    phase: Phase::Down,
                    phase_timer: None,
                    queue: VecDeque::new(),
                    current: None,
                    pending_init_duration: None,
                    pending_restore_duration: None,
                    kept_failure: None,
                    deferred: None,
                    unreported: None,
                    post_invoke: None,
                    shut_down: false,
                }),
                work: Notify::new(),
                teardown_done: Notify::new(),
                telemetry: Telemetry::default(),
            }),
        }
    }

    pub fn config(&self) -> &EnvironmentConfig {
        &self.shared.config
    }

    /// Writes one line to the environment's log sink.
    pub fn log(&self, line: &str) {
        self.shared.log.line(line);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; were it poisoned, the state is still
        // consistent between statements, so going on beats taking the server down.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts init now when the initialization type asks for it (provisioned concurrency,
    /// SnapStart); on-demand environments start on their first invoke.
    pub fn start(&self) {
        if self.shared.config.init_type.is_eager() {
            let mut state = self.lock();
            if matches!(state.phase, Phase::Down) && !state.shut_down && !state.tearing_down {
                self.spawn_runtime(&mut state);
            }
        }
    }

    /// Runs one invocation and waits for its outcome: queued behind the others (one runs at a
    /// time), the runtime started first if none is up. Dropping the future does not cancel the
    /// invocation: it still runs, and its outcome is discarded. A streamed response is gathered
    /// (up to the synchronous payload limit, as a buffered `Invoke` of a streaming function).
    pub async fn invoke(&self, invocation: Invocation) -> Result<Outcome, InvokeError> {
        let answer = self.invoke_streaming(invocation).await?;
        Ok(answer.gather(proto::runtime_api::SYNC_PAYLOAD_LIMIT).await)
    }

    /// Like [`Handle::invoke`], but a response the runtime streams is handed over as a stream as
    /// soon as it begins, each chunk as the runtime writes it.
    pub async fn invoke_streaming(&self, invocation: Invocation) -> Result<Answer, InvokeError> {
        let receiver = {
            let mut state = self.lock();
            if state.shut_down {
                return Err(InvokeError::ShutDown);
            }
            if let Some(failure) = state.kept_failure.take() {
                return Ok(Answer::Whole(failure));
            }
            // Callers that hung up while waiting hold no place in the queue.
            state.queue.retain(|queued| !queued.reply.is_closed());
            if state.queue.len() >= MAX_QUEUED {
                return Err(InvokeError::QueueFull);
            }
            let (reply, receiver) = oneshot::channel();
            state.queue.push_back(Queued { invocation, reply });
            if matches!(state.phase, Phase::Down) && !state.tearing_down {
                self.spawn_runtime(&mut state);
            }
            receiver
        };
        self.shared.work.notify_waiters();
        receiver.await.map_err(|_| InvokeError::ShutDown)
    }

    /// Kills the runtime and its extensions and refuses invocations from now on; waiting ones
    /// get [`InvokeError::ShutDown`]. Used when the server stops at once.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        state.shut_down = true;
        state.queue.clear();
        state.current = None;
        self.reset(&mut state, ShutdownReason::Spindown);
        for agent in state.retiring.drain(..) {
            if let Some(process) = agent.process.filter(|p| !p.exited) {
                crate::process::kill_group(process.pid);
            }
        }
    }

    /// Like [`Handle::shutdown`], the way Lambda spins an environment down: extensions
    /// registered for `SHUTDOWN` get it, and the runtime SIGTERM, when an external extension
    /// is registered; all of them have until Lambda's shutdown deadline (2 s) to exit before
    /// they are killed. Returns once they are gone.
    pub async fn shutdown_gracefully(&self) {
        let done = {
            let mut state = self.lock();
            state.shut_down = true;
            state.queue.clear();
            state.current = None;
            if state.extensions.has_external() {
                if let Some(process) = &state.process {
                    crate::process::signal_group(process.pgid, libc::SIGTERM);
                }
            }
            self.reset(&mut state, ShutdownReason::Spindown);
            state.tearing_down
        };
        if done {
            self.teardown_finished().await;
        }
    }
}

#[cfg(test)]
mod tests;
