//! Helpers of the tests that boot tiny hand-assembled guests (`tests/guests/*.S`).
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Assembles and links `guests/<name>.S` into a static ELF loaded at 2 MiB, as a vmlinux is.
pub fn guest(name: &str) -> PathBuf {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-guests");
    std::fs::create_dir_all(&out).unwrap();
    let object = out.join(format!("{name}.o"));
    let elf = out.join(name);
    let source = sources.join(format!("{name}.S"));
    run_tool(
        Command::new("as")
            .args(["--64", "-I"])
            .arg(&sources)
            .arg(&source)
            .arg("-o")
            .arg(&object),
    );
    run_tool(
        Command::new("ld")
            .args([
                "-static",
                "-nostdlib",
                "-N",
                "-Ttext=0x200000",
                "-e",
                "_start",
            ])
            .arg("--no-warn-rwx-segments")
            .arg(&object)
            .arg("-o")
            .arg(&elf),
    );
    elf
}

fn run_tool(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (install binutils: scripts/test.sh does)"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("running vmm")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `vmm` binary, for tests that drive it themselves.
pub fn vmm_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
}
