//! The device driven by a mock guest driver on plain guest memory, against a real tap in a
//! private network namespace: frames the guest puts on tx arrive at a UDP socket of the host
//! side, datagrams the host side sends land in the guest's rx buffers with their header.
//!
//! Each test runs in a thread of its own that first enters a new network namespace, so the
//! taps (all called `tap0`, as in every environment) never meet, and vanish with the thread.

use super::persist::NetState;
use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::test_queues::{GuestQueues, BUF_START, NEXT, WRITE};
use crate::devices::virtio::INTERRUPT_USED_RING;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;

const TAP: &str = "tap0";
const QLEN: u16 = 64;
const MEM_SIZE: u64 = 0x40_0000;
const GUEST_MAC: MacAddr = MacAddr([0x06, 0x00, 0xac, 0x10, 0x00, 0x02]);
const HOST_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Ethernet, IPv4 and UDP headers in front of a datagram's payload.
const HEADERS: usize = 14 + 20 + 8;
/// Room for any frame the host sends these tests (no segmentation offload is accepted).
const RX_BUF: u32 = 2048;

/// Runs `body` on a new thread in a new, empty network namespace; `Err` says why there is none
/// (root is needed).
fn run_in_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let result = std::thread::spawn(move || {
        // SAFETY: unshare(2) takes flags only; CLONE_NEWNET moves this thread alone into a
        // new network namespace, which no Rust invariant depends on.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let why = std::io::Error::last_os_error();
            return Err(format!("no network namespace ({why}); run as root"));
        }
        Ok(body())
    })
    .join();
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// [`run_in_netns`], its value, or the test skips (under CI, fails) where there is no
/// namespace to be had.
macro_rules! in_netns {
    ($body:expr $(,)?) => {
        integration_tests::ok_or_skip!(run_in_netns($body))
    };
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The host side of an environment's network: a persistent `tap0` at 10.0.0.1/24, which knows
/// the guest's MAC for 10.0.0.2 (so no ARP is needed).
fn host_side() {
    ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    // Without IPv6 on the tap the host stack sends nothing of its own (router solicitations,
    // MLD reports) for the tests to tell from their frames. /proc/sys/net is this thread's
    // namespace's.
    let sysctl = format!("/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6");
    if std::path::Path::new(&sysctl).exists() {
        std::fs::write(&sysctl, "1").unwrap();
    }
    ip(&["link", "set", TAP, "address", &HOST_MAC.to_string()]);
    ip(&["link", "set", TAP, "up"]);
    ip(&["addr", "add", "10.0.0.1/24", "dev", TAP]);
    let mac = GUEST_MAC.to_string();
    ip(&[
        "neigh",
        "add",
        "10.0.0.2",
        "lladdr",
        &mac,
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
}

/// Waits until the kernel has the tap running. Opening a tap turns its carrier on, but the
/// queueing discipline that passes frames to it is only put back asynchronously (by the
/// kernel's link watch, within milliseconds); until then the host side drops what it sends.
fn wait_running() {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = Command::new("ip")
            .args(["-o", "link", "show", TAP])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&output.stdout).contains("state UP") {
            return;
        }
        assert!(Instant::now() < deadline, "{TAP} does not come up");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn memory() -> Memory {
    crate::devices::virtio::test_queues::memory(MEM_SIZE)
}

/// The guest driver's side of the two queues.
struct Guest<'a>(GuestQueues<'a>);

impl<'a> Deref for Guest<'a> {
    type Target = GuestQueues<'a>;
    fn deref(&self) -> &GuestQueues<'a> {
        &self.0
    }
}

impl DerefMut for Guest<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> Guest<'a> {
    fn new(mem: &'a Memory) -> Guest<'a> {
        Guest(GuestQueues::new(mem, 2, QLEN))
    }

    /// A device on `tap0` that accepted `features` (of those offered) and has the queues.
    fn device(&self, features: u64) -> Net {
        let mut net = Net::new("eth0", TAP, Some(GUEST_MAC)).unwrap();
        wait_running();
        net.set_acked_features(features);
        net.activate(self.mem().clone(), self.queues()).unwrap();
        net
    }

    /// One device-writable buffer of `len` bytes in rx; returns (head, address).
    fn rx_buffer(&mut self, len: u32) -> (u16, u64) {
        let addr = self.alloc(u64::from(len));
        (self.push_chain(RX_QUEUE, &[(addr, len, WRITE)]), addr)
    }

    /// `bytes` in guest memory, split into device-readable descriptors of at most `piece`
    /// bytes, as one tx chain.
    fn tx_frame(&mut self, bytes: &[u8], piece: usize) -> u16 {
        let descs: Vec<(u64, u32, u16)> = bytes
            .chunks(piece)
            .map(|chunk| {
                let len = u32::try_from(chunk.len()).unwrap();
                let addr = self.alloc(u64::from(len));
                self.mem().write_slice(chunk, GuestAddress(addr)).unwrap();
                (addr, len, 0)
            })
            .collect();
        self.push_chain(TX_QUEUE, &descs)
    }
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// A virtio-net header and an Ethernet frame carrying a UDP datagram from the guest
/// (10.0.0.2:`src_port`) to the host (10.0.0.1:`dst_port`). The UDP checksum is 0 ("none"),
/// which IPv4 allows.
fn guest_datagram(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(HOST_MAC.bytes());
    frame.extend_from_slice(GUEST_MAC.bytes());
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = u16::try_from(20 + 8 + payload.len()).unwrap();
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&GUEST_IP.octets());
    ip.extend_from_slice(&HOST_IP.octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&dst_port.to_be_bytes());
    frame.extend_from_slice(&(total - 20).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A host socket on 10.0.0.1:`port` that gives up after a few seconds.
fn host_socket(port: u16) -> UdpSocket {
    let socket = UdpSocket::bind(SocketAddrV4::new(HOST_IP, port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

/// Sends `payload` from the host side to the guest's port `port`.
fn send_to_guest(socket: &UdpSocket, port: u16, payload: &[u8]) {
    socket
        .send_to(payload, SocketAddrV4::new(GUEST_IP, port))
        .unwrap();
}

/// Waits (up to 5 s) until the tap holds a frame for the device: the host stack hands frames to
/// the tap asynchronously.
fn wait_for_frame(net: &Net) {
    let mut tap = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(net.tap()),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll(2) reads and writes the one `pollfd`, which lives across the call.
    let ready = unsafe { libc::poll(tap.as_mut_ptr(), 1, 5000) };
    assert_eq!(ready, 1, "no frame reached the tap");
}

/// Calls `process_rx` (with the tap marked readable, as its event would) until the device has
/// used `count` rx buffers in all, or 5 s pass: the host stack hands frames to the tap
/// asynchronously.
fn receive(net: &mut Net, guest: &Guest, count: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while guest.used_count(RX_QUEUE) < count {
        assert!(
            Instant::now() < deadline,
            "only {} frames arrived",
            guest.used_count(RX_QUEUE)
        );
        net.tap_readable = true;
        net.process_rx().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The UDP payload of a received header-and-frame.
fn payload_of(received: &[u8]) -> &[u8] {
    &received[VNET_HDR_LEN + HEADERS..]
}

#[test]
fn features_config_space_and_tap_offloads() {
    in_netns!(|| {
        host_side();
        let net = Net::new("eth0", TAP, Some(GUEST_MAC)).unwrap();
        assert_eq!(net.device_type(), device_type::NET);
        assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        let features = net.avail_features();
        for bit in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ] {
            assert_ne!(features & (1 << bit), 0, "feature {bit} not offered");
        }
        assert_ne!(features & VIRTIO_F_VERSION_1, 0);
        let mut config = [0xffu8; 8];
        net.read_config(0, &mut config);
        assert_eq!(config, [6, 0, 0xac, 0x10, 0, 2, 0, 0]);
        let mut tail = [0xffu8; 4];
        net.read_config(4, &mut tail);
        assert_eq!(tail, [0, 2, 0, 0]);
        net.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 4]);

        // No MAC configured: no MAC feature, zeros in the config space.
        drop(net);
        let net = Net::new("eth0", TAP, None).unwrap();
        assert_eq!(net.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
        let mut config = [0xffu8; 6];
        net.read_config(0, &mut config);
        assert_eq!(config, [0; 6]);

        // What the driver accepted is what the tap may send it.
        let bit = |b: u32| 1u64 << b;
        assert_eq!(tap_offload(0), 0);
        assert_eq!(tap_offload(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        assert_eq!(tap_offload(bit(VIRTIO_NET_F_GUEST_CSUM)), libc::TUN_F_CSUM);
        assert_eq!(
            tap_offload(features),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        for flags in [0, tap_offload(features)] {
            net.tap().set_offload(flags).unwrap();
        }
    });
}

#[test]
fn bad_tap_names_are_refused_before_any_system_call() {
    for (name, why) in [
        ("", "empty"),
        ("sixteen-bytes-xx", "longer than 15 bytes"),
        ("a/b", "'/'"),
        ("a:b", "':'"),
        ("a b", "white space"),
        (".", "not a usable"),
    ] {
        let e = Net::new("eth0", name, None).err().unwrap();
        assert!(e.to_string().contains(why), "{name:?}: {e}");
    }
}

#[test]
fn guest_frames_reach_the_host_stack() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5000);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let mut net = guest.device(VIRTIO_F_VERSION_1);
        // One chain in one descriptor, one split at odd places (the header shares a
        // descriptor with the frame, as ANY_LAYOUT allows).
        let first = guest.tx_frame(&guest_datagram(4000, 5000, b"one descriptor"), 4096);
        let second = guest.tx_frame(&guest_datagram(4000, 5000, b"seven-byte pieces"), 7);
        assert_eq!(net.process_tx().unwrap(), 2);
        assert_eq!(guest.used(TX_QUEUE, 0), (u32::from(first), 0));
        assert_eq!(guest.used(TX_QUEUE, 1), (u32::from(second), 0));
        // One interrupt for the batch.
        assert_eq!(net.interrupt().event().read().unwrap(), 1);
        assert_ne!(net.interrupt().status() & INTERRUPT_USED_RING, 0);
        let mut buf = [0u8; 256];
        for expected in [&b"one descriptor"[..], b"seven-byte pieces"] {
            let (n, from) = socket.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], expected);
            assert_eq!(from, SocketAddrV4::new(GUEST_IP, 4000).into());
        }

        // A checksum left to the host (VIRTIO_NET_F_CSUM): the host kernel takes the frame
        // as it takes a local one with the checksum still to do.
        let mut partial = guest_datagram(4000, 5000, b"partial checksum");
        // The header's flags, csum_start and csum_offset.
        #[allow(clippy::cast_possible_truncation)]
        let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        partial[0] = needs_csum;
        partial[6..8].copy_from_slice(&34u16.to_le_bytes());
        partial[8..10].copy_from_slice(&6u16.to_le_bytes());
        guest.tx_frame(&partial, 4096);
        assert_eq!(net.process_tx().unwrap(), 1);
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"partial checksum");
    });
}

#[test]
fn host_datagrams_land_in_guest_buffers_with_their_header() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5001);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let (head, addr) = guest.rx_buffer(RX_BUF);
        let mut net = guest.device(VIRTIO_F_VERSION_1);
        send_to_guest(&socket, 4001, b"hello guest");
        receive(&mut net, &guest, 1);
        let (id, len) = guest.used(RX_QUEUE, 0);
        assert_eq!(id, u32::from(head));
        let len = usize::try_from(len).unwrap();
        assert_eq!(len, VNET_HDR_LEN + HEADERS + b"hello guest".len());
        let received = guest.read(addr, len);
        // No offloads accepted: flags 0, no segmentation, one buffer.
        assert_eq!(received[0], 0);
        assert_eq!(u32::from(received[1]), VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!(&received[10..12], &1u16.to_le_bytes());
        let eth = &received[VNET_HDR_LEN..];
        assert_eq!(&eth[..6], GUEST_MAC.bytes());
        assert_eq!(&eth[6..12], HOST_MAC.bytes());
        assert_eq!(&eth[12..14], &0x0800u16.to_be_bytes());
        assert_eq!(payload_of(&received), b"hello guest");
        // The UDP checksum was computed by the host (the guest accepted no offload).
        assert_ne!(&eth[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
        assert_eq!(net.interrupt().event().read().unwrap(), 1);
    },);
}

#[test]
fn a_driver_that_takes_checksum_offload_gets_frames_with_checksums_to_do() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5002);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let (_, addr) = guest.rx_buffer(RX_BUF);
        let mut net = guest.device(VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_GUEST_CSUM));
        send_to_guest(&socket, 4002, b"checksum left to the guest");
        receive(&mut net, &guest, 1);
        let (_, len) = guest.used(RX_QUEUE, 0);
        let received = guest.read(addr, usize::try_from(len).unwrap());
        assert_eq!(u32::from(received[0]), VIRTIO_NET_HDR_F_NEEDS_CSUM);
        // csum_start: the UDP header, after Ethernet and IPv4; csum_offset: its checksum field.
        assert_eq!(&received[6..8], &34u16.to_le_bytes());
        assert_eq!(&received[8..10], &6u16.to_le_bytes());
        assert_eq!(payload_of(&received), b"checksum left to the guest");
    },);
}

