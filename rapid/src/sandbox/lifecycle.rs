//! Starting and resetting the environment (its external extensions, then its runtime), and
//! ending invocations: normally, or by timeout, crash, or a failed init or restore.

use super::{
    Answer, Handle, Outcome, Phase, Process, Reset, ShutdownReason, State, StreamEnd, StreamSender,
};
use crate::config::MemorySource;
use crate::extensions::{self, Agent, AgentState};
use crate::process;
use crate::report::{self, Report, Status};
use crate::telemetry::records;
use bytes::Bytes;
use proto::extensions_api::{failure_type, Event, EventType, MAX_EXTENSIONS};
use proto::runtime_api::{function_error_type, ErrorRequest};
use proto::telemetry_api::Category;
use serde_json::Value;
use std::future::Future;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

fn failure(error_type: &str, message: String) -> Outcome {
    Outcome::failure(ErrorRequest::new(error_type, message).to_json())
}

/// A failure that reset the environment: its runtime is gone.
fn reset_failure(error_type: &str, message: String, reset: Reset) -> Outcome {
    Outcome::Failure {
        body: Bytes::from(ErrorRequest::new(error_type, message).to_json()),
        reset: Some(reset),
    }
}

/// Why an environment could not be started: the error type and what happened.
struct StartFailure(&'static str, String);

impl Handle {
    /// Starts a new generation of the environment: its external extensions, and its runtime
    /// once they have registered (at once without any). An environment that cannot be started
    /// fails the waiting invocations one by one, since each would fail the same way.
    pub(super) fn spawn_runtime(&self, state: &mut State) {
        loop {
            match self.start_environment(state) {
                Ok(()) => return,
                Err(StartFailure(error_type, e)) => {
                    self.log(&format!("rapid: {e}"));
                    self.discard_environment(state);
                    let Some(head) = state.queue.front() else {
                        self.log(&report::init_report_error(Duration::ZERO, error_type));
                        return;
                    };
                    let message = format!("RequestId: {} Error: {e}", head.invocation.request_id);
                    self.fail_init(
                        state,
                        Duration::ZERO,
                        error_type,
                        failure(error_type, message),
                    );
                    if state.queue.is_empty() {
                        return;
                    }
                }
            }
        }
    }

    fn start_environment(&self, state: &mut State) -> Result<(), StartFailure> {
        state.generation += 1;
        state.phase = Phase::Initializing {
            started: Instant::now(),
        };
        state.runtime_ready = false;
        state.snapshot_due = false;
        state.usage = Default::default();
        let oom_log = self.shared.config.oom_log.as_ref();
        state.usage.oom_kills_before = oom_log.map_or(0, |log| log.kills_by_now());
        state.extensions = Default::default();
        let config = &self.shared.config;
        let generation = state.generation;
        self.shared.telemetry.begin_init();
        self.platform("platform.initStart", || {
            records::init_start(
                config.init_type,
                &config.function_name,
                &config.function_version,
            )
        });
        let handle = self.clone();
        state.phase_timer = Some(after(config.init_timeout, async move {
            handle.on_init_timeout(generation);
        }));
        let invalid = |e: &dyn std::fmt::Display| {
            StartFailure(function_error_type::INVALID_ENTRYPOINT, e.to_string())
        };
        state.cgroup = process::new_cgroup(config).map_err(|e| invalid(&e))?;
        let found = match &config.extensions_dir {
            Some(dir) => extensions::discover(dir).map_err(|e| {
                let message = format!("cannot list the extensions in {}: {e}", dir.display());
                StartFailure(failure_type::LAUNCH_ERROR, message)
            })?,
            None => Vec::new(),
        };
        if found.len() > MAX_EXTENSIONS {
            let message = format!(
                "{} extensions, more than the {MAX_EXTENSIONS} an environment takes",
                found.len()
            );
            return Err(StartFailure(failure_type::LAUNCH_ERROR, message));
        }
        for path in found {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let log = (self.shared.telemetry).tee(Category::Extension, self.shared.log.clone());
            let spawned = process::spawn(
                config,
                &path,
                &[],
                self.shared.runtime_api,
                log,
                state.cgroup.as_ref(),
            )
            .map_err(|e| {
                StartFailure(failure_type::LAUNCH_ERROR, format!("extension {name}: {e}"))
            })?;
            let pid = spawned.pid;
            state
                .extensions
                .agents
                .push(Agent::external(name, pid, spawned.output));
            let handle = self.clone();
            let mut child = spawned.child;
            // Waiting also reaps it, whatever ends it.
            tokio::spawn(async move {
                let status = child.wait().await;
                handle.on_extension_exit(pid, status.ok());
            });
        }
        if state.extensions.externals_registered() {
            self.start_runtime_process(state)?;
        }
        Ok(())
    }

    /// Starts the runtime of the current generation (its extensions have registered).
    fn start_runtime_process(&self, state: &mut State) -> Result<(), StartFailure> {
        let config = &self.shared.config;
        let log = (self.shared.telemetry).tee(Category::Function, self.shared.log.clone());
        let runtime = process::spawn(
            config,
            &config.runtime,
            &config.runtime_args,
            self.shared.runtime_api,
            log,
            state.cgroup.as_ref(),
        )
        .map_err(|e| StartFailure(function_error_type::INVALID_ENTRYPOINT, e.to_string()))?;
        state.process = Some(Process {
            pgid: runtime.pid,
            output: runtime.output,
        });
        let (handle, generation, pid) = (self.clone(), state.generation, runtime.pid);
        let mut child = runtime.child;
        // Waiting also reaps it, whatever ends it.
        tokio::spawn(async move {
            let status = child.wait().await;
            handle.on_exit(generation, pid, status.ok());
        });
        Ok(())
    }

    /// The last external extension has registered: the runtime starts now. One that cannot
    /// fails the init.
    pub(super) fn extensions_registered(&self, state: &mut State) {
        if state.process.is_some() || !matches!(state.phase, Phase::Initializing { .. }) {
            return;
        }
        if let Err(StartFailure(error_type, e)) = self.start_runtime_process(state) {
            self.log(&format!("rapid: {e}"));
            let Phase::Initializing { started } = state.phase else {
                return;
            };
            let message = format!("{}{e}", self.head_prefix(state));
            self.fail_init(
                state,
                started.elapsed(),
                error_type,
                failure(error_type, message),
            );
            self.reset(state, ShutdownReason::Failure);
        }
    }

    /// Kills what a failed start left running, without any shutdown.
    fn discard_environment(&self, state: &mut State) {
        if let Some(timer) = state.phase_timer.take() {
            timer.abort();
        }
        for agent in state.extensions.agents.drain(..) {
            if let Some(process) = &agent.process {
                process.output.drain();
                process::kill_group(process.pid);
            }
        }
        if let Some(process) = state.process.take() {
            process::kill_group(process.pgid);
        }
        self.remove_cgroup(state.cgroup.take());
        state.generation += 1;
        state.phase = Phase::Down;
    }

    /// Init is over when the runtime and every extension wait for their next event (and every
    /// external extension has registered).
    pub(super) fn maybe_end_init(&self, state: &mut State) {
        let Phase::Initializing { started } = state.phase else {
            return;
        };
        if !state.runtime_ready
            || !state.extensions.externals_registered()
            || !state.extensions.all_idle()
        {
            return;
        }
        // Lambda puts an on-demand init in the first invocation's REPORT; a provisioned
        // environment's init was nobody's invocation, so it gets a line of its own.
        if self.shared.config.init_type == proto::InitializationType::OnDemand {
            state.pending_init_duration = Some(started.elapsed());
        } else {
            self.log(&report::init_report(started.elapsed()));
        }
        self.init_over(state, started);
        self.end_phase(state);
        state.snapshot_due = self.shared.config.init_type == proto::InitializationType::SnapStart;
        self.shared.work.notify_waiters();
    }

    /// Init has succeeded (the runtime and every extension are ready): its records, and
    /// nothing registers or subscribes from now on.
    pub(super) fn init_over(&self, state: &mut State, started: Instant) {
        state.extensions.closed = true;
        if let Some(timer) = state.phase_timer.take() {
            timer.abort();
        }
        self.sample_memory(state);
        let init_type = self.shared.config.init_type;
        for agent in &state.extensions.agents {
            self.platform("platform.extension", || {
                records::extension(&agent.name, "Ready", agent.event_names())
            });
        }
        self.platform("platform.initRuntimeDone", || {
            records::init_runtime_done(init_type, "success", None)
        });
        self.platform("platform.initReport", || {
            records::init_report(init_type, started.elapsed(), "success", None)
        });
        self.shared.telemetry.end_init();
    }

    /// Init or restore is over: the runtime is ready for invocations, and nothing registers
    /// from now on.
    pub(super) fn end_phase(&self, state: &mut State) {
        state.phase = Phase::Ready;
        state.extensions.closed = true;
        if let Some(timer) = state.phase_timer.take() {
            timer.abort();
        }
        self.sample_memory(state);
    }

    /// Hands an invocation to the extensions registered for `INVOKE`.
    pub(super) fn invoke_extensions(&self, state: &mut State, event: &Event) {
        for agent in &mut state.extensions.agents {
            if agent.subscribed(EventType::Invoke) && agent.state != AgentState::Failed {
                agent.pending = Some(event.clone());
            }
        }
    }

    /// Ends a failed init: the runtime's last output, then (when an invocation's arrival
    /// started the init) that invocation's START, the INIT_REPORT, its END and REPORT, as
    /// Lambda logs an invocation whose init failed; the invocation fails with `outcome`.
    pub(super) fn fail_init(
        &self,
        state: &mut State,
        init_time: Duration,
        error_type: &str,
        outcome: Outcome,
    ) {
        if let Some(process) = state.process.as_mut() {
            process.output.drain();
        }
        self.sample_memory(state);
        let max_memory_used_mb = state.usage.peak_memory_mb;
        let head = state.queue.front().map(|q| q.invocation.request_id.clone());
        let version = &self.shared.config.function_version;
        if let Some(id) = &head {
            self.log(&report::start(id, version));
        }
        self.log(&report::init_report_error(init_time, error_type));
        let (init_type, status) = (
            self.shared.config.init_type,
            records::failed_phase(error_type),
        );
        self.platform("platform.initRuntimeDone", || {
            records::init_runtime_done(init_type, status, Some(error_type.into()))
        });
        self.platform("platform.initReport", || {
            records::init_report(init_type, init_time, status, Some(error_type.into()))
        });
        self.shared.telemetry.end_init();
        if let Some(request_id) = head {
            self.log(&report::end(&request_id));
            let report = Report {
                request_id,
                duration: init_time,
                memory_size_mb: self.shared.config.memory_mb,
                max_memory_used_mb,
                init_duration: None,
                restore_duration: None,
                status: Status::Error(error_type.into()),
            };
            self.log(&report.line());
        }
        self.fail_head(state, outcome);
    }

    /// Fails the oldest waiting invocation: the one whose arrival started the failed init.
    pub(super) fn fail_head(&self, state: &mut State, outcome: Outcome) {
        if let Some(queued) = state.queue.pop_front() {
            let _ = queued.reply.send(Answer::Whole(outcome));
        }
    }

    /// Like [`Self::fail_head`] for a failed restore; with nobody waiting, the next invocation
    /// gets it.
    pub(super) fn fail_restore(&self, state: &mut State, outcome: Outcome) {
        if state.queue.is_empty() {
            if let Outcome::Failure { .. } = outcome {
                state.kept_failure = Some(outcome);
            }
        } else {
            self.fail_head(state, outcome);
        }
    }

    /// `RequestId: <id> Error: ` for the invocation a failed init or restore belongs to.
    pub(super) fn head_prefix(&self, state: &State) -> String {
        state
            .queue
            .front()
            .map(|q| format!("RequestId: {} Error: ", q.invocation.request_id))
            .unwrap_or_default()
    }

    /// Ends the environment: the runtime is killed at once (it was given its SIGTERM before, if
    /// it gets one), extensions registered for `SHUTDOWN` get it with `reason` and Lambda's
    /// deadline, the others are killed; once they are all gone (or the deadline passed and
    /// they were killed) the next environment starts, if invocations are waiting.
    pub(super) fn reset(&self, state: &mut State, reason: ShutdownReason) {
        self.complete_deferred(state);
        if let Some(ending) = state.post_invoke.take() {
            self.complete(state, ending);
        }
        let graceful = reason == ShutdownReason::Spindown && state.extensions.has_external();
        if let Some(process) = state.process.take() {
            // Its last words first: what it wrote before it is killed belongs to the log.
            process.output.drain();
            if !graceful {
                process::kill_group(process.pgid);
            } else {
                // Killed with the rest once the extensions are done (or at the deadline).
                state.retiring.push(Agent {
                    id: String::new(),
                    name: "runtime".into(),
                    process: Some(extensions::ExternalProcess {
                        pid: process.pgid,
                        output: process.output,
                        exited: false,
                    }),
                    events: Vec::new(),
                    state: AgentState::Failed,
                    pending: None,
                });
            }
        }
        if let Some(timer) = state.phase_timer.take() {
            timer.abort();
        }
        if let Some(timer) = state.current.take().and_then(|c| c.timer) {
            timer.abort();
        }
        let deadline = Instant::now() + SHUTDOWN_DEADLINE;
        let deadline_ms = proto::time::epoch_ms()
            + u64::try_from(SHUTDOWN_DEADLINE.as_millis()).unwrap_or(u64::MAX);
        let shutdown = Event::Shutdown {
            shutdown_reason: reason,
            deadline_ms,
        };
        for mut agent in state.extensions.agents.drain(..) {
            let Some(process) = &agent.process else {
                // An internal extension ends with its runtime.
                continue;
            };
            if process.exited {
                continue;
            }
            process.output.drain();
            let told = agent.subscribed(EventType::Shutdown)
                && matches!(agent.state, AgentState::Ready | AgentState::Running);
            if told {
                agent.pending = Some(shutdown.clone());
            } else if agent.state != AgentState::Failed {
                // Not registered for SHUTDOWN: nothing to wait for.
                process::kill_group(process.pid);
            }
            state.retiring.push(agent);
        }
        state.generation += 1;
        state.phase = Phase::Down;
        state.pending_init_duration = None;
        state.pending_restore_duration = None;
        state.runtime_ready = false;
        state.snapshot_due = false;
        let cgroup = state.cgroup.take();
        // What the subscribers hold goes out now: the environment is ending.
        self.shared.telemetry.flush();
        if state.retiring.iter().any(Agent::is_running) {
            state.tearing_down = true;
            let handle = self.clone();
            tokio::spawn(async move { handle.teardown(deadline, cgroup).await });
        } else {
            state.retiring.clear();
            self.shared.telemetry.retire_before(state.generation);
            self.remove_cgroup(cgroup);
            if !state.queue.is_empty() && !state.shut_down && !state.tearing_down {
                self.spawn_runtime(state);
            }
        }
        self.shared.work.notify_waiters();
    }

    /// Waits until the retiring processes have exited or the deadline has passed, kills what
    /// is left, and starts the next environment if invocations wait.
    async fn teardown(&self, deadline: Instant, cgroup: Option<crate::cgroup::Cgroup>) {
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            let notified = self.shared.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock().retiring.iter().any(Agent::is_running) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let mut state = self.lock();
        for agent in state.retiring.drain(..) {
            if let Some(process) = agent.process.filter(|p| !p.exited) {
                process.output.drain();
                self.log(&format!(
                    "rapid: {} did not exit by the shutdown deadline; killed",
                    agent.name
                ));
                process::kill_group(process.pid);
            }
        }
        self.remove_cgroup(cgroup);
        self.shared.telemetry.retire_before(state.generation);
        state.tearing_down = false;
        if !state.queue.is_empty() && !state.shut_down && matches!(state.phase, Phase::Down) {
            self.spawn_runtime(&mut state);
        }
        self.shared.teardown_done.notify_waiters();
        self.shared.work.notify_waiters();
    }

    /// Returns once no teardown is under way.
    pub(super) async fn teardown_finished(&self) {
        loop {
            let done = self.shared.teardown_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.lock().tearing_down {
                return;
            }
            done.await;
        }
    }

    /// Kills everything left in a generation's cgroup and removes it once its processes have
    /// exited.
    fn remove_cgroup(&self, cgroup: Option<crate::cgroup::Cgroup>) {
        let Some(cgroup) = cgroup else {
            return;
        };
        // Everything in it dies now, before the next environment starts; the directory goes
        // once the last of them has exited.
        cgroup.kill();
        let log = self.shared.log.clone();
        tokio::spawn(async move {
            let path = cgroup.path().display().to_string();
            if !crate::cgroup::remove(cgroup, CGROUP_REMOVAL).await {
                log.line(&format!("rapid: cannot remove {path}: processes remain"));
            }
        });
    }

    fn on_exit(&self, generation: u64, pid: i32, status: Option<ExitStatus>) {
        let mut state = self.lock();
        if self.retired_exit(&mut state, pid) || state.generation != generation {
            return;
        }
        self.complete_deferred(&mut state);
        // Its last words belong before the error report.
        if let Some(process) = &state.process {
            process.output.drain();
        }
        let how = status
            .map(process::describe_exit)
            .unwrap_or_else(|| "unknown status".into());
        // Killed for memory: Lambda names the cause rather than the signal.
        let out_of_memory = self.ran_out_of_memory(&state, true);
        let error_type = if out_of_memory {
            OUT_OF_MEMORY
        } else {
            function_error_type::RUNTIME_EXIT
        };
        let message = format!("Runtime exited with error: {how}");
        self.environment_failed(&mut state, error_type, &message);
    }

    /// An external extension's process exited. Past its generation (it was shutting down)
    /// that is what was asked of it; in a live environment it is a crash that fails whatever
    /// the environment was doing, and resets it.
    fn on_extension_exit(&self, pid: i32, status: Option<ExitStatus>) {
        let mut state = self.lock();
        let how = status
            .map(process::describe_exit)
            .unwrap_or_else(|| "unknown status".into());
        if self.retired_exit(&mut state, pid) {
            return;
        }
        let Some(agent) = state
            .extensions
            .agents
            .iter_mut()
            .find(|a| a.process.as_ref().is_some_and(|p| p.pid == pid))
        else {
            return;
        };
        if let Some(process) = agent.process.as_mut() {
            process.output.drain();
            process.exited = true;
        }
        let name = agent.name.clone();
        if state.shut_down {
            return;
        }
        let error_type = failure_type::CRASH;
        let message = format!("Extension {name} exited: {how}");
        self.log(&format!(
            "rapid: extension {name} exited ({how}); the environment is reset"
        ));
        self.environment_failed(&mut state, error_type, &message);
    }

    /// Marks a process of a generation being torn down as exited; false if `pid` is none of
    /// them.
    fn retired_exit(&self, state: &mut State, pid: i32) -> bool {
        let Some(agent) = state
            .retiring
            .iter_mut()
            .find(|a| a.process.as_ref().is_some_and(|p| p.pid == pid))
        else {
            return false;
        };
        if let Some(process) = agent.process.as_mut() {
            process.output.drain();
            process.exited = true;
        }
        self.shared.work.notify_waiters();
        true
    }

    /// Fails what the environment was doing (its init, restore, or invocation) with
    /// `error_type` and `message`, then resets it with reason `failure`.
    pub(super) fn environment_failed(&self, state: &mut State, error_type: &str, message: &str) {
        let outcome = |message: String| {
            let reason = message.clone();
            reset_failure(error_type, message, Reset::RuntimeExit { reason })
        };
        match state.phase {
            Phase::Initializing { started } => {
                let message = format!("{}{message}", self.head_prefix(state));
                self.fail_init(state, started.elapsed(), error_type, outcome(message));
            }
            Phase::Restoring { started } => {
                self.log(&report::restore_report_error(started.elapsed(), error_type));
                self.restore_failed_records(started.elapsed(), error_type);
                let message = format!("{}{message}", self.head_prefix(state));
                self.fail_restore(state, outcome(message));
            }
            Phase::Ready => {
                if let Some(id) = self.unfinished_current(state) {
                    let outcome = outcome(format!("RequestId: {id} Error: {message}"));
                    self.end_invocation(state, outcome, Status::Error(error_type.into()));
                } else if let Some(ending) = state.post_invoke.as_mut() {
                    // The runtime had answered; the extensions' part failed.
                    ending.report.status = Status::Error(error_type.into());
                }
            }
            Phase::Down => {}
        }
        self.reset(state, ShutdownReason::Failure);
    }

    fn on_init_timeout(&self, generation: u64) {
        let mut state = self.lock();
        let Phase::Initializing { started } = state.phase else {
            return;
        };
        if state.generation != generation {
            return;
        }
        let error_type = function_error_type::INIT_TIMEOUT;
        let seconds = self.shared.config.init_timeout.as_secs_f64();
        let mut laggards = state.extensions.laggards();
        if state.process.is_some() && !state.runtime_ready {
            laggards.insert(0, "the runtime did not ask for an invocation".into());
        }
        let why = match laggards.is_empty() {
            true => String::new(),
            false => format!(": {}", laggards.join("; ")),
        };
        let message = format!(
            "{}Init timed out after {seconds:.2} seconds{why}",
            self.head_prefix(&state)
        );
        let outcome = failure(error_type, message);
        self.fail_init(&mut state, started.elapsed(), error_type, outcome);
        self.reset(&mut state, ShutdownReason::Timeout);
    }

    /// Arms the restore timeout: the runtime's after-restore hooks get as long as init did.
    pub(super) fn arm_restore_timeout(&self, state: &mut State) {
        let handle = self.clone();
        let generation = state.generation;
        state.phase_timer = Some(after(self.shared.config.init_timeout, async move {
            handle.on_restore_timeout(generation);
        }));
    }

    fn on_restore_timeout(&self, generation: u64) {
        let mut state = self.lock();
        let Phase::Restoring { started } = state.phase else {
            return;
        };
        if state.generation != generation {
            return;
        }
        let error_type = function_error_type::INIT_TIMEOUT;
        self.log(&report::restore_report_error(started.elapsed(), error_type));
        self.restore_failed_records(started.elapsed(), error_type);
        let seconds = self.shared.config.init_timeout.as_secs_f64();
        let message = format!(
            "{}Restore timed out after {seconds:.2} seconds",
            self.head_prefix(&state)
        );
        self.fail_restore(&mut state, failure(error_type, message));
        self.reset(&mut state, ShutdownReason::Timeout);
    }

    /// Arms the function timeout of a delivered invocation.
    pub(super) fn arm_timeout(&self, generation: u64, request_id: String) -> AbortHandle {
        let handle = self.clone();
        after(self.shared.config.timeout, async move {
            handle.on_timeout(generation, &request_id);
        })
    }

    /// The function timeout bounds the runtime's work and the extensions' work after it.
    fn on_timeout(&self, generation: u64, request_id: &str) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        let running = self.unfinished_current(&state).as_deref() == Some(request_id);
        let extensions_busy = state
            .post_invoke
            .as_ref()
            .is_some_and(|e| e.report.request_id == request_id);
        if !running && !extensions_busy {
            return;
        }
        let seconds = self.shared.config.timeout.as_secs_f64();
        self.log(&format!(
            "{} {request_id} Task timed out after {seconds:.2} seconds",
            proto::time::rfc3339_now()
        ));
        if running {
            let message =
                format!("RequestId: {request_id} Error: Task timed out after {seconds:.2} seconds");
            let outcome = reset_failure(function_error_type::TIMEOUT, message, Reset::Timeout);
            self.end_invocation(&mut state, outcome, Status::Timeout);
        } else if let Some(ending) = state.post_invoke.as_mut() {
            ending.report.status = Status::Timeout;
        }
        self.reset(&mut state, ShutdownReason::Timeout);
    }

    pub(super) fn unfinished_current(&self, state: &State) -> Option<String> {
        state
            .current
            .as_ref()
            .filter(|c| !c.finished)
            .map(|c| c.request_id.clone())
    }

    /// Ends the current invocation as the runtime asked (its response or error): see
    /// [`Self::end_invocation`]. If a process of the sandbox was killed for memory meanwhile,
    /// the invocation fails with `Runtime.OutOfMemory` instead and the environment is reset,
    /// as on Lambda: whatever the function was doing is lost with that process.
    pub(super) fn finish(&self, state: &mut State, outcome: Outcome, status: Status) {
        let out_of_memory = self.ran_out_of_memory(state, false);
        let Some(id) = self.unfinished_current(state).filter(|_| out_of_memory) else {
            return self.end_invocation(state, outcome, status);
        };
        let message = format!(
            "RequestId: {id} Error: a process of the function ran out of memory (Memory Size: {} MB) and was killed",
            self.shared.config.memory_mb
        );
        let reason = message.clone();
        let outcome = reset_failure(OUT_OF_MEMORY, message, Reset::RuntimeExit { reason });
        self.end_invocation(state, outcome, Status::Error(OUT_OF_MEMORY.into()));
        self.reset(state, ShutdownReason::Failure);
    }

    /// Ends the current invocation: the runtime's pending output, END and REPORT, then the
    /// outcome to its invoker, so that an invoker that collects the invocation's log (`LogType:
    /// Tail`) has all of it when the outcome arrives. While extensions still work on the
    /// invocation, the invoker gets its answer now and END and REPORT wait for them.
    fn end_invocation(&self, state: &mut State, outcome: Outcome, status: Status) {
        let Some(mut ending) = self.end_current(state, outcome, status) else {
            return;
        };
        if state.extensions.all_idle() {
            return self.complete(state, ending);
        }
        self.answer(&mut ending);
        state.post_invoke = Some(ending);
    }

    /// The extensions have all finished their work on the invocation the runtime answered:
    /// its END and REPORT, and the environment takes the next invocation.
    pub(super) fn extensions_done(&self, state: &mut State) {
        if !state.extensions.all_idle() {
            return;
        }
        if let Some(ending) = state.post_invoke.take() {
            self.complete(state, ending);
        }
        self.shared.work.notify_waiters();
    }

    /// Like [`Self::finish`], for an invocation the server ended while the runtime still has
    /// something to say about it (the 413 for an oversized response, which the runtime then
    /// logs): END, REPORT and the answer wait for the runtime's next call, or a moment, so that
    /// its line comes first, as on Lambda.
    pub(super) fn finish_after_runtime_speaks(
        &self,
        state: &mut State,
        outcome: Outcome,
        status: Status,
    ) {
        let Some(ending) = self.end_current(state, outcome, status) else {
            return;
        };
        self.complete_deferred(state);
        state.deferred = Some(ending);
        let (handle, generation) = (self.clone(), state.generation);
        // Not kept: a reset or the runtime's next call completes it first, and then this finds
        // nothing to do.
        let _ = after(RUNTIME_WORD_GRACE, async move {
            let mut state = handle.lock();
            if state.generation == generation {
                handle.complete_deferred(&mut state);
            }
        });
    }

    /// Completes a deferred ending, if there is one, and writes a REPORT still to come: what
    /// the environment does next comes after them in the log.
    pub(super) fn complete_deferred(&self, state: &mut State) {
        if let Some(ending) = state.deferred.take() {
            self.end_invocation_ending(state, ending);
        }
        self.write_report(state);
    }

    /// [`Self::end_invocation`] for an ending already taken.
    fn end_invocation_ending(&self, state: &mut State, mut ending: Ending) {
        if state.extensions.all_idle() {
            return self.complete(state, ending);
        }
        self.answer(&mut ending);
        state.post_invoke = Some(ending);
    }

    /// Marks the current invocation finished and takes what its END, REPORT and answer need.
    fn end_current(&self, state: &mut State, outcome: Outcome, status: Status) -> Option<Ending> {
        let current = state.current.as_mut().filter(|c| !c.finished)?;
        current.finished = true;
        let function_error = matches!(outcome, Outcome::Failure { .. });
        let telemetry = &self.shared.telemetry;
        if telemetry.listened() {
            let (status_name, error_type) = records::status(&status, function_error);
            let done = std::time::SystemTime::now();
            telemetry.platform(
                "platform.runtimeDone",
                records::runtime_done(records::RuntimeDone {
                    request_id: &current.request_id,
                    trace: &current.trace,
                    status: status_name,
                    error_type,
                    delivered: current.delivered_at,
                    first_byte: current.first_byte.unwrap_or(done),
                    done,
                    produced_bytes: current.produced_bytes,
                }),
            );
        }
        let report = Report {
            request_id: current.request_id.clone(),
            duration: current.started.elapsed(),
            memory_size_mb: self.shared.config.memory_mb,
            max_memory_used_mb: 0,
            init_duration: current.init_duration,
            restore_duration: current.restore_duration,
            status,
        };
        Some(Ending {
            report,
            trace: current.trace.clone(),
            function_error,
            started: current.started,
            timer: current.timer.take(),
            reply: current.reply.take(),
            stream: current.stream.take(),
            outcome: Some(outcome),
        })
    }

    /// Sends the invoker its answer, if it has not had it.
    fn answer(&self, ending: &mut Ending) {
        let Some(outcome) = ending.outcome.take() else {
            return;
        };
        if let Some(reply) = ending.reply.take() {
            // The invoker may have gone; the invocation still counts as done.
            let _ = reply.send(Answer::Whole(outcome));
        } else if let Some(stream) = ending.stream.take() {
            // Behind the chunks already passed on; a slow invoker must not hold the state.
            let end = match outcome {
                Outcome::Success(_) => StreamEnd::Complete,
                Outcome::Failure { body, reset } => StreamEnd::Failed { body, reset },
            };
            tokio::spawn(async move { stream.end(end).await });
        }
    }

    /// Ends the invocation: the REPORT's duration taken now (so that it covers the extensions'
    /// work), the answer sent if the invoker has not had it, then END and REPORT written after
    /// the answer has left: the runtime's last output drained and the memory sampled first, on
    /// a task of their own that runs after the tasks the answer woke (in a microVM: the
    /// answer's way out to the host), since the invoker waits for none of it. Whatever the
    /// environment does next writes them first if the task has not yet
    /// ([`Self::complete_deferred`]), so the log keeps its order; an invoker that collects the
    /// log (`LogType: Tail`) waits for the REPORT.
    fn complete(&self, state: &mut State, mut ending: Ending) {
        if let Some(timer) = ending.timer.take() {
            timer.abort();
        }
        ending.report.duration = ending.started.elapsed();
        self.answer(&mut ending);
        self.write_report(state);
        state.unreported = Some(Unreported {
            report: ending.report,
            trace: ending.trace,
            function_error: ending.function_error,
        });
        let handle = self.clone();
        tokio::spawn(async move {
            // Once round the scheduler and the reactor: the answer's tasks go first.
            tokio::task::yield_now().await;
            let mut state = handle.lock();
            handle.write_report(&mut state);
        });
    }

    /// Writes the END and REPORT of the invocation last answered, if they are still to come.
    pub(super) fn write_report(&self, state: &mut State) {
        let Some(Unreported {
            mut report,
            trace,
            function_error,
        }) = state.unreported.take()
        else {
            return;
        };
        if let Some(process) = state.process.as_mut() {
            process.output.drain();
        }
        for agent in &state.extensions.agents {
            if let Some(process) = &agent.process {
                process.output.drain();
            }
        }
        self.sample_memory(state);
        report.max_memory_used_mb = state.usage.peak_memory_mb;
        if let Some(refused) = self.new_process_limit_hits(state) {
            self.log(&format!(
                "rapid: RequestId: {} the function reached its limit of {} processes and threads (forks refused: {refused})",
                report.request_id,
                crate::cgroup::MAX_PROCESSES
            ));
        }
        self.log(&report::end(&report.request_id));
        self.log(&report.line());
        self.platform("platform.report", || {
            records::report(&report, Some(&trace), function_error)
        });
    }

    /// A platform record for the Telemetry API's subscribers, built only if anybody listens.
    pub(super) fn platform(&self, kind: &str, record: impl FnOnce() -> Value) {
        let telemetry = &self.shared.telemetry;
        if telemetry.listened() {
            telemetry.platform(kind, record());
        }
    }

    /// The records of a failed restore.
    pub(super) fn restore_failed_records(&self, duration: Duration, error_type: &str) {
        let status = records::failed_phase(error_type);
        self.platform("platform.restoreRuntimeDone", || {
            records::restore_runtime_done(status, Some(error_type.into()))
        });
        self.platform("platform.restoreReport", || {
            records::restore_report(duration, status, Some(error_type.into()))
        });
    }

    /// Updates the peak, once per invocation: one read of the cgroup's own high-water mark;
    /// without a cgroup, the machine's memory in use when the machine is the sandbox (one
    /// `sysinfo(2)`), else one pass over the runtime's processes in `/proc`.
    pub(super) fn sample_memory(&self, state: &mut State) {
        let now = match (
            &state.cgroup,
            self.shared.config.memory_source,
            &state.process,
        ) {
            (Some(cgroup), _, _) => cgroup.peak_bytes().unwrap_or(0).div_ceil(1 << 20),
            (None, MemorySource::Machine, _) => process::machine_memory_used_mb(),
            (None, MemorySource::Processes, Some(process)) => {
                process::max_memory_used_mb(process.pgid)
            }
            (None, MemorySource::Processes, None) => 0,
        };
        state.usage.peak_memory_mb = state.usage.peak_memory_mb.max(now);
    }

    /// Whether the kernel killed a process of this environment for memory: in its cgroup (each
    /// generation has a fresh one, so any kill counts), or, for an environment that is the
    /// whole machine, any kill in the kernel's log since it started (`fresh`: the log is read
    /// now, in case the kill's record has not been yet).
    fn ran_out_of_memory(&self, state: &State, fresh: bool) -> bool {
        let logged = self.shared.config.oom_log.as_ref().is_some_and(|log| {
            let kills = if fresh {
                log.kills_by_now()
            } else {
                log.kills()
            };
            kills > state.usage.oom_kills_before
        });
        logged || state.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0)
    }

    /// Forks refused by the process limit since the last look, if any.
    fn new_process_limit_hits(&self, state: &mut State) -> Option<u64> {
        let now = state.cgroup.as_ref()?.process_limit_hits();
        let new = now
            .checked_sub(state.usage.process_limit_hits)
            .filter(|&n| n > 0);
        state.usage.process_limit_hits = now;
        new
    }
}

