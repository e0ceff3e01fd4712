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

mod args;
mod cluster_serve;
mod loading;

use args::Args;
use loading::Function;

use anyhow::Context;
use clap::Parser;
use front_door::event_store::EventStore;
use front_door::invoke_http::Endpoint;
use front_door::{LogTails, Router};
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

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use vmm::config::CpuTemplate;
use vmm::host_caps::HostCaps;

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
    args::resolve_paths(&mut args)?;
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
    let limits = args.endpoint.limits()?;
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
        loading::functions(&args)?
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
        open_networks(args.network_range, args.ready_networks)
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
                .then(|| open_networks(args.network_range, args.ready_networks))
                .flatten(),
            log_dir: args.log_dir.clone(),
            console: args.console.clone(),
            boot_timeout: Duration::from_secs(args.boot_timeout),
            init_timeout,
            idle_timeout,
            work_dir: scratch.path().to_owned(),
            image_dir: state_dir.join("images"),
            snapshot_dir: args
                .snapshot_dir
                .clone()
                .unwrap_or_else(|| state_dir.join("snapshots")),
            no_working_set: args.no_working_set,
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

/// The environments' networks, or `None`, said on stderr, when this host cannot give them: the
/// functions then run without networking.
fn open_networks(range: network::Subnet, ready: usize) -> Option<Arc<Networks>> {
    match Networks::open(range) {
        Ok(networks) => {
            networks.keep_ready(ready);
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
