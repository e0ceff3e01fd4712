//! The host side of the hybrid vsock, as Firecracker does it over AF_UNIX:
//!
//! - a guest connection to host port `P` connects to the Unix socket `<uds_path>_<P>`;
//! - a host client connects to `<uds_path>`, writes `CONNECT <port>\n`, and once the guest
//!   accepts reads `OK <local port>\n` before the stream carries data.
//!
//! The muxer owns every host socket and the map from (host port, guest port) to connection,
//! and decides which connection fills the next rx buffer.

use super::connection::{Connection, Produced, Verdict};
use super::packet::{Header, OP_REQUEST, OP_RST, OP_RW, PKT_HEADER_LEN};
use super::VsockError;
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use virtio_vsock::packet::VsockPacket;

/// The most connections (and host clients still handshaking) at once: each holds a host
/// socket and up to `CONN_BUF_ALLOC` bytes of buffer.
pub const MAX_CONNECTIONS: usize = 1024;
/// The first port handed to host-initiated connections, as in Firecracker: far above the
/// ports host services listen on.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// The longest `CONNECT <port>\n` line accepted, newline included.
const MAX_CONNECT_LINE: usize = 32;
/// The most control packets (mostly RSTs) waiting for rx buffers. Beyond it a guest that
/// keeps provoking them without reading gets no more answers.
const MAX_CONTROL_QUEUE: usize = 2 * MAX_CONNECTIONS;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// A host client that has not finished its `CONNECT` line.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum FdOwner {
    Client,
    Conn(ConnKey),
}

/// A change to the event loop's interest list, applied by the event handler (which alone has
/// the `EventOps`). A removed stream stays open until then: the fd must still be valid to
/// leave epoll, and must not be reused by a new socket before that.
pub(crate) enum FdOp {
    Add(RawFd),
    Remove(UnixStream),
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    clients: HashMap<RawFd, Client>,
    fd_owner: HashMap<RawFd, FdOwner>,
    /// Connections that may have something for the guest, in turn.
    rxq: VecDeque<ConnKey>,
    /// Packets for the guest that belong to no live connection (RSTs).
    control: VecDeque<Header>,
    next_local_port: u32,
    /// Whether an event loop watches the sockets (and so needs `fd_ops`).
    attached: bool,
    fd_ops: Vec<FdOp>,
    /// While a transport reset is on its way to the guest: the host's new connections, held
    /// back until the guest has taken the reset (see [`Muxer::hold_host_connections`]).
    held: Option<Vec<ConnKey>>,
}

