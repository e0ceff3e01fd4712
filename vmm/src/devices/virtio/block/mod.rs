//! virtio-blk (virtio spec 5.2): one request queue over a backing file, read with positional
//! I/O so that requests never share a file cursor.

mod disk;
mod request;
#[cfg(test)]
mod tests;

pub use disk::SECTOR_SIZE;
pub use request::{ChainError, RequestError, RequestType, Status, ID_BYTES};

use super::{device_type, ActivateError, IrqTrigger, Memory, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::error::Chain;
use disk::Disk;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::io;
use std::path::{Path, PathBuf};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The largest queue the driver may set up.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request: a full queue less the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Why a drive could not be created or its queue processed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    #[error("the device is not activated")]
    NotActivated,
    #[error("the queue is broken")]
    Queue(#[from] virtio_queue::Error),
    #[error("cannot signal the guest")]
    Interrupt(#[source] io::Error),
}

struct Active {
    mem: Memory,
    queue: Queue,
}

/// A virtio block device backed by a file (or a host block device).
pub struct Block {
    disk: Disk,
    id: [u8; ID_BYTES],
    avail_features: u64,
    acked_features: u64,
    queue_events: Vec<EventFd>,
    irq: IrqTrigger,
    active: Option<Active>,
}

impl Block {
    /// Opens `path` as a drive. `id` is what `GET_ID` returns, cut to [`ID_BYTES`] bytes.
    pub fn new<P: AsRef<Path>>(path: P, read_only: bool, id: &str) -> Result<Block, BlockError> {
        let path = path.as_ref();
        let disk = Disk::open(path, read_only).map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut avail_features =
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        Ok(Block {
            disk,
            id: id_bytes,
            avail_features,
            acked_features: 0,
            queue_events: vec![EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?],
            irq: IrqTrigger::new().map_err(BlockError::EventFd)?,
            active: None,
        })
    }

    /// The drive's size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// Handles every available request and returns how many were completed.
    ///
    /// Only the requests available when called are handled: the driver's notification of later
    /// ones calls again, and a guest that keeps adding requests cannot keep the host here.
    pub fn process_queue(&mut self) -> Result<usize, BlockError> {
        let Active { mem, queue } = self.active.as_mut().ok_or(BlockError::NotActivated)?;
        let chains: Vec<DescriptorChain<&Memory>> = queue.iter(&*mem)?.collect();
        let mut completed = 0;
        for chain in chains {
            let head = chain.head_index();
            let used_len = handle_chain(mem, chain, &mut self.disk, &self.id);
            if let Err(e) = queue.add_used(&*mem, head, used_len) {
                match e {
                    // The driver put a bogus head index in the available ring; there is no
                    // descriptor to return, so the request is dropped.
                    virtio_queue::Error::InvalidDescriptorIndex => {
                        log::warn!("virtio-blk: dropping request with invalid head index {head}");
                        continue;
                    }
                    e => return Err(e.into()),
                }
            }
            completed += 1;
        }
        if completed > 0 && queue.needs_notification(&*mem)? {
            self.irq
                .signal_used_queue()
                .map_err(BlockError::Interrupt)?;
        }
        Ok(completed)
    }

    fn config_bytes(&self) -> [u8; 16] {
        // struct virtio_blk_config up to seg_max: capacity (u64), size_max (u32), seg_max (u32).
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.disk.capacity().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config
    }
}

/// Carries out one request and returns the used length: the bytes written to the driver's
/// buffers, status included, or 0 for a chain with nowhere to put a status.
fn handle_chain(
    mem: &Memory,
    chain: DescriptorChain<&Memory>,
    disk: &mut Disk,
    id: &[u8; ID_BYTES],
) -> u32 {
    let head = chain.head_index();
    let parsed = match request::parse(mem, chain) {
        Ok(parsed) => parsed,
        Err(e) => {
            log::warn!("virtio-blk: dropping request {head}: {}", Chain(&e));
            return 0;
        }
    };
    let (status, written) = match parsed.request.and_then(|r| r.execute(mem, disk, id)) {
        Ok(written) => (Status::Ok, written),
        Err(e) => {
            // Unsupported types are routine (drivers probe); everything else is worth a note.
            if matches!(e, RequestError::Unsupported(_)) {
                log::debug!("virtio-blk: request {head}: {}", Chain(&e));
            } else {
                log::warn!("virtio-blk: request {head}: {}", Chain(&e));
            }
            (e.status(), 0)
        }
    };
    if let Err(e) = mem.write_obj(status as u8, parsed.status_addr) {
        log::warn!("virtio-blk: cannot write the status of request {head}: {e}");
        return 0;
    }
    written.saturating_add(1)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config_bytes();
        let Some(start) = usize::try_from(offset).ok().filter(|&o| o < config.len()) else {
            return;
        };
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }

    fn activate(&mut self, memory: Memory, mut queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        // The transport checks this too; the device must not trust it with guest addresses.
        if !queue.is_valid(&memory) {
            return Err(ActivateError::InvalidQueue(0));
        }
        self.active = Some(Active { mem: memory, queue });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    fn active_queues(&self) -> &[Queue] {
        self.active
            .as_ref()
            .map_or(&[], |a| std::slice::from_ref(&a.queue))
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &IrqTrigger {
        &self.irq
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            log::warn!("virtio-blk: unexpected event {:?}", events.event_set());
            return;
        }
        // A failed read only means a spurious wakeup; the queue is processed either way.
        let _ = self.queue_events[0].read();
        if self.active.is_none() {
            return;
        }
        if let Err(e) = self.process_queue() {
            log::error!("virtio-blk: {}", Chain(&e));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_events[0], EventSet::IN)) {
            log::error!("virtio-blk: cannot register the queue event: {e}");
        }
    }
}
