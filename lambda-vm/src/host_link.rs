//! The host side of the host link (see [`proto::host_link`] for the frames).
//!
//! The guest init connects to vsock CID 2, port [`PORT`]; with Firecracker-style hybrid vsock that
//! connection arrives on the Unix socket `<uds>_<port>`. [`Listener`] listens there, and
//! [`Listener::accept`] returns a [`HostLink`] once the `Hello`s are exchanged. A `HostLink` is
//! synchronous and serves one caller: [`HostLink::invoke`] sends an `Invoke` and waits for its
//! `Response` or `Error`. A thread of the link's own reads every frame as it arrives, so the
//! guest's `Log` lines reach the log callback at once, also those that follow an answer (the
//! guest sends its `END` and `REPORT` after the answer, not before it).
//!
//! After any error but [`LinkError::Guest`] the connection's state is unknown: drop the link and
//! accept the guest's next connection.
//!
//! With [`TIMING_LOG`] at debug level, each invoke logs one line of timing: when the `Invoke`
//! frame went out and its answer came back (wall clock, microseconds since the epoch, so a
//! client on the same host can line them up with its own), and the guest's intervals from the
//! `InvokeTiming` frame a guest started with `INIT_TIMING=1` sends before the answer
//! ([`crate::guest::GuestSpec::boot_args`] sets it then). Off, it costs a level check.

use proto::host_link::{self as wire, FrameError, HandshakeError, Hello, InvokeTiming, Message};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use proto::host_link::{Invoke, Reset, PORT};

/// How long [`Listener::accept`] sleeps between polls.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// How much entropy [`HostLink::restore`] sends.
const RESTORE_ENTROPY: usize = 64;
/// The log target of the per-invoke timing lines (at debug level).
pub const TIMING_LOG: &str = "lambda_vm::timing";

/// Whether invokes are timed: the timing log is on.
pub fn timing_enabled() -> bool {
    log::log_enabled!(target: TIMING_LOG, log::Level::Debug)
}

/// Why the host link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot listen on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting the guest's connection failed")]
    Accept(#[source] std::io::Error),
    #[error("connecting to the guest's init through {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest's init did not take the connection: {0}")]
    Refused(String),
    #[error("the guest did not connect within {0:?}")]
    AcceptTimeout(Duration),
    #[error("host-link handshake failed")]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The guest sent a message only the host may send. The link stays usable.
    #[error("the guest sent a {0} frame, which only the host sends")]
    Guest(&'static str),
    #[error("cannot read entropy for the restore")]
    Entropy(#[source] std::io::Error),
    #[error("setting the link's timeout failed")]
    Timeout(#[source] std::io::Error),
}

impl LinkError {
    /// Whether the guest closed or reset the connection (rather than, say, saying something
    /// wrong or not answering in time).
    pub fn is_closed(&self) -> bool {
        match self {
            LinkError::Frame(FrameError::Closed | FrameError::Truncated { .. }) => true,
            LinkError::Frame(FrameError::Io(e)) | LinkError::Accept(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ),
            LinkError::Handshake(HandshakeError::Frame(FrameError::Closed)) => true,
            _ => false,
        }
    }
}

/// How an invocation ended, as the guest reported it.
pub use proto::invoke::Outcome;

/// A part of a streamed response, as it arrives from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streamed {
    /// The runtime began streaming, with this `Content-Type`.
    Start {
        content_type: Option<String>,
    },
    Chunk(Vec<u8>),
}

/// Listens for the guest's connection on `<uds>_<port>`.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Listens on `<uds>_<port>`, replacing a stale socket file left there.
    pub fn bind(uds: &Path, port: u32) -> Result<Listener, LinkError> {
        let mut path = uds.as_os_str().to_owned();
        path.push(format!("_{port}"));
        let path = PathBuf::from(path);
        let bind_error = |source| LinkError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_error(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(Listener { listener, path })
    }

    /// The socket's path, `<uds>_<port>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for the guest to connect, then exchanges `Hello`s.
    pub fn accept(&self, timeout: Duration) -> Result<HostLink, LinkError> {
        self.accept_within(timeout, timeout)
    }

    /// Waits up to `timeout` for the guest to connect, then up to `handshake` for its `Hello`
    /// (a guest on emulated KVM may take far longer to answer than to connect).
    pub fn accept_within(
        &self,
        timeout: Duration,
        handshake: Duration,
    ) -> Result<HostLink, LinkError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(LinkError::AcceptTimeout(timeout));
                    }
                    std::thread::sleep(ACCEPT_POLL);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::Accept(e)),
            }
        };
        stream.set_nonblocking(false).map_err(LinkError::Accept)?;
        HostLink::handshake(stream, handshake)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where a guest's init listens for the host: a SnapStart init listens from before its
