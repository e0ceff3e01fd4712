//! The HTTP/1.1 server behind every listening socket of the platform (the Runtime API, the
//! invoke endpoint, the function host's front door): the accept loop with connection limits,
//! bounded body reads, the watch for a caller who hung up, and JSON and Lambda error replies.

pub mod body;

pub use body::{Body, BodyClosed, BodySender};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub type Reply = Response<Body>;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        limit: usize,
        /// The size the request declared (`Content-Length`), when it did.
        declared: Option<u64>,
    },
    #[error("the body could not be read: {0}")]
    Read(String),
}

/// How much of an oversized body is read and thrown away before the refusal is sent, so that a
/// client still sending sees the 413 instead of a broken pipe.
const DISCARD_LIMIT: usize = 16 * 1024 * 1024;

/// Reads a whole body, refusing it as soon as it exceeds `limit` bytes (before buffering more).
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = request.into_body();
    if declared.is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit)) {
        discard(&mut body).await;
        return Err(BodyError::TooLarge { limit, declared });
    }
    match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            discard(&mut body).await;
            Err(BodyError::TooLarge { limit, declared })
        }
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// Reads and drops up to [`DISCARD_LIMIT`] bytes of a body, keeping none of it.
async fn discard(body: &mut Incoming) {
    let mut seen = 0usize;
    while seen < DISCARD_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

/// A reply with a JSON body.
pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Body::full(body));
    *reply.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

/// An error of the service itself, as the Lambda API returns it: the exception's name in
/// `X-Amzn-ErrorType` and a `{"Type", "Message"}` body.
pub fn service_error(status: u16, exception: &'static str, message: &str) -> Reply {
    let body = proto::invoke_api::ServiceError::new(status, message);
    let mut reply = json(status, serde_json::to_vec(&body).unwrap_or_default());
    reply.headers_mut().insert(
        proto::invoke_api::header::ERROR_TYPE,
        hyper::header::HeaderValue::from_static(exception),
    );
    reply
}

/// A `TooManyRequestsException` (429) with Lambda's `Reason` for it.
pub fn throttled(message: &str, reason: &str) -> Reply {
    let mut body = proto::invoke_api::ServiceError::new(429, message);
    body.reason = Some(reason.to_owned());
    let mut reply = json(429, serde_json::to_vec(&body).unwrap_or_default());
    reply.headers_mut().insert(
        proto::invoke_api::header::ERROR_TYPE,
        hyper::header::HeaderValue::from_static(proto::invoke_api::error_type::TOO_MANY_REQUESTS),
    );
    reply
}

/// A reply with the Runtime API's `{"errorMessage", "errorType"}` body.
pub fn error(status: u16, error_type: &str, message: &str) -> Reply {
    let body = proto::runtime_api::ErrorResponse {
        error_message: message.to_owned(),
        error_type: error_type.to_owned(),
    };
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// Marks a reply as the last on its connection: used after refusing a body we did not read.
pub fn close(mut reply: Reply) -> Reply {
    reply.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    reply
}

/// What one listener allows its clients, so that idle or slow clients cannot use up the
/// server's descriptors or lock others out.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once; beyond it new connections wait in the listen backlog
    /// while the open ones go on being served.
    pub max_connections: Option<usize>,
    /// How long a client may take to send a request's headers, and (the same clock) how long
    /// a kept-alive connection may idle before its next request.
    pub header_read_timeout: Option<std::time::Duration>,
}

/// Why connection limits given on a command line are refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimitsError {
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--header-timeout must be a positive number of seconds, got {0}")]
    Timeout(f64),
}

