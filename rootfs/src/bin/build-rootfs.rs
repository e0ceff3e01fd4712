//! `build-rootfs`: packs a function into a guest image. See rootfs/README.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use proto::FunctionConfig;
use rootfs::builder::{self, BuildOptions, Ext4Output};

/// Builds a reproducible initramfs (uncompressed newc cpio) and optionally an ext4 image for one
/// function: /init, /var/runtime/bootstrap, the function in /var/task, layers merged into /opt and
/// the validated config in /etc/lambda/function.json.
#[derive(Debug, Parser)]
#[command(name = "build-rootfs", version)]
struct Args {
    /// Static init binary, installed as /init.
    #[arg(long, value_name = "PATH", required_unless_present = "print_config")]
    init: Option<PathBuf>,
    /// Static runtime binary, installed as /var/runtime/bootstrap.
    #[arg(long, value_name = "PATH", required_unless_present = "print_config")]
    bootstrap: Option<PathBuf>,
    /// Function directory, copied to /var/task.
    #[arg(long, value_name = "DIR")]
    function: PathBuf,
    /// Function config [default: DIR/function.json, DIR being --function].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// A layer merged into /opt: a directory, or a zip file as Lambda takes layers; repeat it,
    /// later layers override earlier ones (and these come after function.json's `layers`).
    #[arg(long = "layer", value_name = "DIR|ZIP")]
    layers: Vec<PathBuf>,
    /// A static busybox, installed as /bin/busybox with a /bin link per applet (/bin/sh among
    /// them).
    #[arg(long, value_name = "PATH")]
    busybox: Option<PathBuf>,
    /// Output initramfs (uncompressed newc cpio).
    #[arg(long, value_name = "PATH", required_unless_present = "print_config")]
    out: Option<PathBuf>,
    /// Also write an ext4 image of the same tree (needs e2fsprogs).
    #[arg(long, value_name = "PATH")]
    ext4: Option<PathBuf>,
    /// Size of the ext4 image [default: estimated from the content].
    #[arg(long, value_name = "N", requires = "ext4", value_parser = clap::value_parser!(u64).range(1..))]
    ext4_size_mb: Option<u64>,
    /// Timestamp of every entry, in seconds since the epoch.
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        value_name = "SECONDS",
        default_value_t = 0
    )]
    source_date_epoch: u32,
    /// Only validate the config and print it canonically (as it would go into the image).
    #[arg(long, conflicts_with_all = ["init", "bootstrap", "out", "ext4", "layers", "busybox"])]
    print_config: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("build-rootfs: error: {}", logging::Chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.print_config {
        let path = builder::config_path(&args.function, args.config.as_deref());
        let config = FunctionConfig::load(&path)?;
        print!("{}", String::from_utf8_lossy(&config.to_canonical_json()));
        return Ok(());
    }
    let options = BuildOptions {
        init: args.init.context("--init is required")?,
        bootstrap: args.bootstrap.context("--bootstrap is required")?,
        function_dir: args.function,
        config: args.config,
        layers: args.layers,
        busybox: args.busybox,
        out: args.out.context("--out is required")?,
        ext4: args.ext4.map(|path| Ext4Output {
            path,
            size_mb: args.ext4_size_mb,
        }),
        mtime: args.source_date_epoch,
    };
    let report = builder::build(&options)?;
    eprintln!(
        "build-rootfs: {} ({} entries, {} bytes) for function {}",
        options.out.display(),
        report.entries,
        report.cpio_bytes,
        report.config.function_name
    );
    println!("{}", options.out.display());
    if let Some(ext4) = &options.ext4 {
        println!("{}", ext4.path.display());
    }
    Ok(())
}