#[test]
fn frames_wait_in_the_tap_until_the_guest_has_buffers() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5003);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let mut net = guest.device(VIRTIO_F_VERSION_1);
        for payload in [&b"first"[..], b"second", b"third"] {
            send_to_guest(&socket, 4003, payload);
        }
        // Once the host stack has queued them on the tap, the device finds no buffer.
        wait_for_frame(&net);
        assert_eq!(net.process_rx().unwrap(), 0);
        assert_eq!(guest.used_count(RX_QUEUE), 0);
        assert!(net.tap_readable, "the frames are still waiting");
        assert!(
            net.interrupt().event().read().is_err(),
            "no interrupt without buffers"
        );
        // One buffer: one frame; then two more: the rest, in order, nothing lost.
        let (_, a) = guest.rx_buffer(RX_BUF);
        assert_eq!(net.process_rx().unwrap(), 1);
        let (_, b) = guest.rx_buffer(RX_BUF);
        let (_, c) = guest.rx_buffer(RX_BUF);
        let (_, d) = guest.rx_buffer(RX_BUF);
        receive(&mut net, &guest, 3);
        for (i, (addr, expected)) in [(a, &b"first"[..]), (b, b"second"), (c, b"third")]
            .into_iter()
            .enumerate()
        {
            let (_, len) = guest.used(RX_QUEUE, u16::try_from(i).unwrap());
            let received = guest.read(addr, usize::try_from(len).unwrap());
            assert_eq!(payload_of(&received), expected);
        }
        // The tap is empty now: the fourth buffer stays the guest's, and the device knows to
        // wait for the tap's next readiness event.
        net.tap_readable = true;
        assert_eq!(net.process_rx().unwrap(), 0);
        assert!(!net.tap_readable);
        assert_eq!(guest.used_count(RX_QUEUE), 3);
        send_to_guest(&socket, 4003, b"fourth");
        receive(&mut net, &guest, 4);
        let (_, len) = guest.used(RX_QUEUE, 3);
        let received = guest.read(d, usize::try_from(len).unwrap());
        assert_eq!(payload_of(&received), b"fourth");
    });
}

