//! The main thread's side of the API: it owns the VM. Before boot it gathers the
//! configuration piece by piece (each piece checked as it comes); `InstanceStart` boots it and
//! `PUT /snapshot/load` restores a snapshot instead; afterwards it pauses, resumes, snapshots
//! and reports. Requests that only make sense before boot are refused after it, and the other
//! way round, as Firecracker refuses them.
//!
//! It runs on the main thread because that thread built the VM and owns it; once the VM runs
//! the thread is under its seccomp filter, and it only ever sees typed requests (the client's
//! bytes are parsed in the API thread, under that thread's own filter).

mod configure;

use super::running::ControllerState;
use super::server::{Responder, VmmEvent};
use super::types::{
    exit_reason, ActionType, ExitInfo, FullVmConfig, InstanceInfo, MemoryBackendType,
    SnapshotLoadParams, Timings, VersionInfo, VmmStatus, WorkingSetStatus,
};
use super::{routes::ApiRequest, ApiResponse};
use crate::config::{
    BootSource, ConfigError, Drive, Entropy, MachineConfig, NetworkInterface, Serial, VmConfig,
    Vsock,
};
use crate::exit::VmExit;
use crate::host_caps::HostCaps;
use crate::microvm::{DeviceSpec, Microvm};
use crate::seccomp::{self, ThreadKind};
use crate::snapshot::manifest::SnapshotManifest;
use crate::snapshot::{self, working_set, RestoreOptions, SnapshotPaths, WorkingSetUse};
use logging::Chain;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// What the `vmm` binary passes in.
pub struct ControllerOptions {
    /// `GET /`'s `id` (Firecracker's `--id`).
    pub id: String,
    /// Keep serving once the guest has stopped (else the process exits then, as Firecracker's).
    pub serve_after_stop: bool,
    pub caps: HostCaps,
    /// Where the guest console goes until a `PUT /serial` says otherwise (`--serial-out`).
    pub serial_out: Option<PathBuf>,
    /// This process's `/proc/self/pagemap`, opened before the jail (which has no `/proc`):
    /// what `GET /ext/working-set` reads. `None`: that request is refused.
    pub pagemap: Option<File>,
}

pub const APP_NAME: &str = "vmm";
pub const NOT_STARTED: &str = "Not started";
pub const RUNNING: &str = "Running";
pub const PAUSED: &str = "Paused";
pub const STOPPED: &str = "Stopped";

/// How the VM came to be, for `GET /ext/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedFrom {
    Boot,
    Snapshot,
}

impl StartedFrom {
    fn name(self) -> &'static str {
        match self {
            StartedFrom::Boot => "boot",
            StartedFrom::Snapshot => "snapshot",
        }
    }
}

/// Where the VM is in its life.
enum Phase {
    NotStarted,
    Started(Microvm),
    Stopped(VmExit),
}

pub struct Controller {
    options: ControllerOptions,
    events: mpsc::Sender<VmmEvent>,
    phase: Phase,
    started_from: Option<StartedFrom>,
    /// Before boot: the configuration so far. After: what the VM was made of.
    config: FullVmConfig,
    /// Set by a request that configures a boot: a snapshot can no longer be loaded then.
    boot_configured: bool,
    metrics: Option<File>,
    timings: Timings,
    last_snapshot: Option<SnapshotManifest>,
    /// `PUT /ext/working-set`: the file the snapshot load reads in.
    working_set_file: Option<PathBuf>,
    /// What the snapshot load did with it.
    working_set: Option<WorkingSetStatus>,
    /// The CRC-32 of the state a restored VM came from (a working set recorded names it).
    restored_state_crc32: Option<u32>,
    requests: u64,
    refused: u64,
    main_filtered: bool,
}

fn refuse(message: impl AsRef<str>) -> ApiResponse {
    ApiResponse::fault(400, message.as_ref())
}

const AFTER_START: &str = "the requested operation is not supported after starting the microVM";
const BEFORE_START: &str = "the requested operation is not supported before starting the microVM";

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn config_error(e: &ConfigError) -> ApiResponse {
    refuse(Chain(e).to_string())
}

/// Where the guest console goes: the file (appended to, so several VMs can share one and a
/// restored VM's output follows its original's), or stdout.
pub fn open_console(path: Option<&Path>) -> std::io::Result<Box<dyn Write + Send>> {
    match path {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| Box::new(f) as Box<dyn Write + Send>),
        None => Ok(Box::new(std::io::stdout())),
    }
}

