//! The runtime loop: init once, the SnapStart hooks when asked for, then one invocation after
//! another until the Runtime API goes away.

use crate::client::{Client, Invocation};
use crate::error::{error_type, Error};
use crate::handler::{Function, HandlerError};
use crate::streaming::{ResponseWriter, StreamingFunction};
use proto::runtime_api::ErrorRequest;
use std::convert::Infallible;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

/// Why the loop stopped; every variant ends the process with a non-zero status.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the Runtime API failed: {0}")]
    Api(#[from] Error),
    #[error("an invocation without a usable request id cannot be answered: {0}")]
    Unaddressable(Error),
    #[error("init failed: {0}")]
    Init(HandlerError),
    #[error("before-snapshot hook failed: {0}")]
    BeforeSnapshot(HandlerError),
    #[error("after-restore hook failed: {0}")]
    AfterRestore(HandlerError),
    #[error("invocation {request_id} failed and asked the runtime to stop: {error}")]
    Fatal {
        request_id: String,
        error: HandlerError,
    },
}

/// Runs a function against the Runtime API named by `AWS_LAMBDA_RUNTIME_API`.
///
/// `init` runs once; its failure is reported to `init/error`. Then the loop serves invocations
/// until the Runtime API is unreachable, and the returned code is always a failure: a runtime has
/// no reason to stop on its own. The runtime's own diagnostics are `log` lines, written to
/// stderr as `bootstrap: LEVEL message` unless the program installed a `log` backend first.
pub fn run<F: Function>(init: impl FnOnce() -> Result<F, HandlerError>) -> ExitCode {
    logging::init("bootstrap", log::LevelFilter::Info);
    match Client::from_env() {
        Ok(client) => run_with_client(&client, init),
        Err(e) => {
            log(format_args!("cannot start: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// [`run`] with a client of the caller's choosing.
pub fn run_with_client<F: Function>(
    client: &Client,
    init: impl FnOnce() -> Result<F, HandlerError>,
) -> ExitCode {
    logging::init("bootstrap", log::LevelFilter::Info);
    match serve(client, init) {
        Ok(never) => match never {},
        Err(stop) => {
            log(format_args!("{stop}"));
            ExitCode::FAILURE
        }
    }
}

/// Runs a streaming function against the Runtime API named by `AWS_LAMBDA_RUNTIME_API`, as
/// [`run`] does a buffered one: each invocation's response is streamed as the handler writes it.
pub fn run_streaming<F: StreamingFunction>(
    init: impl FnOnce() -> Result<F, HandlerError>,
) -> ExitCode {
    match Client::from_env() {
        Ok(client) => run_streaming_with_client(&client, init),
        Err(e) => {
            log(format_args!("cannot start: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// [`run_streaming`] with a client of the caller's choosing.
pub fn run_streaming_with_client<F: StreamingFunction>(
    client: &Client,
    init: impl FnOnce() -> Result<F, HandlerError>,
) -> ExitCode {
    match serve(client, || guarded(init).map(Streamed)) {
        Ok(never) => match never {},
        Err(stop) => {
            log(format_args!("{stop}"));
            ExitCode::FAILURE
        }
    }
}

/// What the loop runs: a buffered or a streaming function.
trait Handler {
    fn before_snapshot(&mut self) -> Result<(), HandlerError>;
    fn after_restore(&mut self) -> Result<(), HandlerError>;
    fn invoke(&mut self, client: &Client, invocation: Invocation) -> Result<(), Stop>;
}

impl<F: Function> Handler for F {
    fn before_snapshot(&mut self) -> Result<(), HandlerError> {
        Function::before_snapshot(self)
    }
    fn after_restore(&mut self) -> Result<(), HandlerError> {
        Function::after_restore(self)
    }
    fn invoke(&mut self, client: &Client, invocation: Invocation) -> Result<(), Stop> {
        invoke(client, self, invocation)
    }
}

/// A streaming function, as the loop runs it.
struct Streamed<F>(F);

impl<F: StreamingFunction> Handler for Streamed<F> {
    fn before_snapshot(&mut self) -> Result<(), HandlerError> {
        self.0.before_snapshot()
    }
    fn after_restore(&mut self) -> Result<(), HandlerError> {
        self.0.after_restore()
    }
    fn invoke(&mut self, client: &Client, invocation: Invocation) -> Result<(), Stop> {
        invoke_streaming(client, &mut self.0, invocation)
    }
}

fn serve<F: Handler>(
    client: &Client,
    init: impl FnOnce() -> Result<F, HandlerError>,
) -> Result<Infallible, Stop> {
    let mut function = match guarded(init) {
        Ok(function) => function,
        Err(error) => {
            report(client.init_error(&error.to_request()), "init error");
            return Err(Stop::Init(error));
        }
    };
    if client.config().is_snap_start() {
        snap_start(client, &mut function)?;
    }
    loop {
        match client.next() {
            Ok(invocation) => function.invoke(client, invocation)?,
            Err(e) => {
                // A broken invocation is failed on its own, if it can be addressed at all.
                let Some(request_id) = e.invocation_id() else {
                    return Err(match e {
                        Error::MalformedInvocation { .. } => Stop::Unaddressable(e),
                        e => Stop::Api(e),
                    });
                };
                log(format_args!("{e}"));
                let error = ErrorRequest::new(error_type::MALFORMED_INVOCATION, e.to_string());
                report(
                    client.invocation_error(request_id, &error),
                    "invocation error",
                );
            }
        }
    }
}

/// The SnapStart handshake: the snapshot is taken while `restore/next` is pending, so the hook
/// before it runs in the snapshotted process and the hook after it in every restored copy.
fn snap_start(client: &Client, function: &mut impl Handler) -> Result<(), Stop> {
    if let Err(error) = guarded(|| function.before_snapshot()) {
        report(client.init_error(&error.to_request()), "init error");
        return Err(Stop::BeforeSnapshot(error));
    }
    client.restore_next()?;
    if let Err(error) = guarded(|| function.after_restore()) {
        report(client.restore_error(&error.to_request()), "restore error");
        return Err(Stop::AfterRestore(error));
    }
    Ok(())
}

fn invoke(
    client: &Client,
    function: &mut impl Function,
    Invocation { context, event }: Invocation,
) -> Result<(), Stop> {
    set_trace_id(context.trace_id.as_deref());
    let request_id = &context.request_id;
    match guarded(|| function.handle(&event, &context)) {
        // A refused response (413 too large, 4xx for a request the server no longer knows) or
        // a dropped connection concerns this invocation only; whether the Runtime API is still
        // there is for the next `/next` to find out.
        Ok(response) => report(client.respond(request_id, &response), "response"),
        Err(error) => {
            report(
                client.invocation_error(request_id, &error.to_request()),
                "invocation error",
            );
            if error.is_fatal() {
                return Err(Stop::Fatal {
                    request_id: request_id.clone(),
                    error,
                });
            }
        }
    }
    Ok(())
}

/// One invocation of a streaming function: what the handler writes goes out as it writes it;
/// a failure after the first write ends the stream with error trailers, one before it is
/// posted as an ordinary error.
fn invoke_streaming(
    client: &Client,
    function: &mut impl StreamingFunction,
    Invocation { context, event }: Invocation,
) -> Result<(), Stop> {
    set_trace_id(context.trace_id.as_deref());
    let request_id = &context.request_id;
    let mut out = ResponseWriter::new(client.address(), request_id);
    let result = guarded(|| function.handle(&event, &context, &mut out));
    match result {
        Ok(()) => report(out.finish(None), "streamed response"),
        Err(error) if out.started() => {
            report(out.finish(Some(&error.to_request())), "streamed response")
        }
        Err(error) => report(
            client.invocation_error(request_id, &error.to_request()),
            "invocation error",
        ),
    }
    Ok(())
}

/// Runs user code, turning a panic into an error so that one bad invocation does not take the
/// environment down.
fn guarded<T>(f: impl FnOnce() -> Result<T, HandlerError>) -> Result<T, HandlerError> {
    // The function's state may be left half-updated by a panic; Lambda semantics keep the
    // environment anyway (as a thrown exception would in any other runtime).
    panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(HandlerError::from_panic(payload.as_ref())))
}

/// X-Ray SDKs read the trace header from the environment, not from the context.
fn set_trace_id(trace_id: Option<&str>) {
    // The loop is the only writer, and it writes before the handler runs, so no thread of ours
    // reads the environment concurrently.
    // `set_var` panics on a NUL byte; HTTP cannot carry one, but the check is cheaper than trust.
    match trace_id.filter(|value| !value.contains('\0')) {
        Some(value) => std::env::set_var(proto::env::TRACE_ID, value),
        None => std::env::remove_var(proto::env::TRACE_ID),
    }
}

fn report(result: Result<(), Error>, what: &str) {
    if let Err(e) = result {
        log(format_args!("posting the {what} failed: {e}"));
    }
}

fn log(message: std::fmt::Arguments<'_>) {
    log::warn!("{message}");
}
