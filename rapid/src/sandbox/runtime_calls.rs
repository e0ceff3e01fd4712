//! The environment's side of each Runtime API call, as the routes in `runtime_api.rs` hand them
//! in. Every call is checked against the state: a runtime may do things in the wrong order, and
//! the answer is then a 4xx, never a broken environment.

use super::{ApiReply, Current, Delivered, Handle, Outcome, Phase, Queued, State};
use crate::report::{self, Status};
use crate::telemetry::records;
use bytes::Bytes;
use proto::extensions_api::{Event, ShutdownReason, Tracing};
use proto::runtime_api::{error_type, function_error_type, ErrorRequest, SYNC_PAYLOAD_LIMIT};
use proto::InitializationType;
use std::time::Instant;

fn invalid_transition(message: &str) -> ApiReply {
    ApiReply::Rejected(403, error_type::INVALID_STATE_TRANSITION, message.into())
}

fn environment_reset() -> ApiReply {
    ApiReply::Rejected(
        410,
        error_type::ENVIRONMENT_RESET,
        "the environment was reset; this runtime is no longer served".into(),
    )
}

/// The 413 a runtime gets for a body over the sync payload limit.
pub fn too_large() -> ApiReply {
    ApiReply::Rejected(
        413,
        error_type::REQUEST_TOO_LARGE,
        format!("Exceeded maximum allowed payload size ({SYNC_PAYLOAD_LIMIT} bytes)."),
    )
}

impl Handle {
    /// `GET /invocation/next`: long-polls for the next invocation. The first call after a spawn
    /// ends init (once every extension waits for its next event too); the first after
    /// `restore/next` ends the restore.
    ///
    /// A SnapStart runtime that skips `restore/next` and goes straight to `/next` is tolerated:
    /// the snapshot is taken while it waits here (as valid a point as `restore/next`), and it
    /// simply has no after-restore hooks.
    pub async fn next(&self) -> ApiReply {
        let generation = {
            let mut state = self.lock();
            // The runtime has had its say about the invocation the server ended.
            self.complete_deferred(&mut state);
            if self.unfinished_current(&state).is_some() {
                return invalid_transition(
                    "an invocation is in progress: post its response or error first",
                );
            }
            state.current = None;
            match state.phase {
                Phase::Initializing { .. } => {
                    state.runtime_ready = true;
                    self.maybe_end_init(&mut state);
                }
                Phase::Restoring { started } => {
                    state.pending_restore_duration = Some(started.elapsed());
                    self.platform("platform.restoreRuntimeDone", || {
                        records::restore_runtime_done("success", None)
                    });
                    self.platform("platform.restoreReport", || {
                        records::restore_report(started.elapsed(), "success", None)
                    });
                    self.end_phase(&mut state);
                }
                Phase::Ready => {}
                // No runtime is served: this is a killed one whose request was still on its way.
                Phase::Down => return environment_reset(),
            }
            state.generation
        };
        loop {
            let notified = self.shared.work.notified();
            tokio::pin!(notified);
            // Registered before the state is checked, so a wake-up in between is not lost.
            notified.as_mut().enable();
            let snapshot = {
                let mut state = self.lock();
                if state.generation != generation {
                    return environment_reset();
                }
                let snapshot = std::mem::take(&mut state.snapshot_due);
                // Another `/next` of the same runtime may have taken an invocation meanwhile:
                // the environment runs one at a time, and the next waits for the extensions to
                // be done with the last.
                let free = matches!(state.phase, Phase::Ready)
                    && !snapshot
                    && self.unfinished_current(&state).is_none()
                    && state.post_invoke.is_none()
                    && state.extensions.all_idle();
                if free {
                    while let Some(queued) = state.queue.pop_front() {
                        // A caller that hung up before its invocation started does not get it
                        // run: nobody would see the answer, and a retrying client would run it
                        // twice.
                        if queued.reply.is_closed() {
                            let id = &queued.invocation.request_id;
                            self.log(&format!(
                                "rapid: {id}: the caller hung up before the invocation started; dropped"
                            ));
                            continue;
                        }
                        return ApiReply::Next(Box::new(self.deliver(&mut state, queued)));
                    }
                }
                snapshot
            };
            if snapshot {
                if let Err(e) = self.shared.snapshot.snapshot().await {
                    self.log(&format!("rapid: snapshot failed: {e}"));
                }
                continue;
            }
            notified.await;
        }
    }

