//! A cgroup per confined process tree: its memory, process and CPU limits, its own memory
//! accounting, and a kill that reaches every process it holds, `setsid()` or not.
//!
//! On Lambda each execution environment is a cgroup. On a host, `lambda-local` gives each
//! runtime process (each generation of a local sandbox) a fresh one, and `lambda-vm` gives one
//! to each jailed `vmm`. Each is made as a child of the server's own cgroup, so that the host's
//! accounting of the server still covers what it runs. cgroup v2 is used where the server's
//! cgroup can hand `memory` and `pids` (and `cpu`, when it has it) to children; otherwise the
//! v1 `memory` and `pids` hierarchies, `cpu` when mounted, and `freezer` when mounted, to stop
//! forks during a kill.
//!
//! A process joins a cgroup by writing to each of its directories' `cgroup.procs`: a child the
//! server starts does it itself, between fork and exec ([`Cgroup::procs_files`]) or first thing
//! ([`join`]), so that everything it starts is born inside.
//!
//! A cgroup's name says which server made it, `<server>-<pid>-<start time>-<n>` (the server's
//! [`proc_info::Identity`]), so that a server starting up can tell the leftovers of one that
//! crashed from the live cgroups of its peers.

mod host;

use proc_info::Identity;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lambda's limit on processes and threads in one execution environment.
pub const MAX_PROCESSES: u32 = 1024;

/// What one cgroup may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory, in bytes; nothing may be swapped out beyond it.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub max_processes: u32,
    /// CPU time, where the host has the `cpu` controller ([`Cgroups::has_cpu`]); `None`: as
    /// much as the host gives.
    pub cpu: Option<CpuQuota>,
}

