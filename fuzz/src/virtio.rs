//! A hostile virtio driver: it negotiates through the device's real MMIO transport, lays out the
//! queues where the fuzz input says, fills guest memory with the input's bytes, and notifies the
//! device; the steps that follow rewrite memory, poke registers and notify again.

use arbitrary::Arbitrary;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::mmio::{status, MmioTransport};
use vmm::devices::virtio::{Memory, VirtioDevice};

/// Guest memory: one region at 0. Queue and buffer addresses are drawn from twice this, so
/// about half of what the fuzzer picks lies outside memory.
pub const MEM_SIZE: usize = 64 * 1024;
const ADDRESS_MASK: u32 = (MEM_SIZE as u32) * 2 - 1;

/// Where the driver puts one queue.
#[derive(Arbitrary, Debug)]
pub struct QueueLayout {
    pub size: u16,
    pub desc_table: u32,
    pub avail_ring: u32,
    pub used_ring: u32,
}

/// What the driver does after `DRIVER_OK`.
#[derive(Arbitrary, Debug)]
pub enum Step {
    /// Overwrites guest memory (descriptors, rings, buffers).
    Write { addr: u32, bytes: Vec<u8> },
    /// Notifies queue `n` (the device processes it, as its event loop would).
    Notify(u8),
    /// Writes a transport register (a reset, a late feature write, a queue register...).
    Register { offset: u8, value: u32 },
    /// Reads a transport or configuration register.
    Read { offset: u16, len: u8 },
    /// The device's host side runs (vsock: host sockets; others: nothing).
    Poll,
}

#[derive(Arbitrary, Debug)]
pub struct Script {
    pub features: u64,
    pub queues: Vec<QueueLayout>,
    /// Guest memory at start, from address 0.
    pub memory: Vec<u8>,
    pub steps: Vec<Step>,
}

/// How a target hands a notified queue to its device.
pub trait Driven: VirtioDevice + 'static {
    /// Processes queue `queue` after a notification; returns how many requests completed,
    /// when the device counts them.
    fn notified(&mut self, queue: usize) -> Option<usize>;

    /// The device's host side runs.
    fn poll(&mut self) {}
}

/// Runs `script` against `device`. Panics (the fuzzer's finding) only on a broken invariant.
pub fn run<D: Driven>(device: D, script: &Script) {
    let memory = Memory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    write_memory(&memory, 0, &script.memory);
    let device = Arc::new(Mutex::new(device));
    let shared: Arc<Mutex<dyn VirtioDevice>> = device.clone();
    let mut transport = MmioTransport::new(memory.clone(), shared);

    set_status(&mut transport, status::ACKNOWLEDGE | status::DRIVER);
    for word in 0..2u32 {
        register(&mut transport, 0x24, word);
        let value = (script.features >> (32 * word)) as u32;
        register(&mut transport, 0x20, value);
    }
    set_status(
        &mut transport,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for (index, layout) in script.queues.iter().enumerate().take(4) {
        register(&mut transport, 0x30, index as u32);
        register(&mut transport, 0x38, u32::from(layout.size));
        register(&mut transport, 0x80, layout.desc_table & ADDRESS_MASK);
        register(&mut transport, 0x84, 0);
        register(&mut transport, 0x90, layout.avail_ring & ADDRESS_MASK);
        register(&mut transport, 0x94, 0);
        register(&mut transport, 0xa0, layout.used_ring & ADDRESS_MASK);
        register(&mut transport, 0xa4, 0);
        register(&mut transport, 0x44, 1);
    }
    set_status(
        &mut transport,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );

    let max_sizes: Vec<u16> = lock(&device).queue_max_sizes().to_vec();
    for step in script.steps.iter().take(64) {
        match step {
            Step::Write { addr, bytes } => write_memory(&memory, *addr & ADDRESS_MASK, bytes),
            Step::Notify(queue) => {
                let queue = usize::from(*queue) % max_sizes.len().max(1);
                if let Some(completed) = lock(&device).notified(queue) {
                    // One notification handles what was available then: at most a queue's worth.
                    assert!(
                        completed <= usize::from(max_sizes[queue]),
                        "{completed} requests completed on a queue of {}",
                        max_sizes[queue]
                    );
                }
            }
            Step::Register { offset, value } => {
                register(&mut transport, u64::from(*offset) & !3, *value)
            }
            Step::Read { offset, len } => {
                let mut data = vec![0u8; usize::from(*len % 9)];
                transport.read(u64::from(*offset & 0x1ff), &mut data);
            }
            Step::Poll => lock(&device).poll(),
        }
    }
}

fn lock<D>(device: &Mutex<D>) -> std::sync::MutexGuard<'_, D> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(transport: &mut MmioTransport, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

fn set_status(transport: &mut MmioTransport, value: u32) {
    register(transport, 0x70, value);
}

/// Writes what fits of `bytes` at `addr`; the rest falls outside guest memory, as it would for
/// a guest.
fn write_memory(memory: &Memory, addr: u32, bytes: &[u8]) {
    let start = (addr as usize).min(MEM_SIZE);
    let len = bytes.len().min(MEM_SIZE - start);
    memory
        .write_slice(&bytes[..len], GuestAddress(start as u64))
        .expect("in bounds");
}

impl Driven for vmm::devices::virtio::rng::Rng {
    fn notified(&mut self, _queue: usize) -> Option<usize> {
        self.process_queue().ok()
    }
}

impl Driven for vmm::devices::virtio::block::Block {
    fn notified(&mut self, _queue: usize) -> Option<usize> {
        self.process_queue().ok()
    }
}

impl Driven for vmm::devices::virtio::vsock::Vsock {
    fn notified(&mut self, queue: usize) -> Option<usize> {
        use vmm::devices::virtio::vsock::{RX_QUEUE, TX_QUEUE};
        let _ = match queue {
            TX_QUEUE => self.process_tx(),
            RX_QUEUE => self.process_rx(),
            // The event queue: the driver gave it buffers; nothing to do until a reset.
            _ => Ok(()),
        };
        None
    }

    fn poll(&mut self) {
        crate::vsock_host().serve();
        self.poll_backend();
    }
}
