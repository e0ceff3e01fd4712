//! The watch for a client that hung up while its request waits ([`Caller`]).

use std::sync::Arc;

/// The client connection a request came on, in the request's extensions, so that a handler
/// can notice a caller that has gone while its request waits ([`Caller::gone`]).
///
/// A client that closed its connection and one that only half-closed it (`shutdown(SHUT_WR)`
/// after sending, and still reading) look the same to the server, a FIN, until the server
/// writes: a closed socket answers a write with a reset. So on a FIN the server writes an
/// interim `HTTP/1.1 100 Continue` (every HTTP/1.1 client must accept 1xx responses before
/// the final one; Python's `http.client` skips 100 only), and a reset back means the caller is
/// gone. A caller that is still there gets the 100, then its answer.
///
/// An HTTP/1.0 client knows no 1xx response, so it is never sent one: for such a caller a FIN
/// cannot tell a hang-up from a half-close, and the caller is taken to be there (its request
/// runs; the answer may find nobody).
#[derive(Clone)]
pub struct Caller {
    /// A duplicate of the connection's socket, registered with the reactor once per
    /// connection: it stays the same socket for as long as a handler holds it, even after the
    /// connection ended and its descriptor number was reused.
    socket: Arc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    /// Whether the request's HTTP version allows the interim response (HTTP/1.1 and later).
    interim_allowed: bool,
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
    pub(crate) fn of(stream: &tokio::net::TcpStream) -> Option<Caller> {
        use std::os::fd::AsFd;
        use tokio::io::{unix::AsyncFd, Interest};
        let socket = stream.as_fd().try_clone_to_owned().ok()?;
        // SAFETY: the `AsyncFd` owns the descriptor, so it stays open and the same for the
        // `AsyncFd`'s whole life.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        Some(Caller {
            socket: Arc::new(socket.ok()?),
            interim_allowed: true,
        })
    }

    /// This caller as seen by one request of HTTP version `version`.
    pub(crate) fn for_request(&self, version: hyper::Version) -> Caller {
        Caller {
            socket: Arc::clone(&self.socket),
            interim_allowed: version >= hyper::Version::HTTP_11,
        }
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
        // A FIN, from a client that may not be sent the probe: taken to be there.
        if !self.interim_allowed {
            return false;
        }
        // From here the socket stays readable, so the reset is looked for on a timer.
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
    use tokio::net::TcpListener;

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

    /// HTTP/1.0 has no 1xx responses: its caller is never sent one.
    #[tokio::test(flavor = "current_thread")]
    async fn an_http_1_0_caller_that_half_closed_is_never_sent_an_interim_100() {
        let (caller, mut client) = connection().await;
        let caller = caller.for_request(hyper::Version::HTTP_10);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let gone = tokio::time::timeout(HANG_UP_PROBE * 2, caller.gone()).await;
        assert!(gone.is_err(), "an HTTP/1.0 caller was taken for gone");
        client.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let read = client.read(&mut byte);
        assert!(
            read.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "{read:?}"
        );
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
}
