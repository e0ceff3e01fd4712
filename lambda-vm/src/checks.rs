//! What `lambda-vm` checks before it listens, so that a host or a function that cannot work is
//! refused at start, naming what and where, instead of failing every invoke later: the KVM
//! device, the guest kernel, and each function's image and memory size. Each check that passes
//! describes what it found in one line.

use crate::guest::Rootfs;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a check failed; the message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("KVM {}: not present: this host has no KVM (a machine or VM with hardware virtualization and the kvm module is needed; scripts/local.sh runs functions without a VM)", .0.display())]
    NoKvm(PathBuf),
    #[error("KVM {}: permission denied: run as root, or as a member of the group that owns it", .0.display())]
    KvmDenied(PathBuf),
    #[error("KVM {}: cannot be used", path.display())]
    KvmUnusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("KVM {}: API version {version}, where 12 is needed", path.display())]
    KvmVersion { path: PathBuf, version: i32 },
    #[error("{what} {}: cannot be read", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {}: {why}; give the uncompressed x86-64 vmlinux that scripts/build-kernel.sh prints", path.display())]
    Kernel { path: PathBuf, why: String },
    #[error("image {}: {why}; build it with scripts/build-rootfs.sh", path.display())]
    Image { path: PathBuf, why: String },
    #[error(
        "function {function}: memory_mb {mb} is more than the {max} MiB a microVM can have here"
    )]
    Memory { function: String, mb: u32, max: u32 },
}

/// `KVM_GET_API_VERSION` and `KVM_CREATE_VM` (`_IO(KVMIO, 0x00)`, `_IO(KVMIO, 0x01)`).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_API_VERSION: i32 = 12;

