//! The one control channel to a `vmm`: Firecracker's API on its socket, through
//! [`vmm::api::client::ApiClient`]. Everything the service asks of a VM goes through here: boot
//! it, restore a snapshot into it, pause and snapshot it, ask how it is and why it stopped, and
//! how long its restore took. No signals, no exit codes, no log lines, no reading of the
//! `vmm`'s own files (a snapshot is described by its manifest, [`crate::snapshots::Snapshot`]).
//!
//! The process itself (spawning, jail, reaping) is [`crate::vmm_process`]'s.

use crate::snapshots::Snapshot;
use crate::vmm_process::{Died, SpawnError, VmmProcess};
use std::path::Path;
use std::time::{Duration, Instant};
use vmm::api::client::{ApiClient, ClientError};
use vmm::api::controller::STOPPED;
use vmm::api::types::{
    exit_reason, ExitInfo, MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotLoadParams,
    VsockOverride, WorkingSetStatus,
};
use vmm::config::VmConfig;
use vmm::snapshot::working_set::WorkingSet;

/// Longest one API request may take: a snapshot of a large guest writes and syncs all of its
/// memory.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a fresh `vmm`'s socket is tried while it starts (it binds within milliseconds).
const CONNECT_RETRY: Duration = Duration::from_micros(500);
/// How often a stopping VM is asked whether it has stopped.
const STOP_POLL: Duration = Duration::from_millis(10);

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest shut down (it powered off or rebooted).
    Shutdown,
    /// The guest crashed: a triple fault, an instruction the hypervisor could not run.
    GuestCrash(String),
    /// The VMM failed while running the VM.
    VmmError(String),
    /// The `vmm` process itself ended: killed, or failed before its API served.
    Died(Died),
}

impl VmmExit {
    fn of(exit: ExitInfo) -> VmmExit {
        let message = exit.message.unwrap_or_default();
        match exit.reason.as_str() {
            exit_reason::SHUTDOWN => VmmExit::Shutdown,
            exit_reason::GUEST_CRASH => VmmExit::GuestCrash(message),
            exit_reason::VMM_ERROR => VmmExit::VmmError(message),
            other => VmmExit::VmmError(format!("{other}: {message}")),
        }
    }
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmmExit::Shutdown => write!(f, "the guest shut down"),
            VmmExit::GuestCrash(why) => write!(f, "the guest crashed: {why}"),
            VmmExit::VmmError(why) => write!(f, "the vmm failed: {why}"),
            VmmExit::Died(died) => died.fmt(f),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the vmm's API did not answer within {} s", .0.as_secs())]
    ApiTimeout(Duration),
    /// A request failed or was refused.
    #[error("{what}")]
    Api {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    Exited(VmmExit),
}

/// A `vmm` process and its API.
pub struct Vmm {
    // The client goes first: its connection closes before the process is killed.
    api: ApiClient,
    process: VmmProcess,
}

impl Vmm {
    /// Waits up to `timeout` for `process` to serve its API (a fresh `vmm` enters its jail and
    /// binds its socket within tens of milliseconds); fails at once if it ends meanwhile.
    pub fn connect(mut process: VmmProcess, timeout: Duration) -> Result<Vmm, VmmError> {
        let mut api = ApiClient::new(process.api_socket(), REQUEST_TIMEOUT);
        let deadline = Instant::now() + timeout;
        loop {
            // One try each (a zero timeout), so that a process that died is seen between them.
            if api.wait_ready(Duration::ZERO).is_ok() {
                return Ok(Vmm { api, process });
            }
            if let Some(died) = process.died() {
                return Err(VmmError::Exited(VmmExit::Died(died)));
            }
            if Instant::now() >= deadline {
                return Err(VmmError::ApiTimeout(timeout));
            }
            std::thread::sleep(CONNECT_RETRY);
        }
    }

    /// Its process ID as the service sees it.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Boots `config` (`PUT` of each piece, then `InstanceStart`). The guest console is the
    /// process's stdout, so `config.serial` is not sent.
    pub fn boot(&mut self, config: &VmConfig) -> Result<(), VmmError> {
        let api = &mut self.api;
        let result = (|| {
            api.put_machine_config(&config.machine_config)?;
            api.put_boot_source(&config.boot_source)?;
            for drive in &config.drives {
                api.put_drive(drive)?;
            }
            if let Some(vsock) = &config.vsock {
                api.put_vsock(vsock)?;
            }
            if config.entropy.is_some() {
                api.put_entropy()?;
            }
            for iface in &config.network_interfaces {
                api.put_network_interface(iface)?;
            }
            api.start()
        })();
        result.map_err(|e| self.failed("booting the microVM", e))
    }

