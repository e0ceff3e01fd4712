//! The device driven by a mock guest driver on plain guest memory, against real Unix sockets.

use super::connection::CONN_BUF_ALLOC;
use super::muxer::FIRST_LOCAL_PORT;
use super::packet::*;
use super::*;
use crate::devices::virtio::test_queues::{GuestQueues, NEXT, WRITE};
use crate::devices::virtio::ActivateError;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::Queue;
use vm_memory::GuestAddress;

const CID: u64 = 3;
const QLEN: u16 = 64;
const MEM_SIZE: u64 = 0x10_0000;
const HDR: u32 = super::packet::PKT_HEADER_LEN;

/// A short, unique socket path (Unix socket paths are limited to 108 bytes) that is removed,
/// with its `_<port>` siblings used by the test, on drop.
struct SockPath(PathBuf);

impl SockPath {
    fn new() -> SockPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        SockPath(std::env::temp_dir().join(format!("vsk{}-{n}.sock", std::process::id())))
    }

    fn port(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.0.display()))
    }

    fn listen(&self, port: u32) -> UnixListener {
        let _ = std::fs::remove_file(self.port(port));
        UnixListener::bind(self.port(port)).unwrap()
    }
}

impl Drop for SockPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let (Some(dir), Some(name)) = (self.0.parent(), self.0.file_name()) {
            let prefix = format!("{}_", name.to_string_lossy());
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

fn memory() -> Memory {
    crate::devices::virtio::test_queues::memory(MEM_SIZE)
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: VSOCK_HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

/// The guest's side of the three queues.
struct Guest<'a> {
    queues: GuestQueues<'a>,
    /// rx head index -> (header address, data address)
    rx_bufs: HashMap<u16, (u64, u64)>,
}

impl<'a> Deref for Guest<'a> {
    type Target = GuestQueues<'a>;
    fn deref(&self) -> &GuestQueues<'a> {
        &self.queues
    }
}

impl DerefMut for Guest<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.queues
    }
}

impl<'a> Guest<'a> {
    fn new(mem: &'a Memory) -> Guest<'a> {
        Guest {
            queues: GuestQueues::new(mem, 3, QLEN),
            rx_bufs: HashMap::new(),
        }
    }

    fn device(&self, uds: &SockPath) -> Vsock {
        let mut dev = Vsock::new(CID, &uds.0).unwrap();
        dev.activate(self.mem().clone(), self.queues()).unwrap();
        dev
    }

    /// Queues a tx packet without kicking the device.
    fn queue_tx(&mut self, h: Header, data: &[u8]) {
        let h = Header {
            len: u32::try_from(data.len()).unwrap(),
            ..h
        };
        let ha = self.alloc(u64::from(HDR));
        self.mem()
            .write_slice(&h.to_bytes(), GuestAddress(ha))
            .unwrap();
        if data.is_empty() {
            self.push_chain(TX_QUEUE, &[(ha, HDR, 0)]);
        } else {
            let da = self.alloc(data.len() as u64);
            self.mem().write_slice(data, GuestAddress(da)).unwrap();
            self.push_chain(
                TX_QUEUE,
                &[(ha, HDR, 0), (da, u32::try_from(data.len()).unwrap(), 0)],
            );
        }
    }

    fn send(&mut self, dev: &mut Vsock, h: Header, data: &[u8]) {
        self.queue_tx(h, data);
        dev.process_tx().unwrap();
    }

    fn add_rx(&mut self, n: usize, data_len: u32) {
        for _ in 0..n {
            let ha = self.alloc(u64::from(HDR));
            let da = self.alloc(u64::from(data_len));
            let head = self.push_chain(RX_QUEUE, &[(ha, HDR, WRITE), (da, data_len, WRITE)]);
            self.rx_bufs.insert(head, (ha, da));
        }
    }

    /// The packets the device put in rx buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (head, len) in self.take_used(RX_QUEUE) {
            let Some((ha, da)) = self.rx_bufs.remove(&head) else {
                continue;
            };
            if len == 0 {
                continue;
            }
            let mut raw = [0u8; HDR as usize];
            self.mem().read_slice(&mut raw, GuestAddress(ha)).unwrap();
            let h = Header::from_bytes(&raw);
            assert_eq!(len, HDR + h.len);
            let mut data = vec![0u8; h.len as usize];
            self.mem().read_slice(&mut data, GuestAddress(da)).unwrap();
            out.push((h, data));
        }
        out
    }

    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        pkts.remove(0)
    }

    /// Connects guest port `guest_port` to host port `port` (with a listener there) and
    /// returns the host's end.
    fn connect(
        &mut self,
        dev: &mut Vsock,
        listener: &UnixListener,
        guest_port: u32,
        port: u32,
    ) -> UnixStream {
        self.send(dev, hdr(OP_REQUEST, guest_port, port), &[]);
        let (host, _) = listener.accept().unwrap();
        let (h, _) = self.recv_one();
        assert_eq!(h.op, OP_RESPONSE);
        assert_eq!((h.src_port, h.dst_port), (port, guest_port));
        assert_eq!((h.src_cid, h.dst_cid), (VSOCK_HOST_CID, CID));
        assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host
    }
}

