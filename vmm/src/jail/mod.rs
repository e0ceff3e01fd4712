//! The jail a `vmm` enters before it opens anything a VM uses, in the spirit of Firecracker's
//! jailer: its own mount, IPC, UTS and network namespaces (the PID namespace is the launcher's
//! part: a process cannot move itself into a new one, so the launcher starts it there), a root
//! that holds only the files the VM needs, resource limits, cgroups, an unprivileged user, and
//! no descriptor it did not open itself.
//!
//! The `vmm` does this to itself at the top of `main`, while it is one thread and still root,
//! rather than a separate jailer program that `exec`s it: our binaries link the C library
//! dynamically, and after `pivot_root` there is no loader to `exec` with. The launcher (the
//! function service) prepares the cgroups and says what goes in the jail with the `--jail-*`
//! flags ([`JailFlags`]); a `vmm` run by hand without them is not jailed.
//!
//! Files keep their host paths inside the jail (a file bound at `/a/b/c` is at `/a/b/c` in
//! the jail too), so a configuration, and a snapshot's record of its drives, means the same
//! thing in and out of a jail.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{chown, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Most descriptors a jailed `vmm` may hold: the vsock muxer's connections (1024 at most)
/// plus the VM's own.
const MAX_FILES: u64 = 4096;
/// Most threads a jailed `vmm`'s user may run: main, devices, and up to 32 vCPUs, with room.
const MAX_THREADS: u64 = 64;
/// Size of the jail's root file system, which holds only mount points and device nodes.
const ROOT_SIZE: &str = "size=1m,nr_inodes=4k,mode=0755";

/// What the launcher asks of the jail.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JailFlags {
    /// Enter a jail whose root is this (empty) directory: a private tmpfs is mounted on it and
    /// only the --jail-bind files and --jail-dev devices are put there.
    #[arg(long, value_name = "DIR")]
    pub jail_root: Option<PathBuf>,
    /// A file or directory the VM reads, bound read-only at the same path in the jail.
    #[arg(long, value_name = "PATH", requires = "jail_root")]
    pub jail_bind: Vec<PathBuf>,
    /// A file or directory the VM writes (its sockets' directory, a snapshot directory),
    /// bound read-write at the same path in the jail.
    #[arg(long, value_name = "PATH", requires = "jail_root")]
    pub jail_bind_rw: Vec<PathBuf>,
    /// A device node the VM uses (/dev/kvm, /dev/net/tun), made again in the jail for the
    /// jail's user only.
    #[arg(long, value_name = "PATH", requires = "jail_root")]
    pub jail_dev: Vec<PathBuf>,
    /// The user the `vmm` runs as in the jail.
    #[arg(long, value_name = "UID", requires = "jail_root")]
    pub jail_uid: Option<u32>,
    /// The group the `vmm` runs as in the jail.
    #[arg(long, value_name = "GID", requires = "jail_root")]
    pub jail_gid: Option<u32>,
    /// Join this network namespace (e.g. /run/netns/NAME) instead of a new, empty one.
    #[arg(long, value_name = "PATH", requires = "jail_root")]
    pub jail_netns: Option<PathBuf>,
    /// A cgroup directory (v1 or v2) to join before dropping privileges: one per hierarchy of
    /// the cgroup the launcher made (the `cgroups` crate's `Cgroup::dirs`).
    #[arg(long, value_name = "DIR", requires = "jail_root")]
    pub jail_cgroup: Vec<PathBuf>,
}

