//! Drives the device from the VMM's event loop: the guest's queue notifications and the tap's
//! readiness.

use super::{Net, NAME, RX_QUEUE, TX_QUEUE};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use logging::Chain;
use std::os::unix::io::AsRawFd;

impl Net {
    fn report<T>(result: Result<T, super::NetError>) {
        if let Err(e) = result {
            log::error!("{NAME}: {}", Chain(&e));
        }
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.tap.as_raw_fd() {
            // Edge-triggered: remembered until a read would block.
            self.tap_readable = true;
            if self.base.is_active() {
                Self::report(self.process_rx());
            }
            return;
        }
        let Some(queue) = self.base.queue_notified(&events, NAME) else {
            return;
        };
        if !self.base.is_active() {
            return;
        }
        match queue {
            // New buffers: frames that waited for them can go.
            RX_QUEUE => Self::report(self.process_rx()),
            TX_QUEUE => Self::report(self.process_tx()),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.base.watch_queues(ops, NAME);
        // Edge-triggered, or a tap with frames and a guest without buffers would wake the
        // loop over and over.
        let tap = Events::new_raw(
            self.tap.as_raw_fd(),
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        if let Err(e) = ops.add(tap) {
            log::error!("{NAME}: cannot watch tap {}: {e}", self.tap.name());
        }
    }
}
