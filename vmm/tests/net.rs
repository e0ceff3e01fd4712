//! The real guest kernel with a virtio-net device on a tap, on real `/dev/kvm`:
//!
//! - its virtio_net driver negotiates the device (MAC, checksum and segmentation offloads) and
//!   starts it; the VM is snapshotted, and the snapshot restores in another network namespace,
//!   onto that namespace's own tap of the same name, with the device started as the driver
//!   left it;
//! - a guest whose init (`guests/net_probe.c`) brings eth0 up exchanges UDP datagrams and
//!   256 KiB each way over TCP with the host side of its tap.
//!
//! Needs `GUEST_VMLINUX` and `GUEST_INITRAMFS` (scripts/test.sh builds them),
//! root (network namespaces, taps), `ip` (iproute2) and gcc with a static libc.

use integration_tests::{guest_artifact, ok_or_skip, require_kvm};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
};
use vmm::config::{BootSource, MachineConfig, NetworkInterface, VmConfig};
use vmm::devices::virtio::mmio::status::{DRIVER_OK, FAILED};
use vmm::devices::virtio::mmio::TransportState;
use vmm::devices::virtio::VIRTIO_F_VERSION_1;
use vmm::host_caps::HostCaps;
use vmm::microvm::{DeviceSpec, Microvm};
use vmm::persist::Persist;

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

/// Runs `body` on a thread of its own in a new network namespace; `Err` says why there is none.
fn in_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let result = std::thread::spawn(move || {
        // SAFETY: unshare(2) takes flags only; CLONE_NEWNET moves this thread alone into a
        // new network namespace, which no Rust invariant depends on.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let why = std::io::Error::last_os_error();
            return Err(format!("no network namespace ({why}); run as root"));
        }
        Ok(body())
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
    let transport = device.transport.lock().unwrap();
    let device = transport.device().clone();
    let Ok(state) = transport.save(&*device.lock().unwrap());
    state
}

#[test]
fn the_guest_driver_starts_the_device_and_a_snapshot_restores_in_another_namespace() {
    require_kvm!();
    let (Some(kernel), Some(initrd)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_INITRAMFS"),
    ) else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("net-snapshot");
    let _ = std::fs::remove_dir_all(&dir);
    let snapshot = dir.clone();
    let booted = in_netns(move || {
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
            VIRTIO_NET_F_MRG_RXBUF,
        ] {
            assert_ne!(acked & (1 << bit), 0, "driver did not accept feature {bit}");
        }
        assert_ne!(acked & VIRTIO_F_VERSION_1, 0);
        vmm::snapshot::create(&mut microvm, &snapshot).unwrap();
        microvm.stop();
        (state, console.text())
    });
    let (saved, console_before) = ok_or_skip!(booted);
    assert!(console_before.contains("Linux version"), "{console_before}");

    // Another environment: its own namespace and its own tap0. The restore opens that tap by
    // the saved name and starts the device again as the driver left it; the guest runs on.
    let restored = in_netns(move || {
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
    let (state, console_after) = ok_or_skip!(restored);
    assert_eq!(state.device_status, saved.device_status);
    assert_eq!(state.acked_features, saved.acked_features);
    assert_eq!(state.queues, saved.queues);
    assert!(!console_before.contains("Run /init"), "{console_before}");
    assert!(console_after.contains("Run /init"), "{console_after}");
}

/// Compiles `guests/net_probe.c` into a static binary and packs it as `/init` of an
/// uncompressed newc initramfs, with `/dev/console` so that its output reaches the console.
fn net_probe_initramfs() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("net-probe");
    std::fs::create_dir_all(&out).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/net_probe.c");
    let binary = out.join("init");
    let output = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("gcc: {e} (install gcc and libc6-dev: scripts/test.sh does)"));
    assert!(
        output.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut cpio = Vec::new();
    cpio_entry(&mut cpio, "dev", 0o040_755, 0, &[]);
    // A character device, 5:1.
    cpio_entry(&mut cpio, "dev/console", 0o020_600, (5 << 8) | 1, &[]);
    cpio_entry(
        &mut cpio,
        "init",
        0o100_755,
        0,
        &std::fs::read(&binary).unwrap(),
    );
    cpio_entry(&mut cpio, "TRAILER!!!", 0, 0, &[]);
    let path = out.join("net-probe.cpio");
    std::fs::write(&path, cpio).unwrap();
    path
}

