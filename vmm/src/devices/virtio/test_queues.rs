//! The guest driver's side of a device's virtio queues, shared by the device tests: guest memory
//! with the queues' rings at its start, buffers handed out above them, descriptor chains made
//! available as a driver makes them, and the used rings read back. A device under test gets the
//! queues ([`GuestQueues::queues`]) as its transport would hand them over at `DRIVER_OK`.

use super::Memory;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

// The descriptor flags are 1 and 2.
/// A descriptor the device writes.
#[allow(clippy::cast_possible_truncation)]
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// A descriptor followed by another in its chain.
#[allow(clippy::cast_possible_truncation)]
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// Where queue `n`'s rings start: `RINGS_START + n * RING_SPACE` (room for 256 entries).
const RINGS_START: u64 = 0x1000;
const RING_SPACE: u64 = 0x2000;
/// Where buffers are handed out from, above the rings of up to seven queues.
pub const BUF_START: u64 = 0x1_0000;

/// `size` bytes of guest memory from address 0.
pub fn memory(size: u64) -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), usize::try_from(size).unwrap())]).unwrap()
}

/// A driver's queues in guest memory, each `len` entries long.
pub struct GuestQueues<'a> {
    mem: &'a Memory,
    vqs: Vec<MockSplitQueue<'a, Memory>>,
    len: u16,
    /// Per queue: where the next descriptor goes.
    next_desc: Vec<u16>,
    /// Per queue: the used entries already taken by [`GuestQueues::take_used`].
    used_seen: Vec<u16>,
    next_buf: u64,
}

impl<'a> GuestQueues<'a> {
    pub fn new(mem: &'a Memory, count: usize, len: u16) -> GuestQueues<'a> {
        let vqs = (0..count)
            .map(|n| {
                let start = RINGS_START + RING_SPACE * u64::try_from(n).unwrap();
                MockSplitQueue::create(mem, GuestAddress(start), len)
            })
            .collect();
        GuestQueues {
            mem,
            vqs,
            len,
            next_desc: vec![0; count],
            used_seen: vec![0; count],
            next_buf: BUF_START,
        }
    }

    pub fn mem(&self) -> &'a Memory {
        self.mem
    }

    /// Queue `q`'s rings, for a test that programs a transport or breaks them on purpose.
    pub fn queue(&self, q: usize) -> &MockSplitQueue<'a, Memory> {
        &self.vqs[q]
    }

    /// Every queue as the driver set it up: what the transport hands the device.
    pub fn queues(&self) -> Vec<Queue> {
        self.vqs
            .iter()
            .map(|vq| vq.create_queue().unwrap())
            .collect()
    }

    /// `len` bytes for a buffer, 16-byte aligned; after the end of memory it starts over.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let end = self.mem.last_addr().0 + 1;
        if self.next_buf + len > end {
            self.next_buf = BUF_START;
        }
        let addr = self.next_buf;
        self.next_buf += (len + 15) & !15;
        addr
    }

    /// Makes `descs` (address, length, flags) one chain in queue `q`, `NEXT` set on all but the
    /// last, and makes it available; returns its head index.
    pub fn push_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = self.next_desc[q];
            self.next_desc[q] = (index + 1) % self.len;
            let last = i + 1 == descs.len();
            let flags = if last { flags & !NEXT } else { flags | NEXT };
            self.store(
                q,
                index,
                Descriptor::new(addr, len, flags, self.next_desc[q]),
            );
        }
        self.make_available(q, head);
        head
    }

    /// Puts `descs` in queue `q`'s table exactly as given (their `next` fields included, for
    /// chains that loop or point outside the table) and makes the first available; returns its
    /// index. `make` gets the index the first descriptor will have.
    pub fn push_raw(&mut self, q: usize, make: impl FnOnce(u16) -> Vec<Descriptor>) -> u16 {
        let head = self.next_desc[q];
        for descriptor in make(head) {
            let index = self.next_desc[q];
            self.next_desc[q] = (index + 1) % self.len;
            self.store(q, index, descriptor);
        }
        self.make_available(q, head);
        head
    }

    fn store(&self, q: usize, index: u16, descriptor: Descriptor) {
        self.vqs[q]
            .desc_table()
            .store(index, RawDescriptor::from(descriptor))
            .unwrap();
    }

    /// Puts `head` in queue `q`'s available ring, valid or not.
    pub fn make_available(&self, q: usize, head: u16) {
        let avail = self.vqs[q].avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.len))
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// How many chains the device has used in queue `q`.
    pub fn used_count(&self, q: usize) -> u16 {
        self.vqs[q].used().idx().load()
    }

    /// Queue `q`'s used entry `i`: (head, length written).
    pub fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let entry = self.vqs[q]
            .used()
            .ring()
            .ref_at(usize::from(i % self.len))
            .unwrap()
            .load();
        (entry.id(), entry.len())
    }

    /// Queue `q`'s used entries since the last call: (head, length written).
    pub fn take_used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let end = self.used_count(q);
        let mut taken = Vec::new();
        while self.used_seen[q] != end {
            let (head, len) = self.used(q, self.used_seen[q]);
            taken.push((u16::try_from(head).unwrap(), len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        taken
    }

    /// `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }
}
