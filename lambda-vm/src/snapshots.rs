//! Where a SnapStart function's snapshot lives: `ROOT/<key>`, the key a hash of everything the
//! snapshot was made from (the snapshot format version, the guest kernel, the function's image,
//! its `function.json`, the kernel command line and the memory size). A change to any of them
//! gives a new key, so a snapshot is never restored against another kernel or image; the old
//! one is removed once the new one has landed.
//!
//! Hashing reads the kernel and the image (tens of MB), so the key is kept with the inputs'
//! file metadata and computed again only when that changes.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vmm::snapshot::file::FORMAT_VERSION;
use vmm::snapshot::manifest::{manifest_path, ManifestError, SnapshotManifest};
use vmm::snapshot::{MEMORY_FILE, STATE_FILE};

/// Hex digits of the key: 128 bits of SHA-256.
const KEY_HEX_LEN: usize = 32;

/// A file's identity and version as the file system sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(path: &Path) -> io::Result<Fingerprint> {
        let m = std::fs::metadata(path)?;
        let ns = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        Ok(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reading {} for the snapshot key", path.display())]
pub struct KeyError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// A snapshot on disk as a restore needs it: its directory (`state`, `memory`, and the
/// manifest `state.manifest.json` the `vmm` writes last), and what the manifest says.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: SnapshotManifest,
}

impl Snapshot {
    /// The state file of the snapshot in `dir`.
    pub fn state_path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// The guest memory file of the snapshot in `dir`.
    pub fn memory_path(dir: &Path) -> PathBuf {
        dir.join(MEMORY_FILE)
    }

    /// The snapshot in `dir`: `None` when there is none (no manifest), an error when its
    /// manifest cannot be read or its memory file does not match the manifest's CRC-32 (a
    /// snapshot to discard). The memory file is read whole the first time this process opens
    /// it (and again if it changes on disk), never on later opens.
    pub fn open(dir: &Path) -> Result<Option<Snapshot>, OpenError> {
        let Some(snapshot) = Self::read(dir)? else {
            return Ok(None);
        };
        let memory = snapshot.memory();
        let fingerprint = Fingerprint::of(&memory).ok();
        if fingerprint.is_none() || verified(&memory) != fingerprint {
            vmm::snapshot::verify_memory(&snapshot.manifest, &memory)?;
            remember_verified(memory, fingerprint);
        }
        Ok(Some(snapshot))
    }

    /// The snapshot this process has just had written into `dir`: its memory's CRC-32 was
    /// computed from the file as it was written, so it is not read again.
    pub fn open_written(dir: &Path) -> Result<Option<Snapshot>, OpenError> {
        let snapshot = Self::read(dir)?;
        if let Some(snapshot) = &snapshot {
            let memory = snapshot.memory();
            let fingerprint = Fingerprint::of(&memory).ok();
            remember_verified(memory, fingerprint);
        }
        Ok(snapshot)
    }

    fn read(dir: &Path) -> Result<Option<Snapshot>, ManifestError> {
        let path = manifest_path(&Self::state_path(dir));
        if !path.exists() {
            return Ok(None);
        }
        let manifest = SnapshotManifest::read(&path)?;
        Ok(Some(Snapshot {
            dir: dir.to_owned(),
            manifest,
        }))
    }

    pub fn state(&self) -> PathBuf {
        Self::state_path(&self.dir)
    }

    pub fn memory(&self) -> PathBuf {
        Self::memory_path(&self.dir)
    }

    /// Where its working set is kept (`memory.ws`): the guest pages the first invoke after a
    /// restore touched, which later restores load before the guest runs.
    pub fn working_set(&self) -> PathBuf {
        self.dir.join(vmm::snapshot::working_set::FILE_NAME)
    }
}

/// Why a snapshot on disk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Memory(#[from] vmm::snapshot::SnapshotError),
}