impl JailFlags {
    /// The command-line arguments that give a `vmm` these flags: how a launcher (the function
    /// host) passes a jail it prepared, built from the same type the `vmm` parses them into.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        let mut arg = |flag: &str, value: &dyn AsRef<std::ffi::OsStr>| {
            args.push(flag.into());
            args.push(value.as_ref().to_owned());
        };
        if let Some(root) = &self.jail_root {
            arg("--jail-root", root);
        }
        for path in &self.jail_bind {
            arg("--jail-bind", path);
        }
        for path in &self.jail_bind_rw {
            arg("--jail-bind-rw", path);
        }
        for path in &self.jail_dev {
            arg("--jail-dev", path);
        }
        if let Some(uid) = self.jail_uid {
            arg("--jail-uid", &uid.to_string());
        }
        if let Some(gid) = self.jail_gid {
            arg("--jail-gid", &gid.to_string());
        }
        if let Some(netns) = &self.jail_netns {
            arg("--jail-netns", netns);
        }
        for group in &self.jail_cgroup {
            arg("--jail-cgroup", group);
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {what}")]
    Sys {
        what: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("jail: {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: {0} must be an absolute path")]
    Relative(PathBuf),
    #[error("jail: {0} is not a device node")]
    NotADevice(PathBuf),
    #[error("jail: --jail-uid and --jail-gid are required, and must not be 0")]
    NoUser,
    #[error("jail: joining the cgroup")]
    Cgroup(#[source] cgroups::CgroupError),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JailError + 'a {
    move |source| JailError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl JailFlags {
    /// Enters the jail, if one was asked for. Call it first thing, while the process has one
    /// thread (mount namespaces cannot be unshared by a threaded process). `open_host_files`
    /// opens what the process needs from the host that the jail does not hold (its own
    /// `/proc/self/pagemap`): it runs once the launcher's descriptors are closed and before
    /// the root changes (at once when there is no jail).
    pub fn enter<T>(&self, open_host_files: impl FnOnce() -> T) -> Result<T, JailError> {
        let Some(root) = &self.jail_root else {
            return Ok(open_host_files());
        };
        let (uid, gid) = match (self.jail_uid, self.jail_gid) {
            (Some(uid), Some(gid)) if uid != 0 && gid != 0 => (uid, gid),
            _ => return Err(JailError::NoUser),
        };
        let all_paths = self
            .jail_bind
            .iter()
            .chain(&self.jail_bind_rw)
            .chain(&self.jail_dev)
            .chain(std::iter::once(root));
        if let Some(relative) = all_paths.clone().find(|p| !p.is_absolute()) {
            return Err(JailError::Relative(relative.clone()));
        }
        close_inherited_descriptors()?;
        let opened = open_host_files();
        self.enter_namespaces()?;
        for cgroup in &self.jail_cgroup {
            cgroups::join(cgroup).map_err(JailError::Cgroup)?;
        }
        build_root(root, self, uid, gid)?;
        enter_root(root)?;
        limit_resources()?;
        drop_privileges(uid, gid)?;
        Ok(opened)
    }

    fn enter_namespaces(&self) -> Result<(), JailError> {
        let mut flags =
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        match &self.jail_netns {
            Some(path) => {
                let netns = File::open(path).map_err(io("opening the network namespace", path))?;
                setns(&netns, CloneFlags::CLONE_NEWNET).map_err(sys(format!(
                    "joining the network namespace {}",
                    path.display()
                )))?;
            }
            None => flags |= CloneFlags::CLONE_NEWNET,
        }
        unshare(flags).map_err(sys("unsharing the mount, IPC, UTS and network namespaces"))?;
        nix::unistd::sethostname("vmm").map_err(sys("setting the host name"))
    }
}

/// Everything above stdin, stdout and stderr was the launcher's.
fn close_inherited_descriptors() -> Result<(), JailError> {
    // SAFETY: close_range(2) only closes descriptors; this runs before the process opens any
    // descriptor of its own (no Rust object owns one yet), so nothing is left dangling.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed != 0 {
        return Err(JailError::Sys {
            what: "closing inherited descriptors".into(),
            source: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

/// A private tmpfs on `root`, holding the binds and the device nodes at their host paths.
fn build_root(root: &Path, flags: &JailFlags, uid: u32, gid: u32) -> Result<(), JailError> {
    // Nothing mounted from here on may leak back to the host's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making the mounts private"))?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(ROOT_SIZE),
    )
    .map_err(sys(format!(
        "mounting the jail's root on {}",
        root.display()
    )))?;
    let binds = flags.jail_bind.iter().map(|p| (p, false));
    let rw_binds = flags.jail_bind_rw.iter().map(|p| (p, true));
    for (path, writable) in binds.chain(rw_binds) {
        bind(root, path, writable)?;
    }
    for device in &flags.jail_dev {
        make_device(root, device, uid, gid)?;
    }
    Ok(())
}

/// `path` inside the jail rooted at `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn bind(root: &Path, path: &Path, writable: bool) -> Result<(), JailError> {
    let target = inside(root, path);
    let is_dir = std::fs::metadata(path)
        .map_err(io("binding", path))?
        .is_dir();
    if is_dir {
        std::fs::create_dir_all(&target).map_err(io("creating the mount point", &target))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating the mount point", parent))?;
        }
        File::create(&target).map_err(io("creating the mount point", &target))?;
    }
    let bound = format!("binding {}", path.display());
    mount(
        Some(path),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(bound.clone()))?;
    let mut remount = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    if !writable {
        remount |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &target, None::<&str>, remount, None::<&str>).map_err(sys(bound))
}

/// A new node for the same device, owned by the jail's user (the host's may be root's only).
fn make_device(root: &Path, device: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let meta = std::fs::metadata(device).map_err(io("looking at the device", device))?;
    if !meta.file_type().is_char_device() {
        return Err(JailError::NotADevice(device.to_owned()));
    }
    let target = inside(root, device);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating the device's directory", parent))?;
    }
    let what = format!("making the device node {}", device.display());
    mknod(
        &target,
        SFlag::S_IFCHR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        meta.rdev(),
    )
    .map_err(sys(what.clone()))?;
    chown(&target, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(sys(what))
}

/// Makes `root` the root: the host's file system is detached and gone from this namespace, and
/// the jail's own root is read-only (the binds keep their own modes).
fn enter_root(root: &Path) -> Result<(), JailError> {
    let old = root.join(".old-root");
    std::fs::create_dir(&old).map_err(io("creating", &old))?;
    pivot_root(root, &old).map_err(sys("pivot_root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    umount2("/.old-root", MntFlags::MNT_DETACH).map_err(sys("detaching the host's root"))?;
    std::fs::remove_dir("/.old-root").map_err(io("removing", Path::new("/.old-root")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(ROOT_SIZE),
    )
    .map_err(sys("making the jail's root read-only"))
}

fn limit_resources() -> Result<(), JailError> {
    setrlimit(Resource::RLIMIT_NOFILE, MAX_FILES, MAX_FILES).map_err(sys("RLIMIT_NOFILE"))?;
    setrlimit(Resource::RLIMIT_NPROC, MAX_THREADS, MAX_THREADS).map_err(sys("RLIMIT_NPROC"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys("RLIMIT_CORE"))
}

/// The jail's user and group, no supplementary groups, and no way back to privileges. The
/// signal the launcher asked for at its death (`PR_SET_PDEATHSIG`) survives: the kernel clears
/// it on a change of user, so it is set again.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    let death_signal = nix::sys::prctl::get_pdeathsig().map_err(sys("reading the death signal"))?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[]).map_err(sys("dropping supplementary groups"))?;
    setresgid(gid, gid, gid).map_err(sys("setting the group"))?;
    setresuid(uid, uid, uid).map_err(sys("setting the user"))?;
    nix::sys::prctl::set_pdeathsig(death_signal).map_err(sys("setting the death signal"))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes no pointers; it only sets a process flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::Sys {
            what: "setting no_new_privs".into(),
            source: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod flag_tests {
    use super::JailFlags;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        jail: JailFlags,
    }

    #[test]
    fn to_args_parses_back_to_the_same_flags() {
        let flags = JailFlags {
            jail_root: Some("/run/jail/1".into()),
            jail_bind: vec!["/k/vmlinux".into(), "/f/image.ext4".into()],
            jail_bind_rw: vec!["/w/env-1".into()],
            jail_dev: vec!["/dev/kvm".into()],
            jail_uid: Some(1000),
            jail_gid: Some(1001),
            jail_netns: Some("/run/netns/lvm-1".into()),
            jail_cgroup: vec!["/sys/fs/cgroup/memory/x".into()],
        };
        let mut argv = vec![std::ffi::OsString::from("vmm")];
        argv.extend(flags.to_args());
        let parsed = Cli::try_parse_from(argv).unwrap().jail;
        assert_eq!(format!("{parsed:?}"), format!("{flags:?}"));
        assert!(JailFlags::default().to_args().is_empty());
    }
}
