//! One function environment in a microVM: the booted VM and the host link its init opened.

use crate::host_link::{HostLink, LinkError, Listener, PORT};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmm::builder::{self, default_boot_args, BuildError};
use vmm::config::{
    BootSource, CpuTemplate, Drive, Entropy, MachineConfig, Serial, VmConfig, Vsock,
};
use vmm::exit::VmExit;
use vmm::microvm::Microvm;
use vmm::snapshot::{self, RestoreOptions, SnapshotError};

/// The guest CID every function VM gets: each VM has its own vsock device and socket, so they
/// need not differ.
const GUEST_CID: u32 = 3;
/// How often the boot wait looks at the VM while waiting for the guest's connection.
const ACCEPT_SLICE: Duration = Duration::from_millis(200);
/// How long a restored guest's init may take to reconnect. It takes about 0.1 s even on
/// emulated KVM; a guest that has not reconnected long after that came from a bad snapshot.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a function's microVM boots.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub kernel: PathBuf,
    /// The function's image (from `scripts/build-rootfs.sh`).
    pub rootfs: Rootfs,
    /// Kernel command line; `None` for the VMM's default plus what the image needs.
    pub boot_args: Option<String>,
    pub mem_size_mib: u32,
    /// Holds the vsock sockets. One guest at a time uses it.
    pub work_dir: PathBuf,
    /// Where the guest console goes; `None` discards it.
    pub console: Option<PathBuf>,
    /// How long the guest may take to boot and connect.
    pub boot_timeout: Duration,
    /// The CPU template, resolved for this host (`CpuTemplate::Auto.resolve`, once, at the top).
    pub cpu_template: CpuTemplate,
}

impl GuestSpec {
    /// The kernel command line the VM boots with.
    pub fn boot_args(&self) -> String {
        self.boot_args.clone().unwrap_or_else(|| {
            let defaults = default_boot_args(self.cpu_template);
            // Our images keep init at /init, where the kernel looks in an initramfs but not
            // on a root drive.
            match self.rootfs {
                Rootfs::Initramfs(_) => defaults,
                Rootfs::Ext4(_) => format!("{defaults} init=/init"),
            }
        })
    }
}

/// A function image: an initramfs, or an ext4 image attached as a read-only root drive. The
/// drive boots faster: the kernel reads only the blocks it needs, through the host, instead of
/// unpacking a whole archive with (on emulated KVM, slow) guest code.
#[derive(Debug, Clone)]
pub enum Rootfs {
    Initramfs(PathBuf),
    Ext4(PathBuf),
}

impl Rootfs {
    pub fn path(&self) -> &Path {
        match self {
            Rootfs::Initramfs(path) | Rootfs::Ext4(path) => path,
        }
    }

