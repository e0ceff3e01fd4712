//! The host link as rapid's invocation source: `Invoke` frames become [`Handle::invoke`] calls
//! and their outcomes `Response`/`Error` frames; `Restore` reseeds and releases a runtime waiting
//! in `restore/next`; `Shutdown` ends init. Also rapid's snapshot hook (`InitDone`, then wait for
//! `Restore`), and the whole lifecycle: serve the Runtime API, start the runtime, keep the link
//! up, stop on `Shutdown`, SIGTERM or a lost link.

use crate::config::{Function, Options};
use crate::host_link::{self, Conn, LinkAddr, Outbox};
use crate::link_log::LinkLog;
use crate::timing::{Stamps, Timing};
use crate::{reaper, restore};
use bytes::Bytes;
use http_server::ConnectionLimits;
use logging::Chain;
use proto::host_link::Hello;
use proto::host_link::{
    self as wire, FrameError, Invoke, Message, MAX_PAYLOAD_LEN, MIN_RESTORE_ENTROPY,
};
use proto::invoke::{Answer, InvokeError, ResponseStream, StreamEnd, StreamEvent};
use proto::invoke_api::error_type;
use proto::runtime_api::ErrorRequest;
use rapid::{Handle, Outcome, SnapshotHook};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// First and longest pause between attempts to (re)connect the host link.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(500));
/// How long connecting and the `Hello` exchange may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the runtime gets to exit after SIGTERM before it is killed.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// Frames queued together go out in one write of up to about this many bytes (one more frame
/// may end past it): each write from a guest is a system call and a vsock notification.
const BATCH_BYTES: usize = 256 * 1024;

/// Why init stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The host sent `Shutdown`.
    Shutdown,
    /// SIGTERM or SIGINT.
    Terminated,
    /// The link dropped and init does not reconnect.
    LinkLost,
    /// The link never came up and init does not retry.
    NoLink,
}

impl End {
    /// The exit code of an ordinary process.
    pub fn code(self) -> i32 {
        if self == End::NoLink {
            1
        } else {
            0
        }
    }
}

/// Serves the function until the host, a signal or the link ends it; the runtime is stopped by
/// then.
pub async fn run(options: Options, function: Function) -> std::io::Result<End> {
    let api = tokio::net::TcpListener::bind(options.runtime_api).await?;
    let outbox = Outbox::default();
    let (restored, restored_rx) = watch::channel(0u64);
    let incoming = Incoming::new(host_link::listen_addr(&options.host_link));
    let paused = Arc::new(OnceLock::new());
    let snapshot = LinkSnapshot {
        outbox: outbox.clone(),
        restored: restored_rx,
        started: Instant::now(),
        incoming: incoming.clone(),
        paused: Arc::clone(&paused),
        system: options.system,
    };
    let mut rapid = function.rapid;
    let api_limits = ConnectionLimits::runtime_api(rapid.timeout.max(rapid.init_timeout));
    // The VM is the sandbox: every OOM kill in it is the function's.
    match rapid::process::oom::KernelOomLog::open() {
        Ok(log) => rapid.oom_log = Some(log),
        Err(e) => {
            log::warn!("cannot read /dev/kmsg ({e}): an OOM kill is reported as Runtime.ExitError")
        }
    }
    let handle = Handle::new(
        rapid,
        api.local_addr()?,
        Arc::new(LinkLog::new(outbox.clone())),
        Some(Arc::new(snapshot)),
    );
    let api_handle = handle.clone();
    tokio::spawn(http_server::serve(api, api_limits, move |request| {
        rapid::runtime_api::handle(api_handle.clone(), request)
    }));
    if options.pid1 {
        tokio::spawn(reaper::run());
    }
    handle.start();
    let relay = Relay {
        handle: handle.clone(),
        outbox,
        restored,
        system: options.system,
        timing: options.timing.then(Arc::default),
        incoming,
        paused,
    };
    let end = tokio::select! {
        end = relay.serve(&options.host_link, options.reconnect) => end,
        end = terminated() => end,
    };
    if end == End::Terminated && reaper::signal_runtime(libc::SIGTERM) > 0 {
        let deadline = Instant::now() + TERM_GRACE;
        while !reaper::runtime_groups().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // As Lambda spins an environment down: extensions get SHUTDOWN and their deadline.
    handle.shutdown_gracefully().await;
    Ok(end)
}

async fn terminated() -> End {
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            End::Terminated
        }
        _ => {
            log::warn!("cannot watch SIGTERM; it will not be forwarded");
            std::future::pending().await
        }
    }
}

