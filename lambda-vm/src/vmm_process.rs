//! One microVM's `vmm` process, as Firecracker runs one process per VM: a guest's fault or a
//! VMM bug takes down that process only, and the service's memory holds no guest.
//!
//! This module starts the process and ends it; it never tells it what to run. Every `vmm` is
//! started bare, serving Firecracker's API on a socket in its environment's directory
//! (`--api-sock`, `--serve-after-stop`), and [`crate::vmm_api`] then boots or restores its VM
//! through that socket. So a process can be started, jailed and filtered long before anyone
//! knows which request it will serve.
//!
//! With a jail ([`Launcher::jail`]) each `vmm` starts in a new PID namespace with the
//! `--jail-*` flags that confine it to its own files, user and cgroups. Its console is always
//! its stdout (the console file, opened here, since a jailed user may not open it itself). The
//! process is killed and reaped when the [`VmmProcess`] is dropped, so an environment that goes
//! away leaves no process behind.

use crate::jail::{EnvJail, JailContents, JailHost};
use crate::spawner::spawn_dying_with_us;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use vmm::config::VmConfig;
use vmm::snapshot::manifest::SnapshotManifest;

/// The API socket's name in an environment's directory.
pub const API_SOCKET: &str = "api.sock";

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
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
}

/// How every `vmm` of the service is started: which binary, in which jail, with or without its
/// seccomp filters. Decided once at start and passed down to each environment.
#[derive(Debug)]
pub struct Launcher {
    pub binary: PathBuf,
    /// What this host's jails can do; `None`: every `vmm` runs unjailed.
    pub jail: Option<Arc<JailHost>>,
    /// `false`: every `vmm` runs with `--no-seccomp` (debugging and measuring only).
    pub seccomp: bool,
}

/// A running `vmm` process.
pub struct VmmProcess {
    child: Child,
    /// Its API socket.
    api_socket: PathBuf,
    /// Its stderr, kept to say why it ended when it ends before its API can (bounded).
    stderr: Arc<Mutex<Vec<String>>>,
    /// Its jail's user and cgroups (the cgroups go after the process is reaped).
    jail: Option<EnvJail>,
}

/// Most stderr lines kept from one `vmm`.
const STDERR_LINES: usize = 64;

impl Launcher {
    /// Starts a `vmm` that serves its API on `API_SOCKET` in `env_dir`, in a jail holding
    /// `contents` (and in its network namespace, jailed or not), its console to `console`
    /// (discarded when `None`).
    pub fn spawn(
        &self,
        contents: &JailContents,
        env_dir: &Path,
        console: Option<&Path>,
    ) -> Result<VmmProcess, SpawnError> {
        let jail = match &self.jail {
            Some(host) => Some(prepare_jail(host, contents)?),
            None => None,
        };
        let api_socket = env_dir.join(API_SOCKET);
        let mut command = Command::new(&self.binary);
        command
            .arg("--api-sock")
            .arg(&api_socket)
            .arg("--serve-after-stop");
        match (&contents.netns, &jail) {
            (_, Some(jail)) => {
                // A jailed vmm joins its namespace itself (`--jail-netns`), after the jail's
                // other steps.
                command.args(jail.args());
            }
            (Some(netns), None) => {
                join_netns(&mut command, netns).map_err(|source| SpawnError::Netns {
                    path: netns.clone(),
                    source,
                })?;
            }
            (None, None) => {}
        }
        if !self.seccomp {
            command.arg("--no-seccomp");
        }
        command
            .stdin(Stdio::null())
            .stdout(console_output(console)?)
            .stderr(Stdio::piped());
        let pid_namespace = jail.as_ref().and(self.jail.clone());
        let mut child =
            spawn_dying_with_us(command, pid_namespace).map_err(|source| SpawnError::Spawn {
                path: self.binary.clone(),
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
            api_socket,
            stderr,
            jail,
        })
    }
}

