//! virtio-rng (virtio spec 5.4): one queue of device-writable buffers the device fills with
//! host entropy from `getrandom(2)`.

use super::{
    device_type, return_chain, Active, DeviceBase, Memory, VirtioDevice, VIRTIO_F_VERSION_1,
};
use logging::Chain;
use std::io;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// The largest queue the driver may set up.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// How log lines name the device.
const NAME: &str = "virtio-rng";
/// The most bytes one request receives, however large its buffers: the driver asks again for
/// more, and the cap keeps the host's work per guest request bounded.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;
/// Entropy is drawn in chunks of this size so that the host buffer stays small.
const CHUNK: u32 = 4096;

/// Why the entropy queue could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("the device is not activated")]
    NotActivated,
    #[error("the queue is broken")]
    Queue(#[from] virtio_queue::Error),
    #[error("the host's entropy source failed")]
    Entropy(#[source] io::Error),
    #[error("cannot signal the guest")]
    Interrupt(#[source] io::Error),
}

/// The virtio entropy device.
pub struct Rng {
    base: DeviceBase,
}

impl Rng {
    pub fn new() -> io::Result<Rng> {
        Ok(Rng {
            base: DeviceBase::new(device_type::RNG, QUEUE_SIZES, VIRTIO_F_VERSION_1)?,
        })
    }

    /// Fills every available buffer and returns how many requests were completed.
    ///
    /// Only the requests available when called are handled: the driver's notification of later
    /// ones calls again, and a guest that keeps adding buffers cannot keep the host here.
    pub fn process_queue(&mut self) -> Result<usize, RngError> {
        let (Active { mem, queues }, irq) = self.base.active_mut().ok_or(RngError::NotActivated)?;
        let [queue] = &mut queues[..] else {
            return Err(RngError::NotActivated);
        };
        let chains: Vec<DescriptorChain<&Memory>> = queue.iter(&*mem)?.collect();
        let mut completed = 0;
        let mut entropy_error = None;
        for chain in chains {
            let head = chain.head_index();
            let written = match fill_chain(mem, chain) {
                Ok(written) => written,
                Err((written, e)) => {
                    log::error!("virtio-rng: {}", Chain(&e));
                    entropy_error.get_or_insert(e);
                    written
                }
            };
            completed += return_chain(queue, mem, head, written, "virtio-rng: dropping request")?;
        }
        if completed > 0 && queue.needs_notification(&*mem)? {
            irq.signal_used_queue().map_err(RngError::Interrupt)?;
        }
        match entropy_error {
            Some(e) => Err(RngError::Entropy(e)),
            None => Ok(completed),
        }
    }
}

/// Fills the chain's device-writable buffers, up to [`MAX_REQUEST_BYTES`], and returns how many
/// bytes were written. Buffers outside guest memory end the request early: the driver gets what
/// was written so far. An entropy failure also returns the count written so far.
fn fill_chain(mem: &Memory, chain: DescriptorChain<&Memory>) -> Result<u32, (u32, io::Error)> {
    let mut buf = [0u8; CHUNK as usize];
    let mut written: u32 = 0;
    for desc in chain.writable() {
        let mut offset: u32 = 0;
        while offset < desc.len() && written < MAX_REQUEST_BYTES {
            let n = (desc.len() - offset)
                .min(MAX_REQUEST_BYTES - written)
                .min(CHUNK);
            let chunk = &mut buf[..n as usize];
            getrandom(chunk).map_err(|e| (written, e))?;
            let addr = desc
                .addr()
                .checked_add(u64::from(offset))
                .unwrap_or(GuestAddress(u64::MAX));
            if let Err(e) = mem.write_slice(chunk, addr) {
                log::warn!(
                    "virtio-rng: buffer at {:#x} not in guest memory: {e}",
                    addr.0
                );
                return Ok(written);
            }
            offset += n;
            written += n;
        }
        if written >= MAX_REQUEST_BYTES {
            break;
        }
    }
    Ok(written)
}

/// Fills `buf` from the kernel's entropy pool (urandom semantics: never blocks once the pool
/// is initialised at boot).
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we own
        // mutably for the duration of the call.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        // Negative: failed, and errno says why.
        let Ok(n) = usize::try_from(ret) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        };
        filled += n;
    }
    Ok(())
}

// An entropy device is made from nothing, so a snapshot keeps nothing of it but its transport.
super::persist_as_made!(Rng, (), io::Error, |_: &Rng| (), |(): &()| Rng::new());

impl VirtioDevice for Rng {
    fn base(&self) -> &DeviceBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut DeviceBase {
        &mut self.base
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
}

super::one_queue_event_handler!(Rng, NAME);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_queues::{GuestQueues, NEXT, WRITE};
    use crate::devices::virtio::ActivateError;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    const MEM_SIZE: u64 = 0x10_0000;

    fn memory() -> Memory {
        crate::devices::virtio::test_queues::memory(MEM_SIZE)
    }

    fn activated(guest: &GuestQueues) -> Rng {
        let mut rng = Rng::new().unwrap();
        rng.activate(guest.mem().clone(), guest.queues()).unwrap();
        rng
    }

