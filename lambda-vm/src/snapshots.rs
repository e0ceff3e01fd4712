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

/// Where a function's snapshots are shared with other hosts (`lambda-vm --cluster`): looked up
/// before one is taken here, offered once one is.
pub trait SnapshotShare: Send + Sync {
    /// Fetches the shared snapshot `key` into the empty directory `staging`; `Ok(false)`: none
    /// is shared. Blocks until done.
    fn fetch(&self, key: &str, staging: &Path) -> Result<bool, String>;
    /// Offers the snapshot `key` just taken into `dir` to the other hosts, in the background;
    /// `done` gets what became of it (a line for the log).
    fn publish(&self, key: &str, dir: &Path, done: Box<dyn FnOnce(Result<String, String>) + Send>);
}

/// The files of a snapshot directory, as another host needs them.
pub const SNAPSHOT_FILES: [&str; 3] = [STATE_FILE, MEMORY_FILE, "state.manifest.json"];

/// One function's snapshots.
pub struct Snapshots {
    root: PathBuf,
    /// The kernel, the image and function.json.
    files: Vec<PathBuf>,
    /// What else the guest was made with: command line and memory size.
    settings: String,
    cached: Mutex<Option<(Vec<Fingerprint>, String)>>,
    share: Option<std::sync::Arc<dyn SnapshotShare>>,
    /// The shared snapshots this process tried to fetch: each is fetched once at most.
    fetched: Mutex<Vec<String>>,
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
            share: None,
            fetched: Mutex::new(Vec::new()),
            working_sets: true,
        }
    }

    /// The same snapshots, shared with other hosts through `share`.
    pub fn shared_through(mut self, share: std::sync::Arc<dyn SnapshotShare>) -> Snapshots {
        self.share = Some(share);
        self
    }

    /// The snapshot `dir` (the current one, absent here) as another host took it: fetched
    /// into a staging directory, its manifest read, its memory checked against the manifest's
    /// CRC-32 and its drives found to be this host's files, then given its place in one
    /// rename. `Ok(None)`: none is shared (or this process tried it once already); `Err`: it
    /// cannot be used here, and why.
    pub fn fetch_shared(&self, dir: &Path) -> Result<Option<Snapshot>, String> {
        let (Some(share), Some(key)) = (&self.share, dir.file_name().and_then(|n| n.to_str()))
        else {
            return Ok(None);
        };
        {
            let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
            if fetched.iter().any(|k| k == key) {
                return Ok(None);
            }
            fetched.push(key.to_owned());
        }
        let staging =
            vmm::snapshot::dir::stage(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let checked = (|| {
            if !share.fetch(key, &staging)? {
                return Ok(false);
            }
            let manifest = SnapshotManifest::read(&manifest_path(&Snapshot::state_path(&staging)))
                .map_err(|e| logging::Chain(&e).to_string())?;
            if manifest.mem_crc32.is_none() {
                return Err("its manifest has no CRC-32 of the memory file to check".into());
            }
            for drive in &manifest.drives {
                if !self.files.contains(&drive.path_on_host) {
                    return Err(format!(
                        "its drive {} is not this host's image (the hosts keep images at different paths)",
                        drive.path_on_host.display()
                    ));
                }
            }
            vmm::snapshot::verify_memory(&manifest, &Snapshot::memory_path(&staging))
                .map_err(|e| logging::Chain(&e).to_string())?;
            vmm::snapshot::dir::publish(&staging, dir).map_err(|e| e.to_string())?;
            Ok(true)
        })();
        match checked {
            Ok(true) => match Snapshot::open_written(dir) {
                Ok(Some(snapshot)) => Ok(Some(snapshot)),
                Ok(None) => Err("no manifest".into()),
                Err(e) => Err(logging::Chain(&e).to_string()),
            },
            Ok(false) => {
                vmm::snapshot::dir::discard(&staging);
                Ok(None)
            }
            Err(why) => {
                vmm::snapshot::dir::discard(&staging);
                Err(why)
            }
        }
    }

    /// Offers the snapshot just taken into `dir` to other hosts, if they share them.
    pub fn publish_shared(&self, dir: &Path, done: Box<dyn FnOnce(Result<String, String>) + Send>) {
        if let (Some(share), Some(key)) = (&self.share, dir.file_name().and_then(|n| n.to_str())) {
            share.publish(key, dir, done);
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

    /// Another host's snapshot as a fake cluster hands it over: these files, once each call.
    struct Published {
        files: Vec<(&'static str, Vec<u8>)>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl SnapshotShare for Published {
        fn fetch(&self, _key: &str, staging: &Path) -> Result<bool, String> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for (name, bytes) in &self.files {
                std::fs::write(staging.join(name), bytes).map_err(|e| e.to_string())?;
            }
            Ok(!self.files.is_empty())
        }

        fn publish(&self, _: &str, _: &Path, _: Box<dyn FnOnce(Result<String, String>) + Send>) {}
    }

    /// The files of a snapshot whose drive is `drive`, its memory `memory` with the CRC-32 of
    /// `crc_of` in the manifest (`None`: no CRC-32).
    fn published(drive: &Path, memory: &[u8], crc_of: Option<&[u8]>) -> Published {
        let dir = tempfile::tempdir().unwrap();
        let crc = crc_of.map(|bytes| {
            let path = dir.path().join("m");
            std::fs::write(&path, bytes).unwrap();
            vmm::snapshot::memory_crc32(&path).unwrap()
        });
        let manifest = SnapshotManifest {
            format: vmm::snapshot::manifest::MANIFEST_FORMAT.into(),
            vmm_version: "test".into(),
            state_format_version: FORMAT_VERSION,
            snapshot_path: STATE_FILE.into(),
            mem_file_path: MEMORY_FILE.into(),
            state_crc32: 0,
            mem_crc32: crc,
            mem_size_mib: 1,
            vcpu_count: 1,
            drives: vec![vmm::snapshot::manifest::ManifestDrive {
                drive_id: "rootfs".into(),
                path_on_host: drive.to_owned(),
                is_read_only: true,
            }],
            vsock: None,
            entropy: false,
            network_interfaces: Vec::new(),
        };
        Published {
            files: vec![
                (STATE_FILE, b"state".to_vec()),
                (MEMORY_FILE, memory.to_vec()),
                (SNAPSHOT_FILES[2], serde_json::to_vec(&manifest).unwrap()),
            ],
            calls: Default::default(),
        }
    }

    fn shared(inputs: &Inputs, share: Published) -> (Snapshots, std::sync::Arc<Published>) {
        let share = std::sync::Arc::new(share);
        let snapshots = inputs.snapshots("").shared_through(share.clone());
        (snapshots, share)
    }

    /// Nothing but `dir` itself (if kept) in its parent: no staging directory left.
    fn only(dir: &Path, kept: bool) {
        let names: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let expected = if kept {
            vec![dir.to_owned()]
        } else {
            Vec::new()
        };
        assert_eq!(names, expected);
    }

    #[test]
    fn the_snapshot_file_names_are_the_vmms() {
        let manifest = manifest_path(&Snapshot::state_path(Path::new("dir")));
        assert_eq!(
            SNAPSHOT_FILES.map(|n| Path::new("dir").join(n))[..2],
            [
                Snapshot::state_path(Path::new("dir")),
                Snapshot::memory_path(Path::new("dir"))
            ]
        );
        assert_eq!(Path::new("dir").join(SNAPSHOT_FILES[2]), manifest);
    }

    #[test]
    fn a_shared_snapshot_is_checked_then_put_in_place_once() {
        let inputs = Inputs::new();
        let memory = b"guest memory".to_vec();
        let rootfs = inputs.path("rootfs.ext4");
        let (snapshots, share) = shared(&inputs, published(&rootfs, &memory, Some(&memory)));
        let dir = snapshots.current().unwrap();
        let snapshot = snapshots.fetch_shared(&dir).unwrap().unwrap();
        assert_eq!(snapshot.dir, dir);
        assert_eq!(std::fs::read(snapshot.memory()).unwrap(), memory);
        only(&dir, true);
        // Each key is fetched once per process.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(snapshots.fetch_shared(&dir).unwrap().is_none());
        assert_eq!(share.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_damaged_or_foreign_shared_snapshot_is_refused_and_leaves_nothing() {
        let inputs = Inputs::new();
        let rootfs = inputs.path("rootfs.ext4");
        let memory = b"guest memory".to_vec();
        let cases = [
            (published(&rootfs, b"guest memorx", Some(&memory)), "CRC"),
            (
                published(&inputs.path("elsewhere.ext4"), &memory, Some(&memory)),
                "not this host's image",
            ),
            (published(&rootfs, &memory, None), "no CRC-32"),
        ];
        for (share, why) in cases {
            let (snapshots, _) = shared(&inputs, share);
            let dir = snapshots.current().unwrap();
            let error = snapshots.fetch_shared(&dir).unwrap_err();
            assert!(error.contains(why), "{error}");
            only(&dir, false);
        }
        let none = Published {
            files: Vec::new(),
            calls: Default::default(),
        };
        let (snapshots, _) = shared(&inputs, none);
        let dir = snapshots.current().unwrap();
        assert!(snapshots.fetch_shared(&dir).unwrap().is_none());
        only(&dir, false);
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
