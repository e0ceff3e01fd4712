//! The "new ASCII" cpio format (`070701`, "newc"): the only one the kernel unpacks as an
//! initramfs. A writer that never looks at the host (inode numbers, owners and times come from
//! the caller, so archives are reproducible) and a strict reader for checking what was written.
//!
//! Each entry is a 110-byte header of 13 eight-digit hex fields after the magic, the NUL-terminated
//! name padded to a multiple of 4 bytes (counting from the start of the archive), then the data
//! padded the same way. A symlink's data is its target; the archive ends with `TRAILER!!!`.

use std::io::{self, Read, Write};

/// Magic of the newc format (no checksums).
pub const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;
const FIELDS: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

/// File type bits of `mode`, as in `st_mode`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
/// Permission bits, including setuid, setgid and sticky.
pub const PERM_MASK: u32 = 0o7777;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the cpio archive")]
    Io(#[from] io::Error),
    #[error("cpio entry name {name:?} is empty, absolute or contains a NUL")]
    InvalidName { name: String },
    #[error("{name}: {size} bytes is more than a newc cpio entry can hold (4 GiB - 1)")]
    TooLarge { name: String, size: u64 },
    #[error("{name}: changed while being archived (expected {expected} bytes, {found})")]
    SizeChanged {
        name: String,
        expected: u64,
        found: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cpio archive truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("bad cpio magic at byte {offset} (expected 070701)")]
    BadMagic { offset: usize },
    #[error("bad `{field}` field in the cpio header at byte {offset}")]
    BadField { offset: usize, field: &'static str },
    #[error("cpio entry name at byte {offset} is not NUL-terminated UTF-8")]
    BadName { offset: usize },
    #[error("cpio archive has no TRAILER!!! entry")]
    MissingTrailer,
    #[error("non-zero bytes after the cpio trailer at byte {offset}")]
    TrailingData { offset: usize },
}

/// Writes a newc archive. Entries get inode numbers 1, 2, 3... in the order they are written,
/// uid/gid 0 and the one `mtime` given to [`Writer::new`]; the caller writes parents before
/// children, as the kernel creates entries in archive order.
pub struct Writer<W: Write> {
    out: W,
    position: u64,
    next_ino: u32,
    mtime: u32,
}

/// The header fields a caller chooses; the writer fills in the rest.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            position: 0,
            next_ino: 1,
            mtime,
        }
    }

    pub fn directory(&mut self, name: &str, perm: u32) -> Result<(), WriteError> {
        self.header(Header {
            name,
            mode: S_IFDIR | (perm & PERM_MASK),
            nlink: 2,
            filesize: 0,
            rdev: (0, 0),
        })
    }

    /// Appends a regular file of exactly `size` bytes read from `data`. A source that turns out
    /// shorter or longer (a file changed under us) is an error rather than a corrupt archive.
    pub fn file(
        &mut self,
        name: &str,
        perm: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), WriteError> {
        let filesize = u32::try_from(size).map_err(|_| WriteError::TooLarge {
            name: name.to_owned(),
            size,
        })?;
        self.header(Header {
            name,
            mode: S_IFREG | (perm & PERM_MASK),
            nlink: 1,
            filesize,
            rdev: (0, 0),
        })?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        let mut probe = [0u8; 1];
        let longer = copied == size && data.read(&mut probe)? > 0;
        if copied != size || longer {
            return Err(WriteError::SizeChanged {
                name: name.to_owned(),
                expected: size,
                found: if longer {
                    "found more".to_owned()
                } else {
                    format!("found {copied}")
                },
            });
        }
        self.position += size;
        self.pad()
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), WriteError> {
        let filesize = u32::try_from(target.len()).map_err(|_| WriteError::TooLarge {
            name: name.to_owned(),
            size: target.len() as u64,
        })?;
        self.header(Header {
            name,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            filesize,
            rdev: (0, 0),
        })?;
        self.out.write_all(target.as_bytes())?;
        self.position += u64::from(filesize);
        self.pad()
    }

    pub fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), WriteError> {
        self.header(Header {
            name,
            mode: S_IFCHR | (perm & PERM_MASK),
            nlink: 1,
            filesize: 0,
            rdev: (major, minor),
        })
    }

    /// Writes the trailer and hands back the sink (not flushed).
    pub fn finish(mut self) -> Result<W, WriteError> {
        self.raw_header(TRAILER, 0, 0, 1, 0, 0, (0, 0))?;
        Ok(self.out)
    }

    fn header(&mut self, h: Header<'_>) -> Result<(), WriteError> {
        if h.name.is_empty()
            || h.name.starts_with('/')
            || h.name.contains('\0')
            || h.name == TRAILER
        {
            return Err(WriteError::InvalidName {
                name: h.name.to_owned(),
            });
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mtime = self.mtime;
        self.raw_header(h.name, ino, h.mode, h.nlink, mtime, h.filesize, h.rdev)
    }

    #[allow(clippy::too_many_arguments)] // one per header field; a struct would only rename them
    fn raw_header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        filesize: u32,
        rdev: (u32, u32),
    ) -> Result<(), WriteError> {
        let namesize = u32::try_from(name.len() + 1).map_err(|_| WriteError::InvalidName {
            name: name.to_owned(),
        })?;
        // uid, gid, devmajor, devminor and check are always 0: no host identity leaks in.
        let fields = [
            ino, mode, 0, 0, nlink, mtime, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.out.write_all(&header)?;
        self.position += header.len() as u64;
        self.pad()
    }

    fn pad(&mut self) -> Result<(), WriteError> {
        let padding = padding(self.position);
        self.out.write_all(&[0u8; 3][..padding])?;
        self.position += padding as u64;
        Ok(())
    }
}