/// How long a test waits for the device to see what a host socket did.
const DEADLINE: Duration = Duration::from_secs(5);

/// Polls the device's backend until `done` holds, failing the test after [`DEADLINE`]. A
/// Unix stream hands data to its peer within the write, but the tests do not rely on it.
fn poll_until(dev: &mut Vsock, what: &str, mut done: impl FnMut(&mut Vsock) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        dev.poll_backend();
        if done(dev) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::yield_now();
    }
}

impl Guest<'_> {
    /// Polls the backend until the device puts packets in the rx queue; returns them.
    fn poll_recv(&mut self, dev: &mut Vsock) -> Vec<(Header, Vec<u8>)> {
        let mut pkts = Vec::new();
        poll_until(dev, "a packet for the guest", |_| {
            pkts = self.recv();
            !pkts.is_empty()
        });
        pkts
    }

    fn poll_recv_one(&mut self, dev: &mut Vsock) -> (Header, Vec<u8>) {
        let mut pkts = self.poll_recv(dev);
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        pkts.remove(0)
    }
}

/// Whether the device closed its end of `s`, without waiting.
fn is_closed(s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 16];
    let closed = match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => panic!("the device sent data on a refused stream"),
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("stream still open: {other:?}"),
    }
}

#[test]
fn guest_initiated_stream() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    let listener = uds.listen(52);
    g.add_rx(4, 4096);
    let mut host = g.connect(&mut dev, &listener, 1000, 52);
    assert!(dev.interrupt().event().read().unwrap() > 0);

    g.send(&mut dev, hdr(OP_RW, 1000, 52), b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // Every tx chain is returned.
    assert_eq!(g.take_used(TX_QUEUE).len(), 2);

    host.write_all(b"pong").unwrap();
    let (h, data) = g.poll_recv_one(&mut dev);
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, 52, 1000));
    assert_eq!(data, b"pong");
    assert_eq!(h.fwd_cnt, 4);

    // The guest shuts down sending: the host reads EOF but can still write.
    let mut sh = hdr(OP_SHUTDOWN, 1000, 52);
    sh.flags = SHUTDOWN_SEND;
    g.send(&mut dev, sh, &[]);
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    host.write_all(b"late").unwrap();
    assert_eq!(g.poll_recv_one(&mut dev).1, b"late");

    // The host closes: the guest gets an RST and the connection is gone.
    drop(host);
    let (h, _) = g.poll_recv_one(&mut dev);
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 52, 1000));
    assert_eq!(dev.muxer.connection_count(), 0);
}

#[test]
fn guest_shutdown_both_ways_resets() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    let listener = uds.listen(7);
    g.add_rx(4, 4096);
    let mut host = g.connect(&mut dev, &listener, 1000, 7);
    let mut sh = hdr(OP_SHUTDOWN, 1000, 7);
    sh.flags = SHUTDOWN_BOTH;
    g.send(&mut dev, sh, &[]);
    assert_eq!(g.recv_one().0.op, OP_RST);
    assert_closed(&mut host);
    assert_eq!(dev.muxer.connection_count(), 0);
}