#[test]
fn hostile_tx_chains_are_dropped_and_the_device_goes_on() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5004);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let good = guest_datagram(4004, 5004, b"still works");
        let buf = guest.alloc(0x2_0000);
        mem.write_slice(&good, GuestAddress(buf)).unwrap();
        let good_len = u32::try_from(good.len()).unwrap();
        let big = u32::try_from(MAX_BUFFER_LEN).unwrap();
        let chains: Vec<Vec<(u64, u32, u16)>> = vec![
            // A device-writable descriptor where the device reads.
            vec![(buf, 12, 0), (buf + 12, good_len - 12, WRITE)],
            // Nothing at all, and less than a header.
            vec![(buf, 0, 0)],
            vec![(buf, 11, 0)],
            // More than the largest frame, in one descriptor and in several.
            vec![(buf, big + 1, 0)],
            vec![(buf, big / 2, 0), (buf, big / 2, 0), (buf, 2, 0)],
            // A length of 4 GiB less one.
            vec![(buf, u32::MAX, 0)],
            // Outside guest memory, straddling its end, and wrapping the address space.
            vec![(MEM_SIZE + 0x1000, 64, 0)],
            vec![(MEM_SIZE - 8, 64, 0)],
            vec![(u64::MAX - 8, 64, 0)],
        ];
        let mut heads: Vec<u16> = chains
            .iter()
            .map(|c| guest.push_chain(TX_QUEUE, c))
            .collect();
        // A loop: a descriptor that points at itself.
        heads.push(guest.push_raw(TX_QUEUE, |looped| {
            vec![SplitDescriptor::new(buf, 64, NEXT, looped)]
        }));
        // A next index past the table.
        heads.push(guest.push_raw(TX_QUEUE, |_| {
            vec![SplitDescriptor::new(buf, 64, NEXT, 1000)]
        }));
        // Then a good frame.
        heads.push(guest.push_chain(TX_QUEUE, &[(buf, good_len, 0)]));

        let mut net = guest.device(VIRTIO_F_VERSION_1);
        assert_eq!(net.process_tx().unwrap(), heads.len());
        for (i, head) in heads.iter().enumerate() {
            let i = u16::try_from(i).unwrap();
            assert_eq!(guest.used(TX_QUEUE, i), (u32::from(*head), 0), "chain {i}");
        }
        // Only the good frame went out.
        let mut received = [0u8; 256];
        let (n, _) = socket.recv_from(&mut received).unwrap();
        assert_eq!(&received[..n], b"still works");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            socket.recv_from(&mut received).is_err(),
            "a bad chain was sent"
        );
    },);
}

