//! Writes a [`Tree`] as a reproducible ext4 image with e2fsprogs: `mkfs.ext4 -d` populates it from
//! a staging directory, then one `debugfs` pass sets every inode's owner and times, the host
//! details `mkfs.ext4 -d` copies from the staging files.
//!
//! What makes two builds byte-identical (with the same e2fsprogs version):
//! - our own `mke2fs.conf` (`MKE2FS_CONFIG`), so the host's defaults do not pick the features;
//! - a fixed UUID and directory hash seed, no journal, no reserved blocks;
//! - `E2FSPROGS_FAKE_TIME` for the superblock times (it treats 0 as unset, so epoch 0 becomes 1s);
//! - `LC_ALL=C`, as `mkfs.ext4 -d` adds directory entries in `alphasort` (locale) order;
//! - staging files are fresh copies, so no hard links or host inode numbers carry over.
//!
//! `/dev/console` is not written: an unprivileged build cannot create the node in the staging
//! directory, and the kernel mounts devtmpfs on /dev (CONFIG_DEVTMPFS_MOUNT) before it opens the
//! console of an ext4 root, which would hide the node anyway.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::tree::{Node, Source, Tree};

/// The filesystem UUID and directory hash seed of every image. Guests find their root by device
/// (`root=/dev/vda`), so a shared UUID costs nothing and keeps images reproducible.
pub const FS_UUID: &str = "6c616d62-6461-4000-8000-726f6f746673";

const BLOCK_SIZE: u64 = 4096;
const INODE_SIZE: u64 = 256;
const MIB: u64 = 1024 * 1024;
/// Room for what the size estimate leaves out: superblock copies, group descriptors, bitmaps,
/// reserved GDT blocks, lost+found.
const METADATA_SLACK: u64 = 16 * MIB;

/// Every feature spelled out, so the image does not depend on the host's /etc/mke2fs.conf. No
/// journal: the guest mounts the image read-only, and the journal would only cost space.
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 0
[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tdefault = {
\t}
";

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{tool} not found (looked in PATH, /usr/sbin and /sbin): install e2fsprogs (apt-get install e2fsprogs)")]
    ToolMissing { tool: &'static str },
    #[error("ext4 staging directory {}", path.display())]
    Staging {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {tool}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {output}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        output: String,
    },
}

/// How to build the image.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ext4Options {
    /// Image size; `None` sizes it from the tree with some headroom.
    pub size_mb: Option<u64>,
    /// Every inode's atime, mtime, ctime and crtime.
    pub mtime: u32,
}

/// Writes `tree` as an ext4 image at `image` (created or overwritten).
pub fn build(tree: &Tree, image: &Path, options: &Ext4Options) -> Result<(), Ext4Error> {
    let mkfs = find_tool("mkfs.ext4")?;
    let debugfs = find_tool("debugfs")?;
    let staging = tempfile::Builder::new()
        .prefix("build-rootfs-ext4-")
        .tempdir()
        .map_err(|source| Ext4Error::Staging {
            path: std::env::temp_dir(),
            source,
        })?;
    let root = staging.path().join("root");
    stage(tree, &root)?;
    let conf = staging.path().join("mke2fs.conf");
    let commands = staging.path().join("debugfs.cmds");
    write_staging(&conf, MKE2FS_CONF.as_bytes())?;
    write_staging(&commands, debugfs_commands(tree, options.mtime).as_bytes())?;

    let (estimate_mb, inodes) = estimate(tree);
    let size_mb = options.size_mb.unwrap_or(estimate_mb);
    // e2fsprogs reads a fake time of 0 as "not set" and would use the clock.
    let fake_time = options.mtime.max(1).to_string();
    let extended = format!("root_owner=0:0,hash_seed={FS_UUID},nodiscard");
    let mut mkfs_cmd = Command::new(&mkfs);
    mkfs_cmd
        .args(["-q", "-F", "-T", "default", "-U", FS_UUID, "-E", &extended])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(&root)
        .arg(image)
        .arg(format!("{size_mb}M"));
    run("mkfs.ext4", &mut mkfs_cmd, &conf, &fake_time).map_err(|e| match e {
        // The usual cause when a size was given; mkfs.ext4 only says it could not allocate.
        Ext4Error::ToolFailed {
            tool,
            status,
            output,
        } if options.size_mb.is_some() => Ext4Error::ToolFailed {
            tool,
            status,
            output: format!(
                "{output} (is {size_mb} MiB big enough? the builder's estimate is \
                     {estimate_mb} MiB)"
            ),
        },
        other => other,
    })?;

    let mut debugfs_cmd = Command::new(&debugfs);
    debugfs_cmd.arg("-w").arg("-f").arg(&commands).arg(image);
    let output = run("debugfs", &mut debugfs_cmd, &conf, &fake_time)?;
    // debugfs exits 0 even when a command fails; its only expected stderr line is the banner.
    let errors: Vec<&str> = std::str::from_utf8(&output.stderr)
        .unwrap_or("(unreadable output)")
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("debugfs "))
        .collect();
    if !errors.is_empty() {
        return Err(Ext4Error::ToolFailed {
            tool: "debugfs",
            status: "exit 0".to_owned(),
            output: errors.join("; "),
        });
    }
    Ok(())
}

fn run(
    tool: &'static str,
    command: &mut Command,
    conf: &Path,
    fake_time: &str,
) -> Result<Output, Ext4Error> {
    let output = command
        .env("MKE2FS_CONFIG", conf)
        .env("E2FSPROGS_FAKE_TIME", fake_time)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| Ext4Error::Spawn { tool, source })?;
    if !output.status.success() {
        let mut text = one_line(&output.stderr);
        if text.is_empty() {
            text = one_line(&output.stdout);
        }
        return Err(Ext4Error::ToolFailed {
            tool,
            status: output.status.to_string(),
            output: text,
        });
    }
    Ok(output)
}