#[test]
fn guest_connect_without_listener_is_reset() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    g.add_rx(2, 4096);
    g.send(&mut dev, hdr(OP_REQUEST, 1000, 53), &[]);
    let (h, _) = g.recv_one();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 53, 1000));
    assert_eq!((h.src_cid, h.dst_cid), (VSOCK_HOST_CID, CID));
}

#[test]
fn host_initiated_stream() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    g.add_rx(4, 4096);

    let mut client = UnixStream::connect(&uds.0).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Data right behind the CONNECT line belongs to the stream.
    client.write_all(b"CONNECT 52\nearly").unwrap();
    let (h, _) = g.poll_recv_one(&mut dev);
    assert_eq!(h.op, OP_REQUEST);
    assert_eq!((h.src_port, h.dst_port), (FIRST_LOCAL_PORT, 52));
    assert_eq!((h.src_cid, h.dst_cid), (VSOCK_HOST_CID, CID));

    g.send(&mut dev, hdr(OP_RESPONSE, 52, FIRST_LOCAL_PORT), &[]);
    assert_eq!(read_line(&mut client), format!("OK {FIRST_LOCAL_PORT}"));
    let (h, data) = g.recv_one();
    assert_eq!((h.op, h.dst_port), (OP_RW, 52));
    assert_eq!(data, b"early");

    g.send(&mut dev, hdr(OP_RW, 52, FIRST_LOCAL_PORT), b"hi");
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");

    // A second client gets the next port; the guest refuses it and the client is closed.
    let mut client2 = UnixStream::connect(&uds.0).unwrap();
    client2.write_all(b"CONNECT 52\n").unwrap();
    let (h, _) = g.poll_recv_one(&mut dev);
    assert_eq!((h.op, h.src_port), (OP_REQUEST, FIRST_LOCAL_PORT + 1));
    g.send(&mut dev, hdr(OP_RST, 52, FIRST_LOCAL_PORT + 1), &[]);
    assert_closed(&mut client2);
    assert!(g.recv().is_empty());
    assert_eq!(dev.muxer.connection_count(), 1);
}

#[test]
fn bad_connect_lines_close_only_that_client() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    g.add_rx(4, 4096);
    let mut bad = Vec::new();
    for line in [
        &b"HELLO 52\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 1111111111111111111111111111111111111111",
    ] {
        let mut c = UnixStream::connect(&uds.0).unwrap();
        c.write_all(line).unwrap();
        bad.push(c);
    }
    poll_until(&mut dev, "closing the bad clients", |_| {
        bad.iter_mut().all(is_closed)
    });
    for c in &mut bad {
        assert_closed(c);
    }
    assert!(g.recv().is_empty());
    // A partial line waits for the rest; then the handshake works.
    let mut c = UnixStream::connect(&uds.0).unwrap();
    c.write_all(b"CONN").unwrap();
    // The four bytes are in the device's socket once the write returns (a Unix stream hands
    // them over within it), so a poll that sends nothing shows the device waits for the rest.
    dev.poll_backend();
    assert!(g.recv().is_empty());
    c.write_all(b"ECT 9\n").unwrap();
    assert_eq!(g.poll_recv_one(&mut dev).0.dst_port, 9);
}

