//! The snapshot manifest: a small JSON file written beside each snapshot's state file, saying
//! what a restore will need (memory size, vCPUs, the files and sockets the devices open), so a
//! client (the function host preparing a jail, a script) never decodes the state file itself.
//!
//! It is `<state file>.manifest.json` (`DIR/state.manifest.json` for a snapshot directory) and is
//! written last, after the state and memory are synced: a manifest whose `state_crc32` matches
//! the state file's header describes that state. The state file stays the only input of a
//! restore; the manifest is information.

use super::MicrovmState;
use crate::microvm::DeviceSpec;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The `format` field of every manifest.
pub const MANIFEST_FORMAT: &str = "vmm-snapshot-manifest/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The `vmm` that wrote the snapshot.
    pub vmm_version: String,
    /// The state file's format version (`super::file::FORMAT_VERSION`); a `vmm` restores only
    /// its own.
    pub state_format_version: u32,
    /// The state file, as the snapshot request named it.
    pub snapshot_path: PathBuf,
    /// The guest memory file, as the snapshot request named it.
    pub mem_file_path: PathBuf,
    /// The CRC-32 in the state file's header: which state this manifest describes.
    pub state_crc32: u32,
    /// The CRC-32 of the whole guest memory file, as written. A restore is lazy (the file is
    /// mapped, not read), so it is checked only where a whole read pays: `vmm --restore-from`,
    /// and a function host once per snapshot file ([`crate::snapshot::verify_memory`]). Absent
    /// in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_crc32: Option<u32>,
    pub mem_size_mib: u32,
    pub vcpu_count: u8,
    /// In attach order; a restore opens each again at this path.
    pub drives: Vec<ManifestDrive>,
    /// A restore listens on this socket unless the load request overrides it.
    pub vsock: Option<ManifestVsock>,
    pub entropy: bool,
    /// A restore opens each tap again unless the load request overrides it.
    pub network_interfaces: Vec<ManifestNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDrive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestVsock {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestNet {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a snapshot manifest")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: format {found:?}, this vmm reads {MANIFEST_FORMAT:?}")]
    Format { path: PathBuf, found: String },
}

/// A manifest is small; a larger file is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Where the manifest of the state file `snapshot_path` lives.
pub fn manifest_path(snapshot_path: &Path) -> PathBuf {
    let mut name = OsString::from(snapshot_path.as_os_str());
    name.push(".manifest.json");
    PathBuf::from(name)
}

impl SnapshotManifest {
    /// Describes `state`, saved to `snapshot_path` with checksum `state_crc32`, its memory in
    /// `mem_file_path`.
    pub fn describe(
        state: &MicrovmState,
        snapshot_path: &Path,
        mem_file_path: &Path,
        state_crc32: u32,
        mem_crc32: u32,
    ) -> SnapshotManifest {
        let mut manifest = SnapshotManifest {
            format: MANIFEST_FORMAT.to_owned(),
            vmm_version: state.vmm_version.clone(),
            state_format_version: super::file::FORMAT_VERSION,
            snapshot_path: snapshot_path.to_owned(),
            mem_file_path: mem_file_path.to_owned(),
            state_crc32,
            mem_crc32: Some(mem_crc32),
            mem_size_mib: u32::try_from(state.mem_size_bytes >> 20).unwrap_or(u32::MAX),
            vcpu_count: u8::try_from(state.vcpus.len()).unwrap_or(u8::MAX),
            drives: Vec::new(),
            vsock: None,
            entropy: false,
            network_interfaces: Vec::new(),
        };
        for device in &state.devices {
            match &device.spec {
                DeviceSpec::Block(drive) => manifest.drives.push(ManifestDrive {
                    drive_id: drive.drive_id.clone(),
                    path_on_host: drive.path.clone(),
                    is_read_only: drive.read_only,
                }),
                DeviceSpec::Vsock(vsock) => {
                    manifest.vsock = Some(ManifestVsock {
                        guest_cid: vsock.guest_cid,
                        uds_path: vsock.uds_path.clone(),
                    })
                }
                DeviceSpec::Rng => manifest.entropy = true,
                DeviceSpec::Net(net) => manifest.network_interfaces.push(ManifestNet {
                    iface_id: net.iface_id.clone(),
                    host_dev_name: net.host_dev_name.clone(),
                    guest_mac: net.guest_mac.map(|mac| mac.to_string()),
                }),
            }
        }
        manifest
    }

    /// Writes the manifest to `path` and syncs it.
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: path.to_owned(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| io(e.into()))?;
        text.push(b'\n');
        let written = (|| {
            use std::io::Write;
            let mut file = std::fs::File::create(path)?;
            file.write_all(&text)?;
            file.sync_all()
        })();
        written.map_err(io)
    }

    /// Reads the manifest at `path` (see [`manifest_path`]).
    pub fn read(path: &Path) -> Result<SnapshotManifest, ManifestError> {
        use std::io::Read;
        let io = |source| ManifestError::Io {
            path: path.to_owned(),
            source,
        };
        let mut text = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut text)
            .map_err(io)?;
        let manifest: SnapshotManifest =
            serde_json::from_slice(&text).map_err(|source| ManifestError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format {
                path: path.to_owned(),
                found: manifest.format,
            });
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_sits_beside_its_state_file() {
        assert_eq!(
            manifest_path(Path::new("/snap/vm.state")),
            Path::new("/snap/vm.state.manifest.json")
        );
    }

    #[test]
    fn a_written_manifest_reads_back_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = SnapshotManifest {
            format: MANIFEST_FORMAT.into(),
            vmm_version: "0.1.0".into(),
            state_format_version: 3,
            snapshot_path: "s".into(),
            mem_file_path: "m".into(),
            state_crc32: 7,
            mem_crc32: Some(9),
            mem_size_mib: 128,
            vcpu_count: 1,
            drives: vec![ManifestDrive {
                drive_id: "rootfs".into(),
                path_on_host: "/r.ext4".into(),
                is_read_only: true,
            }],
            vsock: None,
            entropy: true,
            network_interfaces: Vec::new(),
        };
        let path = dir.path().join("m.json");
        manifest.write(&path).unwrap();
        assert_eq!(SnapshotManifest::read(&path).unwrap(), manifest);
        let foreign = SnapshotManifest {
            format: "other/9".into(),
            ..manifest
        };
        foreign.write(&path).unwrap();
        assert!(matches!(
            SnapshotManifest::read(&path),
            Err(ManifestError::Format { .. })
        ));
    }
}