struct Relay {
    handle: Handle,
    outbox: Outbox,
    restored: watch::Sender<u64>,
    system: bool,
    /// Only with `INIT_TIMING=1`.
    timing: Option<Arc<Timing>>,
    /// The host's connections to init, once init listens for them (SnapStart).
    incoming: Incoming,
    /// When init told the host it could snapshot it (SnapStart).
    paused: Arc<OnceLock<Paused>>,
}

/// The moment a SnapStart init told the host it could be snapshotted (the pause follows at
/// once), on the guest's monotonic clock, and whether that clock stands still while the
/// snapshot is stored: on `kvm-clock`, which the VMM sets back to its saved value at a restore.
/// Then a restored copy knows how long it has run since it resumed (the time since that moment,
/// give or take the few milliseconds before the pause), and sets its wall clock to the host's
/// time at resume plus that: right however long the `Restore` frame took to be read.
struct Paused {
    at: Instant,
    clock_stands_still: bool,
}

/// The guest kernel's clock source.
const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

impl Relay {
    /// Keeps the link up until `Shutdown` or the link is given up: init connects to the host
    /// (again, when asked to reconnect), except once it listens for the host (after a SnapStart
    /// init): then the host comes to it, and a newer connection from the host replaces the
    /// current one at once (a restored copy's host, while the snapshot's connection is not yet
    /// known to be dead).
    async fn serve(&self, addr: &LinkAddr, reconnect: bool) -> End {
        let (mut backoff, mut failures, mut connected) = (BACKOFF.0, 0u64, false);
        let mut next = None;
        loop {
            let opened = match next.take() {
                Some(accepted) => Ok(Ok(accepted)),
                None if self.incoming.listening() => Ok(Ok(self.incoming.next().await)),
                None => tokio::time::timeout(HANDSHAKE_TIMEOUT, Conn::open(addr)).await,
            };
            match opened.map_err(|_| format!("no hello within {HANDSHAKE_TIMEOUT:?}")) {
                Ok(Ok((conn, peer))) => {
                    (backoff, failures, connected) = (BACKOFF.0, 0, true);
                    if self.incoming.listening() {
                        // A restored copy: a console line costs it (the serial port is
                        // emulated a byte at a time) right when it should answer at once.
                        log::debug!("host link up ({})", peer.agent);
                    } else {
                        log::info!("host link up ({})", peer.agent);
                    }
                    tokio::select! {
                        ended = self.session(&conn) => match ended {
                            Ok(end) => return end,
                            Err(FrameError::Closed) => log::info!("the host closed the link"),
                            // A restored copy's link to the host of its snapshot: reset by the
                            // restore, as expected, and already replaced or about to be.
                            Err(e) if self.incoming.listening() => {
                                log::debug!("host link lost: {}", Chain(&e));
                            }
                            Err(e) => log::warn!("host link lost: {}", Chain(&e)),
                        },
                        newer = self.incoming.next() => {
                            next = Some(newer);
                            continue;
                        }
                    }
                }
                Ok(Err(e)) => {
                    failures += 1;
                    open_failed(addr, failures, &Chain(&e).to_string());
                }
                Err(e) => {
                    failures += 1;
                    open_failed(addr, failures, &e);
                }
            }
            if self.incoming.listening() {
                continue;
            }
            if !reconnect {
                return if connected {
                    End::LinkLost
                } else {
                    End::NoLink
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One connection: frames in and out until `Shutdown` or an error.
    async fn session(&self, conn: &Conn) -> Result<End, FrameError> {
        tokio::select! {
            end = self.read_loop(conn) => end,
            error = self.write_loop(conn) => Err(error),
        }
    }

    async fn read_loop(&self, conn: &Conn) -> Result<End, FrameError> {
        loop {
            let message = conn.read().await?;
            let received = self
                .timing
                .as_ref()
                .map(|t| (Arc::clone(t), Instant::now()));
            match message {
                Message::Invoke(invoke) => {
                    tokio::spawn(relay_invoke(
                        self.handle.clone(),
                        self.outbox.clone(),
                        invoke,
                        received,
                    ));
                }
                Message::Restore {
                    entropy,
                    wall_clock_ms,
                } => self.restore(&entropy.0, wall_clock_ms),
                Message::Shutdown => return Ok(End::Shutdown),
                other => log::warn!("ignoring a {} frame from the host", other.kind()),
            }
        }
    }

    /// Writes queued frames, all that are queued (up to [`BATCH_BYTES`]) in one write.
    /// Cancel-safe: frames not completely written go back to the front of the outbox, in
    /// order, for the next connection.
    async fn write_loop(&self, conn: &Conn) -> FrameError {
        let mut bytes = Vec::with_capacity(BATCH_BYTES);
        loop {
            let mut batch = Batch {
                outbox: &self.outbox,
                frames: Vec::new(),
                sent: 0,
            };
            // In the batch from the start: a frame taken is put back if the connection's task
            // is cancelled before it is written (its end is not known until it is encoded).
            let first = self.outbox.next().await;
            let log_first = matches!(first, Message::Log { .. });
            batch.frames.push((first, usize::MAX));
            if log_first {
                // Log lines come in runs, mostly with an answer right behind (END, REPORT, then
                // the response, whose task rapid woke with them): let the tasks already woken
                // run first, so that one write takes them all.
                let_woken_tasks_run().await;
            }
            bytes.clear();
            let mut encoded = 0;
            loop {
                if encoded == batch.frames.len() {
                    let more = if bytes.len() < BATCH_BYTES {
                        self.outbox.try_next()
                    } else {
                        None
                    };
                    match more {
                        Some(message) => batch.frames.push((message, usize::MAX)),
                        None => break,
                    }
                }
                let (message, end) = &mut batch.frames[encoded];
                if let Some(timing) = self.timing.as_ref().and_then(|t| t.frame_before(message)) {
                    // Its loss with a broken connection loses nothing but a measurement.
                    let _ = wire::encode_into(&mut bytes, &timing);
                }
                if let Err(e) = wire::encode_into(&mut bytes, message) {
                    log::warn!("dropping a {} frame: {e}", message.kind());
                }
                *end = bytes.len();
                encoded += 1;
            }
            if let Err(e) = conn.write_all(&bytes, &mut batch.sent).await {
                return FrameError::Io(e);
            }
            for (message, _) in std::mem::take(&mut batch.frames) {
                self.outbox.written(&message);
            }
            if bytes.capacity() > 4 * BATCH_BYTES {
                bytes = Vec::with_capacity(BATCH_BYTES);
            }
        }
    }

    /// Makes this guest unique after a restore, then lets `restore/next` answer.
    fn restore(&self, entropy: &[u8], wall_clock_ms: u64) {
        if entropy.len() < MIN_RESTORE_ENTROPY {
            self.warn(&format!(
                "restore: only {} bytes of entropy (want {MIN_RESTORE_ENTROPY})",
                entropy.len()
            ));
        }
        if self.system {
            if let Err(e) = restore::reseed(entropy) {
                self.warn(&format!("restore: {}", Chain(&e)));
            }
            let since_resume = self
                .paused
                .get()
                .filter(|paused| paused.clock_stands_still)
                .map(|paused| paused.at.elapsed())
                .unwrap_or_default();
            let now = Duration::from_millis(wall_clock_ms) + since_resume;
            if let Err(e) = restore::set_clock(now) {
                self.warn(&format!("restore: {}", Chain(&e)));
            }
        } else {
            log::info!("restore: not changing the RNG or the clock (not PID 1, or --no-setup)");
        }
        self.restored.send_modify(|count| *count += 1);
    }

    fn warn(&self, message: &str) {
        log::warn!("{message}");
        self.outbox.log(&format!("init: {message}"));
    }
}

/// Goes once to the back of this thread's run queue, so that the tasks already woken run
/// first. Not `tokio::task::yield_now`, which waits for the reactor to be polled: a system call.
async fn let_woken_tasks_run() {
    let mut queued = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut queued, true) {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Frames being written: each with the end of its bytes in the write. Dropped before they are
/// all written (an error, or the connection's task cancelled), it puts back what did not go out
/// completely.
struct Batch<'a> {
    outbox: &'a Outbox,
    frames: Vec<(Message, usize)>,
    sent: usize,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Last first, since each goes to the front.
        while let Some((message, end)) = self.frames.pop() {
            if end <= self.sent {
                self.outbox.written(&message);
            } else {
                self.outbox.unsend(message);
            }
        }
    }
}

/// Reports the first failed attempt to open the link and every 100th after it.
fn open_failed(addr: &LinkAddr, attempt: u64, why: &str) {
    if attempt == 1 || attempt % 100 == 0 {
        log::warn!("cannot open the host link on {addr} (attempt {attempt}): {why}");
    }
}

/// Runs one invocation and queues its answer, which says whether the environment was reset.
/// `received` is there with timing on: when the `Invoke` frame was read.
async fn relay_invoke(
    handle: Handle,
    outbox: Outbox,
    invoke: Invoke,
    received: Option<(Arc<Timing>, Instant)>,
) {
    let request_id = invoke.request_id.clone();
    let failure = |error_type: &str, message: String| {
        Bytes::from(ErrorRequest::new(error_type, message).to_json())
    };
    let outcome = if invoke.event.0.len() > MAX_PAYLOAD_LEN {
        let message = format!("the event is larger than {MAX_PAYLOAD_LEN} bytes");
        Outcome::failure(failure(error_type::REQUEST_TOO_LARGE, message))
    } else {
        match handle.invoke_streaming(invoke.into()).await {
            Ok(Answer::Whole(outcome)) => outcome,
            Ok(Answer::Stream(stream)) => relay_stream(&outbox, &request_id, stream).await,
            Err(e @ InvokeError::QueueFull) => {
                Outcome::failure(failure(error_type::TOO_MANY_REQUESTS, e.to_string()))
            }
            Err(e) => Outcome::failure(failure(error_type::SERVICE, e.to_string())),
        }
    };
    if let Some((timing, received)) = received {
        let stamps = Stamps {
            received,
            next: handle.delivered_at(&request_id),
            outcome: Instant::now(),
        };
        timing.record(&request_id, stamps);
    }
    outbox.send(outcome.into_answer(request_id));
}

/// Passes a streamed response to the host as the runtime writes it: `ResponseStart`, a
/// `ResponseChunk` per chunk (cut to the frame limit), and returns how it ended, which goes as
/// the invocation's `Response` (empty) or `Error`.
async fn relay_stream(outbox: &Outbox, request_id: &str, mut stream: ResponseStream) -> Outcome {
    outbox.send(Message::ResponseStart {
        request_id: request_id.to_owned(),
        content_type: stream.content_type.clone(),
    });
    loop {
        match stream.next().await {
            StreamEvent::Chunk(chunk) => {
                for part in chunk.chunks(MAX_PAYLOAD_LEN) {
                    outbox.send(Message::ResponseChunk {
                        request_id: request_id.to_owned(),
                        body: part.into(),
                    });
                }
            }
            StreamEvent::End(StreamEnd::Complete) => return Outcome::Success(Bytes::new()),
            StreamEvent::End(StreamEnd::Failed { body, reset }) => {
                return Outcome::Failure { body, reset }
            }
        }
    }
}

/// rapid's snapshot hook: listens for the host (so that every restored copy is listening), tells
/// the host init is done (the moment to snapshot), then waits for its `Restore`, in this guest
/// or in a restored copy of it.
struct LinkSnapshot {
    outbox: Outbox,
    restored: watch::Receiver<u64>,
    started: Instant,
    incoming: Incoming,
    paused: Arc<OnceLock<Paused>>,
    /// Whether init is PID 1 of a VM (and so may look at its clock source).
    system: bool,
}

impl SnapshotHook for LinkSnapshot {
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if let Err(e) = self.incoming.listen() {
                // The restored copies then wait for init to reconnect on its own.
                let line = format!(
                    "init: cannot listen for the host on {}: {e}",
                    self.incoming.addr
                );
                log::warn!("{line}");
                self.outbox.log(&line);
            }
            let mut restored = self.restored.clone();
            restored.borrow_and_update();
            let clock_stands_still = self.system
                && std::fs::read_to_string(CLOCKSOURCE).is_ok_and(|s| s.trim() == "kvm-clock");
            let _ = self.paused.set(Paused {
                at: Instant::now(),
                clock_stands_still,
            });
            let elapsed = self.started.elapsed().as_millis();
            let init_duration_ms = u64::try_from(elapsed).unwrap_or(u64::MAX);
            self.outbox.send(Message::InitDone { init_duration_ms });
            restored
                .changed()
                .await
                .map_err(|_| "init is shutting down".to_owned())
        })
    }
}