#[test]
fn host_data_is_bounded_by_guest_credit() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    let listener = uds.listen(52);
    g.add_rx(1, 4096);
    let mut req = hdr(OP_REQUEST, 1000, 52);
    req.buf_alloc = 100;
    g.send(&mut dev, req, &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(g.recv_one().0.op, OP_RESPONSE);

    host.write_all(&[0xab; 300]).unwrap();
    g.add_rx(4, 64);
    let mut pkts = Vec::new();
    let total = |pkts: &Vec<(Header, Vec<u8>)>| pkts.iter().map(|(_, d)| d.len()).sum::<usize>();
    poll_until(&mut dev, "the guest's credit's worth of data", |_| {
        pkts.extend(g.recv());
        total(&pkts) >= 100
    });
    assert_eq!(total(&pkts), 100);
    assert!(pkts.iter().all(|(h, d)| h.op == OP_RW && d.len() <= 64));
    // Polling again sends nothing: no credit.
    dev.poll_backend();
    assert!(g.recv().is_empty());

    // The guest consumed 60 bytes.
    let mut up = hdr(OP_CREDIT_UPDATE, 1000, 52);
    up.buf_alloc = 100;
    up.fwd_cnt = 60;
    g.send(&mut dev, up, &[]);
    let total: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 60);

    // A credit request is answered with our counters.
    let mut cr = hdr(OP_CREDIT_REQUEST, 1000, 52);
    cr.buf_alloc = 100;
    cr.fwd_cnt = 60;
    g.add_rx(1, 64);
    g.send(&mut dev, cr, &[]);
    let (h, _) = g.recv_one();
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt),
        (OP_CREDIT_UPDATE, CONN_BUF_ALLOC, 0)
    );
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    let listener = uds.listen(52);
    g.add_rx(2, 4096);
    let _host = g.connect(&mut dev, &listener, 1000, 52);
    // The host never reads: the socket buffer fills, then the device's buffer, then the
    // guest has overrun the credit it was given.
    let chunk = vec![1u8; MAX_PKT_DATA as usize];
    let mut ops = Vec::new();
    for _ in 0..64 {
        g.add_rx(1, 4096);
        g.send(&mut dev, hdr(OP_RW, 1000, 52), &chunk);
        ops.extend(g.recv().iter().map(|(h, _)| h.op));
        if ops.contains(&OP_RST) {
            break;
        }
    }
    // Credit updates while the host socket took data, then the reset.
    assert_eq!(ops.last(), Some(&OP_RST), "{ops:?}");
    assert!(ops[..ops.len() - 1]
        .iter()
        .all(|&op| op == OP_CREDIT_UPDATE));
    assert_eq!(dev.muxer.connection_count(), 0);
}

#[test]
fn transport_reset() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    let listener = uds.listen(52);
    g.add_rx(2, 4096);
    let mut host = g.connect(&mut dev, &listener, 1000, 52);

    assert!(matches!(
        dev.send_transport_reset(),
        Err(VsockError::NoEventBuffer)
    ));
    assert_closed(&mut host);
    assert_eq!(dev.muxer.connection_count(), 0);

    let ea = g.alloc(8);
    mem.write_slice(&[0xff; 8], GuestAddress(ea)).unwrap();
    let head = g.push_chain(EVENT_QUEUE, &[(ea, 8, WRITE)]);
    let _ = dev.interrupt().event().read();
    dev.send_transport_reset().unwrap();
    assert_eq!(g.take_used(EVENT_QUEUE), vec![(head, 4)]);
    let id: u32 = mem.read_obj(GuestAddress(ea)).unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    assert_eq!(dev.interrupt().event().read().unwrap(), 1);

    // The device still works after it.
    let _host = g.connect(&mut dev, &listener, 1001, 52);
}