impl Muxer {
    /// Binds the listener at `uds_path`, replacing a stale socket left there.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Muxer, VsockError> {
        match std::fs::symlink_metadata(uds_path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(uds_path)
                .map_err(|e| VsockError::Bind(uds_path.to_path_buf(), e))?,
            Ok(_) => {
                return Err(VsockError::Bind(
                    uds_path.to_path_buf(),
                    io::Error::new(io::ErrorKind::AlreadyExists, "not a socket"),
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(uds_path)
            .map_err(|e| VsockError::Bind(uds_path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| VsockError::Bind(uds_path.to_path_buf(), e))?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            clients: HashMap::new(),
            fd_owner: HashMap::new(),
            rxq: VecDeque::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            attached: false,
            fd_ops: Vec::new(),
            held: None,
        })
    }

    /// Holds the host's new connections back from the guest from now on, until
    /// [`Muxer::release_host_connections`]: for while a transport reset is on its way to the
    /// guest. A Linux guest handles the device's queues in their order, not in the order the
    /// device filled them, so a connection request that reached it with the reset could be
    /// taken first and then reset with the connections the reset is about.
    pub fn hold_host_connections(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Lets the held connections through; whether there was a hold.
    pub fn release_host_connections(&mut self) -> bool {
        let Some(held) = self.held.take() else {
            return false;
        };
        for key in held {
            self.enqueue_rx(key);
        }
        true
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether the guest has something to receive (given rx buffers).
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rxq.is_empty()
    }

    /// From now on an event loop watches the sockets: every host socket, present and future,
    /// goes through [`take_fd_ops`](Self::take_fd_ops).
    pub(crate) fn attach(&mut self) {
        if self.attached {
            return;
        }
        self.attached = true;
        self.fd_ops
            .extend(self.fd_owner.keys().map(|&fd| FdOp::Add(fd)));
    }

    pub(crate) fn take_fd_ops(&mut self) -> Vec<FdOp> {
        std::mem::take(&mut self.fd_ops)
    }

    fn watch(&mut self, fd: RawFd, owner: FdOwner) {
        self.fd_owner.insert(fd, owner);
        if self.attached {
            self.fd_ops.push(FdOp::Add(fd));
        }
    }

    fn unwatch(&mut self, stream: UnixStream) {
        self.fd_owner.remove(&stream.as_raw_fd());
        if self.attached {
            self.fd_ops.push(FdOp::Remove(stream));
        }
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL_QUEUE {
            log::warn!(
                "vsock: guest is not reading; dropping op {} for port {}",
                hdr.op,
                hdr.dst_port
            );
            return;
        }
        self.control.push_back(hdr);
    }

    /// Answers a guest packet with an RST (never an RST with an RST: two sides that both
    /// believe the other's connection is unknown would bounce them forever).
    pub fn reply_rst(&mut self, to: &Header) {
        if to.op != OP_RST {
            self.push_control(to.rst_reply());
        }
    }

    fn enqueue_rx(&mut self, key: ConnKey) {
        if self.held.as_ref().is_some_and(|held| held.contains(&key)) {
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.in_rxq && conn.has_pending_rx() {
                conn.in_rxq = true;
                self.rxq.push_back(key);
            }
        }
    }

    fn kill(&mut self, key: ConnKey, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if conn.in_rxq {
            // A stale entry would linger until an rx buffer comes; a guest that opens and
            // resets connections without reading could grow the queue without bound.
            self.rxq.retain(|k| *k != key);
        }
        if rst {
            self.push_control(Header {
                src_cid: super::packet::VSOCK_HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: super::packet::TYPE_STREAM,
                op: OP_RST,
                ..Header::default()
            });
        }
        self.unwatch(conn.stream);
    }

    /// Drops every connection and host client without telling the guest (a transport reset
    /// or device reset tells it all at once).
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.kill(key, false);
        }
        let clients: Vec<RawFd> = self.clients.keys().copied().collect();
        for fd in clients {
            self.drop_client(fd);
        }
        self.rxq.clear();
        self.control.clear();
        if let Some(held) = self.held.as_mut() {
            held.clear();
        }
    }

    /// Handles a packet from the guest whose header passed `check_header`.
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        log::trace!(
            "vsock: guest op {} port {} -> {} ({} bytes)",
            hdr.op,
            hdr.src_port,
            hdr.dst_port,
            data.len()
        );
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.op == OP_REQUEST && !self.conns.contains_key(&key) {
            self.guest_connect(hdr, key);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            // Common and harmless: a guest's credit update or shutdown racing the host's close.
            if hdr.op != OP_RST {
                log::debug!(
                    "vsock: op {} for unknown connection {}:{}",
                    hdr.op,
                    key.local_port,
                    key.peer_port
                );
            }
            self.reply_rst(hdr);
            return;
        };
        let data = if hdr.op == OP_RW { data } else { &[] };
        match conn.recv_from_guest(hdr, data) {
            Verdict::Keep => self.enqueue_rx(key),
            Verdict::Kill { rst } => self.kill(key, rst),
        }
    }

    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.len() + self.clients.len() >= MAX_CONNECTIONS {
            log::warn!(
                "vsock: refusing guest connection to port {}: {MAX_CONNECTIONS} connections open",
                key.local_port
            );
            self.reply_rst(hdr);
            return;
        }
        let mut path: OsString = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let path = PathBuf::from(path);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("vsock: guest connection to {}: {e}", path.display());
                self.reply_rst(hdr);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let conn = Connection::new_peer_init(stream, self.guest_cid, hdr);
        self.conns.insert(key, conn);
        self.watch(fd, FdOwner::Conn(key));
        self.enqueue_rx(key);
    }

    /// Fills an rx buffer with the next packet for the guest; returns the bytes used, or
    /// `None` when there is nothing to send (the buffer is then untouched).
    pub fn recv_pkt(&mut self, pkt: &mut VsockPacket<'_, ()>, scratch: &mut [u8]) -> Option<u32> {
        if let Some(hdr) = self.control.pop_front() {
            hdr.write_to(pkt);
            return Some(PKT_HEADER_LEN);
        }
        // Each queued connection is tried at most once, so connections that cannot use this
        // buffer cannot keep the loop going.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rxq = false;
            match conn.produce(pkt, scratch) {
                Produced::Nothing => {}
                Produced::NoRoom => {
                    conn.in_rxq = true;
                    self.rxq.push_back(key);
                }
                Produced::Packet { used, kill } => {
                    if kill {
                        self.kill(key, false);
                    } else {
                        self.enqueue_rx(key);
                    }
                    return Some(used);
                }
            }
        }
        None
    }

    /// Accepts every waiting host client.
    pub fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Per-connection failures (the client gave up, fd limit): the listener
                    // itself keeps working; try again on the next event.
                    log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.conns.len() + self.clients.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: refusing host client: {MAX_CONNECTIONS} connections open");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("vsock: host client: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            self.clients.insert(
                fd,
                Client {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                },
            );
            self.watch(fd, FdOwner::Client);
            self.read_client(fd);
        }
    }

    fn drop_client(&mut self, fd: RawFd) {
        if let Some(client) = self.clients.remove(&fd) {
            self.unwatch(client.stream);
        }
    }

    /// Reads the client's `CONNECT` line, a byte at a time so that data the client sends
    /// right after it stays in the socket for the guest.
    fn read_client(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match client.stream.read(&mut byte) {
                Ok(0) => {
                    log::debug!("vsock: host client closed before CONNECT");
                    self.drop_client(fd);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: host client: {e}");
                    self.drop_client(fd);
                    return;
                }
            }
            if byte[0] == b'\n' {
                match parse_connect(&client.line) {
                    Some(port) => break port,
                    None => {
                        log::warn!(
                            "vsock: malformed CONNECT line from host client: {:?}",
                            String::from_utf8_lossy(&client.line)
                        );
                        self.drop_client(fd);
                        return;
                    }
                }
            }
            client.line.push(byte[0]);
            if client.line.len() >= MAX_CONNECT_LINE {
                log::warn!("vsock: overlong CONNECT line from host client");
                self.drop_client(fd);
                return;
            }
        };
        let Some(local_port) = self.allocate_local_port(port) else {
            log::warn!("vsock: no free local port for a host connection to guest port {port}");
            self.drop_client(fd);
            return;
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let conn = Connection::new_local_init(client.stream, self.guest_cid, local_port, port);
        self.conns.insert(key, conn);
        // Same fd, same registration: only its meaning changes.
        self.fd_owner.insert(fd, FdOwner::Conn(key));
        if let Some(held) = self.held.as_mut() {
            held.push(key);
        }
        self.enqueue_rx(key);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are taken, so this many tries find a free one.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.keys().any(|k| k.local_port == port) && !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// The event loop saw readiness on a host socket.
    pub(crate) fn handle_fd_event(&mut self, fd: RawFd, readable: bool, writable: bool) {
        match self.fd_owner.get(&fd).copied() {
            Some(FdOwner::Client) => self.read_client(fd),
            Some(FdOwner::Conn(key)) => self.conn_ready(key, readable, writable),
            None => log::debug!("vsock: event for unknown fd {fd}"),
        }
    }

    fn conn_ready(&mut self, key: ConnKey, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if readable {
            conn.readable = true;
        }
        if writable {
            if let Err(e) = conn.flush() {
                log::warn!(
                    "vsock: write to host stream {}:{} failed: {e}",
                    key.local_port,
                    key.peer_port
                );
                self.kill(key, true);
                return;
            }
        }
        self.enqueue_rx(key);
    }

    /// Without an event loop: accept clients, read their CONNECT lines, and treat every
    /// connection's stream as ready both ways.
    pub fn poll(&mut self) {
        self.accept_clients();
        let clients: Vec<RawFd> = self.clients.keys().copied().collect();
        for fd in clients {
            self.read_client(fd);
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.conn_ready(key, true, true);
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Clients could otherwise connect to a listener nobody accepts on and hang.
        if let Ok(meta) = std::fs::symlink_metadata(&self.uds_path) {
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&self.uds_path);
            }
        }
    }
}

/// Connects to a host service without blocking: a blocking connect to a listener whose
/// backlog is full would wait for it to accept, and a guest could stall the event loop that
/// way. A full backlog is a refused connection instead.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
    socket.connect(&SockAddr::unix(path)?)?;
    Ok(socket.into())
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"connect 52",
            b"CONNECT 52 ",
            b"CONNECT\t52",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