impl Controller {
    /// A controller with nothing configured; `events` is the channel its loop reads (the VM's
    /// exit watcher posts there too).
    pub fn new(options: ControllerOptions, events: mpsc::Sender<VmmEvent>) -> Controller {
        let serial = options.serial_out.clone().map(|path| Serial {
            serial_out_path: Some(path),
        });
        Controller {
            options,
            events,
            phase: Phase::NotStarted,
            started_from: None,
            config: FullVmConfig {
                boot_source: None,
                machine_config: MachineConfig::default(),
                drives: Vec::new(),
                network_interfaces: Vec::new(),
                vsock: None,
                entropy: None,
                serial,
                logger: None,
                metrics: None,
            },
            boot_configured: false,
            metrics: None,
            timings: Timings::default(),
            last_snapshot: None,
            working_set_file: None,
            working_set: None,
            restored_state_crc32: None,
            requests: 0,
            refused: 0,
            main_filtered: false,
        }
    }

    /// Before [`Controller::adopt`] of a VM the command line restored: the state it came from
    /// (for `GET /ext/working-set`) and what became of the working set it was given.
    pub fn restored(&mut self, state_crc32: u32, working_set: Option<(PathBuf, WorkingSetUse)>) {
        self.restored_state_crc32 = Some(state_crc32);
        self.working_set = working_set.map(|(path, used)| working_set_status(path, used));
    }

    /// Takes over a VM the command line already booted or restored (`--config-file`,
    /// `--restore-from`), as Firecracker does with `--config-file` and an API socket.
    pub fn adopt(
        &mut self,
        microvm: Microvm,
        from: StartedFrom,
        config: Option<&VmConfig>,
        started_ms: f64,
    ) -> Result<(), String> {
        match config {
            Some(config) => self.config = full_config(config),
            None => self.config = restored_config(&microvm, self.config.serial.clone()),
        }
        match from {
            StartedFrom::Boot => self.timings.boot_ms = Some(started_ms),
            StartedFrom::Snapshot => self.timings.restore_ms = Some(started_ms),
        }
        self.started(microvm, from)
    }

    /// Serves requests until the VM stops (or, with `serve_after_stop`, for ever); returns how
    /// the VM ended, or the API's failure before any VM ran.
    pub fn run(mut self, events: mpsc::Receiver<VmmEvent>) -> VmExit {
        for event in events {
            match event {
                VmmEvent::Request { request, reply } => self.answer(request, reply),
                VmmEvent::Stopped => {
                    let exit = self.stopped();
                    if !self.options.serve_after_stop {
                        return exit;
                    }
                }
                VmmEvent::ApiFailed(why) => {
                    log::error!("the API is no longer served: {why}");
                    // Without an API nothing can start a VM, nor ask about a stopped one; a
                    // running one goes on until it stops, since a client must never stop it.
                    match &self.phase {
                        Phase::NotStarted => return VmExit::VmmError(why),
                        Phase::Stopped(exit) => return exit.clone(),
                        Phase::Started(_) => self.options.serve_after_stop = false,
                    }
                }
            }
        }
        self.stopped()
    }

    fn answer(&mut self, request: ApiRequest, reply: Responder) {
        let response = self.handle(request);
        self.requests += 1;
        if response.status >= 400 {
            self.refused += 1;
        }
        reply.send(response);
    }

