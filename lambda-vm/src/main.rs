//! `lambda-vm`: the function host. Serves Lambda's invoke API (and the AWS Runtime Interface
//! Emulator's path) for one function or for every function in a directory, each execution
//! environment a microVM in its own `vmm` process, booted from a guest kernel and the
//! function's image (`scripts/build-rootfs.sh`), or restored from its SnapStart snapshot.

use anyhow::Context;
use clap::Parser;
use front_door::event_store::EventStore;
use front_door::invoke_http::Endpoint;
use front_door::LogTails;
use http_server::ConnectionLimits;
use lambda_vm::guest::{GuestSpec, Rootfs};
use lambda_vm::host::FunctionHost;
use lambda_vm::jail::JailHost;
use lambda_vm::network::{self, Networks};
use lambda_vm::pool::HostLimit;
use lambda_vm::snapshots::Snapshots;
use lambda_vm::{FunctionService, Scaling};
use proto::InitializationType;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
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
    /// image (one `.ext4` or `.cpio` file).
    #[arg(long, value_name = "DIR", required_unless_present = "rootfs")]
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
    /// Directory for the environments' sockets and configurations [default: a new directory
    /// under the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// File the guest consoles (kernel messages) are appended to [default: discarded].
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
    /// Where SnapStart functions' snapshots go [default: WORK_DIR/snapshots]; with
    /// --functions-dir, one subdirectory per function. Each snapshot is kept in a directory
    /// named by a hash of the kernel, image, function configuration, command line and
    /// snapshot format, and reused by later runs; a change to any of them takes a new one.
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Keep one environment of each function ready from the start (provisioned concurrency
    /// of at least 1).
    #[arg(long)]
    eager: bool,
    /// The `vmm` binary [default: the one beside this program].
    #[arg(long)]
    vmm: Option<PathBuf>,
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
}

