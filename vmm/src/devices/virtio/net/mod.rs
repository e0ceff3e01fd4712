//! virtio-net (virtio spec 5.1) over a host tap: one receive and one transmit queue, the
//! checksum and TCP segmentation offloads the tap can do, mergeable receive buffers, and the
//! guest's MAC address in the configuration space.
//!
//! - [`tap`]: the host side, opened by name in the VMM's network namespace;
//! - [`frame`]: frames in and out of descriptor chains, every descriptor checked;
//! - `receive`: one received frame spread over the guest's buffer chains;
//! - [`mac`]: the guest's Ethernet address;
//! - `event_handler`: queue kicks and tap readiness from the VMM's event loop;
//! - [`persist`]: what a snapshot keeps of the device.
//!
//! Receive never loses a frame for want of guest buffers: a frame is read from the tap only
//! once a buffer is there for it, so without buffers frames wait in the tap's own queue; one
//! that needs more buffers than there are waits in the device; the guest's next rx
//! notification resumes delivery. The offloads matter here more than on
//! hardware: every guest kernel path runs emulated, so a 64 KiB segment handed over whole,
//! with its checksum left to whoever needs it, saves the guest most of its per-frame work.

mod event_handler;
pub mod frame;
pub mod mac;
pub mod persist;
mod receive;
pub mod tap;
#[cfg(test)]
mod tests;

pub use frame::{ChainError, MAX_BUFFER_LEN, VNET_HDR_LEN};
pub use mac::MacAddr;
pub use tap::{Tap, TapError};

use super::{
    device_type, return_chain, Active, DeviceBase, Memory, VirtioDevice, VIRTIO_F_VERSION_1,
};
use frame::RxBuffers;
use logging::Chain;
use std::io;
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
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

/// Features offered whatever the configuration: the guest may leave checksums to the host and
/// send 64 KiB TCP segments (CSUM, HOST_TSO*), and may take both (GUEST_*; the tap is told at
/// activation which of these the driver accepted, [`tap_offload`]); and it may give receive
/// buffers of any size, which the device fills frame after frame, a frame spread over as many
/// as it needs (MRG_RXBUF). Without MRG_RXBUF a driver that takes GUEST_TSO* must post 64 KiB
/// buffers, which Linux makes of 17 pages and allocates again for every frame received,
/// however small: measured here, 256 KiB each way over TCP took 6.0-7.5 s that way and
/// 3.8-4.7 s with 1.5 KiB buffers and no receive offloads.
const OFFERED_FEATURES: u64 = (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_NET_F_CSUM)
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
    /// The frame (with its header) being sent.
    tx_frame: Vec<u8>,
    /// The frame (with its header) being received.
    rx_frame: Vec<u8>,
    /// The length of the received frame in `rx_frame` that waits for guest buffers: read from
    /// the tap when one buffer was there, it needs more (MRG_RXBUF). It goes with the next
    /// buffers the guest gives, before any other frame; a snapshot does not keep it (the
    /// guest's stack sees a lost packet).
    rx_pending: Option<usize>,
    /// The buffer chains the current frame is going to, reused from frame to frame.
    rx_chains: Vec<RxBuffers>,
    /// Frames the guest sent that the tap refused, so only the first is logged as a warning.
    tx_dropped: u64,
}

impl Net {
    /// A device for interface `iface_id` on the tap `host_dev_name` (opened now, in the calling
    /// thread's network namespace), showing the guest `mac` if given.
    pub fn new(iface_id: &str, host_dev_name: &str, mac: Option<MacAddr>) -> Result<Net, NetError> {
        let tap = Tap::open(host_dev_name, VNET_HDR_LEN)?;
        let mut avail_features = VIRTIO_F_VERSION_1 | OFFERED_FEATURES;
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
            tx_frame: vec![0; MAX_BUFFER_LEN],
            rx_frame: vec![0; MAX_BUFFER_LEN],
            rx_pending: None,
            rx_chains: Vec::new(),
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
            tx_frame: frame,
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
            used += return_chain(txq, mem, head, 0, &format!("{NAME}: tx chain"))?;
        }
        if used > 0 && needs_interrupt(txq, mem)? {
            irq.signal_used_queue().map_err(NetError::Interrupt)?;
        }
        Ok(used)
    }

    /// Moves frames from the tap into the guest's receive buffers while both last; returns how
    /// many buffer chains were used. A frame is read only once a buffer is there for it, and
    /// one that needs more buffers than there are waits for them, so none is lost when the
    /// guest has none.
    pub fn process_rx(&mut self) -> Result<usize, NetError> {
        if !self.tap_readable && self.rx_pending.is_none() {
            return Ok(0);
        }
        let mergeable = self.base.acked_features() & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let Net {
            base,
            tap,
            tap_readable,
            rx_frame,
            rx_pending,
            rx_chains,
            ..
        } = self;
        let (Active { mem, queues }, irq) = base.active_mut().ok_or(NetError::NotActivated)?;
        let rxq = &mut queues[RX_QUEUE];
        let mut used = 0usize;
        let mut result = Ok(());
        // Every round uses a buffer, drops a frame or ends the loop; buffers the guest adds
        // meanwhile come with their own notification, so stopping after a queue's worth loses
        // no wakeup.
        while used < usize::from(QUEUE_SIZE) {
            if rxq.avail_idx(&*mem, Ordering::Acquire)?.0 == rxq.next_avail() {
                break;
            }
            let len = match rx_pending.take() {
                Some(len) => len,
                None => match tap.read_frame(rx_frame) {
                    Ok(len) => len,
                    Err(e) => {
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
            };
            if len < VNET_HDR_LEN {
                log::warn!("{NAME}: dropping a {len}-byte frame from the tap");
                continue;
            }
            let frame = &mut rx_frame[..len];
            match receive::place(mem, rxq, frame, mergeable, rx_chains)? {
                receive::Placed::Used(n) => used += n,
                receive::Placed::Waiting(n) => {
                    used += n;
                    *rx_pending = Some(len);
                    break;
                }
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

    fn reset_backend(&mut self) {
        // A frame read for the old session's buffers; the next session may not even take
        // frames of its size.
        self.rx_pending = None;
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