    /// The response to `request`.
    pub fn handle(&mut self, request: ApiRequest) -> ApiResponse {
        use ApiRequest::*;
        match request {
            GetInstanceInfo => ApiResponse::ok(&InstanceInfo {
                id: self.options.id.clone(),
                state: self.state().to_owned(),
                vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
                app_name: APP_NAME.to_owned(),
            }),
            GetVersion => ApiResponse::ok(&VersionInfo {
                firecracker_version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            GetVmConfig => ApiResponse::ok(&self.config),
            GetMachineConfig => ApiResponse::ok(&self.config.machine_config),
            GetStatus => ApiResponse::ok(&self.status()),
            GetWorkingSet => self.working_set(),
            PutWorkingSet(config) => self.pre_boot(|c| {
                c.working_set_file = Some(config.path);
                ApiResponse::no_content()
            }),
            PutMachineConfig(config) => self.pre_boot(|c| c.set_machine_config(config)),
            PatchMachineConfig(update) => self.pre_boot(|c| c.patch_machine_config(&update)),
            PutBootSource(boot) => self.pre_boot(|c| c.set_boot_source(boot)),
            PutDrive(drive) => self.pre_boot(|c| c.set_drive(drive)),
            PutNetworkInterface(iface) => self.pre_boot(|c| c.set_network_interface(iface)),
            PutVsock(vsock) => self.pre_boot(|c| c.set_vsock(vsock)),
            PutEntropy(entropy) => self.pre_boot(|c| c.set_entropy(entropy)),
            PutSerial(serial) => self.pre_boot(|c| c.set_serial(serial)),
            PutLogger(logger) => self.pre_boot(|c| c.set_logger(logger)),
            PutMetrics(metrics) => self.pre_boot(|c| c.set_metrics(metrics)),
            Action(ActionType::InstanceStart) => self.pre_boot(Controller::start),
            LoadSnapshot(params) => self.pre_boot(|c| c.load_snapshot(&params)),
            Action(ActionType::SendCtrlAltDel) => self.post_boot(|vm, _| {
                vm.send_ctrl_alt_del();
                ApiResponse::no_content()
            }),
            Action(ActionType::FlushMetrics) => self.post_boot(|vm, c| c.flush_metrics(vm)),
            PatchVm(state) => self.post_boot(|vm, c| c.set_run_state(vm, state)),
            CreateSnapshot(params) => self.post_boot(|vm, c| c.create_snapshot(vm, &params)),
        }
    }

    fn state(&self) -> &'static str {
        match &self.phase {
            Phase::NotStarted => NOT_STARTED,
            Phase::Started(vm) if vm.is_paused() => PAUSED,
            Phase::Started(_) => RUNNING,
            Phase::Stopped(_) => STOPPED,
        }
    }

    /// `GET /ext/status`.
    pub fn status(&self) -> VmmStatus {
        let exit = match &self.phase {
            Phase::Stopped(exit) => Some(exit_info(exit)),
            _ => None,
        };
        VmmStatus {
            state: self.state().to_owned(),
            started_from: self.started_from.map(|f| f.name().to_owned()),
            exit,
            timings: self.timings.clone(),
            last_snapshot: self.last_snapshot.clone(),
            working_set: self.working_set.clone(),
        }
    }

    /// `GET /ext/working-set`: the pages the restored guest has touched so far.
    fn working_set(&self) -> ApiResponse {
        let Phase::Started(vm) = &self.phase else {
            return refuse("only a running restored microVM has a working set");
        };
        let Some(state_crc32) = self.restored_state_crc32 else {
            return refuse("only a microVM restored from a snapshot has a working set");
        };
        let Some(pagemap) = &self.options.pagemap else {
            return ApiResponse::fault(500, "this vmm could not open /proc/self/pagemap");
        };
        match working_set::record(pagemap, vm.vm().memory(), state_crc32) {
            Ok(set) => ApiResponse::ok(&set),
            Err(e) => ApiResponse::fault(500, &format!("reading /proc/self/pagemap: {e}")),
        }
    }

    fn pre_boot(&mut self, f: impl FnOnce(&mut Controller) -> ApiResponse) -> ApiResponse {
        match self.phase {
            Phase::NotStarted => f(self),
            Phase::Started(_) | Phase::Stopped(_) => refuse(AFTER_START),
        }
    }

    fn post_boot(
        &mut self,
        f: impl FnOnce(&mut Microvm, &mut ControllerState) -> ApiResponse,
    ) -> ApiResponse {
        match &mut self.phase {
            Phase::NotStarted => refuse(BEFORE_START),
            Phase::Stopped(exit) => refuse(format!(
                "the microVM has stopped ({})",
                exit_info(exit).reason
            )),
            Phase::Started(vm) => {
                let mut state = ControllerState {
                    metrics: &mut self.metrics,
                    timings: &mut self.timings,
                    last_snapshot: &mut self.last_snapshot,
                    requests: self.requests,
                    refused: self.refused,
                };
                f(vm, &mut state)
            }
        }
    }

    /// The configuration to boot, with `boot` as its boot source.
    fn vm_config(&self, boot: BootSource) -> VmConfig {
        VmConfig {
            boot_source: boot,
            machine_config: self.config.machine_config.clone(),
            drives: self.config.drives.clone(),
            vsock: self.config.vsock.clone(),
            entropy: self.config.entropy.clone(),
            serial: self.config.serial.clone(),
            network_interfaces: self.config.network_interfaces.clone(),
        }
    }

    fn console(&self) -> std::io::Result<Box<dyn Write + Send>> {
        let path = self.config.serial.as_ref();
        open_console(path.and_then(|s| s.serial_out_path.as_deref()))
    }

    /// `InstanceStart`.
    fn start(&mut self) -> ApiResponse {
        let Some(boot) = self.config.boot_source.clone() else {
            return refuse("cannot start the microVM without a boot source (PUT /boot-source)");
        };
        let mut config = self.vm_config(boot);
        if let Err(e) = config.validate() {
            return config_error(&e);
        }
        let template = &mut config.machine_config.cpu_template;
        *template = template.resolve(&self.options.caps);
        let console = match self.console() {
            Ok(console) => console,
            Err(e) => return refuse(format!("opening the serial output: {e}")),
        };
        let started = Instant::now();
        match crate::builder::boot(&config, console) {
            Ok(microvm) => {
                self.timings.boot_ms = Some(ms_since(started));
                self.config.machine_config = config.machine_config;
                self.respond_started(microvm, StartedFrom::Boot)
            }
            Err(e) => refuse(format!("starting the microVM: {}", Chain(&e))),
        }
    }

    /// `PUT /snapshot/load`.
    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> ApiResponse {
        if self.boot_configured {
            return refuse(
                "loading a snapshot is not allowed after configuring boot-specific resources",
            );
        }
        let memory = match (&params.mem_file_path, &params.mem_backend) {
            (Some(path), None) => path.clone(),
            (None, Some(backend)) if backend.backend_type == MemoryBackendType::File => {
                backend.backend_path.clone()
            }
            (None, Some(_)) => {
                return refuse("mem_backend.backend_type Uffd is not supported: use File")
            }
            (Some(_), Some(_)) => {
                return refuse("give either mem_backend or mem_file_path, not both")
            }
            (None, None) => return refuse("missing mem_backend (or the older mem_file_path)"),
        };
        let unsupported = [
            ("enable_diff_snapshots", params.enable_diff_snapshots),
            ("track_dirty_pages", params.track_dirty_pages),
            ("clock_realtime", params.clock_realtime),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, v)| *v == Some(true)) {
            return refuse(format!("{field}: true is not supported by this VMM"));
        }
        let options = RestoreOptions {
            vsock_uds: params.vsock_override.as_ref().map(|v| v.uds_path.clone()),
            net_overrides: params
                .network_overrides
                .iter()
                .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
                .collect(),
            paused: !params.resume_vm,
            working_set: self.working_set_file.clone(),
        };
        let console = match self.console() {
            Ok(console) => console,
            Err(e) => return refuse(format!("opening the serial output: {e}")),
        };
        let paths = SnapshotPaths {
            state: params.snapshot_path.clone(),
            memory,
        };
        let started = Instant::now();
        match snapshot::restore_files(&paths, console, &options) {
            Ok(restored) => {
                self.timings.restore_ms = Some(ms_since(started));
                self.restored_state_crc32 = Some(restored.state_crc32);
                self.working_set = options
                    .working_set
                    .zip(restored.working_set)
                    .map(|(path, used)| working_set_status(path, used));
                let microvm = restored.microvm;
                self.config = restored_config(&microvm, self.config.serial.clone());
                self.respond_started(microvm, StartedFrom::Snapshot)
            }
            // Nothing of the VM is left: the process can try another load.
            Err(e) => refuse(format!("loading the snapshot: {}", Chain(&e))),
        }
    }

