//! Checks of the guest artifacts that scripts/test.sh builds: the kernel (`GUEST_VMLINUX`, from
//! scripts/build-kernel.sh) has every option the microVM needs, and the example initramfs
//! (`GUEST_INITRAMFS`, from scripts/build-rootfs.sh) holds init, the runtime and the function.
//! Skipped, with the reason, only where those builds did not run; under CI=true they must have.

mod common;

use integration_tests::guest_artifact;

/// Options the guest cannot boot or serve a function without, on this machine's emulated KVM.
const REQUIRED: &[&str] = &[
    "CONFIG_64BIT=y",
    "CONFIG_PRINTK=y",
    "CONFIG_SERIAL_8250_CONSOLE=y",
    "CONFIG_BLK_DEV_INITRD=y",
    "CONFIG_BINFMT_ELF=y",
    "CONFIG_BINFMT_SCRIPT=y",
    "CONFIG_PROC_FS=y",
    "CONFIG_SYSFS=y",
    "CONFIG_DEVTMPFS=y",
    "CONFIG_TMPFS=y",
    "CONFIG_FUTEX=y",
    "CONFIG_EPOLL=y",
    "CONFIG_NET=y",
    "CONFIG_INET=y",
    "CONFIG_UNIX=y",
    "CONFIG_VSOCKETS=y",
    "CONFIG_VIRTIO_VSOCKETS=y",
    "CONFIG_VIRTIO_MMIO=y",
    "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
    "CONFIG_VIRTIO_BLK=y",
    "CONFIG_EXT4_FS=y",
    "CONFIG_HW_RANDOM_VIRTIO=y",
    "CONFIG_KVM_GUEST=y",
    "CONFIG_PVH=y",
    "CONFIG_X86_MPPARSE=y",
    "CONFIG_INET_TABLE_PERTURB_ORDER=8",
    "CONFIG_SLUB=y",
    "CONFIG_HZ=50",
];

/// Options that make the boot very slow under emulation (rootfs/kernel/README.md) or are not wanted.
const ABSENT: &[&str] = &[
    "CONFIG_MODULES",
    "CONFIG_LEGACY_PTYS",
    "CONFIG_VT",
    "CONFIG_INPUT",
    "CONFIG_SERIO",
    "CONFIG_SLUB_DEBUG",
    "CONFIG_PCI",
    "CONFIG_SMP",
];

#[test]
fn the_guest_kernel_has_the_microvm_options() {
    let Some(vmlinux) = guest_artifact("GUEST_VMLINUX") else {
        return;
    };
    let vmlinux = vmlinux.canonicalize().unwrap();
    let image = std::fs::read(&vmlinux).unwrap();
    assert_eq!(&image[..4], b"\x7fELF", "an uncompressed ELF vmlinux");
    let config = std::fs::read_to_string(vmlinux.with_file_name("config"))
        .expect("build-kernel.sh keeps the final .config beside the vmlinux");
    let lines: Vec<&str> = config.lines().collect();
    for option in REQUIRED {
        assert!(
            lines.contains(option),
            "{option} missing from {}",
            vmlinux.display()
        );
    }
    for option in ABSENT {
        assert!(
            !lines.iter().any(|l| l.starts_with(&format!("{option}="))),
            "{option} must be off"
        );
    }
}

#[test]
fn the_example_initramfs_holds_init_runtime_and_function() {
    let Some(path) = guest_artifact("GUEST_INITRAMFS") else {
        return;
    };
    let entries = rootfs::cpio::read_archive(&std::fs::read(&path).unwrap()).unwrap();
    let find = |name: &str| entries.iter().find(|e| e.name == name);
    for name in [
        "init",
        "var/runtime/bootstrap",
        "var/task/worker.sh",
        "etc/lambda/function.json",
        "dev/console",
    ] {
        assert!(
            find(name).is_some(),
            "{name} missing from {}",
            path.display()
        );
    }
    for binary in ["init", "var/runtime/bootstrap"] {
        let entry = find(binary).unwrap();
        assert_eq!(entry.perm(), 0o755, "{binary}");
        let copy = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(copy.path(), &entry.data).unwrap();
        let verdict = rootfs::elf::check_static_executable(copy.path());
        assert!(verdict.is_ok(), "{binary}: {verdict:?}");
    }
    let config: proto::FunctionConfig =
        serde_json::from_slice(&find("etc/lambda/function.json").unwrap().data).unwrap();
    assert_eq!(config.handler, "worker.sh");
}