#[test]
fn hostile_tx_packets_do_not_break_the_device() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    let listener = uds.listen(52);
    g.add_rx(16, 4096);
    let good = hdr(OP_REQUEST, 1000, 52).to_bytes();
    let ha = g.alloc(u64::from(HDR));
    mem.write_slice(&good, GuestAddress(ha)).unwrap();

    // Header outside guest memory; straddling its end; wrapping the address space.
    g.push_chain(TX_QUEUE, &[(MEM_SIZE + 0x1000, HDR, 0)]);
    g.push_chain(TX_QUEUE, &[(MEM_SIZE - 8, HDR, 0)]);
    g.push_chain(TX_QUEUE, &[(u64::MAX - 8, HDR, 0)]);
    // Header too short.
    g.push_chain(TX_QUEUE, &[(ha, HDR - 1, 0)]);
    // Device-writable tx buffer.
    g.push_chain(TX_QUEUE, &[(ha, HDR, WRITE)]);
    // `len` larger than the data buffer, and larger than the limit.
    for (len, buf_len) in [(100, 10), (MAX_PKT_DATA + 1, MAX_PKT_DATA + 1)] {
        let mut h = hdr(OP_RW, 1000, 52);
        h.len = len;
        let a = g.alloc(u64::from(HDR));
        mem.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
        let da = g.alloc(u64::from(buf_len));
        g.push_chain(TX_QUEUE, &[(a, HDR, 0), (da, buf_len, 0)]);
    }
    // `len` with no data descriptor at all.
    let mut h = hdr(OP_RW, 1000, 52);
    h.len = 16;
    let a = g.alloc(u64::from(HDR));
    mem.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
    g.push_chain(TX_QUEUE, &[(a, HDR, 0)]);
    // A descriptor loop: the header's descriptor chains to a data descriptor pointing at
    // itself.
    let mut h = hdr(OP_RW, 1000, 52);
    h.len = 0x1000;
    let a = g.alloc(u64::from(HDR));
    mem.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
    g.push_raw(TX_QUEUE, |idx| {
        vec![
            SplitDescriptor::new(a, HDR, NEXT, (idx + 1) % QLEN),
            SplitDescriptor::new(a, 8, NEXT, (idx + 1) % QLEN),
        ]
    });
    // A head index past the descriptor table.
    g.make_available(TX_QUEUE, 1000);

    // Header-level refusals: wrong source cid (dropped silently), wrong destination cid, wrong
    // type, unknown op, data for an unknown connection (answered with RST), an RST for an
    // unknown connection (ignored), a response nobody asked for (RST).
    let mut h = hdr(OP_REQUEST, 1000, 52);
    h.src_cid = CID + 1;
    g.queue_tx(h, &[]);
    let mut h = hdr(OP_REQUEST, 1001, 52);
    h.dst_cid = 9;
    g.queue_tx(h, &[]);
    let mut h = hdr(OP_REQUEST, 1002, 52);
    h.type_ = 2;
    g.queue_tx(h, &[]);
    g.queue_tx(hdr(99, 1003, 52), &[]);
    g.queue_tx(hdr(OP_RW, 1004, 52), b"who?");
    g.queue_tx(hdr(OP_RST, 1005, 52), &[]);
    g.queue_tx(hdr(OP_RESPONSE, 1006, 52), &[]);
    // And a good request behind them all.
    g.queue_tx(hdr(OP_REQUEST, 1007, 52), &[]);

    dev.process_tx().unwrap();

    let replies: Vec<(u16, u16, u64, u32)> = g
        .recv()
        .iter()
        .map(|(h, _)| (h.op, h.type_, h.src_cid, h.dst_port))
        .collect();
    assert_eq!(
        replies,
        vec![
            (OP_RST, TYPE_STREAM, 9, 1001),
            (OP_RST, 2, VSOCK_HOST_CID, 1002),
            (OP_RST, TYPE_STREAM, VSOCK_HOST_CID, 1003),
            (OP_RST, TYPE_STREAM, VSOCK_HOST_CID, 1004),
            (OP_RST, TYPE_STREAM, VSOCK_HOST_CID, 1006),
            (OP_RESPONSE, TYPE_STREAM, VSOCK_HOST_CID, 1007),
        ]
    );
    // Every chain with a valid head was returned: 9 malformed, 8 refused or good.
    assert_eq!(g.take_used(TX_QUEUE).len(), 17);
    let (mut host, _) = listener.accept().unwrap();

    // The good connection works.
    g.send(&mut dev, hdr(OP_RW, 1007, 52), b"ok");
    let mut buf = [0u8; 2];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn hostile_rx_buffers_are_skipped() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    // Read-only, outside memory, header too short: each used with length 0.
    let a = g.alloc(4096);
    g.push_chain(RX_QUEUE, &[(a, HDR, 0), (a + 64, 64, 0)]);
    g.push_chain(RX_QUEUE, &[(MEM_SIZE + 0x1000, HDR, WRITE), (a, 64, WRITE)]);
    g.push_chain(RX_QUEUE, &[(a, 8, WRITE)]);
    g.add_rx(1, 4096);
    g.send(&mut dev, hdr(OP_REQUEST, 1000, 54), &[]);
    let used = g.take_used(RX_QUEUE);
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![0, 0, 0, HDR]
    );
    // (Read back through the buffer map: only the good buffer was registered.)
    let head = used[3].0;
    let (ha, _) = g.rx_bufs[&head];
    let mut raw = [0u8; HDR as usize];
    mem.read_slice(&mut raw, GuestAddress(ha)).unwrap();
    assert_eq!(Header::from_bytes(&raw).op, OP_RST);
}

