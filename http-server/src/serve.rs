//! The accept loop and the connections it serves, within a listener's [`ConnectionLimits`].
//!
//! At the connection cap a new client is not left waiting behind connections that are doing
//! nothing for anyone: the server closes one that is not being served, in this order: one that
//! has not yet sent a whole request, or is sending a body (the oldest first: a slow client's),
//! then one idling between requests (the oldest first). A connection whose request is being
//! served (a long poll, an invocation) or whose answer is being sent is never closed for
//! another; while every one is, new clients wait in the listen backlog.

use crate::body::BodyPace;
use crate::caller::Caller;
use crate::Reply;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// What one listener allows its clients, so that idle or slow clients cannot use up the
/// server's descriptors or memory, or lock others out.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once. At the cap, a new connection takes the place of one that
    /// is not being served (see the module's documentation), or waits in the listen backlog.
    pub max_connections: Option<usize>,
    /// How long a client may take to send a request's headers, and (the same clock) how long
    /// a kept-alive connection may idle before its next request.
    pub header_read_timeout: Option<Duration>,
    /// How fast request bodies must arrive ([`crate::read_body`] enforces it).
    pub body_pace: Option<BodyPace>,
}

/// Why connection limits given on a command line are refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimitsError {
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--{flag} must be a positive number of seconds, got {value}")]
    Timeout { flag: &'static str, value: f64 },
    #[error("--min-body-rate must be at least 1 byte a second")]
    NoRate,
}

/// Connections of the Runtime API: its runtime needs one or two, an extension a few more.
const RUNTIME_API_CONNECTIONS: usize = 64;

/// The slowest body the default limits accept (after the grace), in bytes a second.
pub const MIN_BODY_RATE: u32 = 1024;

impl ConnectionLimits {
    /// The limits of an invoke endpoint from its `--max-connections`, `--header-timeout`,
    /// `--body-timeout` (seconds) and `--min-body-rate` (bytes a second) flags.
    pub fn from_flags(
        max_connections: usize,
        header_timeout: f64,
        body_timeout: f64,
        min_body_rate: u32,
    ) -> Result<Self, LimitsError> {
        if max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        if min_body_rate == 0 {
            return Err(LimitsError::NoRate);
        }
        let seconds = |flag, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or(LimitsError::Timeout { flag, value })
        };
        Ok(ConnectionLimits {
            max_connections: Some(max_connections),
            header_read_timeout: Some(seconds("header-timeout", header_timeout)?),
            body_pace: Some(BodyPace {
                grace: seconds("body-timeout", body_timeout)?,
                min_rate: min_body_rate,
            }),
        })
    }

    /// For the Runtime API of one sandbox whose longest phase (init, or an invocation) may
    /// take `longest`: its runtime keeps a connection idle while its handler runs, so nothing
    /// is timed out sooner than that; a few dozen connections are more than a runtime and its
    /// extensions use, and what they cost the server is bounded by that count.
    pub fn runtime_api(longest: Duration) -> ConnectionLimits {
        let patience = longest.saturating_add(Duration::from_secs(30));
        ConnectionLimits {
            max_connections: Some(RUNTIME_API_CONNECTIONS),
            header_read_timeout: Some(patience),
            body_pace: Some(BodyPace {
                grace: patience,
                min_rate: MIN_BODY_RATE,
            }),
        }
    }

    /// No limits at all (for tests and fuzzing).
    pub const NONE: ConnectionLimits = ConnectionLimits {
        max_connections: None,
        header_read_timeout: None,
        body_pace: None,
    };
}

impl Default for ConnectionLimits {
    /// For an endpoint open to any client.
    fn default() -> Self {
        ConnectionLimits {
            max_connections: Some(1024),
            header_read_timeout: Some(Duration::from_secs(10)),
            body_pace: Some(BodyPace {
                grace: Duration::from_secs(10),
                min_rate: MIN_BODY_RATE,
            }),
        }
    }
}

/// Serves HTTP/1.1 with keep-alive on `listener` within `limits`, one task per connection,
/// until the listener fails. A connection's errors (garbage, a client hanging up) end only
/// that connection.
pub async fn serve<H, F>(listener: TcpListener, limits: ConnectionLimits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    serve_connections(listener, limits, false, handler).await
}

/// [`serve`] for clients that may go away: each request carries its connection's [`Caller`].
/// A client that half-closes its side after sending (as `nc -N` does) still gets its response.
pub async fn serve_with<H, F>(listener: TcpListener, limits: ConnectionLimits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    serve_connections(listener, limits, true, handler).await
}

