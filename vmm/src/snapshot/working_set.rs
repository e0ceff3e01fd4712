//! A snapshot's working set: the guest pages a restored guest touched during its first
//! invoke, kept beside the snapshot (`memory.ws`) so that the next restores load them in one
//! sequential pass before the vCPUs run, while the rest of guest memory stays lazily mapped
//! (the idea of REAP and FaaSnap).
//!
//! Recording: the restored memory is the snapshot's memory file mapped private, so a page is
//! in the process's page tables exactly when the guest (or a device) touched it since the
//! restore. `/proc/self/pagemap` tells which: present (or swapped) entries are the working
//! set, and an entry that is no longer a file page was written (it is an anonymous copy).
//! `mincore` would not do: for a private file mapping it reports the page cache, which other
//! restores of the same file fill too.
//!
//! Loading: `madvise(MADV_WILLNEED)` over every range first (the reads are queued at once),
//! then `MADV_POPULATE_READ` for pages only read (they stay shared with the page cache) and
//! `MADV_POPULATE_WRITE` for pages the guest wrote (made private copies now, not on the
//! guest's first write).
//!
//! The file (little-endian): magic `LMVMWSET`, version, page size, the snapshot state's
//! CRC-32 (which snapshot it belongs to), the guest memory size, the number of ranges, then
//! each range (first page, page count, flags), and a CRC-32 of everything before it. It is
//! written under a temporary name and renamed into place, so it is whole or absent.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The working set's name in a snapshot directory, beside `memory`.
pub const FILE_NAME: &str = "memory.ws";
pub const MAGIC: &[u8; 8] = b"LMVMWSET";
pub const VERSION: u32 = 1;
/// The host page size this works in.
pub const PAGE_SIZE: u64 = 4096;
/// Most ranges a working set has: beyond, nearby ranges are merged (the file then stays
/// under 128 KiB, and the API's answer under its 1 MiB limit).
pub const MAX_RANGES: usize = 8192;

const HEADER_LEN: usize = 32;
const RANGE_LEN: usize = 16;
const TRAILER_LEN: usize = 4;
const MAX_FILE_LEN: usize = HEADER_LEN + MAX_RANGES * RANGE_LEN + TRAILER_LEN;
/// A range's flag: the guest wrote these pages.
const FLAG_WRITTEN: u32 = 1;

/// Consecutive guest pages the guest touched alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRange {
    /// The first guest-physical page (its address divided by the page size).
    pub first_page: u64,
    pub pages: u64,
    /// Whether the guest wrote (some of) them: loaded as private copies.
    pub written: bool,
}

/// The pages a restored guest touched (`GET /ext/working-set`, and the file's contents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingSet {
    /// The CRC-32 of the snapshot state it was recorded from (the manifest's `state_crc32`).
    pub state_crc32: u32,
    pub mem_size_bytes: u64,
    pub page_size: u64,
    /// In ascending order, none overlapping.
    pub ranges: Vec<PageRange>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a working-set file")]
    Magic,
    #[error("version {0}; this vmm reads version {VERSION}")]
    Version(u32),
    #[error("{found} bytes, expected {expected}")]
    Length { expected: usize, found: usize },
    #[error("the checksum does not match: the file is corrupt")]
    Checksum,
    #[error("recorded from another snapshot (state CRC-32 {found:08x}, this one {expected:08x})")]
    OtherSnapshot { expected: u32, found: u32 },
    #[error("recorded for {found} bytes of guest memory, this snapshot has {expected}")]
    OtherMemorySize { expected: u64, found: u64 },
    #[error("page size {0}, this host's is {PAGE_SIZE}")]
    PageSize(u64),
    #[error("{0} ranges, at most {MAX_RANGES}")]
    TooManyRanges(usize),
    #[error("range {index} is empty, out of order or outside guest memory")]
    BadRange { index: usize },
    #[error("loading the pages: {0}")]
    Populate(#[source] io::Error),
}

