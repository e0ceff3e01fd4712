//! The launcher's half of each `vmm`'s jail (the `vmm` does the rest to itself, see
//! `vmm::jail`): a user and group of its own, a cgroup with memory, process and CPU limits
//! (the `cgroups` crate: v2 where the service's cgroup is delegated, v1 otherwise), the
//! `--jail-*` flags that say what the VM may see, and a new PID namespace to start it in.
//!
//! What the host allows is found once, at start ([`JailHost::detect`]), and said in the
//! service's first lines ([`JailHost::describe`]).

use cgroups::{Cgroup, Cgroups, CpuQuota, Limits};
use nix::sched::{setns, unshare, CloneFlags};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Jail users and groups are `BASE + service slot * 65536 + environment number`: unused by
/// distributions (which stay below 65536, and below 1 000 000 for subordinate ranges), and
/// different for every environment of every service running at once.
const ID_BASE: u32 = 1_000_000;
const IDS_PER_SERVICE: u32 = 65_536;
const SERVICE_SLOTS: u32 = 4096;
/// Memory a `vmm` may use beyond its guest's: its own heap and stacks, and the page cache of
/// a snapshot it writes.
const VMM_OVERHEAD_MIB: u64 = 256;
/// Threads (and processes) in one jailed `vmm`: main, devices and the vCPUs, with room.
const MAX_PIDS: u32 = 64;
/// The CFS period; a `vmm` gets one period of CPU time per vCPU plus one for its devices.
const CPU_PERIOD_US: u64 = 100_000;
/// The first part of the names of the service's cgroups (`lambda-vm-<pid>-<start>-<n>`).
const CGROUP_SERVER: &str = "lambda-vm";

/// Devices a VM may use, when the host has them: KVM always; the tap device of a network
/// interface.
const DEVICES: [&str; 2] = ["/dev/kvm", "/dev/net/tun"];

/// What this host lets the service do for every `vmm`.
pub struct JailHost {
    /// An empty directory each `vmm` mounts its private root on (in its own mount namespace,
    /// so one directory serves them all).
    root: PathBuf,
    /// The service's own PID namespace, to go back to between two new ones.
    own_pid_ns: File,
    /// Where each `vmm` gets a cgroup; `Err`: why there are no cgroup limits.
    cgroups: Result<Cgroups, String>,
    slot: u32,
}

static HOST: OnceLock<JailHost> = OnceLock::new();
static ENVIRONMENTS: AtomicU32 = AtomicU32::new(0);

/// Turns jails on for every `vmm` started from now on.
pub fn enable(host: JailHost) {
    let _ = HOST.set(host);
}

/// The jail settings, if jails are on.
pub fn host() -> Option<&'static JailHost> {
    HOST.get()
}

impl JailHost {
    /// What jails this host can give; `Err` says why there can be none. `work_dir` holds the
    /// shared mount point.
    pub fn detect(work_dir: &Path) -> Result<JailHost, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "the service is not root (namespaces, pivot_root and other users need it)".into(),
            );
        }
        let root = work_dir.join(".jail-root");
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        let own_pid_ns = File::open("/proc/self/ns/pid")
            .map_err(|e| format!("opening /proc/self/ns/pid: {e}"))?;
        let cgroups = Cgroups::detect(CGROUP_SERVER);
        if let Ok(cgroups) = &cgroups {
            // A service that was killed leaves its `vmm`s' cgroups (and any `vmm` that outlived
            // it) behind: they go now.
            let removed = cgroups.clean_leftovers();
            if !removed.is_empty() {
                log::info!(
                    "removed {} cgroups left by a service that is gone",
                    removed.len()
                );
            }
        }
        Ok(JailHost {
            root,
            own_pid_ns,
            cgroups,
            slot: std::process::id() % SERVICE_SLOTS,
        })
    }

    /// One line: which protections are on, and which are off and why.
    pub fn describe(&self) -> String {
        let cgroups = match &self.cgroups {
            Ok(cgroups) if cgroups.has_cpu() => {
                format!("memory, pids and cpu limits in {}", cgroups.describe())
            }
            Ok(cgroups) => format!(
                "memory and pids limits in {} [no cpu controller: no CPU limit]",
                cgroups.describe()
            ),
            Err(why) => format!("no cgroup limits [{why}]"),
        };
        format!(
            "jail on: PID, mount, IPC, UTS and network namespaces, pivot_root to the VM's files, \
             a user per environment, no_new_privs, closed descriptors, rlimits, {cgroups}"
        )
    }

    /// Sets up the jail of one `vmm`: its user, its cgroup, and the flags that tell it what it
    /// may see. `contents.write` directories (and what is in them) become the jail user's.
    pub fn prepare(&self, contents: &JailContents) -> std::io::Result<EnvJail> {
        let n = ENVIRONMENTS.fetch_add(1, Ordering::Relaxed) % IDS_PER_SERVICE;
        let id = ID_BASE + self.slot * IDS_PER_SERVICE + n;
        for dir in &contents.write {
            own_dir(dir, id)?;
        }
        let cgroup = match &self.cgroups {
            Ok(cgroups) => Some(
                cgroups
                    .create_with(&limits(contents))
                    .map_err(std::io::Error::other)?,
            ),
            Err(_) => None,
        };
        let flags = vmm::jail::JailFlags {
            jail_root: Some(self.root.clone()),
            jail_bind: contents.read.clone(),
            jail_bind_rw: contents.write.clone(),
            jail_dev: DEVICES
                .iter()
                .map(PathBuf::from)
                .filter(|d| std::fs::metadata(d).is_ok_and(|m| m.file_type().is_char_device()))
                .collect(),
            jail_uid: Some(id),
            jail_gid: Some(id),
            jail_netns: contents.netns.clone(),
            jail_cgroup: cgroup
                .iter()
                .flat_map(Cgroup::dirs)
                .map(Path::to_owned)
                .collect(),
        };
        let jail = EnvJail {
            id,
            cgroup,
            args: flags.to_args(),
        };
        Ok(jail)
    }

    /// Runs `spawn` (which forks) with this thread's new children in a new PID namespace,
    /// where the `vmm` is process 1 and sees no other process. Only this thread's children
    /// are affected, and only until it returns.
    pub fn in_new_pid_namespace<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        // A thread can make a new PID namespace for its children only from its own (a second
        // unshare fails), so it goes back first.
        setns(&self.own_pid_ns, CloneFlags::CLONE_NEWPID)?;
        unshare(CloneFlags::CLONE_NEWPID)?;
        let spawned = spawn();
        setns(&self.own_pid_ns, CloneFlags::CLONE_NEWPID)?;
        spawned
    }
}