#[test]
fn hostile_rx_chains_are_returned_empty_and_lose_no_frame() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5005);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let buf = guest.alloc(u64::from(RX_BUF));
        let bad: Vec<Vec<(u64, u32, u16)>> = vec![
            // Device-readable where the device writes.
            vec![(buf, RX_BUF, 0)],
            vec![(buf, 64, WRITE), (buf + 64, RX_BUF - 64, 0)],
            // Outside guest memory, straddling its end, wrapping.
            vec![(MEM_SIZE + 0x1000, RX_BUF, WRITE)],
            vec![(MEM_SIZE - 8, RX_BUF, WRITE)],
            vec![(u64::MAX - 8, RX_BUF, WRITE)],
            // No room for a header.
            vec![(buf, 0, WRITE)],
            vec![(buf, 11, WRITE)],
        ];
        let mut heads: Vec<u16> = bad.iter().map(|c| guest.push_chain(RX_QUEUE, c)).collect();
        heads.push(guest.push_raw(RX_QUEUE, |looped| {
            vec![SplitDescriptor::new(buf, 64, WRITE | NEXT, looped)]
        }));
        // Room for a header but not for the frame: that frame is dropped, the next one goes
        // to the next buffer.
        let small = guest.push_chain(RX_QUEUE, &[(buf, 40, WRITE)]);
        let (good, good_addr) = guest.rx_buffer(RX_BUF);

        let mut net = guest.device(VIRTIO_F_VERSION_1);
        send_to_guest(&socket, 4005, b"too big for 40 bytes");
        send_to_guest(&socket, 4005, b"second");
        let total = u16::try_from(heads.len() + 2).unwrap();
        receive(&mut net, &guest, total);
        for (i, head) in heads.iter().chain([&small]).enumerate() {
            let i = u16::try_from(i).unwrap();
            assert_eq!(guest.used(RX_QUEUE, i), (u32::from(*head), 0), "chain {i}");
        }
        let (id, len) = guest.used(RX_QUEUE, total - 1);
        assert_eq!(id, u32::from(good));
        let received = guest.read(good_addr, usize::try_from(len).unwrap());
        assert_eq!(payload_of(&received), b"second");
    },);
}

