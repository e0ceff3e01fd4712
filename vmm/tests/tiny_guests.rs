//! Device-level tests on real `/dev/kvm`: tiny hand-assembled guests (vmm/tests/guests/*.S)
//! boot in milliseconds even on emulated KVM, talk to the VMM's devices through port and MMIO
//! exits, and report what they see on the serial console.

mod common;

use common::{guest, stdout, vmm};
use integration_tests::require_kvm;
use std::path::Path;

#[test]
fn boot_protocol_state_serial_and_i8042_reset() {
    require_kvm!();
    let kernel = guest("boot_params");
    let initrd = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-initrd");
    std::fs::write(&initrd, vec![0x5a; 5000]).unwrap();
    let output = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem-mib",
        "64",
        "--boot-args",
        "console=ttyS0 tiny=1",
    ]);
    let console = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{console}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        console.starts_with("tiny guest: boot params\n"),
        "{console}"
    );
    assert!(!console.contains("BAD"), "{console}");
    assert!(
        console.contains("e820 entries 0000000000000002\n"),
        "{console}"
    );
    assert!(
        console.contains("ram start 0000000000100000\n"),
        "{console}"
    );
    assert!(console.contains("ram end 0000000004000000\n"), "{console}");
    // The initrd sits page-aligned at the top of RAM: 5000 bytes take two pages.
    assert!(
        console.contains("initrd at 0000000003ffe000\n"),
        "{console}"
    );
    assert!(console.contains("mp table found\n"), "{console}");
    assert!(
        console.contains("cmdline: console=ttyS0 tiny=1\n"),
        "{console}"
    );
    assert!(
        console.contains("unclaimed port reads 00000000000000ff\n"),
        "{console}"
    );
}

#[test]
fn virtio_mmio_registers_and_command_line_entries() {
    require_kvm!();
    let kernel = guest("mmio");
    let output = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--boot-args",
        "x",
        "--entropy",
    ]);
    let console = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{console}");
    assert_eq!(
        console,
        "magic 0000000074726976\nversion 0000000000000002\ndevice 0000000000000004\n\
         queue 0 max 0000000000000100\n"
    );

    // Each virtio device is declared on the command line, in attach order.
    let boot_params = guest("boot_params");
    let disk = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-disk");
    std::fs::write(&disk, vec![0; 4096]).unwrap();
    let uds = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-vsock.sock");
    let drive = format!("path={},ro", disk.display());
    let output = vmm(&[
        "--kernel",
        boot_params.to_str().unwrap(),
        "--boot-args",
        "console=ttyS0",
        "--drive",
        &drive,
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--entropy",
    ]);
    let console = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{console}");
    assert!(
        console.contains(
            "cmdline: console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7\n"
        ),
        "{console}"
    );
}

#[test]
fn triple_fault_is_a_guest_crash() {
    require_kvm!();
    let kernel = guest("triple_fault");
    let output = vmm(&["--kernel", kernel.to_str().unwrap(), "--boot-args", "x"]);
    assert_eq!(stdout(&output), "tiny guest: about to fault\n");
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("guest crashed"), "{stderr}");
}

#[test]
fn bad_configuration_is_a_vmm_error_naming_the_key() {
    // No KVM needed: the configuration is refused before any VM exists.
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-config.json");
    std::fs::write(
        &file,
        r#"{"boot-source": {"kernel_image_path": "/no/such/vmlinux"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}}"#,
    )
    .unwrap();
    let output = vmm(&["--config-file", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`machine-config.huge_pages`: unknown field"),
        "{stderr}"
    );
    let output = vmm(&["--kernel", "/no/such/vmlinux", "--vcpus", "64"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`boot-source.kernel_image_path`"),
        "{stderr}"
    );
}
