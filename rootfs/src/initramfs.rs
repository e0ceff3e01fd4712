//! Writes a [`Tree`] as an uncompressed newc cpio, the initramfs format the kernel unpacks.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::cpio;
use crate::tree::{Node, Source, Tree};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Write(#[from] cpio::WriteError),
}

/// Writes every entry of `tree`, in its (sorted) order, with `mtime` on all of them, and returns
/// the sink.
pub fn write<W: Write>(tree: &Tree, out: W, mtime: u32) -> Result<W, InitramfsError> {
    let mut writer = cpio::Writer::new(out, mtime);
    for (path, node) in tree.iter() {
        // Archive names are relative: the kernel unpacks them from its root.
        let name = path.trim_start_matches('/');
        match node {
            Node::Dir { perm } => writer.directory(name, *perm)?,
            Node::File { perm, size, source } => match source {
                Source::Bytes(bytes) => writer.file(name, *perm, *size, &mut bytes.as_slice())?,
                Source::Host(host) => {
                    let mut file = File::open(host).map_err(|source| InitramfsError::Read {
                        path: host.clone(),
                        source,
                    })?;
                    writer.file(name, *perm, *size, &mut file)?
                }
            },
            Node::Symlink { target } => writer.symlink(name, target)?,
            Node::CharDevice { perm, major, minor } => {
                writer.char_device(name, *perm, *major, *minor)?
            }
        }
    }
    Ok(writer.finish()?)
}
