//! Placing one received frame into the guest's receive buffer chains: one chain per frame, or,
//! with `VIRTIO_NET_F_MRG_RXBUF`, as many chains as the frame needs, their count in the
//! header's `num_buffers`.

use super::frame::{set_num_buffers, RxBuffers};
use super::{NetError, NAME};
use crate::devices::virtio::Memory;
use virtio_queue::{Queue, QueueT};

/// What became of a frame.
pub enum Placed {
    /// It went to the guest, or was dropped; this many chains were used.
    Used(usize),
    /// The guest has too few buffers for it for now: it waits, and the chains it would go to
    /// stay available. This many unusable chains were returned meanwhile.
    Waiting(usize),
}

/// Places `frame` (header first) into the next available chains of `rxq`.
///
/// A chain the device cannot use (read-only, outside guest memory, no room for a header) is
/// returned empty, and the guest driver drops it as a runt. If one turns up among the chains
/// a frame is spread over, those go back empty too and the frame is dropped: the used ring then
/// holds no half frame. The chains are only used once the frame fits, so a frame waiting for
/// more buffers leaves none of them used.
pub fn place(
    mem: &Memory,
    rxq: &mut Queue,
    frame: &mut [u8],
    mergeable: bool,
    chains: &mut Vec<RxBuffers>,
) -> Result<Placed, NetError> {
    let mut start = rxq.next_avail();
    let mut returned = 0usize;
    let mut count = 0usize;
    let mut room = 0usize;
    while count == 0 || (mergeable && room < frame.len()) {
        let Some(chain) = rxq.pop_descriptor_chain(mem) else {
            rxq.set_next_avail(start);
            return Ok(Placed::Waiting(returned));
        };
        let head = chain.head_index();
        if chains.len() <= count {
            chains.push(RxBuffers::default());
        }
        match chains[count].load(mem, chain) {
            Ok(()) => {
                room = room.saturating_add(chains[count].room());
                count += 1;
                if count >= usize::from(rxq.size()) && room < frame.len() {
                    // The whole ring cannot hold it: waiting would stop receive for good.
                    log::warn!(
                        "{NAME}: dropping a {}-byte frame larger than all the guest's buffers",
                        frame.len()
                    );
                    for chain in &chains[..count] {
                        returned += use_chain(mem, rxq, chain.head(), 0)?;
                    }
                    return Ok(Placed::Used(returned));
                }
            }
            Err(e) => {
                log::warn!("{NAME}: unusable rx chain {head}: {e}");
                returned += use_chain(mem, rxq, head, 0)?;
                if count > 0 {
                    for chain in &chains[..count] {
                        returned += use_chain(mem, rxq, chain.head(), 0)?;
                    }
                    log::warn!("{NAME}: dropping a received frame with its buffers");
                    return Ok(Placed::Used(returned));
                }
                start = rxq.next_avail();
            }
        }
    }
    if room < frame.len() {
        // One chain (no MRG_RXBUF) too small for the frame: the driver posted less than it
        // said it could take.
        let e = super::ChainError::FrameTooLarge {
            frame: frame.len(),
            room,
        };
        log::warn!("{NAME}: dropping a received frame: {e}");
        returned += use_chain(mem, rxq, chains[0].head(), 0)?;
        return Ok(Placed::Used(returned));
    }
    // At most one chain per header's worth of bytes of a 64 KiB frame: fits a u16.
    set_num_buffers(frame, u16::try_from(count).unwrap_or(u16::MAX));
    let mut rest: &[u8] = frame;
    for chain in &chains[..count] {
        let (now, later) = rest.split_at(rest.len().min(chain.room()));
        let len = chain.write(mem, now).unwrap_or_else(|e| {
            // The ranges were checked when the chain was loaded.
            log::warn!("{NAME}: rx chain {}: {e}", chain.head());
            0
        });
        returned += use_chain(mem, rxq, chain.head(), len)?;
        rest = later;
    }
    Ok(Placed::Used(returned))
}

/// Puts `head` in the used ring with `len` bytes; returns 1, or 0 for a bogus head index
/// (which has no descriptor to return).
fn use_chain(mem: &Memory, rxq: &mut Queue, head: u16, len: u32) -> Result<usize, NetError> {
    let what = format!("{NAME}: rx chain");
    Ok(crate::devices::virtio::return_chain(
        rxq, mem, head, len, &what,
    )?)
}
