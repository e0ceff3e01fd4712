//! virtio-blk (virtio spec 5.2): one request queue over a backing file, read with positional
//! I/O so that requests never share a file cursor.

mod disk;
pub mod persist;
mod request;
#[cfg(test)]
mod tests;

pub use disk::SECTOR_SIZE;
pub use request::{ChainError, RequestError, RequestType, Status, ID_BYTES};

use super::{
    device_type, return_chain, Active, DeviceBase, Memory, VirtioDevice, VIRTIO_F_VERSION_1,
};
use disk::Disk;
use logging::Chain;
use std::io;
use std::path::{Path, PathBuf};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::Bytes;

/// The largest queue the driver may set up.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// How log lines name the device.
const NAME: &str = "virtio-blk";
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

/// A virtio block device backed by a file (or a host block device).
pub struct Block {
    base: DeviceBase,
    disk: Disk,
    id: [u8; ID_BYTES],
    /// What the drive was made from, which is what a snapshot keeps of it.
    made_from: persist::BlockState,
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
            base: DeviceBase::new(device_type::BLOCK, QUEUE_SIZES, avail_features)
                .map_err(BlockError::EventFd)?,
            disk,
            id: id_bytes,
            made_from: persist::BlockState {
                drive_id: id.to_owned(),
                path: path.to_owned(),
                read_only,
            },
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
        let Block { base, disk, id, .. } = self;
        let (Active { mem, queues }, irq) = base.active_mut().ok_or(BlockError::NotActivated)?;
        let [queue] = &mut queues[..] else {
            return Err(BlockError::NotActivated);
        };
        let chains: Vec<DescriptorChain<&Memory>> = queue.iter(&*mem)?.collect();
        let mut completed = 0;
        for chain in chains {
            let head = chain.head_index();
            let used_len = handle_chain(mem, chain, disk, id);
            completed += return_chain(queue, mem, head, used_len, "virtio-blk: dropping request")?;
        }
        if completed > 0 && queue.needs_notification(&*mem)? {
            irq.signal_used_queue().map_err(BlockError::Interrupt)?;
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
    let (status, written) = match parsed.request.and_then(|r| disk.execute(mem, &r, id)) {
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
    fn base(&self) -> &DeviceBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut DeviceBase {
        &mut self.base
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
}

super::one_queue_event_handler!(Block, NAME);
