//! One stream between a guest socket and a host Unix socket: its handshake state and the
//! virtio-vsock credit accounting of both directions.
//!
//! Guest to host: the guest may have at most [`CONN_BUF_ALLOC`] bytes in flight that the host
//! has not read yet (our `buf_alloc`), so whatever the Unix stream does not take at once is kept
//! in a buffer that can never grow beyond that. Host to guest: nothing is buffered; the stream is
//! read only when the guest's advertised credit and an rx buffer leave room, and only as much as
//! both allow.

use super::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, PKT_HEADER_LEN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
    VSOCK_HOST_CID,
};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use virtio_vsock::packet::VsockPacket;

/// The receive buffer the device advertises to the guest for each connection: the most
/// guest-sent bytes it holds for a host reader that is slow.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// How far the host's reading may run ahead of what the guest was last told before the device
/// tells it unprompted. A quarter keeps a sending guest from stalling while it waits for
/// credit, without an update per packet.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: OP_REQUEST goes (or went) to the guest; waiting for OP_RESPONSE.
    LocalInit,
    Established,
}

/// What the muxer must do with a connection after the guest's packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Drop the connection (closing the host stream); `rst` says whether the guest must be
    /// told with an RST (not when the guest's own RST ended it).
    Kill {
        rst: bool,
    },
}

/// What the connection put in an rx buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Produced {
    Nothing,
    /// The rx buffer has no room for data, and data is all the connection has.
    NoRoom,
    /// A packet of `used` bytes (header included); `kill` says the connection ends with it.
    Packet {
        used: u32,
        kill: bool,
    },
}

pub struct Connection {
    pub(crate) stream: UnixStream,
    pub(crate) guest_cid: u64,
    /// The host side's port (the `<uds>_<port>` suffix, or the one allocated for a host client).
    pub(crate) local_port: u32,
    pub(crate) peer_port: u32,
    pub(crate) state: ConnState,
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    /// Guest-sent bytes the host stream has not taken yet; at most `CONN_BUF_ALLOC`.
    tx_buf: VecDeque<u8>,
    /// Bytes the host stream took (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The OP_SHUTDOWN flags the guest sent so far.
    guest_shut: u32,
    host_write_shut: bool,
    /// The host stream may have data or EOF to read: set by readiness events (which are
    /// edge-triggered), cleared only when a read would block.
    pub(crate) readable: bool,
    /// Whether the muxer's rx queue holds this connection.
    pub(crate) in_rxq: bool,
}

