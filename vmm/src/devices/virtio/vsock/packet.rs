//! The checks a guest packet must pass before the backend looks at it, on top of the descriptor
//! parsing of `virtio_vsock::packet`, and an owned copy of the header that the connection code
//! works with (it outlives the guest buffer it came from).

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

/// The host's address; the only destination a guest packet may have.
pub const VSOCK_HOST_CID: u64 = 2;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// OP_SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// OP_SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// The largest payload of one packet, either way. Linux never sends more than 64 KiB in one
/// packet; the cap bounds the host's copy per guest packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// `PKT_HEADER_SIZE` (44 bytes) as the u32 the used ring counts in.
// 44 fits a u32.
#[allow(clippy::cast_possible_truncation)]
pub const PKT_HEADER_LEN: u32 = PKT_HEADER_SIZE as u32;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_packet(pkt: &VsockPacket<'_, ()>) -> Header {
        Header {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Writes every field into the packet's (guest) header buffer.
    pub fn write_to(&self, pkt: &mut VsockPacket<'_, ()>) {
        pkt.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }

    pub fn to_bytes(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; PKT_HEADER_SIZE]) -> Header {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The RST answering `self`, a packet the guest sent: addresses swapped so that the guest
    /// finds the socket it came from, and the same socket type, since Linux ignores a reset whose
    /// type differs from its socket's.
    pub fn rst_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: self.type_,
            op: OP_RST,
            ..Header::default()
        }
    }
}

/// Why a guest packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("malformed descriptor chain")]
    Chain(#[from] virtio_vsock::packet::Error),
    #[error("source cid {got} is not the guest's ({expected})")]
    SrcCid { got: u64, expected: u64 },
    #[error("destination cid {0} is not the host")]
    DstCid(u64),
    #[error("socket type {0} is not STREAM")]
    Type(u16),
    #[error("unknown operation {0}")]
    Op(u16),
}

impl PacketError {
    /// Whether the guest should get an RST for the packet: the header is trustworthy enough to
    /// address one, and the reset makes the guest socket fail fast instead of waiting for a
    /// reply that never comes. A spoofed source would send the reset to someone else, and a
    /// malformed chain has no header worth trusting.
    pub fn deserves_rst(&self) -> bool {
        matches!(
            self,
            PacketError::DstCid(_) | PacketError::Type(_) | PacketError::Op(_)
        )
    }
}

/// The connection-independent checks of a guest packet header.
pub fn check_header(hdr: &Header, guest_cid: u64) -> Result<(), PacketError> {
    if hdr.src_cid != guest_cid {
        return Err(PacketError::SrcCid {
            got: hdr.src_cid,
            expected: guest_cid,
        });
    }
    if hdr.dst_cid != VSOCK_HOST_CID {
        return Err(PacketError::DstCid(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(PacketError::Type(hdr.type_));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op) {
        return Err(PacketError::Op(hdr.op));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: VSOCK_HOST_CID,
            src_port: 1000,
            dst_port: 52,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            ..Header::default()
        }
    }

    #[test]
    fn header_bytes_round_trip() {
        let h = Header {
            len: 7,
            flags: 3,
            buf_alloc: 0x1234_5678,
            fwd_cnt: 0xdead_beef,
            ..good()
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn checks() {
        assert!(check_header(&good(), 3).is_ok());
        let e = check_header(&good(), 4).unwrap_err();
        assert!(matches!(e, PacketError::SrcCid { .. }) && !e.deserves_rst());
        let h = Header {
            dst_cid: 7,
            ..good()
        };
        assert!(matches!(check_header(&h, 3), Err(PacketError::DstCid(7))));
        let h = Header { type_: 2, ..good() };
        assert!(check_header(&h, 3).unwrap_err().deserves_rst());
        for op in [0, 8, 0xffff] {
            let h = Header { op, ..good() };
            assert!(matches!(check_header(&h, 3), Err(PacketError::Op(_))));
        }
    }

    #[test]
    fn rst_reply_swaps_addresses() {
        let r = good().rst_reply();
        assert_eq!((r.src_cid, r.dst_cid), (VSOCK_HOST_CID, 3));
        assert_eq!((r.src_port, r.dst_port), (52, 1000));
        assert_eq!((r.op, r.type_, r.len), (OP_RST, TYPE_STREAM, 0));
    }
}
