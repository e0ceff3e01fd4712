//! Starting and resetting the runtime, and ending invocations: normally, or by timeout, crash,
//! or a failed init or restore.

use super::{Handle, Outcome, Phase, Process, Reset, State};
use crate::process;
use crate::report::{self, Report, Status};
use bytes::Bytes;
use proto::runtime_api::{function_error_type, ErrorRequest};
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

impl Handle {
    /// Starts a runtime process for a new generation. A runtime that cannot be started fails
    /// the waiting invocations one by one, since each would fail the same way.
    pub(super) fn spawn_runtime(&self, state: &mut State) {
        loop {
            state.generation += 1;
            let generation = state.generation;
            let config = &self.shared.config;
            match process::spawn(config, self.shared.runtime_api, self.shared.log.clone()) {
                Ok(runtime) => {
                    state.process = Some(Process {
                        pgid: runtime.pid,
                        output: runtime.output,
                        peak_memory_mb: 0,
                        cgroup: runtime.cgroup,
                        process_limit_hits: 0,
                        oom_kills_before: config.oom_log.as_ref().map_or(0, |l| l.kills_by_now()),
                    });
                    state.phase = Phase::Initializing {
                        started: Instant::now(),
                    };
                    let handle = self.clone();
                    let mut child = runtime.child;
                    // Waiting also reaps it, whatever ends it.
                    tokio::spawn(async move {
                        let status = child.wait().await;
                        handle.on_exit(generation, status.ok());
                    });
                    let handle = self.clone();
                    state.phase_timer = Some(after(config.init_timeout, async move {
                        handle.on_init_timeout(generation);
                    }));
                    return;
                }
                Err(e) => {
                    let error_type = function_error_type::INVALID_ENTRYPOINT;
                    self.log(&format!("rapid: {e}"));
                    state.phase = Phase::Down;
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
        let mut max_memory_used_mb = 0;
        if let Some(process) = state.process.as_mut() {
            process.output.drain();
            process.sample_memory();
            max_memory_used_mb = process.peak_memory_mb;
        }
        let head = state.queue.front().map(|q| q.invocation.request_id.clone());
        let version = &self.shared.config.function_version;
        if let Some(id) = &head {
            self.log(&report::start(id, version));
        }
        self.log(&report::init_report_error(init_time, error_type));
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
            let _ = queued.reply.send(outcome);
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

    /// Kills the runtime and, when invocations are waiting, starts a fresh init for them.
    pub(super) fn reset(&self, state: &mut State) {
        self.complete_deferred(state);
        if let Some(process) = state.process.take() {
            // Its last words first: what it wrote before it is killed belongs to the log.
            process.output.drain();
            process::kill_group(process.pgid);
            if let Some(cgroup) = process.cgroup {
                // Everything in it dies now, before the next runtime starts; the directory goes
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
        }
        if let Some(timer) = state.phase_timer.take() {
            timer.abort();
        }
        if let Some(current) = state.current.take() {
            current.timer.abort();
        }
        state.generation += 1;
        state.phase = Phase::Down;
        state.pending_init_duration = None;
        state.pending_restore_duration = None;
        if !state.queue.is_empty() && !state.shut_down {
            self.spawn_runtime(state);
        }
        self.shared.work.notify_waiters();
    }

    fn on_exit(&self, generation: u64, status: Option<ExitStatus>) {
        let mut state = self.lock();
        if state.generation != generation {
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
        // Killed for memory: Lambda names the cause rather than the signal. (The kernel's
        // log is read now, in case its record of the kill has not been yet.)
        let oom_log = self.shared.config.oom_log.as_ref();
        let out_of_memory = state.process.as_ref().is_some_and(|process| {
            process.ran_out_of_memory()
                || oom_log.is_some_and(|log| log.kills_by_now() > process.oom_kills_before)
        });
        let error_type = if out_of_memory {
            OUT_OF_MEMORY
        } else {
            function_error_type::RUNTIME_EXIT
        };
        let message = format!("Runtime exited with error: {how}");
        let exit = |message: String| {
            let reason = message.clone();
            reset_failure(error_type, message, Reset::RuntimeExit { reason })
        };
        match state.phase {
            Phase::Initializing { started } => {
                let message = format!("{}{message}", self.head_prefix(&state));
                self.fail_init(&mut state, started.elapsed(), error_type, exit(message));
            }
            Phase::Restoring { started } => {
                self.log(&report::restore_report_error(started.elapsed(), error_type));
                let message = format!("{}{message}", self.head_prefix(&state));
                self.fail_restore(&mut state, exit(message));
            }
            Phase::Ready => {
                if let Some(id) = self.unfinished_current(&state) {
                    let outcome = exit(format!("RequestId: {id} Error: {message}"));
                    self.end_invocation(&mut state, outcome, Status::Error(error_type.into()));
                }
            }
            Phase::Down => {}
        }
        self.reset(&mut state);
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
        let message = format!(
            "{}Init timed out after {seconds:.2} seconds",
            self.head_prefix(&state)
        );
        let outcome = failure(error_type, message);
        self.fail_init(&mut state, started.elapsed(), error_type, outcome);
        self.reset(&mut state);
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
        let seconds = self.shared.config.init_timeout.as_secs_f64();
        let message = format!(
            "{}Restore timed out after {seconds:.2} seconds",
            self.head_prefix(&state)
        );
        self.fail_restore(&mut state, failure(error_type, message));
        self.reset(&mut state);
    }

    /// Arms the function timeout of a delivered invocation.
    pub(super) fn arm_timeout(&self, generation: u64, request_id: String) -> AbortHandle {
        let handle = self.clone();
        after(self.shared.config.timeout, async move {
            handle.on_timeout(generation, &request_id);
        })
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
            proto::time::rfc3339_now()
        ));
        let message =
            format!("RequestId: {request_id} Error: Task timed out after {seconds:.2} seconds");
        let outcome = reset_failure(function_error_type::TIMEOUT, message, Reset::Timeout);
        self.end_invocation(&mut state, outcome, Status::Timeout);
        self.reset(&mut state);
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
        let oom_log = self.shared.config.oom_log.as_ref();
        let out_of_memory = state.process.as_ref().is_some_and(|process| {
            process.ran_out_of_memory()
                || oom_log.is_some_and(|log| log.kills() > process.oom_kills_before)
        });
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
        self.reset(state);
    }

    /// Ends the current invocation: the runtime's pending output, END and REPORT, then the
    /// outcome to its invoker, so that an invoker that collects the invocation's log (`LogType:
    /// Tail`) has all of it when the outcome arrives.
    fn end_invocation(&self, state: &mut State, outcome: Outcome, status: Status) {
        if let Some(ending) = self.end_current(state, outcome, status) {
            self.complete(state, ending);
        }
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

    /// Completes a deferred ending, if there is one.
    pub(super) fn complete_deferred(&self, state: &mut State) {
        if let Some(ending) = state.deferred.take() {
            self.complete(state, ending);
        }
    }

    /// Marks the current invocation finished and takes what its END, REPORT and answer need.
    fn end_current(&self, state: &mut State, outcome: Outcome, status: Status) -> Option<Ending> {
        let current = state.current.as_mut().filter(|c| !c.finished)?;
        current.finished = true;
        current.timer.abort();
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
            reply: current.reply.take(),
            outcome,
        })
    }

    fn complete(&self, state: &mut State, ending: Ending) {
        let Ending {
            mut report,
            reply,
            outcome,
        } = ending;
        if let Some(process) = state.process.as_mut() {
            process.output.drain();
            process.sample_memory();
            report.max_memory_used_mb = process.peak_memory_mb;
            if let Some(refused) = process.new_process_limit_hits() {
                self.log(&format!(
                    "rapid: RequestId: {} the function reached its limit of {} processes and threads (forks refused: {refused})",
                    report.request_id,
                    crate::cgroup::MAX_PROCESSES
                ));
            }
        }
        self.log(&report::end(&report.request_id));
        self.log(&report.line());
        if let Some(reply) = reply {
            // The invoker may have gone; the invocation still counts as done.
            let _ = reply.send(outcome);
        }
    }
}

/// An ended invocation's END, REPORT and answer.
pub(super) struct Ending {
    report: Report,
    reply: Option<tokio::sync::oneshot::Sender<Outcome>>,
    outcome: Outcome,
}

/// How long an ended invocation waits for the runtime's word on it before END is written.
const RUNTIME_WORD_GRACE: Duration = Duration::from_millis(200);

/// How long the processes of a reset sandbox may take to exit before its cgroup is given up
/// (and left for the next server's start to remove).
const CGROUP_REMOVAL: Duration = Duration::from_secs(10);

/// Lambda's error type for a function killed for running out of memory.
const OUT_OF_MEMORY: &str = "Runtime.OutOfMemory";

impl Process {
    /// Updates the peak, once per invocation: one read of the cgroup's own high-water mark;
    /// without a cgroup, one pass over the runtime's processes in `/proc`.
    pub(super) fn sample_memory(&mut self) {
        let now = match &self.cgroup {
            Some(cgroup) => cgroup.peak_bytes().unwrap_or(0).div_ceil(1 << 20),
            None => process::max_memory_used_mb(self.pgid),
        };
        self.peak_memory_mb = self.peak_memory_mb.max(now);
    }

    /// Whether the kernel killed a process of this runtime's cgroup for memory (each runtime
    /// has a fresh cgroup, so any kill counts).
    pub(super) fn ran_out_of_memory(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0)
    }

    /// Forks refused by the process limit since the last look, if any.
    fn new_process_limit_hits(&mut self) -> Option<u64> {
        let now = self.cgroup.as_ref()?.process_limit_hits();
        let new = now.checked_sub(self.process_limit_hits).filter(|&n| n > 0);
        self.process_limit_hits = now;
        new
    }
}

/// Runs `then` after `delay` unless aborted first.
fn after(delay: Duration, then: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        then.await;
    })
    .abort_handle()
}
