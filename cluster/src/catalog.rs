//! Functions deployed to the cluster rather than to a host: `function.json` and the function's
//! artifacts (a zip package for local mode, an ext4 or cpio image for microVMs) go into the
//! cluster, each artifact once, named by its SHA-256 in the object store, and the function's
//! [`FunctionRecord`] into the functions bucket. Any host then serves the function: it fetches
//! the artifact on first use and checks its digest on every fetch ([`fetch_artifact`]).

use crate::connect::Cluster;
use crate::objects;
use async_nats::jetstream::{kv, object_store};
use futures_util::StreamExt;
use proto::function_config::FunctionConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What can run a function, by the file it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A Lambda deployment package with `bootstrap` at its root: local mode.
    Zip,
    /// An ext4 image from `scripts/build-rootfs.sh --ext4`: a microVM's root drive.
    Ext4,
    /// An initramfs from `scripts/build-rootfs.sh`: a microVM.
    Cpio,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 3] = [ArtifactKind::Zip, ArtifactKind::Ext4, ArtifactKind::Cpio];

    /// Its file extension, and its name in host records.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Zip => "zip",
            ArtifactKind::Ext4 => "ext4",
            ArtifactKind::Cpio => "cpio",
        }
    }

    fn of(path: &Path) -> Option<ArtifactKind> {
        let extension = path.extension()?.to_str()?;
        ArtifactKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == extension)
    }
}

/// One artifact of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// A deployed function: its configuration and what runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub config: FunctionConfig,
    pub artifacts: Vec<Artifact>,
    pub deployed_ms: u64,
    /// The bucket's revision of this record (not stored: the bucket says).
    #[serde(skip)]
    pub revision: u64,
}

impl FunctionRecord {
    pub fn name(&self) -> &str {
        &self.config.function_name
    }

    /// Its artifact of `kind`, if it has one.
    pub fn artifact(&self, kind: ArtifactKind) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }

    /// Whether a host running `kinds` can run it.
    pub fn runs_on(&self, kinds: &[String]) -> bool {
        self.artifacts
            .iter()
            .any(|a| kinds.iter().any(|k| k == a.kind.as_str()))
    }

    fn decode(entry: &kv::Entry) -> Result<FunctionRecord, serde_json::Error> {
        let mut record: FunctionRecord = serde_json::from_slice(&entry.value)?;
        record.revision = entry.revision;
        Ok(record)
    }
}

/// Lambda's limit on a package's unzipped size.
pub const MAX_UNZIPPED: u64 = 250 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Config {
        #[source]
        source: proto::function_config::ConfigError,
        path: PathBuf,
    },
    #[error("{}: {reason}", path.display())]
    Package { path: PathBuf, reason: String },
    #[error("{}: no artifact to run (a .zip package for local mode, an .ext4 or .cpio image for microVMs)", .0.display())]
    NoArtifact(PathBuf),
    #[error("{}: more than one .{} file", .0.display(), .1.as_str())]
    TwoArtifacts(PathBuf, ArtifactKind),
    #[error("storing {what} in the cluster: {detail}")]
    Store { what: String, detail: String },
}

/// Deploys the function at `source` to the cluster: a directory holding `function.json` and
/// its artifacts (`.zip`, `.ext4`, `.cpio`, one of each kind at most), or a package (`.zip`)
/// carrying its own `function.json` (as `scripts/package-lambda.sh` writes them). Returns the
/// record now in the functions bucket.
pub async fn deploy(cluster: &Cluster, source: &Path) -> Result<FunctionRecord, DeployError> {
    let read = |path: &Path, source| DeployError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(source).map_err(|e| read(source, e))?;
    let (config, files) = if metadata.is_dir() {
        let config_path = source.join("function.json");
        let config = FunctionConfig::load(&config_path).map_err(|source| DeployError::Config {
            source,
            path: config_path.clone(),
        })?;
        let mut files: Vec<(ArtifactKind, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(source).map_err(|e| read(source, e))?;
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let Some(kind) = ArtifactKind::of(&path) else {
                continue;
            };
            if files.iter().any(|(k, _)| *k == kind) {
                return Err(DeployError::TwoArtifacts(source.to_owned(), kind));
            }
            files.push((kind, path));
        }
        (config, files)
    } else if ArtifactKind::of(source) == Some(ArtifactKind::Zip) {
        let config = {
            let path = source.to_owned();
            tokio::task::spawn_blocking(move || config_in_package(&path))
                .await
                .map_err(|e| DeployError::Package {
                    path: source.to_owned(),
                    reason: e.to_string(),
                })??
        };
        (config, vec![(ArtifactKind::Zip, source.to_owned())])
    } else {
        return Err(DeployError::NoArtifact(source.to_owned()));
    };
    if files.is_empty() {
        return Err(DeployError::NoArtifact(source.to_owned()));
    }
    let mut artifacts = Vec::new();
    for (kind, path) in files {
        let checked = path.clone();
        let (sha256, size) = tokio::task::spawn_blocking(move || {
            if kind == ArtifactKind::Zip {
                check_package(&checked)?;
            }
            digest_of(&checked)
        })
        .await
        .map_err(|e| DeployError::Package {
            path: path.clone(),
            reason: e.to_string(),
        })??;
        objects::upload(&cluster.artifacts, &path, &sha256, size).await?;
        artifacts.push(Artifact { kind, sha256, size });
    }
    let mut record = FunctionRecord {
        config,
        artifacts,
        deployed_ms: proto::time::epoch_ms(),
        revision: 0,
    };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    record.revision = cluster
        .functions
        .put(record.name(), value.into())
        .await
        .map_err(|e| DeployError::Store {
            what: format!("the record of {}", record.name()),
            detail: e.to_string(),
        })?;
    Ok(record)
}