/// `quota_us` of CPU time in every `period_us` (so `quota_us / period_us` CPUs' worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl Limits {
    /// A Lambda execution environment's: `memory_mb` MiB and [`MAX_PROCESSES`].
    pub fn sandbox(memory_mb: u32) -> Limits {
        Limits {
            memory_bytes: u64::from(memory_mb) << 20,
            max_processes: MAX_PROCESSES,
            cpu: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct CgroupError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The version-specific file names; everything else is the same for both.
struct Files {
    memory_limit: &'static str,
    /// Swap on top of the memory limit: set so that a function cannot swap past its limit.
    swap_limit: &'static str,
    peak: &'static str,
    /// A flat-keyed file counting OOM kills under `oom_key`.
    oom_events: &'static str,
    oom_key: &'static str,
}

const V1_FILES: Files = Files {
    memory_limit: "memory.limit_in_bytes",
    swap_limit: "memory.memsw.limit_in_bytes",
    peak: "memory.max_usage_in_bytes",
    oom_events: "memory.oom_control",
    oom_key: "oom_kill",
};

const V2_FILES: Files = Files {
    memory_limit: "memory.max",
    swap_limit: "memory.swap.max",
    peak: "memory.peak",
    oom_events: "memory.events",
    oom_key: "oom_kill",
};

/// Where this server makes its cgroups. Made once, at start ([`Cgroups::detect`]).
#[derive(Debug)]
pub struct Cgroups {
    version: Version,
    /// The parent directory in each hierarchy used: v2 one; v1 `memory` then `pids`.
    parents: Vec<PathBuf>,
    /// The v1 `freezer` parent, when that hierarchy is mounted.
    freezer: Option<PathBuf>,
    /// Where the CPU limits go, when the host has the controller: the v1 `cpu` parent, or
    /// (v2) the one parent.
    cpu: Option<PathBuf>,
    /// `<server>-`: the names of every server of this kind.
    prefix: String,
    /// `<server>-<pid>-<start time>-`: this server's names.
    own_prefix: String,
}

/// The number in the next cgroup's name: one count for the whole process, which may confine
/// several environments.
static NEXT: AtomicU64 = AtomicU64::new(1);

impl Cgroups {
    /// Finds where processes can be confined on this host: v2 first, then v1. `server` names
    /// the kind of server (`rapid`, `lambda-vm`), the first part of its cgroups' names. The
    /// error says why neither version can be used.
    pub fn detect(server: &str) -> Result<Cgroups, String> {
        let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
        let mounts = host::mounts(&read("/proc/self/mountinfo")?);
        let own = read("/proc/self/cgroup")?;
        let identity = Identity::of_this_process().map_err(|e| e.to_string())?;
        let prefix = format!("{server}-");
        let own_prefix = format!("{prefix}{identity}-");
        let v2 = match v2_parent(&mounts, &own) {
            Ok((parent, has_cpu)) => {
                return Ok(Cgroups {
                    version: Version::V2,
                    cpu: has_cpu.then(|| parent.clone()),
                    parents: vec![parent],
                    freezer: None,
                    prefix,
                    own_prefix,
                })
            }
            Err(why) => why,
        };
        let v1 = |controller: &str| {
            let mount = host::v1_mount(&mounts, controller)
                .ok_or_else(|| format!("no v1 {controller} hierarchy is mounted"))?;
            let path = host::own_path(&own, Some(controller))
                .ok_or_else(|| format!("/proc/self/cgroup names no {controller} cgroup"))?;
            let dir = host::directory(mount, &path);
            writable(&dir).map(|()| dir)
        };
        match (v1("memory"), v1("pids")) {
            (Ok(memory), Ok(pids)) => Ok(Cgroups {
                version: Version::V1,
                parents: vec![memory, pids],
                freezer: v1("freezer").ok(),
                cpu: v1("cpu").ok(),
                prefix,
                own_prefix,
            }),
            (memory, pids) => {
                let v1 = [memory.err(), pids.err()].into_iter().flatten();
                Err(format!(
                    "v2: {v2}; v1: {}",
                    v1.collect::<Vec<_>>().join(", ")
                ))
            }
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether [`Limits::cpu`] is applied here.
    pub fn has_cpu(&self) -> bool {
        self.cpu.is_some()
    }

    /// `cgroup v1 (memory /sys/fs/cgroup/memory/x, pids ..., freezer ..., cpu ...)` or
    /// `cgroup v2 with cpu (/sys/fs/cgroup/x)`, for the start line: the directories in the
    /// parentheses are where the cgroups are made.
    pub fn describe(&self) -> String {
        let mut places: Vec<String> = match self.version {
            Version::V2 => vec![self.parents[0].display().to_string()],
            Version::V1 => ["memory", "pids"]
                .iter()
                .zip(&self.parents)
                .map(|(name, dir)| format!("{name} {}", dir.display()))
                .collect(),
        };
        if let Some(freezer) = &self.freezer {
            places.push(format!("freezer {}", freezer.display()));
        }
        let version = match (self.version, &self.cpu) {
            (Version::V1, Some(cpu)) => {
                places.push(format!("cpu {}", cpu.display()));
                "v1"
            }
            (Version::V1, None) => "v1",
            (Version::V2, Some(_)) => "v2 with cpu",
            (Version::V2, None) => "v2",
        };
        format!("cgroup {version} ({})", places.join(", "))
    }

    /// A new, empty cgroup for a sandbox: [`Limits::sandbox`].
    pub fn create(&self, memory_mb: u32) -> Result<Cgroup, CgroupError> {
        self.create_with(&Limits::sandbox(memory_mb))
    }

    /// A new, empty cgroup with `limits`. On failure, nothing of it is left.
    pub fn create_with(&self, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dirs = self.dirs(&format!("{}{n}", self.own_prefix));
        let made = dirs
            .all()
            .try_for_each(|dir| std::fs::create_dir(dir).map_err(error("create", dir)))
            .and_then(|()| limit_and_open(&dirs, limits));
        match made {
            Ok(counters) => Ok(Cgroup { dirs, counters }),
            Err(e) => {
                dirs.remove_within(Duration::from_secs(1));
                Err(e)
            }
        }
    }

    fn dirs(&self, name: &str) -> Dirs {
        Dirs {
            version: self.version,
            list: self.parents.iter().map(|p| p.join(name)).collect(),
            freezer: self.freezer.as_ref().map(|p| p.join(name)),
            cpu: self.cpu.as_ref().map(|p| p.join(name)),
        }
    }

    /// Kills and removes the cgroups left by servers of this kind that are gone (crashed,
    /// killed): what they started (a `setsid` child survives its runtime) dies with them.
    /// Returns the names removed. The cgroups of live servers are left alone.
    pub fn clean_leftovers(&self) -> Vec<String> {
        self.remove_where(|name| !owner_alive(&name[self.prefix.len()..]))
    }

    /// Kills and removes every cgroup this server made, for when it stops: a reset's cgroup
    /// whose removal had not finished goes too. Returns the names of any that could not be
    /// removed.
    pub fn remove_own(&self) -> Vec<String> {
        let own = |name: &str| name.starts_with(&self.own_prefix);
        let removed = self.remove_where(own);
        self.names()
            .filter(|name| own(name) && !removed.contains(name))
            .collect()
    }

    /// The names of the cgroups of servers of this kind under the parent (this server's and
    /// its peers').
    fn names(&self) -> impl Iterator<Item = String> + '_ {
        std::fs::read_dir(&self.parents[0])
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&self.prefix))
    }

    fn remove_where(&self, remove: impl Fn(&str) -> bool) -> Vec<String> {
        self.names()
            .filter(|name| remove(name))
            .filter(|name| self.dirs(name).remove_within(Duration::from_secs(2)))
            .collect()
    }
}

/// The v2 parent: the server's own cgroup, if it has `memory` and `pids` and can hand them to
/// children (which v2 allows only to a cgroup with no processes of its own, or the root); and
/// whether it hands `cpu` to them too (where it has that controller).
fn v2_parent(mounts: &[host::Mount], own: &str) -> Result<(PathBuf, bool), String> {
    let mount = host::v2_mount(mounts).ok_or("no v2 hierarchy is mounted")?;
    let path = host::own_path(own, None).ok_or("/proc/self/cgroup names no v2 cgroup")?;
    let dir = host::directory(mount, &path);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let has = |text: &str, c: &str| text.split_whitespace().any(|w| w == c);
    let available = read("cgroup.controllers");
    if !has(&available, "memory") || !has(&available, "pids") {
        return Err(format!(
            "{} does not have the memory and pids controllers (it has: {})",
            dir.display(),
            if available.trim().is_empty() {
                "none"
            } else {
                available.trim()
            }
        ));
    }
    let control = dir.join("cgroup.subtree_control");
    let enabled = read("cgroup.subtree_control");
    if !has(&enabled, "memory") || !has(&enabled, "pids") {
        write(&control, "+memory +pids")
            .map_err(|e| format!("{e} (run the server in a cgroup of its own, delegated to it)"))?;
    }
    // CPU limits are a bonus: a host that cannot hand `cpu` down still confines memory.
    let has_cpu =
        has(&enabled, "cpu") || (has(&available, "cpu") && write(&control, "+cpu").is_ok());
    Ok((dir, has_cpu))
}

/// Sets a new cgroup's limits and opens the counters read once per invocation.
fn limit_and_open(dirs: &Dirs, limits: &Limits) -> Result<Counters, CgroupError> {
    let files = dirs.files();
    let memory = &dirs.list[0];
    let pids = dirs.list.last().unwrap_or(memory);
    let bytes = limits.memory_bytes.to_string();
    write(&memory.join(files.memory_limit), &bytes)?;
    let swap = memory.join(files.swap_limit);
    // Without swap accounting the file is absent, and there is no swap to limit. v1's limit
    // is memory and swap together, v2's is swap alone.
    if swap.exists() {
        let swap_value = match dirs.version {
            Version::V1 => bytes.as_str(),
            Version::V2 => "0",
        };
        write(&swap, swap_value)?;
    }
    write(&pids.join("pids.max"), &limits.max_processes.to_string())?;
    if let (Some(cpu), Some(quota)) = (&dirs.cpu, limits.cpu) {
        match dirs.version {
            Version::V1 => {
                write(&cpu.join("cpu.cfs_period_us"), &quota.period_us.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.quota_us.to_string())?;
            }
            Version::V2 => {
                let max = format!("{} {}", quota.quota_us, quota.period_us);
                write(&cpu.join("cpu.max"), &max)?;
            }
        }
    }
    let open = |path: PathBuf| File::open(&path).map_err(error("open", &path));
    Ok(Counters {
        peak: open(memory.join(files.peak))?,
        oom_events: open(memory.join(files.oom_events))?,
        pids_events: open(pids.join("pids.events"))?,
        oom_key: files.oom_key,
    })
}

/// Whether this process may make cgroups in `dir`.
fn writable(dir: &Path) -> Result<(), String> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} has a NUL byte", dir.display()))?;
    // SAFETY: access(2) reads a NUL-terminated path that lives across the call.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(format!("{}: {e}", dir.display()))
    }
}