#[test]
fn no_interrupt_while_the_driver_asks_for_none() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5006);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        guest.rx_buffer(RX_BUF);
        guest.rx_buffer(RX_BUF);
        let mut net = guest.device(VIRTIO_F_VERSION_1);
        // VRING_AVAIL_F_NO_INTERRUPT, as a driver sets it while it polls.
        #[allow(clippy::cast_possible_truncation)]
        let no_interrupt = VRING_AVAIL_F_NO_INTERRUPT as u16;
        let flags = guest.queue(RX_QUEUE).avail_addr();
        mem.write_obj(no_interrupt.to_le(), flags).unwrap();
        send_to_guest(&socket, 4006, b"polled");
        receive(&mut net, &guest, 1);
        assert!(net.interrupt().event().read().is_err());
        mem.write_obj(0u16, flags).unwrap();
        send_to_guest(&socket, 4006, b"interrupted");
        receive(&mut net, &guest, 2);
        assert_eq!(net.interrupt().event().read().unwrap(), 1);
    });
}

#[test]
fn the_event_loop_delivers_on_tap_readiness_and_queue_kicks() {
    use event_manager::{EventManager, SubscriberOps};
    in_netns!(|| {
        host_side();
        let socket = host_socket(5007);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let net = Arc::new(Mutex::new(guest.device(VIRTIO_F_VERSION_1)));
        let mut manager = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
        manager.add_subscriber(net.clone());
        // A frame before any buffer: the tap's event finds none; the rx kick delivers it.
        send_to_guest(&socket, 4007, b"waited");
        manager.run_with_timeout(1000).unwrap();
        assert_eq!(guest.used_count(RX_QUEUE), 0);
        guest.rx_buffer(RX_BUF);
        guest.rx_buffer(RX_BUF);
        net.lock().unwrap().queue_events()[RX_QUEUE]
            .write(1)
            .unwrap();
        run_until(&mut manager, &guest, RX_QUEUE, 1);
        // With a buffer waiting: the tap's readiness alone delivers.
        send_to_guest(&socket, 4007, b"at once");
        run_until(&mut manager, &guest, RX_QUEUE, 2);
        // A tx kick sends.
        guest.tx_frame(&guest_datagram(4007, 5007, b"kicked"), 4096);
        net.lock().unwrap().queue_events()[TX_QUEUE]
            .write(1)
            .unwrap();
        run_until(&mut manager, &guest, TX_QUEUE, 1);
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"kicked");
    },);
}