/// An ended invocation's END, REPORT and answer.
pub(super) struct Ending {
    pub(super) report: Report,
    trace: String,
    /// The runtime reported a function error (its `error` post).
    function_error: bool,
    started: Instant,
    /// The function timeout, still armed while the extensions work on the invocation.
    timer: Option<AbortHandle>,
    reply: Option<tokio::sync::oneshot::Sender<Answer>>,
    /// The response stream, when the runtime streamed its response: it ends with the outcome.
    stream: Option<StreamSender>,
    /// `None` once the invoker has its answer.
    outcome: Option<Outcome>,
}

/// How long an ended invocation waits for the runtime's word on it before END is written.
const RUNTIME_WORD_GRACE: Duration = Duration::from_millis(200);

/// How long the processes of a reset sandbox may take to exit before its cgroup is given up
/// (and left for the next server's start to remove).
const CGROUP_REMOVAL: Duration = Duration::from_secs(10);

/// How long extensions have to handle `SHUTDOWN` and exit: Lambda's shutdown phase with
/// external extensions registered.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(2000);

/// Lambda's error type for a function killed for running out of memory.
const OUT_OF_MEMORY: &str = "Runtime.OutOfMemory";

/// What an answered invocation's END, REPORT and platform record still need.
pub(super) struct Unreported {
    report: Report,
    trace: String,
    function_error: bool,
}

/// Runs `then` after `delay` unless aborted first.
fn after(delay: Duration, then: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        then.await;
    })
    .abort_handle()
}
