//! One function environment: a microVM in its own `vmm` process, and the host link its init
//! opened. Each environment has a directory of its own (API and vsock sockets), removed with it,
//! and is known to the service's [`Environments`] from before its `vmm` starts until everything
//! of it is gone, so that stopping the service can end it and wait for it.
//!
//! An environment is made in two steps: [`Prepared`] (its directory, network, host-link
//! listener, and its `vmm` started, jailed and answering on its API, with no VM yet), then a
//! boot ([`Guest::boot`]) or a restore ([`Guest::resume`]) through that API. The first step
//! can be done ahead of any request ([`crate::ready`]).

use crate::host_link::{GuestAddr, HostLink, LinkError, Listener, PORT};
use crate::jail::JailContents;
use crate::network::{EnvNetwork, NetworkError, Networks};
use crate::snapshots::Snapshot;
use crate::vmm_api::{Vmm, VmmError, VmmExit};
use crate::vmm_process::{boot_contents, restore_contents, Launcher};
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vmm::api::types::WorkingSetStatus;
use vmm::builder::default_boot_args;
use vmm::config::{BootSource, CpuTemplate, Drive, Entropy, MachineConfig, VmConfig, Vsock};

/// The guest CID every function VM gets: each VM has its own vsock device and socket, so they
/// need not differ.
const GUEST_CID: u32 = 3;
/// How often the boot wait looks at the VM while waiting for the guest's connection.
const ACCEPT_SLICE: Duration = Duration::from_millis(200);
/// How long a restored guest's init may take to answer the host's connection. It takes about
/// 0.1 s even on emulated KVM; a guest that has not answered long after that came from a bad
/// snapshot.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fresh `vmm` may take to serve its API (tens of milliseconds; a loaded host can
/// take much longer to start processes).
const API_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a restored guest is dialled before its refusal counts: its first connection
/// can be caught by the reset of the snapshot's connections.
const DIAL_ATTEMPTS: u32 = 4;
/// The vsock device's socket in an environment's directory.
const VSOCK_SOCKET: &str = "vsock.sock";

