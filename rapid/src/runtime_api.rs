//! The Runtime API routes (`/2018-06-01/runtime/*`) over a [`Handle`].

use crate::sandbox::{too_large, ApiReply, Delivered, Handle};
use bytes::Bytes;
use http_server::{self as http, BodyError, Reply};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::Request;
use proto::runtime_api::{
    error_type, header, ErrorRequest, Route, RouteError, RESPONSE_MODE_STREAMING,
    SYNC_PAYLOAD_LIMIT,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Error bodies are small; a runtime posting megabytes of them is misbehaving.
const ERROR_BODY_LIMIT: usize = 1024 * 1024;
const UNHANDLED: &str = proto::runtime_api::function_error_type::UNHANDLED;
const RESTORE_ERROR: &str = proto::runtime_api::function_error_type::RESTORE_ERROR;

/// Answers one Runtime API request. `/next` and `restore/next` long-poll; bodies are read with
/// hard limits, and a connection whose body was refused unread is closed.
pub async fn handle(sandbox: Handle, request: Request<Incoming>) -> Reply {
    // The Extensions API (and the Telemetry API) share the runtime's address.
    if crate::extensions::api::serves(request.uri().path()) {
        return crate::extensions::api::handle(sandbox, request).await;
    }
    if crate::telemetry::api::serves(request.uri().path()) {
        return crate::telemetry::api::handle(sandbox, request).await;
    }
    let route = match Route::parse(request.method().as_str(), request.uri().path()) {
        Ok(route) => route,
        Err(RouteError::NotFound) => {
            return http::error(
                404,
                error_type::NOT_FOUND,
                &format!("no such endpoint: {}", request.uri().path()),
            )
        }
        Err(RouteError::MethodNotAllowed) => {
            return http::error(
                405,
                error_type::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        }
    };
    let reply = match route {
        Route::Next => sandbox.next().await,
        Route::RestoreNext => sandbox.restore_next().await,
        Route::Response(id) => {
            if let Err(reply) = sandbox.precheck(&id) {
                return to_http(reply);
            }
            let mode = request.headers().get(header::RESPONSE_MODE);
            if let Some(mode) = mode {
                if !mode
                    .as_bytes()
                    .eq_ignore_ascii_case(RESPONSE_MODE_STREAMING.as_bytes())
                {
                    let message = format!(
                        "{} must be {RESPONSE_MODE_STREAMING:?}, got {mode:?}",
                        header::RESPONSE_MODE
                    );
                    return http::error(400, error_type::INVALID_REQUEST, &message);
                }
                let reply = crate::response_stream::respond(&sandbox, &id, request).await;
                let refused = matches!(reply, ApiReply::Rejected(413, ..));
                let reply = to_http(answered_first(reply).await);
                // A refused upload was not read to its end.
                return if refused { http::close(reply) } else { reply };
            }
            match http::read_body(request, SYNC_PAYLOAD_LIMIT).await {
                Ok(body) => answered_first(sandbox.respond(&id, body)).await,
                Err(BodyError::TooLarge { declared, .. }) => {
                    return http::close(to_http(sandbox.respond_too_large(&id, declared)))
                }
                Err(e) => return refused(&e),
            }
        }
        Route::Error(id) => {
            if let Err(reply) = sandbox.precheck(&id) {
                return to_http(reply);
            }
            match error_body(request, UNHANDLED).await {
                Ok((body, _)) => answered_first(sandbox.report_error(&id, body)).await,
                Err(reply) => return reply,
            }
        }
        Route::InitError => match error_body(request, UNHANDLED).await {
            Ok((body, error_type)) => sandbox.init_error(body, &error_type),
            Err(reply) => return reply,
        },
        Route::RestoreError => match error_body(request, RESTORE_ERROR).await {
            Ok((body, error_type)) => sandbox.restore_error(body, &error_type),
            Err(reply) => return reply,
        },
    };
    to_http(reply)
}

/// Lets the tasks an invocation's outcome woke (its caller's) run before the runtime is
/// answered: the caller is waiting, while all the runtime does next is its next `/next`. On a
/// one-CPU guest the runtime, woken by its answer, would otherwise run first, and the invocation
/// would wait for it.
async fn answered_first(reply: ApiReply) -> ApiReply {
    if matches!(reply, ApiReply::Accepted) {
        after_ready_tasks().await;
    }
    reply
}

/// Waits until every task that is ready now has run and the reactor has been polled once more
/// (without blocking): `tokio::task::yield_now`, made to hold even when the caller's task polls
/// it again before it was woken (hyper polls a handler several times in one turn, and a second
/// poll ends a plain yield).
async fn after_ready_tasks() {
    let woken = Arc::new(Woken::default());
    let mut deferred = Some(Box::pin(tokio::task::yield_now()));
    std::future::poll_fn(|cx| {
        *woken.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // The runtime wakes the waker given to `yield_now` only after its turn; ours marks that
        // and passes the wake on. A yield ended early by a second poll has left ours with the
        // runtime all the same.
        if let Some(yielding) = deferred.as_mut() {
            let ours = Waker::from(Arc::clone(&woken));
            if yielding
                .as_mut()
                .poll(&mut Context::from_waker(&ours))
                .is_ready()
            {
                deferred = None;
            }
        }
        if woken.done.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

#[derive(Default)]
struct Woken {
    done: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            waker.wake();
        }
    }
}

/// Reads and checks an error post. Tolerant where the official clients differ: the error-type
/// header is optional, the stack may be under `trace`, and `Content-Type` may be missing.
/// Returns the body to hand to the invoker and the error type (`default_type` when neither the
/// header nor the body names one); or the HTTP answer refusing the post.
async fn error_body(
    request: Request<Incoming>,
    default_type: &str,
) -> Result<(Bytes, String), Reply> {
    let header_type = request
        .headers()
        .get(header::FUNCTION_ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match http::read_body(request, ERROR_BODY_LIMIT).await {
        Ok(body) => body,
        Err(BodyError::TooLarge { .. }) => return Err(http::close(to_http(too_large()))),
        Err(e) => return Err(refused(&e)),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        let error_type = header_type.unwrap_or_else(|| default_type.into());
        let built = ErrorRequest::new(error_type.clone(), "");
        return Ok((built.to_json().into(), error_type));
    }
    match serde_json::from_slice::<ErrorRequest>(&body) {
        Ok(parsed) => {
            let error_type = if parsed.error_type.is_empty() {
                header_type.unwrap_or_else(|| default_type.into())
            } else {
                parsed.error_type
            };
            Ok((body, error_type))
        }
        // The invocation stays open: the runtime may post a correct body, or the timeout ends
        // it. Nothing the function produced is lost.
        Err(e) => Err(http::error(
            400,
            error_type::INVALID_ERROR_BODY,
            &format!("the error body is not Lambda's error JSON: {e}"),
        )),
    }
}

/// A body that could not be read (cut short, or too slow): the connection is closed, since
/// what is left of the body on it was not read.
fn refused(error: &BodyError) -> Reply {
    http::close(http::error(
        error.status(),
        error_type::INVALID_REQUEST,
        &error.to_string(),
    ))
}

pub(crate) fn to_http(reply: ApiReply) -> Reply {
    match reply {
        ApiReply::Accepted => http::json(202, r#"{"status":"OK"}"#),
        ApiReply::Empty => http::json(200, Bytes::new()),
        ApiReply::Rejected(status, error_type, message) => {
            http::error(status, error_type, &message)
        }
        ApiReply::Next(delivered) => {
            let Delivered {
                invocation,
                deadline_ms,
                function_arn,
            } = *delivered;
            let mut reply = http::json(200, invocation.event);
            let headers = reply.headers_mut();
            let mut set = |name: &'static str, value: &str| {
                // Values come from our own ids or were validated as header values on the way in.
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(name, value);
                }
            };
            set(header::REQUEST_ID, &invocation.request_id);
            set(header::DEADLINE_MS, &deadline_ms.to_string());
            set(header::INVOKED_FUNCTION_ARN, &function_arn);
            let trace = invocation.trace_id.unwrap_or_else(new_trace_id);
            set(header::TRACE_ID, &trace);
            if let Some(context) = &invocation.client_context {
                set(header::CLIENT_CONTEXT, context);
            }
            if let Some(identity) = &invocation.cognito_identity {
                set(header::COGNITO_IDENTITY, identity);
            }
            reply
        }
    }
}

/// An X-Ray trace header for an invoke that came without one: 96 random bits for the root, 64
/// for the parent, drawn in one system call (each is one more trip through the emulator in a
/// guest).
pub(crate) fn new_trace_id() -> String {
    let mut random = [0u8; 20];
    fill_random(&mut random);
    let (root, parent) = random.split_at(12);
    let epoch = proto::time::epoch_ms() / 1000;
    format!(
        "Root=1-{epoch:08x}-{};Parent={};Sampled=0",
        hex(root),
        hex(parent)
    )
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Fills `buf` from the kernel's CRNG (as `uuid` would, but in one call for all of it).
fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, exclusively borrowed byte
        // slice; getrandom(2) writes at most that many bytes into it.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(got) {
            Ok(n) => filled += n,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            // No getrandom(2) (a kernel before 3.17): uuid has its own way to randomness.
            Err(_) => {
                for chunk in rest.chunks_mut(16) {
                    let bytes = uuid::Uuid::new_v4().into_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_trace_ids_have_xray_shape() {
        let id = super::new_trace_id();
        let parts: Vec<&str> = id.split(';').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert!(parts[0].starts_with("Root=1-") && parts[0].len() == "Root=1-".len() + 8 + 1 + 24);
        assert!(parts[1].starts_with("Parent=") && parts[1].len() == "Parent=".len() + 16);
        assert_eq!(parts[2], "Sampled=0");
        assert_ne!(id, super::new_trace_id(), "each one is drawn afresh");
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        assert!(hex(&parts[0][7..15]) && hex(&parts[0][16..]) && hex(&parts[1][7..]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_runtime_is_answered_after_the_tasks_already_ready() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let ran = Arc::clone(&ran);
            tokio::spawn(async move {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Polled over and over, as hyper polls a handler: it still waits for the others.
        let mut wait = Box::pin(super::after_ready_tasks());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..5 {
            assert!(std::future::Future::poll(wait.as_mut(), &mut cx).is_pending());
        }
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        wait.await;
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }
}