/// One newc entry; `rdev` is major << 8 | minor.
fn cpio_entry(cpio: &mut Vec<u8>, name: &str, mode: u32, rdev: u32, data: &[u8]) {
    let pad = |cpio: &mut Vec<u8>| cpio.resize(cpio.len().next_multiple_of(4), 0);
    let size = u32::try_from(data.len()).unwrap();
    let name_size = u32::try_from(name.len() + 1).unwrap();
    let fields = [
        1,
        mode,
        0,
        0,
        1,
        0,
        size,
        0,
        0,
        rdev >> 8,
        rdev & 0xff,
        name_size,
        0,
    ];
    cpio.extend_from_slice(b"070701");
    for field in fields {
        cpio.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    cpio.extend_from_slice(name.as_bytes());
    cpio.push(0);
    pad(cpio);
    cpio.extend_from_slice(data);
    pad(cpio);
}

/// The host side of the probe's UDP exchange: answers its hello and echoes its pings until
/// it says "done"; returns how many pings it echoed.
fn udp_peer(socket: UdpSocket) -> usize {
    let mut buf = [0u8; 256];
    let mut pings = 0;
    loop {
        let (n, from): (usize, SocketAddr) =
            socket.recv_from(&mut buf).expect("udp from the guest");
        match &buf[..n] {
            b"hello from the guest" => {
                socket.send_to(b"hello from the host", from).unwrap();
            }
            b"ping" => {
                pings += 1;
                socket.send_to(b"pong", from).unwrap();
            }
            b"done" => return pings,
            other => panic!("unexpected datagram {other:?}"),
        }
    }
}

/// The host side of the probe's TCP exchange: accepts a connection that the guest closes at
/// once, then on a second one reads everything the guest sends (checking its
/// pattern), then sends as much back; returns the byte count.
fn tcp_peer(listener: TcpListener) -> usize {
    // The first connection only measures connect().
    let (mut first, _) = listener.accept().expect("tcp from the guest");
    first.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
    assert_eq!(first.read(&mut [0u8; 16]).unwrap(), 0);
    let (mut stream, _) = listener.accept().expect("tcp from the guest");
    stream.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
    let mut received = Vec::new();
    stream.read_to_end(&mut received).unwrap();
    for (i, byte) in received.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation)]
        let expected = (i * 7) as u8;
        assert_eq!(*byte, expected, "byte {i} from the guest");
    }
    #[allow(clippy::cast_possible_truncation)]
    let reply: Vec<u8> = (0..received.len()).map(|i| (i * 13) as u8).collect();
    stream.write_all(&reply).unwrap();
    received.len()
}

#[test]
fn a_guest_talks_udp_and_tcp_with_the_host_side_of_its_tap() {
    require_kvm!();
    let Some(kernel) = guest_artifact("GUEST_VMLINUX") else {
        return;
    };
    let initrd = net_probe_initramfs();
    let result = in_netns(move || {
        host_side();
        let udp = UdpSocket::bind("172.16.0.1:5000").unwrap();
        udp.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
        let tcp = TcpListener::bind("172.16.0.1:5001").unwrap();
        let udp_peer = std::thread::spawn(move || udp_peer(udp));
        let tcp_peer = std::thread::spawn(move || tcp_peer(tcp));
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
        let template = &mut config.machine_config.cpu_template;
        *template = template.resolve(&HostCaps::detect());
        let console = Console::default();
        let microvm = vmm::builder::boot(&config, Box::new(console.clone())).unwrap();
        let exit = microvm.wait(Some(BOOT_TIMEOUT));
        microvm.stop();
        let console = console.text();
        assert!(exit.is_some(), "the guest did not finish:\n{console}");
        assert!(console.contains("NET-PROBE DONE"), "{console}");
        let pings = udp_peer.join().unwrap();
        let bytes = tcp_peer.join().unwrap();
        (console, pings, bytes)
    });
    let (console, pings, bytes) = ok_or_skip!(result);
    assert!(
        console.contains(&format!("eth0 mac {GUEST_MAC}")),
        "{console}"
    );
    assert!(console.contains("udp got hello from the host"), "{console}");
    assert_eq!(pings, 10);
    assert_eq!(bytes, 256 * 1024);
    assert!(
        console.contains("tcp 262144 bytes up and 262144 back"),
        "{console}"
    );
    // The numbers, for BENCHMARKS.md (measured by the guest, under emulation here).
    for line in console
        .lines()
        .filter(|l| l.starts_with("udp ") || l.starts_with("tcp "))
    {
        eprintln!("net probe: {line}");
    }
}