/// A tool's output as one line, so an error stays one line.
fn one_line(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

/// Looks in PATH, then in the sbin directories an unprivileged user's PATH often lacks.
fn find_tool(name: &'static str) -> Result<PathBuf, Ext4Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(Ext4Error::ToolMissing { tool: name })
}

fn write_staging(path: &Path, bytes: &[u8]) -> Result<(), Ext4Error> {
    fs::write(path, bytes).map_err(|source| Ext4Error::Staging {
        path: path.to_owned(),
        source,
    })
}

/// Materializes the tree under `root`. Modes are set explicitly so the umask does not leak in;
/// owners and times are fixed later by debugfs.
fn stage(tree: &Tree, root: &Path) -> Result<(), Ext4Error> {
    let staging_error = |path: &Path| {
        let path = path.to_owned();
        move |source| Ext4Error::Staging { path, source }
    };
    fs::create_dir(root).map_err(staging_error(root))?;
    let mut dirs = Vec::new();
    for (image_path, node) in tree.iter() {
        let host = root.join(image_path.trim_start_matches('/'));
        match node {
            Node::Dir { perm } => {
                fs::create_dir(&host).map_err(staging_error(&host))?;
                dirs.push((host, *perm));
            }
            Node::File { perm, source, .. } => {
                match source {
                    Source::Bytes(bytes) => fs::write(&host, bytes).map(drop),
                    Source::Host(from) => fs::copy(from, &host).map(drop),
                }
                .map_err(staging_error(&host))?;
                fs::set_permissions(&host, fs::Permissions::from_mode(*perm))
                    .map_err(staging_error(&host))?;
            }
            Node::Symlink { target } => symlink(target, &host).map_err(staging_error(&host))?,
            Node::CharDevice { .. } => {}
        }
    }
    // Directory modes last, in case one is ever created without write permission.
    for (dir, perm) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*perm)).map_err(staging_error(dir))?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(staging_error(root))
}

/// One `set_inode_field` per owner and time field of every inode mkfs created.
fn debugfs_commands(tree: &Tree, mtime: u32) -> String {
    let paths = ["/", "/lost+found"].into_iter().chain(
        tree.iter()
            .filter_map(|(path, node)| (!matches!(node, Node::CharDevice { .. })).then_some(path)),
    );
    let mut commands = String::new();
    for path in paths {
        let quoted = quote(path);
        for field in ["uid", "gid"] {
            commands.push_str(&format!("sif {quoted} {field} 0\n"));
        }
        for field in ["atime", "mtime", "ctime", "crtime"] {
            commands.push_str(&format!("sif {quoted} {field} @{mtime}\n"));
        }
    }
    commands
}

/// debugfs (libss) quoting: inside double quotes, `""` is a literal quote. Names cannot hold
/// newlines or other control characters (the tree refuses them), so one command is one line.
fn quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

/// The smallest image size worth trying (MiB) and the inode count to ask for.
fn estimate(tree: &Tree) -> (u64, u64) {
    let blocks = |bytes: u64| bytes.div_ceil(BLOCK_SIZE);
    let mut data_blocks = 0;
    let mut dirent_bytes = 0;
    for (path, node) in tree.iter() {
        let name_len = path.rsplit('/').next().map_or(0, str::len) as u64;
        dirent_bytes += 8 + name_len.div_ceil(4) * 4;
        data_blocks += match node {
            Node::Dir { .. } => 1,
            Node::File { size, .. } => blocks(*size),
            // Targets under 60 bytes live in the inode itself.
            Node::Symlink { target } if target.len() >= 60 => 1,
            Node::Symlink { .. } | Node::CharDevice { .. } => 0,
        };
    }
    data_blocks += blocks(dirent_bytes);
    // Root, lost+found and the ten reserved inodes, plus headroom.
    let inodes = tree.len() as u64 + 64;
    let bytes = (data_blocks * BLOCK_SIZE + inodes * INODE_SIZE) * 5 / 4 + METADATA_SLACK;
    (bytes.div_ceil(MIB), inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("/var/task/a b"), "\"/var/task/a b\"");
        assert_eq!(quote("/a\"b"), "\"/a\"\"b\"");
    }

    #[test]
    fn commands_cover_every_inode_but_device_nodes() {
        let mut tree = Tree::new();
        tree.insert(
            "/dev/console",
            Node::CharDevice {
                perm: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        tree.insert(
            "/x",
            Node::Symlink {
                target: "dev".into(),
            },
        )
        .unwrap();
        let commands = debugfs_commands(&tree, 7);
        assert!(commands.contains("sif \"/\" uid 0\n"));
        assert!(commands.contains("sif \"/lost+found\" crtime @7\n"));
        assert!(commands.contains("sif \"/dev\" mtime @7\n"));
        assert!(commands.contains("sif \"/x\" gid 0\n"));
        assert!(!commands.contains("console"));
        assert_eq!(commands.lines().count(), 4 * 6);
    }

    #[test]
    fn estimate_grows_with_content() {
        let mut tree = Tree::new();
        let (small, inodes) = estimate(&tree);
        assert_eq!(small, 16 + 1);
        assert_eq!(inodes, 64);
        tree.insert(
            "/big",
            Node::File {
                perm: 0o644,
                size: 100 * MIB,
                source: Source::Bytes(Vec::new()),
            },
        )
        .unwrap();
        let (big, _) = estimate(&tree);
        assert!(big >= 125 + 16, "{big}");
    }
}