fn padding(position: u64) -> usize {
    // Always 0..=3, so the cast cannot truncate.
    ((4 - position % 4) % 4) as usize
}

/// One entry as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub dev: (u32, u32),
    pub rdev: (u32, u32),
    /// File contents, or a symlink's target.
    pub data: Vec<u8>,
}

impl Entry {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    pub fn perm(&self) -> u32 {
        self.mode & PERM_MASK
    }
}

/// Parses a whole newc archive, without the trailer. Strict: the magic, every hex field, the
/// padding and the trailer must be right, and only NUL padding may follow the trailer.
pub fn read_archive(bytes: &[u8]) -> Result<Vec<Entry>, ReadError> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        let start = offset;
        let header = bytes
            .get(offset..offset + HEADER_LEN)
            .ok_or(ReadError::Truncated { offset })?;
        if &header[..6] != MAGIC {
            return Err(ReadError::BadMagic { offset });
        }
        let mut fields = [0u32; 13];
        for (i, (value, field)) in fields.iter_mut().zip(FIELDS).enumerate() {
            let hex = &header[6 + 8 * i..14 + 8 * i];
            *value = std::str::from_utf8(hex)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or(ReadError::BadField {
                    offset: start,
                    field,
                })?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, _check] =
            fields;
        offset += HEADER_LEN;
        let name_len =
            usize::try_from(namesize)
                .ok()
                .filter(|&n| n > 0)
                .ok_or(ReadError::BadField {
                    offset: start,
                    field: "namesize",
                })?;
        let raw_name = bytes
            .get(offset..offset + name_len)
            .ok_or(ReadError::Truncated { offset })?;
        let name = match raw_name.split_last() {
            Some((0, name)) if !name.contains(&0) => std::str::from_utf8(name)
                .map_err(|_| ReadError::BadName { offset: start })?
                .to_owned(),
            _ => return Err(ReadError::BadName { offset: start }),
        };
        offset = skip_padding(bytes, offset + name_len)?;
        // Only files and symlinks have contents: the kernel would skip data on anything else
        // unseen, and the writer never puts any there.
        if filesize != 0 && !matches!(mode & S_IFMT, S_IFREG | S_IFLNK) {
            return Err(ReadError::BadField {
                offset: start,
                field: "filesize",
            });
        }
        let data_len = usize::try_from(filesize).map_err(|_| ReadError::BadField {
            offset: start,
            field: "filesize",
        })?;
        let data = bytes
            .get(offset..offset + data_len)
            .ok_or(ReadError::Truncated { offset })?
            .to_vec();
        offset = skip_padding(bytes, offset + data_len)?;
        if name == TRAILER {
            if let Some(pos) = bytes[offset..].iter().position(|&b| b != 0) {
                return Err(ReadError::TrailingData {
                    offset: offset + pos,
                });
            }
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            dev: (devmajor, devminor),
            rdev: (rdevmajor, rdevminor),
            data,
        });
        if offset >= bytes.len() {
            return Err(ReadError::MissingTrailer);
        }
    }
}

