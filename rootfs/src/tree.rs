//! The image's file tree: what goes where, collected from host directories and validated, with
//! host details (owners, times, odd modes) already dropped. Both output formats are written from
//! it, in its order.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Longest path the kernel accepts (PATH_MAX less the NUL).
const PATH_MAX_LEN: usize = 4095;
/// Symlinks followed while resolving one path, as the kernel's limit (MAXSYMLINKS).
const MAX_SYMLINK_HOPS: usize = 40;

/// Directory and executable mode; everything is normalized to it or to [`REGULAR_PERM`].
pub const EXEC_PERM: u32 = 0o755;
pub const REGULAR_PERM: u32 = 0o644;

/// One entry of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        perm: u32,
    },
    File {
        perm: u32,
        size: u64,
        source: Source,
    },
    /// The target as written; see [`check_symlink`] for which targets are accepted.
    Symlink {
        target: String,
    },
    CharDevice {
        perm: u32,
        major: u32,
        minor: u32,
    },
}

/// Where a file's bytes come from. Host files are read when the image is written, so a tree
/// of a large function stays small in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{path:?}: file name is not valid UTF-8 (rename it)")]
    NonUtf8Name { path: PathBuf },
    #[error("{path:?}: {reason}")]
    BadName { path: PathBuf, reason: &'static str },
    #[error(
        "{}: is a {kind}; only regular files, directories and symlinks can go into the image",
        path.display()
    )]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error("{}: symlink target is not valid UTF-8", path.display())]
    NonUtf8SymlinkTarget { path: PathBuf },
    #[error(
        "{}: symlink target {target:?} escapes {root} (it would resolve to {resolved} in the image); \
         relative symlinks must stay inside {root}, use an absolute target to point elsewhere",
        path.display()
    )]
    SymlinkEscapes {
        path: PathBuf,
        target: String,
        root: String,
        resolved: String,
    },
    #[error("{}: symlink has an empty target", path.display())]
    EmptySymlink { path: PathBuf },
    #[error("{path}: not a normalized absolute path in the image")]
    InvalidImagePath { path: String },
    #[error("{path}: longer than the kernel's PATH_MAX")]
    PathTooLong { path: String },
    #[error("{path}: {parent} is not a directory in the image (an earlier entry put a file or symlink there)")]
    ParentNotADirectory { path: String, parent: String },
}

impl TreeError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
        move |source| TreeError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What to do while copying a host directory in.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// A file to leave out, by (device, inode): the function config when it sits in the function
    /// directory, so it is not also copied to /var/task.
    pub skip: Option<(u64, u64)>,
}

/// Totals used to size an ext4 image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub file_bytes: u64,
}

