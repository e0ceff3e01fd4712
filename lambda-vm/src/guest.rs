//! One function environment: a microVM in its own `vmm` process, and the host link its init
//! opened. Each environment has a directory of its own (vsock socket, VM configuration), removed
//! with it, and is known to the service's [`Environments`] from before its `vmm` starts until
//! everything of it is gone, so that stopping the service can end it and wait for it.

use crate::host_link::{HostLink, LinkError, Listener, PORT};
use crate::network::{EnvNetwork, NetworkError, Networks};
use crate::vmm_process::{VmmError, VmmExit, VmmProcess};
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vmm::builder::default_boot_args;
use vmm::config::{
    BootSource, CpuTemplate, Drive, Entropy, MachineConfig, Serial, VmConfig, Vsock,
};

/// The guest CID every function VM gets: each VM has its own vsock device and socket, so they
/// need not differ.
const GUEST_CID: u32 = 3;
/// How often the boot wait looks at the VM while waiting for the guest's connection.
const ACCEPT_SLICE: Duration = Duration::from_millis(200);
/// How long a restored guest's init may take to reconnect. It takes about 0.1 s even on
/// emulated KVM; a guest that has not reconnected long after that came from a bad snapshot.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `vmm` may take to write a snapshot (128 MiB of memory and a sync: well under a
/// second here) and exit.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a function's microVM boots.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The `vmm` binary each environment runs in.
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// The function's image (from `scripts/build-rootfs.sh`).
    pub rootfs: Rootfs,
    /// Kernel command line; `None` for the VMM's default plus what the image needs.
    pub boot_args: Option<String>,
    pub mem_size_mib: u32,
    /// Holds each environment's directory.
    pub work_dir: PathBuf,
    /// Where the guest consoles go.
    pub console: Console,
    /// How long the guest may take to boot and connect.
    pub boot_timeout: Duration,
    /// How long the function's init may take in the guest (Lambda's 10 s by default).
    pub init_timeout: Duration,
    /// The CPU template, resolved for this host (`CpuTemplate::Auto.resolve`, once, at the top).
    pub cpu_template: CpuTemplate,
    /// Where each environment gets its own network from; `None`: the guest has no network
    /// device (the function has networking off, or the host cannot give it).
    pub network: Option<Arc<Networks>>,
    /// Every environment of the service, for stopping them.
    pub environments: Arc<Environments>,
}

/// Where guest consoles (kernel messages) go.
#[derive(Debug, Clone)]
pub enum Console {
    Discard,
    /// Appended to one file, every environment.
    Shared(PathBuf),
    /// Each environment its own file: `DIR/FUNCTION.N.console` for environment `N`.
    PerEnvironment {
        dir: PathBuf,
        function: String,
    },
}

impl Console {
    /// The file environment `env`'s console goes to, if any.
    pub fn path(&self, env: u64) -> Option<PathBuf> {
        match self {
            Console::Discard => None,
            Console::Shared(path) => Some(path.clone()),
            Console::PerEnvironment { dir, function } => {
                Some(dir.join(format!("{function}.{env}.console")))
            }
        }
    }
}

impl GuestSpec {
    /// The kernel command line the VM boots with. With the timing log on, init is asked to time
    /// every invoke too (`INIT_TIMING=1`: the kernel hands `NAME=value` words it does not know
    /// to init as environment variables).
    pub fn boot_args(&self) -> String {
        let args = self.boot_args.clone().unwrap_or_else(|| {
            let defaults = default_boot_args(self.cpu_template);
            // Our images keep init at /init, where the kernel looks in an initramfs but not
            // on a root drive.
            match self.rootfs {
                Rootfs::Initramfs(_) => defaults,
                Rootfs::Ext4(_) => format!("{defaults} init=/init"),
            }
        });
        let mut args = args;
        if self.init_timeout != proto::function_config::INIT_TIMEOUT {
            let ms = self.init_timeout.as_millis();
            args += &format!(" {}={ms}", proto::guest::cmdline::INIT_TIMEOUT_MS);
        }
        if crate::host_link::timing_enabled() {
            args += &format!(" {}=1", proto::guest::cmdline::TIMING);
        }
        args
    }