/// The KVM device at `path` opens, speaks KVM's API, and makes a VM.
pub fn kvm(path: &Path) -> Result<String, CheckError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CheckError::NoKvm(path.to_owned()),
            std::io::ErrorKind::PermissionDenied => CheckError::KvmDenied(path.to_owned()),
            _ => CheckError::KvmUnusable {
                path: path.to_owned(),
                source: e,
            },
        })?;
    let unusable = |source| CheckError::KvmUnusable {
        path: path.to_owned(),
        source,
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number; on another
    // kind of file the ioctl fails (ENOTTY) without touching memory.
    let version = unsafe { libc::ioctl(device.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version < 0 {
        return Err(unusable(std::io::Error::last_os_error()));
    }
    if version != KVM_API_VERSION {
        return Err(CheckError::KvmVersion {
            path: path.to_owned(),
            version,
        });
    }
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new descriptor or fails; it reads
    // and writes no memory of ours.
    let vm = unsafe { libc::ioctl(device.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(unusable(std::io::Error::last_os_error()));
    }
    // SAFETY: `vm` is a descriptor the kernel just returned, owned by nobody else; OwnedFd
    // closes it.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    Ok(format!(
        "KVM {}: usable (API version {version}, a VM can be made)",
        path.display()
    ))
}

/// The first `n` bytes of `path` (fewer if it is shorter), and its size.
fn head(what: &'static str, path: &Path, n: usize) -> Result<(Vec<u8>, u64), CheckError> {
    let read_error = |source| CheckError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let mut bytes = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok((bytes, size))
}

fn mb(bytes: u64) -> String {
    // Sizes of files: far below 2^52, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / 1_048_576.0;
    format!("{mb:.1} MB")
}

/// The kernel at `path` is what the `vmm` boots: an uncompressed 64-bit x86 ELF executable.
pub fn kernel(path: &Path) -> Result<String, CheckError> {
    let (bytes, size) = head("kernel", path, 1024)?;
    let bad = |why: &str| CheckError::Kernel {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    };
    if bytes.get(0x202..0x206) == Some(b"HdrS") {
        return Err(bad("a compressed bzImage, which the vmm does not boot"));
    }
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    // e_type 2 (ET_EXEC), e_machine 62 (EM_X86_64), e_phnum.
    if u16_at(18) != 62 {
        return Err(bad("an ELF file for another machine than x86-64"));
    }
    if u16_at(16) != 2 {
        return Err(bad("an ELF file that is not an executable"));
    }
    if u16_at(56) == 0 {
        return Err(bad("an ELF file with nothing to load"));
    }
    Ok(format!(
        "kernel {}: an x86-64 ELF vmlinux ({})",
        path.display(),
        mb(size)
    ))
}

/// The function image at `path`, by its contents: an ext4 file system (superblock magic) or a
/// newc cpio archive. A name that says the other kind is refused, as a sign of a mix-up.
pub fn image(path: &Path) -> Result<(Rootfs, String), CheckError> {
    let (bytes, size) = head("image", path, 2048)?;
    let bad = |why: &str| CheckError::Image {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    // The ext4 superblock starts at byte 1024; its magic 0xEF53 is at offset 56 in it.
    let ext4 = bytes.get(1080..1082) == Some(&[0x53, 0xEF][..]);
    let cpio = bytes.starts_with(b"070701") || bytes.starts_with(b"070702");
    let named_ext4 = path.extension().is_some_and(|e| e == "ext4");
    let (rootfs, kind) = match (ext4, cpio, named_ext4) {
        (true, _, true) => (Rootfs::Ext4(path.to_owned()), "an ext4 image"),
        (_, true, false) => (Rootfs::Initramfs(path.to_owned()), "a cpio initramfs"),
        (true, _, false) => return Err(bad("an ext4 image without the .ext4 name")),
        (_, true, true) => return Err(bad("named .ext4, but a cpio archive")),
        _ if size == 0 => return Err(bad("empty")),
        _ => return Err(bad("neither an ext4 image nor a newc cpio archive")),
    };
    Ok((
        rootfs,
        format!("image {}: {kind} ({})", path.display(), mb(size)),
    ))
}

/// A function's memory size fits in a microVM here.
pub fn memory(function: &str, mb: u32) -> Result<(), CheckError> {
    let max = vmm::config::MAX_MEM_MIB;
    if mb > max {
        return Err(CheckError::Memory {
            function: function.to_owned(),
            mb,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn elf(machine: u16, kind: u16, phnum: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[16..18].copy_from_slice(&kind.to_le_bytes());
        bytes[18..20].copy_from_slice(&machine.to_le_bytes());
        bytes[56..58].copy_from_slice(&phnum.to_le_bytes());
        bytes
    }

    #[test]
    fn a_missing_or_foreign_kvm_device_is_named() {
        let missing = kvm(Path::new("/nonexistent/kvm")).unwrap_err().to_string();
        assert!(
            missing.contains("/nonexistent/kvm: not present"),
            "{missing}"
        );
        let not_kvm = kvm(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(not_kvm.contains("/dev/null: cannot be used"), "{not_kvm}");
    }

    #[test]
    fn only_an_x86_64_elf_executable_is_a_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let good = file(dir.path(), "vmlinux", &elf(62, 2, 3));
        assert!(kernel(&good).unwrap().contains("x86-64 ELF vmlinux"));
        let mut bz = vec![0u8; 1024];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        for (bytes, why) in [
            (bz, "bzImage"),
            (b"#!/bin/sh\n".repeat(10), "not an ELF file"),
            (elf(183, 2, 3), "another machine"),
            (elf(62, 1, 3), "not an executable"),
            (elf(62, 2, 0), "nothing to load"),
        ] {
            let path = file(dir.path(), "bad", &bytes);
            let error = kernel(&path).unwrap_err().to_string();
            assert!(error.contains(why) && error.contains("bad"), "{error}");
        }
        let error = kernel(&dir.path().join("none")).unwrap_err().to_string();
        assert!(error.contains("none: cannot be read"), "{error}");
    }

    #[test]
    fn an_image_is_known_by_its_contents_and_its_name_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut ext4 = vec![0u8; 2048];
        ext4[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        let cpio = b"070701".repeat(10);
        let path = file(dir.path(), "f.ext4", &ext4);
        assert!(matches!(image(&path).unwrap().0, Rootfs::Ext4(_)));
        let path = file(dir.path(), "f.cpio", &cpio);
        assert!(matches!(image(&path).unwrap().0, Rootfs::Initramfs(_)));
        for (name, bytes, why) in [
            ("g.ext4", &cpio[..], "named .ext4, but a cpio archive"),
            ("g.cpio", &ext4[..], "without the .ext4 name"),
            ("g.ext4", &b""[..], "empty"),
            ("g.ext4", &b"hello"[..], "neither"),
        ] {
            let path = file(dir.path(), name, bytes);
            let error = image(&path).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        }
        assert!(memory("f", 128).is_ok());
        let error = memory("f", 4096).unwrap_err().to_string();
        assert!(error.contains("function f: memory_mb 4096"), "{error}");
    }
}
