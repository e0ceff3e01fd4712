//! Local mode: one function environment on the host, its runtime served the Runtime API, invoked
//! through the AWS Runtime Interface Emulator's endpoint.

use anyhow::Context;
use clap::{CommandFactory, Parser};
use cluster::front::Front;
use cluster::{Cluster, ClusterArgs, HostSettings, Node};
use front_door::event_store::EventStore;
use front_door::invoke_http::Endpoint;
use front_door::{AsyncPolicy, Function, LogTails, Router};
use http_server::ConnectionLimits;
use lambda_local::cluster_pool::LocalPool;
use lambda_local::LocalSandbox;
use proto::function_config::{FunctionConfig, MEMORY_MB};
use rapid::cgroup::Cgroups;
use rapid::{EnvironmentConfig, Handle, InitializationType, StdoutLog};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    about = "Run a Lambda function locally: the Runtime API for its runtime, the emulator's invoke endpoint for you; or, with --cluster, serve every function deployed to a cluster of hosts"
)]
struct Args {
    /// The runtime executable: our `bootstrap`, or any Lambda runtime.
    #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
    runtime: Option<PathBuf>,
    /// An argument for the runtime (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true, conflicts_with = "cluster")]
    args: Vec<String>,
    /// `_HANDLER` for the runtime.
    #[arg(long, default_value = "handler", conflicts_with = "cluster")]
    handler: String,
    /// `LAMBDA_TASK_ROOT` and the runtime's working directory [default: the runtime's directory].
    #[arg(long, conflicts_with = "cluster")]
    task_root: Option<PathBuf>,
    /// Function timeout in seconds.
    #[arg(long, default_value_t = 3.0, value_parser = seconds_in(0.001, 900.0), conflicts_with = "cluster")]
    timeout: f64,
    /// How long init may take, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds_in(0.001, 900.0))]
    init_timeout: f64,
    /// Memory size in MB, as configured on Lambda.
    #[arg(long, default_value_t = *MEMORY_MB.start(), value_parser = memory_mb, conflicts_with = "cluster")]
    memory: u32,
    /// The function's name, as in its ARN and `AWS_LAMBDA_FUNCTION_NAME`.
    #[arg(long, default_value = "function", value_parser = name_like(64, "-_"), conflicts_with = "cluster")]
    function_name: String,
    #[arg(long, default_value = "us-east-1", value_parser = name_like(32, "-"))]
    region: String,
    /// `AWS_LAMBDA_INITIALIZATION_TYPE`: on-demand, provisioned-concurrency or snap-start.
    #[arg(long, default_value = "on-demand", conflicts_with = "cluster")]
    init_type: InitializationType,
    /// An environment variable for the function, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = key_value, conflicts_with = "cluster")]
    env: Vec<(String, String)>,
    /// Address of the invoke endpoint (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the Runtime API (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9001", conflicts_with = "cluster")]
    runtime_api: SocketAddr,
    /// Directory for on-failure destination records of failed asynchronous invokes.
    #[arg(long)]
    on_failure_dir: Option<PathBuf>,
    #[command(flatten)]
    endpoint: front_door::EndpointFlags,
    /// The directory where accepted asynchronous invokes are kept until they have an outcome
    /// (a crash-safe store; a restarted server runs what it holds) [default:
    /// $TMPDIR/lambda-local-ADDR-PORT/events, for the invoke endpoint's address].
    #[arg(long, conflicts_with = "cluster")]
    event_store: Option<PathBuf>,
    /// How often a failed asynchronous invoke is retried (0 to 2), as Lambda's
    /// MaximumRetryAttempts.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=2), conflicts_with = "cluster")]
    maximum_retry_attempts: u32,
    /// Seconds an asynchronous invoke may wait (throttled, retried) before it is given up (60
    /// to 21600), as Lambda's MaximumEventAgeInSeconds.
    #[arg(long, default_value_t = 21_600, value_parser = clap::value_parser!(u32).range(60..=21_600), conflicts_with = "cluster")]
    maximum_event_age: u32,
    /// The function's external extensions (Lambda's `/opt/extensions`): every executable file
    /// in it is started before the runtime, with the same environment, and takes part in the
    /// environment's lifecycle through the Extensions API.
    #[arg(long)]
    extensions_dir: Option<PathBuf>,
    /// Seconds between retries of a failed asynchronous invoke.
    #[arg(long, default_value_t = 1.0, value_parser = seconds_in(0.0, 3600.0))]
    async_retry_delay: f64,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// With --cluster: the most local environments this host runs at once (over all
    /// functions); beyond them invokes go to other hosts.
    #[arg(long, default_value_t = 4, requires = "cluster", value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_concurrency: u32,
    /// With --cluster: this host's id in the registry [default: the host name and a random
    /// suffix].
    #[arg(long, requires = "cluster")]
    host_id: Option<String>,
    /// With --cluster: where packages fetched from the cluster are unpacked [default: a new
    /// directory under the system temp dir, removed at exit].
    #[arg(long, requires = "cluster")]
    work_dir: Option<PathBuf>,
    /// With --cluster: the invoke URL this host gives in the registry [default: http:// and
    /// the --listen address].
    #[arg(long, requires = "cluster")]
    advertise: Option<String>,
}

