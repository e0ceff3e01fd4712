//! Lambda layers as users make them: zip files, unpacked under `/opt` as Lambda does. Entries
//! go into the image tree directly (their bytes kept in memory), with the same rules as a layer
//! directory's: names checked, modes normalized by the exec bit, relative symlinks kept inside
//! `/opt`.

use crate::tree::{check_symlink, Node, Source, Tree, TreeError};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The file-type bits of a Unix mode, and the symlink type.
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// Why a layer zip could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerZipError {
    #[error("cannot read the zip file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{}: entry {name:?} {reason}", path.display())]
    Entry {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Whether `path` names a zip layer (by its extension) rather than a layer directory.
pub fn is_zip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
}

/// Adds the contents of the zip at `path` under `dest`, over what is there.
pub fn add_zip(tree: &mut Tree, path: &Path, dest: &str) -> Result<(), LayerZipError> {
    let read_error = |source| LayerZipError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| read_error(zip::result::ZipError::Io(e)))?;
    let mut archive = zip::ZipArchive::new(file).map_err(read_error)?;
    tree.insert(dest, Node::Dir { perm: 0o755 })?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(read_error)?;
        let name = entry.name().to_owned();
        let bad = |reason: &str| LayerZipError::Entry {
            path: path.to_owned(),
            name: name.clone(),
            reason: reason.to_owned(),
        };
        // `enclosed_name` refuses absolute paths and `..` that would leave the layer.
        let relative = entry
            .enclosed_name()
            .ok_or_else(|| bad("leaves the layer (absolute, or with ..)"))?;
        let relative = relative
            .to_str()
            .ok_or_else(|| bad("is not UTF-8"))?
            .trim_end_matches('/')
            .to_owned();
        if relative.is_empty() {
            continue;
        }
        if relative.chars().any(char::is_control) {
            return Err(bad("has control characters in its name"));
        }
        let image = format!("{dest}/{relative}");
        let mode = entry.unix_mode().unwrap_or(0);
        let mut bytes = Vec::new();
        if !entry.is_dir() {
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| read_error(zip::result::ZipError::Io(e)))?;
        }
        let node = if entry.is_dir() {
            Node::Dir { perm: 0o755 }
        } else if mode & S_IFMT == S_IFLNK {
            let target =
                String::from_utf8(bytes).map_err(|_| bad("links to a non-UTF-8 target"))?;
            check_symlink(path, &image, &target, dest)?;
            Node::Symlink { target }
        } else {
            Node::File {
                perm: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
                size: bytes.len() as u64,
                source: Source::Bytes(bytes),
            }
        };
        tree.insert(&image, node)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    /// A zip of `entries`: (name, unix mode, bytes); a mode with `S_IFLNK` makes a symlink.
    fn zip_of(entries: &[(&str, u32, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::Builder::new().suffix(".zip").tempfile().unwrap();
        let mut writer = zip::ZipWriter::new(file.reopen().unwrap());
        for (name, mode, bytes) in entries {
            let options = SimpleFileOptions::default().unix_permissions(*mode);
            if mode & S_IFMT == S_IFLNK {
                writer
                    .add_symlink(*name, String::from_utf8_lossy(bytes), options)
                    .unwrap();
            } else if name.ends_with('/') {
                writer.add_directory(*name, options).unwrap();
            } else {
                writer.start_file(*name, options).unwrap();
                writer.write_all(bytes).unwrap();
            }
        }
        writer.finish().unwrap();
        file
    }

    #[test]
    fn a_layer_zip_lands_under_opt_with_modes_and_links() {
        let zip = zip_of(&[
            ("extensions/", 0o755, b""),
            ("extensions/agent", 0o100_755, b"#!/bin/sh\n"),
            ("lib/data.txt", 0o100_600, b"data"),
            ("bin/agent", S_IFLNK | 0o777, b"../extensions/agent"),
        ]);
        let mut tree = Tree::new();
        add_zip(&mut tree, zip.path(), "/opt").unwrap();
        assert!(matches!(
            tree.get("/opt/extensions"),
            Some(Node::Dir { perm: 0o755 })
        ));
        assert!(matches!(
            tree.get("/opt/extensions/agent"),
            Some(Node::File {
                perm: 0o755,
                size: 10,
                ..
            })
        ));
        assert!(matches!(
            tree.get("/opt/lib/data.txt"),
            Some(Node::File { perm: 0o644, .. })
        ));
        assert!(matches!(
            tree.get("/opt/bin/agent"),
            Some(Node::Symlink { target }) if target == "../extensions/agent"
        ));
        assert!(is_zip(Path::new("layer.ZIP")) && !is_zip(Path::new("layer")));
    }

    #[test]
    fn entries_that_leave_the_layer_are_refused() {
        let escaping = zip_of(&[("../../etc/passwd", 0o100_644, b"x")]);
        let error = add_zip(&mut Tree::new(), escaping.path(), "/opt").unwrap_err();
        assert!(error.to_string().contains("leaves the layer"), "{error}");
        let link_out = zip_of(&[("x", S_IFLNK | 0o777, b"../../etc")]);
        assert!(add_zip(&mut Tree::new(), link_out.path(), "/opt").is_err());
        let not_zip = tempfile::Builder::new().suffix(".zip").tempfile().unwrap();
        std::fs::write(not_zip.path(), b"not a zip").unwrap();
        let error = add_zip(&mut Tree::new(), not_zip.path(), "/opt").unwrap_err();
        assert!(
            error.to_string().contains("cannot read the zip file"),
            "{error}"
        );
    }
}
