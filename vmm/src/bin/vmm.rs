//! `vmm`: boots one microVM from flags or a Firecracker-style `--config-file`, or restores one
//! from a snapshot, and runs it until the guest stops; with `--api-sock`, serves Firecracker's
//! API on that socket (after applying any configuration flags, as Firecracker does with
//! `--config-file`). The exit code says how it ended: 0 guest shutdown (i8042 reset) or
//! snapshot taken, 1 VMM error (bad configuration or snapshot included), 2 usage error, 3
//! guest crash. Every thread runs under its seccomp filter
//! (`--no-seccomp` turns them off), and the `--jail-*` flags, which the function service
//! passes, confine the process first (vmm/README.md, "Seccomp and the jail").

use anyhow::Context;
use clap::Parser;
use logging::Chain;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vmm::api::controller::{Controller, ControllerOptions, StartedFrom};
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
    #[arg(long, value_name = "DIR", conflicts_with = "api_sock")]
    snapshot_dir: Option<PathBuf>,
    /// Validate the configuration, print what it resolves to, and exit without booting.
    #[arg(long, conflicts_with = "api_sock")]
    dry_run: bool,
    /// Serve Firecracker's HTTP API on this Unix socket (created 0600; a stale socket there
    /// is replaced, any other file is not). Without a configuration the VM waits for
    /// `InstanceStart` or `PUT /snapshot/load`.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// The instance ID `GET /` reports.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// With --api-sock: when the guest stops, keep serving (`GET /ext/status` says why it
    /// stopped) instead of exiting; the client ends the process.
    #[arg(long, requires = "api_sock")]
    serve_after_stop: bool,
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
    let mut args = Args::parse();
    logging::init("vmm", args.log_level);
    // Relative paths are taken from where the vmm was started, resolved now: the jail moves
    // the process to another root.
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => {
            eprintln!("vmm: error: cannot read the current directory: {e}");
            std::process::exit(1);
        }
    };
    args.make_paths_absolute(&cwd);
    // Looked at before the jail, which hides /sys.
    let caps = HostCaps::detect();
    // The working set of a restored VM is read from the page map, and the jail has no /proc.
    let open_pagemap = || match std::fs::File::open("/proc/self/pagemap") {
        Ok(file) => Some(file),
        Err(e) => {
            log::warn!("cannot open /proc/self/pagemap ({e}): GET /ext/working-set is refused");
            None
        }
    };
    let exit = match args.jail.enter(open_pagemap) {
        Ok(pagemap) => run(&args, &caps, &cwd, pagemap),
        Err(e) => VmExit::VmmError(Chain(&e).to_string()),
    };
    match &exit {
        VmExit::Shutdown => {}
        VmExit::VmmError(why) => eprintln!("vmm: error: {why}"),
        VmExit::GuestCrash(why) => eprintln!("vmm: guest crashed: {why}"),
    }
    std::process::exit(exit.code());
}

impl Args {
    /// Every path flag made absolute against `cwd` (paths inside a `--config-file` are made
    /// absolute when it is loaded, [`config::load`]).
    fn make_paths_absolute(&mut self, cwd: &Path) {
        let absolute = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = cwd.join(&*path);
            }
        };
        let jail = &mut self.jail;
        let single = [&mut jail.jail_root, &mut jail.jail_netns];
        let many = [
            &mut jail.jail_bind,
            &mut jail.jail_bind_rw,
            &mut jail.jail_dev,
            &mut jail.jail_cgroup,
        ];
        single.into_iter().flatten().for_each(absolute);
        many.into_iter().flatten().for_each(absolute);
        let vm = &mut self.vm;
        [
            &mut vm.vsock_uds,
            &mut vm.serial_out,
            &mut self.restore_from,
            &mut self.snapshot_dir,
            &mut self.api_sock,
        ]
        .into_iter()
        .flatten()
        .for_each(absolute);
    }
}