fn memory_mb(s: &str) -> Result<u32, String> {
    let mb: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if MEMORY_MB.contains(&mb) {
        Ok(mb)
    } else {
        Err(format!(
            "{mb} is out of range {}..={} MB",
            MEMORY_MB.start(),
            MEMORY_MB.end()
        ))
    }
}

fn seconds_in(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is out of range {min}..={max} seconds")),
        Err(e) => Err(e.to_string()),
    }
}

/// Lambda's rule for function names (and near enough for regions): 1 to `max` ASCII letters,
/// digits and `extra`. It also keeps the ARN a valid header value.
fn name_like(max: usize, extra: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s| {
        let ok = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
        if ok && (1..=max).contains(&s.len()) {
            Ok(s.to_owned())
        } else {
            Err(format!("expected 1 to {max} letters, digits or {extra:?}"))
        }
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Checks what clap cannot: paths that must exist. A bad one is a usage error (exit 2), named
/// by its flag.
fn existing(flag: &str, path: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|e| {
        Args::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value '{}' for '{flag}': {e}", path.display()),
            )
            .exit()
    })
}

/// The environment `rapid` runs, and the function the invoke API serves.
fn config(args: Args) -> (EnvironmentConfig, Function) {
    let Some(runtime) = &args.runtime else {
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--runtime <RUNTIME> is required (or --cluster)",
            )
            .exit()
    };
    let mut config = EnvironmentConfig::new(existing("--runtime <RUNTIME>", runtime));
    if let Some(root) = &args.task_root {
        config.task_root = existing("--task-root <TASK_ROOT>", root);
    }
    config.runtime_args = args.args;
    config.handler = args.handler;
    config.timeout = Duration::from_secs_f64(args.timeout);
    config.init_timeout = Duration::from_secs_f64(args.init_timeout);
    config.memory_mb = args.memory;
    config.function_name = args.function_name;
    config.region = args.region;
    config.init_type = args.init_type;
    config.environment = args.env;
    config.extensions_dir = args
        .extensions_dir
        .as_deref()
        .map(|dir| existing("--extensions-dir <EXTENSIONS_DIR>", dir));
    // What GetFunction describes: the flags in function.json's terms (Lambda's timeout is
    // whole seconds).
    let mut described = FunctionConfig::with_handler(config.handler.clone());
    described.function_name = config.function_name.clone();
    described.memory_mb = config.memory_mb;
    // Within 1..=900 (the flag's range), so the cast loses nothing.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let timeout_secs = args.timeout.ceil() as u32;
    described.timeout_secs = timeout_secs;
    described.initialization_type = config.init_type;
    described.environment = config.environment.iter().cloned().collect();
    described.maximum_retry_attempts = args.maximum_retry_attempts;
    described.maximum_event_age_secs = args.maximum_event_age;
    let function = Function {
        name: config.function_name.clone(),
        version: config.function_version.clone(),
        region: config.region.clone(),
        events: AsyncPolicy {
            retry_delay: Duration::from_secs_f64(args.async_retry_delay),
            maximum_retry_attempts: args.maximum_retry_attempts,
            maximum_event_age: Duration::from_secs(u64::from(args.maximum_event_age)),
            on_failure_dir: args.on_failure_dir,
        },
        config: described,
        code: None,
    };
    (config, function)
}

