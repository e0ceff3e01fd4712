//! The API thread: serves the Unix socket with one `poll(2)` loop over the listener, its
//! connections and an eventfd the VMM's main thread writes when it has answered. Requests go to
//! the main thread as typed [`ApiRequest`]s on a channel; the answer comes back on another.
//!
//! A client cannot stop the VM or this thread: everything is non-blocking; a request's bytes
//! are bounded (`super::parse`); a connection that stalls in the middle of a request or a
//! response is closed after [`IO_TIMEOUT`]; at most [`MAX_CONNECTIONS`] are open, the
//! longest-idle one closed to make room; bad bytes get a `400` and a closed connection.

use super::parse::{self, Framing, HttpRequest, MAX_BODY_BYTES, MAX_HEADER_BYTES};
use super::routes::{self, ApiRequest};
use super::ApiResponse;
use crate::seccomp::{self, ThreadKind};
use logging::Chain;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a request may take to arrive once started, and a response to be taken.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the main thread hears.
pub enum VmmEvent {
    /// A request to answer through `reply`.
    Request {
        request: ApiRequest,
        reply: Responder,
    },
    /// The VM has stopped (from its exit watcher).
    Stopped,
    /// The API thread ended on an error; the socket is no longer served.
    ApiFailed(String),
}

/// Carries one answer back to the connection that asked.
pub struct Responder {
    token: u64,
    responses: mpsc::Sender<(u64, ApiResponse)>,
    wake: Arc<EventFd>,
}

impl Responder {
    pub fn send(self, response: ApiResponse) {
        // The API thread may be gone (the process is ending); nothing is waiting then.
        if self.responses.send((self.token, response)).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// Starts the API thread on `listener`; requests arrive on `events`.
pub fn spawn(listener: UnixListener, events: mpsc::Sender<VmmEvent>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let (responses, answered) = mpsc::channel();
    let server = Server {
        listener,
        events: events.clone(),
        wake,
        responses,
        answered,
        connections: Vec::new(),
        next_token: 0,
    };
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            // First thing: the bytes of any client are read only under the filter.
            if let Err(e) = seccomp::install(ThreadKind::Api) {
                let _ = events.send(VmmEvent::ApiFailed(Chain(&e).to_string()));
                return;
            }
            if let Err(e) = server.run() {
                let _ = events.send(VmmEvent::ApiFailed(format!("API server: {e}")));
            }
        })
}

enum Phase {
    /// Reading a request (none yet when the input is empty).
    Reading,
    /// The request went to the main thread with this token.
    Waiting(u64),
    /// Writing the output; then reading again, or closing.
    Writing,
}

struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    phase: Phase,
    /// When the current partial request or response began (for [`IO_TIMEOUT`]).
    since: Instant,
    /// When it last did anything (the idlest is closed first when full).
    last_active: Instant,
    close_after: bool,
    continue_sent: bool,
    closed: bool,
}

struct Server {
    listener: UnixListener,
    events: mpsc::Sender<VmmEvent>,
    wake: Arc<EventFd>,
    responses: mpsc::Sender<(u64, ApiResponse)>,
    answered: mpsc::Receiver<(u64, ApiResponse)>,
    connections: Vec<Connection>,
    next_token: u64,
}

/// What one `poll` said, copied out so the connections can be changed afterwards.
struct Ready {
    listener: bool,
    wake: bool,
    connections: Vec<PollFlags>,
}

impl Server {
    fn run(mut self) -> io::Result<()> {
        loop {
            let ready = self.poll()?;
            if ready.wake {
                self.take_answers();
            }
            for (index, flags) in ready.connections.into_iter().enumerate() {
                if !flags.is_empty() {
                    if let Some(connection) = self.connections.get_mut(index) {
                        let request = connection.on_ready(flags);
                        if let Some(request) = request {
                            self.forward(index, request);
                        }
                    }
                }
            }
            self.expire();
            if ready.listener {
                self.accept()?;
            }
            self.connections.retain(|c| !c.closed);
        }
    }

