//! The `vmm` configuration: a Firecracker-style `--config-file` JSON and the command-line flags
//! on top of it, parsed, merged and validated as `vmm` does. The input is the file, a NUL, then
//! the arguments separated by NULs.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use vmm::config::{VmConfig, VmFlags};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    vm: VmFlags,
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let file = parts.next().unwrap_or_default();
    let file = std::str::from_utf8(file)
        .ok()
        .and_then(|text| VmConfig::from_json(text).ok());
    if let Some(config) = &file {
        // What parses serializes back to a file that parses to the same configuration.
        let text = serde_json::to_string(config).expect("a config serializes");
        assert_eq!(
            &VmConfig::from_json(&text).expect("its own output parses"),
            config
        );
    }
    let args = parts.filter_map(|arg| std::str::from_utf8(arg).ok());
    let Ok(cli) = Cli::try_parse_from(std::iter::once("vmm").chain(args)) else {
        return;
    };
    if cli.vm.config_file.is_some() {
        // The file comes from the input, not from the file system.
        return;
    }
    if let Ok(config) = cli.vm.apply(file) {
        let _ = config.validate();
    }
});