/// One function to host: its configuration, where it came from, and its image.
struct Function {
    config: proto::FunctionConfig,
    image: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    vmm::logger::init(args.log_level);
    anyhow::ensure!(
        args.kernel.is_file(),
        "--kernel {}: no such file",
        args.kernel.display()
    );
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
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    let header_timeout = Duration::try_from_secs_f64(args.header_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--header-timeout must be a positive number of seconds")?;
    let limits = ConnectionLimits {
        max_connections: Some(args.max_connections),
        header_read_timeout: Some(header_timeout),
    };
    let functions = functions(&args)?;
    if let Some(dir) = &args.on_failure_dir {
        front_door::async_invoke::check_destination(dir)
            .with_context(|| format!("--on-failure-dir {}", dir.display()))?;
    }
    for function in &functions {
        let mb = function.config.memory_mb;
        anyhow::ensure!(
            mb <= vmm::config::MAX_MEM_MIB,
            "function {}: memory_mb {mb} is more than the {} MiB a microVM can have here",
            function.config.function_name,
            vmm::config::MAX_MEM_MIB
        );
    }
    let work_dir = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("lambda-vm-{}", std::process::id())),
    };
    // Before any environment starts: every vmm from here on is jailed, or none is.
    let jail = if args.no_jail {
        "jail off (--no-jail)".to_owned()
    } else {
        match JailHost::detect(&work_dir) {
            Ok(host) => {
                let described = host.describe();
                lambda_vm::jail::enable(host);
                described
            }
            Err(why) => format!("jail off: {why}"),
        }
    };
    let seccomp = if args.no_seccomp {
        lambda_vm::vmm_process::disable_seccomp();
        "seccomp off (--no-seccomp)"
    } else {
        "seccomp on in every vmm (a filter per thread kind)"
    };
    println!("lambda-vm: isolation: {seccomp}; {jail}");
    let vmm = match &args.vmm {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("vmm"),
    };
    anyhow::ensure!(
        vmm.is_file(),
        "the vmm binary {}: no such file (build it, or pass --vmm)",
        vmm.display()
    );
    let cpu_template = CpuTemplate::Auto.resolve(&HostCaps::detect());
    let networks = if !args.no_network && functions.iter().any(|f| f.config.networking) {
        open_networks(args.network_range)
    } else {
        None
    };
    let host = HostLimit::new(args.max_concurrency);
    let tails = LogTails::default();
    let single = args.functions_dir.is_none();
    let mut hosted = Vec::new();
    for Function {
        config: function,
        image,
    } in functions
    {
        let name = function.function_name.clone();
        let mut served = front_door::Function::new(&function);
        served.events.on_failure_dir = args.on_failure_dir.clone();
        let function_dir = if single {
            work_dir.clone()
        } else {
            work_dir.join(&name)
        };
        std::fs::create_dir_all(&function_dir)
            .with_context(|| format!("creating {}", function_dir.display()))?;
        let spec = GuestSpec {
            vmm: vmm.clone(),
            kernel: args.kernel.clone(),
            rootfs: Rootfs::from_path(image),
            boot_args: args.boot_args.clone(),
            mem_size_mib: function.memory_mb,
            work_dir: function_dir.clone(),
            console: args.console.clone(),
            boot_timeout: Duration::from_secs(args.boot_timeout),
            init_timeout,
            cpu_template,
            network: networks.clone().filter(|_| function.networking),
        };
        let snapshots =
            (function.initialization_type == InitializationType::SnapStart).then(|| {
                let root = match (&args.snapshot_dir, single) {
                    (Some(root), true) => root.clone(),
                    (Some(root), false) => root.join(&name),
                    (None, _) => function_dir.join("snapshots"),
                };
                snapshots_of(&spec, &function, root)
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
        };
        let log = {
            let tails = tails.clone();
            move |line: &str| {
                tails.line(line);
                println!("{line}");
            }
        };
        let events = EventStore::open(&function_dir.join("events.redb"))
            .with_context(|| format!("the event store of {name}"))?;
        let service = FunctionService::new(served, function, spec, snapshots, scaling, log);
        let endpoint = Endpoint::new(service.clone(), tails.clone(), Some(events));
        hosted.push((service, endpoint));
    }
    let host = FunctionHost::new(hosted, host);

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Scripts and tests wait for this exact line; with port 0 it is the only way to learn the
    // port. One write, so that a reader never sees half of it (eprintln! may write in pieces).
    let ready = format!("lambda-vm: listening invoke={}\n", listener.local_addr()?);
    std::io::Write::write_all(&mut std::io::stderr(), ready.as_bytes())?;
    let router = host.clone();
    tokio::spawn(http_server::serve_with(listener, limits, move |request| {
        router.clone().handle(request)
    }));
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    for service in host.services() {
        service.shutdown().await;
    }
    Ok(())
}

/// The environments' networks, or `None`, said on stderr, when this host cannot give them: the
/// functions then run without networking.
fn open_networks(range: network::Subnet) -> Option<Arc<Networks>> {
    match Networks::open(range) {
        Ok(networks) => Some(Arc::new(networks)),
        Err(e) => {
            let line = format!(
                "lambda-vm: functions run WITHOUT networking: {}\n",
                vmm::error::Chain(&e)
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
        let config = proto::FunctionConfig::load(config)
            .with_context(|| format!("--function-config {}", config.display()))?;
        return Ok(vec![Function {
            config,
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
        functions.push(Function { config, image });
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

/// Where `function`'s snapshots live and what they are keyed to: the kernel, the image (which
/// holds the function.json the guest reads), the guest-relevant host configuration and the
/// VM's command line and memory. How many environments the host runs is not part of it.
fn snapshots_of(spec: &GuestSpec, function: &proto::FunctionConfig, root: PathBuf) -> Snapshots {
    let mut guest_relevant = function.clone();
    guest_relevant.reserved_concurrency = None;
    guest_relevant.provisioned_concurrency = 0;
    // Whether the guest has a network device depends on the host too (--no-network, a host
    // that cannot), not on function.json alone.
    let settings = format!(
        "{}\n{} mem_mib={} network={}",
        String::from_utf8_lossy(&guest_relevant.to_canonical_json()),
        spec.boot_args(),
        spec.mem_size_mib,
        spec.network.is_some()
    );
    let inputs = vec![spec.kernel.clone(), spec.rootfs.path().to_owned()];
    Snapshots::new(root, inputs, settings)
}
