//! A snapshot directory lands whole or not at all: its files are written into a hidden staging
//! directory beside it, synced, and the staging directory then takes the snapshot's name in one
//! rename (an atomic exchange when an older snapshot is there). So `state` and `memory` always
//! come from the same moment of the same VM, and a crash leaves the old snapshot, the new one,
//! or no snapshot, never a mix.

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes each staging directory of this process unique, for snapshots taken at the same time.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// A new, empty staging directory beside `dir` (which need not exist; its parent is created).
pub fn stage(dir: &Path) -> io::Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no directory name"))?;
    let parent = parent_of(dir);
    std::fs::create_dir_all(parent)?;
    let n = STAGED.fetch_add(1, Ordering::Relaxed);
    let mut staging = std::ffi::OsString::from(".");
    staging.push(name);
    staging.push(format!(".staging-{}-{n}", std::process::id()));
    let staging = parent.join(staging);
    std::fs::create_dir(&staging)?;
    Ok(staging)
}

/// Makes the synced files in `staging` the snapshot `dir`, replacing an older one atomically,
/// and syncs the parent so the new name survives a crash. `staging` is gone afterwards.
pub fn publish(staging: &Path, dir: &Path) -> io::Result<()> {
    File::open(staging)?.sync_all()?;
    match renameat2(
        AT_FDCWD,
        staging,
        AT_FDCWD,
        dir,
        RenameFlags::RENAME_EXCHANGE,
    ) {
        // `staging` now holds the old snapshot: only disk space if it cannot be removed.
        Ok(()) => {
            if let Err(e) = std::fs::remove_dir_all(staging) {
                log::warn!(
                    "snapshot: cannot remove the replaced {}: {e}",
                    staging.display()
                );
            }
        }
        Err(nix::errno::Errno::ENOENT) => std::fs::rename(staging, dir)?,
        Err(errno) => return Err(errno.into()),
    }
    File::open(parent_of(dir))?.sync_all()
}

/// Removes a staging directory that will not be published.
pub fn discard(staging: &Path) {
    let _ = std::fs::remove_dir_all(staging);
}

fn parent_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    fn staged_with(dir: &Path, contents: &str) -> PathBuf {
        let staging = stage(dir).unwrap();
        for name in ["state", "memory"] {
            std::fs::write(staging.join(name), format!("{name} {contents}")).unwrap();
        }
        staging
    }

    #[test]
    fn a_new_snapshot_replaces_the_old_one_whole_and_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snap");
        publish(&staged_with(&dir, "1"), &dir).unwrap();
        assert_eq!(
            files(&dir),
            [
                ("memory".into(), "memory 1".into()),
                ("state".into(), "state 1".into())
            ]
        );
        publish(&staged_with(&dir, "2"), &dir).unwrap();
        assert_eq!(
            files(&dir),
            [
                ("memory".into(), "memory 2".into()),
                ("state".into(), "state 2".into())
            ]
        );
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["snap"]);
    }

    #[test]
    fn an_unpublished_staging_directory_leaves_the_old_snapshot_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snap");
        publish(&staged_with(&dir, "1"), &dir).unwrap();
        let staging = staged_with(&dir, "2");
        discard(&staging);
        assert!(!staging.exists());
        assert_eq!(
            files(&dir),
            [
                ("memory".into(), "memory 1".into()),
                ("state".into(), "state 1".into())
            ]
        );
    }
}