    fn deliver(&self, state: &mut State, mut queued: Queued) -> Delivered {
        // The last invocation's END and REPORT, if its task has not written them yet (the
        // extensions' post-invoke phase may have ended just now): they come before this START.
        self.write_report(state);
        let config = &self.shared.config;
        let request_id = queued.invocation.request_id.clone();
        self.log(&report::start(&request_id, &config.function_version));
        let timer = self.arm_timeout(state.generation, request_id.clone());
        // One trace for the runtime and the extensions.
        let trace = queued
            .invocation
            .trace_id
            .get_or_insert_with(crate::runtime_api::new_trace_id)
            .clone();
        self.platform("platform.start", || {
            records::start(&request_id, &config.function_version, &trace)
        });
        state.current = Some(Current {
            request_id: request_id.clone(),
            started: Instant::now(),
            reply: Some(queued.reply),
            stream: None,
            finished: false,
            init_duration: state.pending_init_duration.take(),
            restore_duration: state.pending_restore_duration.take(),
            timer: Some(timer),
            trace: trace.clone(),
            delivered_at: std::time::SystemTime::now(),
            first_byte: None,
            produced_bytes: 0,
        });
        let timeout_ms = u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline_ms = proto::time::epoch_ms().saturating_add(timeout_ms);
        let event = Event::Invoke {
            deadline_ms,
            request_id,
            invoked_function_arn: config.function_arn(),
            tracing: Some(Tracing {
                kind: "X-Amzn-Trace-Id".into(),
                value: trace,
            }),
        };
        self.invoke_extensions(state, &event);
        self.shared.work.notify_waiters();
        Delivered {
            invocation: queued.invocation,
            deadline_ms,
            function_arn: config.function_arn(),
        }
    }

    /// When the runtime's `/next` was answered with `request_id`, while that invocation is the
    /// environment's latest (for timing an invocation from outside; nothing records it
    /// otherwise).
    pub fn delivered_at(&self, request_id: &str) -> Option<Instant> {
        let state = self.lock();
        let current = state.current.as_ref()?;
        (current.request_id == request_id).then_some(current.started)
    }

    /// Checks that `request_id` names the invocation in progress, and that it has no answer yet.
    pub(super) fn check_current(&self, state: &State, request_id: &str) -> Result<(), ApiReply> {
        match &state.current {
            Some(c) if c.request_id == request_id && !c.finished && c.stream.is_none() => Ok(()),
            Some(c) if c.request_id == request_id => Err(invalid_transition(
                "the invocation already has a response or error",
            )),
            _ => Err(ApiReply::Rejected(
                400,
                error_type::INVALID_REQUEST_ID,
                "Invalid request ID".into(),
            )),
        }
    }

    /// Whether a response or error for `request_id` would be accepted now: checked before a
    /// body is read, so a stale id costs nothing.
    pub fn precheck(&self, request_id: &str) -> Result<(), ApiReply> {
        self.check_current(&self.lock(), request_id)
    }

    /// `POST /invocation/{id}/response`.
    pub fn respond(&self, request_id: &str, body: Bytes) -> ApiReply {
        let mut state = self.lock();
        if let Err(reply) = self.check_current(&state, request_id) {
            return reply;
        }
        if let Some(current) = state.current.as_mut() {
            current.first_byte = Some(std::time::SystemTime::now());
            current.produced_bytes = body.len() as u64;
        }
        self.finish(&mut state, Outcome::Success(body), Status::Success);
        self.shared.work.notify_waiters();
        ApiReply::Accepted
    }

