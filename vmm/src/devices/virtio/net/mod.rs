//! virtio-net (virtio spec 5.1) over a host tap: one receive and one transmit queue, the
//! checksum and TCP segmentation offloads the tap can do, and the guest's MAC address in the
//! configuration space.
//!
//! - [`tap`]: the host side, opened by name in the VMM's network namespace;
//! - [`frame`]: frames in and out of descriptor chains, every descriptor checked;
//! - [`mac`]: the guest's Ethernet address;
//! - `event_handler`: queue kicks and tap readiness from the VMM's event loop;
//! - [`persist`]: what a snapshot keeps of the device.
//!
//! Receive never loses a frame for want of guest buffers: a frame is read from the tap only
//! once a buffer is there for it, so without buffers frames wait in the tap's own queue, and
//! the guest's next rx notification resumes delivery. The offloads matter here more than on
//! hardware: every guest kernel path runs emulated, so a 64 KiB segment handed over whole,
//! with its checksum left to whoever needs it, saves the guest most of its per-frame work.

mod event_handler;
pub mod frame;
pub mod mac;
pub mod persist;
pub mod tap;
#[cfg(test)]
mod tests;

pub use frame::{ChainError, MAX_BUFFER_LEN, VNET_HDR_LEN};
pub use mac::MacAddr;
pub use tap::{Tap, TapError};

use super::{device_type, Active, DeviceBase, Memory, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::error::Chain;
use frame::RxBuffers;
use std::io;
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE, QUEUE_SIZE];
/// How log lines name the device.
const NAME: &str = "virtio-net";

/// Offloads offered whatever the configuration: the guest may leave checksums to the host and
/// send 64 KiB TCP segments (CSUM, HOST_TSO*), and may take both (GUEST_*). The tap is told at
/// activation which of the GUEST_* ones the driver accepted ([`tap_offload`]).
const OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6);

