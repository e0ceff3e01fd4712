//! One microVM as its own `vmm` process, as Firecracker runs one process per VM: a guest's
//! fault or a VMM bug takes down that process only, and the service's memory holds no guest.
//!
//! The process is started from a Firecracker-style configuration file (boot) or with
//! `--restore-from` (restore); it is killed and reaped when the [`VmmProcess`] is dropped, so an
//! environment that goes away leaves no process behind.
//!
//! When jails are on ([`crate::jail::enable`]) each `vmm` starts in a new PID namespace with
//! the `--jail-*` flags that confine it to its own files, user and cgroups. Its console then
//! goes to its stdout (the console file, opened here), since the jail's user may not open the
//! service's console file itself.

use crate::jail::{EnvJail, JailContents};
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::config::VmConfig;

/// How a `vmm` ended, by its exit code (see the `vmm` binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// 0: the guest shut down, or the snapshot was written.
    Shutdown,
    /// 3: the guest crashed (triple fault, emulation failure).
    GuestCrash,
    /// Any other exit: a VMM error, usage error, or a signal. The VMM's last words.
    Failed { status: String, stderr: String },
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("writing the VM configuration {}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the vmm's jail")]
    Jail(#[source] std::io::Error),
    #[error("opening the console {}", path.display())]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signalling the vmm process")]
    Signal(#[source] std::io::Error),
    #[error("the vmm did not finish its snapshot within {0:?}")]
    SnapshotTimeout(Duration),
    #[error("the vmm failed: {0}")]
    Exited(VmmExit),
}

/// A running `vmm` process.
pub struct VmmProcess {
    child: Child,
    /// Its stderr, kept for the reason it failed (bounded).
    stderr: Arc<Mutex<Vec<String>>>,
    /// Files that belong to this VM only, removed with it.
    owned: Vec<PathBuf>,
    /// Its jail's user and cgroups (the cgroups go after the process is reaped).
    jail: Option<EnvJail>,
}

/// Set by [`disable_seccomp`].
static NO_SECCOMP: AtomicBool = AtomicBool::new(false);

/// Starts every `vmm` from now on with `--no-seccomp` (debugging and measuring only).
pub fn disable_seccomp() {
    NO_SECCOMP.store(true, Ordering::Relaxed);
}

/// What an environment's jail takes from its caller beyond the VM's own files.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    /// A network namespace (e.g. /run/netns/NAME) the `vmm` joins instead of a new, empty one.
    pub netns: Option<PathBuf>,
}

/// Most stderr lines kept from one `vmm`.
const STDERR_LINES: usize = 64;

impl VmmProcess {
    /// Boots `config` in a new `vmm` (its configuration file written to `config_path`). With
    /// `snapshot_dir`, SIGUSR1 ([`VmmProcess::snapshot`]) makes it write a snapshot there. With
    /// `netns`, the `vmm` runs in that network namespace (where its tap is).
    pub fn boot(
        binary: &Path,
        config: &VmConfig,
        config_path: &Path,
        snapshot_dir: Option<&Path>,
        netns: Option<&Path>,
    ) -> Result<VmmProcess, VmmError> {
        Self::boot_in(
            binary,
            config,
            config_path,
            snapshot_dir,
            &Isolation {
                netns: netns.map(Path::to_owned),
            },
        )
    }

    /// [`VmmProcess::boot`] with per-environment isolation inputs.
    pub fn boot_in(
        binary: &Path,
        config: &VmConfig,
        config_path: &Path,
        snapshot_dir: Option<&Path>,
        isolation: &Isolation,
    ) -> Result<VmmProcess, VmmError> {
        let mut config = config.clone();
        let mut console = None;
        let jail = match crate::jail::host() {
            Some(host) => {
                console = config
                    .serial
                    .as_mut()
                    .and_then(|s| s.serial_out_path.take());
                let contents = boot_contents(&config, config_path, snapshot_dir, isolation)
                    .map_err(VmmError::Jail)?;
                Some(prepare_jail(host, &contents)?)
            }
            None => None,
        };
        let json = serde_json::to_vec_pretty(&config).map_err(std::io::Error::other);
        json.and_then(|json| std::fs::write(config_path, json))
            .map_err(|source| VmmError::Config {
                path: config_path.to_owned(),
                source,
            })?;
        let mut command = Command::new(binary);
        command.arg("--config-file").arg(config_path);
        if let Some(dir) = snapshot_dir {
            command.arg("--snapshot-dir").arg(dir);
        }
        let stdout = console_output(jail.is_some(), console.as_deref())?;
        let netns = isolation.netns.as_deref();
        Self::spawn(
            binary,
            command,
            netns,
            vec![config_path.to_owned()],
            jail,
            stdout,
        )
    }

