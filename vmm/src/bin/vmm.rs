//! `vmm`: boots one microVM from flags or a Firecracker-style `--config-file`, or restores one
//! from a snapshot, and runs it until the guest stops. The exit code says how it ended: 0 guest
//! shutdown (i8042 reset) or snapshot taken, 1 VMM error (bad configuration or snapshot
//! included), 2 usage error, 3 guest crash. Every thread runs under its seccomp filter
//! (`--no-seccomp` turns them off), and the `--jail-*` flags, which the function service
//! passes, confine the process first (vmm/README.md, "Seccomp and the jail").

use anyhow::Context;
use clap::Parser;
use logging::Chain;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vmm::config::{self, VmFlags};
use vmm::exit::VmExit;
use vmm::host_caps::HostCaps;
use vmm::jail::JailFlags;
use vmm::microvm::Microvm;
use vmm::seccomp::ThreadKind;
use vmm_sys_util::signal::register_signal_handler;

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Boot a KVM microVM, or restore one from a snapshot"
)]
struct Args {
    #[command(flatten)]
    vm: VmFlags,
    #[command(flatten)]
    jail: JailFlags,
    /// Restore the snapshot in DIR (its `state` and `memory` files) instead of booting; only
    /// --serial-out and --vsock-uds (a new host socket for the vsock device) apply then.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config_file", "kernel", "initrd", "boot_args", "vcpus", "mem_mib", "cpu_template", "drives", "entropy", "nets"])]
    restore_from: Option<PathBuf>,
    /// On SIGUSR1, pause the VM, write a snapshot to DIR, and exit 0.
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Validate the configuration, print what it resolves to, and exit without booting.
    #[arg(long)]
    dry_run: bool,
    /// Run without the seccomp filters (for debugging: a system call outside a thread's list
    /// otherwise kills the process with SIGSYS).
    #[arg(long)]
    no_seccomp: bool,
    /// Log level of the VMM's own messages on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", env = "VMM_LOG")]
    log_level: log::LevelFilter,
}

/// Set by SIGUSR1.
static SNAPSHOT_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_snapshot_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SNAPSHOT_REQUESTED.store(true, Ordering::Release);
}

fn main() {
    let args = Args::parse();
    logging::init("vmm", args.log_level);
    // Looked at before the jail, which hides /sys.
    let caps = HostCaps::detect();
    let exit = match args.jail.enter() {
        Ok(()) => run(&args, &caps),
        Err(e) => VmExit::VmmError(Chain(&e).to_string()),
    };
    match &exit {
        VmExit::Shutdown => {}
        VmExit::VmmError(why) => eprintln!("vmm: error: {why}"),
        VmExit::GuestCrash(why) => eprintln!("vmm: guest crashed: {why}"),
    }
    std::process::exit(exit.code());
}

fn run(args: &Args, caps: &HostCaps) -> VmExit {
    // Compiled before anything is built, so a bad filter stops us before a guest exists; the
    // threads install theirs as they start.
    if !args.no_seccomp {
        match vmm::seccomp::Filters::compile() {
            Ok(filters) => vmm::seccomp::enable(filters),
            Err(e) => return VmExit::VmmError(Chain(&e).to_string()),
        }
    }
    let microvm = match start(args, caps) {
        Ok(Some(microvm)) => microvm,
        Ok(None) => return VmExit::Shutdown,
        Err(why) => return VmExit::VmmError(Chain(why.as_ref()).to_string()),
    };
    log::info!("kernel command line: {}", microvm.cmdline());
    if let Some(dir) = &args.snapshot_dir {
        if let Err(e) = register_signal_handler(libc::SIGUSR1, on_snapshot_signal)
            .context("installing the SIGUSR1 handler")
        {
            return VmExit::VmmError(Chain(e.as_ref()).to_string());
        }
        if let Err(e) = vmm::seccomp::install(ThreadKind::Main) {
            return VmExit::VmmError(Chain(&e).to_string());
        }
        loop {
            if let Some(exit) = microvm.wait(Some(Duration::from_millis(10))) {
                microvm.stop();
                return exit;
            }
            if SNAPSHOT_REQUESTED.load(Ordering::Acquire) {
                return snapshot(microvm, dir);
            }
        }
    }
    if let Err(e) = vmm::seccomp::install(ThreadKind::Main) {
        return VmExit::VmmError(Chain(&e).to_string());
    }
    let exit = microvm.wait(None).unwrap_or(VmExit::Shutdown);
    microvm.stop();
    exit
}

fn snapshot(mut microvm: Microvm, dir: &Path) -> VmExit {
    let started = std::time::Instant::now();
    match vmm::snapshot::create(&mut microvm, dir) {
        Ok(()) => {
            eprintln!(
                "vmm: snapshot written to {} in {:.1} ms",
                dir.display(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            microvm.stop();
            VmExit::Shutdown
        }
        Err(e) => VmExit::VmmError(format!("snapshot: {}", Chain(&e))),
    }
}

/// The running VM, booted or restored; `None` for a dry run.
fn start(args: &Args, caps: &HostCaps) -> anyhow::Result<Option<Microvm>> {
    let serial_out = |path: Option<&PathBuf>| -> anyhow::Result<Box<dyn Write + Send>> {
        match path {
            // Appended to, so several VMs (a function's environments) can share one console
            // file, and a restored VM's output follows its original's.
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| Box::new(f) as Box<dyn Write + Send>)
                .with_context(|| format!("serial.serial_out_path {}", path.display())),
            None => Ok(Box::new(std::io::stdout())),
        }
    };
    if let Some(dir) = &args.restore_from {
        let console = serial_out(args.vm.serial_out.as_ref())?;
        let started = std::time::Instant::now();
        let options = vmm::snapshot::RestoreOptions {
            vsock_uds: args.vm.vsock_uds.clone(),
        };
        let microvm = vmm::snapshot::restore(dir, console, &options)
            .with_context(|| format!("restoring {}", dir.display()))?;
        log::info!(
            "restored in {:.2} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        return Ok(Some(microvm));
    }
    let config = config::load(&args.vm, caps).context("configuration")?;
    if args.dry_run {
        println!("{config:#?}");
        return Ok(None);
    }
    let path = config
        .serial
        .as_ref()
        .and_then(|s| s.serial_out_path.as_ref());
    let console = serial_out(path)?;
    let microvm = vmm::builder::boot(&config, console)?;
    Ok(Some(microvm))
}
