//! `lambda-vm`: the function host. Serves Lambda's API (invoke, and the function reads the SDKs
//! make) for one function or for every function in a directory, each execution environment a
//! microVM in its own `vmm` process, booted from a guest kernel and the function's image
//! (`scripts/build-rootfs.sh`), or restored from its SnapStart snapshot.
//!
//! At start it checks the host and every function and says what it found, one line each, then
//! prints `lambda-vm: listening invoke=ADDR` (stderr) once it accepts requests, and
//! `lambda-vm: ready` (stderr) once the provisioned environments are up. SIGTERM or SIGINT
//! stops it: starting environments end at once, busy ones get `--stop-grace` seconds, and it
//! exits with nothing of theirs left; a second signal ends the busy ones at once.

mod cluster_serve;

use anyhow::Context;
use clap::Parser;
use front_door::event_store::EventStore;
use front_door::invoke_http::Endpoint;
use front_door::{LogTails, Router};
use http_server::ConnectionLimits;
use lambda_vm::checks;
use lambda_vm::dirs::{self, Scratch};
use lambda_vm::guest::{Console, Environments, GuestSpec};
use lambda_vm::host::FunctionHost;
use lambda_vm::jail::JailHost;
use lambda_vm::logs::FunctionLog;
use lambda_vm::network::{self, Networks};
use lambda_vm::pool::HostLimit;
use lambda_vm::vmm_process::Launcher;
use lambda_vm::{FunctionService, Scaling};
use proto::InitializationType;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use vmm::config::CpuTemplate;
use vmm::host_caps::HostCaps;