    fn respond_started(&mut self, microvm: Microvm, from: StartedFrom) -> ApiResponse {
        match self.started(microvm, from) {
            Ok(()) => ApiResponse::no_content(),
            Err(why) => ApiResponse::fault(500, &why),
        }
    }

    /// The VM runs (or is parked, after a paused restore): watch for its end, and put the main
    /// thread under its filter, since it has built all it will build.
    fn started(&mut self, microvm: Microvm, from: StartedFrom) -> Result<(), String> {
        let events = self.events.clone();
        microvm.exit_signal().on_exit(Box::new(move || {
            let _ = events.send(VmmEvent::Stopped);
        }));
        self.phase = Phase::Started(microvm);
        self.started_from = Some(from);
        if !self.main_filtered {
            seccomp::install(ThreadKind::Main).map_err(|e| Chain(&e).to_string())?;
            self.main_filtered = true;
        }
        Ok(())
    }

    /// The VM has stopped: its threads are ended and why is kept. Returns why.
    fn stopped(&mut self) -> VmExit {
        let phase = std::mem::replace(&mut self.phase, Phase::NotStarted);
        let exit = match phase {
            Phase::Started(microvm) => {
                let exit = microvm.exit_signal().get().unwrap_or(VmExit::Shutdown);
                microvm.stop();
                exit
            }
            Phase::Stopped(exit) => exit,
            Phase::NotStarted => VmExit::Shutdown,
        };
        self.phase = Phase::Stopped(exit.clone());
        exit
    }
}

