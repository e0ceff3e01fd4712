//! The backing file of a drive, the copies between it and guest memory, and the requests
//! ([`super::request`]) carried out on it.

use super::request::{Request, RequestError, RequestType, ID_BYTES};
use crate::devices::virtio::Memory;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vm_memory::{Address, Bytes, GuestAddress};

/// Bytes in a virtio-blk sector, whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the bounce buffer between the file and guest memory: large enough for a typical
/// request in one system call, small enough to allocate once per drive.
pub const BOUNCE_BYTES: u32 = 64 * 1024;

/// Which way [`Disk::copy`] moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the file to guest memory (a read request).
    ToGuest,
    /// From guest memory to the file (a write request).
    FromGuest,
}

pub struct Disk {
    file: File,
    read_only: bool,
    /// In sectors; a partial trailing sector of the file is not exposed.
    capacity: u64,
    bounce: Vec<u8>,
}

impl Disk {
    pub fn open(path: &Path, read_only: bool) -> io::Result<Disk> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        // Seeking rather than metadata: a block device reports its size this way only.
        let bytes = file.seek(SeekFrom::End(0))?;
        if bytes % SECTOR_SIZE != 0 {
            log::warn!(
                "virtio-blk: {} is {bytes} bytes, not a whole number of sectors; the tail is hidden",
                path.display()
            );
        }
        Ok(Disk {
            file,
            read_only,
            capacity: bytes / SECTOR_SIZE,
            bounce: vec![0; BOUNCE_BYTES as usize],
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The byte offset of `sector`, if `len` bytes from there fit on the drive.
    pub fn check_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        let offset = sector.checked_mul(SECTOR_SIZE);
        let end = offset.and_then(|o| o.checked_add(len));
        match (offset, end) {
            (Some(offset), Some(end)) if end <= self.capacity * SECTOR_SIZE => Ok(offset),
            _ => Err(RequestError::OutOfRange { sector, len }),
        }
    }

    /// Copies `len` bytes between file offset `offset` and guest memory at `addr`, the way
    /// `direction` says, through the bounce buffer a buffer's worth at a time.
    pub fn copy(
        &mut self,
        mem: &Memory,
        direction: Direction,
        offset: u64,
        addr: GuestAddress,
        len: u32,
    ) -> Result<(), RequestError> {
        if direction == Direction::FromGuest && self.read_only {
            return Err(RequestError::ReadOnly);
        }
        let mut done: u32 = 0;
        while done < len {
            let n = (len - done).min(BOUNCE_BYTES);
            let chunk = &mut self.bounce[..n as usize];
            let at = offset + u64::from(done);
            let guest = addr
                .checked_add(u64::from(done))
                .ok_or(RequestError::DataOutsideMemory)?;
            match direction {
                Direction::ToGuest => {
                    self.file
                        .read_exact_at(chunk, at)
                        .map_err(RequestError::Io)?;
                    mem.write_slice(chunk, guest)
                        .map_err(RequestError::Memory)?;
                }
                Direction::FromGuest => {
                    mem.read_slice(chunk, guest).map_err(RequestError::Memory)?;
                    self.file
                        .write_all_at(chunk, at)
                        .map_err(RequestError::Io)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), RequestError> {
        // A read-only drive has nothing of the guest's to make durable.
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(RequestError::Io)
    }

    /// Carries `request` out; returns how many bytes of data it wrote to guest memory.
    pub fn execute(
        &mut self,
        mem: &Memory,
        request: &Request,
        id: &[u8; ID_BYTES],
    ) -> Result<u32, RequestError> {
        match request.request_type {
            RequestType::In => {
                let mut offset = self.check_range(request.sector, request.data_len)?;
                for &(addr, len) in &request.data {
                    self.copy(mem, Direction::ToGuest, offset, addr, len)?;
                    offset += u64::from(len);
                }
                // The chain's total length fits u32 (the queue's iterator enforces it).
                Ok(u32::try_from(request.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if self.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                let mut offset = self.check_range(request.sector, request.data_len)?;
                for &(addr, len) in &request.data {
                    self.copy(mem, Direction::FromGuest, offset, addr, len)?;
                    offset += u64::from(len);
                }
                Ok(0)
            }
            RequestType::Flush => self.flush().map(|()| 0),
            RequestType::GetId => {
                let mut rest: &[u8] = id;
                let mut written: u32 = 0;
                for &(addr, len) in &request.data {
                    if rest.is_empty() {
                        break;
                    }
                    let n = len.min(u32::try_from(rest.len()).unwrap_or(u32::MAX));
                    let (now, later) = rest.split_at(n as usize);
                    mem.write_slice(now, addr).map_err(RequestError::Memory)?;
                    rest = later;
                    written += n;
                }
                Ok(written)
            }
            RequestType::Unsupported(t) => Err(RequestError::Unsupported(t)),
        }
    }
}
