//! One function environment: the runtime's lifecycle (init, restore, invoke, reset) and the
//! queue of invocations, shared by the Runtime API routes and every invocation source.
//!
//! State lives behind one mutex that is never held across an `.await`. Each runtime process
//! gets a new generation number; events from an older generation (a late exit, a timer of a
//! killed runtime, a `/next` waiter of a dead runtime) are ignored, which is what keeps a reset
//! from leaking into the next environment.

use crate::config::{FunctionConfig, InitType};
use crate::process;
use crate::report::{self, Report, Status};
use bytes::Bytes;
use proto::runtime_api::{function_error_type, ErrorRequest};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Most invocations that may wait for the environment at once.
pub const MAX_QUEUED: usize = 128;

/// Where platform and function log lines go.
pub trait LogSink: Send + Sync {
    fn line(&self, line: &str);
}

/// Writes each line to stdout at once.
pub struct StdoutLog;

impl LogSink for StdoutLog {
    fn line(&self, line: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Called when a SnapStart runtime reaches `restore/next`, before it is answered: the place to
/// pause the environment and snapshot it. Local mode has nothing to snapshot.
pub trait SnapshotHook: Send + Sync {
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

struct NoSnapshot;

impl SnapshotHook for NoSnapshot {
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// One invocation, as any source hands it in.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    pub event: Bytes,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

impl Invocation {
    pub fn new(event: Bytes) -> Self {
        Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            event,
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        }
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(Bytes),
    /// The function or its environment failed; the body is Lambda's error JSON.
    Failure(Bytes),
}

/// Why a queued invocation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    #[error("too many invocations are waiting ({MAX_QUEUED})")]
    QueueFull,
    #[error("the environment shut down before the invocation finished")]
    ShutDown,
}

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
    pub deadline_ms: u64,
    pub function_arn: String,
}

struct Queued {
    invocation: Invocation,
    reply: Option<oneshot::Sender<Outcome>>,
}

struct Current {
    request_id: String,
    started: Instant,
    reply: Option<oneshot::Sender<Outcome>>,
    finished: bool,
    init_duration: Option<Duration>,
    restore_duration: Option<Duration>,
}

enum Phase {
    /// No runtime process.
    Down,
    /// Started, not yet in its first `/next` (or `restore/next`).
    Initializing { started: Instant },
    /// Answered `restore/next`; the first `/next` ends the restore.
    Restoring { init: Duration, started: Instant },
    /// Polling for invocations. The durations go on the first REPORT.
    Ready,
}

struct State {
    generation: u64,
    pgid: i32,
    phase: Phase,
    queue: VecDeque<Queued>,
    current: Option<Current>,
    pending_init_duration: Option<Duration>,
    pending_restore_duration: Option<Duration>,
}

struct Shared {
    config: FunctionConfig,
    runtime_api: SocketAddr,
    log: Arc<dyn LogSink>,
    snapshot: Arc<dyn SnapshotHook>,
    state: Mutex<State>,
    work: Notify,
}

/// A cloneable handle on the environment, for invocation sources and the Runtime API routes.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// A new environment. Nothing starts until [`Handle::start`] or the first invoke.
    pub fn new(
        config: FunctionConfig,
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
                    pgid: 0,
                    phase: Phase::Down,
                    queue: VecDeque::new(),
                    current: None,
                    pending_init_duration: None,
                    pending_restore_duration: None,
                }),
                work: Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &FunctionConfig {
        &self.shared.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state itself stays consistent enough to go on.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, line: &str) {
        self.shared.log.line(line);
    }

    /// Starts init now when the initialization type asks for it (provisioned concurrency,
    /// SnapStart); on-demand environments start on their first invoke.
    pub fn start(&self) {
        if self.shared.config.init_type.is_eager() {
            let mut state = self.lock();
            self.spawn_runtime(&mut state);
        }
    }