    /// The Firecracker-style configuration of environment `env`'s VM, whose vsock device is on
    /// `uds_path`.
    fn vm_config(&self, env: u64, uds_path: PathBuf) -> VmConfig {
        let (initrd_path, drives) = match &self.rootfs {
            Rootfs::Initramfs(path) => (Some(path.clone()), Vec::new()),
            Rootfs::Ext4(path) => (
                None,
                vec![Drive {
                    drive_id: "rootfs".into(),
                    path_on_host: path.clone(),
                    is_root_device: true,
                    is_read_only: true,
                }],
            ),
        };
        VmConfig {
            boot_source: BootSource {
                kernel_image_path: self.kernel.clone(),
                initrd_path,
                boot_args: Some(self.boot_args()),
            },
            machine_config: MachineConfig {
                mem_size_mib: self.mem_size_mib,
                cpu_template: self.cpu_template,
                ..MachineConfig::default()
            },
            drives,
            vsock: Some(Vsock {
                guest_cid: GUEST_CID,
                uds_path,
                vsock_id: None,
            }),
            // Without it the guest's getrandom(2) blocks until the kernel has gathered
            // entropy on its own, which under emulated KVM took minutes: the runtime's first
            // spawn (a random log stream name) waited on it.
            entropy: Some(Entropy {}),
            serial: Some(Serial {
                serial_out_path: self.console.path(env),
            }),
            network_interfaces: self
                .network
                .iter()
                .map(|_| crate::network::guest_interface())
                .collect(),
        }
    }
}

/// A function image: an initramfs, or an ext4 image attached as a read-only root drive. The
/// drive boots faster: the kernel reads only the blocks it needs, through the host, instead of
/// unpacking a whole archive with (on emulated KVM, slow) guest code.
#[derive(Debug, Clone)]
pub enum Rootfs {
    Initramfs(PathBuf),
    Ext4(PathBuf),
}

impl Rootfs {
    pub fn path(&self) -> &Path {
        match self {
            Rootfs::Initramfs(path) | Rootfs::Ext4(path) => path,
        }
    }

    /// By extension: `.ext4` is a drive, anything else an initramfs.
    pub fn from_path(path: PathBuf) -> Rootfs {
        if path.extension().is_some_and(|e| e == "ext4") {
            Rootfs::Ext4(path)
        } else {
            Rootfs::Initramfs(path)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("starting the microVM")]
    Vmm(#[from] VmmError),
    #[error("host link")]
    Link(#[from] LinkError),
    #[error("the microVM stopped before its init connected: {0}")]
    Exited(VmmExit),
    #[error("the guest's init did not connect within {} s", .0.as_secs())]
    BootTimeout(Duration),
    #[error("the environment's network")]
    Network(#[from] NetworkError),
    #[error("creating the environment's directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the service is stopping")]
    Stopping,
    #[error("the runtime's init did not reach restore/next within {} s", .0.as_secs())]
    InitTimeout(Duration),
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmmExit::Shutdown => write!(f, "the guest shut down"),
            VmmExit::GuestCrash => write!(f, "the guest crashed"),
            VmmExit::Failed { status, stderr } => {
                // The vmm's last line says why (`vmm: error: ...`); earlier ones are context.
                match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
                    Some(last) => write!(f, "the vmm ended ({status}): {}", last.trim()),
                    None => write!(f, "the vmm ended ({status})"),
                }
            }
        }
    }
}

/// How far the service is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Running,
    /// No environment starts, and those starting are ended.
    Starts,
    /// Every environment is ended now, busy ones too.
    All,
}

/// Every environment of a service from before its `vmm` starts until all of it is gone: so
/// that stopping ends the starting ones at once, the busy ones after a grace time, and waits
/// until nothing of any is left.
pub struct Environments {
    state: Mutex<Registry>,
    changed: Condvar,
}

struct Registry {
    next: u64,
    stop: Stop,
    live: BTreeMap<u64, Entry>,
}

struct Entry {
    starting: bool,
    /// A second handle on its host link, to end a wait on it.
    link: Option<UnixStream>,
}

impl std::fmt::Debug for Environments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Environments")
            .field("stop", &state.stop)
            .field("live", &state.live.len())
            .finish()
    }
}

impl Default for Environments {
    fn default() -> Self {
        Environments {
            state: Mutex::new(Registry {
                next: 0,
                stop: Stop::Running,
                live: BTreeMap::new(),
            }),
            changed: Condvar::new(),
        }
    }
}

/// One environment's place in [`Environments`]; dropping it says the environment is gone.
struct Registration {
    environments: Arc<Environments>,
    id: u64,
}

impl Environments {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new environment, starting; refused once the service is stopping.
    fn register(self: &Arc<Self>) -> Result<Registration, GuestError> {
        let mut state = self.lock();
        if state.stop > Stop::Running {
            return Err(GuestError::Stopping);
        }
        state.next += 1;
        let id = state.next;
        let entry = Entry {
            starting: true,
            link: None,
        };
        state.live.insert(id, entry);
        Ok(Registration {
            environments: self.clone(),
            id,
        })
    }