/// Why a network device could not be created or its queues processed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    #[error("the device is not activated")]
    NotActivated,
    #[error("the queue is broken")]
    Queue(#[from] virtio_queue::Error),
    #[error("reading tap {name}")]
    TapRead {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot signal the guest")]
    Interrupt(#[source] io::Error),
}

/// The `TUN_F_*` offloads of frames to a guest whose driver accepted `acked`.
pub fn tap_offload(acked: u64) -> libc::c_uint {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        // Segmentation offloads need the checksum one.
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// A virtio network device on a tap.
pub struct Net {
    base: DeviceBase,
    iface_id: String,
    mac: Option<MacAddr>,
    tap: Tap,
    /// The tap may have frames waiting. Its readiness is watched edge-triggered, so this
    /// remembers it until a read would block (frames left waiting for guest buffers then
    /// need no further wakeup from the tap).
    tap_readable: bool,
    /// One frame with its header, either way.
    frame: Vec<u8>,
    rx_buffers: RxBuffers,
    /// Frames the guest sent that the tap refused, so only the first is logged as a warning.
    tx_dropped: u64,
}

impl Net {
    /// A device for interface `iface_id` on the tap `host_dev_name` (opened now, in the calling
    /// thread's network namespace), showing the guest `mac` if given.
    pub fn new(iface_id: &str, host_dev_name: &str, mac: Option<MacAddr>) -> Result<Net, NetError> {
        let tap = Tap::open(host_dev_name, VNET_HDR_LEN)?;
        let mut avail_features = VIRTIO_F_VERSION_1 | OFFLOAD_FEATURES;
        if mac.is_some() {
            avail_features |= 1 << VIRTIO_NET_F_MAC;
        }
        Ok(Net {
            base: DeviceBase::new(device_type::NET, QUEUE_SIZES, avail_features)
                .map_err(NetError::EventFd)?,
            iface_id: iface_id.to_owned(),
            mac,
            tap,
            // Frames may be waiting already; the first read finds out.
            tap_readable: true,
            frame: vec![0; MAX_BUFFER_LEN],
            rx_buffers: RxBuffers::default(),
            tx_dropped: 0,
        })
    }

    pub fn iface_id(&self) -> &str {
        &self.iface_id
    }

    pub fn mac(&self) -> Option<MacAddr> {
        self.mac
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.base.acked_features()
    }

    /// Sends every frame the guest queued to the tap; returns how many chains were used.
    ///
    /// Only the chains available when called are handled: a guest that keeps adding more
    /// cannot keep the host here. A bad chain or a frame the tap refuses is dropped (the
    /// guest's stack sees a lost packet) and logged; only a broken queue or interrupt is an
    /// error.
    pub fn process_tx(&mut self) -> Result<usize, NetError> {
        let Net {
            base,
            tap,
            frame,
            tx_dropped,
            ..
        } = self;
        let (Active { mem, queues }, irq) = base.active_mut().ok_or(NetError::NotActivated)?;
        let txq = &mut queues[TX_QUEUE];
        let chains: Vec<DescriptorChain<&Memory>> = txq.iter(&*mem)?.collect();
        let mut used = 0usize;
        for chain in chains {
            let head = chain.head_index();
            match frame::gather_tx(mem, chain, frame) {
                Ok(len) => {
                    if let Err(e) = tap.write_frame(&frame[..len]) {
                        *tx_dropped += 1;
                        if *tx_dropped == 1 {
                            log::warn!(
                                "{NAME}: tap {} refused a frame (later ones are logged at debug): {e}",
                                tap.name()
                            );
                        } else {
                            log::debug!("{NAME}: tap {} refused a frame: {e}", tap.name());
                        }
                    }
                }
                Err(e) => log::warn!("{NAME}: dropping tx chain {head}: {e}"),
            }
            match txq.add_used(&*mem, head, 0) {
                Ok(()) => used += 1,
                // A bogus head index in the available ring: nothing to return.
                Err(virtio_queue::Error::InvalidDescriptorIndex) => {
                    log::warn!("{NAME}: tx chain with invalid head index {head}")
                }
                Err(e) => return Err(e.into()),
            }
        }
        if used > 0 && needs_interrupt(txq, mem)? {
            irq.signal_used_queue().map_err(NetError::Interrupt)?;
        }
        Ok(used)
    }

    /// Moves frames from the tap into the guest's receive buffers, one frame per buffer, while
    /// both last; returns how many buffers were used. A frame is read only once a buffer is
    /// there for it, so none is lost when the guest has none.
    pub fn process_rx(&mut self) -> Result<usize, NetError> {
        if !self.tap_readable {
            return Ok(0);
        }
        let Net {
            base,
            tap,
            tap_readable,
            frame,
            rx_buffers,
            ..
        } = self;
        let (Active { mem, queues }, irq) = base.active_mut().ok_or(NetError::NotActivated)?;
        let rxq = &mut queues[RX_QUEUE];
        let mut used = 0usize;
        let mut result = Ok(());
        // Every round uses a buffer or ends the loop; buffers the guest adds meanwhile come
        // with their own notification, so stopping after a queue's worth loses no wakeup.
        while used < usize::from(QUEUE_SIZE) {
            let Some(chain) = rxq.pop_descriptor_chain(&*mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match rx_buffers.load(mem, chain) {
                Ok(()) => match tap.read_frame(frame) {
                    Ok(n) => match rx_buffers.write_frame(mem, &mut frame[..n]) {
                        Ok(len) => len,
                        Err(e) => {
                            log::warn!("{NAME}: dropping a received frame: {e}");
                            0
                        }
                    },
                    Err(e) => {
                        // The buffer stays the guest's for the next frame.
                        rxq.go_to_previous_position();
                        if e.kind() == io::ErrorKind::WouldBlock {
                            *tap_readable = false;
                        } else if e.kind() != io::ErrorKind::Interrupted {
                            result = Err(NetError::TapRead {
                                name: tap.name().to_owned(),
                                source: e,
                            });
                        }
                        break;
                    }
                },
                Err(e) => {
                    // Returned empty: the guest driver counts a length error and goes on.
                    log::warn!("{NAME}: unusable rx chain {head}: {e}");
                    0
                }
            };
            match rxq.add_used(&*mem, head, len) {
                Ok(()) => used += 1,
                Err(virtio_queue::Error::InvalidDescriptorIndex) => {
                    log::warn!("{NAME}: rx chain with invalid head index {head}")
                }
                Err(e) => return Err(e.into()),
            }
        }
        if used > 0 && needs_interrupt(rxq, mem)? {
            irq.signal_used_queue().map_err(NetError::Interrupt)?;
        }
        result.map(|()| used)
    }
}

/// Whether the driver wants an interrupt for the buffers just used: one per batch, and none
/// while it has asked for none (`VRING_AVAIL_F_NO_INTERRUPT`, set while its NAPI poll is
/// reading the used ring anyway; it checks the ring again when it turns interrupts back on).
fn needs_interrupt(queue: &mut Queue, mem: &Memory) -> Result<bool, NetError> {
    // Also the fence between our used-ring writes and the read of the driver's flags.
    if !queue.needs_notification(mem)? {
        return Ok(false);
    }
    let flags: u16 = mem
        .load(GuestAddress(queue.avail_ring()), Ordering::Acquire)
        .map(u16::from_le)
        .map_err(virtio_queue::Error::GuestMemory)?;
    Ok(u32::from(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0)
}

impl VirtioDevice for Net {
    fn base(&self) -> &DeviceBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut DeviceBase {
        &mut self.base
    }

    /// `struct virtio_net_config`: only `mac` is offered (no STATUS, MQ or MTU features), so
    /// the space is the six address bytes, and reads as zeros without one.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.mac.map(|m| *m.bytes()).unwrap_or_default();
        for (i, byte) in (0u64..).zip(data.iter_mut()) {
            *byte = offset
                .checked_add(i)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activated(&mut self) {
        // What the driver accepted decides what frames it can take: a driver without
        // GUEST_TSO4 must never see a 64 KiB segment.
        let offload = tap_offload(self.base.acked_features());
        if let Err(e) = self.tap.set_offload(offload) {
            log::error!("{NAME}: {}", Chain(&e));
        }
    }
}
