//! The worker form of the runtime: a [`Function`] whose init starts a long-lived process and
//! whose invocations and hooks are frames exchanged with it (`WORKER_PROTOCOL.md`).

mod process;
mod protocol;

use bootstrap::{error_type, Context, Function, HandlerError};
use process::Process;
use proto::runtime_api::{function_error_type, ErrorRequest};
use protocol::{header, verb, Frame, ProtocolError, ReadError};
use std::path::{Path, PathBuf};

/// Error type of an `INIT_ERROR` frame that names none.
const DEFAULT_INIT_ERROR_TYPE: &str = "Runtime.InitError";
/// Error type of an `ERROR` frame that names none.
const DEFAULT_ERROR_TYPE: &str = "Error";

/// The worker named by `_HANDLER`, and whether it can take an invocation.
pub struct Worker {
    program: PathBuf,
    state: State,
}

enum State {
    /// `ready` is false for a worker restarted after a failed invocation: its `READY` is awaited
    /// only when the next request arrives, so that its init overlaps posting the error and
    /// waiting on `/next`.
    Running { process: Process, ready: bool },
    /// The restart failed; the environment cannot serve another invocation.
    Down(HandlerError),
}

impl Worker {
    /// Starts the worker named by `_HANDLER` and waits for its `READY`: the function's init.
    pub fn from_env() -> Result<Worker, HandlerError> {
        let program = entrypoint(
            std::env::var_os(proto::env::HANDLER).map(PathBuf::from),
            std::env::var_os(proto::env::TASK_ROOT).map(PathBuf::from),
        )?;
        let mut process = spawn(&program)?;
        await_ready(&mut process)?;
        Ok(Worker {
            program,
            state: State::Running {
                process,
                ready: true,
            },
        })
    }

    /// The worker, once it is ready. A failed restart is fatal to the environment.
    fn ready(&mut self) -> Result<&mut Process, HandlerError> {
        if let State::Running {
            process,
            ready: ready @ false,
        } = &mut self.state
        {
            match await_ready(process) {
                Ok(()) => *ready = true,
                Err(e) => self.state = State::Down(e),
            }
        }
        match &mut self.state {
            State::Running { process, .. } => Ok(process),
            State::Down(e) => Err(HandlerError::new(
                e.error_type.clone(),
                format!("restarting the worker failed: {}", e.message),
            )
            .fatal()),
        }
    }

    /// Replaces a worker whose state is unknown (it died or broke the protocol) with a fresh one,
    /// which runs init again.
    fn restart(&mut self) {
        // Dropping the old process kills and reaps it before its successor starts.
        self.state = State::Down(HandlerError::new(error_type::EXIT, "worker is down"));
        self.state = match spawn(&self.program) {
            Ok(process) => State::Running {
                process,
                ready: false,
            },
            Err(e) => {
                log::error!("restarting the worker failed: {e}");
                State::Down(e)
            }
        };
    }

    /// Sends one frame and returns the answer when its verb is `expected`. An `ERROR` answer is
    /// the worker failing the request; anything else leaves the worker in an unknown state, so it
    /// is restarted.
    fn exchange(
        &mut self,
        request: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        expected: &str,
    ) -> Result<Frame, HandlerError> {
        let process = self.ready()?;
        // A worker that stopped reading its stdin has died or is about to: either way what is
        // left to report is how it ended.
        let answer = match process.send(request, headers, body) {
            Ok(()) => process.receive(),
            Err(_) => Err(ReadError::Closed),
        };
        let failure = match answer {
            Ok(frame) if frame.verb == expected => return Ok(frame),
            Ok(frame) if frame.verb == verb::ERROR => {
                return Err(error_from_frame(&frame, DEFAULT_ERROR_TYPE))
            }
            Ok(frame) => protocol_failure(ProtocolError::UnexpectedVerb {
                got: frame.verb,
                expected: format!("{expected} or {}", verb::ERROR),
            }),
            // Lambda's own verdict on a response it cannot carry; the worker did nothing wrong
            // by the protocol and keeps running.
            Err(ReadError::Oversized { verb: got, length })
                if got == expected && got == verb::RESPONSE =>
            {
                return Err(HandlerError::new(
                    function_error_type::RESPONSE_TOO_LARGE,
                    format!(
                        "Response payload size ({length} bytes) exceeded maximum allowed payload size ({} bytes).",
                        protocol::MAX_BODY
                    ),
                ));
            }
            Err(ReadError::Closed) => HandlerError::new(
                error_type::EXIT,
                format!("worker exited during {request} with {}", process.end()),
            ),
            Err(e) => protocol_failure(e),
        };
        log::warn!("{failure}; restarting the worker");
        self.restart();
        Err(failure)
    }
}

impl Function for Worker {
    fn handle(&mut self, event: &[u8], ctx: &Context) -> Result<Vec<u8>, HandlerError> {
        let deadline = ctx.deadline_ms.to_string();
        let mut headers = vec![
            (header::REQUEST_ID, ctx.request_id.as_str()),
            (header::DEADLINE_MS, deadline.as_str()),
            (
                header::INVOKED_FUNCTION_ARN,
                ctx.invoked_function_arn.as_str(),
            ),
        ];
        let optional = [
            (header::TRACE_ID, &ctx.trace_id),
            (header::CLIENT_CONTEXT, &ctx.client_context),
            (header::COGNITO_IDENTITY, &ctx.cognito_identity),
        ];
        headers.extend(
            optional
                .iter()
                .filter_map(|(name, value)| Some((*name, value.as_deref()?))),
        );
        self.exchange(verb::INVOKE, &headers, event, verb::RESPONSE)
            .map(|frame| frame.body)
    }

