//! The vsock backend's handling of a stream of guest packets: raw 44-byte headers checked as
//! the device checks them, handed to the muxer with their payload, interleaved with rx buffers
//! the guest offers, host clients connecting and the host side running. Every packet the muxer
//! gives the guest is addressed to the guest and fits the buffer.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::unix::net::UnixStream;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vmm::devices::virtio::vsock::muxer::Muxer;
use vmm::devices::virtio::vsock::packet::{
    check_header, Header, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_REQUEST, TYPE_STREAM, VSOCK_HOST_CID,
};

#[derive(Arbitrary, Debug)]
enum Action {
    /// The guest sends a packet.
    Guest {
        header: [u8; PKT_HEADER_SIZE],
        data: Vec<u8>,
    },
    /// The guest sends a packet that passes the device's header checks (right addresses and
    /// type, a known op), so the muxer's own handling gets the fuzzer's attention.
    Stream {
        op: u8,
        src_port: u16,
        dst_port: u8,
        flags: u8,
        buf_alloc: u32,
        fwd_cnt: u32,
        data: Vec<u8>,
    },
    /// The guest offers an rx buffer of this many data bytes.
    Receive(u16),
    /// A host client connects to the device's socket and asks for a guest port.
    HostClient { request: Vec<u8> },
    /// The host side runs: the muxer polls its sockets, the host services answer.
    Poll,
}

fuzz_target!(|actions: Vec<Action>| {
    let uds_path = fuzz::vsock_host().uds_path.clone();
    let mut muxer = Muxer::new(fuzz::GUEST_CID, &uds_path).expect("muxer");
    let mut scratch = vec![0u8; MAX_PKT_DATA as usize];
    let mut clients = Vec::new();
    for action in actions.into_iter().take(128) {
        match action {
            Action::Guest { header, mut data } => {
                let mut hdr = Header::from_bytes(&header);
                assert_eq!(Header::from_bytes(&hdr.to_bytes()), hdr);
                // The device sizes the payload to the header's length, at most MAX_PKT_DATA.
                data.truncate(MAX_PKT_DATA as usize);
                hdr.len = data.len() as u32;
                match check_header(&hdr, fuzz::GUEST_CID) {
                    Ok(()) => muxer.send_pkt(&hdr, &data),
                    Err(e) if e.deserves_rst() => muxer.reply_rst(&hdr),
                    Err(_) => {}
                }
            }
            Action::Stream {
                op,
                src_port,
                dst_port,
                flags,
                buf_alloc,
                fwd_cnt,
                mut data,
            } => {
                data.truncate(MAX_PKT_DATA as usize);
                let hdr = Header {
                    src_cid: fuzz::GUEST_CID,
                    dst_cid: VSOCK_HOST_CID,
                    src_port: u32::from(src_port),
                    // Mostly the ports a host service listens on.
                    dst_port: fuzz::HOST_PORTS
                        .get(usize::from(dst_port))
                        .copied()
                        .unwrap_or(u32::from(dst_port)),
                    len: data.len() as u32,
                    type_: TYPE_STREAM,
                    op: OP_REQUEST + u16::from(op) % OP_CREDIT_REQUEST,
                    flags: u32::from(flags % 4),
                    buf_alloc,
                    fwd_cnt,
                };
                check_header(&hdr, fuzz::GUEST_CID).expect("a well-formed header");
                muxer.send_pkt(&hdr, &data);
            }
            Action::Receive(len) => {
                let mut header = [0u8; PKT_HEADER_SIZE];
                let mut data = vec![0u8; usize::from(len)];
                // SAFETY: both buffers outlive the packet, and nothing else touches them while
                // it exists.
                let mut pkt = unsafe { VsockPacket::new(&mut header, Some(&mut data)) }
                    .expect("a header-sized header");
                let used = muxer.recv_pkt(&mut pkt, &mut scratch);
                drop(pkt);
                if let Some(used) = used {
                    let hdr = Header::from_bytes(&header);
                    assert_eq!(hdr.dst_cid, fuzz::GUEST_CID, "{hdr:?}");
                    assert!(
                        used as usize <= PKT_HEADER_SIZE + data.len(),
                        "{used} bytes used"
                    );
                    assert_eq!(used as usize, PKT_HEADER_SIZE + hdr.len as usize, "{hdr:?}");
                }
            }
            Action::HostClient { request } => {
                if let Ok(mut client) = UnixStream::connect(&uds_path) {
                    let _ = client.set_nonblocking(true);
                    let _ = client.write(&request);
                    clients.push(client);
                }
            }
            Action::Poll => {
                muxer.poll();
                fuzz::vsock_host().serve();
            }
        }
    }
    drop(muxer);
    fuzz::vsock_host().serve_and_drop();
});
