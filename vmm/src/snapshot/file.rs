//! The snapshot state file: a fixed header, then the serialized state.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "LMVMSNAP"
//! 8       4     format version, little endian
//! 12      4     CRC-32 (IEEE) of the payload
//! 16      8     payload length in bytes
//! 24      ...   payload: postcard of `MicrovmState`
//! ```
//!
//! Loading checks the magic, the version, the length against the file and against
//! [`MAX_STATE_BYTES`] (before reading the payload), and the checksum, so a corrupt, truncated or
//! foreign file is refused with the reason and nothing starts. Saving writes the file inside the
//! snapshot's staging directory and syncs it; `super::dir` makes the directory appear whole.
//!
//! What decoding may allocate is bounded by the payload, which is at most [`MAX_STATE_BYTES`]:
//! postcard reads strings and byte strings out of the payload itself, and a sequence's length
//! is only trusted for preallocation when that many bytes are left (serde then caps it at
//! 1 MiB), so a lying length inside the state fails at the end of the input instead of
//! allocating what it claims. `vmm/tests/state_file_alloc.rs` measures it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"LMVMSNAP";
/// Bumped whenever the state's layout or codec changes; other versions are refused.
/// 1 and 2 were bincode 1; 3 is postcard.
pub const FORMAT_VERSION: u32 = 3;
/// A real state is tens of KiB; more than this is not a state file.
pub const MAX_STATE_BYTES: u64 = 16 << 20;
const HEADER_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a snapshot state file (bad magic)")]
    Magic { path: PathBuf },
    #[error(
        "{path}: snapshot format version {found} is older than this VMM's version \
         {FORMAT_VERSION}: take a new snapshot"
    )]
    OldVersion { path: PathBuf, found: u32 },
    #[error("{path}: snapshot format version {found}, this VMM reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: truncated: the header says {expected} bytes of state, the file has {found}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: {len} bytes of state is over the {MAX_STATE_BYTES}-byte limit")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("{path}: checksum mismatch: the state is corrupt")]
    Checksum { path: PathBuf },
    #[error("{path}: undecodable state")]
    Decode {
        path: PathBuf,
        #[source]
        source: postcard::Error,
    },
    #[error("encoding the state")]
    Encode(#[source] postcard::Error),
    #[error("the encoded state is {len} bytes, over the {MAX_STATE_BYTES}-byte limit")]
    EncodedTooLarge { len: usize },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `state` to `path` and syncs it; returns the payload's CRC-32 (the header's). Atomicity
/// is the caller's: a staging directory (`super::dir`) or a temporary name renamed into place.
pub fn save<T: Serialize>(path: &Path, state: &T) -> Result<u32, StateFileError> {
    let payload = postcard::to_stdvec(state).map_err(StateFileError::Encode)?;
    let len = u64::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_STATE_BYTES)
        .ok_or(StateFileError::EncodedTooLarge { len: payload.len() })?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let checksum = crc32fast::hash(&payload);
    header.extend_from_slice(&checksum.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    let written = (|| {
        let mut file = File::create(path)?;
        file.write_all(&header)?;
        file.write_all(&payload)?;
        file.sync_all()
    })();
    written.map_err(io_error(path))?;
    Ok(checksum)
}

/// Reads and checks a state file written by [`save`].
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, StateFileError> {
    load_with_checksum(path).map(|(state, _)| state)
}

