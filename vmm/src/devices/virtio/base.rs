//! What every virtio device here holds the same way, so that each device module has only its
//! own logic: the features it offers and the driver accepted, one eventfd per queue, its
//! interrupt, and, between activation and reset, guest memory and the queues.

use super::{ActivateError, IrqTrigger, Memory};
use event_manager::{EventOps, EventSet, Events};
use std::io;
use std::os::unix::io::AsRawFd;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What an activated device works on.
pub struct Active {
    pub mem: Memory,
    /// One per entry of the device's queue sizes, in order.
    pub queues: Vec<Queue>,
}

pub struct DeviceBase {
    pub(super) device_type: u32,
    pub(super) queue_max_sizes: &'static [u16],
    pub(super) avail_features: u64,
    pub(super) acked_features: u64,
    pub(super) queue_events: Vec<EventFd>,
    pub(super) irq: IrqTrigger,
    pub(super) active: Option<Active>,
}

impl DeviceBase {
    /// A device of `device_type` with one queue per entry of `queue_max_sizes`, offering
    /// `avail_features`.
    pub fn new(
        device_type: u32,
        queue_max_sizes: &'static [u16],
        avail_features: u64,
    ) -> io::Result<DeviceBase> {
        let queue_events = queue_max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<_>>()?;
        Ok(DeviceBase {
            device_type,
            queue_max_sizes,
            avail_features,
            acked_features: 0,
            queue_events,
            irq: IrqTrigger::new()?,
            active: None,
        })
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The memory and queues of an activated device, with the interrupt to signal when it
    /// used buffers; `None` before activation.
    pub fn active_mut(&mut self) -> Option<(&mut Active, &IrqTrigger)> {
        self.active.as_mut().map(|active| (active, &self.irq))
    }

    /// Takes the queues the transport hands over, after checking them: the transport checks
    /// too, but a device must not trust anyone else with guest addresses.
    pub(super) fn activate(
        &mut self,
        memory: Memory,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != self.queue_max_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_max_sizes.len(),
                got: queues.len(),
            });
        }
        if let Some(index) = queues.iter().position(|q| !q.is_valid(&memory)) {
            return Err(ActivateError::InvalidQueue(index));
        }
        self.active = Some(Active {
            mem: memory,
            queues,
        });
        Ok(())
    }

    pub(super) fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    /// Registers every queue's eventfd with the event loop; `name` labels the log line of a
    /// failure.
    pub fn watch_queues(&self, ops: &mut EventOps, name: &str) {
        for (queue, event) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::new(event, EventSet::IN)) {
                log::error!("{name}: cannot register queue {queue} event: {e}");
            }
        }
    }

    /// Which queue `events` notified, its eventfd drained; `None` when they are about another
    /// file (or were not readable, which is logged).
    pub fn queue_notified(&self, events: &Events, name: &str) -> Option<usize> {
        let queue = self
            .queue_events
            .iter()
            .position(|e| e.as_raw_fd() == events.fd())?;
        if !events.event_set().contains(EventSet::IN) {
            log::warn!("{name}: unexpected event {:?}", events.event_set());
            return None;
        }
        // A failed read only means a spurious wakeup; the queue is processed either way.
        let _ = self.queue_events[queue].read();
        log::trace!("{name}: queue {queue} notified");
        Some(queue)
    }
}