fn skip_padding(bytes: &[u8], offset: usize) -> Result<usize, ReadError> {
    let end = offset + padding(offset as u64);
    match bytes.get(offset..end) {
        Some(pad) if pad.iter().all(|&b| b == 0) => Ok(end),
        Some(_) => Err(ReadError::BadField {
            offset,
            field: "padding",
        }),
        None => Err(ReadError::Truncated { offset }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut Writer<Vec<u8>>)) -> Vec<u8> {
        let mut writer = Writer::new(Vec::new(), 1_700_000_000);
        build(&mut writer);
        writer.finish().unwrap()
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let bytes = archive(|_| {});
        let expected = format!(
            "070701{}{}{}{}TRAILER!!!\0\0\0\0",
            "00000000".repeat(4),
            "00000001",
            "00000000".repeat(6),
            "0000000b00000000"
        );
        assert_eq!(bytes, expected.as_bytes());
        assert_eq!(bytes.len() % 4, 0);
        assert!(read_archive(&bytes).unwrap().is_empty());
    }

    #[test]
    fn header_fields_are_exact() {
        let bytes = archive(|w| w.file("init", 0o755, 5, &mut &b"hello"[..]).unwrap());
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        // ino 1, regular 0755, uid 0, gid 0, nlink 1, mtime, 5 bytes, dev 0:0, rdev 0:0, 5-byte name.
        assert_eq!(
            header,
            "070701\
             00000001000081ed000000000000000000000001\
             6553f100000000050000000000000000\
             00000000000000000000000500000000"
        );
        // 110 + 5 = 115, padded to 116; then 5 bytes of data padded to 8.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..124], b"hello\0\0\0");
        assert_eq!(&bytes[124..130], b"070701");
    }

    #[test]
    fn every_kind_round_trips() {
        let bytes = archive(|w| {
            w.directory("dev", 0o755).unwrap();
            w.char_device("dev/console", 0o600, 5, 1).unwrap();
            w.directory("tmp", 0o1777).unwrap();
            w.file("empty", 0o644, 0, &mut io::empty()).unwrap();
            w.file("a/bc", 0o755, 3, &mut &b"abc"[..]).unwrap();
            w.symlink("link", "../some/target").unwrap();
        });
        assert_eq!(bytes.len() % 4, 0);
        let entries = read_archive(&bytes).unwrap();
        let summary: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.ino,
                    e.file_type(),
                    e.perm(),
                    e.nlink,
                    e.rdev,
                    e.data.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("dev", 1, S_IFDIR, 0o755, 2, (0, 0), &b""[..]),
                ("dev/console", 2, S_IFCHR, 0o600, 1, (5, 1), b""),
                ("tmp", 3, S_IFDIR, 0o1777, 2, (0, 0), b""),
                ("empty", 4, S_IFREG, 0o644, 1, (0, 0), b""),
                ("a/bc", 5, S_IFREG, 0o755, 1, (0, 0), b"abc"),
                ("link", 6, S_IFLNK, 0o777, 1, (0, 0), b"../some/target"),
            ]
        );
        assert!(entries
            .iter()
            .all(|e| e.uid == 0 && e.gid == 0 && e.dev == (0, 0) && e.mtime == 1_700_000_000));
    }

    #[test]
    fn names_of_every_length_are_padded() {
        for len in 1..=9 {
            let name = "n".repeat(len);
            let bytes = archive(|w| {
                w.file(&name, 0o644, len as u64, &mut name.as_bytes())
                    .unwrap()
            });
            assert_eq!(bytes.len() % 4, 0);
            let entries = read_archive(&bytes).unwrap();
            assert_eq!(entries[0].name, name);
            assert_eq!(entries[0].data, name.as_bytes());
        }
    }

    #[test]
    fn a_source_of_the_wrong_size_is_an_error() {
        let mut writer = Writer::new(Vec::new(), 0);
        let err = writer
            .file("short", 0o644, 10, &mut &b"abc"[..])
            .unwrap_err();
        assert!(err.to_string().contains("found 3"), "{err}");
        let mut writer = Writer::new(Vec::new(), 0);
        let err = writer.file("long", 0o644, 2, &mut &b"abc"[..]).unwrap_err();
        assert!(err.to_string().contains("found more"), "{err}");
    }

    #[test]
    fn invalid_names_are_refused() {
        let mut writer = Writer::new(Vec::new(), 0);
        for name in ["", "/abs", "a\0b", TRAILER] {
            assert!(matches!(
                writer.directory(name, 0o755),
                Err(WriteError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn reader_rejects_damage() {
        let good = archive(|w| w.file("f", 0o644, 3, &mut &b"abc"[..]).unwrap());
        assert!(matches!(
            read_archive(&good[..good.len() - 4]),
            Err(ReadError::Truncated { .. })
        ));
        let mut bad = good.clone();
        bad[5] = b'2';
        assert!(matches!(
            read_archive(&bad),
            Err(ReadError::BadMagic { offset: 0 })
        ));
        let mut bad = good.clone();
        bad[6] = b'g';
        assert!(matches!(
            read_archive(&bad),
            Err(ReadError::BadField { field: "ino", .. })
        ));
        let mut bad = good.clone();
        bad.extend_from_slice(b"junk");
        assert!(matches!(
            read_archive(&bad),
            Err(ReadError::TrailingData { .. })
        ));
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 512]);
        assert_eq!(read_archive(&padded).unwrap().len(), 1);
        // Everything up to the trailer, and nothing after.
        let entry_end = 110 + 2 + 4;
        assert!(matches!(
            read_archive(&good[..entry_end]),
            Err(ReadError::MissingTrailer)
        ));
        assert!(read_archive(&[]).is_err());
    }

    /// Found by the `cpio` fuzz target: a directory whose header claims contents was read as
    /// if the contents were part of it.
    #[test]
    fn reader_rejects_data_on_entries_without_contents() {
        let good = archive(|w| w.directory("d", 0o755).unwrap());
        assert_eq!(read_archive(&good).unwrap()[0].data, b"");
        // "d\0" ends the name at byte 112, a multiple of 4: the data would start there.
        let mut bad = good.clone();
        bad[54..62].copy_from_slice(b"00000004");
        bad.splice(112..112, *b"data");
        assert!(matches!(
            read_archive(&bad),
            Err(ReadError::BadField {
                offset: 0,
                field: "filesize"
            })
        ));
    }
}