    /// A response body over the limit (of `size` bytes, when the request said): the invocation
    /// fails, the runtime is told 413.
    pub fn respond_too_large(&self, request_id: &str, size: Option<u64>) -> ApiReply {
        let mut state = self.lock();
        if let Err(reply) = self.check_current(&state, request_id) {
            return reply;
        }
        let error_type = function_error_type::RESPONSE_TOO_LARGE;
        // Lambda's message names the size; a chunked response declared none.
        let size = size.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
        let body = ErrorRequest::new(
            error_type,
            format!(
                "Response payload size{size} exceeded maximum allowed payload size \
                 ({SYNC_PAYLOAD_LIMIT} bytes)."
            ),
        );
        self.finish_after_runtime_speaks(
            &mut state,
            Outcome::failure(body.to_json()),
            Status::Error(error_type.into()),
        );
        self.shared.work.notify_waiters();
        too_large()
    }

    /// `POST /invocation/{id}/error` with an already validated JSON error body.
    pub fn report_error(&self, request_id: &str, body: Bytes) -> ApiReply {
        let mut state = self.lock();
        if let Err(reply) = self.check_current(&state, request_id) {
            return reply;
        }
        // A handled function error: Lambda's REPORT line carries no status for it.
        self.finish(&mut state, Outcome::failure(body), Status::Success);
        self.shared.work.notify_waiters();
        ApiReply::Accepted
    }

    /// `POST /init/error`: fails the invocation that triggered init and resets the environment;
    /// the next invocation inits afresh.
    pub fn init_error(&self, body: Bytes, error_type: &str) -> ApiReply {
        let mut state = self.lock();
        let Phase::Initializing { started } = state.phase else {
            return invalid_transition("init/error is only valid during init");
        };
        self.fail_init(
            &mut state,
            started.elapsed(),
            error_type,
            Outcome::failure(body),
        );
        self.reset(&mut state, ShutdownReason::Failure);
        ApiReply::Accepted
    }

    /// `GET /restore/next`: SnapStart's end of init. Runs the snapshot hook, then answers: the
    /// answer is the restore, and the runtime's after-restore hooks run next.
    pub async fn restore_next(&self) -> ApiReply {
        {
            let state = self.lock();
            if self.shared.config.init_type != InitializationType::SnapStart {
                return invalid_transition(
                    "restore/next is only valid when AWS_LAMBDA_INITIALIZATION_TYPE is snap-start",
                );
            }
            if !matches!(state.phase, Phase::Initializing { .. }) {
                return invalid_transition("restore/next is only valid once, at the end of init");
            }
        }
        // The snapshot holds the extensions ready too: they must all wait for their next event.
        let generation = loop {
            let notified = self.shared.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let Phase::Initializing { started } = state.phase else {
                    return environment_reset();
                };
                if state.extensions.externals_registered() && state.extensions.all_idle() {
                    // Init is over; the restore timeout starts once the snapshot hook is done,
                    // since a snapshot may sit on disk for any length of time.
                    self.init_over(&mut state, started);
                    state.phase = Phase::Restoring {
                        started: Instant::now(),
                    };
                    break state.generation;
                }
            }
            notified.await;
        };
        if let Err(e) = self.shared.snapshot.snapshot().await {
            self.log(&format!("rapid: snapshot failed: {e}"));
        }
        let mut state = self.lock();
        if state.generation != generation {
            return environment_reset();
        }
        if let Phase::Restoring { .. } = state.phase {
            state.phase = Phase::Restoring {
                started: Instant::now(),
            };
            self.arm_restore_timeout(&mut state);
            let config = &self.shared.config;
            self.platform("platform.restoreStart", || {
                records::restore_start(&config.function_name, &config.function_version)
            });
        }
        ApiReply::Empty
    }

    /// `POST /restore/error`: the after-restore hooks failed. The invocation the restore is for
    /// gets the error, and the environment is reset.
    pub fn restore_error(&self, body: Bytes, error_type: &str) -> ApiReply {
        let mut state = self.lock();
        let Phase::Restoring { started } = state.phase else {
            return invalid_transition("restore/error is only valid after restore/next");
        };
        self.log(&report::restore_report_error(started.elapsed(), error_type));
        self.restore_failed_records(started.elapsed(), error_type);
        self.fail_restore(&mut state, Outcome::failure(body));
        self.reset(&mut state, ShutdownReason::Failure);
        ApiReply::Accepted
    }
}