    /// By extension: `.ext4` is a drive, anything else an initramfs.
    pub fn from_path(path: PathBuf) -> Rootfs {
        if path.extension().is_some_and(|e| e == "ext4") {
            Rootfs::Ext4(path)
        } else {
            Rootfs::Initramfs(path)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("booting the microVM")]
    Boot(#[from] BuildError),
    #[error("host link")]
    Link(#[from] LinkError),
    #[error("the microVM stopped before its init connected: {0:?}")]
    Exited(VmExit),
    #[error("the guest's init did not connect within {0:?}")]
    BootTimeout(Duration),
    #[error("restoring the snapshot")]
    Snapshot(#[from] SnapshotError),
    #[error("opening the console {}", path.display())]
    Console {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Guest {
    // The link first: dropping it closes the connection before the VM goes away.
    pub link: HostLink,
    pub microvm: Microvm,
    /// The VMM's part of the start: from the call to boot or restore to the vCPUs running.
    pub vmm_time: Duration,
    /// From VMM start (or restore) to the guest's `Hello`.
    pub boot_time: Duration,
}

/// Each restore gets its own vsock socket, so restores never collide.
static RESTORES: AtomicU64 = AtomicU64::new(0);

impl Guest {
    /// Boots a microVM and waits for its init to connect over vsock.
    pub fn boot(
        spec: &GuestSpec,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let uds_path = spec.work_dir.join("vsock.sock");
        // Listen before booting, so the guest's first connection attempt finds the socket.
        let listener = Listener::bind(&uds_path, PORT)?;
        let (initrd_path, drives) = match &spec.rootfs {
            Rootfs::Initramfs(path) => (Some(path.clone()), Vec::new()),
            Rootfs::Ext4(path) => (
                None,
                vec![Drive {
                    drive_id: "rootfs".into(),
                    path_on_host: path.clone(),
                    is_root_device: true,
                    is_read_only: true,
                }],
            ),
        };
        let config = VmConfig {
            boot_source: BootSource {
                kernel_image_path: spec.kernel.clone(),
                initrd_path,
                boot_args: Some(spec.boot_args()),
            },
            machine_config: MachineConfig {
                mem_size_mib: spec.mem_size_mib,
                cpu_template: spec.cpu_template,
                ..MachineConfig::default()
            },
            drives,
            vsock: Some(Vsock {
                guest_cid: GUEST_CID,
                uds_path,
                vsock_id: None,
            }),
            // Without it the guest's getrandom(2) blocks until the kernel has gathered
            // entropy on its own, which under emulated KVM took minutes: the runtime's first
            // spawn (a random log stream name) waited on it.
            entropy: Some(Entropy {}),
            serial: Some(Serial {
                serial_out_path: spec.console.clone(),
            }),
        };
        let console = console(spec)?;
        let vmm_started = Instant::now();
        let microvm = builder::boot(&config, console)?;
        let vmm_time = vmm_started.elapsed();
        let mut link = wait_for_link(&listener, &microvm, started, spec.boot_timeout)?;
        link.on_log(log);
        Ok(Guest {
            link,
            microvm,
            vmm_time,
            boot_time: started.elapsed(),
        })
    }

    /// Restores the snapshot in `dir`, waits for the guest's init to reconnect (the restored
    /// vsock device reset its connections), and sends it fresh entropy and the time, which
    /// lets the runtime's `restore/next` answer.
    pub fn restore(
        spec: &GuestSpec,
        dir: &Path,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let n = RESTORES.fetch_add(1, Ordering::Relaxed);
        let uds_path = spec.work_dir.join(format!("vsock-restore{n}.sock"));
        let listener = Listener::bind(&uds_path, PORT)?;
        let options = RestoreOptions {
            vsock_uds: Some(uds_path),
        };
        let console = console(spec)?;
        let vmm_started = Instant::now();
        let microvm = snapshot::restore(dir, console, &options)?;
        let vmm_time = vmm_started.elapsed();
        let timeout = spec.boot_timeout.min(RESTORE_TIMEOUT);
        let mut link = wait_for_link(&listener, &microvm, started, timeout)?;
        link.on_log(log);
        link.restore()?;
        Ok(Guest {
            link,
            microvm,
            vmm_time,
            boot_time: started.elapsed(),
        })
    }

    /// SnapStart's first step: waits for the guest's init to finish (its runtime reached
    /// `restore/next`), then pauses the VM and writes the snapshot to `dir`. The VM is done
    /// after that, as on Lambda: every environment is a restored copy.
    pub fn snapshot_after_init(
        mut self,
        dir: &Path,
        init_timeout: Duration,
    ) -> Result<Duration, GuestError> {
        self.link.set_timeout(Some(init_timeout))?;
        let init_duration = self.link.wait_init_done()?;
        snapshot::create(&mut self.microvm, dir)?;
        Ok(init_duration)
    }
}

fn console(spec: &GuestSpec) -> Result<Box<dyn std::io::Write + Send>, GuestError> {
    Ok(match &spec.console {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| GuestError::Console {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => Box::new(std::io::sink()),
    })
}

/// Accepts the guest's host-link connection, giving up when the VM stops or `timeout` passes.
fn wait_for_link(
    listener: &Listener,
    microvm: &Microvm,
    started: Instant,
    timeout: Duration,
) -> Result<HostLink, GuestError> {
    loop {
        match listener.accept_within(ACCEPT_SLICE, timeout) {
            Ok(link) => return Ok(link),
            Err(LinkError::AcceptTimeout(_)) => {
                if let Some(exit) = microvm.wait(Some(Duration::ZERO)) {
                    return Err(GuestError::Exited(exit));
                }
                if started.elapsed() > timeout {
                    return Err(GuestError::BootTimeout(timeout));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
