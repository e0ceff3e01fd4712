//! Drives the device from the VMM's event loop: queue kicks, the listener, and readiness of
//! every host stream.

use super::muxer::FdOp;
use super::{Vsock, RX_QUEUE, TX_QUEUE};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use logging::Chain;
use std::os::unix::io::{AsRawFd, RawFd};

/// Host streams are edge-triggered: a stream with data the guest has no credit for would
/// otherwise wake the loop over and over. The connection remembers readiness until a read
/// would block instead.
fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Vsock {
    fn apply_fd_ops(&mut self, ops: &mut EventOps) {
        for op in self.muxer.take_fd_ops() {
            match op {
                FdOp::Add(fd) => {
                    if let Err(e) = ops.add(Events::new_raw(fd, stream_events())) {
                        log::error!("vsock: cannot watch host socket {fd}: {e}");
                    }
                }
                FdOp::Remove(stream) => {
                    if let Err(e) = ops.remove(Events::empty(&stream)) {
                        log::warn!("vsock: cannot unwatch host socket: {e}");
                    }
                    // Closed only now that epoll no longer refers to it.
                    drop(stream);
                }
            }
        }
    }

    fn queue_kick(&mut self, queue: usize) {
        if !self.base.is_active() {
            return;
        }
        let result = match queue {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            // The device uses event buffers only when it has an event; nothing to do now.
            _ => Ok(()),
        };
        if let Err(e) = result {
            log::error!("vsock: {}", Chain(&e));
        }
    }

    fn deliver(&mut self) {
        if self.base.is_active() {
            if let Err(e) = self.process_rx() {
                log::error!("vsock: {}", Chain(&e));
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd: RawFd = events.fd();
        let set = events.event_set();
        if self.base.queue_events.iter().any(|e| e.as_raw_fd() == fd) {
            if let Some(queue) = self.base.queue_notified(&events, "vsock") {
                self.queue_kick(queue);
            }
        } else if fd == self.muxer.listener_fd() {
            self.muxer.accept_clients();
            self.deliver();
        } else {
            let readable = set.intersects(
                EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
            );
            // A hung-up or failed stream is "writable" too: the write reports the error.
            let writable = set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR);
            self.muxer.handle_fd_event(fd, readable, writable);
            self.deliver();
        }
        self.apply_fd_ops(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.base.watch_queues(ops, "vsock");
        let listener = self.muxer.listener_fd();
        if let Err(e) = ops.add(Events::new_raw(listener, EventSet::IN)) {
            log::error!("vsock: cannot register the listener: {e}");
        }
        self.muxer.attach();
        self.apply_fd_ops(ops);
    }
}
