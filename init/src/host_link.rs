//! The guest side of the host link: connecting (AF_VSOCK to the host, or a Unix socket outside a
//! VM), reading and writing frames on the tokio thread, and the outbox that queues frames for the
//! host across reconnections. The frames themselves are [`proto::host_link`]'s.

use crate::sys;
use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use proto::host_link::{self as wire, FrameError, HandshakeError, Hello, Message};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// Most bytes of log lines queued for the host; beyond it lines are dropped and counted, so a
/// chatty runtime and a slow or absent host cannot exhaust the guest's memory.
pub const LOG_BUDGET: usize = 4 * 1024 * 1024;

/// What a read or a write on the link waits for: an error must wake both (see
/// [`Conn::read_full`]).
const READ_OR_ERROR: Interest = Interest::READABLE.add(Interest::ERROR);
const WRITE_OR_ERROR: Interest = Interest::WRITABLE.add(Interest::ERROR);

/// Where the host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddr {
    /// `vsock:CID:PORT`
    Vsock { cid: u32, port: u32 },
    /// `unix:PATH`
    Unix(PathBuf),
}

impl FromStr for LinkAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<LinkAddr, String> {
        if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(LinkAddr::Unix(path.into()));
        }
        let vsock = s.strip_prefix("vsock:").and_then(|rest| {
            let (cid, port) = rest.split_once(':')?;
            Some(LinkAddr::Vsock {
                cid: cid.parse().ok()?,
                port: port.parse().ok()?,
            })
        });
        vsock.ok_or_else(|| "expected unix:PATH or vsock:CID:PORT".into())
    }
}