    /// Whether environments in the state `starting` are to end now.
    fn ended(&self, starting: bool) -> bool {
        match self.lock().stop {
            Stop::Running => false,
            Stop::Starts => starting,
            Stop::All => true,
        }
    }

    /// Records `id`'s host link, ending it at once if the environment is already to end.
    fn linked(&self, id: u64, link: &HostLink) {
        let mut state = self.lock();
        let stop = state.stop;
        if let Some(entry) = state.live.get_mut(&id) {
            entry.link = link.interrupter().ok();
            if stop == Stop::All || (stop == Stop::Starts && entry.starting) {
                interrupt(entry);
            }
        }
    }

    /// `id` is up and serving (no longer ended by [`Environments::end_starts`]).
    fn started(&self, id: u64) {
        if let Some(entry) = self.lock().live.get_mut(&id) {
            entry.starting = false;
        }
    }

    /// No environment starts from now on, and those starting end now (their `vmm` is killed,
    /// their start fails with [`GuestError::Stopping`]).
    pub fn end_starts(&self) {
        let mut state = self.lock();
        state.stop = state.stop.max(Stop::Starts);
        state
            .live
            .values_mut()
            .filter(|e| e.starting)
            .for_each(interrupt);
    }

    /// Every environment ends now: waits on their host links fail at once.
    pub fn end_all(&self) {
        let mut state = self.lock();
        state.stop = Stop::All;
        state.live.values_mut().for_each(interrupt);
    }

    /// Whether [`Environments::end_all`] was called: teardowns need not wait for a guest.
    pub fn ending_all(&self) -> bool {
        self.lock().stop == Stop::All
    }

    /// Whether stopping has begun.
    pub fn stopping(&self) -> bool {
        self.lock().stop > Stop::Running
    }

    /// How many environments still exist.
    pub fn count(&self) -> usize {
        self.lock().live.len()
    }

    /// Waits until no environment is left, or `timeout` has passed; true when none is left.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.live.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

fn interrupt(entry: &mut Entry) {
    if let Some(link) = &entry.link {
        let _ = link.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.environments.lock().live.remove(&self.id);
        self.environments.changed.notify_all();
    }
}

/// An environment's own directory, removed when the environment goes.
struct EnvDir(PathBuf);

impl EnvDir {
    fn create(work_dir: &Path, env: u64) -> Result<EnvDir, GuestError> {
        let path = work_dir.join(format!("env-{env}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|source| GuestError::Dir {
            path: path.clone(),
            source,
        })?;
        Ok(EnvDir(path))
    }
}

impl Drop for EnvDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Guest {
    // Dropped in this order: the link closes, the vmm is killed and reaped, the directory goes,
    // the network goes (its namespace only once no vmm is in it), and then the environment is
    // gone from the service's count.
    pub link: HostLink,
    pub vmm: VmmProcess,
    dir: EnvDir,
    network: Option<EnvNetwork>,
    registration: Registration,
    /// The environment's number within its function (in its log lines and file names).
    pub env: u64,
    /// The VMM's part of a restore, as the `vmm` measured it (load call to vCPUs running).
    pub vmm_time: Option<Duration>,
    /// From the start of the `vmm` to the guest's `Hello`.
    pub boot_time: Duration,
}

impl Guest {
    /// Boots environment `env` in a new `vmm` and waits for its init to connect over vsock.
    /// With `snapshot_dir`, the VM can be snapshotted there ([`Guest::snapshot_after_init`]).
    pub fn boot(
        spec: &GuestSpec,
        env: u64,
        snapshot_dir: Option<&Path>,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let guest = Self::start(spec, env, spec.boot_timeout, log, |dir, uds_path, netns| {
            let config = spec.vm_config(env, uds_path.to_owned());
            let config_path = dir.join("vm.json");
            VmmProcess::boot(&spec.vmm, &config, &config_path, snapshot_dir, netns)
        })?;
        if snapshot_dir.is_none() {
            guest.registration.started();
        }
        Ok(guest)
    }

    /// Restores the snapshot in `snapshot` as environment `env` in a new `vmm`, waits for the
    /// guest's init to reconnect (the restored vsock device reset its connections), and sends
    /// it fresh entropy and the time, which lets the runtime's `restore/next` answer.
    pub fn restore(
        spec: &GuestSpec,
        env: u64,
        snapshot: &Path,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let timeout = spec.boot_timeout.min(RESTORE_TIMEOUT);
        let console = spec.console.path(env);
        let mut guest = Self::start(spec, env, timeout, log, |_, uds_path, netns| {
            VmmProcess::restore(&spec.vmm, snapshot, uds_path, console.as_deref(), netns)
        })?;
        guest.link.restore()?;
        guest.vmm_time = guest.vmm.restore_time();
        guest.registration.started();
        Ok(guest)
    }