impl WorkingSet {
    /// How many pages it holds.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.pages).sum()
    }

    /// Checks that it belongs to the snapshot whose state has `state_crc32` and whose memory
    /// is `mem_size_bytes`, and that its ranges are ordered and inside that memory.
    pub fn check(&self, state_crc32: u32, mem_size_bytes: u64) -> Result<(), WorkingSetError> {
        if self.page_size != PAGE_SIZE {
            return Err(WorkingSetError::PageSize(self.page_size));
        }
        if self.state_crc32 != state_crc32 {
            return Err(WorkingSetError::OtherSnapshot {
                expected: state_crc32,
                found: self.state_crc32,
            });
        }
        if self.mem_size_bytes != mem_size_bytes {
            return Err(WorkingSetError::OtherMemorySize {
                expected: mem_size_bytes,
                found: self.mem_size_bytes,
            });
        }
        if self.ranges.len() > MAX_RANGES {
            return Err(WorkingSetError::TooManyRanges(self.ranges.len()));
        }
        let memory_pages = mem_size_bytes / PAGE_SIZE;
        let mut next_free = 0u64;
        for (index, range) in self.ranges.iter().enumerate() {
            let end = range.first_page.checked_add(range.pages);
            let fits = range.pages > 0
                && range.first_page >= next_free
                && end.is_some_and(|end| end <= memory_pages);
            if !fits {
                return Err(WorkingSetError::BadRange { index });
            }
            next_free = end.unwrap_or(u64::MAX);
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ranges.len() * RANGE_LEN + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.page_size).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.state_crc32.to_le_bytes());
        out.extend_from_slice(&self.mem_size_bytes.to_le_bytes());
        let count = u32::try_from(self.ranges.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for range in &self.ranges {
            out.extend_from_slice(&range.first_page.to_le_bytes());
            out.extend_from_slice(&u32::try_from(range.pages).unwrap_or(0).to_le_bytes());
            let flags = if range.written { FLAG_WRITTEN } else { 0 };
            out.extend_from_slice(&flags.to_le_bytes());
        }
        let checksum = crc32fast::hash(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// A working set from the file's bytes: its layout and checksum checked (whose snapshot it
    /// is, and whether its ranges fit, is [`WorkingSet::check`]'s). Any bytes give an answer.
    pub fn decode(bytes: &[u8]) -> Result<WorkingSet, WorkingSetError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(WorkingSetError::Magic);
        }
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            return Err(WorkingSetError::Length {
                expected: HEADER_LEN + TRAILER_LEN,
                found: bytes.len(),
            });
        }
        let u32_at = |at: usize| {
            let mut field = [0u8; 4];
            field.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(field)
        };
        let u64_at = |at: usize| {
            let mut field = [0u8; 8];
            field.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(field)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(WorkingSetError::Version(version));
        }
        let count = usize::try_from(u32_at(28)).unwrap_or(usize::MAX);
        if count > MAX_RANGES {
            return Err(WorkingSetError::TooManyRanges(count));
        }
        let expected = HEADER_LEN + count * RANGE_LEN + TRAILER_LEN;
        if bytes.len() != expected {
            return Err(WorkingSetError::Length {
                expected,
                found: bytes.len(),
            });
        }
        let body_len = expected - TRAILER_LEN;
        if crc32fast::hash(&bytes[..body_len]) != u32_at(body_len) {
            return Err(WorkingSetError::Checksum);
        }
        let ranges = (0..count)
            .map(|i| {
                let at = HEADER_LEN + i * RANGE_LEN;
                PageRange {
                    first_page: u64_at(at),
                    pages: u64::from(u32_at(at + 8)),
                    written: u32_at(at + 12) & FLAG_WRITTEN != 0,
                }
            })
            .collect();
        Ok(WorkingSet {
            page_size: u64::from(u32_at(12)),
            state_crc32: u32_at(16),
            mem_size_bytes: u64_at(20),
            ranges,
        })
    }

    /// Reads the file at `path` (a regular file, at most the largest a working set can be).
    pub fn read(path: &Path) -> Result<WorkingSet, WorkingSetError> {
        let io_error = |source| WorkingSetError::Io {
            path: path.to_owned(),
            source,
        };
        // A FIFO would block the open: only a regular file is a working set.
        let metadata = std::fs::metadata(path).map_err(io_error)?;
        if !metadata.is_file() {
            let not_a_file = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
            return Err(io_error(not_a_file));
        }
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|file| file.take(MAX_FILE_LEN as u64 + 1).read_to_end(&mut bytes))
            .map_err(io_error)?;
        WorkingSet::decode(&bytes)
    }

    /// Writes it to `path`, whole or not at all: a temporary file beside it, synced, renamed
    /// over `path`, and the directory synced.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut name = std::ffi::OsString::from(".");
        name.push(path.file_name().unwrap_or_default());
        name.push(format!(".tmp-{}", std::process::id()));
        let temporary = dir.join(name);
        let written = (|| {
            let mut file = File::create(&temporary)?;
            file.write_all(&self.encode())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)?;
            File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}