/// The image's entries keyed by absolute path ("/var/task/x"). The root directory itself is
/// implicit. A `BTreeMap` keeps entries sorted, which makes output order independent of the host's
/// readdir order and puts every directory before its contents.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Entries in output order: sorted by path, parents first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(path, node)| (path.as_str(), node))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for node in self.nodes.values() {
            stats.entries += 1;
            match node {
                Node::Dir { .. } => stats.dirs += 1,
                Node::File { size, .. } => {
                    stats.files += 1;
                    stats.file_bytes += size;
                }
                Node::Symlink { .. } => stats.symlinks += 1,
                Node::CharDevice { .. } => {}
            }
        }
        stats
    }

    /// Adds or replaces an entry, creating missing parent directories (0755). A later entry
    /// replaces an earlier one at the same path, as a later Lambda layer overrides an earlier one;
    /// two directories merge (the later mode wins), and anything replacing a directory removes
    /// its contents.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        check_image_path(path)?;
        let mut parent_end = 0;
        while let Some(next) = path[parent_end + 1..].find('/') {
            parent_end += 1 + next;
            let parent = &path[..parent_end];
            match self.nodes.get(parent) {
                None => {
                    self.nodes
                        .insert(parent.to_owned(), Node::Dir { perm: EXEC_PERM });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(TreeError::ParentNotADirectory {
                        path: path.to_owned(),
                        parent: parent.to_owned(),
                    })
                }
            }
        }
        let replaces_dir = matches!(self.nodes.get(path), Some(Node::Dir { .. }));
        if replaces_dir && !matches!(node, Node::Dir { .. }) {
            let prefix = format!("{path}/");
            self.nodes.retain(|p, _| !p.starts_with(&prefix));
        }
        self.nodes.insert(path.to_owned(), node);
        Ok(())
    }

    /// Copies the contents of host directory `source` to `dest` in the image (which is created if
    /// missing). File modes become 0755 or 0644 by the exec bit; relative symlinks must resolve
    /// inside `dest`. Rejects non-UTF-8 names, names with control characters, and anything that
    /// is not a regular file, directory or symlink.
    pub fn add_host_dir(
        &mut self,
        source: &Path,
        dest: &str,
        options: &CollectOptions,
    ) -> Result<(), TreeError> {
        check_source_dir(source)?;
        self.insert(dest, Node::Dir { perm: EXEC_PERM })?;
        self.collect(source, dest, dest, options)
    }

    fn collect(
        &mut self,
        source: &Path,
        dest: &str,
        root: &str,
        options: &CollectOptions,
    ) -> Result<(), TreeError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(source).map_err(TreeError::io(source))? {
            let entry = entry.map_err(TreeError::io(source))?;
            let host = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| TreeError::NonUtf8Name { path: host.clone() })?;
            check_name(&name).map_err(|reason| TreeError::BadName {
                path: host.clone(),
                reason,
            })?;
            names.push(name);
        }
        names.sort_unstable();
        for name in names {
            let host = source.join(&name);
            let image = format!("{dest}/{name}");
            let meta = fs::symlink_metadata(&host).map_err(TreeError::io(&host))?;
            let file_type = meta.file_type();
            if file_type.is_dir() {
                self.insert(&image, Node::Dir { perm: EXEC_PERM })?;
                self.collect(&host, &image, root, options)?;
            } else if file_type.is_file() {
                if options.skip == Some((meta.dev(), meta.ino())) {
                    continue;
                }
                let perm = if meta.mode() & 0o111 != 0 {
                    EXEC_PERM
                } else {
                    REGULAR_PERM
                };
                let node = Node::File {
                    perm,
                    size: meta.len(),
                    source: Source::Host(host),
                };
                self.insert(&image, node)?;
            } else if file_type.is_symlink() {
                let target = fs::read_link(&host).map_err(TreeError::io(&host))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| TreeError::NonUtf8SymlinkTarget { path: host.clone() })?;
                check_symlink(&host, &image, &target, root)?;
                self.insert(&image, Node::Symlink { target })?;
            } else {
                return Err(TreeError::UnsupportedFileType {
                    path: host,
                    kind: describe(&file_type),
                });
            }
        }
        Ok(())
    }

    /// Looks `path` up the way the guest kernel would, following symlinks (absolute ones from the
    /// image's root), and returns the final path and entry. `None` when it does not resolve to an
    /// entry of the image (the implicit root included).
    pub fn resolve(&self, path: &str) -> Option<(String, &Node)> {
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
        let mut current = String::new();
        let mut hops = 0;
        let mut node: Option<&Node> = None;
        while let Some(component) = pending.pop() {
            if component.is_empty() || component == "." {
                continue;
            }
            // Only a directory has entries (or a `..`); `None` stands for the root.
            if !matches!(node, None | Some(Node::Dir { .. })) {
                return None;
            }
            if component == ".." {
                let cut = current.rfind('/').unwrap_or(0);
                current.truncate(cut);
                node = self.nodes.get(&current);
                continue;
            }
            let candidate = format!("{current}/{component}");
            match self.nodes.get(&candidate)? {
                Node::Symlink { target } => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return None;
                    }
                    if target.starts_with('/') {
                        current.clear();
                        node = None;
                    }
                    pending.extend(target.split('/').rev().map(str::to_owned));
                }
                found => {
                    current = candidate;
                    node = Some(found);
                }
            }
        }
        node.map(|n| (current, n))
    }
}