/// Runs the event loop until queue `q` has `count` used entries.
fn run_until(
    manager: &mut event_manager::EventManager<Arc<Mutex<Net>>>,
    guest: &Guest,
    q: usize,
    count: u16,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while guest.used_count(q) < count {
        assert!(Instant::now() < deadline, "queue {q}: nothing used");
        manager.run_with_timeout(100).unwrap();
    }
}

/// Programs the transport as a guest driver does: features, queues, DRIVER_OK.
fn drive_transport(transport: &mut MmioTransport, guest: &Guest, features: u64) {
    let write = |t: &mut MmioTransport, offset: u64, value: u32| {
        t.write(offset, &value.to_le_bytes());
    };
    write(transport, 0x70, 1 | 2);
    for (select, word) in [(0u32, features & 0xffff_ffff), (1, features >> 32)] {
        write(transport, 0x24, select);
        write(transport, 0x20, u32::try_from(word).unwrap());
    }
    write(transport, 0x70, 1 | 2 | 8);
    for index in 0..2 {
        let vq = guest.queue(index);
        write(transport, 0x30, u32::try_from(index).unwrap());
        write(transport, 0x38, u32::from(QLEN));
        for (reg, addr) in [
            (0x80, vq.desc_table_addr()),
            (0x90, vq.avail_addr()),
            (0xa0, vq.used_addr()),
        ] {
            write(transport, reg, u32::try_from(addr.0 & 0xffff_ffff).unwrap());
            write(transport, reg + 4, u32::try_from(addr.0 >> 32).unwrap());
        }
        write(transport, 0x44, 1);
    }
    write(transport, 0x70, 1 | 2 | 8 | 4);
}