/// [`load`], with the checksum in the file's header (which state it is: the manifest's
/// `state_crc32`).
pub fn load_with_checksum<T: DeserializeOwned>(path: &Path) -> Result<(T, u32), StateFileError> {
    // A FIFO or a device would block the open or never end: only a regular file is a state.
    let metadata = std::fs::metadata(path).map_err(io_error(path))?;
    if !metadata.is_file() {
        let not_a_file =
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(io_error(path)(not_a_file));
    }
    let mut file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut header = [0u8; HEADER_LEN];
    let header_len = usize::try_from(file_len).map_or(HEADER_LEN, |len| len.min(HEADER_LEN));
    file.read_exact(&mut header[..header_len])
        .map_err(io_error(path))?;
    if header_len < MAGIC.len() || &header[..MAGIC.len()] != MAGIC {
        return Err(StateFileError::Magic {
            path: path.to_owned(),
        });
    }
    if header_len < HEADER_LEN {
        return Err(StateFileError::Truncated {
            path: path.to_owned(),
            expected: HEADER_LEN as u64,
            found: file_len,
        });
    }
    let field = |range: std::ops::Range<usize>| header[range].to_vec();
    let version = u32::from_le_bytes(field(8..12).try_into().unwrap_or_default());
    let checksum = u32::from_le_bytes(field(12..16).try_into().unwrap_or_default());
    let len = u64::from_le_bytes(field(16..24).try_into().unwrap_or_default());
    if version < FORMAT_VERSION {
        return Err(StateFileError::OldVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    if version != FORMAT_VERSION {
        return Err(StateFileError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    if len > MAX_STATE_BYTES {
        return Err(StateFileError::TooLarge {
            path: path.to_owned(),
            len,
        });
    }
    let found = file_len - HEADER_LEN as u64;
    if found != len {
        return Err(StateFileError::Truncated {
            path: path.to_owned(),
            expected: len,
            found,
        });
    }
    let Ok(payload_len) = usize::try_from(len) else {
        return Err(StateFileError::TooLarge {
            path: path.to_owned(),
            len,
        });
    };
    let mut payload = vec![0u8; payload_len];
    file.read_exact(&mut payload).map_err(io_error(path))?;
    if crc32fast::hash(&payload) != checksum {
        return Err(StateFileError::Checksum {
            path: path.to_owned(),
        });
    }
    // Trailing bytes would mean the writer and reader disagree on the layout.
    match postcard::take_from_bytes(&payload) {
        Ok((state, [])) => Ok((state, checksum)),
        Ok(_) => Err(StateFileError::Decode {
            path: path.to_owned(),
            source: postcard::Error::DeserializeBadEncoding,
        }),
        Err(source) => Err(StateFileError::Decode {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vcpu0".into(),
            values: (0..100).collect(),
        }
    }

    fn saved() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        save(&path, &sample()).unwrap();
        (dir, path)
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let error = load::<Sample>(&path).unwrap_err();
        assert!(error.to_string().contains("state"), "{error}");
        assert!(
            vmm_error_chain(&error).contains("not a regular file"),
            "{error}"
        );
    }

    fn vmm_error_chain(error: &StateFileError) -> String {
        logging::Chain(error).to_string()
    }

    #[test]
    fn round_trip() {
        let (dir, path) = saved();
        assert_eq!(load::<Sample>(&path).unwrap(), sample());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn every_flipped_payload_byte_is_caught() {
        let (_dir, path) = saved();
        let good = std::fs::read(&path).unwrap();
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(load::<Sample>(&path), Err(StateFileError::Checksum { .. })),
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncation_at_any_length_is_refused() {
        let (_dir, path) = saved();
        let good = std::fs::read(&path).unwrap();
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            let err = load::<Sample>(&path).unwrap_err();
            assert!(
                matches!(
                    err,
                    StateFileError::Truncated { .. } | StateFileError::Magic { .. }
                ),
                "length {len}: {err}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(matches!(
            load::<Sample>(&path),
            Err(StateFileError::Truncated { .. })
        ));
    }

    #[test]
    fn foreign_versions_oversized_and_undecodable_states_are_refused() {
        let (_dir, path) = saved();
        let good = std::fs::read(&path).unwrap();
        let mut other_version = good.clone();
        other_version[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        std::fs::write(&path, &other_version).unwrap();
        let err = load::<Sample>(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("version {}", FORMAT_VERSION + 1)),
            "{err}"
        );
        let mut old_version = good.clone();
        old_version[8..12].copy_from_slice(&(FORMAT_VERSION - 1).to_le_bytes());
        std::fs::write(&path, &old_version).unwrap();
        let err = load::<Sample>(&path).unwrap_err();
        assert!(matches!(err, StateFileError::OldVersion { .. }), "{err}");
        assert!(err.to_string().contains("take a new snapshot"), "{err}");

        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(matches!(
            load::<Sample>(&path),
            Err(StateFileError::TooLarge { .. })
        ));

        std::fs::write(&path, b"#!/bin/sh\necho not a snapshot\n").unwrap();
        assert!(matches!(
            load::<Sample>(&path),
            Err(StateFileError::Magic { .. })
        ));

        // A well-formed file holding some other type.
        save(&path, &42u8).unwrap();
        assert!(matches!(
            load::<Sample>(&path),
            Err(StateFileError::Decode { .. })
        ));
    }
}