impl ConnectionLimits {
    /// The limits of an invoke endpoint from its `--max-connections` and `--header-timeout`
    /// (seconds) flags.
    pub fn from_flags(max_connections: usize, header_timeout: f64) -> Result<Self, LimitsError> {
        if max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        let timeout = std::time::Duration::try_from_secs_f64(header_timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or(LimitsError::Timeout(header_timeout))?;
        Ok(ConnectionLimits {
            max_connections: Some(max_connections),
            header_read_timeout: Some(timeout),
        })
    }

    /// For the Runtime API: its one client is the runtime, whose long polls must not time out.
    pub const NONE: ConnectionLimits = ConnectionLimits {
        max_connections: None,
        header_read_timeout: None,
    };
}

impl Default for ConnectionLimits {
    /// For an endpoint open to any client.
    fn default() -> Self {
        ConnectionLimits {
            max_connections: Some(1024),
            header_read_timeout: Some(std::time::Duration::from_secs(10)),
        }
    }
}

/// Serves HTTP/1.1 with keep-alive on `listener`, one task per connection, until the listener
/// fails. A connection's errors (garbage, a client hanging up) end only that connection.
pub async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    serve_connections(listener, ConnectionLimits::NONE, false, handler).await
}

/// [`serve`] within `limits`, for clients that may go away: each request carries its
/// connection's [`Caller`]. A client that half-closes its side after sending (as `nc -N` does)
/// still gets its response.
pub async fn serve_with<H, F>(listener: TcpListener, limits: ConnectionLimits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    serve_connections(listener, limits, true, handler).await
}

/// The accept loop; with `watch_callers`, each request carries its connection's [`Caller`].
async fn serve_connections<H, F>(
    listener: TcpListener,
    limits: ConnectionLimits,
    watch_callers: bool,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let slots = limits
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    loop {
        let permit = match &slots {
            Some(slots) => Arc::clone(slots).acquire_owned().await.ok(),
            None => None,
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("rapid: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let caller = watch_callers.then(|| Caller::of(&stream)).flatten();
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, caller, limits, handler).await;
        });
    }
}

