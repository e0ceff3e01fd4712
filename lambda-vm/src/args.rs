//! `lambda-vm`'s command line: its flags, and every path in them made absolute once.

use anyhow::Context;
use clap::Parser;
use lambda_vm::network;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "lambda-vm",
    about = "Serve Lambda functions, each execution environment a microVM, through Lambda's invoke API"
)]
pub struct Args {
    /// The guest kernel (an uncompressed vmlinux, from scripts/build-kernel.sh).
    #[arg(long)]
    pub kernel: PathBuf,
    /// One function's image from scripts/build-rootfs.sh: an initramfs (`.cpio`), or an ext4
    /// image (`.ext4`, from --ext4) attached as a read-only root drive, which boots faster.
    #[arg(long, requires = "function_config", conflicts_with = "functions_dir")]
    pub rootfs: Option<PathBuf>,
    /// The function.json the image was built with: name, memory (the VM's size), timeout,
    /// concurrency.
    #[arg(long, requires = "rootfs")]
    pub function_config: Option<PathBuf>,
    /// Serve every function in DIR: one subdirectory each, holding its function.json and its
    /// image (one `.ext4` or `.cpio` file). A function is invoked by its function.json's
    /// `function_name`, whatever its directory is called.
    #[arg(long, value_name = "DIR", required_unless_present_any = ["rootfs", "cluster"])]
    pub functions_dir: Option<PathBuf>,
    /// Most environments in use (busy or starting) at once, over all functions; a request
    /// beyond it gets 429 TooManyRequestsException.
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Seconds an environment may idle before it is torn down (provisioned ones are kept).
    #[arg(long, default_value_t = 300.0)]
    pub idle_timeout: f64,
    /// Kernel command line [default: the VMM's, for the CPU template in use].
    #[arg(long)]
    pub boot_args: Option<String>,
    /// Address of the invoke endpoint (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// What is kept across runs: SnapStart snapshots (`snapshots/NAME/`), each function's
    /// accepted asynchronous events (`events/NAME/`) and, with --cluster, the images fetched
    /// from the cluster (`images/`) [default: /var/lib/lambda-vm for root,
    /// else $XDG_STATE_HOME/lambda-vm].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where this run's scratch directory (`lambda-vm-PID`: the environments' sockets and VM
    /// configurations) is made; it is removed at exit, and one a killed service left is
    /// removed by the next start [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Where SnapStart snapshots go [default: STATE_DIR/snapshots]; one subdirectory per
    /// function. Each snapshot is kept in a directory named by a hash of the kernel, image,
    /// function configuration, command line and snapshot format, and reused by later runs
    /// (and by other services on the same directory); a change to any of them takes a new one,
    /// and the old one is removed.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Write each function's log to DIR/NAME.log and each environment's console (kernel
    /// messages) to DIR/NAME.N.console (N: the environment's number in the log lines), besides
    /// the log on stdout.
    #[arg(long, value_name = "DIR", conflicts_with = "console")]
    pub log_dir: Option<PathBuf>,
    /// File every guest console (kernel messages) is appended to [default: discarded, or
    /// per environment with --log-dir].
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// Seconds the guest may take to boot and connect.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
    /// Seconds a function's init may take in its microVM (Lambda's 10 s by default; on an
    /// emulated KVM, where each process start in the guest costs seconds, a function with
    /// extensions may need more).
    #[arg(long, default_value_t = 10.0)]
    pub init_timeout: f64,
    /// Seconds busy environments get to finish their invocations after SIGTERM or SIGINT
    /// before they are ended; a second signal ends them at once.
    #[arg(long, default_value_t = 5.0)]
    pub stop_grace: f64,
    /// Keep one environment of each function ready from the start (provisioned concurrency
    /// of at least 1).
    #[arg(long)]
    pub eager: bool,
    /// How many `vmm` processes each SnapStart function keeps started, jailed and waiting (each
    /// with its own network), so that a new environment is a restore into one of them; at most
    /// as many as the host's available memory could run at once (half of it), and never more
    /// than --max-concurrency. 0 turns them off.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub ready_vmms: usize,
    /// How many environment networks (namespace, veth, tap, rules) are kept made ahead, for
    /// the next environments to start; 0 makes each when its environment starts.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub ready_networks: usize,
    /// Neither record nor load SnapStart working sets: by default the guest pages the first
    /// invoke after a restore touches are kept beside the snapshot (`memory.ws`) and loaded
    /// by later restores before the guest runs; with this flag every restore loads guest
    /// memory lazily, page by page (for comparisons).
    #[arg(long)]
    pub no_working_set: bool,
    /// The `vmm` binary [default: the one beside this program].
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// The KVM device checked at start (the `vmm` opens /dev/kvm).
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm_device: PathBuf,
    /// Directory for on-failure destination records of failed asynchronous invokes.
    #[arg(long)]
    pub on_failure_dir: Option<PathBuf>,
    #[command(flatten)]
    pub endpoint: front_door::EndpointFlags,
    /// The IPv4 range each environment's host link (a /30) is cut from: the host side of
    /// the link is the one host address a function reaches, and the function's traffic leaves
    /// the host translated from the environment's side.
    #[arg(long, default_value = network::DEFAULT_RANGE)]
    pub network_range: network::Subnet,
    /// Give no function networking, whatever its function.json says.
    #[arg(long)]
    pub no_network: bool,
    /// Start each `vmm` unjailed (for debugging): no namespaces, no private root, no user of
    /// its own, no cgroups. Its seccomp filters stay on.
    #[arg(long)]
    pub no_jail: bool,
    /// Start each `vmm` with its seccomp filters off (for debugging and measuring).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Log level of the VMM's own messages on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", env = "VMM_LOG")]
    pub log_level: log::LevelFilter,
    /// Join a cluster (see the cluster crate): serve every function deployed there with an
    /// ext4 or cpio image, instead of --functions-dir or --rootfs.
    #[command(flatten)]
    pub cluster: cluster::ClusterArgs,
    /// With --cluster: this host's id in the registry [default: the host name and a suffix].
    #[arg(long, requires = "cluster")]
    pub host_id: Option<String>,
}

