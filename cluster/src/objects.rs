//! Artifact objects: how a file travels through the cluster's object store. Each file is
//! stored once, gzip-compressed, under the name of its SHA-256 ([`names::artifact_object`]).
//! Compression is what makes SnapStart snapshots shareable on a busy cluster: a guest's memory
//! file is mostly zero pages (a 128 MiB memory of an echo function holds about 19 MB of data
//! and travels as 5.4 MB), and every byte stored is written once per replica. A fetch
//! inflates the object, stops at the size the record names (no inflation bomb fills a disk),
//! checks the digest and only then gives the file its name. `nats object get` followed by
//! `gunzip` gives an operator the file back.

use crate::catalog::{DeployError, FetchError};
use crate::names;
use async_nats::jetstream::object_store;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Stores the file at `path` as the object of `sha256`, unless the store holds it already.
pub(crate) async fn upload(
    store: &object_store::ObjectStore,
    path: &Path,
    sha256: &str,
    size: u64,
) -> Result<(), DeployError> {
    let name = names::artifact_object(sha256);
    // The object's meta is written after its last chunk: an object that has one is whole.
    if let Ok(info) = store.info(&name).await {
        if !info.deleted {
            return Ok(());
        }
    }
    // In the temporary directory: a deployed directory may be read-only.
    let compressed = scratch_path(
        &std::env::temp_dir().join(names::artifact_object(sha256)),
        "gz",
    );
    let (source, target) = (path.to_owned(), compressed.clone());
    let read = |source| DeployError::Read {
        path: path.to_owned(),
        source,
    };
    let packed = tokio::task::spawn_blocking(move || compress(&source, &target))
        .await
        .map_err(|e| read(std::io::Error::other(e.to_string())))
        .and_then(|packed| packed.map_err(read));
    let stored = match packed {
        Ok(()) => put(store, &name, &compressed)
            .await
            .map_err(|detail| DeployError::Store {
                what: format!("{} ({size} bytes)", path.display()),
                detail,
            }),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&compressed);
    stored
}

async fn put(
    store: &object_store::ObjectStore,
    name: &str,
    compressed: &Path,
) -> Result<(), String> {
    let mut file = tokio::fs::File::open(compressed)
        .await
        .map_err(|e| format!("{}: {e}", compressed.display()))?;
    store
        .put(name, &mut file)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Gzips `source` into `target` at level 2: on a snapshot's memory, level 1 leaves 40% more
/// bytes and level 6 saves 5% for 40% more time.
fn compress(source: &Path, target: &Path) -> std::io::Result<()> {
    let mut input = std::fs::File::open(source)?;
    let output = std::fs::File::create(target)?;
    let mut encoder = GzEncoder::new(output, flate2::Compression::new(2));
    std::io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.flush()
}

/// Fetches the object of `expected` (a SHA-256, lowercase hex) of `size` bytes into the file
/// `dest`, through temporary files: `dest` holds only whole bytes whose digest is `expected`.
pub(crate) async fn fetch(
    store: &object_store::ObjectStore,
    expected: &str,
    size: u64,
    dest: &Path,
) -> Result<(), FetchError> {
    let store_error = |detail: String| FetchError::Store {
        sha256: expected.to_owned(),
        detail,
    };
    let write = |source| FetchError::Write {
        sha256: expected.to_owned(),
        path: dest.to_owned(),
        source,
    };
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(write)?;
    }
    let compressed = scratch_path(dest, "gz");
    let downloaded = async {
        let mut object = store
            .get(names::artifact_object(expected))
            .await
            .map_err(|e| store_error(e.to_string()))?;
        let mut file = tokio::fs::File::create(&compressed).await.map_err(write)?;
        tokio::io::copy(&mut object, &mut file)
            .await
            .map_err(|e| store_error(e.to_string()))?;
        Ok(())
    }
    .await;
    let result = match downloaded {
        Ok(()) => {
            let (from, to, sha256) = (compressed.clone(), dest.to_owned(), expected.to_owned());
            tokio::task::spawn_blocking(move || inflate_checked(&from, &to, &sha256, size))
                .await
                .map_err(|e| store_error(e.to_string()))
                .and_then(|inflated| inflated)
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&compressed);
    result
}

/// Inflates `compressed` into `dest` (through a temporary file) if it holds exactly `size`
/// bytes whose SHA-256 is `expected`.
fn inflate_checked(
    compressed: &Path,
    dest: &Path,
    expected: &str,
    size: u64,
) -> Result<(), FetchError> {
    let write = |source| FetchError::Write {
        sha256: expected.to_owned(),
        path: dest.to_owned(),
        source,
    };
    let corrupt = |detail: String| FetchError::Store {
        sha256: expected.to_owned(),
        detail,
    };
    let temp = scratch_path(dest, "part");
    let result = (|| {
        let input = std::fs::File::open(compressed).map_err(write)?;
        // One byte more than the record names tells a longer object from a whole one.
        let mut decoder = GzDecoder::new(input).take(size.saturating_add(1));
        let mut output = std::fs::File::create(&temp).map_err(write)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut inflated = 0u64;
        loop {
            let n = decoder
                .read(&mut buffer)
                .map_err(|e| corrupt(format!("inflating the object: {e}")))?;
            if n == 0 {
                break;
            }
            inflated += n as u64;
            hasher.update(&buffer[..n]);
            output.write_all(&buffer[..n]).map_err(write)?;
        }
        if inflated != size {
            return Err(corrupt(format!(
                "the object inflates to {}{inflated} bytes, its record names {size}",
                if inflated > size { "more than " } else { "" }
            )));
        }
        output.sync_all().map_err(write)?;
        let actual = crate::catalog::hex(&hasher.finalize());
        if actual != expected {
            return Err(FetchError::Digest {
                expected: expected.to_owned(),
                actual,
            });
        }
        std::fs::rename(&temp, dest).map_err(write)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// A path beside `path` that no other transfer uses.
fn scratch_path(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{}", uuid::Uuid::new_v4().simple()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(bytes: &[u8]) -> String {
        crate::catalog::hex(&Sha256::digest(bytes))
    }

    fn packed(dir: &Path, bytes: &[u8]) -> PathBuf {
        let source = dir.join("source");
        std::fs::write(&source, bytes).unwrap();
        let target = dir.join("source.gz");
        compress(&source, &target).unwrap();
        target
    }

    #[test]
    fn zero_pages_shrink_and_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 8 << 20];
        bytes[4096..8192].fill(0xa5);
        let target = packed(dir.path(), &bytes);
        let packed_size = std::fs::metadata(&target).unwrap().len();
        assert!(packed_size < 64 * 1024, "{packed_size}");
        let dest = dir.path().join("dest");
        inflate_checked(&target, &dest, &digest(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    }

    #[test]
    fn a_longer_shorter_or_altered_object_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"the artifact".repeat(1000);
        let target = packed(dir.path(), &bytes);
        let dest = dir.path().join("dest");
        let size = bytes.len() as u64;
        let err = inflate_checked(&target, &dest, &digest(&bytes), size - 1).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        let err = inflate_checked(&target, &dest, &digest(&bytes), size + 1).unwrap_err();
        assert!(err.to_string().contains("inflates to"), "{err}");
        let err = inflate_checked(&target, &dest, &digest(b"other"), size).unwrap_err();
        assert!(matches!(err, FetchError::Digest { .. }), "{err}");
        std::fs::write(&target, b"not gzip at all").unwrap();
        let err = inflate_checked(&target, &dest, &digest(&bytes), size).unwrap_err();
        assert!(err.to_string().contains("inflating"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