/// Fails unless `path` is an existing directory (a symlink to one is fine).
pub fn check_source_dir(path: &Path) -> Result<(), TreeError> {
    let meta = fs::metadata(path).map_err(TreeError::io(path))?;
    if !meta.is_dir() {
        return Err(TreeError::NotADirectory {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn describe(file_type: &fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Names that cannot reach the image intact: `.`/`..` would leave their directory, and control
/// characters break line-based tools (`cpio -t`, debugfs command files for ext4).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("file name would escape its directory");
    }
    if name.chars().any(char::is_control) {
        return Err("file name contains a control character (newline, tab, ...); rename it");
    }
    Ok(())
}

fn check_image_path(path: &str) -> Result<(), TreeError> {
    let valid = path.len() > 1
        && path.starts_with('/')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !path.contains('\0');
    if !valid {
        return Err(TreeError::InvalidImagePath {
            path: path.to_owned(),
        });
    }
    if path.len() > PATH_MAX_LEN {
        return Err(TreeError::PathTooLong {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Accepts a symlink at image path `link` whose `target` is absolute (it resolves against the
/// guest's root, so it cannot leave the image; functions point into /opt or /tmp this way), or
/// relative and lexically inside `root` (the function or layer directory it came from: a relative
/// link out of it depends on where the code is unpacked, which is the zip-slip pattern).
pub fn check_symlink(host: &Path, link: &str, target: &str, root: &str) -> Result<(), TreeError> {
    if target.is_empty() {
        return Err(TreeError::EmptySymlink {
            path: host.to_owned(),
        });
    }
    if target.starts_with('/') {
        return Ok(());
    }
    let root_depth = root.split('/').filter(|c| !c.is_empty()).count();
    let mut parts: Vec<&str> = link.split('/').filter(|c| !c.is_empty()).collect();
    parts.pop();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if parts.len() <= root_depth => {
                return Err(TreeError::SymlinkEscapes {
                    path: host.to_owned(),
                    target: target.to_owned(),
                    root: root.to_owned(),
                    resolved: resolve_lexically(link, target),
                })
            }
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    Ok(())
}

/// Where a relative target points, for error messages.
fn resolve_lexically(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = link.split('/').filter(|c| !c.is_empty()).collect();
    parts.pop();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(perm: u32) -> Node {
        Node::File {
            perm,
            size: 1,
            source: Source::Bytes(vec![b'x']),
        }
    }

    fn paths(tree: &Tree) -> Vec<&str> {
        tree.iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn insert_creates_parents_and_sorts() {
        let mut tree = Tree::new();
        tree.insert("/b/c", file(0o644)).unwrap();
        tree.insert("/a-b", file(0o644)).unwrap();
        tree.insert("/a/z", file(0o644)).unwrap();
        assert_eq!(paths(&tree), ["/a", "/a-b", "/a/z", "/b", "/b/c"]);
        assert_eq!(tree.get("/b"), Some(&Node::Dir { perm: EXEC_PERM }));
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let mut tree = Tree::new();
        tree.insert("/opt/lib/a", file(0o644)).unwrap();
        tree.insert("/opt/lib/b", file(0o644)).unwrap();
        tree.insert("/opt/lib/a", file(0o755)).unwrap();
        assert_eq!(tree.get("/opt/lib/a"), Some(&file(0o755)));
        // A directory over a directory merges.
        tree.insert("/opt/lib", Node::Dir { perm: 0o755 }).unwrap();
        assert_eq!(tree.len(), 4);
        // A file over a directory drops its contents.
        tree.insert("/opt/lib", file(0o644)).unwrap();
        assert_eq!(paths(&tree), ["/opt", "/opt/lib"]);
        let err = tree.insert("/opt/lib/c", file(0o644)).unwrap_err();
        assert!(
            matches!(err, TreeError::ParentNotADirectory { .. }),
            "{err}"
        );
    }

    #[test]
    fn invalid_image_paths_are_refused() {
        let mut tree = Tree::new();
        for path in ["", "/", "rel", "/a/../b", "/a/./b", "/a//b", "/a/"] {
            assert!(tree.insert(path, file(0o644)).is_err(), "{path}");
        }
        let long = format!("/{}", "x".repeat(PATH_MAX_LEN));
        assert!(matches!(
            tree.insert(&long, file(0o644)),
            Err(TreeError::PathTooLong { .. })
        ));
    }

    #[test]
    fn relative_symlinks_must_stay_in_their_root() {
        let host = Path::new("/host/link");
        let ok = |link: &str, target: &str| check_symlink(host, link, target, "/var/task");
        ok("/var/task/a", "b").unwrap();
        ok("/var/task/a", "./b/../c").unwrap();
        ok("/var/task/sub/a", "..").unwrap();
        ok("/var/task/sub/a", "../x/y").unwrap();
        ok("/var/task/a", "/etc/passwd").unwrap();
        ok("/var/task/a", "/tmp/../../x").unwrap();
        for (link, target) in [
            ("/var/task/a", ".."),
            ("/var/task/a", "../task/b"),
            ("/var/task/sub/a", "../../x"),
            ("/var/task/a", "b/../../c"),
        ] {
            let err = ok(link, target).unwrap_err();
            assert!(matches!(err, TreeError::SymlinkEscapes { .. }), "{err}");
        }
        let err = ok("/var/task/sub/a", "../../../etc/passwd").unwrap_err();
        assert!(
            err.to_string().contains("/etc/passwd in the image"),
            "{err}"
        );
        assert!(matches!(
            ok("/var/task/a", ""),
            Err(TreeError::EmptySymlink { .. })
        ));
    }

    #[test]
    fn resolve_follows_symlinks_inside_the_image() {
        let mut tree = Tree::new();
        tree.insert("/var/runtime/bootstrap", file(0o755)).unwrap();
        tree.insert(
            "/var/task/run",
            Node::Symlink {
                target: "../runtime/bootstrap".into(),
            },
        )
        .unwrap();
        tree.insert(
            "/opt/bin",
            Node::Symlink {
                target: "/var/task".into(),
            },
        )
        .unwrap();
        tree.insert(
            "/loop",
            Node::Symlink {
                target: "/loop".into(),
            },
        )
        .unwrap();
        tree.insert(
            "/dangling",
            Node::Symlink {
                target: "/nowhere".into(),
            },
        )
        .unwrap();
        let (path, node) = tree.resolve("/opt/bin/run").unwrap();
        assert_eq!(path, "/var/runtime/bootstrap");
        assert_eq!(node, &file(0o755));
        assert_eq!(tree.resolve("/opt/bin").unwrap().0, "/var/task");
        assert!(tree.resolve("/loop").is_none());
        assert!(tree.resolve("/dangling").is_none());
        assert!(tree.resolve("/var/runtime/bootstrap/x").is_none());
        assert!(tree.resolve("/").is_none());
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        assert!(check_name("ok name.txt").is_ok());
        for name in ["", ".", "..", "a\nb", "tab\t", "\u{7f}"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn stats_count_entries() {
        let mut tree = Tree::new();
        tree.insert("/a/f", file(0o644)).unwrap();
        tree.insert("/a/l", Node::Symlink { target: "f".into() })
            .unwrap();
        let stats = tree.stats();
        assert_eq!(
            (
                stats.entries,
                stats.dirs,
                stats.files,
                stats.symlinks,
                stats.file_bytes
            ),
            (3, 1, 1, 1, 1)
        );
    }
}