#[test]
fn rx_waits_for_buffers() {
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    // No rx buffer: the RST waits.
    g.send(&mut dev, hdr(OP_REQUEST, 1000, 55), &[]);
    assert!(g.recv().is_empty());
    g.add_rx(1, 4096);
    dev.process_rx().unwrap();
    assert_eq!(g.recv_one().0.op, OP_RST);
}

#[test]
fn config_activation_and_lifecycle() {
    let uds = SockPath::new();
    assert!(matches!(
        Vsock::new(2, &uds.0),
        Err(VsockError::InvalidCid(2))
    ));
    assert!(matches!(
        Vsock::new(u64::from(u32::MAX), &uds.0),
        Err(VsockError::InvalidCid(_))
    ));
    // A stale socket file is replaced.
    drop(UnixListener::bind(&uds.0).unwrap());
    let mut dev = Vsock::new(0x1234_5678, &uds.0).unwrap();
    assert_eq!(dev.guest_cid(), 0x1234_5678);
    let Ok(saved) = crate::persist::Persist::save(&dev, ());
    assert_eq!(
        saved,
        persist::VsockState {
            guest_cid: 0x1234_5678,
            uds_path: uds.0.clone(),
        }
    );
    assert_eq!(dev.device_type(), device_type::VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    assert_eq!(dev.queue_events().len(), 3);
    dev.set_acked_features(u64::MAX);
    assert_eq!(dev.acked_features(), VIRTIO_F_VERSION_1);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut cfg = [0xffu8; 2];
    dev.read_config(3, &mut cfg);
    assert_eq!(cfg, [0x12, 0]);
    dev.read_config(u64::MAX, &mut cfg);
    assert_eq!(cfg, [0, 0]);

    assert!(matches!(dev.process_tx(), Err(VsockError::NotActivated)));
    assert!(matches!(dev.process_rx(), Err(VsockError::NotActivated)));
    let mem = memory();
    let g = Guest::new(&mem);
    assert!(matches!(
        dev.activate(mem.clone(), vec![g.queue(0).create_queue().unwrap()]),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 1
        })
    ));
    let mut broken: Queue = g.queue(2).create_queue().unwrap();
    broken.set_avail_ring_address(Some(0xffff_0000), Some(0));
    let queues = vec![
        g.queue(0).create_queue().unwrap(),
        g.queue(1).create_queue().unwrap(),
        broken,
    ];
    assert!(matches!(
        dev.activate(mem.clone(), queues),
        Err(ActivateError::InvalidQueue(2))
    ));
    let queues = g.queues();
    dev.activate(mem.clone(), queues).unwrap();
    assert!(dev.is_activated());
    dev.reset();
    assert!(!dev.is_activated());

    // The listener goes away with the device.
    assert!(uds.0.exists());
    drop(dev);
    assert!(!uds.0.exists());
}

