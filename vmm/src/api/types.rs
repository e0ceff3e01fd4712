//! The API's request and response bodies. Firecracker's bodies reuse the configuration file's
//! types (`crate::config`), which already refuse unknown fields; the others are here, each
//! refusing what Firecracker has and this VMM does not (unknown fields, `Diff`, `Uffd`...).
//! `vmm/api/openapi.yaml` describes every one of them.

use crate::config::{
    BootSource, CpuTemplate, Drive, Entropy, MachineConfig, NetworkInterface, Serial, Vsock,
};
use crate::snapshot::manifest::SnapshotManifest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `PATCH /machine-config`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

impl MachineConfigUpdate {
    pub fn apply(&self, config: &mut MachineConfig) {
        if let Some(vcpus) = self.vcpu_count {
            config.vcpu_count = vcpus;
        }
        if let Some(mem) = self.mem_size_mib {
            config.mem_size_mib = mem;
        }
        if let Some(smt) = self.smt {
            config.smt = smt;
        }
        if let Some(template) = self.cpu_template {
            config.cpu_template = template;
        }
        if let Some(track) = self.track_dirty_pages {
            config.track_dirty_pages = track;
        }
    }
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ActionType {
    /// Boot the configured microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's i8042 keyboard.
    SendCtrlAltDel,
    /// Write one line of metrics to the `PUT /metrics` file.
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    pub state: VmRunState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum VmRunState {
    Paused,
    Resumed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum SnapshotType {
    #[default]
    Full,
    /// Refused: memory is always saved whole.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// The state file (the manifest goes beside it, `<snapshot_path>.manifest.json`).
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum MemoryBackendType {
    File,
    /// Refused: there is no userfaultfd page server here.
    Uffd,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load`. Exactly one of `mem_backend` and the older `mem_file_path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Only `false`: no dirty page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Only `false`: no dirty page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Only `false`: the guest clock resumes where it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

/// `PUT /logger`. `module` filtering is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// Error, Warning, Info, Debug, Trace or Off, in any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// A file (appended to) or named pipe for the log; stderr when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A file (appended to) or named pipe; each `FlushMetrics` writes one JSON line.
    pub metrics_path: PathBuf,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: String,
    pub vmm_version: String,
    pub app_name: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VersionInfo {
    pub firecracker_version: String,
}

/// `GET /vm/config`: the configuration as a `--config-file` would give it. A restored VM has
/// no boot source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FullVmConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<Entropy>,
    pub serial: Option<Serial>,
    pub logger: Option<LoggerConfig>,
    pub metrics: Option<MetricsConfig>,
}

/// Every error body: Firecracker's shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Fault {
    pub fault_message: String,
}

/// `GET /ext/status` (an extension: Firecracker has no such endpoint): what a client that
/// drives this VMM alone needs to know, without signals, logs or the snapshot's files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmmStatus {
    /// "Not started", "Running", "Paused", or "Stopped" once the guest has ended (seen only
    /// with `--serve-after-stop`: otherwise the process exits then).
    pub state: String,
    /// How the VM came to be: "boot" or "snapshot"; `None` before.
    pub started_from: Option<String>,
    /// Why the VM stopped, once it has.
    pub exit: Option<ExitInfo>,
    pub timings: Timings,
    /// The last snapshot this process wrote.
    pub last_snapshot: Option<SnapshotManifest>,
    /// What the snapshot load did with the working set of `PUT /ext/working-set`; absent
    /// when none was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set: Option<WorkingSetStatus>,
}

/// `PUT /ext/working-set` (an extension), before `PUT /snapshot/load`: the working-set file
/// (`crate::snapshot::working_set`) whose pages the load reads in before the vCPUs run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingSetConfig {
    pub path: PathBuf,
}

/// In `GET /ext/status`: what the snapshot load did with the working set it was given.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingSetStatus {
    pub path: PathBuf,
    /// Pages loaded before the vCPUs ran (0 when the file was not used).
    pub pages: u64,
    /// How long loading them took (part of `timings.restore_ms`).
    pub load_ms: f64,
    /// Why the file was not used, when it was not: guest memory then loads lazily.
    pub ignored: Option<String>,
}

/// The `reason`s of [`ExitInfo`].
pub mod exit_reason {
    /// The guest powered off or rebooted.
    pub const SHUTDOWN: &str = "shutdown";
    /// A triple fault, an instruction the hypervisor could not run, a failed VM entry.
    pub const GUEST_CRASH: &str = "guest_crash";
    /// The VMM failed while running the VM.
    pub const VMM_ERROR: &str = "vmm_error";
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExitInfo {
    /// "shutdown" (the guest powered off or rebooted), "guest_crash" (a triple fault, an
    /// instruction the hypervisor could not run...), or "vmm_error".
    pub reason: String,
    /// The cause, for a crash or an error.
    pub message: Option<String>,
    /// The exit code the process has (or would have) for it: 0, 3 or 1.
    pub exit_code: i32,
}

/// Milliseconds the VMM spent, measured inside it (what the client cannot see: its own
/// round trips are not included).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// `InstanceStart`: building the VM until its vCPUs run.
    pub boot_ms: Option<f64>,
    /// `PUT /snapshot/load`: from reading the state to the VM built (and running, with
    /// `resume_vm`).
    pub restore_ms: Option<f64>,
    /// The last `PUT /snapshot/create`, files synced.
    pub snapshot_create_ms: Option<f64>,
    /// The last pause.
    pub pause_ms: Option<f64>,
}
