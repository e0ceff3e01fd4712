//! Local mode: one function environment on the host, its runtime served the Runtime API, invoked
//! through the AWS Runtime Interface Emulator's endpoint.

use anyhow::Context;
use clap::Parser;
use rapid::{FunctionConfig, Handle, InitType, StdoutLog};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    about = "Run a Lambda function locally: the Runtime API for its runtime, the emulator's invoke endpoint for you"
)]
struct Args {
    /// The runtime executable: our `bootstrap`, or any Lambda runtime.
    #[arg(long)]
    runtime: PathBuf,
    /// An argument for the runtime (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// `_HANDLER` for the runtime.
    #[arg(long, default_value = "handler")]
    handler: String,
    /// `LAMBDA_TASK_ROOT` and the runtime's working directory [default: the runtime's directory].
    #[arg(long)]
    task_root: Option<PathBuf>,
    /// Function timeout in seconds.
    #[arg(long, default_value_t = 3.0, value_parser = seconds_in(0.001, 900.0))]
    timeout: f64,
    /// How long init may take, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds_in(0.001, 900.0))]
    init_timeout: f64,
    /// Memory size in MB, as configured on Lambda.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(128..=10240))]
    memory: u32,
    #[arg(long, default_value = "function")]
    function_name: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[arg(long, value_enum, default_value = "on-demand")]
    init_type: InitType,
    /// An environment variable for the function, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Address of the invoke endpoint (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the Runtime API (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9001")]
    runtime_api: SocketAddr,
    /// Directory for on-failure destination records of failed asynchronous invokes.
    #[arg(long)]
    on_failure_dir: Option<PathBuf>,
    /// Seconds between retries of a failed asynchronous invoke.
    #[arg(long, default_value_t = 1.0, value_parser = seconds_in(0.0, 3600.0))]
    async_retry_delay: f64,
}

fn seconds_in(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is out of range {min}..={max} seconds")),
        Err(e) => Err(e.to_string()),
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = std::fs::canonicalize(&args.runtime)
        .with_context(|| format!("--runtime {}", args.runtime.display()))?;
    let mut config = FunctionConfig::new(runtime);
    if let Some(root) = &args.task_root {
        config.task_root = std::fs::canonicalize(root)
            .with_context(|| format!("--task-root {}", root.display()))?;
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
    config.on_failure_dir = args.on_failure_dir;
    config.async_retry_delay = Duration::from_secs_f64(args.async_retry_delay);

    let invoke_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let api_listener = TcpListener::bind(args.runtime_api)
        .await
        .with_context(|| format!("--runtime-api {}", args.runtime_api))?;
    let api_addr = api_listener.local_addr()?;
    eprintln!(
        "lambda-local: listening invoke={} runtime-api={api_addr}",
        invoke_listener.local_addr()?
    );

    let sandbox = Handle::new(config, api_addr, Arc::new(StdoutLog), None);
    sandbox.start();
    let api = sandbox.clone();
    tokio::spawn(rapid::http::serve(api_listener, move |request| {
        rapid::runtime_api::handle(api.clone(), request)
    }));
    let invoke = sandbox.clone();
    tokio::spawn(rapid::http::serve(invoke_listener, move |request| {
        rapid::invoke_http::handle(invoke.clone(), request)
    }));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    sandbox.shutdown();
    Ok(())
}