/// Builds the ranges from pages in ascending order, `(page, written)`; merges nearby ranges of
/// the same kind until there are at most [`MAX_RANGES`].
fn ranges_of(pages: impl IntoIterator<Item = (u64, bool)>) -> Vec<PageRange> {
    let mut ranges: Vec<PageRange> = Vec::new();
    for (page, written) in pages {
        match ranges.last_mut() {
            Some(last) if last.written == written && last.first_page + last.pages == page => {
                last.pages += 1;
            }
            _ => ranges.push(PageRange {
                first_page: page,
                pages: 1,
                written,
            }),
        }
    }
    // Ranges of one kind across small gaps first; then, if that is not enough, ranges of
    // both kinds (written wins: a page loaded writable serves reads too). Each round with a
    // larger gap, until one range is left at worst.
    let mut gap = 1u64;
    while ranges.len() > MAX_RANGES {
        let mixed = gap > 64;
        ranges = merge_across(&ranges, gap, mixed);
        gap = gap.saturating_mul(2);
    }
    ranges
}

/// Merges each range into the previous one when no more than `gap` pages separate them and
/// they are of the same kind (or `mixed`).
fn merge_across(ranges: &[PageRange], gap: u64, mixed: bool) -> Vec<PageRange> {
    let mut merged: Vec<PageRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last)
                if (mixed || last.written == range.written)
                    && range.first_page - (last.first_page + last.pages) <= gap =>
            {
                last.pages = range.first_page + range.pages - last.first_page;
                last.written |= range.written;
            }
            _ => merged.push(*range),
        }
    }
    merged
}

/// `/proc/self/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// The working set of `memory` (a restored guest's, mapped private from the snapshot whose
/// state has `state_crc32`), read from this process's page map (`pagemap`, an open
/// `/proc/self/pagemap`: opened before the jail, which has no `/proc`).
pub fn record(
    pagemap: &File,
    memory: &GuestMemoryMmap,
    state_crc32: u32,
) -> io::Result<WorkingSet> {
    let mut pagemap = pagemap;
    let mut touched = Vec::new();
    let mut mem_size_bytes = 0;
    let mut entries = vec![0u8; 8 * 4096];
    for region in memory.iter() {
        let host = region.as_ptr() as u64;
        let len = region.len();
        mem_size_bytes += len;
        let first_guest_page = region.start_addr().0 / PAGE_SIZE;
        let pages = len / PAGE_SIZE;
        pagemap.seek(SeekFrom::Start(host / PAGE_SIZE * 8))?;
        let mut done = 0u64;
        while done < pages {
            let batch = (pages - done).min(entries.len() as u64 / 8);
            let buffer = &mut entries[..usize::try_from(batch * 8).unwrap_or(0)];
            pagemap.read_exact(buffer)?;
            for (i, entry) in buffer.chunks_exact(8).enumerate() {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(entry);
                let entry = u64::from_le_bytes(raw);
                if entry & (PM_PRESENT | PM_SWAPPED) != 0 {
                    let page = first_guest_page + done + i as u64;
                    touched.push((page, entry & PM_FILE == 0));
                }
            }
            done += batch;
        }
    }
    Ok(WorkingSet {
        state_crc32,
        mem_size_bytes,
        page_size: PAGE_SIZE,
        ranges: ranges_of(touched),
    })
}

/// What loading a working set did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loaded {
    pub pages: u64,
    pub ms: f64,
}