/// Whether the server that made a cgroup is still running, from the name's part after the
/// server's kind: `<pid>-<start>-<n>`. A name that is not ours to parse is treated as alive:
/// never remove what we cannot account for.
fn owner_alive(identity_and_n: &str) -> bool {
    let Some((identity, n)) = identity_and_n.rsplit_once('-') else {
        return true;
    };
    match (identity.parse::<Identity>(), n.parse::<u64>()) {
        (Ok(owner), Ok(_)) => owner.is_running(),
        _ => true,
    }
}

/// Moves the calling process into the cgroup directory `dir` (one of [`Cgroup::dirs`]).
pub fn join(dir: &Path) -> Result<(), CgroupError> {
    // `0` is the writer itself, whatever its pid is in the namespace it is in.
    write(&dir.join("cgroup.procs"), "0")
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(error("write", path))
}

/// The directories of one cgroup, one per hierarchy used.
#[derive(Debug)]
struct Dirs {
    version: Version,
    /// v2: the cgroup; v1: `memory`, then `pids`.
    list: Vec<PathBuf>,
    freezer: Option<PathBuf>,
    /// Where the CPU limits are: v1, a directory of its own; v2, the cgroup.
    cpu: Option<PathBuf>,
}

impl Dirs {
    /// Every directory of the cgroup, each once.
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        let v1_cpu = self.cpu.iter().filter(|_| self.version == Version::V1);
        self.list.iter().chain(&self.freezer).chain(v1_cpu)
    }

    fn files(&self) -> &'static Files {
        match self.version {
            Version::V1 => &V1_FILES,
            Version::V2 => &V2_FILES,
        }
    }

    /// The processes in the cgroup (every process joins every directory, so one list is all).
    fn processes(&self) -> Vec<i32> {
        let procs = self.list[0].join("cgroup.procs");
        std::fs::read_to_string(procs)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    /// Sends SIGKILL to every process in the cgroup, without waiting for them to exit. v2 has
    /// `cgroup.kill` for it; in v1 the cgroup is frozen first (if the freezer is mounted), so
    /// that nothing forks between the listing and the signals, and thawed after, so that the
    /// signals are delivered.
    fn kill(&self) {
        if self.version == Version::V2 {
            let kill = self.list[0].join("cgroup.kill");
            if std::fs::write(kill, "1").is_ok() {
                return;
            }
        }
        let freezer = self.freezer.as_ref().map(|dir| dir.join("freezer.state"));
        if let Some(state) = &freezer {
            if std::fs::write(state, "FROZEN").is_ok() {
                wait_frozen(state);
            }
        }
        for pid in self.processes() {
            // SAFETY: kill(2) takes plain integers; a pid that exited meanwhile is ESRCH. The
            // pid is from the cgroup's own list, which never names a process outside it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Some(state) = &freezer {
            let _ = std::fs::write(state, "THAWED");
        }
    }

    /// One attempt: kills what is left, then removes the directories that are empty. True when
    /// every directory is gone.
    fn kill_and_remove(&self) -> bool {
        self.kill();
        let mut gone = true;
        for dir in self.all() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => gone = false,
            }
        }
        gone
    }

    /// Kills and removes, retrying while killed processes finish exiting, for up to `limit`.
    fn remove_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.kill_and_remove() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Polls a v1 `freezer.state` briefly until the freeze is complete; a cgroup that takes longer
