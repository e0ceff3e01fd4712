//! `lambda-vm`: the function service. Serves the AWS Runtime Interface Emulator's invoke endpoint
//! (`POST /2015-03-31/functions/function/invocations`) and runs the function in a microVM booted
//! from a guest kernel and the function's initramfs (`scripts/build-rootfs.sh`).

use anyhow::Context;
use clap::Parser;
use lambda_vm::guest::{GuestSpec, Rootfs};
use lambda_vm::snapshots::Snapshots;
use lambda_vm::FunctionService;
use rapid::invoke_http::Endpoint;
use rapid::{EnvironmentConfig, InitializationType, LogTails};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use vmm::config::CpuTemplate;
use vmm::host_caps::HostCaps;

#[derive(Parser)]
#[command(
    name = "lambda-vm",
    about = "Serve a Lambda function running in a microVM through the emulator's invoke endpoint"
)]
struct Args {
    /// The guest kernel (an uncompressed vmlinux, from scripts/build-kernel.sh).
    #[arg(long)]
    kernel: PathBuf,
    /// The function's image from scripts/build-rootfs.sh: an initramfs (`.cpio`), or an ext4
    /// image (`.ext4`, from --ext4) attached as a read-only root drive, which boots faster.
    #[arg(long)]
    rootfs: PathBuf,
    /// The function.json the image was built with: name, memory (the VM's size), timeout.
    #[arg(long)]
    function_config: PathBuf,
    /// Kernel command line [default: the VMM's, for the CPU template in use].
    #[arg(long)]
    boot_args: Option<String>,
    /// Address of the invoke endpoint (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the VM's sockets [default: a new directory under the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// File for the guest console (kernel messages) [default: discarded].
    #[arg(long)]
    console: Option<PathBuf>,
    /// Seconds the guest may take to boot and connect.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Where a SnapStart function's snapshots go (a function.json with
    /// "initialization_type": "snap-start") [default: WORK_DIR/snapshots]. Each is kept in a
    /// directory named by a hash of the kernel, image, function.json, command line and
    /// snapshot format, and reused by later runs; a change to any of them takes a new one.
    /// The directory belongs to this one function.
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Boot the microVM at start instead of on the first invocation.
    #[arg(long)]
    eager: bool,
    /// Directory for on-failure destination records of failed asynchronous invokes.
    #[arg(long)]
    on_failure_dir: Option<PathBuf>,
    /// Log level of the VMM's own messages on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", env = "VMM_LOG")]
    log_level: log::LevelFilter,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    vmm::logger::init(args.log_level);
    let function = proto::FunctionConfig::load(&args.function_config)
        .with_context(|| format!("--function-config {}", args.function_config.display()))?;
    for path in [&args.kernel, &args.rootfs] {
        anyhow::ensure!(path.is_file(), "{}: no such file", path.display());
    }
    let work_dir = match args.work_dir {
        Some(dir) => dir,
        None => {
            let dir = std::env::temp_dir().join(format!("lambda-vm-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir
        }
    };

    // The host-side view of the function: what the endpoint and the async queue need.
    let runtime = PathBuf::from(&function.runtime);
    let task_root = PathBuf::from(proto::layout::TASK_ROOT);
    let mut config = EnvironmentConfig::from_function(&function, runtime, task_root);
    config.on_failure_dir = args.on_failure_dir;
    let snapstart = config.init_type == InitializationType::SnapStart;
    anyhow::ensure!(
        snapstart || args.snapshot_dir.is_none(),
        "--snapshot-dir: the function's initialization_type is not snap-start"
    );
    let snapshot_root = args
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| work_dir.join("snapshots"));
    let spec = GuestSpec {
        kernel: args.kernel,
        rootfs: Rootfs::from_path(args.rootfs),
        boot_args: args.boot_args,
        mem_size_mib: function.memory_mb,
        work_dir,
        console: args.console,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        cpu_template: CpuTemplate::Auto.resolve(&HostCaps::detect()),
    };
    let snapshots = snapstart.then(|| {
        let (kernel, image) = (spec.kernel.clone(), spec.rootfs.path().to_owned());
        let inputs = vec![kernel, image, args.function_config.clone()];
        let settings = format!("{} mem_mib={}", spec.boot_args(), spec.mem_size_mib);
        Snapshots::new(snapshot_root, inputs, settings)
    });
    let tails = LogTails::default();
    let log = {
        let tails = tails.clone();
        move |line: &str| {
            tails.line(line);
            println!("{line}");
        }
    };
    let service = FunctionService::new(config, spec, snapshots, log);

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Scripts and tests wait for this exact line; with port 0 it is the only way to learn the
    // port. One write, so that a reader never sees half of it (eprintln! may write in pieces).
    let ready = format!("lambda-vm: listening invoke={}\n", listener.local_addr()?);
    std::io::Write::write_all(&mut std::io::stderr(), ready.as_bytes())?;
    let endpoint = Endpoint::new(service.clone(), tails);
    tokio::spawn(rapid::http::serve(listener, move |request| {
        endpoint.clone().handle(request)
    }));
    if args.eager {
        if let Err(e) = service.start().await {
            eprintln!("lambda-vm: {}", lambda_vm::chain(&e));
        }
    }
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    service.shutdown().await;
    Ok(())
}
