//! `vmm`: boots one microVM from flags or a Firecracker-style `--config-file` and runs it until
//! the guest stops. The exit code says how it ended: 0 guest shutdown (i8042 reset), 1 VMM
//! error (including bad configuration), 2 usage error, 3 guest crash.

use clap::Parser;
use std::io::Write;
use vmm::config::{self, VmFlags};
use vmm::exit::VmExit;

#[derive(Parser)]
#[command(name = "vmm", version, about = "Boot a KVM microVM")]
struct Args {
    #[command(flatten)]
    vm: VmFlags,
    /// Validate the configuration, print what it resolves to, and exit without booting.
    #[arg(long)]
    dry_run: bool,
    /// Log level of the VMM's own messages on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", env = "VMM_LOG")]
    log_level: log::LevelFilter,
}

fn main() {
    let args = Args::parse();
    vmm::logger::init(args.log_level);
    let exit = run(&args);
    match &exit {
        VmExit::Shutdown => {}
        VmExit::VmmError(why) => eprintln!("vmm: error: {why}"),
        VmExit::GuestCrash(why) => eprintln!("vmm: guest crashed: {why}"),
    }
    std::process::exit(exit.code());
}

fn run(args: &Args) -> VmExit {
    let config = match config::load(&args.vm) {
        Ok(config) => config,
        Err(e) => return VmExit::VmmError(format!("configuration: {e}")),
    };
    if args.dry_run {
        println!("{config:#?}");
        return VmExit::Shutdown;
    }
    let serial_out = config
        .serial
        .as_ref()
        .and_then(|s| s.serial_out_path.as_ref());
    let console: Box<dyn Write + Send> = match serial_out {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Box::new(file),
            Err(e) => {
                return VmExit::VmmError(format!("serial.serial_out_path {}: {e}", path.display()))
            }
        },
        None => Box::new(std::io::stdout()),
    };
    let microvm = match vmm::builder::boot(&config, console) {
        Ok(microvm) => microvm,
        Err(e) => return VmExit::VmmError(e.to_string()),
    };
    log::info!("kernel command line: {}", microvm.cmdline());
    let exit = microvm.wait(None).unwrap_or(VmExit::Shutdown);
    microvm.stop();
    exit
}
