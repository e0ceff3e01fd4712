//! The real guest kernel with a virtio-net device on a tap, on real `/dev/kvm`: its virtio_net
//! driver negotiates the device (MAC, checksum and segmentation offloads) and starts it; the
//! VM is snapshotted, and the snapshot restores in another network namespace, onto that
//! namespace's own tap of the same name, with the device started as the driver left it.
//!
//! Needs `GUEST_VMLINUX` and `GUEST_INITRAMFS` (`. /work/env.sh` or scripts/test.sh build them),
//! root (network namespaces, taps) and `ip` (iproute2).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC,
};
use vmm::config::{BootSource, MachineConfig, NetworkInterface, VmConfig};
use vmm::devices::virtio::mmio::status::{DRIVER_OK, FAILED};
use vmm::devices::virtio::mmio::TransportState;
use vmm::devices::virtio::VIRTIO_F_VERSION_1;
use vmm::host_caps::HostCaps;
use vmm::microvm::{DeviceSpec, Microvm};

const TAP: &str = "tap0";
const GUEST_MAC: &str = "06:00:ac:10:00:02";
/// A guest kernel boots in about 10 s here, longer while other builds share the CPUs.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The guest console, kept for the assertions.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn artifact(test: &str, variable: &str) -> Option<PathBuf> {
    match std::env::var_os(variable).map(PathBuf::from) {
        Some(path) if path.exists() => Some(path),
        _ => {
            let reason = format!("{variable} is not set or missing: `. /work/env.sh` builds it");
            integration_tests::skip(test, &reason);
            None
        }
    }
}

/// Runs `body` on a thread of its own in a new network namespace.
fn in_netns<T: Send + 'static>(test: &str, body: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let test = test.to_owned();
    let result = std::thread::spawn(move || {
        // SAFETY: unshare(2) takes flags only; CLONE_NEWNET moves this thread alone into a
        // new network namespace, which no Rust invariant depends on.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let why = std::io::Error::last_os_error();
            integration_tests::skip(&test, &format!("no network namespace ({why}); run as root"));
            return None;
        }
        Some(body())
    })
    .join();
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An environment's host side: a persistent tap, up, with no process attached yet.
fn host_side() {
    ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    ip(&["addr", "add", "172.16.0.1/30", "dev", TAP]);
    ip(&["link", "set", TAP, "up"]);
}

/// Whether a process has the tap open (the kernel turns its carrier on then).
fn tap_attached() -> bool {
    !ip(&["-o", "link", "show", TAP]).contains("NO-CARRIER")
}

fn net_transport(microvm: &Microvm) -> TransportState {
    let device = microvm
        .devices()
        .iter()
        .find(|d| matches!(d.spec, DeviceSpec::Net(_)))
        .expect("no network device");
    device.transport.lock().unwrap().state()
}

#[test]
fn the_guest_driver_starts_the_device_and_a_snapshot_restores_in_another_namespace() {
    let test = "the_guest_driver_starts_the_device_and_a_snapshot_restores_in_another_namespace";
    if !integration_tests::have_kvm(test) {
        return;
    }
    let (Some(kernel), Some(initrd)) = (
        artifact(test, "GUEST_VMLINUX"),
        artifact(test, "GUEST_INITRAMFS"),
    ) else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("net-snapshot");
    let _ = std::fs::remove_dir_all(&dir);
    let snapshot = dir.clone();
    let booted = in_netns(test, move || {
        host_side();
        assert!(!tap_attached());
        let mut config = VmConfig {
            boot_source: BootSource {
                kernel_image_path: kernel,
                initrd_path: Some(initrd),
                boot_args: None,
            },
            machine_config: MachineConfig::default(),
            drives: Vec::new(),
            vsock: None,
            entropy: None,
            serial: None,
            network_interfaces: vec![NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: TAP.into(),
                guest_mac: Some(GUEST_MAC.parse().unwrap()),
            }],
        };
        config.validate().unwrap();
        let template = &mut config.machine_config.cpu_template;
        *template = template.resolve(&HostCaps::detect());
        let console = Console::default();
        let mut microvm = vmm::builder::boot(&config, Box::new(console.clone())).unwrap();
        assert!(tap_attached(), "the VMM did not open {TAP}");
        assert!(microvm
            .cmdline()
            .contains("virtio_mmio.device=4K@0xd0000000:5"));

        // The guest's virtio_net driver probes the device during boot and sets DRIVER_OK.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let state = loop {
            let state = net_transport(&microvm);
            if state.device_status & DRIVER_OK != 0 {
                break state;
            }
            assert!(
                microvm.wait(Some(Duration::from_millis(20))).is_none(),
                "the VM stopped before the driver started the device:\n{}",
                console.text()
            );
            assert!(
                Instant::now() < deadline,
                "no DRIVER_OK after {BOOT_TIMEOUT:?}:\n{}",
                console.text()
            );
        };
        assert_eq!(state.device_status & FAILED, 0);
        let acked = state.acked_features;
        for bit in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
        ] {
            assert_ne!(acked & (1 << bit), 0, "driver did not accept feature {bit}");
        }
        assert_ne!(acked & VIRTIO_F_VERSION_1, 0);
        vmm::snapshot::create(&mut microvm, &snapshot).unwrap();
        microvm.stop();
        (state, console.text())
    });
    let Some((saved, console_before)) = booted else {
        return;
    };
    assert!(console_before.contains("Linux version"), "{console_before}");

    // Another environment: its own namespace and its own tap0. The restore opens that tap by
    // the saved name and starts the device again as the driver left it; the guest runs on.
    let restored = in_netns(test, move || {
        host_side();
        let console = Console::default();
        let options = vmm::snapshot::RestoreOptions::default();
        let microvm = vmm::snapshot::restore(&dir, Box::new(console.clone()), &options).unwrap();
        assert!(tap_attached(), "the restore did not open {TAP}");
        let state = net_transport(&microvm);
        let deadline = Instant::now() + BOOT_TIMEOUT;
        // The restored guest goes on with its boot where the snapshot cut it, up to init.
        while !console.text().contains("Run /init as init process") {
            assert!(
                microvm.wait(Some(Duration::from_millis(20))).is_none(),
                "the restored VM stopped:\n{}",
                console.text()
            );
            assert!(
                Instant::now() < deadline,
                "the restored guest did not reach init:\n{}",
                console.text()
            );
        }
        microvm.stop();
        (state, console.text())
    });
    let Some((state, console_after)) = restored else {
        return;
    };
    assert_eq!(state.device_status, saved.device_status);
    assert_eq!(state.acked_features, saved.acked_features);
    assert_eq!(state.queues, saved.queues);
    assert!(!console_before.contains("Run /init"), "{console_before}");
    assert!(console_after.contains("Run /init"), "{console_after}");
}