/// What a function's microVM boots.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// How each environment's `vmm` is started (binary, jail, seccomp).
    pub launcher: Arc<Launcher>,
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

    /// The Firecracker-style configuration of a VM whose vsock device is on `uds_path` (its
    /// console is its `vmm`'s stdout).
    fn vm_config(&self, uds_path: PathBuf) -> VmConfig {
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
            serial: None,
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
    #[error("the microVM")]
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
    #[error("no host-link listener for the booting guest")]
    NoListener,
    #[error("the runtime's init did not reach restore/next within {} s", .0.as_secs())]
    InitTimeout(Duration),
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

    /// Records (a second handle on) `id`'s host link, ending it at once if the environment is
    /// already to end.
    fn linked(&self, id: u64, link: Option<UnixStream>) {
        let mut state = self.lock();
        let stop = state.stop;
        if let Some(entry) = state.live.get_mut(&id) {
            entry.link = link;
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

impl EnvDir {
    /// The vsock device's socket (the host link listens beside it, `<socket>_<port>`).
    fn vsock(&self) -> PathBuf {
        self.0.join(VSOCK_SOCKET)
    }
}

impl Drop for EnvDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An environment before its VM: its place among the service's environments, its directory and
/// network, and its `vmm` started, jailed and filtered, answering on its API with no VM yet.
/// [`Guest::boot`] or [`Guest::resume`] makes it a [`Guest`]; dropped, it leaves nothing.
pub struct Prepared {
    // Dropped in this order: the vmm is killed and reaped, the listener and the directory go,
    // the network goes (its namespace only once no vmm is in it), and then the environment is
    // gone from the service's count.
    vmm: Vmm,
    dir: EnvDir,
    network: Option<EnvNetwork>,
    registration: Registration,
    /// The environment's number within its function (in its log lines and file names).
    pub env: u64,
}

impl Prepared {
    /// Makes environment `env` up to its `vmm` waiting on its API, jailed with what `contents`
    /// says (given the environment's directory and network namespace); with `listen`, also the
    /// host-link listener a booting guest's init connects to (bound before the jail is made,
    /// which gives the socket to the jail's user).
    fn new(
        spec: &GuestSpec,
        env: u64,
        listen: bool,
        contents: impl FnOnce(&Path, Option<PathBuf>) -> JailContents,
    ) -> Result<(Prepared, Option<Listener>), GuestError> {
        let registration = spec.environments.register()?;
        let dir = EnvDir::create(&spec.work_dir, env)?;
        let network = spec.network.as_ref().map(|n| n.create()).transpose()?;
        let listener = listen
            .then(|| Listener::bind(&dir.vsock(), PORT))
            .transpose()?;
        let contents = contents(&dir.0, network.as_ref().map(EnvNetwork::netns));
        let console = spec.console.path(env);
        let process = spec
            .launcher
            .spawn(&contents, &dir.0, console.as_deref())
            .map_err(VmmError::from)?;
        let vmm = Vmm::connect(process, API_START_TIMEOUT)?;
        let prepared = Prepared {
            vmm,
            dir,
            network,
            registration,
            env,
        };
        Ok((prepared, listener))
    }

    /// Environment `env` ready to restore `snapshot`: its `vmm` jailed with the snapshot's
    /// files (from its manifest) and its memory size.
    pub fn for_restore(
        spec: &GuestSpec,
        env: u64,
        snapshot: &Snapshot,
    ) -> Result<Prepared, GuestError> {
        let (prepared, _) = Prepared::new(spec, env, false, |dir, netns| {
            restore_contents(&snapshot.manifest, &snapshot.dir, dir, netns)
        })?;
        Ok(prepared)
    }

    /// Whether its `vmm` process has ended (a ready process killed while it waited).
    pub fn died(&mut self) -> bool {
        self.vmm.died()
    }

    /// Its `vmm`'s process ID.
    pub fn pid(&self) -> u32 {
        self.vmm.pid()
    }

    /// Makes the environment a [`Guest`] on its host link.
    fn into_guest(
        self,
        link: HostLink,
        started: Instant,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Guest {
        let Prepared {
            vmm,
            dir,
            network,
            registration,
            env,
            ..
        } = self;
        let mut link = link;
        registration.linked(link.interrupter().ok());
        link.on_log(log);
        Guest {
            link,
            vmm,
            dir,
            network,
            registration,
            env,
            vmm_time: None,
            working_set: None,
            record_working_set: None,
            boot_time: started.elapsed(),
            dial_attempts: 0,
        }
    }

    /// Whether the service is ending this environment.
    fn ended(&self) -> bool {
        self.registration.ended()
    }

    /// What ended a wait on the guest: the service stopping, the VM stopping, or `error`.
    fn failed(&mut self, error: LinkError) -> GuestError {
        if self.registration.ended() {
            return GuestError::Stopping;
        }
        match self.vmm.exited(Duration::ZERO) {
            Some(exit) => GuestError::Exited(exit),
            None => error.into(),
        }
    }
}

pub struct Guest {
    // Dropped in this order: the link closes, the vmm is killed and reaped, the directory goes,
    // the network goes (its namespace only once no vmm is in it), and then the environment is
    // gone from the service's count.
    pub link: HostLink,
    pub vmm: Vmm,
    dir: EnvDir,
    network: Option<EnvNetwork>,
    registration: Registration,
    /// The environment's number within its function (in its log lines and file names).
    pub env: u64,
    /// The VMM's part of a restore, as the `vmm` measured it (reading the state to the vCPUs
    /// running).
    pub vmm_time: Option<Duration>,
    /// What the restore did with the snapshot's working set, when it was given one.
    pub working_set: Option<WorkingSetStatus>,
    /// Where to keep this restored guest's working set once its first invoke is done: set
    /// when the snapshot has none (or one the restore could not use).
    pub record_working_set: Option<PathBuf>,
    /// From the boot or restore request to the guest's `Hello`.
    pub boot_time: Duration,
    /// How many connections a restore took to reach the guest's init (see [`DIAL_ATTEMPTS`]).
    pub dial_attempts: u32,
}

impl Guest {
    /// Boots environment `env` in a new `vmm` and waits for its init to connect over vsock.
    /// With `snapshot_staging`, the VM may write a snapshot there
    /// ([`Guest::snapshot_after_init`]).
    pub fn boot(
        spec: &GuestSpec,
        env: u64,
        snapshot_staging: Option<&Path>,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let mut config = None;
        let (mut prepared, listener) = Prepared::new(spec, env, true, |dir, netns| {
            let vm = spec.vm_config(dir.join(VSOCK_SOCKET));
            let contents = boot_contents(&vm, dir, snapshot_staging, netns);
            config = Some(vm);
            contents
        })?;
        if let Some(config) = &config {
            prepared.vmm.boot(config)?;
        }
        let listener = listener.ok_or(GuestError::NoListener)?;
        let link = wait_for_link(
            &listener,
            &mut prepared.vmm,
            &prepared.registration,
            started,
            spec.boot_timeout,
        )?;
        drop(listener);
        let guest = prepared.into_guest(link, started, log);
        if snapshot_staging.is_none() {
            guest.registration.started();
        }
        Ok(guest)
    }

    /// Restores `snapshot` as environment `env` in a new `vmm` ([`Guest::resume`]).
    pub fn restore(
        spec: &GuestSpec,
        env: u64,
        snapshot: &Snapshot,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let prepared = Prepared::for_restore(spec, env, snapshot)?;
        Guest::resume(spec, prepared, snapshot, None, log)
    }

    /// Restores `snapshot` in `prepared`'s waiting `vmm` (one `PUT /snapshot/load`, running
    /// at once) and connects to the guest's init, which listens from before the snapshot: the
    /// connection request, the host's `Hello` and the `Restore` (fresh entropy and the time,
    /// which lets the runtime's `restore/next` answer) go in one write as soon as the VM runs,
    /// instead of waiting for init to notice that the restore reset its old connection.
    pub fn resume(
        spec: &GuestSpec,
        mut prepared: Prepared,
        snapshot: &Snapshot,
        working_set: Option<&Path>,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let timeout = spec.boot_timeout.min(RESTORE_TIMEOUT);
        let vsock = prepared.dir.vsock();
        prepared.vmm.restore(snapshot, &vsock, working_set)?;
        let addr = GuestAddr::Vsock {
            uds: &vsock,
            port: PORT,
        };
        let mut attempt = 1;
        let link = loop {
            let dialed = HostLink::dial(addr).and_then(|dialing| {
                prepared.registration.linked(dialing.interrupter().ok());
                dialing.finish(timeout)
            });
            match dialed {
                Ok(link) => break link,
                // The restored vsock device tells the guest to reset its connections, and a
                // guest that takes our connection before it gets to that reset resets ours too
                // (its kernel handles the device's queues in their order, not in the order
                // they were filled). That reset is done by the time ours is closed: again.
                Err(e) if e.is_closed() && attempt < DIAL_ATTEMPTS && !prepared.ended() => {
                    attempt += 1;
                }
                Err(e) => return Err(prepared.failed(e)),
            }
        };
        let mut guest = prepared.into_guest(link, started, log);
        guest.dial_attempts = attempt;
        (guest.vmm_time, guest.working_set) = guest.vmm.restore_report();
        guest.registration.started();
        Ok(guest)
    }

    /// SnapStart's first step: waits for the guest's init to finish (its runtime reached
    /// `restore/next`), then pauses the VM and writes its snapshot into `staging` (the
    /// directory it was booted with). The VM is done after that, as on Lambda: every
    /// environment is a restored copy.
    pub fn snapshot_after_init(
        mut self,
        staging: &Path,
        init_timeout: Duration,
    ) -> Result<Duration, GuestError> {
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
            mut vmm,
            dir,
            network,
            registration,
            ..
        } = self;
        // The snapshot needs the guest's side of the connection as it is; the host's end goes
        // with this process's view of it once the VM is paused.
        let written = vmm.snapshot(staging);
        drop(link);
        drop(vmm);
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

    /// Asks the guest to power off and waits up to `grace` for its VM to stop (not at all
    /// when the service is ending every environment at once); then the `vmm` is killed and
    /// reaped, and the environment's directory removed.
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
    fn linked(&self, link: Option<UnixStream>) {
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
    vmm: &mut Vmm,
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
