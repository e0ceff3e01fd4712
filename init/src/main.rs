//! The guest's PID 1. It sets up the machine, serves the Runtime API on 127.0.0.1:9001 to the
//! function's runtime, and relays invocations, logs and restores over the host link. Outside a VM
//! it runs as an ordinary process (no machine setup, a Unix socket instead of vsock). See
//! README.md.

mod config;
mod host_link;
mod link_log;
mod mounts;
mod net;
mod power;
mod reaper;
mod relay;
mod restore;
mod sys;
mod timing;

use config::{Options, OptionsError};
use logging::Chain;

fn main() {
    logging::init("init", log::LevelFilter::Info);
    let pid1 = std::process::id() == 1;
    let options = match Options::parse(std::env::args().skip(1), |k| std::env::var(k).ok(), pid1) {
        Ok(options) => options,
        Err(OptionsError::Help) => {
            println!("{}", config::USAGE);
            std::process::exit(0)
        }
        Err(e) => fatal(pid1, &format!("{e}\n{}", config::USAGE)),
    };
    for ignored in &options.ignored {
        log::warn!("ignoring argument {ignored:?}");
    }
    let function = config::load_function(&options)
        .unwrap_or_else(|e| fatal(options.system, &Chain(&e).to_string()));
    if options.system {
        setup(function.tmp_size_mb, function.networking);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(options.system, &format!("cannot start tokio: {e}")));
    let (system, runtime_api) = (options.system, options.runtime_api);
    // A task, not block_on's own future: a task woken by another is run from the queue, while
    // tokio polls a woken block_on future only after a non-blocking turn of the reactor (one
    // more epoll_wait each time, several times per invoke: measured with
    // scripts/bench-init-syscalls.sh).
    match runtime.block_on(async move { tokio::spawn(relay::run(options, function)).await }) {
        Ok(Ok(end)) => {
            log::info!("stopping: {end:?}");
            power::off(system, end.code())
        }
        Ok(Err(e)) => fatal(system, &format!("Runtime API on {runtime_api}: {e}")),
        Err(e) => fatal(system, &format!("init's relay failed: {e}")),
    }
}

/// Mounts, loopback, hostname, and the function's network interface if it has one. Failures
/// are reported and init goes on: the host hears about what breaks as a result.
fn setup(tmp_size_mb: u32, networking: bool) {
    if let Err(e) = mounts::mount_all(tmp_size_mb) {
        log::error!("{}", Chain(&e));
    }
    if let Err(e) = net::loopback_up() {
        log::warn!("cannot bring up lo: {e}");
    }
    if let Err(e) = net::set_hostname(net::HOSTNAME) {
        log::warn!("cannot set the hostname: {e}");
    }
    // No device: the host could not give this function networking and has said why.
    if networking && net::has_interface() {
        let started = std::time::Instant::now();
        match net::interface_up() {
            Ok(()) => log::info!("{} up in {:?}", net::INTERFACE, started.elapsed()),
            Err(e) => log::warn!("cannot set up {}: {e}", net::INTERFACE),
        }
    }
}

fn fatal(system: bool, message: &str) -> ! {
    log::error!("{message}");
    power::off(system, 1)
}
