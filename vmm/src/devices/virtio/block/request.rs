//! Parsing one virtio-blk request (virtio spec 5.2.6); the drive carries it out
//! ([`super::disk::Disk::execute`]).
//!
//! A request is a header descriptor (type, reserved, sector: 16 bytes, device-readable), data
//! descriptors, and a last descriptor holding the device-writable status byte. Header and
//! status must be descriptors of their own, as every Linux driver lays them out.

use crate::devices::virtio::Memory;
use std::io;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

const HEADER_BYTES: u32 = 16;
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// The status byte the driver reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
// The spec's status codes are 0, 1 and 2.
#[allow(clippy::cast_possible_truncation)]
pub enum Status {
    Ok = VIRTIO_BLK_S_OK as u8,
    IoErr = VIRTIO_BLK_S_IOERR as u8,
    Unsupp = VIRTIO_BLK_S_UNSUPP as u8,
}

/// A chain the device cannot answer, for want of a place to put the status.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the chain has no readable descriptor")]
    Empty,
    #[error("the chain is cut short (descriptor loop, bad next index or unreadable descriptor)")]
    Truncated,
    #[error("the last descriptor is not a device-writable status byte")]
    BadStatus,
}

/// Why a request failed; the driver sees `IOERR` (or `UNSUPP`).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the request has no header descriptor")]
    MissingHeader,
    #[error("the header descriptor is device-writable or shorter than {HEADER_BYTES} bytes")]
    BadHeader,
    #[error("a data descriptor has the wrong direction for the request")]
    DataDirection,
    #[error("a data buffer lies outside guest memory")]
    DataOutsideMemory,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("write to a read-only drive")]
    ReadOnly,
    #[error("{len} bytes at sector {sector} run past the end of the drive")]
    OutOfRange { sector: u64, len: u64 },
    #[error("the backing file failed")]
    Io(#[source] io::Error),
    #[error("guest memory")]
    Memory(#[source] GuestMemoryError),
}

impl RequestError {
    pub fn status(&self) -> Status {
        match self {
            RequestError::Unsupported(_) => Status::Unsupp,
            _ => Status::IoErr,
        }
    }
}

pub struct Request {
    pub request_type: RequestType,
    pub sector: u64,
    /// The data buffers, in chain order: where in guest memory and how many bytes.
    pub data: Vec<(GuestAddress, u32)>,
    /// Their total length.
    pub data_len: u64,
}

/// A chain split into its request (or why it is malformed) and where its status goes.
pub struct Parsed {
    pub status_addr: GuestAddress,
    pub request: Result<Request, RequestError>,
}

pub fn parse(mem: &Memory, chain: DescriptorChain<&Memory>) -> Result<Parsed, ChainError> {
    // The iterator stops after queue-size descriptors and at any unreadable one, so this is
    // bounded however the guest links its descriptors.
    let descs: Vec<Descriptor> = chain.collect();
    let (status, rest) = descs.split_last().ok_or(ChainError::Empty)?;
    if status.has_next() {
        return Err(ChainError::Truncated);
    }
    if !status.is_write_only() || status.len() == 0 {
        return Err(ChainError::BadStatus);
    }
    // The status byte is the last byte of its descriptor.
    let status_addr = status
        .addr()
        .0
        .checked_add(u64::from(status.len()) - 1)
        .map(GuestAddress)
        .filter(|a| mem.address_in_range(*a))
        .ok_or(ChainError::BadStatus)?;
    Ok(Parsed {
        status_addr,
        request: parse_request(mem, rest),
    })
}

fn parse_request(mem: &Memory, descs: &[Descriptor]) -> Result<Request, RequestError> {
    let (header, data) = descs.split_first().ok_or(RequestError::MissingHeader)?;
    if header.is_write_only() || header.len() < HEADER_BYTES {
        return Err(RequestError::BadHeader);
    }
    let mut raw = [0u8; HEADER_BYTES as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(RequestError::Memory)?;
    let (type_bytes, rest) = raw.split_at(4);
    let (_reserved, sector_bytes) = rest.split_at(4);
    let request_type = RequestType::from(u32::from_le_bytes(
        type_bytes.try_into().map_err(|_| RequestError::BadHeader)?,
    ));
    let sector = u64::from_le_bytes(
        sector_bytes
            .try_into()
            .map_err(|_| RequestError::BadHeader)?,
    );

    let writes_guest = match request_type {
        RequestType::In | RequestType::GetId => true,
        RequestType::Out => false,
        // Neither carries data the device looks at.
        RequestType::Flush | RequestType::Unsupported(_) => {
            return Ok(Request {
                request_type,
                sector,
                data: Vec::new(),
                data_len: 0,
            })
        }
    };
    let mut data_len: u64 = 0;
    let mut segments = Vec::with_capacity(data.len());
    for desc in data {
        if desc.is_write_only() != writes_guest {
            return Err(RequestError::DataDirection);
        }
        // Checked up front so that a bad buffer fails the request before any byte moves.
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(RequestError::DataOutsideMemory);
        }
        data_len += u64::from(desc.len());
        segments.push((desc.addr(), desc.len()));
    }
    Ok(Request {
        request_type,
        sector,
        data: segments,
        data_len,
    })
}