/// Memory files found to match their manifest, with their identity when checked: a fact about
/// files, shared by every function of the process, so that each file is read whole once.
static VERIFIED: Mutex<Vec<(PathBuf, Fingerprint)>> = Mutex::new(Vec::new());

fn verified_files() -> std::sync::MutexGuard<'static, Vec<(PathBuf, Fingerprint)>> {
    VERIFIED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The identity `memory` had when it was found to match its manifest.
fn verified(memory: &Path) -> Option<Fingerprint> {
    let files = verified_files();
    files
        .iter()
        .find(|(p, _)| p == memory)
        .map(|(_, f)| f.clone())
}

fn remember_verified(memory: PathBuf, fingerprint: Option<Fingerprint>) {
    let mut files = verified_files();
    files.retain(|(p, _)| *p != memory);
    if let Some(fingerprint) = fingerprint {
        files.push((memory, fingerprint));
    }
}

/// One function's snapshots.
pub struct Snapshots {
    root: PathBuf,
    /// The kernel, the image and function.json.
    files: Vec<PathBuf>,
    /// What else the guest was made with: command line and memory size.
    settings: String,
    cached: Mutex<Option<(Vec<Fingerprint>, String)>>,
    /// Whether restores record and load working sets (`--no-working-set` turns them off).
    working_sets: bool,
}

impl Snapshots {
    pub fn new(root: PathBuf, files: Vec<PathBuf>, settings: String) -> Snapshots {
        Snapshots {
            root,
            files,
            settings,
            cached: Mutex::new(None),
            working_sets: true,
        }
    }

    /// The same, with working sets off: every restore loads guest memory lazily, and none is
    /// recorded.
    pub fn without_working_sets(mut self) -> Snapshots {
        self.working_sets = false;
        self
    }

    /// Whether restores record and load working sets.
    pub fn working_sets(&self) -> bool {
        self.working_sets
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the snapshot made from the inputs as they are now (it may not exist).
    pub fn current(&self) -> Result<PathBuf, KeyError> {
        Ok(self.root.join(self.key()?))
    }

    fn key(&self) -> Result<String, KeyError> {
        let fingerprints = self
            .files
            .iter()
            .map(|path| Fingerprint::of(path).map_err(|source| key_error(path, source)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, key)) = cached.as_ref() {
            if *seen == fingerprints {
                return Ok(key.clone());
            }
        }
        let key = self.hash()?;
        *cached = Some((fingerprints, key.clone()));
        Ok(key)
    }

    fn hash(&self) -> Result<String, KeyError> {
        let mut hasher = Sha256::new();
        hasher.update(b"lambda-microvm snapshot\0");
        hasher.update(FORMAT_VERSION.to_le_bytes());
        let mut buffer = vec![0u8; 1 << 16];
        for path in &self.files {
            let mut file = File::open(path).map_err(|e| key_error(path, e))?;
            let len = file.metadata().map_err(|e| key_error(path, e))?.len();
            // The length first, so that no two lists of files hash alike.
            hasher.update(len.to_le_bytes());
            let mut read = 0u64;
            loop {
                let n = match file.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(key_error(path, e)),
                };
                hasher.update(&buffer[..n]);
                read += n as u64;
            }
            if read != len {
                let changed = io::Error::other("the file changed while it was read");
                return Err(key_error(path, changed));
            }
        }
        hasher.update((self.settings.len() as u64).to_le_bytes());
        hasher.update(self.settings.as_bytes());
        let digest = hasher.finalize();
        Ok(digest
            .iter()
            .take(KEY_HEX_LEN / 2)
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Removes the snapshots in the root other than `keep`: they were made from other inputs.
    /// Returns how many went.
    pub fn remove_stale(&self, keep: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let stale = entries.flatten().map(|e| e.path()).filter(|path| {
            path != keep
                && path.is_dir()
                && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.len() == KEY_HEX_LEN && n.bytes().all(|b| b.is_ascii_hexdigit())
                })
        });
        stale
            .filter(|path| std::fs::remove_dir_all(path).is_ok())
            .count()
    }
}

