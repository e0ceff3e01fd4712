//! The launcher's half of each `vmm`'s jail (the `vmm` does the rest to itself, see
//! `vmm::jail`): a user and group of its own, cgroups with memory, process and CPU limits,
//! the `--jail-*` flags that say what the VM may see, and a new PID namespace to start it in.
//!
//! What the host allows is found once, at start ([`JailHost::detect`]), and said in the
//! service's first lines ([`JailHost::describe`]).

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
/// The cgroup v1 controllers used, each mounted at /sys/fs/cgroup/<name>.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const V2_ROOT: &str = "/sys/fs/cgroup/unified";

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
    /// The cgroup v1 controllers usable here, under which each `vmm` gets a group.
    cgroups: Vec<PathBuf>,
    /// Why cgroup limits are partly or wholly off, if they are.
    cgroup_note: Option<String>,
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
        let (cgroups, cgroup_note) = detect_cgroups();
        let host = JailHost {
            root,
            own_pid_ns,
            cgroups,
            cgroup_note,
            slot: std::process::id() % SERVICE_SLOTS,
        };
        host.sweep_cgroups();
        Ok(host)
    }

    /// Removes the cgroups the dead service `pid` left (it was killed before it could remove
    /// them).
    pub fn sweep_service(&self, pid: u32) {
        self.sweep_slot(pid % SERVICE_SLOTS);
    }

    /// Removes the cgroups a dead service with this slot left (it was killed before it could
    /// remove them).
    fn sweep_cgroups(&self) {
        self.sweep_slot(self.slot);
    }

    /// Removes the empty cgroups of `slot`: they are named by ids only that slot hands out,
    /// and a cgroup that still has a process is not removed (`rmdir` refuses it).
    fn sweep_slot(&self, slot: u32) {
        let ours = ID_BASE + slot * IDS_PER_SERVICE..ID_BASE + (slot + 1) * IDS_PER_SERVICE;
        for parent in &self.cgroups {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let id = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok());
                if id.is_some_and(|id| ours.contains(&id)) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// One line: which protections are on, and which are off and why.
    pub fn describe(&self) -> String {
        let cgroups = if self.cgroups.is_empty() {
            "no cgroup limits".to_owned()
        } else {
            let names: Vec<_> = self
                .cgroups
                .iter()
                .filter_map(|p| p.parent()?.file_name()?.to_str())
                .collect();
            format!("cgroup v1 limits ({})", names.join(", "))
        };
        let note = self
            .cgroup_note
            .as_ref()
            .map(|n| format!(" [{n}]"))
            .unwrap_or_default();
        format!(
            "jail on: PID, mount, IPC, UTS and network namespaces, pivot_root to the VM's files, \
             a user per environment, no_new_privs, closed descriptors, rlimits, {cgroups}{note}"
        )
    }

    /// Sets up the jail of one `vmm`: its user, its cgroups, and the flags that tell it what it
    /// may see. `contents.write` directories (and what is in them) become the jail user's.
    pub fn prepare(&self, contents: &JailContents) -> std::io::Result<EnvJail> {
        let n = ENVIRONMENTS.fetch_add(1, Ordering::Relaxed) % IDS_PER_SERVICE;
        let id = ID_BASE + self.slot * IDS_PER_SERVICE + n;
        let mut jail = EnvJail {
            id,
            cgroups: Vec::new(),
            args: Vec::new(),
        };
        for dir in &contents.write {
            own_dir(dir, id)?;
        }
        for controller in &self.cgroups {
            let group = controller.join(id.to_string());
            std::fs::create_dir_all(&group)?;
            jail.cgroups.push(group.clone());
            limit(&group, contents)?;
        }
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
            jail_cgroup: jail.cgroups.clone(),
        };
        jail.args = flags.to_args();
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

/// One `vmm`'s user and cgroups; the cgroups are removed when it is dropped (after the `vmm`
/// was reaped).
#[derive(Debug)]
pub struct EnvJail {
    id: u32,
    cgroups: Vec<PathBuf>,
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
        for group in &self.cgroups {
            let _ = std::fs::remove_dir(group);
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

fn limit(group: &Path, contents: &JailContents) -> std::io::Result<()> {
    let write = |file: &str, value: String| std::fs::write(group.join(file), value);
    match group
        .parent()
        .and_then(|c| c.parent())
        .and_then(Path::file_name)
    {
        Some(c) if c == "memory" => {
            let mib = u64::from(contents.mem_mib) + VMM_OVERHEAD_MIB;
            write("memory.limit_in_bytes", (mib << 20).to_string())
        }
        Some(c) if c == "pids" => write("pids.max", MAX_PIDS.to_string()),
        Some(c) if c == "cpu" => {
            let quota = CPU_PERIOD_US * (u64::from(contents.vcpus.max(1)) + 1);
            write("cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
            write("cpu.cfs_quota_us", quota.to_string())
        }
        _ => Ok(()),
    }
}

/// The service's parent group in each usable v1 controller, and a note when v2 could not be
/// used or a controller is missing. v2 is preferred where it has the controllers delegated.
fn detect_cgroups() -> (Vec<PathBuf>, Option<String>) {
    let v2 = std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"));
    let v2_note = match v2 {
        Ok(list) if list.split_whitespace().any(|c| c == "memory") => {
            // A v2 hierarchy with controllers: not how this project's hosts are set up, and not
            // used yet.
            format!("cgroup v2 at {V2_ROOT} has controllers ({}) but v2 limits are not implemented; using v1", list.trim())
        }
        Ok(_) => format!("cgroup v2 at {V2_ROOT} has no controllers to delegate; using v1"),
        Err(_) => "no cgroup v2 hierarchy; using v1".to_owned(),
    };
    let mut groups = Vec::new();
    let mut missing = Vec::new();
    for controller in V1_CONTROLLERS {
        let parent = Path::new(CGROUP_ROOT).join(controller).join("lambda-vm");
        match std::fs::create_dir_all(&parent) {
            Ok(()) => groups.push(parent),
            Err(e) => missing.push(format!("{controller}: {e}")),
        }
    }
    let note = if missing.is_empty() {
        v2_note
    } else {
        format!("{v2_note}; off: {}", missing.join(", "))
    };
    (groups, Some(note))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup left by a dead service of this slot (empty: its vmm is gone) is removed at
    /// start; one of another slot is not this service's to remove.
    #[test]
    fn a_dead_services_cgroups_of_this_slot_are_swept_at_start() {
        if !nix::unistd::geteuid().is_root() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "this test needs root (cgroups) under CI");
            eprintln!("SKIPPED a_dead_services_cgroups_of_this_slot_are_swept_at_start: needs root to make cgroups");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let host = JailHost::detect(work.path()).unwrap();
        let Some(parent) = host.cgroups.first().cloned() else {
            panic!(
                "no v1 cgroup hierarchy to test with: {:?}",
                host.cgroup_note
            );
        };
        let slot = std::process::id() % SERVICE_SLOTS;
        let ours =
            parent.join((ID_BASE + slot * IDS_PER_SERVICE + IDS_PER_SERVICE - 1).to_string());
        let other_slot = (slot + 1) % SERVICE_SLOTS;
        let theirs =
            parent.join((ID_BASE + other_slot * IDS_PER_SERVICE + IDS_PER_SERVICE - 1).to_string());
        std::fs::create_dir_all(&ours).unwrap();
        std::fs::create_dir_all(&theirs).unwrap();
        let _again = JailHost::detect(work.path()).unwrap();
        let (ours_left, theirs_left) = (ours.exists(), theirs.exists());
        let _ = std::fs::remove_dir(&theirs);
        assert!(!ours_left, "{} was not swept", ours.display());
        assert!(theirs_left, "{} belongs to another slot", theirs.display());
    }
}
