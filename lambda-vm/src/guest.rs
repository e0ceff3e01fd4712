//! One function environment: a microVM in its own `vmm` process, and the host link its init
//! opened. Each environment has a directory of its own (vsock socket, VM configuration), removed
//! with it.

use crate::host_link::{HostLink, LinkError, Listener, PORT};
use crate::network::{EnvNetwork, NetworkError, Networks};
use crate::vmm_process::{VmmError, VmmExit, VmmProcess};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::builder::default_boot_args;
use vmm::config::{
    BootSource, CpuTemplate, Drive, Entropy, MachineConfig, Serial, VmConfig, Vsock,
};

/// The guest CID every function VM gets: each VM has its own vsock device and socket, so they
/// need not differ.
const GUEST_CID: u32 = 3;
/// How often the boot wait looks at the VM while waiting for the guest's connection.
const ACCEPT_SLICE: Duration = Duration::from_millis(200);
/// How long a restored guest's init may take to reconnect. It takes about 0.1 s even on
/// emulated KVM; a guest that has not reconnected long after that came from a bad snapshot.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `vmm` may take to write a snapshot (128 MiB of memory and a sync: well under a
/// second here) and exit.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a function's microVM boots.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The `vmm` binary each environment runs in.
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// The function's image (from `scripts/build-rootfs.sh`).
    pub rootfs: Rootfs,
    /// Kernel command line; `None` for the VMM's default plus what the image needs.
    pub boot_args: Option<String>,
    pub mem_size_mib: u32,
    /// Holds each environment's directory.
    pub work_dir: PathBuf,
    /// Where the guest consoles go (appended, all environments); `None` discards them.
    pub console: Option<PathBuf>,
    /// How long the guest may take to boot and connect.
    pub boot_timeout: Duration,
    /// How long the function's init may take in the guest (Lambda's 10 s by default).
    pub init_timeout: Duration,
    /// The CPU template, resolved for this host (`CpuTemplate::Auto.resolve`, once, at the top).
    pub cpu_template: CpuTemplate,
    /// Where each environment gets its own network from; `None`: the guest has no network
    /// device (the function has networking off, or the host cannot give it).
    pub network: Option<Arc<Networks>>,
}

impl GuestSpec {
    /// The kernel command line the VM boots with. With the timing log on, init is asked to time
    /// every invoke too (`INIT_TIMING=1`: the kernel hands `NAME=value` words it does not know
    /// to init as environment variables).
    pub fn boot_args(&self) -> String {
        let args = self.boot_args.clone().unwrap_or_else(|| {
            let defaults = default_boot_args(self.cpu_template);
            // Our images keep init at /init, where the kernel looks in an initramfs but not
            // on a root drive.
            match self.rootfs {
                Rootfs::Initramfs(_) => defaults,
                Rootfs::Ext4(_) => format!("{defaults} init=/init"),
            }
        });
        let mut args = args;
        if self.init_timeout != proto::function_config::INIT_TIMEOUT {
            args += &format!(" INIT_INIT_TIMEOUT_MS={}", self.init_timeout.as_millis());
        }
        if crate::host_link::timing_enabled() {
            args += " INIT_TIMING=1";
        }
        args
    }