    /// Restores the snapshot in `dir` in a new `vmm`, its vsock device on `vsock_uds` and its
    /// console to `console` (discarded when `None`), in the network namespace `netns` if any.
    pub fn restore(
        binary: &Path,
        dir: &Path,
        vsock_uds: &Path,
        console: Option<&Path>,
        netns: Option<&Path>,
    ) -> Result<VmmProcess, VmmError> {
        let isolation = Isolation {
            netns: netns.map(Path::to_owned),
        };
        Self::restore_in(binary, dir, vsock_uds, console, &isolation)
    }

    /// [`VmmProcess::restore`] with per-environment isolation inputs.
    pub fn restore_in(
        binary: &Path,
        dir: &Path,
        vsock_uds: &Path,
        console: Option<&Path>,
        isolation: &Isolation,
    ) -> Result<VmmProcess, VmmError> {
        let jail = match crate::jail::host() {
            Some(host) => {
                let contents = restore_contents(dir, vsock_uds, isolation);
                Some(prepare_jail(host, &contents)?)
            }
            None => None,
        };
        let mut command = Command::new(binary);
        command
            // At info level the vmm reports how long the restore took it (restore_time).
            .args(["--log-level", "info"])
            .arg("--restore-from")
            .arg(dir)
            .arg("--vsock-uds")
            .arg(vsock_uds);
        if jail.is_none() {
            command
                .arg("--serial-out")
                .arg(console.unwrap_or(Path::new("/dev/null")));
        }
        let stdout = console_output(jail.is_some(), console)?;
        let netns = isolation.netns.as_deref();
        Self::spawn(binary, command, netns, Vec::new(), jail, stdout)
    }

    fn spawn(
        binary: &Path,
        mut command: Command,
        netns: Option<&Path>,
        owned: Vec<PathBuf>,
        jail: Option<EnvJail>,
        stdout: Stdio,
    ) -> Result<VmmProcess, VmmError> {
        // A jailed vmm joins its namespace itself (`--jail-netns`), after the jail's other steps.
        if let (Some(netns), None) = (netns, &jail) {
            join_netns(&mut command, netns).map_err(|source| VmmError::Netns {
                path: netns.to_owned(),
                source,
            })?;
        }
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        if let Some(jail) = &jail {
            command.args(jail.args());
        }
        if NO_SECCOMP.load(Ordering::Relaxed) {
            command.arg("--no-seccomp");
        }
        let mut child =
            spawn_dying_with_us(command, jail.is_some()).map_err(|source| VmmError::Spawn {
                path: binary.to_owned(),
                source,
            })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let kept = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == STDERR_LINES {
                        kept.remove(0);
                    }
                    kept.push(line);
                }
            });
        }
        Ok(VmmProcess {
            child,
            stderr,
            owned,
            jail,
        })
    }

    /// The VMM's own restore time (load call to vCPUs running), from its log.
    pub fn restore_time(&self) -> Option<Duration> {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().find_map(|line| {
            let ms = line.split("restored in ").nth(1)?.strip_suffix(" ms")?;
            Duration::try_from_secs_f64(ms.parse::<f64>().ok()? / 1000.0).ok()
        })
    }

    /// Its process ID as the service sees it (in a jail, its own PID namespace calls it 1).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The user its jail runs it as, if it is jailed.
    pub fn jail_uid(&self) -> Option<u32> {
        self.jail.as_ref().map(EnvJail::uid)
    }

    /// How the process ended, if it has; waits up to `timeout` (not at all for zero).
    pub fn exited(&mut self, timeout: Duration) -> Option<VmmExit> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(self.exit_of(status)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => return None,
                Err(e) => {
                    return Some(VmmExit::Failed {
                        status: format!("cannot wait for it: {e}"),
                        stderr: String::new(),
                    })
                }
            }
        }
    }

    /// Asks the `vmm` to pause and write its snapshot (it was booted with a snapshot
    /// directory), and waits up to `timeout` for it to finish and exit.
    pub fn snapshot(mut self, timeout: Duration) -> Result<(), VmmError> {
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(self.child.id())
                .map_err(|e| VmmError::Signal(std::io::Error::other(e)))?,
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1)
            .map_err(|errno| VmmError::Signal(errno.into()))?;
        match self.exited(timeout) {
            Some(VmmExit::Shutdown) => Ok(()),
            Some(other) => Err(VmmError::Exited(other)),
            None => Err(VmmError::SnapshotTimeout(timeout)),
        }
    }

    fn exit_of(&self, status: ExitStatus) -> VmmExit {
        match status.code() {
            Some(0) => VmmExit::Shutdown,
            Some(3) => VmmExit::GuestCrash,
            _ => VmmExit::Failed {
                status: match status.signal() {
                    Some(libc::SIGSYS) => format!(
                        "{status}: killed by its seccomp filter (a system call its thread may not make)"
                    ),
                    _ => status.to_string(),
                },
                stderr: self
                    .stderr
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .join("\n"),
            },
        }
    }
}