/// The SHA-256 (hex) and size of a file.
pub(crate) fn digest_of(path: &Path) -> Result<(String, u64), DeployError> {
    let read = |source| DeployError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an artifact could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching artifact sha256:{sha256} from the cluster: {detail}")]
    Store { sha256: String, detail: String },
    #[error("artifact sha256:{expected} arrived with digest sha256:{actual}: refused")]
    Digest { expected: String, actual: String },
    #[error("writing artifact sha256:{sha256} to {}: {source}", path.display())]
    Write {
        sha256: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fetches `artifact` into the file `dest` (through a temporary file, so `dest` holds only a
/// whole, checked artifact): its SHA-256 is checked against the record's before it is kept.
pub async fn fetch_artifact(
    store: &object_store::ObjectStore,
    artifact: &Artifact,
    dest: &Path,
) -> Result<(), FetchError> {
    objects::fetch(store, &artifact.sha256, artifact.size, dest).await
}

fn package_error(path: &Path, reason: impl std::fmt::Display) -> DeployError {
    DeployError::Package {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The `function.json` a package carries.
fn config_in_package(path: &Path) -> Result<FunctionConfig, DeployError> {
    let file = std::fs::File::open(path).map_err(|source| DeployError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| package_error(path, e))?;
    let mut entry = archive.by_name("function.json").map_err(|_| {
        package_error(
            path,
            "no function.json in the package: deploy a directory holding function.json and the package",
        )
    })?;
    let mut bytes = Vec::new();
    entry
        .by_ref()
        .take(1024 * 1024)
        .read_to_end(&mut bytes)
        .map_err(|e| package_error(path, e))?;
    FunctionConfig::from_json(&bytes).map_err(|source| DeployError::Config {
        source,
        path: path.join("function.json"),
    })
}

/// Checks a package before it is stored: a zip whose entries stay inside it, with a
/// `bootstrap` file, no links, and Lambda's unzipped size limit.
fn check_package(path: &Path) -> Result<(), DeployError> {
    let file = std::fs::File::open(path).map_err(|source| DeployError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| package_error(path, e))?;
    let mut total = 0u64;
    let mut bootstrap = false;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| package_error(path, e))?;
        let Some(name) = entry.enclosed_name() else {
            return Err(package_error(
                path,
                format!("entry {:?} leaves the package", entry.name()),
            ));
        };
        if entry.is_symlink() {
            return Err(package_error(
                path,
                format!(
                    "entry {:?} is a symbolic link (not supported)",
                    entry.name()
                ),
            ));
        }
        total = total.saturating_add(entry.size());
        bootstrap |= entry.is_file() && name == Path::new("bootstrap");
    }
    if total > MAX_UNZIPPED {
        return Err(package_error(
            path,
            format!("{total} bytes unzipped; Lambda's limit is {MAX_UNZIPPED}"),
        ));
    }
    if !bootstrap {
        return Err(package_error(
            path,
            "no `bootstrap` at the package's root (the runtime a provided.al2023 function starts)",
        ));
    }
    Ok(())
}

/// Unpacks the package at `zip` into the new directory `dir` (through a temporary directory,
/// so `dir` holds only a whole package), with each file's permission bits; links, entries
/// leaving the directory and more than Lambda's unzipped limit are refused.
pub fn unpack_package(zip_path: &Path, dir: &Path) -> Result<(), DeployError> {
    check_package(zip_path)?;
    let io = |path: &Path, source| DeployError::Read {
        path: path.to_owned(),
        source,
    };
    let temp = dir.with_extension(format!("unpack-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let file = std::fs::File::open(zip_path).map_err(|e| io(zip_path, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| package_error(zip_path, e))?;
        std::fs::create_dir_all(&temp).map_err(|e| io(&temp, e))?;
        let mut written = 0u64;
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| package_error(zip_path, e))?;
            let Some(name) = entry.enclosed_name() else {
                return Err(package_error(zip_path, "an entry leaves the package"));
            };
            let target = temp.join(name);
            if entry.is_dir() {
                std::fs::create_dir_all(&target).map_err(|e| io(&target, e))?;
                continue;
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            let mode = entry.unix_mode().unwrap_or(0o644) & 0o755;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_for_unix(mode)
                .open(&target)
                .map_err(|e| io(&target, e))?;
            let limit = MAX_UNZIPPED.saturating_sub(written) + 1;
            let copied = std::io::copy(&mut entry.by_ref().take(limit), &mut out)
                .map_err(|e| io(&target, e))?;
            written += copied;
            if written > MAX_UNZIPPED {
                return Err(package_error(zip_path, "more than Lambda's unzipped limit"));
            }
        }
        std::fs::rename(&temp, dir).map_err(|e| io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// `OpenOptions::mode` on Unix, named for what it is for here.
trait ModeForUnix {
    fn mode_for_unix(&mut self, mode: u32) -> &mut Self;
}

impl ModeForUnix for std::fs::OpenOptions {
    fn mode_for_unix(&mut self, mode: u32) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, mode)
    }
}

/// Every deployed function, as this host last received it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Catalog {
    functions: Arc<Mutex<HashMap<String, Arc<FunctionRecord>>>>,
    /// Counts the changes, so a view made from the records knows when it is old.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Catalog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<FunctionRecord>>> {
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<FunctionRecord>> {
        self.lock().get(name).cloned()
    }

    /// Goes up with every change of the records.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every record.
    pub fn records(&self) -> Vec<Arc<FunctionRecord>> {
        self.lock().values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    fn apply(&self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => {
                if let Ok(record) = FunctionRecord::decode(entry) {
                    self.lock().insert(entry.key.clone(), Arc::new(record));
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                self.lock().remove(&entry.key);
            }
        }
        self.changed();
    }

    /// Replaces what this view holds with the bucket's every record.
    pub async fn reload(&self, bucket: &kv::Store) -> Result<(), String> {
        let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
        let mut functions = HashMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            let Some(entry) = bucket.entry(&key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let record =
                FunctionRecord::decode(&entry).map_err(|e| format!("the record of {key}: {e}"))?;
            functions.insert(key, Arc::new(record));
        }
        *self.lock() = functions;
        self.changed();
        Ok(())
    }

    /// The record of `name` at `revision` or later: from this view, else read from the bucket
    /// now (this host's view may lag a deploy by a moment).
    pub async fn at_least(
        &self,
        bucket: &kv::Store,
        name: &str,
        revision: u64,
    ) -> Option<Arc<FunctionRecord>> {
        if let Some(record) = self.get(name).filter(|r| r.revision >= revision) {
            return Some(record);
        }
        let entry = bucket.entry(name).await.ok().flatten()?;
        self.apply(&entry);
        self.get(name).filter(|r| r.revision >= revision)
    }
}

/// Keeps `catalog` up to date from the functions bucket: read whole, then watched; read whole
/// again and re-watched when the watch ends or the connection came back (`reconnected`), since
/// a watch may miss what changed while this host was away.
pub async fn watch(
    bucket: kv::Store,
    catalog: Catalog,
    reconnected: Arc<tokio::sync::Notify>,
    log: impl Fn(&str),
) {
    loop {
        if let Err(e) = catalog.reload(&bucket).await {
            log(&format!("reading the functions: {e}"));
        }
        match bucket.watch_all().await {
            Ok(mut changes) => loop {
                tokio::select! {
                    change = changes.next() => match change {
                        Some(Ok(entry)) => catalog.apply(&entry),
                        Some(Err(e)) => {
                            log(&format!("watching the functions: {e}"));
                            break;
                        }
                        None => break,
                    },
                    () = reconnected.notified() => break,
                }
            },
            Err(e) => log(&format!("watching the functions: {e}")),
        }
        tokio::time::sleep(crate::registry::HEARTBEAT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn package(dir: &Path, entries: &[(&str, &[u8], u32)]) -> PathBuf {
        let path = dir.join("package.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, bytes, mode) in entries {
            zip.start_file(*name, SimpleFileOptions::default().unix_permissions(*mode))
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn a_package_unpacks_with_its_modes() {
        let dir = tempfile::tempdir().unwrap();
        let zip = package(
            dir.path(),
            &[
                ("bootstrap", b"#!/bin/sh\n", 0o755),
                ("lib/data.txt", b"data", 0o644),
            ],
        );
        let root = dir.path().join("root");
        unpack_package(&zip, &root).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(root.join("bootstrap"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read(root.join("lib/data.txt")).unwrap(), b"data");
    }

    #[test]
    fn bad_packages_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let no_bootstrap = package(dir.path(), &[("handler", b"x", 0o755)]);
        let root = dir.path().join("root");
        let error = unpack_package(&no_bootstrap, &root).unwrap_err();
        assert!(error.to_string().contains("no `bootstrap`"), "{error}");
        assert!(!root.exists());
        let escaping = package(
            dir.path(),
            &[("bootstrap", b"x", 0o755), ("../outside", b"x", 0o644)],
        );
        let error = unpack_package(&escaping, &root).unwrap_err();
        assert!(error.to_string().contains("leaves the package"), "{error}");
        assert!(!dir.path().join("outside").exists());
        std::fs::write(dir.path().join("not.zip"), b"not a zip").unwrap();
        assert!(unpack_package(&dir.path().join("not.zip"), &root).is_err());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("unpack"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