/// How often a full accept loop looks again for a connection it may close.
const CAP_RECHECK: Duration = Duration::from_millis(50);

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
    if let Some(max) = limits.max_connections {
        // Each connection may take two descriptors (its socket, and the caller watch's copy).
        ensure_descriptors(max.saturating_mul(2).saturating_add(256));
    }
    let slots = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let open = Arc::new(Registry::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("http-server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match &slots {
            None => None,
            Some(slots) => Some(loop {
                if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
                    break permit;
                }
                open.close_one_unserved();
                tokio::select! {
                    permit = Arc::clone(slots).acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => return,
                    },
                    () = tokio::time::sleep(CAP_RECHECK) => {}
                }
            }),
        };
        let _ = stream.set_nodelay(true);
        let caller = watch_callers.then(|| Caller::of(&stream)).flatten();
        let connection = Arc::new(Connection::new(limits.body_pace));
        let id = open.insert(Arc::clone(&connection));
        let (handler, open) = (handler.clone(), Arc::clone(&open));
        tokio::spawn(async move {
            serve_tracked(stream, caller, limits, handler, Arc::clone(&connection)).await;
            drop(permit);
            open.remove(id);
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
    let connection = Arc::new(Connection::new(limits.body_pace));
    serve_tracked(stream, caller, limits, handler, connection).await
}

async fn serve_tracked<S, H, F>(
    stream: S,
    caller: Option<Caller>,
    limits: ConnectionLimits,
    handler: H,
    connection: Arc<Connection>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let tracked = Arc::clone(&connection);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        if let Some(caller) = &caller {
            let caller = caller.for_request(request.version());
            request.extensions_mut().insert(caller);
        }
        let in_flight = InFlight(Arc::clone(&tracked));
        in_flight.0.set(Phase::Serving);
        request.extensions_mut().insert(in_flight.clone());
        let reply = handler(request);
        async move {
            let (parts, body) = reply.await.into_parts();
            let body = Sent {
                body,
                connection: Some(in_flight.0),
            };
            Ok::<_, Infallible>(Response::from_parts(parts, body))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).half_close(true);
    if let Some(timeout) = limits.header_read_timeout {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
    }
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = served => {}
        // Closed for a newer client at the cap: dropping the connection closes it.
        () = connection.close.notified() => {}
    }
}

/// What a connection is doing, for the choice of one to close at the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Open, and no whole request yet: a new client, or one sending its headers slowly.
    Unproven = 0,
    /// A request's body is being read.
    Body = 1,
    /// A request is being served, or its answer sent.
    Serving = 2,
    /// Between requests, after at least one answer (a kept-alive client).
    Idle = 3,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Unproven,
            1 => Phase::Body,
            2 => Phase::Serving,
            _ => Phase::Idle,
        }
    }
}

/// One open connection, as the accept loop sees it.
pub(crate) struct Connection {
    phase: AtomicU8,
    since: Mutex<Instant>,
    /// Told to close (for a newer client at the cap).
    close: Notify,
    body_pace: Option<BodyPace>,
}

impl Connection {
    fn new(body_pace: Option<BodyPace>) -> Connection {
        Connection {
            phase: AtomicU8::new(Phase::Unproven as u8),
            since: Mutex::new(Instant::now()),
            close: Notify::new(),
            body_pace,
        }
    }

    fn set(&self, phase: Phase) {
        *lock(&self.since) = Instant::now();
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// How eager the accept loop is to close it for a newer client (lower first), and since
    /// when it is in that state; `None`: never.
    fn closable(&self) -> Option<(u8, Instant)> {
        let rank = match self.phase() {
            Phase::Unproven | Phase::Body => 0,
            Phase::Idle => 1,
            Phase::Serving => return None,
        };
        Some((rank, *lock(&self.since)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's connection, in the request's extensions: [`crate::read_body`] marks it as
/// reading a body, and finds the pace there.
#[derive(Clone)]
pub(crate) struct InFlight(Arc<Connection>);

impl InFlight {
    pub(crate) fn body_pace(&self) -> Option<BodyPace> {
        self.0.body_pace
    }

    /// Puts the connection in `phase` until the returned guard is dropped (then it is being
    /// served again).
    pub(crate) fn enter(&self, phase: Phase) -> PhaseGuard {
        self.0.set(phase);
        PhaseGuard(Arc::clone(&self.0))
    }
}

pub(crate) struct PhaseGuard(Arc<Connection>);

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        self.0.set(Phase::Serving);
    }
}

/// A reply's body on its way out: once sent (hyper drops it), its connection is idle.
struct Sent {
    body: crate::Body,
    connection: Option<Arc<Connection>>,
}

impl Body for Sent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.set(Phase::Idle);
        }
    }
}