/// The jail of one `vmm`; its tap (if it has a network) becomes the jail user's, since the
/// `vmm` attaches to it only after giving up root.
fn prepare_jail(
    host: &crate::jail::JailHost,
    contents: &crate::jail::JailContents,
) -> Result<EnvJail, VmmError> {
    let jail = host.prepare(contents).map_err(VmmError::Jail)?;
    if let Some(netns) = &contents.netns {
        crate::network::give_tap(netns, jail.uid(), jail.uid())
            .map_err(|e| VmmError::Jail(std::io::Error::other(e)))?;
    }
    Ok(jail)
}

/// Makes `command`'s process join the network namespace at `netns` before it runs. The
/// namespace file is opened here (close-on-exec, so the `vmm` does not keep it) and joined in
/// the child, so the service itself never changes namespace.
fn join_netns(command: &mut Command, netns: &Path) -> std::io::Result<()> {
    let namespace = std::fs::File::open(netns)?;
    // SAFETY: the closure runs in the forked child before exec; setns(2) is a plain system
    // call on a descriptor the closure owns (and so keeps open until the child execs).
    unsafe {
        command.pre_exec(move || {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&namespace);
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Spawns `command` so that it is killed when this service dies, however it dies
/// (`PR_SET_PDEATHSIG`); `jailed`: in a new PID namespace. The signal fires when the *thread*
/// that forked the child ends, so every `vmm` is forked by one thread that lives as long as
/// the process (and whose PID namespace for children is its own to change).
fn spawn_dying_with_us(mut command: Command, jailed: bool) -> std::io::Result<Child> {
    type Request = (Command, bool, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let lifeline = lifeline()?;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: prctl(2), close(2) and poll(2) are plain system calls on integers and
    // a stack array, and nothing here allocates.
    unsafe {
        command.pre_exec(move || {
            let signal = libc::c_ulong::try_from(libc::SIGKILL).unwrap_or(9);
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The service may have died between fork and prctl: then no signal ever comes.
            // Its end of the lifeline is then closed everywhere (the child's copy goes now),
            // which a poll sees as a hang-up. getppid(2) cannot tell: in a new PID namespace
            // the parent is outside and always reads as 0.
            libc::close(lifeline.alive);
            let mut watch = [libc::pollfd {
                fd: lifeline.watch,
                events: libc::POLLIN,
                revents: 0,
            }];
            if libc::poll(watch.as_mut_ptr(), 1, 0) != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new()
            .name("vmm-spawner".into())
            .spawn(move || {
                for (mut command, jailed, reply) in incoming {
                    let spawned = match crate::jail::host() {
                        Some(host) if jailed => host.in_new_pid_namespace(|| command.spawn()),
                        _ => command.spawn(),
                    };
                    let _ = reply.send(spawned);
                }
            });
        if let Err(e) = started {
            log::error!("cannot start the vmm spawner thread: {e}");
        }
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    let sent = spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, jailed, reply));
    sent.map_err(|_| std::io::Error::other("the vmm spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the vmm spawner thread is gone"))?
}

/// A pipe nobody writes to, whose write end (`alive`) only this process keeps open: a child
/// polling the read end (`watch`) sees a hang-up once this process is gone.
#[derive(Clone, Copy)]
struct Lifeline {
    watch: libc::c_int,
    alive: libc::c_int,
}

fn lifeline() -> std::io::Result<Lifeline> {
    static LIFELINE: OnceLock<Result<Lifeline, i32>> = OnceLock::new();
    let made = LIFELINE.get_or_init(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given; both are
        // close-on-exec, so no `vmm` keeps them, and they live as long as the process.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(Lifeline {
            watch: fds[0],
            alive: fds[1],
        })
    });
    made.map_err(std::io::Error::from_raw_os_error)
}

/// Where a `vmm`'s stdout goes: in a jail, its console (appended to, or discarded); outside,
/// nowhere (it writes the console itself).
fn console_output(jailed: bool, console: Option<&Path>) -> Result<Stdio, VmmError> {
    match console {
        Some(path) if jailed => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .map_err(|source| VmmError::Console {
                path: path.to_owned(),
                source,
            }),
        _ => Ok(Stdio::null()),
    }
}

/// A booting VM's files: kernel and initrd and read-only drives to read; its own directory
/// (configuration, sockets), writable drives and the snapshot's parent to write.
fn boot_contents(
    config: &VmConfig,
    config_path: &Path,
    snapshot_dir: Option<&Path>,
    isolation: &Isolation,
) -> std::io::Result<JailContents> {
    let boot = &config.boot_source;
    let mut read = vec![boot.kernel_image_path.clone()];
    read.extend(boot.initrd_path.clone());
    let mut write: Vec<PathBuf> = config_path
        .parent()
        .map(Path::to_owned)
        .into_iter()
        .collect();
    for drive in &config.drives {
        if drive.is_read_only {
            read.push(drive.path_on_host.clone());
        } else {
            write.push(drive.path_on_host.clone());
        }
    }
    if let Some(uds) = config.vsock.as_ref().and_then(|v| v.uds_path.parent()) {
        if !write.iter().any(|w| w == uds) {
            write.push(uds.to_owned());
        }
    }
    if let Some(parent) = snapshot_dir.and_then(Path::parent) {
        // The snapshot is staged beside its final name and renamed into place there.
        std::fs::create_dir_all(parent)?;
        write.push(parent.to_owned());
    }
    let guest_mib = config.machine_config.mem_size_mib;
    Ok(JailContents {
        read,
        write,
        netns: isolation.netns.clone(),
        // A snapshot writes all of guest memory through the page cache, which is charged to
        // the writer: room for it, so the write does not have to wait on reclaim.
        mem_mib: if snapshot_dir.is_some() {
            guest_mib.saturating_mul(2)
        } else {
            guest_mib
        },
        vcpus: config.machine_config.vcpu_count,
    })
}

/// A restored VM's files: the snapshot and the drives it names to read, its sockets' directory
/// to write. A snapshot that cannot be read here names no drive; the `vmm` then refuses it
/// with the reason.
fn restore_contents(dir: &Path, vsock_uds: &Path, isolation: &Isolation) -> JailContents {
    let state = vmm::snapshot::file::load::<vmm::snapshot::MicrovmState>(
        &dir.join(vmm::snapshot::STATE_FILE),
    );
    let mut contents = JailContents {
        read: vec![dir.to_owned()],
        write: vsock_uds.parent().map(Path::to_owned).into_iter().collect(),
        netns: isolation.netns.clone(),
        mem_mib: 0,
        vcpus: 1,
    };
    if let Ok(state) = state {
        contents.mem_mib = u32::try_from(state.mem_size_bytes >> 20).unwrap_or(u32::MAX);
        contents.vcpus = u8::try_from(state.vcpus.len()).unwrap_or(u8::MAX);
        for device in &state.devices {
            if let vmm::microvm::DeviceSpec::Block(drive) = &device.spec {
                if drive.read_only {
                    contents.read.push(drive.path.clone());
                } else {
                    contents.write.push(drive.path.clone());
                }
            }
        }
    }
    contents
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for path in &self.owned {
            let _ = std::fs::remove_file(path);
        }
        self.jail = None;
    }
}