    /// Runs one invocation and waits for its outcome. Dropping the future does not cancel the
    /// invocation: it still runs, and its outcome is discarded.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Outcome, InvokeError> {
        let receiver = {
            let mut state = self.lock();
            if state.queue.len() >= MAX_QUEUED {
                return Err(InvokeError::QueueFull);
            }
            let (sender, receiver) = oneshot::channel();
            state.queue.push_back(Queued {
                invocation,
                reply: Some(sender),
            });
            if matches!(state.phase, Phase::Down) {
                self.spawn_runtime(&mut state);
            }
            receiver
        };
        self.shared.work.notify_waiters();
        receiver.await.map_err(|_| InvokeError::ShutDown)
    }

    /// Kills the runtime; used when the server shuts down.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        process::kill_group(state.pgid);
        state.generation += 1;
        state.phase = Phase::Down;
    }

    fn spawn_runtime(&self, state: &mut State) {
        state.generation += 1;
        let generation = state.generation;
        let log = Arc::clone(&self.shared.log);
        let sink: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |line: &str| log.line(line));
        match process::spawn(&self.shared.config, self.shared.runtime_api, sink) {
            Ok(runtime) => {
                state.pgid = runtime.pid;
                state.phase = Phase::Initializing {
                    started: Instant::now(),
                };
                let handle = self.clone();
                let mut child = runtime.child;
                tokio::spawn(async move {
                    let status = child.wait().await;
                    handle.on_exit(generation, status.ok());
                });
                let handle = self.clone();
                let init_timeout = self.shared.config.init_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(init_timeout).await;
                    handle.on_init_timeout(generation);
                });
            }
            Err(e) => {
                self.log(&format!("lambda-local: {e}"));
                state.phase = Phase::Down;
                let body = ErrorRequest::new(function_error_type::RUNTIME_EXIT, e.to_string());
                self.fail_head(state, Outcome::Failure(body.to_json().into()));
            }
        }
    }

    /// Fails the oldest waiting invocation (the one that triggered a failed init).
    fn fail_head(&self, state: &mut State, outcome: Outcome) {
        if let Some(mut queued) = state.queue.pop_front() {
            if let Some(reply) = queued.reply.take() {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Kills the runtime and, when invocations are waiting, starts a fresh init for them.
    fn reset(&self, state: &mut State) {
        process::kill_group(state.pgid);
        state.generation += 1;
        state.phase = Phase::Down;
        state.pending_init_duration = None;
        state.pending_restore_duration = None;
        if !state.queue.is_empty() {
            self.spawn_runtime(state);
        }
        self.shared.work.notify_waiters();
    }

    fn on_exit(&self, generation: u64, status: Option<std::process::ExitStatus>) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        let how = status
            .map(process::describe_exit)
            .unwrap_or_else(|| "unknown status".into());
        let error_type = function_error_type::RUNTIME_EXIT;
        if let Phase::Initializing { started } | Phase::Restoring { started, .. } = state.phase {
            self.log(&report::init_report_error(started.elapsed(), error_type));
            let message = format!("Runtime exited with error: {how}");
            let body = ErrorRequest::new(error_type, message).to_json();
            self.fail_head(&mut state, Outcome::Failure(body.into()));
        } else if let Some(id) = self.unfinished_current(&state) {
            let message = format!("RequestId: {id} Error: Runtime exited with error: {how}");
            let body = ErrorRequest::new(error_type, message).to_json();
            self.finish(
                &mut state,
                Outcome::Failure(body.into()),
                Status::Error(error_type.into()),
            );
        }
        self.reset(&mut state);
    }

    fn on_init_timeout(&self, generation: u64) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        if let Phase::Initializing { started } = state.phase {
            let error_type = function_error_type::INIT_TIMEOUT;
            self.log(&report::init_report_error(started.elapsed(), error_type));
            let seconds = self.shared.config.init_timeout.as_secs_f64();
            let message = format!("Init timed out after {seconds:.2} seconds");
            self.fail_head(
                &mut state,
                Outcome::Failure(ErrorRequest::new(error_type, message).to_json().into()),
            );
            self.reset(&mut state);
        }
    }

    fn on_timeout(&self, generation: u64, request_id: &str) {
        let mut state = self.lock();
        if state.generation != generation
            || self.unfinished_current(&state).as_deref() != Some(request_id)
        {
            return;
        }
        let seconds = self.shared.config.timeout.as_secs_f64();
        self.log(&format!(
            "{} {request_id} Task timed out after {seconds:.2} seconds",
            crate::time::rfc3339_now()
        ));
        let message =
            format!("RequestId: {request_id} Error: Task timed out after {seconds:.2} seconds");
        let body = ErrorRequest::new(function_error_type::TIMEOUT, message).to_json();
        self.finish(&mut state, Outcome::Failure(body.into()), Status::Timeout);
        self.reset(&mut state);
    }

    fn unfinished_current(&self, state: &State) -> Option<String> {
        state
            .current
            .as_ref()
            .filter(|c| !c.finished)
            .map(|c| c.request_id.clone())
    }

    /// Ends the current invocation: END and REPORT lines, and the outcome to its invoker.
    fn finish(&self, state: &mut State, outcome: Outcome, status: Status) {
        let pgid = state.pgid;
        let Some(current) = state.current.as_mut().filter(|c| !c.finished) else {
            return;
        };
        current.finished = true;
        let report = Report {
            request_id: current.request_id.clone(),
            duration: current.started.elapsed(),
            memory_size_mb: self.shared.config.memory_mb,
            max_memory_used_mb: process::max_memory_used_mb(pgid),
            init_duration: current.init_duration,
            restore_duration: current.restore_duration,
            status,
        };
        if let Some(reply) = current.reply.take() {
            let _ = reply.send(outcome);
        }
        self.log(&report::end(&report.request_id));
        self.log(&report.line());
    }

    // ---- Runtime API ----

    /// `GET /invocation/next`: long-polls for the next invocation.
    pub async fn next(&self) -> ApiReply {
        let generation = {
            let mut state = self.lock();
            if self.unfinished_current(&state).is_some() {
                return invalid_transition(
                    "an invocation is in progress: post its response or error first",
                );
            }
            state.current = None;
            match state.phase {
                Phase::Initializing { started } => {
                    if self.shared.config.init_type == InitType::SnapStart {
                        return invalid_transition(
                            "a SnapStart runtime calls restore/next after init",
                        );
                    }
                    state.pending_init_duration = Some(started.elapsed());
                    state.phase = Phase::Ready;
                }
                Phase::Restoring { started, .. } => {
                    state.pending_restore_duration = Some(started.elapsed());
                    state.phase = Phase::Ready;
                }
                Phase::Ready | Phase::Down => {}
            }
            state.generation
        };
        loop {
            let notified = self.shared.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.generation != generation {
                    return ApiReply::Rejected(
                        410,
                        "EnvironmentReset",
                        "the environment was reset".into(),
                    );
                }
                if let Some(queued) = state.queue.pop_front() {
                    return ApiReply::Next(Box::new(self.deliver(&mut state, queued)));
                }
            }
            notified.await;
        }
    }

    fn deliver(&self, state: &mut State, queued: Queued) -> Delivered {
        let config = &self.shared.config;
        let request_id = queued.invocation.request_id.clone();
        self.log(&report::start(&request_id, &config.function_version));
        state.current = Some(Current {
            request_id: request_id.clone(),
            started: Instant::now(),
            reply: queued.reply,
            finished: false,
            init_duration: state.pending_init_duration.take(),
            restore_duration: state.pending_restore_duration.take(),
        });
        let handle = self.clone();
        let generation = state.generation;
        let timeout = config.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            handle.on_timeout(generation, &request_id);
        });
        Delivered {
            invocation: queued.invocation,
            deadline_ms: crate::time::epoch_ms() + timeout.as_millis() as u64,
            function_arn: config.function_arn(),
        }
    }

    /// Checks that `request_id` names the invocation in progress.
    fn check_current(&self, state: &State, request_id: &str) -> Result<(), ApiReply> {
        match &state.current {
            Some(c) if c.request_id == request_id && !c.finished => Ok(()),
            Some(c) if c.request_id == request_id => Err(invalid_transition(
                "the invocation already has a response or error",
            )),
            _ => Err(ApiReply::Rejected(
                400,
                proto::runtime_api::error_type::INVALID_REQUEST_ID,
                "Invalid request ID".into(),
            )),
        }
    }

    /// Whether a response or error for `request_id` would be accepted now.
    pub fn precheck(&self, request_id: &str) -> Result<(), ApiReply> {
        self.check_current(&self.lock(), request_id)
    }

    /// `POST /invocation/{id}/response`.
    pub fn respond(&self, request_id: &str, body: Bytes) -> ApiReply {
        let mut state = self.lock();
        if let Err(reply) = self.check_current(&state, request_id) {
            return reply;
        }
        self.finish(&mut state, Outcome::Success(body), Status::Success);
        ApiReply::Accepted
    }

    /// A response body over the limit: the invoke fails, the runtime is told 413.
    pub fn respond_too_large(&self, request_id: &str) -> ApiReply {
        let mut state = self.lock();
        if let Err(reply) = self.check_current(&state, request_id) {
            return reply;
        }
        let limit = proto::runtime_api::SYNC_PAYLOAD_LIMIT;
        let error_type = function_error_type::RESPONSE_TOO_LARGE;
        let body = ErrorRequest::new(
            error_type,
            format!("Response payload size exceeded maximum allowed payload size ({limit} bytes)."),
        );
        self.finish(
            &mut state,
            Outcome::Failure(body.to_json().into()),
            Status::Error(error_type.into()),
        );
        too_large()
    }

    /// `POST /invocation/{id}/error` with an already validated JSON error body.
    pub fn report_error(&self, request_id: &str, body: Bytes) -> ApiReply {
        let mut state = self.lock();
        if let Err(reply) = self.check_current(&state, request_id) {
            return reply;
        }
        self.finish(&mut state, Outcome::Failure(body), Status::Success);
        ApiReply::Accepted
    }

    /// `POST /init/error`: fails the invoke that triggered init and resets the environment.
    pub fn init_error(&self, body: Bytes, error_type: &str) -> ApiReply {
        let mut state = self.lock();
        let Phase::Initializing { started } = state.phase else {
            return invalid_transition("init/error is only valid during init");
        };
        self.log(&report::init_report_error(started.elapsed(), error_type));
        self.fail_head(&mut state, Outcome::Failure(body));
        self.reset(&mut state);
        ApiReply::Accepted
    }

    /// `GET /restore/next`: SnapStart's end of init. Snapshots, then answers: the answer is the
    /// restore.
    pub async fn restore_next(&self) -> ApiReply {
        let generation = {
            let mut state = self.lock();
            if self.shared.config.init_type != InitType::SnapStart {
                return invalid_transition(
                    "restore/next is only valid when AWS_LAMBDA_INITIALIZATION_TYPE is snap-start",
                );
            }
            let Phase::Initializing { started } = state.phase else {
                return invalid_transition("restore/next is only valid once, at the end of init");
            };
            state.phase = Phase::Restoring {
                init: started.elapsed(),
                started: Instant::now(),
            };
            state.generation
        };
        if let Err(e) = self.shared.snapshot.snapshot().await {
            self.log(&format!("lambda-local: snapshot failed: {e}"));
        }
        let mut state = self.lock();
        if state.generation != generation {
            return ApiReply::Rejected(410, "EnvironmentReset", "the environment was reset".into());
        }
        if let Phase::Restoring { init, .. } = state.phase {
            state.phase = Phase::Restoring {
                init,
                started: Instant::now(),
            };
        }
        ApiReply::Empty
    }

    /// `POST /restore/error`: the after-restore hooks failed.
    pub fn restore_error(&self, body: Bytes, error_type: &str) -> ApiReply {
        let mut state = self.lock();
        let Phase::Restoring { started, .. } = state.phase else {
            return invalid_transition("restore/error is only valid after restore/next");
        };
        self.log(&report::init_report_error(started.elapsed(), error_type));
        self.fail_head(&mut state, Outcome::Failure(body));
        self.reset(&mut state);
        ApiReply::Accepted
    }
}

fn invalid_transition(message: &str) -> ApiReply {
    ApiReply::Rejected(
        403,
        proto::runtime_api::error_type::INVALID_STATE_TRANSITION,
        message.into(),
    )
}

/// The 413 a runtime gets for a body over the sync payload limit.
pub fn too_large() -> ApiReply {
    ApiReply::Rejected(
        413,
        proto::runtime_api::error_type::REQUEST_TOO_LARGE,
        format!(
            "Exceeded maximum allowed payload size ({} bytes).",
            proto::runtime_api::SYNC_PAYLOAD_LIMIT
        ),
    )
}