/// Finds the cgroups each runtime will be confined in, removes what crashed servers left, and
/// says in one line which protections are in force, or which are off and why (on stdout, with
/// the function's log, where whoever reads the log sees it).
fn confine_sandboxes(memory_mb: u32) -> Option<Arc<Cgroups>> {
    match Cgroups::detect("rapid") {
        Ok(cgroups) => {
            let removed = cgroups.clean_leftovers();
            let leftovers = match removed.len() {
                0 => String::new(),
                n => format!(
                    "; removed {n} left by stopped servers: {}",
                    removed.join(" ")
                ),
            };
            println!(
                "lambda-local: sandbox: {}: memory {memory_mb} MB (Runtime.OutOfMemory beyond), {} processes and threads, every descendant killed on reset{leftovers}",
                cgroups.describe(),
                rapid::cgroup::MAX_PROCESSES
            );
            Some(Arc::new(cgroups))
        }
        Err(why) => {
            println!(
                "lambda-local: sandbox: no cgroup ({why}); OFF: the memory limit and Runtime.OutOfMemory, the process limit, the kill of descendants that left the process group; Max Memory Used is read from /proc"
            );
            None
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    logging::init("lambda-local", log::LevelFilter::Info);
    let args = Args::parse();
    if args.cluster.enabled() {
        return cluster_host(args).await;
    }
    let (listen, runtime_api) = (args.listen, args.runtime_api);
    let event_store = args.event_store.clone();
    let limits = args.endpoint.limits()?;
    if let Some(dir) = &args.on_failure_dir {
        front_door::async_invoke::check_destination(dir)
            .with_context(|| format!("--on-failure-dir {}", dir.display()))?;
    }
    let (mut config, function) = config(args);
    let api_limits = ConnectionLimits::runtime_api(config.timeout.max(config.init_timeout));
    let cgroups = confine_sandboxes(config.memory_mb);
    config.cgroups = cgroups.clone();

    let invoke_listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let api_listener = TcpListener::bind(runtime_api)
        .await
        .with_context(|| format!("--runtime-api {runtime_api}"))?;
    let api_addr = api_listener.local_addr()?;
    let invoke_addr = invoke_listener.local_addr()?;
    let default_store = event_store.is_none();
    let store_path = event_store.unwrap_or_else(|| {
        let name = format!("lambda-local-{}-{}", invoke_addr.ip(), invoke_addr.port());
        std::env::temp_dir().join(name).join("events")
    });
    let (events, recovery) = EventStore::open(&store_path).context("--event-store")?;
    if let Some(damage) = recovery.describe() {
        eprintln!(
            "lambda-local: the event store {} was damaged: {damage}",
            store_path.display()
        );
    }
    let store = events.clone();
    // Watch the signals before anything starts, so none is missed.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Tests and scripts wait for this exact line; with port 0 it is the only way to learn the
    // ports. One write, so that a reader never sees half of it (eprintln! may write in pieces).
    let ready = proto::readiness::Listening {
        invoke: invoke_addr,
        runtime_api: Some(api_addr),
    }
    .line("lambda-local");
    std::io::Write::write_all(&mut std::io::stderr(), ready.as_bytes())?;

    let tails = LogTails::default();
    let sandbox = Handle::new(config, api_addr, tails.around(Arc::new(StdoutLog)), None);
    let api = sandbox.clone();
    tokio::spawn(http_server::serve(
        api_listener,
        api_limits,
        move |request| rapid::runtime_api::handle(api.clone(), request),
    ));
    let local = LocalSandbox {
        handle: sandbox.clone(),
        function,
    };
    let router = Router::new([Endpoint::new(local, tails, Some(events))]);
    tokio::spawn(http_server::serve_with(
        invoke_listener,
        limits,
        move |request| router.clone().handle(request),
    ));
    sandbox.start();

    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    // As Lambda spins an environment down: SHUTDOWN to the extensions, with its deadline.
    sandbox.shutdown_gracefully().await;
    if let Some(cgroups) = &cgroups {
        for name in cgroups.remove_own() {
            log::warn!("cannot remove the sandbox cgroup {name}: processes remain");
        }
    }
    // A default store with nothing left in it is not worth keeping in the temp directory.
    if default_store && store.is_empty() {
        drop(store);
        if let Some(dir) = store_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// `--cluster`: a host of the cluster, serving every function deployed there in local
/// environments of its own, and routing invokes to the other hosts.
async fn cluster_host(args: Args) -> anyhow::Result<()> {
    const PROGRAM: &str = "lambda-local";
    let limits = args.endpoint.limits()?;
    if let Some(dir) = &args.on_failure_dir {
        front_door::async_invoke::check_destination(dir)
            .with_context(|| format!("--on-failure-dir {}", dir.display()))?;
    }
    let id = cluster::registry::host_id(args.host_id.as_deref()).map_err(anyhow::Error::msg)?;
    let retry_delay = Duration::from_secs_f64(args.async_retry_delay);
    let invoke_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let invoke_addr = invoke_listener.local_addr()?;
    let (connection, on_event) = cluster::host::connection_watch(PROGRAM);
    let joined = Cluster::connect(&args.cluster, &format!("{PROGRAM} {id}"), on_event).await?;
    let default_work_dir = args.work_dir.is_none();
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("lambda-local-{id}")));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("--work-dir {}", work_dir.display()))?;
    let cgroups = confine_sandboxes_of_many();
    let tails = LogTails::default();
    let pool = LocalPool::new(
        usize::try_from(args.max_concurrency)?,
        work_dir.clone(),
        joined.artifacts.clone(),
        cgroups.clone(),
        args.region.clone(),
        tails.around(Arc::new(StdoutLog)),
    );
    let settings = HostSettings {
        id: id.clone(),
        invoke_url: args
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{invoke_addr}")),
        region: args.region.clone(),
        retry_delay,
        on_failure_dir: args.on_failure_dir.clone(),
        event_workers: usize::try_from(args.max_concurrency)?,
        program: PROGRAM.into(),
    };
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let node = Node::start(joined, connection, Arc::new(pool.clone()), tails, settings)
        .await
        .context("joining the cluster")?;
    let front = Front::new(Arc::clone(&node));
    tokio::spawn(http_server::serve_with(
        invoke_listener,
        limits,
        move |request| front.clone().handle(request),
    ));
    // Tests and scripts wait for this exact line (see the single-function form above).
    let ready = format!(
        "lambda-local: listening invoke={invoke_addr} cluster-host={id} cluster={}\n",
        args.cluster.cluster.join(",")
    );
    std::io::Write::write_all(&mut std::io::stderr(), ready.as_bytes())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    node.stop().await;
    pool.shutdown();
    if let Some(cgroups) = &cgroups {
        for name in cgroups.remove_own() {
            eprintln!("lambda-local: cannot remove the sandbox cgroup {name}: processes remain");
        }
    }
    if default_work_dir {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    Ok(())
}

/// The cgroups of a cluster host's environments, said as for one (each function's own memory
/// size applies to its environments).
fn confine_sandboxes_of_many() -> Option<Arc<Cgroups>> {
    match Cgroups::detect("rapid") {
        Ok(cgroups) => {
            let removed = cgroups.clean_leftovers();
            println!(
                "lambda-local: sandbox: {}: each environment its function's memory (Runtime.OutOfMemory beyond), {} processes and threads, every descendant killed on reset{}",
                cgroups.describe(),
                rapid::cgroup::MAX_PROCESSES,
                if removed.is_empty() { String::new() } else { format!("; removed {} left by stopped servers", removed.len()) }
            );
            Some(Arc::new(cgroups))
        }
        Err(why) => {
            println!(
                "lambda-local: sandbox: no cgroup ({why}); the memory and process limits are OFF"
            );
            None
        }
    }
}
