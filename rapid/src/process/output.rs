//! The runtime's stdout and stderr, forwarded line by line to the log sink.
//!
//! A background task reads each pipe as data arrives. The environment can also drain the pipes
//! synchronously ([`Output::drain`]) before it writes `END`: whatever the function printed before
//! posting its response is in the pipe by then, so its lines come before `END` and `REPORT`,
//! as on Lambda, instead of racing them.

use proto::log::LogSink;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::{ChildStderr, ChildStdout};

/// Longest log line passed on whole; longer lines are split, so a runtime printing without
/// newlines cannot make the server buffer without bound.
pub const MAX_LINE: usize = 256 * 1024;

/// Both output pipes of one runtime process.
#[derive(Clone, Default)]
pub struct Output {
    pipes: Vec<Arc<Pipe>>,
}

impl Output {
    /// Starts forwarding `stdout` and `stderr` to `log`. A pipe that cannot be registered with
    /// the reactor is dropped, with a line saying so: the runtime then gets `EPIPE` on write,
    /// which beats a server that cannot start functions.
    pub fn capture(
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
        log: Arc<dyn LogSink>,
    ) -> Output {
        let fds = [
            stdout.map(ChildStdout::into_owned_fd),
            stderr.map(ChildStderr::into_owned_fd),
        ];
        let mut pipes = Vec::new();
        for fd in fds.into_iter().flatten() {
            match fd.and_then(register) {
                Ok(fd) => {
                    let pipe = Arc::new(Pipe {
                        fd,
                        lines: Mutex::default(),
                        log: Arc::clone(&log),
                    });
                    tokio::spawn(forward(Arc::clone(&pipe)));
                    pipes.push(pipe);
                }
                Err(e) => log.line(&format!("rapid: cannot capture runtime output: {e}")),
            }
        }
        Output { pipes }
    }

    /// Forwards every complete line already written to either pipe, without waiting.
    pub fn drain(&self) {
        for pipe in &self.pipes {
            let _ = pipe.drain();
        }
    }
}

/// Registers a pipe's read end with the reactor, in non-blocking mode (tokio hands the pipe
/// out blocking).
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: fcntl(2) on a descriptor we own, with plain integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl(2) on a descriptor we own, with plain integer arguments.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an `OwnedFd` is open for as long as it lives, and the `AsyncFd` owns it, so the
    // descriptor stays valid and the same for the `AsyncFd`'s whole life.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    Ok(registered?)
}

struct Pipe {
    fd: AsyncFd<OwnedFd>,
    /// The lock also keeps the reader task and [`Output::drain`] from reading at once, which
    /// could reorder lines.
    lines: Mutex<LineBuffer>,
    log: Arc<dyn LogSink>,
}

/// What a non-blocking read pass ended with.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// Nothing more to read now.
    WouldBlock,
    /// The writing end is closed (the runtime and its children exited) or broken.
    Closed,
}

impl Pipe {
    fn drain(&self) -> Drained {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let log = &*self.log;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // SAFETY: `chunk` is a writable buffer of `chunk.len()` bytes that outlives the call,
            // and the descriptor is owned by `self.fd`, so it is open.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                )
            };
            match usize::try_from(n) {
                Ok(0) => {
                    lines.flush(log);
                    return Drained::Closed;
                }
                Ok(n) => lines.push(&chunk[..n.min(chunk.len())], log),
                Err(_) => match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock => return Drained::WouldBlock,
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        lines.flush(log);
                        return Drained::Closed;
                    }
                },
            }
        }
    }
}

/// Bytes of a line not yet ended.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds bytes and logs every line they complete; an overlong line is logged in pieces.
    fn push(&mut self, bytes: &[u8], log: &dyn LogSink) {
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..pos]);
            self.flush(log);
            rest = &rest[pos + 1..];
        }
        self.pending.extend_from_slice(rest);
        while self.pending.len() >= MAX_LINE {
            let piece: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            emit(&piece, log);
        }
    }

    /// Logs what is pending as one line, if anything is.
    fn flush(&mut self, log: &dyn LogSink) {
        if !self.pending.is_empty() {
            emit(&self.pending, log);
            self.pending.clear();
        }
    }
}

fn emit(line: &[u8], log: &dyn LogSink) {
    let line = String::from_utf8_lossy(line);
    log.line(line.strip_suffix('\r').unwrap_or(&line));
}

async fn forward(pipe: Arc<Pipe>) {
    loop {
        let Ok(mut ready) = pipe.fd.readable().await else {
            return;
        };
        match pipe.drain() {
            // Readiness is cleared only if no new event came in since `readable` returned, so
            // data written meanwhile is not missed.
            Drained::WouldBlock => ready.clear_ready(),
            Drained::Closed => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl LogSink for Lines {
        fn line(&self, line: &str) {
            self.0.lock().unwrap().push(line.to_owned());
        }
    }

    #[test]
    fn lines_are_split_bounded_and_lossy() {
        let log = Lines::default();
        let mut buffer = LineBuffer::default();
        buffer.push(b"one\r\ntw", &log);
        buffer.push(b"o\n\xffbad\nrest", &log);
        assert_eq!(*log.0.lock().unwrap(), ["one", "two", "\u{fffd}bad"]);
        assert_eq!(buffer.pending, b"rest");

        log.0.lock().unwrap().clear();
        buffer.push(&vec![b'x'; 2 * MAX_LINE + 5], &log);
        let got = log.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(buffer.pending.len(), 4 + 5);
        buffer.flush(&log);
        assert_eq!(log.0.lock().unwrap().len(), 3);
        assert!(buffer.pending.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn drain_forwards_what_was_written_without_waiting() {
        use std::io::Write;
        let (mut writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        reader.set_nonblocking(true).unwrap();
        let log = Arc::new(Lines::default());
        let pipe = Pipe {
            fd: register(OwnedFd::from(reader)).unwrap(),
            lines: Mutex::default(),
            log: Arc::clone(&log) as Arc<dyn LogSink>,
        };
        writer.write_all(b"before END\npartial").unwrap();
        assert_eq!(pipe.drain(), Drained::WouldBlock);
        assert_eq!(*log.0.lock().unwrap(), ["before END"]);
        drop(writer);
        assert_eq!(pipe.drain(), Drained::Closed);
        assert_eq!(*log.0.lock().unwrap(), ["before END", "partial"]);
    }
}