/// snapshot on, so the host reaches a restored copy at once instead of waiting for it to
/// reconnect.
#[derive(Debug, Clone, Copy)]
pub enum GuestAddr<'a> {
    /// Through a VM's hybrid vsock socket `uds`: `CONNECT <port>\n`, answered `OK <n>\n`
    /// once the guest accepted.
    Vsock { uds: &'a Path, port: u32 },
    /// An init outside a VM, listening on a Unix socket (`<its host link>.listen`).
    Unix(&'a Path),
}

/// A connection to a restored guest's init, its first frames sent, its `Hello` not yet read
/// ([`HostLink::dial`]).
pub struct Dialing {
    stream: UnixStream,
    vsock: bool,
}

impl Dialing {
    /// A second handle on the connection, with which another thread can end the wait.
    pub fn interrupter(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// Waits up to `timeout` for the guest to take the connection and send its `Hello`.
    pub fn finish(mut self, timeout: Duration) -> Result<HostLink, LinkError> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(LinkError::Timeout)?;
        if self.vsock {
            let line = read_line(&mut self.stream).map_err(LinkError::Accept)?;
            if line.is_empty() {
                return Err(LinkError::Frame(FrameError::Closed));
            }
            if !line.starts_with("OK ") {
                return Err(LinkError::Refused(line));
            }
        }
        let peer = wire::check_hello(wire::read_frame(&mut self.stream)?)?;
        self.stream
            .set_read_timeout(None)
            .map_err(LinkError::Timeout)?;
        HostLink::new(self.stream, peer)
    }
}

/// Reads one `\n`-ended line of at most 32 bytes, a byte at a time, so that nothing after it
/// is taken from the stream. An empty line: the stream ended (the guest did not accept).
fn read_line(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        match stream.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

type LogFn = Box<dyn FnMut(&str) + Send>;

/// What the reader thread hands the link's caller.
enum Event {
    /// A `Response` or `Error`, or a part of a streamed response (`ResponseStart`,
    /// `ResponseChunk`).
    Answer(Message),
    InitDone(Duration),
    /// The guest sent a frame only the host may send.
    Unexpected(&'static str),
    /// The connection failed or closed; nothing comes after it.
    Failed(FrameError),
}

/// What the reader thread shares with the link.
struct Shared {
    /// Where log lines go; until there is one, they wait in `early`.
    log: Option<LogFn>,
    early: Vec<String>,
    /// The guest's timing of the invocation whose answer comes next (timing on only).
    guest_timing: Option<InvokeTiming>,
}

/// Most log lines kept before a log callback is set.
const EARLY_LINES: usize = 1024;

/// One connection to a guest init.
pub struct HostLink {
    stream: UnixStream,
    peer: Hello,
    events: Receiver<Event>,
    shared: Arc<Mutex<Shared>>,
    /// Bounds each wait for the guest ([`HostLink::set_timeout`]).
    timeout: Option<Duration>,
    /// Why the link failed, once it has: every later wait fails the same way.
    failed: Option<String>,
    /// The guest's timing of the last invocation answered.
    last_timing: Option<InvokeTiming>,
}

impl HostLink {
    /// Exchanges `Hello`s on a connected stream, waiting up to `timeout` for the guest's.
    pub fn handshake(mut stream: UnixStream, timeout: Duration) -> Result<HostLink, LinkError> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(LinkError::Timeout)?;
        let peer = wire::handshake(&mut stream, &hello())?;
        stream.set_read_timeout(None).map_err(LinkError::Timeout)?;
        HostLink::new(stream, peer)
    }

    /// The link on `stream`, with its reader thread.
    fn new(stream: UnixStream, peer: Hello) -> Result<HostLink, LinkError> {
        let reader = stream.try_clone().map_err(LinkError::Accept)?;
        let shared = Arc::new(Mutex::new(Shared {
            log: None,
            early: Vec::new(),
            guest_timing: None,
        }));
        let (send, events) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("host-link".into())
            .spawn(move || read_frames(reader, &thread_shared, &send))
            .map_err(LinkError::Accept)?;
        Ok(HostLink {
            stream,
            peer,
            events,
            shared,
            timeout: None,
            failed: None,
            last_timing: None,
        })
    }

    /// Connects to a restored guest's init at `addr` and sends, in one write with the request
    /// to connect, our `Hello` and the `Restore` (fresh entropy and the host's wall clock), so
    /// that they reach init as soon as its vCPU runs; [`Dialing::finish`] then waits for the
    /// guest's `Hello`.
    pub fn dial(addr: GuestAddr) -> Result<Dialing, LinkError> {
        HostLink::dial_at(addr, SystemTime::now())
    }

    /// [`HostLink::dial`], telling the guest that the wall clock reads `now`. The guest's
    /// monotonic clock resumes where the snapshot stopped it, so this time is all a restored
    /// guest learns of how long its snapshot was stored: a benchmark simulates a snapshot's
    /// age with a time that far ahead.
    pub fn dial_at(addr: GuestAddr, now: SystemTime) -> Result<Dialing, LinkError> {
        let (path, mut bytes) = match addr {
            GuestAddr::Vsock { uds, port } => (uds, format!("CONNECT {port}\n").into_bytes()),
            GuestAddr::Unix(path) => (path, Vec::new()),
        };
        wire::encode_into(&mut bytes, &Message::Hello(hello()))?;
        wire::encode_into(&mut bytes, &restore_message(now)?)?;
        let connect_error = |source| LinkError::Connect {
            path: path.to_owned(),
            source,
        };
        let mut stream = UnixStream::connect(path).map_err(connect_error)?;
        stream.write_all(&bytes).map_err(connect_error)?;
        Ok(Dialing {
            stream,
            vsock: matches!(addr, GuestAddr::Vsock { .. }),
        })
    }

    /// A second handle on the connection, with which another thread can end a wait on this
    /// link at once (`shutdown`): the link then fails with an error.
    pub fn interrupter(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// The guest's `Hello`.
    pub fn peer(&self) -> &Hello {
        &self.peer
    }

    /// Where the guest's log lines go; lines that came before it are passed on first.
    pub fn on_log(&mut self, log: impl FnMut(&str) + Send + 'static) {
        let mut log: LogFn = Box::new(log);
        let mut shared = self.lock();
        for line in std::mem::take(&mut shared.early) {
            log(&line);
        }
        shared.log = Some(log);
    }

    /// Bounds every wait for the guest; `None` waits forever. A wait that times out leaves the
    /// link unusable.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), LinkError> {
        self.timeout = timeout;
        Ok(())
    }

    /// Runs one invocation and waits for its outcome. Frames for other request ids (answers to
    /// invokes abandoned after an error) are skipped. A streamed response's chunks are dropped:
    /// see [`HostLink::invoke_streaming`].
    pub fn invoke(&mut self, invoke: Invoke) -> Result<Outcome, LinkError> {
        self.invoke_streaming(invoke, &mut |_| {})
    }

    /// Like [`HostLink::invoke`], passing the parts of a response the runtime streams to
    /// `stream` as they arrive; the outcome then says how the stream ended (a `Success` body is
    /// empty: the chunks were the body).
    pub fn invoke_streaming(
        &mut self,
        invoke: Invoke,
        stream: &mut dyn FnMut(Streamed),
    ) -> Result<Outcome, LinkError> {
        let request_id = invoke.request_id.clone();
        self.send(&Message::Invoke(invoke))?;
        let sent = timing_enabled().then(epoch_us);
        loop {
            let Event::Answer(message) = self.next_event()? else {
                continue;
            };
            let message = match message {
                Message::ResponseStart {
                    request_id: id,
                    content_type,
                } if id == request_id => {
                    stream(Streamed::Start { content_type });
                    continue;
                }
                Message::ResponseChunk {
                    request_id: id,
                    body,
                } if id == request_id => {
                    stream(Streamed::Chunk(body.0));
                    continue;
                }
                message => message,
            };
            let Some(outcome) = Outcome::from_answer(message, &request_id) else {
                continue;
            };
            let timing = self.lock().guest_timing.take();
            self.last_timing = timing.filter(|t| t.request_id == request_id);
            if let Some(sent) = sent {
                self.log_timing(&request_id, sent, epoch_us());
            }
            return Ok(outcome);
        }
    }

    /// One timing line: the host's stamps and the guest's intervals (`-` when the guest sent
    /// none).
    fn log_timing(&self, request_id: &str, sent_us: u64, back_us: u64) {
        let guest = self
            .last_timing
            .as_ref()
            .map(|t| format!("{} {} {}", t.next_us, t.outcome_us, t.sent_us))
            .unwrap_or_else(|| "- - -".into());
        log::debug!(
            target: TIMING_LOG,
            "timing {request_id} host_sent_us={sent_us} host_back_us={back_us} \
             guest_next_outcome_sent_us={guest}"
        );
    }

    /// Where the guest's part of the last invocation answered went, when the guest times its
    /// invokes (see the module's documentation).
    pub fn last_timing(&self) -> Option<&InvokeTiming> {
        self.last_timing.as_ref()
    }

    /// Waits for `InitDone` (a SnapStart init reaching `restore/next`) and returns the init
    /// duration the guest measured.
    pub fn wait_init_done(&mut self) -> Result<Duration, LinkError> {
        loop {
            if let Event::InitDone(duration) = self.next_event()? {
                return Ok(duration);
            }
        }
    }

    /// Sends `Restore` with fresh entropy and the host's wall-clock time. The guest reseeds its
    /// RNG and sets its clock, then lets a runtime waiting in `restore/next` go on.
    /// ([`HostLink::dial`] sends it with the connection.)
    pub fn restore(&mut self) -> Result<(), LinkError> {
        self.send(&restore_message(SystemTime::now())?)
    }

    /// Tells the guest to stop its runtime and power off.
    pub fn shutdown(mut self) -> Result<(), LinkError> {
        self.send(&Message::Shutdown)
    }

    fn send(&mut self, message: &Message) -> Result<(), LinkError> {
        Ok(wire::write_frame(&mut self.stream, message)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reader thread's next event, within the timeout. After a failure or a timeout the
    /// link stays failed.
    fn next_event(&mut self) -> Result<Event, LinkError> {
        if let Some(why) = &self.failed {
            return Err(LinkError::Frame(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                why.clone(),
            ))));
        }
        let event = match self.timeout {
            Some(timeout) => self.events.recv_timeout(timeout),
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        let failed = |link: &mut HostLink, error: FrameError| {
            link.failed = Some(error.to_string());
            Err(LinkError::Frame(error))
        };
        match event {
            Ok(Event::Failed(error)) => failed(self, error),
            Ok(Event::Unexpected(kind)) => Err(LinkError::Guest(kind)),
            Ok(event) => Ok(event),
            Err(RecvTimeoutError::Timeout) => {
                failed(self, FrameError::Io(std::io::ErrorKind::TimedOut.into()))
            }
            Err(RecvTimeoutError::Disconnected) => failed(self, FrameError::Closed),
        }
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // The guest sees the link end. Its side stays open for what it still writes (the END
        // and REPORT behind an answer): shutting the read side too would fail those writes,
        // and with them the guest's reading of a `Shutdown` just sent. The reader thread ends
        // when the guest closes its side, or its VM is gone.
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

/// The reader thread: every frame from the guest, as it comes. Log lines go to the link's log
/// callback (or wait for one); the rest are events for the link's caller. Ends at the first
/// failure, which is the last event.
fn read_frames(mut stream: UnixStream, shared: &Mutex<Shared>, events: &mpsc::Sender<Event>) {
    let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let event = match wire::read_frame(&mut stream) {
            Ok(Message::Log { line }) => {
                let mut shared = lock();
                if let Some(log) = shared.log.as_mut() {
                    log(&line);
                } else if shared.early.len() < EARLY_LINES {
                    shared.early.push(line);
                }
                continue;
            }
            Ok(Message::InvokeTiming(timing)) => {
                lock().guest_timing = Some(timing);
                continue;
            }
            Ok(Message::InitDone { init_duration_ms }) => {
                Event::InitDone(Duration::from_millis(init_duration_ms))
            }
            Ok(
                answer @ (Message::Response { .. }
                | Message::Error { .. }
                | Message::ResponseStart { .. }
                | Message::ResponseChunk { .. }),
            ) => Event::Answer(answer),
            Ok(
                other @ (Message::Hello(_)
                | Message::Invoke(_)
                | Message::Restore { .. }
                | Message::Shutdown),
            ) => Event::Unexpected(other.kind()),
            Err(error) => {
                let _ = events.send(Event::Failed(error));
                return;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// The host's `Hello`.
fn hello() -> Hello {
    Hello::new(format!("vmm {}", env!("CARGO_PKG_VERSION")))
}

/// `Restore` with fresh entropy and the wall-clock time `now`.
fn restore_message(now: SystemTime) -> Result<Message, LinkError> {
    let mut entropy = vec![0u8; RESTORE_ENTROPY];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut entropy))
        .map_err(LinkError::Entropy)?;
    let wall_clock_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok(Message::Restore {
        entropy: entropy.into(),
        wall_clock_ms,
    })
}

/// The wall clock in microseconds since the epoch.
fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::host_link::{read_frame, write_frame};
    use std::sync::{Arc, Mutex};

    /// A fake guest: connects, says hello, then runs `script` on the stream.
    fn guest(
        path: PathBuf,
        script: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut stream = UnixStream::connect(path).unwrap();
            wire::handshake(&mut stream, &Hello::new("fake init")).unwrap();
            script(&mut stream);
        })
    }

    fn invoke(id: &str) -> Invoke {
        Invoke {
            request_id: id.into(),
            event: b"{}".as_slice().into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        }
    }

    #[test]
    fn invoke_relays_logs_and_skips_stale_answers() {
        let dir = std::env::temp_dir().join(format!("vmm-host-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = Listener::bind(&dir.join("v.sock"), PORT).unwrap();
        assert!(listener.path().ends_with(format!("v.sock_{PORT}")));
        let fake = guest(listener.path().to_owned(), |s| {
            let Message::Invoke(inv) = read_frame(s).unwrap() else {
                panic!("expected invoke")
            };
            for m in [
                Message::Log {
                    line: "START".into(),
                },
                Message::Response {
                    request_id: "stale".into(),
                    body: b"old".as_slice().into(),
                },
                Message::InvokeTiming(InvokeTiming {
                    request_id: inv.request_id.clone(),
                    next_us: 10,
                    outcome_us: 20,
                    sent_us: 30,
                }),
                Message::Error {
                    request_id: inv.request_id,
                    body: b"{\"errorType\":\"E\"}".as_slice().into(),
                    reset: Some(Reset::Timeout),
                },
                Message::InitDone {
                    init_duration_ms: 5,
                },
            ] {
                write_frame(s, &m).unwrap();
            }
            assert!(
                matches!(read_frame(s).unwrap(), Message::Restore { entropy, .. } if entropy.0.len() >= 32)
            );
            assert_eq!(read_frame(s).unwrap(), Message::Shutdown);
        });
        let mut link = listener.accept(Duration::from_secs(10)).unwrap();
        assert_eq!(link.peer().agent, "fake init");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        link.on_log(move |line| sink.lock().unwrap().push(line.to_owned()));
        assert_eq!(
            link.invoke(invoke("r1")).unwrap(),
            Outcome::Failure {
                body: b"{\"errorType\":\"E\"}".to_vec().into(),
                reset: Some(Reset::Timeout)
            }
        );
        assert_eq!(*lines.lock().unwrap(), vec!["START".to_owned()]);
        let timing = link.last_timing().unwrap();
        assert_eq!(
            (timing.next_us, timing.outcome_us, timing.sent_us),
            (10, 20, 30)
        );
        assert_eq!(link.wait_init_done().unwrap(), Duration::from_millis(5));
        link.restore().unwrap();
        link.shutdown().unwrap();
        fake.join().unwrap();
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn accept_times_out_and_refuses_a_wrong_version() {
        let dir = std::env::temp_dir().join(format!("vmm-host-link-v-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = Listener::bind(&dir.join("v.sock"), 7).unwrap();
        assert!(matches!(
            listener.accept(Duration::from_millis(20)),
            Err(LinkError::AcceptTimeout(_))
        ));
        let path = listener.path().to_owned();
        let fake = std::thread::spawn(move || {
            let mut stream = UnixStream::connect(path).unwrap();
            let hello = Hello {
                version: proto::host_link::VERSION + 1,
                agent: "future init".into(),
            };
            write_frame(&mut stream, &Message::Hello(hello)).unwrap();
            let _ = read_frame(&mut stream);
        });
        assert!(matches!(
            listener.accept(Duration::from_secs(10)),
            Err(LinkError::Handshake(HandshakeError::Version { .. }))
        ));
        fake.join().unwrap();
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `dial_at` hands the restored guest the time it is given (how a benchmark simulates a
    /// snapshot's age), with our `Hello` first and fresh entropy.
    #[test]
    fn dial_at_tells_the_guest_the_given_time() {
        let dir = std::env::temp_dir().join(format!("vmm-host-link-dial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("init.listen");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let day_later = SystemTime::now() + Duration::from_secs(86_400);
        let fake = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let Message::Hello(_) = read_frame(&mut stream).unwrap() else {
                panic!("expected the host's Hello first")
            };
            let Message::Restore {
                entropy,
                wall_clock_ms,
            } = read_frame(&mut stream).unwrap()
            else {
                panic!("expected Restore")
            };
            write_frame(&mut stream, &Message::Hello(Hello::new("fake init"))).unwrap();
            (entropy.0.len(), wall_clock_ms)
        });
        let link = HostLink::dial_at(GuestAddr::Unix(&path), day_later)
            .unwrap()
            .finish(Duration::from_secs(10))
            .unwrap();
        let (entropy, wall_clock_ms) = fake.join().unwrap();
        assert_eq!(entropy, RESTORE_ENTROPY);
        let sent = UNIX_EPOCH + Duration::from_millis(wall_clock_ms);
        let off = sent
            .duration_since(day_later)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_millis(2),
            "{wall_clock_ms} is not the time given"
        );
        assert_eq!(link.peer().agent, "fake init");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