    fn before_snapshot(&mut self) -> Result<(), HandlerError> {
        self.exchange(verb::BEFORE_SNAPSHOT, &[], &[], verb::OK)
            .map(drop)
    }

    fn after_restore(&mut self) -> Result<(), HandlerError> {
        self.exchange(verb::AFTER_RESTORE, &[], &[], verb::OK)
            .map(drop)
    }
}

/// `_HANDLER` as a path: relative names are relative to the task root (or the working
/// directory), never looked up on `PATH`.
fn entrypoint(
    handler: Option<PathBuf>,
    task_root: Option<PathBuf>,
) -> Result<PathBuf, HandlerError> {
    let handler = handler
        .filter(|h| !h.as_os_str().is_empty())
        .ok_or_else(|| {
            HandlerError::new(
                error_type::INVALID_ENTRYPOINT,
                format!(
                    "{} is not set: it must name the worker executable",
                    proto::env::HANDLER
                ),
            )
        })?;
    if handler.is_absolute() {
        return Ok(handler);
    }
    Ok(task_root
        .filter(|root| !root.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
        .join(handler))
}

fn spawn(program: &Path) -> Result<Process, HandlerError> {
    Process::spawn(program).map_err(|e| {
        HandlerError::new(
            error_type::INVALID_ENTRYPOINT,
            format!("cannot start worker {}: {e}", program.display()),
        )
    })
}

/// Waits for the worker's first frame: `READY` ends init, `INIT_ERROR` or anything else fails it.
fn await_ready(process: &mut Process) -> Result<(), HandlerError> {
    let failure = match process.receive() {
        Ok(frame) if frame.verb == verb::READY => match frame.header(header::PROTOCOL) {
            None | Some(protocol::VERSION) => return Ok(()),
            Some(other) => protocol_failure(ProtocolError::UnsupportedVersion(other.to_owned())),
        },
        Ok(frame) if frame.verb == verb::INIT_ERROR => {
            error_from_frame(&frame, DEFAULT_INIT_ERROR_TYPE)
        }
        Ok(frame) => protocol_failure(ProtocolError::UnexpectedVerb {
            got: frame.verb,
            expected: format!("{} or {}", verb::READY, verb::INIT_ERROR),
        }),
        Err(ReadError::Closed) => HandlerError::new(
            error_type::EXIT,
            format!("worker exited before READY with {}", process.end()),
        ),
        Err(e) => protocol_failure(e),
    };
    process.kill();
    Err(failure)
}

fn protocol_failure(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(error_type::WORKER_PROTOCOL, e.to_string())
}

/// The error an `ERROR` or `INIT_ERROR` frame describes: a JSON error body when the worker says
/// so with `Content-Type: application/json`, otherwise the body as the message.
fn error_from_frame(frame: &Frame, default_type: &str) -> HandlerError {
    let declared_type = frame.header(header::ERROR_TYPE).filter(|t| !t.is_empty());
    let is_json = frame
        .header(header::CONTENT_TYPE)
        .is_some_and(|t| t.starts_with("application/json"));
    if is_json {
        if let Ok(body) = serde_json::from_slice::<ErrorRequest>(&frame.body) {
            let error_type = declared_type
                .or(Some(body.error_type.as_str()).filter(|t| !t.is_empty()))
                .unwrap_or(default_type);
            return HandlerError::new(error_type, body.error_message)
                .with_stack_trace(body.stack_trace);
        }
    }
    HandlerError::new(
        declared_type.unwrap_or(default_type),
        String::from_utf8_lossy(&frame.body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(verb: &str, headers: &[(&str, &str)], body: &[u8]) -> Frame {
        Frame {
            verb: verb.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn relative_handlers_resolve_against_the_task_root() {
        let resolve =
            |h: &str, root: Option<&str>| entrypoint(Some(h.into()), root.map(PathBuf::from));
        assert_eq!(
            resolve("worker.py", Some("/var/task")).unwrap(),
            Path::new("/var/task/worker.py")
        );
        assert_eq!(
            resolve("/opt/w", Some("/var/task")).unwrap(),
            Path::new("/opt/w")
        );
        assert_eq!(resolve("w", None).unwrap(), Path::new("./w"));
        let missing = entrypoint(None, None).unwrap_err();
        assert_eq!(missing.error_type, error_type::INVALID_ENTRYPOINT);
        assert!(entrypoint(Some("".into()), None).is_err());
    }

    #[test]
    fn error_frames_carry_type_and_message() {
        let e = error_from_frame(
            &frame("ERROR", &[("Error-Type", "ValueError")], b"bad value"),
            DEFAULT_ERROR_TYPE,
        );
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            ("ValueError", "bad value")
        );

        let e = error_from_frame(&frame("ERROR", &[], b"\xffx"), DEFAULT_ERROR_TYPE);
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            ("Error", "\u{fffd}x")
        );

        let json = br#"{"errorType":"KeyError","errorMessage":"k","stackTrace":["a","b"]}"#;
        let e = error_from_frame(
            &frame("INIT_ERROR", &[("content-type", "application/json")], json),
            DEFAULT_INIT_ERROR_TYPE,
        );
        assert_eq!(e.error_type, "KeyError");
        assert_eq!(e.message, "k");
        assert_eq!(e.stack_trace, vec!["a", "b"]);

        let e = error_from_frame(
            &frame(
                "INIT_ERROR",
                &[("Content-Type", "application/json")],
                b"not json",
            ),
            DEFAULT_INIT_ERROR_TYPE,
        );
        assert_eq!(e.error_type, DEFAULT_INIT_ERROR_TYPE);
        assert_eq!(e.message, "not json");
    }
}