    /// Restores `snapshot` and runs it at once (`PUT /snapshot/load` with `resume_vm`), its
    /// vsock device on `vsock_uds` and each network interface on the tap of the same name in
    /// this `vmm`'s namespace; with `working_set`, the pages that file lists are loaded first
    /// (`PUT /ext/working-set`; a file the `vmm` cannot use is ignored, [`Vmm::restore_report`]
    /// says why).
    pub fn restore(
        &mut self,
        snapshot: &Snapshot,
        vsock_uds: &Path,
        working_set: Option<&Path>,
    ) -> Result<(), VmmError> {
        if let Some(path) = working_set {
            let named = self.api.put_working_set(path);
            named.map_err(|e| self.failed("naming the working set", e))?;
        }
        let params = SnapshotLoadParams {
            snapshot_path: snapshot.state(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: snapshot.memory(),
            }),
            resume_vm: true,
            vsock_override: snapshot.manifest.vsock.as_ref().map(|_| VsockOverride {
                uds_path: vsock_uds.to_owned(),
            }),
            network_overrides: snapshot
                .manifest
                .network_interfaces
                .iter()
                .map(|net| NetworkOverride {
                    iface_id: net.iface_id.clone(),
                    host_dev_name: net.host_dev_name.clone(),
                })
                .collect(),
            ..SnapshotLoadParams::default()
        };
        let loaded = self.api.load_snapshot_with(&params);
        loaded.map_err(|e| self.failed("restoring the snapshot", e))
    }

    /// The VMM's own part of the last restore (reading the state to the VM running), as it
    /// measured it, and what it did with the working set it was given.
    pub fn restore_report(&mut self) -> (Option<Duration>, Option<WorkingSetStatus>) {
        let Ok(status) = self.api.status() else {
            return (None, None);
        };
        let time = status
            .timings
            .restore_ms
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
        (time, status.working_set)
    }

    /// The guest pages the restored VM has touched so far (`GET /ext/working-set`).
    pub fn working_set(&mut self) -> Result<WorkingSet, VmmError> {
        let recorded = self.api.working_set();
        recorded.map_err(|e| self.failed("recording the working set", e))
    }

    /// Pauses the VM and writes its snapshot into `dir` (`state`, `memory`, and the manifest
    /// beside the state); the VM stays paused.
    pub fn snapshot(&mut self, dir: &Path) -> Result<(), VmmError> {
        let api = &mut self.api;
        let result = api.pause().and_then(|()| {
            api.create_snapshot(&Snapshot::state_path(dir), &Snapshot::memory_path(dir))
        });
        result.map_err(|e| self.failed("taking the snapshot", e))
    }

    /// Whether the process has ended (without asking its API: a look at the process only).
    pub fn died(&mut self) -> bool {
        self.process.died().is_some()
    }

    /// How the VM ended, if it has; waits up to `timeout` (not at all for zero).
    pub fn exited(&mut self, timeout: Duration) -> Option<VmmExit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exit_now() {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(STOP_POLL);
        }
    }

    fn exit_now(&mut self) -> Option<VmmExit> {
        if let Some(died) = self.process.died() {
            return Some(VmmExit::Died(died));
        }
        match self.api.status() {
            Ok(status) if status.state == STOPPED => {
                Some(status.exit.map_or(VmmExit::Shutdown, VmmExit::of))
            }
            Ok(_) => None,
            // The process is going (its socket closed before it was reaped): its status says
            // why on the next look.
            Err(_) => None,
        }
    }

    /// A request that failed: the process's end if that is why, else the API's answer.
    fn failed(&mut self, what: &'static str, source: ClientError) -> VmmError {
        if let ClientError::Io(_) | ClientError::Connect { .. } = source {
            if let Some(exit) = self.exited(Duration::from_millis(200)) {
                return VmmError::Exited(exit);
            }
        }
        VmmError::Api { what, source }
    }
}
