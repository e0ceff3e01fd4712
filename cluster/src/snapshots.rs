//! SnapStart snapshots shared between hosts. A host that took a function's snapshot publishes
//! its files as objects of the artifact store (named by SHA-256, as images are) and a
//! [`SnapshotRecord`] in the snapshots bucket, under the host's own snapshot key (format,
//! kernel, image, configuration, memory) and the CPU it was taken on ([`HostCpu`]): a guest
//! restored on another CPU model may find instructions missing. A host about to boot to take
//! the same snapshot fetches it instead ([`SharedSnapshots::fetch_into`]), each file's digest
//! checked; what the files mean (the manifest, the memory's CRC-32) is the host's to check.

use crate::catalog::{self, FetchError};
use crate::connect::Cluster;
use crate::names;
use crate::objects;
use async_nats::jetstream::{kv, object_store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The CPU a snapshot was taken on, as the host's `/proc/cpuinfo` describes its first CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCpu {
    /// Vendor and model name, for people (`GenuineIntel Intel(R) Xeon(R) ...`).
    pub model: String,
    /// 16 hex digits of SHA-256 over vendor, family, model, stepping, model name and feature
    /// flags: two hosts with the same id expose the same instructions to a guest.
    pub id: String,
}

impl HostCpu {
    /// This machine's CPU (an empty description where `/proc/cpuinfo` cannot be read: such
    /// hosts still share snapshots among themselves only).
    pub fn detect() -> HostCpu {
        HostCpu::from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    /// The CPU described by the first processor of a `/proc/cpuinfo` text.
    pub fn from_cpuinfo(text: &str) -> HostCpu {
        const FIELDS: [&str; 6] = [
            "vendor_id",
            "cpu family",
            "model",
            "stepping",
            "model name",
            "flags",
        ];
        let first = text.split("\n\n").next().unwrap_or_default();
        let field = |name: &str| {
            first
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(key, _)| key.trim() == name)
                .map(|(_, value)| value.trim().to_owned())
                .unwrap_or_default()
        };
        let mut hasher = Sha256::new();
        for name in FIELDS {
            let value = field(name);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
        let id = hasher
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let model = format!("{} {}", field("vendor_id"), field("model name"))
            .trim()
            .to_owned();
        HostCpu { model, id }
    }
}

/// One file of a published snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Its name in the snapshot directory.
    pub name: String,
    /// SHA-256 of its bytes, lowercase hex: its object in the artifact store.
    pub sha256: String,
    pub size: u64,
}

/// A published snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub function: String,
    /// The taking host's snapshot key.
    pub key: String,
    /// [`HostCpu::id`] and [`HostCpu::model`] of the host it was taken on.
    pub cpu_id: String,
    pub cpu_model: String,
    pub files: Vec<SnapshotFile>,
    /// The host that took it.
    pub host: String,
    pub published_ms: u64,
}