/// Serves one connection (any byte stream: the fuzz targets use an in-memory one) until the
/// client hangs up or sends garbage; with `caller`, each request carries it in its extensions.
pub async fn serve_connection<S, H, F>(
    stream: S,
    caller: Option<Caller>,
    limits: ConnectionLimits,
    handler: H,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        if let Some(caller) = &caller {
            request.extensions_mut().insert(caller.clone());
        }
        let reply = handler(request);
        async move { Ok::<_, Infallible>(reply.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).half_close(true);
    if let Some(timeout) = limits.header_read_timeout {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
    }
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The client connection a request came on, in the request's extensions, so that a handler
/// can notice a caller that has gone while its request waits ([`Caller::gone`]).
///
/// A client that closed its connection and one that only half-closed it (`shutdown(SHUT_WR)`
/// after sending, and still reading) look the same to the server, a FIN, until the server
/// writes: a closed socket answers a write with a reset. So on a FIN the server writes an
/// interim `HTTP/1.1 100 Continue` (every HTTP/1.1 client must accept 1xx responses before
/// the final one; Python's `http.client` skips 100 only), and a reset back means the caller is
/// gone. A caller that is still there gets the 100, then its answer.
#[derive(Clone)]
pub struct Caller {
    /// A duplicate of the connection's socket, registered with the reactor once per
    /// connection: it stays the same socket for as long as a handler holds it, even after the
    /// connection ended and its descriptor number was reused.
    socket: Arc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

/// How long a caller that sent a FIN has to reset the connection after the interim response
/// before it is taken for a half-closed client that waits for its answer.
const HANG_UP_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

const INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a look at a socket's receive side found.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    Nothing,
    /// Bytes of a next request (a pipelining client is there).
    Data,
    /// A FIN: the client closed or half-closed.
    End,
    /// The connection was reset or failed.
    Failed,
}

impl Caller {
    /// `None` when the socket cannot be duplicated or registered (out of descriptors): the
    /// connection is then served without watching.
    fn of(stream: &tokio::net::TcpStream) -> Option<Caller> {
        use std::os::fd::AsFd;
        use tokio::io::{unix::AsyncFd, Interest};
        let socket = stream.as_fd().try_clone_to_owned().ok()?;
        // SAFETY: the `AsyncFd` owns the descriptor, so it stays open and the same for the
        // `AsyncFd`'s whole life.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        Some(Caller {
            socket: Arc::new(socket.ok()?),
        })
    }

    /// Resolves once the caller has gone (reset or closed its connection); never for a caller
    /// that is still there, half-closed or not. Meant to be raced against the work done for it.
    pub async fn gone(&self) {
        if !self.watch().await {
            std::future::pending::<()>().await;
        }
    }

    /// True once the caller is found gone; false once it is found there for good (or the
    /// socket cannot be watched).
    async fn watch(&self) -> bool {
        loop {
            let Ok(mut ready) = self.socket.readable().await else {
                return false;
            };
            match self.received() {
                Received::Failed => return true,
                Received::End => break,
                // A pipelining client's next request: it is there.
                Received::Data => return false,
                Received::Nothing => ready.clear_ready(),
            }
        }
        // A FIN: from here the socket stays readable, so the reset is looked for on a timer.
        if !self.send_interim() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + HANG_UP_PROBE;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            if self.hung_up() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                // Still there: a half-closed client, waiting for its answer.
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.socket.get_ref().as_raw_fd()
    }

    /// Peeks at the receive side without taking anything from it (the bytes are hyper's).
    fn received(&self) -> Received {
        let mut byte = 0u8;
        // SAFETY: recv(2) into a one-byte buffer that outlives the call, on a socket this
        // `Caller` keeps open; MSG_PEEK leaves the data where it was.
        let n = unsafe {
            libc::recv(
                self.fd(),
                std::ptr::addr_of_mut!(byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => Received::End,
            1.. => Received::Data,
            _ => match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {
                    Received::Nothing
                }
                _ => Received::Failed,
            },
        }
    }

    /// Writes the interim response; false when the write itself finds the connection gone.
    fn send_interim(&self) -> bool {
        // SAFETY: send(2) of a static buffer on a socket this `Caller` keeps open; no SIGPIPE.
        let n = unsafe {
            libc::send(
                self.fd(),
                INTERIM.as_ptr().cast(),
                INTERIM.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        n >= 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }

    /// Whether the connection is closed both ways (reset, or failed).
    fn hung_up(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: poll(2) on one `pollfd` that outlives the call, with no wait.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n == 1 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A connected pair: the server's `Caller` and the client's socket.
    async fn connection() -> (Caller, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let caller = Caller::of(&server).unwrap();
        // The server's own stream goes, as hyper's may; the caller keeps the socket.
        drop(server);
        (caller, client)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_closed_is_gone() {
        let (caller, client) = connection().await;
        drop(client);
        let gone = tokio::time::timeout(Duration::from_secs(5), caller.gone()).await;
        assert!(gone.is_ok(), "a closed caller was not noticed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_half_closed_is_there_and_gets_an_interim_100() {
        let (caller, mut client) = connection().await;
        client.shutdown(std::net::Shutdown::Write).unwrap();
        // Longer than the probe: still there.
        let gone = tokio::time::timeout(HANG_UP_PROBE * 2, caller.gone()).await;
        assert!(gone.is_err(), "a half-closed caller was taken for gone");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut interim = vec![0; INTERIM.len()];
        client.read_exact(&mut interim).unwrap();
        assert_eq!(interim, INTERIM);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_that_stays_is_never_written_to() {
        let (caller, mut client) = connection().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let gone = tokio::time::timeout(Duration::from_millis(300), caller.gone()).await;
        assert!(gone.is_err());
        client.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let read = client.read(&mut byte);
        assert!(
            read.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "{read:?}"
        );
    }

    #[test]
    fn connection_limits_from_flags_refuse_nonsense() {
        let limits = ConnectionLimits::from_flags(8, 1.5).unwrap();
        assert_eq!(limits.max_connections, Some(8));
        let timeout = std::time::Duration::from_millis(1500);
        assert_eq!(limits.header_read_timeout, Some(timeout));
        assert_eq!(
            ConnectionLimits::from_flags(0, 1.0).unwrap_err(),
            LimitsError::NoConnections
        );
        for bad in [0.0, -1.0, f64::NAN] {
            assert!(ConnectionLimits::from_flags(1, bad).is_err(), "{bad}");
        }
    }
}