    fn poll(&self) -> io::Result<Ready> {
        let interest = |c: &Connection| match c.phase {
            Phase::Reading => PollFlags::POLLIN,
            Phase::Waiting(_) => PollFlags::empty(),
            Phase::Writing => PollFlags::POLLOUT,
        };
        let mut fds = Vec::with_capacity(self.connections.len() + 2);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        // SAFETY: the eventfd is owned by `self.wake`, which outlives this borrow (the poll
        // set is dropped before this function returns).
        let wake = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.wake.as_raw_fd()) };
        fds.push(PollFd::new(wake, PollFlags::POLLIN));
        for connection in &self.connections {
            fds.push(PollFd::new(connection.stream.as_fd(), interest(connection)));
        }
        let deadline = self
            .connections
            .iter()
            .filter_map(Connection::deadline)
            .min();
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                // Rounded up, so the wake-up is past the deadline rather than just before.
                let left = deadline.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis() + 1).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let flags = |fd: &PollFd| fd.revents().unwrap_or(PollFlags::empty());
        Ok(Ready {
            listener: flags(&fds[0]).contains(PollFlags::POLLIN),
            wake: flags(&fds[1]).contains(PollFlags::POLLIN),
            connections: fds[2..].iter().map(flags).collect(),
        })
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The client went away before we took it, or we are out of descriptors for
                // now: not this server's end.
                Err(e) if is_transient_accept_error(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.connections.retain(|c| !c.closed);
            if self.connections.len() >= MAX_CONNECTIONS && !self.close_idlest() {
                // Every slot is mid-request: this one is turned away (dropping it closes it).
                continue;
            }
            let now = Instant::now();
            self.connections.push(Connection {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                phase: Phase::Reading,
                since: now,
                last_active: now,
                close_after: false,
                continue_sent: false,
                closed: false,
            });
        }
    }

    /// Closes the connection idle the longest between requests; false when none is idle.
    fn close_idlest(&mut self) -> bool {
        let idlest = self
            .connections
            .iter_mut()
            .filter(|c| matches!(c.phase, Phase::Reading) && c.input.is_empty())
            .min_by_key(|c| c.last_active);
        match idlest {
            Some(connection) => {
                connection.closed = true;
                self.connections.retain(|c| !c.closed);
                true
            }
            None => false,
        }
    }

    fn forward(&mut self, index: usize, request: HttpRequest) {
        let routed = routes::route(&request.method, &request.path, &request.body);
        let Some(connection) = self.connections.get_mut(index) else {
            return;
        };
        connection.close_after |= !request.keep_alive;
        match routed {
            Ok(typed) => {
                let token = self.next_token;
                self.next_token += 1;
                connection.phase = Phase::Waiting(token);
                let reply = Responder {
                    token,
                    responses: self.responses.clone(),
                    wake: self.wake.clone(),
                };
                let sent = self.events.send(VmmEvent::Request {
                    request: typed,
                    reply,
                });
                if sent.is_err() {
                    connection.respond(ApiResponse::fault(503, "the VMM is shutting down"));
                }
            }
            Err(e) => connection.respond(ApiResponse::fault(e.status, &e.message)),
        }
    }

    fn take_answers(&mut self) {
        let _ = self.wake.read();
        while let Ok((token, response)) = self.answered.try_recv() {
            let waiting = self
                .connections
                .iter_mut()
                .position(|c| matches!(c.phase, Phase::Waiting(t) if t == token));
            // The client may have hung up meanwhile: then the answer goes nowhere.
            if let Some(index) = waiting {
                let connection = &mut self.connections[index];
                connection.respond(response);
                if let Some(request) = connection.after_write() {
                    self.forward(index, request);
                }
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        for connection in &mut self.connections {
            if connection.deadline().is_some_and(|d| d <= now) {
                connection.closed = true;
            }
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EMFILE | libc::ENFILE | libc::ENOBUFS)
    )
}

/// Bytes read from a client are kept up to a whole request of the largest size.
const MAX_INPUT: usize = MAX_HEADER_BYTES + MAX_BODY_BYTES;

impl Connection {
    /// When a stalled request or response is given up on; `None` while idle or waiting.
    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Reading if self.input.is_empty() => None,
            Phase::Reading | Phase::Writing => Some(self.since + IO_TIMEOUT),
            Phase::Waiting(_) => None,
        }
    }

    /// Acts on what `poll` said; returns a whole request when one has arrived.
    fn on_ready(&mut self, flags: PollFlags) -> Option<HttpRequest> {
        self.last_active = Instant::now();
        match self.phase {
            Phase::Reading => {
                let open = self.read_available();
                let request = self.frame();
                if !open {
                    // The client is done sending: a whole request it sent is still answered
                    // (on a half-closed socket), then the connection is closed.
                    self.close_after = true;
                    if request.is_none() && !matches!(self.phase, Phase::Writing) {
                        self.closed = true;
                    }
                }
                request
            }
            Phase::Writing => self.after_write(),
            Phase::Waiting(_) => {
                // Only errors and hang-ups wake a waiting connection: the answer is dropped.
                if flags.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                    self.closed = true;
                }
                None
            }
        }
    }

    /// Reads what the socket has; false when the client has stopped sending (end of stream)
    /// or the connection broke.
    fn read_available(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            if self.input.len() >= MAX_INPUT {
                // Held back until this request is framed (which will refuse it if too big).
                return true;
            }
            let room = (MAX_INPUT - self.input.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return false,
                Ok(n) => {
                    if self.input.is_empty() {
                        self.since = Instant::now();
                    }
                    self.input.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// The next whole request in the input, if there is one; a bad one is answered here.
    fn frame(&mut self) -> Option<HttpRequest> {
        if self.input.is_empty() {
            return None;
        }
        match parse::parse_request(&self.input) {
            Ok(Framing::Complete { request, used }) => {
                self.input.drain(..used);
                self.continue_sent = false;
                Some(request)
            }
            Ok(Framing::Incomplete { continue_wanted }) => {
                if continue_wanted && !self.continue_sent {
                    self.continue_sent = true;
                    // 25 bytes on an idle socket; a client that cannot take them is gone.
                    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
                    if self.stream.write_all(interim).is_err() {
                        self.closed = true;
                    }
                }
                None
            }
            Err(e) => {
                self.close_after = true;
                self.respond(ApiResponse::fault(e.status(), &e.to_string()));
                None
            }
        }
    }

    fn respond(&mut self, response: ApiResponse) {
        self.output = response.to_http(!self.close_after);
        self.phase = Phase::Writing;
        self.since = Instant::now();
        self.last_active = self.since;
    }

    /// Writes what it can; once the response is out, closes or goes back to reading (and
    /// returns a request already in the input).
    fn after_write(&mut self) -> Option<HttpRequest> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => {
                    self.closed = true;
                    return None;
                }
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return None;
                }
            }
        }
        if self.close_after {
            self.closed = true;
            return None;
        }
        self.phase = Phase::Reading;
        self.since = Instant::now();
        self.frame()
    }
}