/// `GET /ext/status`'s account of a working set given to a restore.
fn working_set_status(path: PathBuf, used: WorkingSetUse) -> WorkingSetStatus {
    match used {
        WorkingSetUse::Loaded(loaded) => WorkingSetStatus {
            path,
            pages: loaded.pages,
            load_ms: loaded.ms,
            ignored: None,
        },
        WorkingSetUse::Ignored(why) => WorkingSetStatus {
            path,
            pages: 0,
            load_ms: 0.0,
            ignored: Some(why),
        },
    }
}

fn exit_info(exit: &VmExit) -> ExitInfo {
    let (reason, message) = match exit {
        VmExit::Shutdown => (exit_reason::SHUTDOWN, None),
        VmExit::GuestCrash(why) => (exit_reason::GUEST_CRASH, Some(why.clone())),
        VmExit::VmmError(why) => (exit_reason::VMM_ERROR, Some(why.clone())),
    };
    ExitInfo {
        reason: reason.to_owned(),
        message,
        exit_code: exit.code(),
    }
}

fn full_config(config: &VmConfig) -> FullVmConfig {
    FullVmConfig {
        boot_source: Some(config.boot_source.clone()),
        machine_config: config.machine_config.clone(),
        drives: config.drives.clone(),
        network_interfaces: config.network_interfaces.clone(),
        vsock: config.vsock.clone(),
        entropy: config.entropy.clone(),
        serial: config.serial.clone(),
        logger: None,
        metrics: None,
    }
}

/// A restored VM's configuration, from its devices (it has no boot source).
fn restored_config(microvm: &Microvm, serial: Option<Serial>) -> FullVmConfig {
    let memory = microvm.vm().memory();
    let mem_bytes: u64 = vm_memory::GuestMemoryBackend::iter(memory)
        .map(vm_memory::GuestMemoryRegion::len)
        .sum();
    let mut config = FullVmConfig {
        boot_source: None,
        machine_config: MachineConfig {
            vcpu_count: microvm.vcpu_count(),
            mem_size_mib: u32::try_from(mem_bytes >> 20).unwrap_or(u32::MAX),
            ..MachineConfig::default()
        },
        drives: Vec::new(),
        network_interfaces: Vec::new(),
        vsock: None,
        entropy: None,
        serial,
        logger: None,
        metrics: None,
    };
    for device in microvm.devices() {
        match &device.spec {
            DeviceSpec::Block(drive) => config.drives.push(Drive {
                drive_id: drive.drive_id.clone(),
                path_on_host: drive.path.clone(),
                is_root_device: false,
                is_read_only: drive.read_only,
            }),
            DeviceSpec::Vsock(vsock) => {
                config.vsock = Some(Vsock {
                    guest_cid: u32::try_from(vsock.guest_cid).unwrap_or(u32::MAX),
                    uds_path: vsock.uds_path.clone(),
                    vsock_id: None,
                })
            }
            DeviceSpec::Rng => config.entropy = Some(Entropy {}),
            DeviceSpec::Net(net) => config.network_interfaces.push(NetworkInterface {
                iface_id: net.iface_id.clone(),
                host_dev_name: net.host_dev_name.clone(),
                guest_mac: net.guest_mac,
            }),
        }
    }
    config
}
