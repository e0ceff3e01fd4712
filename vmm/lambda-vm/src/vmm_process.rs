//! One microVM as its own `vmm` process, as Firecracker runs one process per VM: a guest's
//! fault or a VMM bug takes down that process only, and the service's memory holds no guest.
//!
//! The process is started from a Firecracker-style configuration file (boot) or with
//! `--restore-from` (restore); it is killed and reaped when the [`VmmProcess`] is dropped, so an
//! environment that goes away leaves no process behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
    #[error("signalling the vmm process")]
    Signal(#[source] std::io::Error),
    #[error("the vmm did not finish its snapshot within {0:?}")]
    SnapshotTimeout(Duration),
    #[error("the vmm failed: {0:?}")]
    Exited(VmmExit),
}

/// A running `vmm` process.
pub struct VmmProcess {
    child: Child,
    /// Its stderr, kept for the reason it failed (bounded).
    stderr: Arc<Mutex<Vec<String>>>,
    /// Files that belong to this VM only, removed with it.
    owned: Vec<PathBuf>,
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
        let json = serde_json::to_vec_pretty(config).map_err(std::io::Error::other);
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
        Self::spawn(binary, command, netns, vec![config_path.to_owned()])
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
        let mut command = Command::new(binary);
        command
            // At info level the vmm reports how long the restore took it (restore_time).
            .args(["--log-level", "info"])
            .arg("--restore-from")
            .arg(dir)
            .arg("--vsock-uds")
            .arg(vsock_uds)
            .arg("--serial-out")
            .arg(console.unwrap_or(Path::new("/dev/null")));
        Self::spawn(binary, command, netns, Vec::new())
    }

    fn spawn(
        binary: &Path,
        mut command: Command,
        netns: Option<&Path>,
        owned: Vec<PathBuf>,
    ) -> Result<VmmProcess, VmmError> {
        if let Some(netns) = netns {
            join_netns(&mut command, netns).map_err(|source| VmmError::Netns {
                path: netns.to_owned(),
                source,
            })?;
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_dying_with_us(command).map_err(|source| VmmError::Spawn {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
                status: status.to_string(),
                stderr: self
                    .stderr
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .join("\n"),
            },
        }
    }
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
/// (`PR_SET_PDEATHSIG`). The signal fires when the *thread* that forked the child ends, so
/// every `vmm` is forked by one thread that lives as long as the process.
fn spawn_dying_with_us(mut command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: prctl(2) and getppid(2) are plain system calls and nothing here
    // allocates.
    unsafe {
        command.pre_exec(move || {
            let signal = libc::c_ulong::try_from(libc::SIGKILL).unwrap_or(9);
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The service may have died between fork and prctl: then no signal ever comes.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
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
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
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
        .send((command, reply));
    sent.map_err(|_| std::io::Error::other("the vmm spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the vmm spawner thread is gone"))?
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
    }
}