fn key_error(path: &Path, source: io::Error) -> KeyError {
    KeyError {
        path: path.to_owned(),
        source,
    }
}

/// Where `function`'s snapshots live and what they are keyed to: the kernel, the image (which
/// holds the function.json the guest reads), the guest-relevant host configuration and the
/// VM's command line and memory. How many environments the host runs is not part of it.
pub fn for_function(
    spec: &crate::guest::GuestSpec,
    function: &proto::FunctionConfig,
    root: PathBuf,
) -> Snapshots {
    let mut guest_relevant = function.clone();
    guest_relevant.reserved_concurrency = None;
    guest_relevant.provisioned_concurrency = 0;
    // Whether the guest has a network device depends on the host too (--no-network, a host
    // that cannot), not on function.json alone.
    let settings = format!(
        "{}\n{} mem_mib={} network={}",
        String::from_utf8_lossy(&guest_relevant.to_canonical_json()),
        spec.boot_args(),
        spec.mem_size_mib,
        spec.network.is_some()
    );
    let inputs = vec![spec.kernel.clone(), spec.rootfs.path().to_owned()];
    Snapshots::new(root, inputs, settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Inputs {
        dir: tempfile::TempDir,
    }

    impl Inputs {
        fn new() -> Inputs {
            let inputs = Inputs {
                dir: tempfile::tempdir().unwrap(),
            };
            for name in ["vmlinux", "rootfs.ext4", "function.json"] {
                inputs.write(name, name);
            }
            inputs
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, contents: &str) {
            std::fs::write(self.path(name), contents).unwrap();
        }

        fn snapshots(&self, settings: &str) -> Snapshots {
            let files = ["vmlinux", "rootfs.ext4", "function.json"].map(|n| self.path(n));
            Snapshots::new(self.path("snapshots"), files.into(), settings.into())
        }
    }

    #[test]
    fn the_key_changes_with_every_input_and_only_then() {
        let inputs = Inputs::new();
        let snapshots = inputs.snapshots("console=ttyS0 128");
        let first = snapshots.current().unwrap();
        assert_eq!(first.parent(), Some(inputs.path("snapshots").as_path()));
        assert_eq!(first.file_name().unwrap().len(), KEY_HEX_LEN);
        assert_eq!(snapshots.current().unwrap(), first);
        // The same inputs in another process (no cache) give the same key.
        assert_eq!(
            inputs.snapshots("console=ttyS0 128").current().unwrap(),
            first
        );
        assert_ne!(
            inputs.snapshots("console=ttyS0 256").current().unwrap(),
            first
        );

        let mut seen = vec![first];
        for name in ["vmlinux", "rootfs.ext4", "function.json"] {
            inputs.write(name, &format!("{name} rebuilt"));
            let key = snapshots.current().unwrap();
            assert!(!seen.contains(&key), "{name} changed but the key did not");
            seen.push(key);
        }
    }

    #[test]
    fn a_missing_input_is_named() {
        let inputs = Inputs::new();
        std::fs::remove_file(inputs.path("rootfs.ext4")).unwrap();
        let error = inputs.snapshots("").current().unwrap_err();
        assert!(error.to_string().contains("rootfs.ext4"), "{error}");
    }

    #[test]
    fn stale_snapshots_go_and_nothing_else() {
        let inputs = Inputs::new();
        let snapshots = inputs.snapshots("");
        let current = snapshots.current().unwrap();
        let stale = inputs
            .path("snapshots")
            .join("0123456789abcdef0123456789abcdef");
        let other = inputs.path("snapshots").join("notes");
        for dir in [&current, &stale, &other] {
            std::fs::create_dir_all(dir).unwrap();
        }
        assert_eq!(snapshots.remove_stale(&current), 1);
        assert!(current.exists() && other.exists() && !stale.exists());
    }
}
