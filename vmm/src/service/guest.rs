//! One function environment in a microVM: the booted VM and the host link its init opened.

use crate::builder::{self, default_boot_args, BuildError};
use crate::config::{
    BootSource, CpuTemplate, Drive, Entropy, MachineConfig, Serial, VmConfig, Vsock,
};
use crate::exit::VmExit;
use crate::host_link::{HostLink, LinkError, Listener, PORT};
use crate::microvm::Microvm;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The guest CID every function VM gets: each VM has its own vsock device and socket, so they
/// need not differ.
const GUEST_CID: u32 = 3;
/// How often the boot wait looks at the VM while waiting for the guest's connection.
const ACCEPT_SLICE: Duration = Duration::from_millis(200);

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
    #[error("booting the microVM: {0}")]
    Boot(#[from] BuildError),
    #[error("host link: {0}")]
    Link(#[from] LinkError),
    #[error("the microVM stopped before its init connected: {0:?}")]
    Exited(VmExit),
    #[error("the guest's init did not connect within {0:?}")]
    BootTimeout(Duration),
}

pub struct Guest {
    // The link first: dropping it closes the connection before the VM goes away.
    pub link: HostLink,
    pub microvm: Microvm,
    /// From VMM start to the guest's `Hello`.
    pub boot_time: Duration,
}

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
        // Our images keep init at /init, where the kernel looks in an initramfs but not on a
        // root drive.
        let boot_args = spec.boot_args.clone().unwrap_or_else(|| {
            let defaults = default_boot_args(CpuTemplate::Auto);
            match spec.rootfs {
                Rootfs::Initramfs(_) => defaults,
                Rootfs::Ext4(_) => format!("{defaults} init=/init"),
            }
        });
        let config = VmConfig {
            boot_source: BootSource {
                kernel_image_path: spec.kernel.clone(),
                initrd_path,
                boot_args: Some(boot_args),
            },
            machine_config: MachineConfig {
                mem_size_mib: spec.mem_size_mib,
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
        let console: Box<dyn std::io::Write + Send> = match &spec.console {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| BuildError::Open {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => Box::new(std::io::sink()),
        };
        let microvm = builder::boot(&config, console)?;
        let mut link = loop {
            match listener.accept_within(ACCEPT_SLICE, spec.boot_timeout) {
                Ok(link) => break link,
                Err(LinkError::AcceptTimeout(_)) => {
                    if let Some(exit) = microvm.wait(Some(Duration::ZERO)) {
                        return Err(GuestError::Exited(exit));
                    }
                    if started.elapsed() > spec.boot_timeout {
                        return Err(GuestError::BootTimeout(spec.boot_timeout));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        link.on_log(log);
        Ok(Guest {
            link,
            microvm,
            boot_time: started.elapsed(),
        })
    }
}