impl Connection {
    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
    ) -> Connection {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_shut: 0,
            host_write_shut: false,
            readable: true,
            in_rxq: false,
        }
    }

    /// A guest connection to a host Unix socket that accepted it; OP_RESPONSE is due.
    pub fn new_peer_init(stream: UnixStream, guest_cid: u64, request: &Header) -> Connection {
        let mut c = Connection::new(
            stream,
            guest_cid,
            request.dst_port,
            request.src_port,
            ConnState::Established,
        );
        c.peer_buf_alloc = request.buf_alloc;
        c.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        c.pending_response = true;
        c
    }

    /// A host client's connection to guest port `peer_port`; OP_REQUEST is due.
    pub fn new_local_init(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Connection {
        let mut c = Connection::new(
            stream,
            guest_cid,
            local_port,
            peer_port,
            ConnState::LocalInit,
        );
        c.pending_request = true;
        c
    }

    /// How many more bytes the guest can take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        // A guest claiming to have consumed more than it was sent makes `in_flight` wrap to a
        // huge value: the connection then gets no credit, which only stalls that guest.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the connection has something for the guest, given an rx buffer.
    pub fn has_pending_rx(&self) -> bool {
        self.pending_request
            || self.pending_response
            || self.pending_credit_update
            || self.wants_to_read()
    }

    fn wants_to_read(&self) -> bool {
        self.state == ConnState::Established
            && self.readable
            && self.guest_shut & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Handles a packet the guest sent on this connection; `data` is its payload.
    pub fn recv_from_guest(&mut self, hdr: &Header, data: &[u8]) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match (self.state, hdr.op) {
            (_, OP_RST) => Verdict::Kill { rst: false },
            (ConnState::LocalInit, OP_RESPONSE) => {
                // The stream has had nothing written to it yet, so these few bytes fit in its
                // socket buffer; a client that cannot take them is gone.
                let line = format!("OK {}\n", self.local_port);
                if let Err(e) = self.stream.write_all(line.as_bytes()) {
                    log::warn!(
                        "vsock: cannot acknowledge host connection to guest port {}: {e}",
                        self.peer_port
                    );
                    return Verdict::Kill { rst: true };
                }
                self.state = ConnState::Established;
                self.pending_request = false;
                Verdict::Keep
            }
            (ConnState::Established, OP_RW) => self.recv_data(data),
            (ConnState::Established, OP_CREDIT_UPDATE) => Verdict::Keep,
            (ConnState::Established, OP_CREDIT_REQUEST) => {
                self.pending_credit_update = true;
                Verdict::Keep
            }
            (ConnState::Established, OP_SHUTDOWN) => {
                self.guest_shut |= hdr.flags & SHUTDOWN_BOTH;
                if self.flush().is_err() {
                    return Verdict::Kill { rst: true };
                }
                if self.guest_shut == SHUTDOWN_BOTH {
                    // Both directions are done: what the host has not read yet is lost, as
                    // with a TCP close.
                    return Verdict::Kill { rst: true };
                }
                Verdict::Keep
            }
            (state, op) => {
                log::warn!(
                    "vsock: unexpected op {op} on {state:?} connection {}:{}",
                    self.local_port,
                    self.peer_port
                );
                Verdict::Kill { rst: true }
            }
        }
    }

    fn recv_data(&mut self, data: &[u8]) -> Verdict {
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            log::warn!(
                "vsock: guest sent data on {}:{} after shutting down sending",
                self.local_port,
                self.peer_port
            );
            return Verdict::Kill { rst: true };
        }
        // Whatever the guest was told, fewer than `CONN_BUF_ALLOC - tx_buf.len()` bytes of
        // credit can be left: more is a guest ignoring flow control.
        if self.tx_buf.len() + data.len() > CONN_BUF_ALLOC as usize {
            log::warn!(
                "vsock: guest overran its credit on {}:{} ({} bytes buffered, {} more sent)",
                self.local_port,
                self.peer_port,
                self.tx_buf.len(),
                data.len()
            );
            return Verdict::Kill { rst: true };
        }
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match write_some(&mut self.stream, rest) {
                Ok(n) => {
                    self.fwd_cnt += counted(n);
                    rest = &rest[n..];
                }
                Err(e) => {
                    log::warn!(
                        "vsock: write to host stream {}:{} failed: {e}",
                        self.local_port,
                        self.peer_port
                    );
                    return Verdict::Kill { rst: true };
                }
            }
        }
        self.tx_buf.extend(rest);
        self.note_progress();
        Verdict::Keep
    }

    /// Writes buffered guest data to the host stream, as much as it takes, and shuts the
    /// stream's write side once the guest is done sending and everything was written.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt += counted(n);
        }
        self.note_progress();
        if self.tx_buf.is_empty() && self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            // The host reader sees EOF; failure means it is already gone, which the read side
            // finds out.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn note_progress(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
    }

    fn header(&self, op: u16) -> Header {
        Header {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Fills the rx packet with the connection's next packet for the guest: control packets
    /// first, then data read from the host stream (at most what the guest's credit, the rx
    /// buffer and `scratch` allow).
    pub fn produce(&mut self, pkt: &mut VsockPacket<'_, ()>, scratch: &mut [u8]) -> Produced {
        let hdr = if self.pending_request {
            self.pending_request = false;
            self.header(OP_REQUEST)
        } else if self.pending_response {
            self.pending_response = false;
            self.header(OP_RESPONSE)
        } else if self.wants_to_read() {
            let room = pkt.data_slice().map_or(0, |s| s.len());
            let fits = u32::try_from(room.min(scratch.len())).unwrap_or(u32::MAX);
            let want = fits.min(self.peer_credit());
            if want == 0 {
                return if self.pending_credit_update {
                    self.emit(pkt, self.header(OP_CREDIT_UPDATE), 0)
                } else {
                    Produced::NoRoom
                };
            }
            match self.stream.read(&mut scratch[..want as usize]) {
                Ok(0) => {
                    // The host closed its end: the guest learns with an RST after the data it
                    // already got.
                    let used = self.emit(pkt, self.header(OP_RST), 0);
                    return match used {
                        Produced::Packet { used, .. } => Produced::Packet { used, kill: true },
                        other => other,
                    };
                }
                Ok(n) => {
                    if let Some(slice) = pkt.data_slice() {
                        slice.copy_from(&scratch[..n]);
                    }
                    self.tx_cnt += counted(n);
                    // A read returns at most the `want` bytes asked for: this is `n`.
                    let len = want.min(u32::try_from(n).unwrap_or(u32::MAX));
                    let mut h = self.header(OP_RW);
                    h.len = len;
                    return self.emit(pkt, h, len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    if !self.pending_credit_update {
                        return Produced::Nothing;
                    }
                    self.header(OP_CREDIT_UPDATE)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if !self.pending_credit_update {
                        return Produced::Nothing;
                    }
                    self.header(OP_CREDIT_UPDATE)
                }
                Err(e) => {
                    log::warn!(
                        "vsock: read from host stream {}:{} failed: {e}",
                        self.local_port,
                        self.peer_port
                    );
                    let used = self.emit(pkt, self.header(OP_RST), 0);
                    return match used {
                        Produced::Packet { used, .. } => Produced::Packet { used, kill: true },
                        other => other,
                    };
                }
            }
        } else if self.pending_credit_update {
            self.header(OP_CREDIT_UPDATE)
        } else {
            return Produced::Nothing;
        };
        self.emit(pkt, hdr, 0)
    }

    fn emit(&mut self, pkt: &mut VsockPacket<'_, ()>, hdr: Header, data_len: u32) -> Produced {
        hdr.write_to(pkt);
        // Every packet tells the guest our forward count.
        self.last_fwd_cnt_sent = Wrapping(hdr.fwd_cnt);
        self.pending_credit_update = false;
        Produced::Packet {
            used: PKT_HEADER_LEN + data_len,
            kill: false,
        }
    }
}

/// Writes what the non-blocking stream takes now: 0 when it is full.
fn write_some(stream: &mut UnixStream, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match stream.write(&buf[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// `n` bytes added to a vsock byte counter.
// The counters are modulo 2^32 (virtio spec 5.10.6.3): dropping the high bits is the
// arithmetic the spec asks for (and `n`, one packet's worth, never has any).
#[allow(clippy::cast_possible_truncation)]
fn counted(n: usize) -> Wrapping<u32> {
    Wrapping(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::SHUTDOWN_RCV;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let req = Header {
            src_cid: 3,
            dst_cid: VSOCK_HOST_CID,
            src_port: 1000,
            dst_port: 52,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc: 100,
            ..Header::default()
        };
        (Connection::new_peer_init(a, 3, &req), b)
    }

    fn rw(len: u32, fwd_cnt: u32) -> Header {
        Header {
            op: OP_RW,
            len,
            buf_alloc: 100,
            fwd_cnt,
            ..Header::default()
        }
    }

    #[test]
    fn credit_is_bounded_by_peer_buf_alloc() {
        let (mut c, _b) = pair();
        assert_eq!(c.peer_credit(), 100);
        c.tx_cnt = Wrapping(60);
        assert_eq!(c.peer_credit(), 40);
        // A guest forward count beyond what was sent gives no credit rather than a lot.
        assert_eq!(c.recv_from_guest(&rw(0, 61), &[]), Verdict::Keep);
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.tx_cnt = Wrapping(5);
        c.recv_from_guest(&rw(0, u32::MAX - 4), &[]);
        assert_eq!(c.peer_credit(), 90);
    }

    #[test]
    fn guest_data_is_forwarded_and_buffered_within_credit() {
        let (mut c, mut b) = pair();
        assert_eq!(c.recv_from_guest(&rw(5, 0), b"hello"), Verdict::Keep);
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(c.fwd_cnt.0, 5);
        // Fill the host side until the stream is full; the rest stays buffered, bounded.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            let v = c.recv_from_guest(&rw(u32::try_from(chunk.len()).unwrap(), 0), &chunk);
            if v != Verdict::Keep {
                break;
            }
            sent += chunk.len();
            assert!(c.tx_buf.len() <= CONN_BUF_ALLOC as usize);
            assert!(sent < 64 * 1024 * 1024, "the stream never filled up");
        }
        assert!(c.tx_buf.len() + chunk.len() > CONN_BUF_ALLOC as usize);
    }

    #[test]
    fn shutdown_both_kills_and_rcv_stops_reads() {
        let (mut c, mut b) = pair();
        b.write_all(b"x").unwrap();
        let sh = Header {
            op: OP_SHUTDOWN,
            flags: SHUTDOWN_RCV,
            buf_alloc: 100,
            ..Header::default()
        };
        c.pending_response = false;
        assert_eq!(c.recv_from_guest(&sh, &[]), Verdict::Keep);
        assert!(!c.has_pending_rx());
        let sh = Header {
            flags: SHUTDOWN_SEND,
            ..sh
        };
        assert_eq!(c.recv_from_guest(&sh, &[]), Verdict::Kill { rst: true });
    }

    #[test]
    fn unexpected_ops_reset() {
        let (mut c, _b) = pair();
        let h = Header {
            op: OP_RESPONSE,
            ..Header::default()
        };
        assert_eq!(c.recv_from_guest(&h, &[]), Verdict::Kill { rst: true });
        let h = Header {
            op: OP_RST,
            ..Header::default()
        };
        assert_eq!(c.recv_from_guest(&h, &[]), Verdict::Kill { rst: false });
    }
}