#[derive(Parser)]
#[command(
    name = "lambda-vm",
    about = "Serve Lambda functions, each execution environment a microVM, through Lambda's invoke API"
)]
struct Args {
    /// The guest kernel (an uncompressed vmlinux, from scripts/build-kernel.sh).
    #[arg(long)]
    kernel: PathBuf,
    /// One function's image from scripts/build-rootfs.sh: an initramfs (`.cpio`), or an ext4
    /// image (`.ext4`, from --ext4) attached as a read-only root drive, which boots faster.
    #[arg(long, requires = "function_config", conflicts_with = "functions_dir")]
    rootfs: Option<PathBuf>,
    /// The function.json the image was built with: name, memory (the VM's size), timeout,
    /// concurrency.
    #[arg(long, requires = "rootfs")]
    function_config: Option<PathBuf>,
    /// Serve every function in DIR: one subdirectory each, holding its function.json and its
    /// image (one `.ext4` or `.cpio` file). A function is invoked by its function.json's
    /// `function_name`, whatever its directory is called.
    #[arg(long, value_name = "DIR", required_unless_present_any = ["rootfs", "cluster"])]
    functions_dir: Option<PathBuf>,
    /// Most environments in use (busy or starting) at once, over all functions; a request
    /// beyond it gets 429 TooManyRequestsException.
    #[arg(long, default_value_t = 16)]
    max_concurrency: usize,
    /// Seconds an environment may idle before it is torn down (provisioned ones are kept).
    #[arg(long, default_value_t = 300.0)]
    idle_timeout: f64,
    /// Kernel command line [default: the VMM's, for the CPU template in use].
    #[arg(long)]
    boot_args: Option<String>,
    /// Address of the invoke endpoint (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// What is kept across runs: SnapStart snapshots (`snapshots/NAME/`) and each function's
    /// accepted asynchronous events (`events/NAME/`) [default: /var/lib/lambda-vm for root,
    /// else $XDG_STATE_HOME/lambda-vm].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Where this run's scratch directory (`lambda-vm-PID`: the environments' sockets and VM
    /// configurations) is made; it is removed at exit, and one a killed service left is
    /// removed by the next start [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where SnapStart snapshots go [default: STATE_DIR/snapshots]; one subdirectory per
    /// function. Each snapshot is kept in a directory named by a hash of the kernel, image,
    /// function configuration, command line and snapshot format, and reused by later runs
    /// (and by other services on the same directory); a change to any of them takes a new one,
    /// and the old one is removed.
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Write each function's log to DIR/NAME.log and each environment's console (kernel
    /// messages) to DIR/NAME.N.console (N: the environment's number in the log lines), besides
    /// the log on stdout.
    #[arg(long, value_name = "DIR", conflicts_with = "console")]
    log_dir: Option<PathBuf>,
    /// File every guest console (kernel messages) is appended to [default: discarded, or
    /// per environment with --log-dir].
    #[arg(long)]
    console: Option<PathBuf>,
    /// Seconds the guest may take to boot and connect.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Seconds a function's init may take in its microVM (Lambda's 10 s by default; on an
    /// emulated KVM, where each process start in the guest costs seconds, a function with
    /// extensions may need more).
    #[arg(long, default_value_t = 10.0)]
    init_timeout: f64,
    /// Seconds busy environments get to finish their invocations after SIGTERM or SIGINT
    /// before they are ended; a second signal ends them at once.
    #[arg(long, default_value_t = 5.0)]
    stop_grace: f64,
    /// Keep one environment of each function ready from the start (provisioned concurrency
    /// of at least 1).
    #[arg(long)]
    eager: bool,
    /// How many `vmm` processes each SnapStart function keeps started, jailed and waiting (each
    /// with its own network), so that a new environment is a restore into one of them; at most
    /// as many as the host's available memory could run at once (half of it), and never more
    /// than --max-concurrency. 0 turns them off.
    #[arg(long, value_name = "N", default_value_t = 2)]
    ready_vmms: usize,
    /// Neither record nor load SnapStart working sets: by default the guest pages the first
    /// invoke after a restore touches are kept beside the snapshot (`memory.ws`) and loaded
    /// by later restores before the guest runs; with this flag every restore loads guest
    /// memory lazily, page by page (for comparisons).
    #[arg(long)]
    no_working_set: bool,
    /// The `vmm` binary [default: the one beside this program].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The KVM device checked at start (the `vmm` opens /dev/kvm).
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// Directory for on-failure destination records of failed asynchronous invokes.
    #[arg(long)]
    on_failure_dir: Option<PathBuf>,
    /// Most client connections open at once on the invoke endpoint; beyond it new ones wait
    /// while the open ones are served.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers, or leave a kept-alive
    /// connection idle, before it is closed.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a request body may take before --min-body-rate applies: a body that sends
    /// nothing for this long is refused (408), and so is one that then falls behind the rate.
    #[arg(long, default_value_t = 10.0)]
    body_timeout: f64,
    /// The slowest a request body may arrive, in bytes a second on average, after
    /// --body-timeout.
    #[arg(long, default_value_t = http_server::MIN_BODY_RATE)]
    min_body_rate: u32,
    /// The IPv4 range each environment's host link (a /30) is cut from: the host side of
    /// the link is the one host address a function reaches, and the function's traffic leaves
    /// the host translated from the environment's side.
    #[arg(long, default_value = network::DEFAULT_RANGE)]
    network_range: network::Subnet,
    /// Give no function networking, whatever its function.json says.
    #[arg(long)]
    no_network: bool,
    /// Start each `vmm` unjailed (for debugging): no namespaces, no private root, no user of
    /// its own, no cgroups. Its seccomp filters stay on.
    #[arg(long)]
    no_jail: bool,
    /// Start each `vmm` with its seccomp filters off (for debugging and measuring).
    #[arg(long)]
    no_seccomp: bool,
    /// Log level of the VMM's own messages on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", env = "VMM_LOG")]
    log_level: log::LevelFilter,
    /// Join a cluster (see the cluster crate): serve every function deployed there with an
    /// ext4 or cpio image, instead of --functions-dir or --rootfs.
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
    /// With --cluster: this host's id in the registry [default: the host name and a suffix].
    #[arg(long, requires = "cluster")]
    host_id: Option<String>,
}

/// One function to host: its configuration, where it came from, and its image.
struct Function {
    config: proto::FunctionConfig,
    /// Its function.json.
    source: PathBuf,
    image: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init("lambda-vm", args.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = runtime
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(serve(args)));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            say(&format!("lambda-vm: error: {}", logging::Chain(e.as_ref())));
            ExitCode::FAILURE
        }
    };
    // Environments' threads may still be winding down; everything of theirs is gone (the
    // stop waited for that), so the process need not wait for the threads.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}