/// Why a snapshot could not be published or fetched.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the snapshots bucket, key {key}: {detail}")]
    Bucket { key: String, detail: String },
    #[error("the published snapshot {key} is malformed: {detail}")]
    Record { key: String, detail: String },
    #[error("storing {} in the cluster: {detail}", path.display())]
    Store { path: PathBuf, detail: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// The snapshots bucket and object store, as one host uses them.
#[derive(Clone)]
pub struct SharedSnapshots {
    bucket: kv::Store,
    store: object_store::ObjectStore,
    cpu: HostCpu,
    host: String,
}

impl SharedSnapshots {
    /// Publishing and fetching as host `host`, on this machine's CPU.
    pub fn new(cluster: &Cluster, host: &str) -> SharedSnapshots {
        SharedSnapshots {
            bucket: cluster.snapshots.clone(),
            store: cluster.artifacts.clone(),
            cpu: HostCpu::detect(),
            host: host.to_owned(),
        }
    }

    /// This host's CPU.
    pub fn cpu(&self) -> &HostCpu {
        &self.cpu
    }

    /// Publishes `function`'s snapshot `key`: the files `names` of `dir` (the record last, so
    /// a record names only stored files).
    pub async fn publish(
        &self,
        function: &str,
        key: &str,
        dir: &Path,
        names: &[&str],
    ) -> Result<SnapshotRecord, ShareError> {
        let mut files = Vec::new();
        for name in names {
            let path = dir.join(name);
            let digested = path.clone();
            let (sha256, size) = tokio::task::spawn_blocking(move || catalog::digest_of(&digested))
                .await
                .map_err(|e| ShareError::Store {
                    path: path.clone(),
                    detail: e.to_string(),
                })?
                .map_err(|e| ShareError::Store {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            objects::upload(&self.store, &path, &sha256, size)
                .await
                .map_err(|e| ShareError::Store {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            files.push(SnapshotFile {
                name: (*name).to_owned(),
                sha256,
                size,
            });
        }
        let record = SnapshotRecord {
            function: function.to_owned(),
            key: key.to_owned(),
            cpu_id: self.cpu.id.clone(),
            cpu_model: self.cpu.model.clone(),
            files,
            host: self.host.clone(),
            published_ms: proto::time::epoch_ms(),
        };
        let bucket_key = names::snapshot_key(function, key, &self.cpu.id);
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.bucket
            .put(&bucket_key, value.into())
            .await
            .map_err(|e| ShareError::Bucket {
                key: bucket_key,
                detail: e.to_string(),
            })?;
        Ok(record)
    }

    /// The record of `function`'s snapshot `key` taken on this host's CPU model, if one was
    /// published.
    pub async fn find(
        &self,
        function: &str,
        key: &str,
    ) -> Result<Option<SnapshotRecord>, ShareError> {
        let bucket_key = names::snapshot_key(function, key, &self.cpu.id);
        let entry = self
            .bucket
            .entry(&bucket_key)
            .await
            .map_err(|e| ShareError::Bucket {
                key: bucket_key.clone(),
                detail: e.to_string(),
            })?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let malformed = |detail: String| ShareError::Record {
            key: bucket_key.clone(),
            detail,
        };
        let record: SnapshotRecord =
            serde_json::from_slice(&entry.value).map_err(|e| malformed(e.to_string()))?;
        if record.function != function || record.key != key || record.cpu_id != self.cpu.id {
            return Err(malformed("it names another function, key or CPU".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for file in &record.files {
            if !is_plain_name(&file.name) || !seen.insert(file.name.as_str()) {
                return Err(malformed(format!("file name {:?}", file.name)));
            }
        }
        Ok(Some(record))
    }

    /// Fetches `function`'s snapshot `key`, taken on this host's CPU model, into the empty
    /// directory `dir` (a staging directory: the caller checks the files and gives them their
    /// place). `None`: no such snapshot was published.
    pub async fn fetch_into(
        &self,
        function: &str,
        key: &str,
        dir: &Path,
    ) -> Result<Option<SnapshotRecord>, ShareError> {
        let Some(record) = self.find(function, key).await? else {
            return Ok(None);
        };
        for file in &record.files {
            objects::fetch(&self.store, &file.sha256, file.size, &dir.join(&file.name)).await?;
        }
        Ok(Some(record))
    }
}

/// A file name that stays in its directory: letters, digits, `.`, `-`, `_`, not starting with
/// a dot, at most 64 bytes.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) CPU\nstepping\t: 7\nflags\t\t: fpu vme sse avx512f\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n";

    #[test]
    fn the_cpu_id_follows_model_and_flags() {
        let cpu = HostCpu::from_cpuinfo(CPUINFO);
        assert_eq!(cpu.model, "GenuineIntel Intel(R) Xeon(R) CPU");
        assert_eq!(cpu.id.len(), 16);
        assert_eq!(HostCpu::from_cpuinfo(CPUINFO), cpu);
        let fewer_flags = CPUINFO.replace(" avx512f", "");
        assert_ne!(HostCpu::from_cpuinfo(&fewer_flags).id, cpu.id);
        let other_model = CPUINFO.replace(": 85", ": 106");
        assert_ne!(HostCpu::from_cpuinfo(&other_model).id, cpu.id);
    }

    #[test]
    fn only_plain_file_names_are_fetched() {
        for good in ["state", "memory", "state.manifest.json"] {
            assert!(is_plain_name(good), "{good}");
        }
        for bad in ["", "../state", "a/b", ".hidden", "x\0y", &"a".repeat(65)] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