impl std::fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            LinkAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How much a read from the link asks for at least: a whole invoke of ordinary size (and any
/// frames behind it) in one system call.
const READ_CHUNK: usize = 64 * 1024;
/// A read buffer grown past this for a large frame is given back once it is empty.
const KEEP_READ_BUFFER: usize = 1024 * 1024;

/// A connected, non-blocking stream socket to the host.
pub struct Conn {
    fd: AsyncFd<OwnedFd>,
    /// Bytes read but not yet taken as frames. Only the reader uses it; the lock is never
    /// contended, it only makes `Conn` shareable between the reading and the writing task.
    inbox: tokio::sync::Mutex<Inbox>,
}

/// A read buffer: `buf[start..end]` holds bytes read and not yet taken.
struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbox {
    fn new() -> Inbox {
        Inbox {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.buf.len() > KEEP_READ_BUFFER {
                self.buf = vec![0; READ_CHUNK];
            }
        }
    }

    /// Room after the unread bytes for at least `want` bytes in all (unread included), and
    /// never less than a [`READ_CHUNK`].
    fn room(&mut self, want: usize) -> &mut [u8] {
        let want = want.max(READ_CHUNK);
        if self.buf.len() - self.start < want {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        }
        &mut self.buf[self.end..]
    }
}

impl Conn {
    fn new(fd: AsyncFd<OwnedFd>) -> Conn {
        Conn {
            fd,
            inbox: tokio::sync::Mutex::new(Inbox::new()),
        }
    }

    /// Connects and exchanges `Hello`s.
    pub async fn open(addr: &LinkAddr) -> Result<(Conn, Hello), HandshakeError> {
        let conn = Conn::connect(addr).await.map_err(FrameError::Io)?;
        let agent = format!("init {}", env!("CARGO_PKG_VERSION"));
        conn.write(&Message::Hello(Hello::new(agent))).await?;
        let peer = wire::check_hello(conn.read().await?)?;
        Ok((conn, peer))
    }

    async fn connect(addr: &LinkAddr) -> io::Result<Conn> {
        match addr {
            LinkAddr::Unix(path) => {
                let stream = std::os::unix::net::UnixStream::connect(path)?;
                stream.set_nonblocking(true)?;
                Ok(Conn::new(sys::register(OwnedFd::from(stream))?))
            }
            LinkAddr::Vsock { cid, port } => Conn::connect_vsock(*cid, *port).await,
        }
    }

    async fn connect_vsock(cid: u32, port: u32) -> io::Result<Conn> {
        let socket = Socket::new(Domain::VSOCK, Type::STREAM.nonblocking(), None)?;
        let connected = socket.connect(&SockAddr::vsock(cid, port));
        let in_progress = match connected {
            Ok(()) => false,
            Err(e) if e.raw_os_error().map(Errno::from_raw) == Some(Errno::EINPROGRESS) => true,
            Err(e) => return Err(e),
        };
        let fd = sys::register(OwnedFd::from(socket))?;
        if in_progress {
            fd.ready(WRITE_OR_ERROR).await?.retain_ready();
            if let Some(error) = SockRef::from(fd.get_ref()).take_error()? {
                return Err(error);
            }
        }
        Ok(Conn::new(fd))
    }

    /// Reads one frame. Reads are buffered, so one system call usually brings a whole frame
    /// (or several); a length prefix is checked before room for its body is made.
    pub async fn read(&self) -> Result<Message, FrameError> {
        let mut inbox = self.inbox.lock().await;
        loop {
            let unread = inbox.unread();
            if let Some((body, taken)) = wire::split_frame(unread)? {
                let message = wire::decode(body);
                inbox.consume(taken);
                return message;
            }
            let want = wire::frame_len(unread)?.unwrap_or(wire::LEN_PREFIX);
            let have = unread.len();
            match self.read_some(inbox.room(want)).await? {
                0 if have == 0 => return Err(FrameError::Closed),
                0 if have < wire::LEN_PREFIX => {
                    return Err(FrameError::Truncated {
                        expected: wire::LEN_PREFIX,
                        got: have,
                    })
                }
                0 => {
                    return Err(FrameError::Truncated {
                        expected: want - wire::LEN_PREFIX,
                        got: have - wire::LEN_PREFIX,
                    })
                }
                n => inbox.end += n,
            }
        }
    }

    /// Writes one frame.
    pub async fn write(&self, message: &Message) -> Result<(), FrameError> {
        let mut sent = 0;
        self.write_all(&wire::encode(message)?, &mut sent)
            .await
            .map_err(FrameError::Io)
    }

    /// One read into `buf`: how much was read, 0 at the end of the stream.
    ///
    /// Waits for errors as well as data: after a snapshot restore the guest kernel resets the
    /// vsock connection and then reports `EPOLLOUT|EPOLLERR` only, never `EPOLLIN` or a hang-up
    /// (guest kernel 6.1 behaviour, on hardware KVM too), so a wait for read readiness alone would sleep for ever
    /// and init would never reconnect. The `read` then returns the error.
    async fn read_some(&self, buf: &mut [u8]) -> Result<usize, FrameError> {
        loop {
            let mut guard = self.fd.ready(READ_OR_ERROR).await.map_err(FrameError::Io)?;
            match guard.try_io(|fd| Ok(nix::unistd::read(fd, buf)?)) {
                Ok(Ok(n)) => {
                    // A short read emptied the socket: the next read waits for the reactor
                    // instead of making a system call only to hear EAGAIN. (The readiness is
                    // cleared only if no newer event arrived meanwhile.)
                    if n > 0 && n < buf.len() {
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(FrameError::Io(e)),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `bytes`; `sent` counts what went out, also when the write fails midway or
    /// the future is dropped.
    pub async fn write_all(&self, bytes: &[u8], sent: &mut usize) -> io::Result<()> {
        while *sent < bytes.len() {
            let mut guard = self.fd.ready(WRITE_OR_ERROR).await?;
            let rest = &bytes[*sent..];
            // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
            let result = guard.try_io(|fd| Ok(send(fd.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL)?));
            match result {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => *sent += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// Frames for the host, queued until a connection takes them. Cloneable; every clone feeds the
/// same queue. Pushing never blocks, so it is safe from rapid's log sink (called under its lock).
#[derive(Clone, Default)]
pub struct Outbox {
    inner: Arc<OutboxInner>,
}

#[derive(Default)]
struct OutboxInner {
    queue: Mutex<VecDeque<Message>>,
    ready: Notify,
    log_bytes: AtomicUsize,
    dropped_lines: AtomicU64,
}

impl Outbox {
    pub fn send(&self, message: Message) {
        self.lock().push_back(message);
        self.inner.ready.notify_one();
    }

    /// Queues a log line, or drops and counts it when [`LOG_BUDGET`] is used up.
    pub fn log(&self, line: &str) {
        let used = self
            .inner
            .log_bytes
            .fetch_add(line.len(), Ordering::Relaxed);
        if used + line.len() > LOG_BUDGET {
            self.inner
                .log_bytes
                .fetch_sub(line.len(), Ordering::Relaxed);
            self.inner.dropped_lines.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.send(Message::Log { line: line.into() });
    }

    /// Waits for the next frame to write.
    pub async fn next(&self) -> Message {
        loop {
            let notified = self.inner.ready.notified();
            if let Some(message) = self.lock().pop_front() {
                return message;
            }
            notified.await;
        }
    }

    /// The next frame to write, if one is queued.
    pub fn try_next(&self) -> Option<Message> {
        self.lock().pop_front()
    }

    /// Puts back a frame a broken connection could not write, to go first on the next one.
    pub fn unsend(&self, message: Message) {
        self.lock().push_front(message);
    }

    /// Marks a log frame as written (its bytes leave the budget); reports lines dropped so far.
    pub fn written(&self, message: &Message) {
        if let Message::Log { line } = message {
            self.inner
                .log_bytes
                .fetch_sub(line.len(), Ordering::Relaxed);
            let dropped = self.inner.dropped_lines.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                self.send(Message::Log {
                    line: format!("init: {dropped} log lines dropped (the host did not keep up)"),
                });
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.inner.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn link_addresses_parse_and_print() {
        for text in ["unix:/run/x_9999", "vsock:2:9999"] {
            assert_eq!(text.parse::<LinkAddr>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "unix:",
            "vsock:2",
            "vsock:x:1",
            "vsock:2:99999999999",
            "tcp:1",
        ] {
            assert!(bad.parse::<LinkAddr>().is_err(), "{bad}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_outbox_bounds_logs_and_reports_drops() {
        let outbox = Outbox::default();
        let line = "x".repeat(LOG_BUDGET / 2);
        outbox.log(&line);
        outbox.log(&line);
        outbox.log(&line); // over budget: dropped
        outbox.send(Message::Shutdown);
        let first = outbox.next().await;
        outbox.written(&first);
        assert!(matches!(outbox.next().await, Message::Log { .. }));
        assert_eq!(outbox.next().await, Message::Shutdown);
        assert!(matches!(
            outbox.next().await,
            Message::Log { line } if line.contains("1 log lines dropped")
        ));
    }

    /// The write end of a pipe whose reader is gone polls `POLLOUT|POLLERR` and nothing else:
    /// what a guest's vsock socket reports after a snapshot restore reset its connection.
    fn error_only_descriptor() -> OwnedFd {
        use nix::fcntl::OFlag;
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let (reader, writer) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap();
        drop(reader);
        // nix has no name for POLLRDHUP.
        let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
        let asked = PollFlags::POLLIN | PollFlags::POLLOUT | rdhup;
        let mut fds = [PollFd::new(writer.as_fd(), asked)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 1);
        assert_eq!(
            fds[0].revents(),
            Some(PollFlags::POLLOUT | PollFlags::POLLERR)
        );
        writer
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_ends_on_an_error_without_data_or_hang_up() {
        let conn = Conn::new(sys::register(error_only_descriptor()).unwrap());
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read()).await;
        assert!(
            matches!(read, Ok(Err(FrameError::Io(_)))),
            "a read on a descriptor that reports only an error must fail, not wait: {read:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_cross_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("link");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let host = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let hello = wire::handshake(&mut stream, &Hello::new("test host")).unwrap();
            assert!(hello.agent.starts_with("init "));
            let big = Message::Log {
                line: "y".repeat(3 << 20),
            };
            wire::write_frame(&mut stream, &big).unwrap();
            assert_eq!(wire::read_frame(&mut stream).unwrap(), big);
        });
        let (conn, peer) = Conn::open(&LinkAddr::Unix(path)).await.unwrap();
        assert_eq!(peer.agent, "test host");
        let echoed = conn.read().await.unwrap();
        conn.write(&echoed).await.unwrap();
        assert!(matches!(conn.read().await, Err(FrameError::Closed)));
        host.join().unwrap();
    }
}