/// What one VM may see and use.
#[derive(Debug, Default)]
pub struct JailContents {
    /// Files and directories it reads: kernel, image, a snapshot.
    pub read: Vec<PathBuf>,
    /// Directories it writes: its sockets' directory, where its snapshot goes.
    pub write: Vec<PathBuf>,
    /// A network namespace to join instead of a new, empty one.
    pub netns: Option<PathBuf>,
    pub mem_mib: u32,
    pub vcpus: u8,
}

/// One `vmm`'s user and cgroup; the cgroup is removed when it is dropped (after the `vmm` was
/// reaped: anything it left there is killed).
#[derive(Debug)]
pub struct EnvJail {
    id: u32,
    cgroup: Option<Cgroup>,
    args: Vec<OsString>,
}

impl EnvJail {
    /// The `--jail-*` flags for the `vmm`.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    pub fn uid(&self) -> u32 {
        self.id
    }
}

impl Drop for EnvJail {
    fn drop(&mut self) {
        if let Some(cgroup) = &self.cgroup {
            if !cgroup.try_remove() {
                log::warn!(
                    "the cgroup {} is not empty yet; the next start removes it",
                    cgroup.path().display()
                );
            }
        }
    }
}

/// Gives `dir` and what is in it (sockets the service bound there) to the jail's user.
/// A writable file (a drive) is given alone.
fn own_dir(dir: &Path, id: u32) -> std::io::Result<()> {
    let owner = Some(id);
    std::os::unix::fs::chown(dir, owner, owner)?;
    if !std::fs::metadata(dir)?.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_dir() {
            std::os::unix::fs::chown(&path, owner, owner)?;
        }
    }
    Ok(())
}

/// A `vmm`'s cgroup limits: its guest's memory and its own, a few threads, and one CPU's time
/// per vCPU plus one for its devices.
fn limits(contents: &JailContents) -> Limits {
    let mib = u64::from(contents.mem_mib) + VMM_OVERHEAD_MIB;
    Limits {
        memory_bytes: mib << 20,
        max_processes: MAX_PIDS,
        cpu: Some(CpuQuota {
            quota_us: CPU_PERIOD_US * (u64::from(contents.vcpus.max(1)) + 1),
            period_us: CPU_PERIOD_US,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use integration_tests::{ok_or_skip, skip_unless};

    /// Each `vmm` gets a cgroup of its own with its limits, named in its `--jail-cgroup` flags,
    /// and the cgroup goes with its jail.
    #[test]
    fn each_vmm_gets_a_limited_cgroup_that_goes_with_its_jail() {
        skip_unless!(
            nix::unistd::geteuid().is_root(),
            "needs root to make cgroups"
        );
        let work = tempfile::tempdir().unwrap();
        let host = JailHost::detect(work.path()).unwrap();
        let cgroups = ok_or_skip!(host
            .cgroups
            .as_ref()
            .map_err(|why| format!("no cgroups to test with: {why}")));
        let line = host.describe();
        assert!(line.contains(&cgroups.describe()), "{line}");
        eprintln!("{line}");
        let contents = JailContents {
            mem_mib: 128,
            vcpus: 2,
            ..JailContents::default()
        };
        let jail = host.prepare(&contents).unwrap();
        let flagged: Vec<PathBuf> = jail
            .args()
            .windows(2)
            .filter(|pair| pair[0] == "--jail-cgroup")
            .map(|pair| PathBuf::from(&pair[1]))
            .collect();
        let cgroup = jail.cgroup.as_ref().unwrap();
        assert_eq!(
            flagged,
            cgroup.dirs().map(Path::to_owned).collect::<Vec<_>>()
        );
        let memory = ["memory.max", "memory.limit_in_bytes"]
            .iter()
            .find_map(|file| std::fs::read_to_string(cgroup.path().join(file)).ok())
            .unwrap();
        assert_eq!(memory.trim(), ((128 + VMM_OVERHEAD_MIB) << 20).to_string());
        drop(jail);
        for dir in &flagged {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }
}