fn run(args: &Args, caps: &HostCaps, cwd: &Path, pagemap: Option<std::fs::File>) -> VmExit {
    // Compiled before anything is built, so a bad filter stops us before a guest exists; the
    // threads install theirs as they start.
    if !args.no_seccomp {
        match vmm::seccomp::Filters::compile() {
            Ok(filters) => vmm::seccomp::enable(filters),
            Err(e) => return VmExit::VmmError(Chain(&e).to_string()),
        }
    }
    if let Some(socket) = &args.api_sock {
        return serve_api(args, caps, socket, cwd, pagemap);
    }
    let microvm = match start(args, caps, cwd) {
        Ok(Some((microvm, _))) => microvm,
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

/// `--api-sock`: the socket first (while this is the only thread), then the API thread, then
/// any VM the flags describe, then requests until the VM stops.
fn serve_api(
    args: &Args,
    caps: &HostCaps,
    socket: &Path,
    cwd: &Path,
    pagemap: Option<std::fs::File>,
) -> VmExit {
    let listener = match vmm::api::socket::bind(socket) {
        Ok(listener) => listener,
        Err(e) => return VmExit::VmmError(Chain(&e).to_string()),
    };
    let (events, incoming) = std::sync::mpsc::channel();
    let options = ControllerOptions {
        id: args.id.clone(),
        serve_after_stop: args.serve_after_stop,
        caps: *caps,
        serial_out: args.vm.serial_out.clone(),
        pagemap,
    };
    let mut controller = Controller::new(options, events.clone());
    if let Err(e) = vmm::api::server::spawn(listener, events) {
        let _ = std::fs::remove_file(socket);
        return VmExit::VmmError(format!("starting the API thread: {e}"));
    }
    let configured = args.vm.config_file.is_some() || args.vm.kernel.is_some();
    if configured || args.restore_from.is_some() {
        let started = std::time::Instant::now();
        let from = match args.restore_from {
            Some(_) => StartedFrom::Snapshot,
            None => StartedFrom::Boot,
        };
        let config = match configured {
            true => match config::load(&args.vm, caps, cwd) {
                Ok(config) => Some(config),
                Err(e) => return VmExit::VmmError(format!("configuration: {}", Chain(&e))),
            },
            false => None,
        };
        let adopted = match start(args, caps, cwd) {
            Ok(Some((microvm, restored))) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                if let Some((state_crc32, working_set)) = restored {
                    controller.restored(state_crc32, working_set);
                }
                controller.adopt(microvm, from, config.as_ref(), ms)
            }
            Ok(None) => Ok(()),
            Err(why) => Err(Chain(why.as_ref()).to_string()),
        };
        if let Err(why) = adopted {
            let _ = std::fs::remove_file(socket);
            return VmExit::VmmError(why);
        }
    }
    let exit = controller.run(incoming);
    let _ = std::fs::remove_file(socket);
    exit
}

fn snapshot(mut microvm: Microvm, dir: &Path) -> VmExit {
    let started = std::time::Instant::now();
    match vmm::snapshot::create(&mut microvm, dir) {
        Ok(_) => {
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

/// What a `--restore-from` restore did besides: the state's CRC-32, and the working set it
/// loaded or ignored.
type RestoredFrom = (u32, Option<(PathBuf, vmm::snapshot::WorkingSetUse)>);

/// The running VM, booted or restored (with what the restore did); `None` for a dry run.
fn start(
    args: &Args,
    caps: &HostCaps,
    cwd: &Path,
) -> anyhow::Result<Option<(Microvm, Option<RestoredFrom>)>> {
    let serial_out = |path: Option<&PathBuf>| -> anyhow::Result<Box<dyn Write + Send>> {
        vmm::api::controller::open_console(path.map(PathBuf::as_path)).with_context(|| {
            let path = path.map(|p| p.display().to_string()).unwrap_or_default();
            format!("serial.serial_out_path {path}")
        })
    };
    if let Some(dir) = &args.restore_from {
        let console = serial_out(args.vm.serial_out.as_ref())?;
        let started = std::time::Instant::now();
        // A working set recorded beside the snapshot is loaded (lambda-vm records one).
        let working_set = dir.join(vmm::snapshot::working_set::FILE_NAME);
        let options = vmm::snapshot::RestoreOptions {
            vsock_uds: args.vm.vsock_uds.clone(),
            working_set: working_set.exists().then_some(working_set),
            ..Default::default()
        };
        let restored = vmm::snapshot::restore_dir(dir, console, &options)
            .with_context(|| format!("restoring {}", dir.display()))?;
        log::info!(
            "restored in {:.2} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        let working_set = options.working_set.zip(restored.working_set);
        let from = (restored.state_crc32, working_set);
        return Ok(Some((restored.microvm, Some(from))));
    }
    let config = config::load(&args.vm, caps, cwd).context("configuration")?;
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
    Ok(Some((microvm, None)))
}