/// How a `vmm` process ended on its own: killed (by its seccomp filter, say), or failed before
/// its API served (a jail it could not enter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Died {
    /// The exit status, explained when it is a seccomp kill.
    pub status: String,
    /// Its last words on stderr.
    pub stderr: String,
}

impl std::fmt::Display for Died {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The vmm's last line says why (`vmm: error: ...`); earlier ones are context.
        match self.stderr.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => write!(f, "the vmm ended ({}): {}", self.status, last.trim()),
            None => write!(f, "the vmm ended ({})", self.status),
        }
    }
}

impl VmmProcess {
    /// Its API socket.
    pub fn api_socket(&self) -> &Path {
        &self.api_socket
    }

    /// Its process ID as the service sees it (in a jail, its own PID namespace calls it 1).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has (without waiting).
    pub fn died(&mut self) -> Option<Died> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(self.death(status)),
            Ok(None) => None,
            Err(e) => Some(Died {
                status: format!("cannot wait for it: {e}"),
                stderr: String::new(),
            }),
        }
    }

    fn death(&self, status: ExitStatus) -> Died {
        let status = match status.signal() {
            Some(libc::SIGSYS) => format!(
                "{status}: killed by its seccomp filter (a system call its thread may not make)"
            ),
            _ => status.to_string(),
        };
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n");
        Died { status, stderr }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.api_socket);
        self.jail = None;
    }
}

/// The jail of one `vmm`; its tap (if it has a network) becomes the jail user's, since the
/// `vmm` attaches to it only after giving up root.
fn prepare_jail(host: &JailHost, contents: &JailContents) -> Result<EnvJail, SpawnError> {
    let jail = host.prepare(contents).map_err(SpawnError::Jail)?;
    if let Some(netns) = &contents.netns {
        crate::network::give_tap(netns, jail.uid(), jail.uid())
            .map_err(|e| SpawnError::Jail(std::io::Error::other(e)))?;
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

/// Where a `vmm`'s stdout (its guest console) goes: the console file, appended to, or nowhere.
fn console_output(console: Option<&Path>) -> Result<Stdio, SpawnError> {
    match console {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .map_err(|source| SpawnError::Console {
                path: path.to_owned(),
                source,
            }),
        None => Ok(Stdio::null()),
    }
}

/// A booting VM's jail: kernel and initrd and read-only drives to read; its own directory
/// (sockets), writable drives and the staging directory of the snapshot it will write.
pub fn boot_contents(
    config: &VmConfig,
    env_dir: &Path,
    snapshot_staging: Option<&Path>,
    netns: Option<PathBuf>,
) -> JailContents {
    let boot = &config.boot_source;
    let mut read = vec![boot.kernel_image_path.clone()];
    read.extend(boot.initrd_path.clone());
    let mut write = vec![env_dir.to_owned()];
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
    write.extend(snapshot_staging.map(Path::to_owned));
    let guest_mib = config.machine_config.mem_size_mib;
    JailContents {
        read,
        write,
        netns,
        // A snapshot writes all of guest memory through the page cache, which is charged to
        // the writer: room for it, so the write does not have to wait on reclaim.
        mem_mib: if snapshot_staging.is_some() {
            guest_mib.saturating_mul(2)
        } else {
            guest_mib
        },
        vcpus: config.machine_config.vcpu_count,
    }
}

/// A restored VM's jail, from the snapshot's manifest (never its state file): the snapshot
/// directory and the drives it names to read, its own directory (sockets) to write.
pub fn restore_contents(
    manifest: &SnapshotManifest,
    snapshot_dir: &Path,
    env_dir: &Path,
    netns: Option<PathBuf>,
) -> JailContents {
    let mut contents = JailContents {
        read: vec![snapshot_dir.to_owned()],
        write: vec![env_dir.to_owned()],
        netns,
        mem_mib: manifest.mem_size_mib,
        vcpus: manifest.vcpu_count,
    };
    for drive in &manifest.drives {
        if drive.is_read_only {
            contents.read.push(drive.path_on_host.clone());
        } else {
            contents.write.push(drive.path_on_host.clone());
        }
    }
    contents
}