/// Makes every path the user gave absolute, once, here: each `vmm` runs in a jail with another
/// root and working directory, and every path handed to it must mean the same there. Files
/// that must exist are resolved to their real path (a missing one is named now); directories
/// the service writes are made first.
pub fn resolve_paths(args: &mut Args) -> anyhow::Result<()> {
    let existing = |flag: &str, path: &mut PathBuf| -> anyhow::Result<()> {
        *path =
            std::fs::canonicalize(&*path).with_context(|| format!("{flag} {}", path.display()))?;
        Ok(())
    };
    existing("--kernel", &mut args.kernel)?;
    if let Some(path) = &mut args.function_config {
        existing("--function-config", path)?;
    }
    if let Some(path) = &mut args.functions_dir {
        existing("--functions-dir", path)?;
    }
    if let Some(path) = &mut args.vmm {
        existing("--vmm", path)?;
    }
    args.kvm_device = std::path::absolute(&args.kvm_device)
        .with_context(|| format!("--kvm-device {}", args.kvm_device.display()))?;
    // An image keeps the name it was given (its extension says what kind it is), made absolute.
    if let Some(path) = &mut args.rootfs {
        *path =
            std::path::absolute(&*path).with_context(|| format!("--rootfs {}", path.display()))?;
    }
    let directory = |flag: &str, path: &mut PathBuf| -> anyhow::Result<()> {
        std::fs::create_dir_all(&*path)
            .and_then(|()| std::fs::canonicalize(&*path))
            .map(|real| *path = real)
            .with_context(|| format!("{flag} {}", path.display()))
    };
    for (flag, path) in [
        ("--work-dir", &mut args.work_dir),
        ("--state-dir", &mut args.state_dir),
        ("--snapshot-dir", &mut args.snapshot_dir),
        ("--log-dir", &mut args.log_dir),
        ("--on-failure-dir", &mut args.on_failure_dir),
    ] {
        if let Some(path) = path {
            directory(flag, path)?;
        }
    }
    if let Some(console) = &mut args.console {
        let name = console
            .file_name()
            .map(ToOwned::to_owned)
            .with_context(|| format!("--console {}: not a file name", console.display()))?;
        let mut parent = console
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        directory("--console", &mut parent)?;
        *console = parent.join(name);
    }
    Ok(())
}
