//! The filesystems PID 1 mounts: /proc, /sys, /dev (devtmpfs), /dev/pts and /tmp (a tmpfs of the
//! configured size). A target that is already a mount point (the kernel mounts devtmpfs itself
//! for an ext4 root) is left alone.

use nix::mount::MsFlags;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("cannot mount {fstype} on {target}")]
pub struct MountError {
    pub target: &'static str,
    pub fstype: &'static str,
    #[source]
    pub source: io::Error,
}

struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: String,
}

fn table(tmp_size_mb: u32) -> [Mount; 5] {
    let (nosuid, nodev, noexec) = (MsFlags::MS_NOSUID, MsFlags::MS_NODEV, MsFlags::MS_NOEXEC);
    let mount = |target, fstype, flags, data: &str| Mount {
        target,
        fstype,
        flags,
        data: data.to_owned(),
    };
    [
        mount("/proc", "proc", nosuid | nodev | noexec, ""),
        mount("/sys", "sysfs", nosuid | nodev | noexec, ""),
        mount("/dev", "devtmpfs", nosuid, "mode=0755"),
        mount(
            "/dev/pts",
            "devpts",
            nosuid | noexec,
            "mode=0620,ptmxmode=0666",
        ),
        mount(
            "/tmp",
            "tmpfs",
            nosuid | nodev,
            &format!("mode=1777,size={tmp_size_mb}m"),
        ),
    ]
}

/// Mounts everything, in order; stops at the first failure.
pub fn mount_all(tmp_size_mb: u32) -> Result<(), MountError> {
    for m in table(tmp_size_mb) {
        mount(&m).map_err(|source| MountError {
            target: m.target,
            fstype: m.fstype,
            source,
        })?;
    }
    Ok(())
}

fn mount(m: &Mount) -> io::Result<()> {
    let target = Path::new(m.target);
    std::fs::create_dir_all(target)?;
    if is_mount_point(target)? {
        return Ok(());
    }
    nix::mount::mount(
        Some(m.fstype),
        target,
        Some(m.fstype),
        m.flags,
        Some(m.data.as_str()),
    )?;
    Ok(())
}

/// Whether `path` is on another filesystem than its parent.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(std::fs::metadata(path)?.dev() != std::fs::metadata(parent)?.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_sizes_tmp_and_mounts_dev_before_dev_pts() {
        let t = table(64);
        let targets: Vec<_> = t.iter().map(|m| m.target).collect();
        assert_eq!(targets, ["/proc", "/sys", "/dev", "/dev/pts", "/tmp"]);
        assert_eq!(t[4].data, "mode=1777,size=64m");
    }

    #[test]
    fn proc_is_a_mount_point_and_a_plain_directory_is_not() {
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        assert!(!is_mount_point(&sub).unwrap());
    }
}