/// The host's connections to init's own address ([`host_link::listen_addr`]), accepted from the
/// moment [`Incoming::listen`] is called (once; a SnapStart init calls it before it is
/// snapshotted, so every restored copy listens from its first instruction on).
#[derive(Clone)]
struct Incoming {
    addr: LinkAddr,
    listening: Arc<OnceLock<()>>,
    sender: mpsc::UnboundedSender<(Conn, Hello)>,
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(Conn, Hello)>>>,
}

impl Incoming {
    fn new(addr: LinkAddr) -> Incoming {
        let (sender, receiver) = mpsc::unbounded_channel();
        Incoming {
            addr,
            listening: Arc::default(),
            sender,
            receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
        }
    }

    fn listening(&self) -> bool {
        self.listening.get().is_some()
    }

    /// Listens, and accepts from now on (each connection's `Hello`s exchanged on a task of its
    /// own, so a silent one holds up no other).
    fn listen(&self) -> std::io::Result<()> {
        if self.listening() {
            return Ok(());
        }
        let listener = host_link::Listener::bind(&self.addr)?;
        let _ = self.listening.set(());
        let sender = self.sender.clone();
        tokio::spawn(async move {
            loop {
                let accepted = listener.accept_stream().await;
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        log::warn!("accepting the host's connection failed: {e}");
                        continue;
                    }
                };
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.greet()).await {
                        Ok(Ok(accepted)) => {
                            let _ = sender.send(accepted);
                        }
                        Ok(Err(e)) => {
                            log::warn!("the host's connection failed its hello: {}", Chain(&e));
                        }
                        Err(_) => log::warn!("the host's connection sent no hello"),
                    }
                });
            }
        });
        Ok(())
    }

    /// The next connection from the host; never, while init does not listen.
    async fn next(&self) -> (Conn, Hello) {
        if !self.listening() {
            return std::future::pending().await;
        }
        match self.receiver.lock().await.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(line: &str) -> Message {
        Message::Log { line: line.into() }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_cut_short_puts_back_what_did_not_go_out_in_order() {
        let outbox = Outbox::default();
        outbox.send(log("queued after the batch"));
        let answer = Message::Response {
            request_id: "r".into(),
            body: b"{}".as_slice().into(),
        };
        drop(Batch {
            outbox: &outbox,
            // Written: the first frame whole, the second in part; the third never encoded.
            frames: vec![(log("a"), 10), (log("b"), 20), (answer.clone(), usize::MAX)],
            sent: 15,
        });
        assert_eq!(outbox.next().await, log("b"));
        assert_eq!(outbox.next().await, answer);
        assert_eq!(outbox.next().await, log("queued after the batch"));
        assert_eq!(outbox.try_next(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tasks_woken_first_run_before_the_one_that_lets_them() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let other = Arc::clone(&order);
        tokio::spawn(async move { other.lock().unwrap().push("woken task") });
        let_woken_tasks_run().await;
        order.lock().unwrap().push("after");
        assert_eq!(*order.lock().unwrap(), ["woken task", "after"]);
    }
}
