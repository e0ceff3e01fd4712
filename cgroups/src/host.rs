//! Where this host mounts its cgroup hierarchies and where in them this process lives, read from
//! `/proc/self/mountinfo` and `/proc/self/cgroup`. Pure text parsing, so it is tested without a
//! host that has any particular layout.

use std::path::PathBuf;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The cgroup the mount shows as its root (not `/` inside some containers).
    pub root: String,
    /// `None` for the v2 hierarchy; the v1 controllers it carries (`memory`, `pids`, ...).
    pub controllers: Option<Vec<String>>,
}

/// The cgroup mounts in a `/proc/self/mountinfo` text.
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo.lines().filter_map(mount).collect()
}

/// `36 25 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory`: the fields
/// after the lone `-` are the file system type, the source and the super block options.
fn mount(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let root = fields.nth(3)?;
    let point = fields.next()?;
    let mut after = after.split(' ');
    let fs_type = after.next()?;
    let options = after.nth(1).unwrap_or_default();
    let controllers = match fs_type {
        "cgroup2" => None,
        "cgroup" => Some(
            options
                .split(',')
                .filter(|o| !o.contains('=') && !matches!(*o, "rw" | "ro"))
                .map(str::to_owned)
                .collect(),
        ),
        _ => return None,
    };
    Some(Mount {
        point: PathBuf::from(unescape(point)),
        root: unescape(root),
        controllers,
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup in the v1 hierarchy carrying `controller` (`Some("memory")`) or in the
/// v2 hierarchy (`None`), from a `/proc/self/cgroup` text: `4:memory:/a/b`, `0::/a/b`.
pub fn own_path(proc_cgroup: &str, controller: Option<&str>) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, list, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = match controller {
            None => list.is_empty(),
            Some(wanted) => list.split(',').any(|c| c == wanted),
        };
        matches.then(|| path.to_owned())
    })
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` names it) under `mount`.
pub fn directory(mount: &Mount, path: &str) -> PathBuf {
    let root = mount.root.trim_end_matches('/');
    let relative = path.strip_prefix(root).unwrap_or(path);
    mount.point.join(relative.trim_start_matches('/'))
}

/// The v1 mount carrying `controller`.
pub fn v1_mount<'a>(mounts: &'a [Mount], controller: &str) -> Option<&'a Mount> {
    mounts.iter().find(|m| {
        m.controllers
            .as_ref()
            .is_some_and(|list| list.iter().any(|c| c == controller))
    })
}

/// The v2 mount.
pub fn v2_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().find(|m| m.controllers.is_none())
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 3\nmax 0`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 /inner /sys/fs/cgroup/cpu\\040acct rw,relatime shared:4 - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn mounts_are_found_with_their_controllers() {
        let mounts = mounts(MOUNTINFO);
        assert_eq!(mounts.len(), 5);
        let memory = v1_mount(&mounts, "memory").unwrap();
        assert_eq!(memory.point, PathBuf::from("/sys/fs/cgroup/memory"));
        let cpu = v1_mount(&mounts, "cpuacct").unwrap();
        assert_eq!(cpu.point, PathBuf::from("/sys/fs/cgroup/cpu acct"));
        assert_eq!(cpu.root, "/inner");
        let systemd = &mounts[3];
        assert_eq!(systemd.controllers, Some(vec!["xattr".to_owned()]));
        assert!(v1_mount(&mounts, "name").is_none());
        let unified = v2_mount(&mounts).unwrap();
        assert_eq!(unified.point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            super::mounts(&MOUNTINFO.replace("cgroup2 cgroup2", "ext4 x")).len(),
            4
        );
    }

    #[test]
    fn own_paths_and_directories() {
        let cgroup =
            "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/user.slice/s";
        assert_eq!(
            own_path(cgroup, Some("memory")).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_path(cgroup, Some("cpuacct")).as_deref(), Some("/x"));
        assert_eq!(own_path(cgroup, None).as_deref(), Some("/user.slice/s"));
        assert_eq!(own_path(cgroup, Some("pids")), None);
        let mounts = mounts(MOUNTINFO);
        let memory = v1_mount(&mounts, "memory").unwrap();
        assert_eq!(
            directory(memory, "/process_api/abc"),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            directory(memory, "/"),
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        let cpu = v1_mount(&mounts, "cpu").unwrap();
        assert_eq!(
            directory(cpu, "/inner/job"),
            PathBuf::from("/sys/fs/cgroup/cpu acct/job")
        );
    }

    #[test]
    fn keyed_values() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "max"), None);
        assert_eq!(keyed_value("max 12\n", "max"), Some(12));
        assert_eq!(keyed_value("max lots\n", "max"), None);
    }
}
