//! virtio-vsock (virtio spec 5.10) with a Firecracker-compatible hybrid backend over AF_UNIX.
//!
//! - [`packet`]: header checks on top of the `virtio-vsock` crate's descriptor parsing;
//! - [`connection`]: one stream's state machine and credit accounting;
//! - [`muxer`]: the Unix sockets (listener, `CONNECT` handshake, `<uds>_<port>` connections,
//!   local port allocation) and the connection map;
//! - `event_handler`: the `MutEventSubscriber` that drives it all from the VMM's event loop;
//! - [`persist`]: what a snapshot keeps of the device.
//!
//! Everything a guest puts in the queues is untrusted: a malformed or hostile packet is
//! dropped or answered with an RST and logged, and the device goes on.

pub mod connection;
mod event_handler;
pub mod muxer;
pub mod packet;
pub mod persist;

#[cfg(test)]
mod tests;

use super::{
    device_type, return_chain, Active, DeviceBase, Memory, VirtioDevice, VIRTIO_F_VERSION_1,
};
use logging::Chain;
use muxer::Muxer;
use packet::{check_header, Header, MAX_PKT_DATA};
use std::io;
use std::path::{Path, PathBuf};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::Bytes;

/// The largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
const NUM_QUEUES: usize = 3;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest must drop all its connections.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Why the device could not be created or could not process its queues.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest cid {0} is reserved (0, 1, 2 and u32::MAX are)")]
    InvalidCid(u64),
    #[error("cannot listen on {path}", path = .0.display())]
    Bind(PathBuf, #[source] io::Error),
    #[error("cannot create the device's eventfds")]
    EventFd(#[source] io::Error),
    #[error("the device is not activated")]
    NotActivated,
    #[error("the queue is broken")]
    Queue(#[from] virtio_queue::Error),
    #[error("the guest provided no buffer in the event queue")]
    NoEventBuffer,
    #[error("the event queue buffer is unusable")]
    BadEventBuffer,
    #[error("cannot signal the guest")]
    Interrupt(#[source] io::Error),
}

/// The virtio-vsock device.
pub struct Vsock {
    base: DeviceBase,
    guest_cid: u64,
    pub(crate) muxer: Muxer,
    /// Bounce buffer for host-to-guest data.
    scratch: Vec<u8>,
}

impl Vsock {
    /// A device for the guest at `guest_cid`, whose host clients connect to `uds_path`
    /// (a stale socket file there is replaced; the file is removed when the device is dropped)
    /// and whose connections to host port `P` go to `<uds_path>_<P>`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if guest_cid <= packet::VSOCK_HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        Ok(Vsock {
            base: DeviceBase::new(device_type::VSOCK, &QUEUE_SIZES, VIRTIO_F_VERSION_1)
                .map_err(VsockError::EventFd)?,
            guest_cid,
            muxer: Muxer::new(guest_cid, uds_path)?,
            scratch: vec![0u8; MAX_PKT_DATA as usize],
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.base.acked_features()
    }

    /// Hands every packet the guest queued for sending to the backend, then delivers what the
    /// backend has for the guest.
    ///
    /// Only the packets available when called are handled: a guest that keeps adding more
    /// cannot keep the host here. Bad packets are dropped (or answered with an RST) and logged;
    /// only a broken queue or interrupt is an error.
    pub fn process_tx(&mut self) -> Result<(), VsockError> {
        let Vsock {
            base,
            muxer,
            guest_cid,
            ..
        } = self;
        let (Active { mem, queues }, irq) = base.active_mut().ok_or(VsockError::NotActivated)?;
        let txq = &mut queues[TX_QUEUE];
        let chains: Vec<DescriptorChain<&Memory>> = txq.iter(&*mem)?.collect();
        let mut used = 0usize;
        let mut data = Vec::new();
        for mut chain in chains {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Header::from_packet(&pkt);
                    match check_header(&hdr, *guest_cid) {
                        Ok(()) => {
                            data.clear();
                            if let Some(slice) = pkt.data_slice() {
                                // `from_tx_virtq_chain` sized the slice to `hdr.len`, at most
                                // MAX_PKT_DATA.
                                data.resize(slice.len(), 0);
                                slice.copy_to(&mut data[..]);
                            }
                            muxer.send_pkt(&hdr, &data);
                        }
                        Err(e) => {
                            log::warn!("vsock: dropping guest packet {hdr:?}: {}", Chain(&e));
                            if e.deserves_rst() {
                                muxer.reply_rst(&hdr);
                            }
                        }
                    }
                }
                Err(e) => log::warn!("vsock: dropping guest packet: malformed chain: {e}"),
            }
            used += return_chain(txq, mem, head, 0, "vsock: tx chain")?;
        }
        if used > 0 && txq.needs_notification(&*mem)? {
            irq.signal_used_queue().map_err(VsockError::Interrupt)?;
        }
        self.process_rx()
    }

    /// Fills the guest's rx buffers with whatever the backend has for it: control packets,
    /// then data from host streams, as far as credit allows.
    pub fn process_rx(&mut self) -> Result<(), VsockError> {
        let Vsock {
            base,
            muxer,
            scratch,
            ..
        } = self;
        let (Active { mem, queues }, irq) = base.active_mut().ok_or(VsockError::NotActivated)?;
        let rxq = &mut queues[RX_QUEUE];
        let mut used = 0usize;
        // Bounded by the queue size per call: every round consumes a buffer or ends the loop.
        while muxer.has_rx() && used < usize::from(QUEUE_SIZE) {
            let Some(mut chain) = rxq.pop_descriptor_chain(&*mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match muxer.recv_pkt(&mut pkt, scratch) {
                    Some(len) => len,
                    None => {
                        // Nothing fits this buffer now: leave it for later.
                        rxq.set_next_avail(rxq.next_avail().wrapping_sub(1));
                        break;
                    }
                },
                Err(e) => {
                    log::warn!("vsock: unusable rx buffer: {e}");
                    0
                }
            };
            used += return_chain(rxq, mem, head, len, "vsock: rx chain")?;
        }
        if used > 0 && rxq.needs_notification(&*mem)? {
            irq.signal_used_queue().map_err(VsockError::Interrupt)?;
        }
        Ok(())
    }

    /// Without an event loop: accepts host clients, reads what host sockets have (as far as
    /// credit and rx buffers allow) and delivers it to the guest. Errors are logged.
    pub fn poll_backend(&mut self) {
        self.muxer.poll();
        if self.base.is_active() {
            if let Err(e) = self.process_rx() {
                log::error!("vsock: {}", Chain(&e));
            }
        }
    }

    /// Tells the guest to drop all its vsock connections (after a snapshot restore, the host
    /// ends of them are gone) and drops the device's own, closing their host streams.
    pub fn send_transport_reset(&mut self) -> Result<(), VsockError> {
        self.muxer.reset();
        let (Active { mem, queues }, irq) =
            self.base.active_mut().ok_or(VsockError::NotActivated)?;
        let evq = &mut queues[EVENT_QUEUE];
        let chain = evq
            .pop_descriptor_chain(&*mem)
            .ok_or(VsockError::NoEventBuffer)?;
        let head = chain.head_index();
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = match chain.writable().next() {
            Some(desc) if desc.len() as usize >= event.len() => {
                mem.write_slice(&event, desc.addr()).is_ok()
            }
            _ => false,
        };
        // The event is one u32.
        let len = if written { u32::BITS / 8 } else { 0 };
        evq.add_used(&*mem, head, len)?;
        if evq.needs_notification(&*mem)? {
            irq.signal_used_queue().map_err(VsockError::Interrupt)?;
        }
        if written {
            Ok(())
        } else {
            Err(VsockError::BadEventBuffer)
        }
    }
}

impl VirtioDevice for Vsock {
    fn base(&self) -> &DeviceBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut DeviceBase {
        &mut self.base
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in (0u64..).zip(data.iter_mut()) {
            *byte = offset
                .checked_add(i)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activated(&mut self) {
        // Host clients may have connected before the driver was ready.
        if let Err(e) = self.process_rx() {
            log::warn!("vsock: {}", Chain(&e));
        }
    }

    fn reset_backend(&mut self) {
        self.muxer.reset();
    }
}