    /// The Firecracker-style configuration of a VM whose vsock device is on `uds_path`.
    fn vm_config(&self, uds_path: PathBuf) -> VmConfig {
        let (initrd_path, drives) = match &self.rootfs {
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
        VmConfig {
            boot_source: BootSource {
                kernel_image_path: self.kernel.clone(),
                initrd_path,
                boot_args: Some(self.boot_args()),
            },
            machine_config: MachineConfig {
                mem_size_mib: self.mem_size_mib,
                cpu_template: self.cpu_template,
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
                serial_out_path: self.console.clone(),
            }),
            network_interfaces: self
                .network
                .iter()
                .map(|_| crate::network::guest_interface())
                .collect(),
        }
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
    #[error("starting the microVM")]
    Vmm(#[from] VmmError),
    #[error("host link")]
    Link(#[from] LinkError),
    #[error("the microVM stopped before its init connected: {0:?}")]
    Exited(VmmExit),
    #[error("the guest's init did not connect within {0:?}")]
    BootTimeout(Duration),
    #[error("the environment's network")]
    Network(#[from] NetworkError),
    #[error("creating the environment's directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An environment's own directory, removed when the environment goes.
struct EnvDir(PathBuf);

/// Makes each environment's directory unique within this service.
static ENVIRONMENTS: AtomicU64 = AtomicU64::new(0);

impl EnvDir {
    fn create(work_dir: &Path) -> Result<EnvDir, GuestError> {
        let n = ENVIRONMENTS.fetch_add(1, Ordering::Relaxed);
        let path = work_dir.join(format!("env-{n}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|source| GuestError::Dir {
            path: path.clone(),
            source,
        })?;
        Ok(EnvDir(path))
    }
}

impl Drop for EnvDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Guest {
    // Dropped in this order: the link closes, the vmm is killed and reaped, the directory goes,
    // the network goes (its namespace only once no vmm is in it).
    pub link: HostLink,
    pub vmm: VmmProcess,
    dir: EnvDir,
    network: Option<EnvNetwork>,
    /// The VMM's part of a restore, as the `vmm` measured it (load call to vCPUs running).
    pub vmm_time: Option<Duration>,
    /// From the start of the `vmm` to the guest's `Hello`.
    pub boot_time: Duration,
}

impl Guest {
    /// Boots a microVM in a new `vmm` and waits for its init to connect over vsock. With
    /// `snapshot_dir`, the VM can be snapshotted there ([`Guest::snapshot_after_init`]).
    pub fn boot(
        spec: &GuestSpec,
        snapshot_dir: Option<&Path>,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        Self::start(spec, spec.boot_timeout, log, |dir, uds_path, netns| {
            let config = spec.vm_config(uds_path.to_owned());
            let config_path = dir.join("vm.json");
            VmmProcess::boot(&spec.vmm, &config, &config_path, snapshot_dir, netns)
        })
    }

    /// Restores the snapshot in `snapshot` in a new `vmm`, waits for the guest's init to
    /// reconnect (the restored vsock device reset its connections), and sends it fresh entropy
    /// and the time, which lets the runtime's `restore/next` answer.
    pub fn restore(
        spec: &GuestSpec,
        snapshot: &Path,
        log: impl FnMut(&str) + Send + 'static,
    ) -> Result<Guest, GuestError> {
        let timeout = spec.boot_timeout.min(RESTORE_TIMEOUT);
        let console = spec.console.as_deref();
        let mut guest = Self::start(spec, timeout, log, |_, uds_path, netns| {
            VmmProcess::restore(&spec.vmm, snapshot, uds_path, console, netns)
        })?;
        guest.link.restore()?;
        guest.vmm_time = guest.vmm.restore_time();
        Ok(guest)
    }

    /// One way to start: a fresh environment directory and network, the host-link listener on
    /// its vsock socket (before the VM starts, so the guest's first connection finds it), the
    /// `vmm` that `launch` starts there (in the network's namespace), and the guest's
    /// connection within `timeout`.
    fn start(
        spec: &GuestSpec,
        timeout: Duration,
        log: impl FnMut(&str) + Send + 'static,
        launch: impl FnOnce(&Path, &Path, Option<&Path>) -> Result<VmmProcess, VmmError>,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let dir = EnvDir::create(&spec.work_dir)?;
        let network = spec.network.as_ref().map(|n| n.create()).transpose()?;
        let uds_path = dir.0.join("vsock.sock");
        let listener = Listener::bind(&uds_path, PORT)?;
        let netns = network.as_ref().map(EnvNetwork::netns);
        let mut vmm = launch(&dir.0, &uds_path, netns.as_deref())?;
        let mut link = wait_for_link(&listener, &mut vmm, started, timeout)?;
        link.on_log(log);
        Ok(Guest {
            link,
            vmm,
            dir,
            network,
            vmm_time: None,
            boot_time: started.elapsed(),
        })
    }

    /// SnapStart's first step: waits for the guest's init to finish (its runtime reached
    /// `restore/next`), then has the `vmm` pause the VM and write the snapshot to the directory
    /// it was booted with. The VM is done after that, as on Lambda: every environment is a
    /// restored copy.
    pub fn snapshot_after_init(mut self, init_timeout: Duration) -> Result<Duration, GuestError> {
        self.link.set_timeout(Some(init_timeout))?;
        let init_duration = self.link.wait_init_done()?;
        let Guest {
            link,
            vmm,
            dir,
            network,
            ..
        } = self;
        // The snapshot needs the guest's side of the connection as it is; the host's end goes
        // with this process's view of it once the VM is paused.
        let written = vmm.snapshot(SNAPSHOT_TIMEOUT);
        drop(link);
        drop(dir);
        drop(network);
        written?;
        Ok(init_duration)
    }

    /// Asks the guest to power off and waits up to `grace` for its `vmm` to exit; then the
    /// `vmm` is killed (if still running) and reaped, and the environment's directory removed.
    pub fn shutdown(self, grace: Duration) {
        let Guest {
            link,
            mut vmm,
            dir,
            network,
            ..
        } = self;
        if link.shutdown().is_ok() {
            vmm.exited(grace);
        }
        drop(vmm);
        drop(dir);
        drop(network);
    }
}

/// Accepts the guest's host-link connection, giving up when the VM stops or `timeout` passes.
fn wait_for_link(
    listener: &Listener,
    vmm: &mut VmmProcess,
    started: Instant,
    timeout: Duration,
) -> Result<HostLink, GuestError> {
    loop {
        match listener.accept_within(ACCEPT_SLICE, timeout) {
            Ok(link) => return Ok(link),
            Err(LinkError::AcceptTimeout(_)) => {
                if let Some(exit) = vmm.exited(Duration::ZERO) {
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
