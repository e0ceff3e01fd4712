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

    /// Copies `len` bytes at file offset `offset` to guest memory at `addr`.
    pub fn read_to_guest(
        &mut self,
        mem: &Memory,
        offset: u64,
        addr: GuestAddress,
        len: u32,
    ) -> Result<(), RequestError> {
        self.in_chunks(offset, addr, len, |file, at, guest, chunk| {
            file.read_exact_at(chunk, at).map_err(RequestError::Io)?;
            mem.write_slice(chunk, guest).map_err(RequestError::Memory)
        })
    }

    /// Copies `len` bytes from guest memory at `addr` to file offset `offset`.
    pub fn write_from_guest(
        &mut self,
        mem: &Memory,
        offset: u64,
        addr: GuestAddress,
        len: u32,
    ) -> Result<(), RequestError> {
        if self.read_only {
            return Err(RequestError::ReadOnly);
        }
        self.in_chunks(offset, addr, len, |file, at, guest, chunk| {
            mem.read_slice(chunk, guest).map_err(RequestError::Memory)?;
            file.write_all_at(chunk, at).map_err(RequestError::Io)
        })
    }

    /// Moves `len` bytes between file offset `offset` and guest address `addr` through the
    /// bounce buffer, a buffer's worth at a time: `copy` gets the file, the file offset, the
    /// guest address and the chunk of each step.
    fn in_chunks(
        &mut self,
        offset: u64,
        addr: GuestAddress,
        len: u32,
        mut copy: impl FnMut(&File, u64, GuestAddress, &mut [u8]) -> Result<(), RequestError>,
    ) -> Result<(), RequestError> {
        let mut done: u32 = 0;
        while done < len {
            let n = (len - done).min(BOUNCE_BYTES);
            let guest = addr
                .checked_add(u64::from(done))
                .ok_or(RequestError::DataOutsideMemory)?;
            let chunk = &mut self.bounce[..n as usize];
            copy(&self.file, offset + u64::from(done), guest, chunk)?;
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
                    self.read_to_guest(mem, offset, addr, len)?;
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
                    self.write_from_guest(mem, offset, addr, len)?;
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