#[test]
fn event_loop_drives_both_directions() {
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};

    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let dev = Arc::new(Mutex::new(g.device(&uds)));
    let mut manager = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    manager.add_subscriber(dev.clone());
    let run = |manager: &mut EventManager<Arc<Mutex<Vsock>>>| {
        // Run until the loop has nothing left to do.
        while manager.run_with_timeout(50).unwrap() > 0 {}
    };
    let kick = |q: usize| dev.lock().unwrap().queue_events()[q].write(1).unwrap();
    let listener = uds.listen(52);
    g.add_rx(16, 4096);

    // Guest-initiated, through a tx kick.
    g.queue_tx(hdr(OP_REQUEST, 1000, 52), &[]);
    kick(TX_QUEUE);
    run(&mut manager);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(g.recv_one().0.op, OP_RESPONSE);
    host.write_all(b"from host").unwrap();
    run(&mut manager);
    assert_eq!(g.recv_one().1, b"from host");

    // Host-initiated, through the listener.
    let mut client = UnixStream::connect(&uds.0).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"CONNECT 77\n").unwrap();
    run(&mut manager);
    let (h, _) = g.recv_one();
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 77));
    g.queue_tx(hdr(OP_RESPONSE, 77, h.src_port), &[]);
    kick(TX_QUEUE);
    run(&mut manager);
    assert_eq!(read_line(&mut client), format!("OK {}", h.src_port));
    client.write_all(b"abc").unwrap();
    run(&mut manager);
    assert_eq!(g.recv_one().1, b"abc");

    // Data without credit does not spin the loop: edge-triggered streams go quiet.
    let mut req = hdr(OP_REQUEST, 2000, 52);
    req.buf_alloc = 0;
    g.queue_tx(req, &[]);
    kick(TX_QUEUE);
    run(&mut manager);
    let (mut host2, _) = listener.accept().unwrap();
    assert_eq!(g.recv_one().0.op, OP_RESPONSE);
    host2.write_all(b"waiting").unwrap();
    run(&mut manager);
    assert!(g.recv().is_empty());
    assert_eq!(manager.run_with_timeout(50).unwrap(), 0);
    // Credit arrives: the data follows.
    let mut up = hdr(OP_CREDIT_UPDATE, 2000, 52);
    up.buf_alloc = 1024;
    g.queue_tx(up, &[]);
    kick(TX_QUEUE);
    run(&mut manager);
    assert_eq!(g.recv_one().1, b"waiting");

    // Host closes: RST, and the stream leaves the loop.
    drop(host);
    run(&mut manager);
    let (h, _) = g.recv_one();
    assert_eq!((h.op, h.dst_port), (OP_RST, 1000));
    assert_eq!(dev.lock().unwrap().muxer.connection_count(), 2);
    // Closed clients and connections are unregistered before their fds close: new ones
    // (likely reusing the numbers) register fine.
    drop(client);
    drop(host2);
    run(&mut manager);
    assert_eq!(g.recv().len(), 2);
    assert_eq!(dev.lock().unwrap().muxer.connection_count(), 0);
    g.queue_tx(hdr(OP_REQUEST, 3000, 52), &[]);
    kick(TX_QUEUE);
    run(&mut manager);
    let (mut host3, _) = listener.accept().unwrap();
    assert_eq!(g.recv_one().0.op, OP_RESPONSE);
    host3.write_all(b"again").unwrap();
    run(&mut manager);
    assert_eq!(g.recv_one().1, b"again");
}

#[test]
fn full_listener_backlog_refuses_instead_of_blocking() {
    use std::os::unix::io::AsRawFd;
    let uds = SockPath::new();
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut dev = g.device(&uds);
    let listener = uds.listen(52);
    // SAFETY: listen(2) on a socket we own; it only lowers the backlog of the bound listener.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
    g.add_rx(8, 4096);
    for port in 1000..1006 {
        g.queue_tx(hdr(OP_REQUEST, port, 52), &[]);
    }
    // Would block forever in a blocking connect once the backlog is full.
    dev.process_tx().unwrap();
    let ops: Vec<u16> = g.recv().iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops.len(), 6);
    assert!(
        ops.contains(&OP_RESPONSE) && ops.contains(&OP_RST),
        "{ops:?}"
    );
    assert_eq!(
        dev.muxer.connection_count(),
        ops.iter().filter(|&&op| op == OP_RESPONSE).count()
    );
}