    /// One way to start: a place among the service's environments, a fresh environment
    /// directory and network, the host-link listener on its vsock socket (before the VM starts,
    /// so the guest's first connection finds it), the `vmm` that `launch` starts there (in the
    /// network's namespace), and the guest's connection within `timeout`.
    fn start(
        spec: &GuestSpec,
        env: u64,
        timeout: Duration,
        log: impl FnMut(&str) + Send + 'static,
        launch: impl FnOnce(&Path, &Path, Option<&Path>) -> Result<VmmProcess, VmmError>,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let registration = spec.environments.register()?;
        let dir = EnvDir::create(&spec.work_dir, env)?;
        let network = spec.network.as_ref().map(|n| n.create()).transpose()?;
        let uds_path = dir.0.join("vsock.sock");
        let listener = Listener::bind(&uds_path, PORT)?;
        let netns = network.as_ref().map(EnvNetwork::netns);
        let mut vmm = launch(&dir.0, &uds_path, netns.as_deref())?;
        let mut link = wait_for_link(&listener, &mut vmm, &registration, started, timeout)?;
        registration.linked(&link);
        link.on_log(log);
        Ok(Guest {
            link,
            vmm,
            dir,
            network,
            registration,
            env,
            vmm_time: None,
            boot_time: started.elapsed(),
        })
    }

    /// SnapStart's first step: waits for the guest's init to finish (its runtime reached
    /// `restore/next`), then has the `vmm` pause the VM and write the snapshot to the directory
    /// it was booted with. The VM is done after that, as on Lambda: every environment is a
    /// restored copy.
    pub fn snapshot_after_init(mut self, init_timeout: Duration) -> Result<Duration, GuestError> {
        self.link.set_timeout(Some(init_timeout))?;
        let init_duration = self.link.wait_init_done().map_err(|e| match e {
            _ if self.registration.ended() => GuestError::Stopping,
            LinkError::Frame(proto::host_link::FrameError::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                GuestError::InitTimeout(init_timeout)
            }
            e => e.into(),
        })?;
        let Guest {
            link,
            vmm,
            dir,
            network,
            registration,
            ..
        } = self;
        // The snapshot needs the guest's side of the connection as it is; the host's end goes
        // with this process's view of it once the VM is paused.
        let written = vmm.snapshot(SNAPSHOT_TIMEOUT);
        drop(link);
        drop(dir);
        drop(network);
        drop(registration);
        written?;
        Ok(init_duration)
    }

    /// Whether the service is ending this environment (its link was cut on purpose).
    pub fn ended(&self) -> bool {
        self.registration.ended()
    }

    /// Asks the guest to power off and waits up to `grace` for its `vmm` to exit (not at all
    /// when the service is ending every environment at once); then the `vmm` is killed (if
    /// still running) and reaped, and the environment's directory removed.
    pub fn shutdown(self, grace: Duration) {
        let Guest {
            link,
            mut vmm,
            dir,
            network,
            registration,
            ..
        } = self;
        let grace = if registration.environments.ending_all() {
            Duration::ZERO
        } else {
            grace
        };
        if link.shutdown().is_ok() {
            vmm.exited(grace);
        }
        drop(vmm);
        drop(dir);
        drop(network);
        drop(registration);
    }
}

impl Registration {
    fn linked(&self, link: &HostLink) {
        self.environments.linked(self.id, link);
    }

    fn started(&self) {
        self.environments.started(self.id);
    }

    /// Whether the service is ending this environment now.
    fn ended(&self) -> bool {
        let starting = self
            .environments
            .lock()
            .live
            .get(&self.id)
            .is_some_and(|e| e.starting);
        self.environments.ended(starting)
    }
}

/// Accepts the guest's host-link connection, giving up when the VM stops, the service ends
/// the environment, or `timeout` passes.
fn wait_for_link(
    listener: &Listener,
    vmm: &mut VmmProcess,
    registration: &Registration,
    started: Instant,
    timeout: Duration,
) -> Result<HostLink, GuestError> {
    loop {
        if registration.ended() {
            return Err(GuestError::Stopping);
        }
        match listener.accept_within(ACCEPT_SLICE, timeout) {
            Ok(link) => return Ok(link),
            Err(LinkError::AcceptTimeout(_)) => {
                if let Some(exit) = vmm.exited(Duration::ZERO) {
                    return Err(GuestError::Exited(exit));
                }
                if started.elapsed() > timeout {
                    return Err(GuestError::BootTimeout(timeout));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