#[test]
fn snapshot_state_restores_onto_a_tap_of_the_same_name_in_another_namespace() {
    use crate::microvm::DeviceSpec;
    use crate::persist::Persist;
    use crate::snapshot::DeviceState;
    let accepted = VIRTIO_F_VERSION_1
        | (1 << VIRTIO_NET_F_MAC)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_CSUM);
    // The first environment: a device driven through its transport, with two rx buffers
    // posted, one of them used, then saved as a snapshot saves it.
    let (encoded, memory_bytes) = in_netns!(move || {
        host_side();
        let socket = host_socket(5008);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        guest.rx_buffer(RX_BUF);
        let (_, second) = guest.rx_buffer(RX_BUF);
        assert_eq!(second, BUF_START + u64::from(RX_BUF));
        let state = NetState {
            iface_id: "eth0".into(),
            host_dev_name: TAP.into(),
            guest_mac: Some(GUEST_MAC),
        };
        let net = Arc::new(Mutex::new(Net::restore((), &state).unwrap()));
        wait_running();
        let mut transport = MmioTransport::new(mem.clone(), net.clone());
        drive_transport(&mut transport, &guest, accepted);
        assert!(net.lock().unwrap().is_activated());
        send_to_guest(&socket, 4008, b"before");
        {
            let mut dev = net.lock().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while guest.used_count(RX_QUEUE) < 1 {
                assert!(Instant::now() < deadline);
                dev.tap_readable = true;
                dev.process_rx().unwrap();
            }
        }
        let dev = net.lock().unwrap();
        let (Ok(saved), Ok(transport)) = (dev.save(()), transport.save(&*dev));
        assert_eq!(saved, state);
        let device = DeviceState {
            spec: DeviceSpec::Net(saved),
            transport,
        };
        drop(dev);
        let encoded = postcard::to_allocvec(&device).unwrap();
        let mut memory_bytes = vec![0u8; usize::try_from(MEM_SIZE).unwrap()];
        mem.read_slice(&mut memory_bytes, GuestAddress(0)).unwrap();
        (encoded, memory_bytes)
    });
    // A second environment, its own namespace with its own tap0: the restored device opens
    // it by the saved name, comes back activated with what the driver accepted, and goes on
    // with the second buffer.
    in_netns!(move || {
        host_side();
        let socket = host_socket(5008);
        let mem = memory();
        // The rings' helpers first: making them clears the rings, which the saved memory
        // then fills.
        let guest = Guest::new(&mem);
        mem.write_slice(&memory_bytes, GuestAddress(0)).unwrap();
        let device: DeviceState = postcard::from_bytes(&encoded).unwrap();
        let DeviceSpec::Net(state) = &device.spec else {
            panic!("{:?}", device.spec);
        };
        assert_eq!(state.guest_mac, Some(GUEST_MAC));
        let net = Arc::new(Mutex::new(Net::restore((), state).unwrap()));
        wait_running();
        let transport =
            MmioTransport::restore((mem.clone(), net.clone()), &device.transport).unwrap();
        let dev = net.lock().unwrap();
        let Ok(restored) = transport.save(&*dev);
        assert_eq!(restored, device.transport);
        assert!(dev.is_activated());
        assert_eq!(dev.acked_features(), accepted);
        assert_eq!(dev.mac(), Some(GUEST_MAC));
        drop(dev);
        // The offloads the driver accepted were given to the new tap: checksums left to do.
        send_to_guest(&socket, 4008, b"after");
        let mut dev = net.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while guest.used_count(RX_QUEUE) < 2 {
            assert!(Instant::now() < deadline);
            dev.tap_readable = true;
            dev.process_rx().unwrap();
        }
        let (_, len) = guest.used(RX_QUEUE, 1);
        let received = guest.read(BUF_START + u64::from(RX_BUF), usize::try_from(len).unwrap());
        assert_eq!(payload_of(&received), b"after");
        assert_eq!(u32::from(received[0]), VIRTIO_NET_HDR_F_NEEDS_CSUM);
    });
}

/// The device with MRG_RXBUF accepted, and `count` rx buffers of `len` bytes posted first.
fn mergeable<'a>(guest: &mut Guest<'a>, count: usize, len: u32) -> (Net, Vec<(u16, u64)>) {
    let buffers = (0..count).map(|_| guest.rx_buffer(len)).collect();
    let net = guest.device(VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_MRG_RXBUF));
    (net, buffers)
}

/// The bytes the device wrote into used entries `first..first + count` of rx, in order, each
/// entry's buffer taken from `buffers`; checks each entry's head.
fn gather(guest: &Guest, buffers: &[(u16, u64)], first: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, (head, addr)) in buffers.iter().enumerate() {
        let (id, len) = guest.used(RX_QUEUE, first + u16::try_from(i).unwrap());
        assert_eq!(id, u32::from(*head));
        bytes.extend(guest.read(*addr, usize::try_from(len).unwrap()));
    }
    bytes
}