/// One line on stderr, in one write (eprintln! may write in pieces, and scripts wait for whole
/// lines).
fn say(line: &str) {
    let line = format!("{line}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

async fn serve(mut args: Args) -> anyhow::Result<ExitCode> {
    resolve_paths(&mut args)?;
    anyhow::ensure!(
        args.max_concurrency > 0,
        "--max-concurrency must be at least 1"
    );
    let idle_timeout = Duration::try_from_secs_f64(args.idle_timeout)
        .context("--idle-timeout must be a number of seconds")?;
    let init_timeout = Duration::try_from_secs_f64(args.init_timeout)
        .ok()
        .filter(|t| (Duration::from_millis(1)..=Duration::from_secs(900)).contains(t))
        .context("--init-timeout must be between 0.001 and 900 seconds")?;
    let stop_grace = Duration::try_from_secs_f64(args.stop_grace)
        .context("--stop-grace must be a number of seconds")?;
    let limits = ConnectionLimits::from_flags(
        args.max_connections,
        args.header_timeout,
        args.body_timeout,
        args.min_body_rate,
    )?;
    // Watched from the start, so a signal during the checks or a boot is not missed.
    let mut signals = Signals::new()?;

    // What the host and each function need, checked before anything starts: one line each.
    let check = |line: String| println!("lambda-vm: check: {line}");
    check(checks::kvm(&args.kvm_device)?);
    check(checks::kernel(&args.kernel)?);
    let functions = if args.cluster.enabled() {
        anyhow::ensure!(
            args.rootfs.is_none() && args.functions_dir.is_none(),
            "--cluster serves the functions deployed to the cluster: give no --rootfs or --functions-dir"
        );
        Vec::new()
    } else {
        functions(&args)?
    };
    let mut images = Vec::new();
    for function in &functions {
        let name = &function.config.function_name;
        let (rootfs, described) = checks::image(&function.image)
            .with_context(|| format!("function {name} ({})", function.source.display()))?;
        checks::memory(name, function.config.memory_mb)?;
        check(format!(
            "function {name} (invoked by that name; {}): {described}; {} MB of memory",
            function.source.display(),
            function.config.memory_mb
        ));
        images.push(rootfs);
    }
    if let Some(dir) = &args.on_failure_dir {
        front_door::async_invoke::check_destination(dir)
            .with_context(|| format!("--on-failure-dir {}", dir.display()))?;
    }
    let vmm = match &args.vmm {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("vmm"),
    };
    anyhow::ensure!(
        vmm.is_file(),
        "the vmm binary {}: no such file (build it, or pass --vmm)",
        vmm.display()
    );

    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(dirs::default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("--state-dir {}", state_dir.display()))?;
    let work_parent = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (scratch, leftovers) = Scratch::create(&work_parent)
        .with_context(|| format!("the scratch directory in {}", work_parent.display()))?;
    println!(
        "lambda-vm: state in {} (kept), scratch in {} (removed at exit)",
        state_dir.display(),
        scratch.path().display()
    );

    // Before any environment starts: every vmm is jailed, or none is.
    let (jail_host, jail) = if args.no_jail {
        (None, "jail off (--no-jail)".to_owned())
    } else {
        match JailHost::detect(scratch.path()) {
            // Its detection removed the cgroups of every service that is gone.
            Ok(host) => {
                let described = host.describe();
                (Some(Arc::new(host)), described)
            }
            Err(why) => (None, format!("jail off: {why}")),
        }
    };
    for leftover in &leftovers {
        println!(
            "lambda-vm: removed {}, left by a service that is gone",
            leftover.dir.display()
        );
    }
    let seccomp = if args.no_seccomp {
        "seccomp off (--no-seccomp)"
    } else {
        "seccomp on in every vmm (a filter per thread kind)"
    };
    println!("lambda-vm: isolation: {seccomp}; {jail}");
    let launcher = Arc::new(Launcher {
        binary: vmm,
        jail: jail_host,
        seccomp: !args.no_seccomp,
    });
    let cpu_template = CpuTemplate::Auto.resolve(&HostCaps::detect());
    let networks = if !args.no_network && functions.iter().any(|f| f.config.networking) {
        open_networks(args.network_range)
    } else {
        None
    };
    if let Some(dir) = &args.log_dir {
        println!(
            "lambda-vm: logs in {}: NAME.log per function, NAME.N.console per environment",
            dir.display()
        );
    }

    let host = HostLimit::new(args.max_concurrency);
    let tails = LogTails::default();
    let environments = Arc::new(Environments::default());
    // --cluster: a host of a cluster, serving what is deployed there (lambda_vm::cluster_host).
    if args.cluster.enabled() {
        let settings = lambda_vm::cluster_host::VmSettings {
            launcher: launcher.clone(),
            ready_vmms: args.ready_vmms.min(args.max_concurrency),
            kernel: args.kernel.clone(),
            boot_args: args.boot_args.clone(),
            cpu_template,
            networks: (!args.no_network)
                .then(|| open_networks(args.network_range))
                .flatten(),
            log_dir: args.log_dir.clone(),
            console: args.console.clone(),
            boot_timeout: Duration::from_secs(args.boot_timeout),
            init_timeout,
            idle_timeout,
            work_dir: scratch.path().to_owned(),
            snapshot_dir: args
                .snapshot_dir
                .clone()
                .unwrap_or_else(|| state_dir.join("snapshots")),
            on_failure_dir: args.on_failure_dir.clone(),
            host,
            tails,
            environments,
        };
        let id = args.host_id.as_deref();
        let listen = args.listen;
        return cluster_serve::serve(
            &args.cluster,
            id,
            settings,
            listen,
            limits,
            signals,
            stop_grace,
            scratch,
        )
        .await;
    }
    let snapshot_root = args
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("snapshots"));
    let events_dir = state_dir.join("events");
    std::fs::create_dir_all(&events_dir)
        .with_context(|| format!("creating {}", events_dir.display()))?;
    let mut hosted = Vec::new();
    for (index, (function, rootfs)) in functions.into_iter().zip(images).enumerate() {
        let Function {
            config: function,
            image,
            ..
        } = function;
        let name = function.function_name.clone();
        let mut served = front_door::Function::new(&function);
        served.events.on_failure_dir = args.on_failure_dir.clone();
        served.code = Some(
            front_door::Code::of(&image)
                .with_context(|| format!("function {name}: {}", image.display()))?,
        );
        // Numbered, not named: a socket's path must stay short (108 bytes).
        let function_dir = scratch.path().join(index.to_string());
        std::fs::create_dir_all(&function_dir)
            .with_context(|| format!("creating {}", function_dir.display()))?;
        let console = match (&args.log_dir, &args.console) {
            (Some(dir), _) => Console::PerEnvironment {
                dir: dir.clone(),
                function: name.clone(),
            },
            (None, Some(file)) => Console::Shared(file.clone()),
            (None, None) => Console::Discard,
        };
        let spec = GuestSpec {
            launcher: launcher.clone(),
            kernel: args.kernel.clone(),
            rootfs,
            boot_args: args.boot_args.clone(),
            mem_size_mib: function.memory_mb,
            work_dir: function_dir,
            console,
            boot_timeout: Duration::from_secs(args.boot_timeout),
            init_timeout,
            cpu_template,
            network: networks.clone().filter(|_| function.networking),
            environments: environments.clone(),
        };
        let snapshots =
            (function.initialization_type == InitializationType::SnapStart).then(|| {
                let snapshots =
                    lambda_vm::snapshots::for_function(&spec, &function, snapshot_root.join(&name));
                match args.no_working_set {
                    true => snapshots.without_working_sets(),
                    false => snapshots,
                }
            });
        let provisioned = usize::try_from(function.provisioned_concurrency)?;
        let scaling = Scaling {
            reserved: function
                .reserved_concurrency
                .map(usize::try_from)
                .transpose()?,
            provisioned: if args.eager {
                provisioned.max(1)
            } else {
                provisioned
            },
            idle_timeout,
            host: host.clone(),
            ready: ready_vmms(&args, &function),
        };
        let log = FunctionLog::new(&name, tails.clone(), args.log_dir.as_deref())
            .with_context(|| format!("--log-dir: the log of {name}"))?;
        let store = events_dir.join(&name);
        let (events, recovery) = EventStore::open(&store).with_context(|| {
            format!(
                "the event store of {name}, {} (is another lambda-vm using --state-dir {}? give each its own)",
                store.display(),
                state_dir.display()
            )
        })?;
        if let Some(damage) = recovery.describe() {
            say(&format!(
                "lambda-vm: the event store {} was damaged: {damage}",
                store.display()
            ));
        }
        let service = FunctionService::new(served, function, spec, snapshots, scaling, log);
        hosted.push(Endpoint::new(service, tails.clone(), Some(events)));
    }
    let host = FunctionHost::new(Router::new(hosted), host);

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    // Scripts and tests wait for this exact line; with port 0 it is the only way to learn the
    // port.
    let listening = proto::readiness::Listening {
        invoke: listener.local_addr()?,
        runtime_api: None,
    };
    say(listening.line("lambda-vm").trim_end());
    let router = host.clone();
    let accepting = tokio::spawn(http_server::serve_with(listener, limits, move |request| {
        router.clone().handle(request)
    }));

    // The provisioned environments, all at once; `ready` once they are up.
    let services: Vec<FunctionService> = host.services().cloned().collect();
    let ready = async move {
        let starts: Vec<_> = services
            .iter()
            .cloned()
            .map(|service| tokio::spawn(async move { service.provision().await }))
            .collect();
        let mut failed = Vec::new();
        for (service, start) in services.iter().zip(starts) {
            match start.await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => failed.push(format!("{}: {why}", service.name())),
                Err(e) => failed.push(format!("{}: {e}", service.name())),
            }
        }
        if !failed.is_empty() {
            say(&format!(
                "lambda-vm: not ready yet: provisioned environments did not start ({}); they are started again",
                failed.join("; ")
            ));
            // The maintenance threads start them again, waiting longer after each failure.
            while !services.iter().all(FunctionService::provisioned_ready) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let stopped_by = tokio::select! {
        () = ready => {
            say("lambda-vm: ready");
            signals.next().await
        }
        signal = signals.next() => signal,
    };

    // Stopping: no new connections, no new environments; starting ones end now, busy ones get
    // the grace time, idle ones power off.
    accepting.abort();
    environments.end_starts();
    say(&format!(
        "lambda-vm: stopping ({stopped_by}): {} environment(s); busy ones get {:.0} s to finish (a second SIGTERM or SIGINT ends them now)",
        environments.count(),
        stop_grace.as_secs_f64()
    ));
    let shutdowns: Vec<_> = host
        .services()
        .cloned()
        .map(|service| tokio::spawn(async move { service.shutdown().await }))
        .collect();
    let waiting = environments.clone();
    let mut gone = tokio::task::spawn_blocking(move || waiting.wait_gone(stop_grace));
    let finished = tokio::select! {
        gone = &mut gone => gone.unwrap_or(false),
        signal = signals.next() => {
            say(&format!("lambda-vm: {signal} again: ending every environment now"));
            false
        }
    };
    if !finished {
        environments.end_all();
        let waiting = environments.clone();
        let gone = tokio::task::spawn_blocking(move || waiting.wait_gone(Duration::from_secs(30)))
            .await
            .unwrap_or(false);
        if !gone {
            say(&format!(
                "lambda-vm: {} environment(s) did not end",
                environments.count()
            ));
        }
    }
    for shutdown in shutdowns {
        let _ = shutdown.await;
    }
    drop(host);
    if let Some(networks) = networks {
        // The networks made ahead, and those of the environments just ended, go now.
        let _ = tokio::task::spawn_blocking(move || networks.close()).await;
    }
    if let Err(e) = scratch.remove() {
        say(&format!("lambda-vm: removing the scratch directory: {e}"));
    }
    say("lambda-vm: stopped");
    Ok(ExitCode::SUCCESS)
}

/// How many ready `vmm` processes `function` keeps (none unless it is a SnapStart function),
/// said on stdout when the memory bound lowers it.
fn ready_vmms(args: &Args, function: &proto::FunctionConfig) -> usize {
    if function.initialization_type != InitializationType::SnapStart {
        return 0;
    }
    let wanted = args.ready_vmms.min(args.max_concurrency);
    let fit = lambda_vm::ready::bounded_by_memory(wanted, function.memory_mb);
    if fit < wanted {
        println!(
            "lambda-vm: {}: {fit} ready vmm process(es), not {wanted}: the host's available memory bounds them",
            function.function_name
        );
    }
    fit
}

/// SIGTERM and SIGINT.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("watching SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("watching SIGINT")?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Makes every path the user gave absolute, once, here: each `vmm` runs in a jail with another
/// root and working directory, and every path handed to it must mean the same there. Files
/// that must exist are resolved to their real path (a missing one is named now); directories
/// the service writes are made first.
fn resolve_paths(args: &mut Args) -> anyhow::Result<()> {
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

/// How many environment networks are kept made ahead, for the next environments to start.
const READY_NETWORKS: usize = 2;

/// The environments' networks, or `None`, said on stderr, when this host cannot give them: the
/// functions then run without networking.
fn open_networks(range: network::Subnet) -> Option<Arc<Networks>> {
    match Networks::open(range) {
        Ok(networks) => {
            networks.keep_ready(READY_NETWORKS);
            Some(Arc::new(networks))
        }
        Err(e) => {
            let line = format!(
                "lambda-vm: functions run WITHOUT networking: {}\n",
                logging::Chain(&e)
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            None
        }
    }
}

/// The functions to host: the one of --rootfs and --function-config, or each in
/// --functions-dir.
fn functions(args: &Args) -> anyhow::Result<Vec<Function>> {
    if let (Some(image), Some(config)) = (&args.rootfs, &args.function_config) {
        anyhow::ensure!(
            image.is_file(),
            "--rootfs {}: no such file",
            image.display()
        );
        let source = config.clone();
        let config = proto::FunctionConfig::load(config)
            .with_context(|| format!("--function-config {}", config.display()))?;
        return Ok(vec![Function {
            config,
            source,
            image: image.clone(),
        }]);
    }
    let Some(dir) = &args.functions_dir else {
        anyhow::bail!("give --functions-dir, or --rootfs and --function-config");
    };
    let mut functions = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("--functions-dir {}", dir.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for function_dir in dirs {
        let config_path = function_dir.join("function.json");
        let config = proto::FunctionConfig::load(&config_path)
            .with_context(|| format!("function {}", function_dir.display()))?;
        let image = image_in(&function_dir)?;
        anyhow::ensure!(
            !functions
                .iter()
                .any(|f: &Function| f.config.function_name == config.function_name),
            "{}: a second function named {}",
            config_path.display(),
            config.function_name
        );
        functions.push(Function {
            config,
            source: config_path,
            image,
        });
    }
    anyhow::ensure!(!functions.is_empty(), "--functions-dir {}: no function in it (one subdirectory each, with function.json and an image)", dir.display());
    Ok(functions)
}

/// The one image (`.ext4`, else `.cpio`) in a function's directory.
fn image_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    for extension in ["ext4", "cpio"] {
        let found: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .collect();
        match found.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => continue,
            _ => anyhow::bail!("{}: more than one .{extension} image", dir.display()),
        }
    }
    anyhow::bail!("{}: no image (an .ext4 or .cpio file)", dir.display())
}