/// is killed anyway, and what it forked meanwhile is caught by the next attempt.
fn wait_frozen(state: &Path) {
    for _ in 0..20 {
        match std::fs::read_to_string(state) {
            Ok(s) if s.trim() == "FROZEN" => return,
            Ok(_) => std::thread::sleep(Duration::from_micros(500)),
            Err(_) => return,
        }
    }
}

/// The counter files read once per invocation, kept open so that a read is one `pread`.
#[derive(Debug)]
struct Counters {
    peak: File,
    oom_events: File,
    pids_events: File,
    oom_key: &'static str,
}

/// One sandbox's cgroup: made empty by [`Cgroups::create`], joined by the runtime as it
/// starts ([`Cgroup::procs_files`], [`join`]), killed and removed as a whole when the sandbox
/// is reset.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Dirs,
    counters: Counters,
}

impl Cgroup {
    /// The main directory (v1: the `memory` one), for messages.
    pub fn path(&self) -> &Path {
        &self.dirs.list[0]
    }

    /// Every directory of the cgroup (one per hierarchy): a process joins the cgroup by
    /// joining each ([`join`]).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.all().map(PathBuf::as_path)
    }

    /// Every `cgroup.procs` of the cgroup, opened for writing: a process that writes `0` to
    /// each joins the cgroup (the runtime does, between fork and exec).
    pub fn procs_files(&self) -> Result<Vec<File>, CgroupError> {
        self.dirs
            .all()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(error("open", &path))
            })
            .collect()
    }

    /// The most memory the cgroup has used since it was made, in bytes.
    pub fn peak_bytes(&self) -> Option<u64> {
        read_at_start(&self.counters.peak)?.trim().parse().ok()
    }

    /// How many of its processes the kernel has killed for running out of memory.
    pub fn oom_kills(&self) -> u64 {
        read_at_start(&self.counters.oom_events)
            .and_then(|text| host::keyed_value(&text, self.counters.oom_key))
            .unwrap_or(0)
    }

    /// How many forks (or clones of threads) were refused by the process limit.
    pub fn process_limit_hits(&self) -> u64 {
        read_at_start(&self.counters.pids_events)
            .and_then(|text| host::keyed_value(&text, "max"))
            .unwrap_or(0)
    }

    /// Kills every process in the cgroup at once, without waiting for them to exit.
    pub fn kill(&self) {
        self.dirs.kill();
    }

    /// Kills what is left and removes the cgroup, waiting (blocking, up to `limit`) for the
    /// processes to exit; false if some outlived it (the next server's start removes them).
    pub fn remove_within(self, limit: Duration) -> bool {
        self.dirs.remove_within(limit)
    }

    /// One try at [`Cgroup::remove_within`] that does not wait: kills what is left and removes
    /// the cgroup if it is empty by then (true). An async caller retries on its own timer.
    pub fn try_remove(&self) -> bool {
        self.dirs.kill_and_remove()
    }
}

/// A cgroup file's current text: cgroup files are produced afresh by a read from offset 0.
fn read_at_start(file: &File) -> Option<String> {
    let mut buffer = [0u8; 512];
    let n = file.read_at(&mut buffer, 0).ok()?;
    Some(String::from_utf8_lossy(buffer.get(..n)?).into_owned())
}

#[cfg(test)]
mod tests;