#[test]
fn mergeable_buffers_take_a_frame_in_pieces_and_count_them() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5009);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let (mut net, buffers) = mergeable(&mut guest, 4, 32);
        assert_ne!(net.avail_features() & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        let payload = [0x5a; 60];
        send_to_guest(&socket, 4009, &payload);
        // 12 + 42 + 60 = 114 bytes: four 32-byte buffers, the last one part full.
        receive(&mut net, &guest, 4);
        let lens: Vec<u32> = (0..4).map(|i| guest.used(RX_QUEUE, i).1).collect();
        assert_eq!(lens, [32, 32, 32, 18]);
        let received = gather(&guest, &buffers[..4], 0);
        assert_eq!(&received[10..12], &4u16.to_le_bytes());
        assert_eq!(payload_of(&received), payload);
        // A buffer large enough takes the next frame whole.
        let large = guest.rx_buffer(RX_BUF);
        send_to_guest(&socket, 4009, b"x");
        receive(&mut net, &guest, 5);
        let received = gather(&guest, &[large], 4);
        assert_eq!(payload_of(&received), b"x");
        assert_eq!(&received[10..12], &1u16.to_le_bytes());
    },);
}

#[test]
fn a_frame_waits_for_enough_mergeable_buffers() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5010);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let (mut net, mut buffers) = mergeable(&mut guest, 2, 32);
        send_to_guest(&socket, 4010, &[0xa5; 60]);
        send_to_guest(&socket, 4010, b"next");
        wait_for_frame(&net);
        // 64 bytes of buffers for a 114-byte frame: none is used, the frame waits.
        assert_eq!(net.process_rx().unwrap(), 0);
        assert_eq!(guest.used_count(RX_QUEUE), 0);
        assert!(net.rx_pending.is_some());
        // Even with the tap drained as far as the device knows, the waiting frame goes first.
        net.tap_readable = false;
        buffers.push(guest.rx_buffer(32));
        buffers.push(guest.rx_buffer(RX_BUF));
        assert_eq!(net.process_rx().unwrap(), 4);
        let received = gather(&guest, &buffers, 0);
        assert_eq!(&received[10..12], &4u16.to_le_bytes());
        assert_eq!(payload_of(&received), [0xa5; 60]);
        assert!(net.rx_pending.is_none());
        // Then the next frame, from the tap.
        let (head, addr) = guest.rx_buffer(RX_BUF);
        receive(&mut net, &guest, 5);
        let received = gather(&guest, &[(head, addr)], 4);
        assert_eq!(payload_of(&received), b"next");
    });
}

#[test]
fn a_bad_chain_among_mergeable_buffers_costs_one_frame() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5011);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        let mut heads = Vec::new();
        // A bad chain first: returned empty, the frame goes on to the next ones.
        let bad = guest.alloc(32);
        heads.push(guest.push_chain(RX_QUEUE, &[(bad, 32, 0)]));
        // Two good ones, then a bad one amid the frame: all three back empty, frame dropped.
        heads.push(guest.rx_buffer(32).0);
        heads.push(guest.rx_buffer(32).0);
        heads.push(guest.push_chain(RX_QUEUE, &[(MEM_SIZE, 32, WRITE)]));
        let good = guest.rx_buffer(RX_BUF);
        let mut net = guest.device(VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_MRG_RXBUF));
        send_to_guest(&socket, 4011, &[1; 60]);
        send_to_guest(&socket, 4011, b"after the bad one");
        receive(&mut net, &guest, 5);
        let used: Vec<(u32, u32)> = (0..4).map(|i| guest.used(RX_QUEUE, i)).collect();
        // The bad head first, then the frame's two good ones and the bad one that ended it.
        assert_eq!(used[0], (u32::from(heads[0]), 0));
        let mut rest: Vec<u32> = used[1..].iter().map(|u| u.0).collect();
        rest.sort_unstable();
        let mut expected: Vec<u32> = heads[1..].iter().map(|h| u32::from(*h)).collect();
        expected.sort_unstable();
        assert_eq!(rest, expected);
        assert!(used[1..].iter().all(|u| u.1 == 0));
        let received = gather(&guest, &[good], 4);
        assert_eq!(payload_of(&received), b"after the bad one");
    },);
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped_not_waited_for() {
    in_netns!(|| {
        host_side();
        let socket = host_socket(5012);
        let mem = memory();
        let mut guest = Guest::new(&mem);
        // The whole ring, in header-sized buffers: 64 x 12 bytes for a 1054-byte frame.
        let (mut net, _) = mergeable(&mut guest, usize::from(QLEN), 12);
        send_to_guest(&socket, 4012, &[2; 1000]);
        receive(&mut net, &guest, QLEN);
        assert!((0..QLEN).all(|i| guest.used(RX_QUEUE, i).1 == 0));
        assert!(net.rx_pending.is_none());
    },);
}
