//! Frames between descriptor chains and the host: gathering what the guest sends out of a tx
//! chain, and checking an rx chain before a received frame is scattered into it. Every
//! descriptor is checked (direction, bounds, total length) before a byte moves, so a hostile
//! chain costs the guest its frame and nothing else.

use crate::devices::virtio::Memory;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// `virtio_net_hdr_v1` (virtio spec 5.1.6): flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers. Every frame each way starts with one; a modern device always
/// uses this layout.
pub const VNET_HDR_LEN: usize = 12;
/// Where `num_buffers` (little endian) sits in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame either way: a 64 KiB TCP segment (the offloads) with its Ethernet and
/// VLAN headers.
pub const MAX_FRAME_LEN: usize = 65_536 + 18;
/// The largest header-and-frame, and so the size of the device's bounce buffer.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a device-writable descriptor in a transmit chain")]
    WriteOnlyInTx,
    #[error("a device-readable descriptor in a receive chain")]
    ReadOnlyInRx,
    #[error("the chain is cut short (descriptor loop, bad next index or unreadable descriptor)")]
    Truncated,
    #[error("a buffer lies outside guest memory")]
    OutsideMemory,
    #[error("{len} bytes is less than the {VNET_HDR_LEN}-byte virtio-net header")]
    TooShort { len: usize },
    #[error("the chain holds more than the {MAX_BUFFER_LEN} bytes of the largest frame")]
    TooLong,
    #[error("a {frame}-byte frame does not fit the guest's {room}-byte buffer")]
    FrameTooLarge { frame: usize, room: usize },
}

/// The descriptors of `chain`, in order. The chain's iterator stops after queue-size
/// descriptors and at any it cannot read, so this is bounded however the guest links them; a
/// chain that stops on a descriptor that still says "next" was cut short.
fn descriptors(chain: DescriptorChain<&Memory>) -> Result<Vec<Descriptor>, ChainError> {
    let descs: Vec<Descriptor> = chain.collect();
    if descs.last().is_some_and(Descriptor::has_next) {
        return Err(ChainError::Truncated);
    }
    Ok(descs)
}

/// Copies the header and frame of a transmit chain into `buf` (at least [`MAX_BUFFER_LEN`]
/// bytes) and returns their length.
pub fn gather_tx(
    mem: &Memory,
    chain: DescriptorChain<&Memory>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut len = 0usize;
    for desc in descriptors(chain)? {
        if desc.is_write_only() {
            return Err(ChainError::WriteOnlyInTx);
        }
        let n = desc.len() as usize;
        let end = len
            .checked_add(n)
            .filter(|&end| end <= MAX_BUFFER_LEN && end <= buf.len())
            .ok_or(ChainError::TooLong)?;
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|_| ChainError::OutsideMemory)?;
        len = end;
    }
    if len < VNET_HDR_LEN {
        return Err(ChainError::TooShort { len });
    }
    Ok(len)
}

/// Sets the header's `num_buffers`: how many buffer chains the frame was spread over (1
/// unless the driver accepted `VIRTIO_NET_F_MRG_RXBUF`).
pub fn set_num_buffers(frame: &mut [u8], count: u16) {
    if let Some(field) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
        field.copy_from_slice(&count.to_le_bytes());
    }
}

/// The device-writable buffers of one receive chain, checked: all writable, all inside guest
/// memory, room for at least a header.
#[derive(Debug, Default)]
pub struct RxBuffers {
    head: u16,
    segments: Vec<(GuestAddress, u32)>,
    room: usize,
}

impl RxBuffers {
    /// Takes `chain`'s buffers, reusing this value's allocation.
    pub fn load(
        &mut self,
        mem: &Memory,
        chain: DescriptorChain<&Memory>,
    ) -> Result<(), ChainError> {
        self.head = chain.head_index();
        self.segments.clear();
        self.room = 0;
        for desc in descriptors(chain)? {
            if !desc.is_write_only() {
                return Err(ChainError::ReadOnlyInRx);
            }
            if !mem.check_range(desc.addr(), desc.len() as usize) {
                return Err(ChainError::OutsideMemory);
            }
            // At most queue-size descriptors of at most 4 GiB each: no overflow in a usize.
            self.room = self.room.saturating_add(desc.len() as usize);
            self.segments.push((desc.addr(), desc.len()));
        }
        if self.room < VNET_HDR_LEN {
            return Err(ChainError::TooShort { len: self.room });
        }
        Ok(())
    }

    /// The chain's head index, for the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// How many bytes the chain holds.
    pub fn room(&self) -> usize {
        self.room
    }

    /// Writes `bytes` (at most [`Self::room`]) from the start of the chain; returns the length
    /// for the used ring.
    pub fn write(&self, mem: &Memory, bytes: &[u8]) -> Result<u32, ChainError> {
        if bytes.len() > self.room {
            return Err(ChainError::FrameTooLarge {
                frame: bytes.len(),
                room: self.room,
            });
        }
        let mut rest = bytes;
        for &(addr, len) in &self.segments {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            let (now, later) = rest.split_at(n);
            mem.write_slice(now, addr)
                .map_err(|_| ChainError::OutsideMemory)?;
            rest = later;
        }
        // At most MAX_BUFFER_LEN bytes.
        u32::try_from(bytes.len()).map_err(|_| ChainError::TooLong)
    }
}
