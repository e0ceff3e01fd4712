//! Virtio devices and their MMIO transport.
//!
//! Every device keeps what all devices share in a [`DeviceBase`] (features, queue eventfds,
//! interrupt, the activated queues), and [`VirtioDevice`]'s default methods work on it: a
//! device itself supplies its configuration space and its queue processing, and its event-loop
//! side only says what to do when a queue is notified ([`DeviceBase::queue_notified`]).
//!
//! A device ([`VirtioDevice`]) knows nothing of KVM or of the event loop: the transport
//! ([`mmio::MmioTransport`]) hands it the guest's queues when the driver sets `DRIVER_OK`, the
//! guest's queue kicks arrive on the device's [`queue_events`](VirtioDevice::queue_events)
//! (ioeventfds inside a VM, plain eventfds in tests), and the device raises its interrupt through
//! an [`IrqTrigger`] (an irqfd inside a VM). Each device also implements
//! `event_manager::MutEventSubscriber` so the VMM's event loop can drive it; tests call its
//! queue-processing methods directly on plain guest memory.

mod base;
pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
mod test_queues;
pub mod vsock;

pub use base::{Active, DeviceBase};

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory as the devices see it.
pub type Memory = GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: every device here is a modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Interrupt status bit: the device used buffers in a queue.
pub const INTERRUPT_USED_RING: u32 = 0x1;
/// Interrupt status bit: the device's configuration changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// Device type ids (virtio spec 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// The interrupt line of one device: the interrupt status the driver reads and acknowledges
/// through the transport, and the eventfd that injects the interrupt (an irqfd inside a VM).
/// Cheap to clone; clones share the status.
#[derive(Clone)]
pub struct IrqTrigger {
    status: Arc<AtomicU32>,
    event: Arc<EventFd>,
}

impl IrqTrigger {
    pub fn new() -> io::Result<IrqTrigger> {
        Ok(IrqTrigger {
            status: Arc::new(AtomicU32::new(0)),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Tells the driver the device used buffers.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(INTERRUPT_USED_RING)
    }

    /// Tells the driver the device's configuration changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.signal(INTERRUPT_CONFIG_CHANGE)
    }

    fn signal(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.event.write(1)
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets the status bits a snapshot recorded, without raising the interrupt (the irqchip's
    /// own restored state holds any pending one).
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The driver acknowledged `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd to register as an irqfd (or to read in tests).
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

/// Returns a chain the device is done with to the driver, `len` bytes written: 1 when it went
/// in the used ring, 0 when its head index is bogus (the driver put an index past the
/// descriptor table in the available ring: there is no descriptor to return, so the chain is
/// dropped, and the log says so as `what`, e.g. `virtio-blk: dropping request`).
pub fn return_chain(
    queue: &mut Queue,
    mem: &Memory,
    head: u16,
    len: u32,
    what: &str,
) -> Result<usize, virtio_queue::Error> {
    match queue.add_used(mem, head, len) {
        Ok(()) => Ok(1),
        Err(virtio_queue::Error::InvalidDescriptorIndex) => {
            log::warn!("{what} with invalid head index {head}");
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// [`Persist`](crate::persist::Persist) for a device whose snapshot state is what it was made
/// from (a drive's path, a tap's name: nothing the guest changes): `save` returns it, through
/// `$save(&device)`, and cannot fail; `restore` makes the device again, `$make(&state)`.
macro_rules! persist_as_made {
    ($device:ty, $state:ty, $error:ty, $save:expr, $make:expr) => {
        impl $crate::persist::Persist<'_> for $device {
            type State = $state;
            type SaveArgs = ();
            type RestoreArgs = ();
            type SaveError = std::convert::Infallible;
            type RestoreError = $error;

            fn save(&self, (): ()) -> Result<$state, std::convert::Infallible> {
                Ok($save(self))
            }

            fn restore((): (), state: &$state) -> Result<$device, $error> {
                $make(state)
            }
        }
    };
}
pub(crate) use persist_as_made;

/// The event-loop side of a device with one queue and a `process_queue` method that does all
/// its work (the drive, the entropy device): a notification of the queue of an active device
/// runs it, and a failure is logged as `$name`'s.
macro_rules! one_queue_event_handler {
    ($device:ty, $name:expr) => {
        impl event_manager::MutEventSubscriber for $device {
            fn process(
                &mut self,
                events: event_manager::Events,
                _ops: &mut event_manager::EventOps,
            ) {
                if self.base.queue_notified(&events, $name).is_none() || !self.base.is_active() {
                    return;
                }
                if let Err(e) = self.process_queue() {
                    log::error!("{}: {}", $name, logging::Chain(&e));
                }
            }

            fn init(&mut self, ops: &mut event_manager::EventOps) {
                self.base.watch_queues(ops, $name);
            }
        }
    };
}
pub(crate) use one_queue_event_handler;

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues; the device has {expected}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not valid (size or ring addresses outside guest memory)")]
    InvalidQueue(usize),
}

/// A virtio device behind a transport. A device implements the first three methods (and the
/// hooks it needs); the rest work on its [`DeviceBase`].
pub trait VirtioDevice: Send {
    fn base(&self) -> &DeviceBase;

    fn base_mut(&mut self) -> &mut DeviceBase;

    /// Reads the device-specific configuration space at `offset`. Bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space. Devices whose configuration is read-only
    /// ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// Hook: the device was just activated (work it should do at once goes here).
    fn activated(&mut self) {}

    /// Hook: the driver reset the device, whose queues are gone; the device's own state goes
    /// back to its pre-activation state too.
    fn reset_backend(&mut self) {}

    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32 {
        self.base().device_type
    }

    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.base().queue_max_sizes
    }

    /// The features the device offers, [`VIRTIO_F_VERSION_1`] included.
    fn avail_features(&self) -> u64 {
        self.base().avail_features
    }

    /// The features the driver accepted: those of `acked` the device offers.
    fn set_acked_features(&mut self, acked: u64) {
        let base = self.base_mut();
        base.acked_features = acked & base.avail_features;
    }

    /// The driver set `DRIVER_OK`: from now on the device owns `queues` (one per
    /// [`queue_max_sizes`](Self::queue_max_sizes) entry, checked against `memory`).
    fn activate(&mut self, memory: Memory, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.base_mut().activate(memory, queues)?;
        self.activated();
        Ok(())
    }

    /// Whether [`activate`](Self::activate) succeeded and no reset came since.
    fn is_activated(&self) -> bool {
        self.base().is_active()
    }

    /// The driver reset the device: drop the queues and go back to the pre-activation state.
    fn reset(&mut self) {
        self.base_mut().reset();
        self.reset_backend();
    }

    /// The queues an activated device works on (empty before activation), for a snapshot.
    fn active_queues(&self) -> &[Queue] {
        self.base().active.as_ref().map_or(&[], |a| &a.queues[..])
    }

    /// One eventfd per queue; the guest's notification of queue `i` signals entry `i`.
    fn queue_events(&self) -> &[EventFd] {
        &self.base().queue_events
    }

    /// The device's interrupt line.
    fn interrupt(&self) -> &IrqTrigger {
        &self.base().irq
    }
}