/// Loads `working_set` (checked against the snapshot already) into `memory`: every range
/// read ahead, then populated in one ascending pass.
pub fn load(memory: &GuestMemoryMmap, working_set: &WorkingSet) -> Result<Loaded, WorkingSetError> {
    let started = Instant::now();
    let spans = working_set
        .ranges
        .iter()
        .map(|range| {
            let bytes = range.pages * PAGE_SIZE;
            let start = GuestAddress(range.first_page * PAGE_SIZE);
            let slice = memory
                .get_slice(start, usize::try_from(bytes).unwrap_or(usize::MAX))
                .map_err(|e| WorkingSetError::Populate(io::Error::other(e.to_string())))?;
            Ok((slice.ptr_guard_mut().as_ptr(), slice.len(), range.written))
        })
        .collect::<Result<Vec<_>, WorkingSetError>>()?;
    for &(ptr, len, _) in &spans {
        // SAFETY: the span lies inside guest memory's mapping (from `get_slice`); WILLNEED
        // only starts reading the file behind it.
        unsafe { libc::madvise(ptr.cast(), len, libc::MADV_WILLNEED) };
    }
    for &(ptr, len, written) in &spans {
        let advice = if written {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        // SAFETY: as above; populating faults the pages in as the guest's accesses would
        // (a write makes the private copy the guest's first write would), and changes no
        // content.
        if unsafe { libc::madvise(ptr.cast(), len, advice) } != 0 {
            return Err(WorkingSetError::Populate(io::Error::last_os_error()));
        }
    }
    Ok(Loaded {
        pages: working_set.pages(),
        ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkingSet {
        WorkingSet {
            state_crc32: 0xdead_beef,
            mem_size_bytes: 128 << 20,
            page_size: PAGE_SIZE,
            ranges: vec![
                PageRange {
                    first_page: 0,
                    pages: 3,
                    written: true,
                },
                PageRange {
                    first_page: 3,
                    pages: 1,
                    written: false,
                },
                PageRange {
                    first_page: 100,
                    pages: 20,
                    written: false,
                },
            ],
        }
    }

    /// A tiny deterministic generator, so the fuzz-style tests need no new dependency.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn a_working_set_survives_its_file() {
        let set = sample();
        let bytes = set.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 3 * RANGE_LEN + TRAILER_LEN);
        let back = WorkingSet::decode(&bytes).unwrap();
        assert_eq!(back, set);
        back.check(0xdead_beef, 128 << 20).unwrap();
        assert_eq!(back.pages(), 24);
    }

    #[test]
    fn a_file_written_atomically_reads_back_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        sample().write(&path).unwrap();
        sample().write(&path).unwrap();
        assert_eq!(WorkingSet::read(&path).unwrap(), sample());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(WorkingSet::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= 1 << bit;
                assert!(WorkingSet::decode(&corrupt).is_err(), "byte {at} bit {bit}");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            WorkingSet::decode(&longer),
            Err(WorkingSetError::Length { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic_and_random_sets_are_checked() {
        let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let len = (rng.next() % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
            if round % 2 == 0 && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(MAGIC);
            }
            let _ = WorkingSet::decode(&bytes);
        }
        // Well-formed files with arbitrary ranges: decoded, then checked without panicking.
        for _ in 0..20_000 {
            let count = (rng.next() % 5) as usize;
            let set = WorkingSet {
                state_crc32: 7,
                mem_size_bytes: 1 << 20,
                page_size: if rng.next() % 8 == 0 { 0 } else { PAGE_SIZE },
                ranges: (0..count)
                    .map(|_| PageRange {
                        first_page: match rng.next() % 3 {
                            0 => rng.next(),
                            _ => rng.next() % 300,
                        },
                        pages: rng.next() % 300,
                        written: rng.next() % 2 == 0,
                    })
                    .collect(),
            };
            let back = WorkingSet::decode(&set.encode()).unwrap();
            if back.check(7, 1 << 20).is_ok() {
                let mut end = 0;
                for range in &back.ranges {
                    assert!(range.pages > 0 && range.first_page >= end);
                    end = range.first_page + range.pages;
                }
                assert!(end <= 256);
            }
        }
    }

    #[test]
    fn another_snapshot_s_or_another_size_s_set_is_refused() {
        let set = sample();
        assert!(matches!(
            set.check(1, 128 << 20),
            Err(WorkingSetError::OtherSnapshot { .. })
        ));
        assert!(matches!(
            set.check(0xdead_beef, 64 << 20),
            Err(WorkingSetError::OtherMemorySize { .. })
        ));
        let mut outside = sample();
        outside.ranges[2].first_page = (128 << 20) / PAGE_SIZE - 1;
        assert!(matches!(
            outside.check(0xdead_beef, 128 << 20),
            Err(WorkingSetError::BadRange { index: 2 })
        ));
        let mut overlapping = sample();
        overlapping.ranges[1].first_page = 2;
        assert!(matches!(
            overlapping.check(0xdead_beef, 128 << 20),
            Err(WorkingSetError::BadRange { index: 1 })
        ));
    }

    #[test]
    fn pages_become_ranges_and_too_many_are_merged() {
        let ranges = ranges_of([(1, false), (2, false), (3, true), (7, true), (8, true)]);
        let as_tuples: Vec<_> = ranges
            .iter()
            .map(|r| (r.first_page, r.pages, r.written))
            .collect();
        assert_eq!(as_tuples, [(1, 2, false), (3, 1, true), (7, 2, true)]);
        // Every other page of 64 MiB: more ranges than allowed, merged below the limit, all
        // pages still covered.
        let pages: Vec<_> = (0..2 * MAX_RANGES as u64 + 10)
            .map(|i| (i * 2, i % 3 == 0))
            .collect();
        let ranges = ranges_of(pages.iter().copied());
        assert!(ranges.len() <= MAX_RANGES, "{}", ranges.len());
        for (page, written) in pages {
            assert!(ranges.iter().any(|r| (r.written || !written)
                && (r.first_page..r.first_page + r.pages).contains(&page)));
        }
    }

    #[test]
    fn recording_sees_the_pages_touched_and_which_were_written() {
        // A private mapping of a file, as a restore makes one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let len: usize = 64 * 4096;
        let size = u64::try_from(len).unwrap();
        std::fs::write(&path, vec![1u8; len]).unwrap();
        let file = File::open(&path).unwrap();
        let region = vm_memory::mmap::MmapRegionBuilder::new(len)
            .with_file_offset(vm_memory::FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .unwrap();
        let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let memory = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        use vm_memory::Bytes;
        let _: u8 = memory.read_obj(GuestAddress(5 * PAGE_SIZE)).unwrap();
        let _: u8 = memory.read_obj(GuestAddress(6 * PAGE_SIZE)).unwrap();
        memory
            .write_obj(9u8, GuestAddress(20 * PAGE_SIZE + 17))
            .unwrap();
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let set = record(&pagemap, &memory, 42).unwrap();
        set.check(42, size).unwrap();
        let written: Vec<_> = set.ranges.iter().filter(|r| r.written).collect();
        assert_eq!(
            written,
            [&PageRange {
                first_page: 20,
                pages: 1,
                written: true
            }]
        );
        // Read faults map the page and, by fault-around, its neighbours in the page cache.
        for page in [5, 6] {
            assert!(set
                .ranges
                .iter()
                .any(|r| !r.written && (r.first_page..r.first_page + r.pages).contains(&page)));
        }

        // Loaded into a fresh mapping, the same pages are present before anything reads them.
        let file = File::open(&path).unwrap();
        let region = vm_memory::mmap::MmapRegionBuilder::new(len)
            .with_file_offset(vm_memory::FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .unwrap();
        let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let fresh = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        let loaded = load(&fresh, &set).unwrap();
        assert_eq!(loaded.pages, set.pages());
        let again = record(&pagemap, &fresh, 42).unwrap();
        for range in &set.ranges {
            for page in range.first_page..range.first_page + range.pages {
                assert!(
                    again.ranges.iter().any(|r| r.written == range.written
                        && (r.first_page..r.first_page + r.pages).contains(&page)),
                    "page {page} is not loaded: {again:?}"
                );
            }
        }
    }
}
