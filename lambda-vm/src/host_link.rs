//! The host side of the host link (see [`proto::host_link`] for the frames).
//!
//! The guest init connects to vsock CID 2, port [`PORT`]; with Firecracker-style hybrid vsock that
//! connection arrives on the Unix socket `<uds>_<port>`. [`Listener`] listens there, and
//! [`Listener::accept`] returns a [`HostLink`] once the `Hello`s are exchanged. A `HostLink` is
//! synchronous and serves one caller: [`HostLink::invoke`] sends an `Invoke` and reads frames
//! until its `Response` or `Error`, passing `Log` lines to the log callback on the way.
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
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
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

type LogFn = Box<dyn FnMut(&str) + Send>;

/// One connection to a guest init.
pub struct HostLink {
    stream: UnixStream,
    peer: Hello,
    log: LogFn,
    init_done: Option<Duration>,
    /// The guest's timing of the invocation whose answer comes next (timing on only).
    guest_timing: Option<InvokeTiming>,
    /// The guest's timing of the last invocation answered.
    last_timing: Option<InvokeTiming>,
}

impl HostLink {
    /// Exchanges `Hello`s on a connected stream, waiting up to `timeout` for the guest's.
    pub fn handshake(mut stream: UnixStream, timeout: Duration) -> Result<HostLink, LinkError> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(LinkError::Timeout)?;
        let agent = format!("vmm {}", env!("CARGO_PKG_VERSION"));
        let peer = wire::handshake(&mut stream, &Hello::new(agent))?;
        stream.set_read_timeout(None).map_err(LinkError::Timeout)?;
        Ok(HostLink {
            stream,
            peer,
            log: Box::new(|_| {}),
            init_done: None,
            guest_timing: None,
            last_timing: None,
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

    /// Where the guest's log lines go (by default nowhere).
    pub fn on_log(&mut self, log: impl FnMut(&str) + Send + 'static) {
        self.log = Box::new(log);
    }

    /// Bounds every wait for a frame; `None` waits forever. A read that times out leaves the
    /// link unusable.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), LinkError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(LinkError::Timeout)
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
            let message = match self.next_frame()? {
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
            self.last_timing = self
                .guest_timing
                .take()
                .filter(|t| t.request_id == request_id);
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
        while self.init_done.is_none() {
            self.next_frame()?;
        }
        Ok(self.init_done.take().unwrap_or_default())
    }

    /// Sends `Restore` with fresh entropy and the host's wall-clock time. The guest reseeds its
    /// RNG and sets its clock, then lets a runtime waiting in `restore/next` go on.
    pub fn restore(&mut self) -> Result<(), LinkError> {
        let mut entropy = vec![0u8; RESTORE_ENTROPY];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut entropy))
            .map_err(LinkError::Entropy)?;
        let wall_clock_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.send(&Message::Restore {
            entropy: entropy.into(),
            wall_clock_ms,
        })
    }

    /// Tells the guest to stop its runtime and power off.
    pub fn shutdown(mut self) -> Result<(), LinkError> {
        self.send(&Message::Shutdown)
    }

    fn send(&mut self, message: &Message) -> Result<(), LinkError> {
        Ok(wire::write_frame(&mut self.stream, message)?)
    }

    /// Reads one frame, handling the guest's notifications; returns it too.
    fn next_frame(&mut self) -> Result<Message, LinkError> {
        let message = wire::read_frame(&mut self.stream)?;
        match &message {
            Message::Log { line } => (self.log)(line),
            Message::InitDone { init_duration_ms } => {
                self.init_done = Some(Duration::from_millis(*init_duration_ms));
            }
            Message::InvokeTiming(timing) => self.guest_timing = Some(timing.clone()),
            Message::Response { .. }
            | Message::Error { .. }
            | Message::ResponseStart { .. }
            | Message::ResponseChunk { .. } => {}
            other @ (Message::Hello(_)
            | Message::Invoke(_)
            | Message::Restore { .. }
            | Message::Shutdown) => return Err(LinkError::Guest(other.kind())),
        }
        Ok(message)
    }
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
}