    #[test]
    fn fills_buffers_with_distinct_entropy() {
        let mem = memory();
        let mut guest = GuestQueues::new(&mem, 1, 16);
        guest.push_chain(0, &[(0x1_0000, 64, WRITE)]);
        guest.push_chain(0, &[(0x2_0000, 64, WRITE), (0x2_0040, 32, WRITE)]);
        let mut rng = activated(&guest);
        assert_eq!(rng.process_queue().unwrap(), 2);
        assert_eq!(guest.used_count(0), 2);
        assert_eq!(guest.used(0, 0), (0, 64));
        assert_eq!(guest.used(0, 1), (1, 96));
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x1_0000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x2_0000)).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 64]);
        assert_eq!(rng.interrupt().event().read().unwrap(), 1);
        assert_ne!(
            rng.interrupt().status() & crate::devices::virtio::INTERRUPT_USED_RING,
            0
        );
    }

    #[test]
    fn fills_only_writable_descriptors_of_a_chain() {
        let mem = memory();
        let mut guest = GuestQueues::new(&mem, 1, 16);
        mem.write_slice(&[0xaa; 16], GuestAddress(0x1_0000))
            .unwrap();
        guest.push_chain(0, &[(0x1_0000, 16, 0), (0x2_0000, 100, WRITE)]);
        let mut rng = activated(&guest);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(guest.used(0, 0), (0, 100));
        let mut ro = [0u8; 16];
        mem.read_slice(&mut ro, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(ro, [0xaa; 16]);
    }

    #[test]
    fn caps_request_size() {
        let mem = memory();
        let mut guest = GuestQueues::new(&mem, 1, 16);
        guest.push_chain(0, &[(0x1_0000, 0x8_0000, WRITE)]);
        let mut rng = activated(&guest);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(guest.used(0, 0), (0, MAX_REQUEST_BYTES));
    }

    #[test]
    fn hostile_chains_do_not_break_the_device() {
        let mem = memory();
        let mut guest = GuestQueues::new(&mem, 1, 16);
        // Entirely outside guest memory.
        guest.push_chain(0, &[(MEM_SIZE + 0x1000, 64, WRITE)]);
        // Straddles the end of guest memory: the part inside is filled.
        guest.push_chain(0, &[(MEM_SIZE - u64::from(CHUNK), 2 * CHUNK, WRITE)]);
        // Wraps the address space.
        guest.push_chain(0, &[(u64::MAX - 8, 64, WRITE)]);
        // A loop: descriptor 3 points at itself.
        guest.push_raw(0, |head| {
            vec![SplitDescriptor::new(0x1_0000, 8, WRITE | NEXT, head)]
        });
        // Read-only only: nothing to fill.
        guest.push_chain(0, &[(0x2_0000, 64, 0)]);
        // A following good request.
        guest.push_chain(0, &[(0x3_0000, 32, WRITE)]);
        let mut rng = activated(&guest);
        assert_eq!(rng.process_queue().unwrap(), 6);
        assert_eq!(guest.used(0, 0), (0, 0));
        assert_eq!(guest.used(0, 1), (1, CHUNK));
        assert_eq!(guest.used(0, 2), (2, 0));
        // The loop is cut after queue-size descriptors.
        assert_eq!(guest.used(0, 3), (3, 8 * 16));
        assert_eq!(guest.used(0, 4), (4, 0));
        assert_eq!(guest.used(0, 5), (5, 32));
    }

    #[test]
    fn bogus_head_index_is_dropped() {
        let mem = memory();
        let mut guest = GuestQueues::new(&mem, 1, 16);
        // An available entry past the descriptor table.
        guest.make_available(0, 1000);
        guest.push_chain(0, &[(0x2_0000, 8, WRITE)]);
        let mut rng = activated(&guest);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(guest.used(0, 0), (0, 8));
    }

    #[test]
    fn broken_queue_is_a_typed_error() {
        let mem = memory();
        let guest = GuestQueues::new(&mem, 1, 16);
        let broken = || {
            let mut queue: Queue = guest.queue(0).create_queue().unwrap();
            queue.set_avail_ring_address(Some(0xffff_0000), Some(0));
            queue
        };
        let mut rng = Rng::new().unwrap();
        assert!(matches!(
            rng.activate(mem.clone(), vec![broken()]),
            Err(ActivateError::InvalidQueue(0))
        ));
        assert!(matches!(rng.process_queue(), Err(RngError::NotActivated)));
        // Bypass activation's check to see the processing path cope with it too.
        rng.base.active = Some(Active {
            mem: mem.clone(),
            queues: vec![broken()],
        });
        assert!(matches!(rng.process_queue(), Err(RngError::Queue(_))));

        let mut not_ready: Queue = guest.queue(0).create_queue().unwrap();
        not_ready.set_ready(false);
        rng.base.active = Some(Active {
            mem: mem.clone(),
            queues: vec![not_ready],
        });
        assert!(matches!(rng.process_queue(), Err(RngError::Queue(_))));
    }

    #[test]
    fn activation_and_reset() {
        let mem = memory();
        let guest = GuestQueues::new(&mem, 1, 16);
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), device_type::RNG);
        assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
        assert!(matches!(
            rng.activate(mem.clone(), vec![]),
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 0
            })
        ));
        rng.activate(mem.clone(), vec![guest.queue(0).create_queue().unwrap()])
            .unwrap();
        assert!(rng.is_activated());
        rng.reset();
        assert!(!rng.is_activated());
        let mut cfg = [0xffu8; 8];
        rng.read_config(0, &mut cfg);
        assert_eq!(cfg, [0u8; 8]);
    }

    #[test]
    fn event_loop_processes_kicks() {
        use event_manager::{EventManager, SubscriberOps};
        use std::sync::{Arc, Mutex};
        let mem = memory();
        let mut guest = GuestQueues::new(&mem, 1, 16);
        guest.push_chain(0, &[(0x1_0000, 16, WRITE)]);
        let rng = Arc::new(Mutex::new(activated(&guest)));
        let mut manager = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
        manager.add_subscriber(rng.clone());
        rng.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(guest.used_count(0), 1);
        assert_eq!(guest.used(0, 0), (0, 16));
    }
}