/// The open connections of one listener.
#[derive(Default)]
struct Registry {
    inner: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    connections: HashMap<u64, Arc<Connection>>,
    /// The most open at once since memory was last given back.
    high_water: usize,
}

/// After a flood of at least this many connections has drained to a quarter, the memory
/// they used is given back to the system.
const TRIM_AFTER: usize = 64;

impl Registry {
    fn insert(&self, connection: Arc<Connection>) -> u64 {
        let mut open = lock(&self.inner);
        open.next_id += 1;
        let id = open.next_id;
        open.connections.insert(id, connection);
        open.high_water = open.high_water.max(open.connections.len());
        id
    }

    fn remove(&self, id: u64) {
        let trim = {
            let mut open = lock(&self.inner);
            open.connections.remove(&id);
            let now = open.connections.len();
            let drained = open.high_water >= TRIM_AFTER && now <= open.high_water / 4;
            if drained {
                open.high_water = now;
            }
            drained
        };
        if trim {
            give_back_memory();
        }
    }

    /// Tells the connection that is first to go at the cap to close, if one may.
    fn close_one_unserved(&self) {
        let open = lock(&self.inner);
        let first = open
            .connections
            .values()
            .filter_map(|c| Some((c.closable()?, c)))
            .min_by_key(|(rank, _)| *rank);
        if let Some((_, connection)) = first {
            connection.close.notify_one();
        }
    }
}

/// Returns the heap's free memory to the system: after a flood the allocator otherwise keeps
/// the peak for good.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) only releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises this process's soft limit on open descriptors to at least `wanted` (up to its hard
/// limit), so that the connection cap, not the descriptor limit, is what bounds a flood.
fn ensure_descriptors(wanted: usize) {
    let wanted = libc::rlim_t::try_from(wanted).unwrap_or(libc::rlim_t::MAX);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) and setrlimit(2) with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_from_flags_refuse_nonsense() {
        let limits = ConnectionLimits::from_flags(8, 1.5, 2.0, 100).unwrap();
        assert_eq!(limits.max_connections, Some(8));
        let timeout = Duration::from_millis(1500);
        assert_eq!(limits.header_read_timeout, Some(timeout));
        let pace = BodyPace {
            grace: Duration::from_secs(2),
            min_rate: 100,
        };
        assert_eq!(limits.body_pace, Some(pace));
        assert_eq!(
            ConnectionLimits::from_flags(0, 1.0, 1.0, 1).unwrap_err(),
            LimitsError::NoConnections
        );
        assert_eq!(
            ConnectionLimits::from_flags(1, 1.0, 1.0, 0).unwrap_err(),
            LimitsError::NoRate
        );
        for bad in [0.0, -1.0, f64::NAN] {
            assert!(
                ConnectionLimits::from_flags(1, bad, 1.0, 1).is_err(),
                "{bad}"
            );
            assert!(
                ConnectionLimits::from_flags(1, 1.0, bad, 1).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_first_to_close_is_the_oldest_unproven_then_the_oldest_idle_never_a_served_one() {
        let registry = Registry::default();
        let make = |phase| {
            let c = Arc::new(Connection::new(None));
            c.set(phase);
            registry.insert(Arc::clone(&c));
            std::thread::sleep(Duration::from_millis(2));
            c
        };
        let idle = make(Phase::Idle);
        let serving = make(Phase::Serving);
        let body = make(Phase::Body);
        let unproven = make(Phase::Unproven);
        let notified = |c: &Connection| {
            let waiter = c.close.notified();
            tokio::pin!(waiter);
            waiter
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
                .is_ready()
        };
        registry.close_one_unserved();
        assert!(
            notified(&body),
            "the oldest unproven or body-reading one goes first"
        );
        body.set(Phase::Serving);
        registry.close_one_unserved();
        assert!(notified(&unproven));
        unproven.set(Phase::Serving);
        registry.close_one_unserved();
        assert!(notified(&idle), "then the kept-alive idle one");
        idle.set(Phase::Serving);
        registry.close_one_unserved();
        assert!(!notified(&serving), "one being served is never closed");
    }
}
