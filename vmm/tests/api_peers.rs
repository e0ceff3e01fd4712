//! The API driven by others than our own client, each as a peer we do not change: `curl
//! --unix-socket` in scripts/vmm-api-demo.sh (the vmm/README.md example), with the tiny guest
//! and with the real Linux guest, and the firecracker-python package from PyPI. Each boots,
//! pauses, snapshots, and restores in a second `vmm` process through the API alone.

mod api_support;
mod common;

use api_support::check_contract;
use common::guest;
use integration_tests::{
    guest_artifact, ok_or_skip, peers::venv_python, require_kvm, skip, workspace_root,
};
use std::path::{Path, PathBuf};
use std::process::Command;

fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("api-peers")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether curl is installed; `Err` says it is not.
fn curl() -> Result<(), String> {
    match Command::new("curl").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => Err("curl is not installed (scripts/test.sh installs it)".into()),
    }
}

/// Runs the demo script on `kernel` (and `initrd`), waiting for `wait_for` on the console;
/// returns its exchanges file.
fn run_demo(
    test: &str,
    kernel: &Path,
    initrd: Option<&Path>,
    mem: &str,
    wait_for: &str,
) -> PathBuf {
    let work = work_dir(test);
    let exchanges = work.join("exchanges.jsonl");
    let mut command = Command::new(workspace_root().join("scripts/vmm-api-demo.sh"));
    command
        .arg(kernel)
        .args(initrd)
        .env("VMM", env!("CARGO_BIN_EXE_vmm"))
        .env("WORK", &work)
        .env("MEM_MIB", mem)
        .env("WAIT_FOR", wait_for)
        .env("EXCHANGES", &exchanges);
    let output = command.output().expect("running scripts/vmm-api-demo.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "the curl demo failed:\n{text}");
    assert!(text.contains("restored: {\"state\":\"Running\""), "{text}");
    exchanges
}

#[test]
fn curl_boots_pauses_snapshots_and_restores_the_tiny_guest() {
    let test = "curl_boots_pauses_snapshots_and_restores_the_tiny_guest";
    require_kvm!();
    ok_or_skip!(curl());
    let exchanges = run_demo(test, &guest("counter"), None, "32", "^tick ");
    check_contract(&[&exchanges]);
}

#[test]
fn curl_boots_pauses_snapshots_and_restores_the_linux_guest() {
    let test = "curl_boots_pauses_snapshots_and_restores_the_linux_guest";
    require_kvm!();
    ok_or_skip!(curl());
    let (Some(kernel), Some(initrd)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_INITRAMFS"),
    ) else {
        return;
    };
    // The guest's init is up: it runs in user space and prints its first line.
    let exchanges = run_demo(test, &kernel, Some(&initrd), "128", "^init: ");
    check_contract(&[&exchanges]);
}

#[test]
fn a_published_firecracker_client_drives_the_vmm() {
    let test = "a_published_firecracker_client_drives_the_vmm";
    require_kvm!();
    let python = venv_python();
    let installed = Command::new(&python)
        .args(["-c", "import firecracker.api"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        skip!(
            "firecracker-python is not installed next to {}; scripts/test.sh installs it \
             (vmm/api/requirements.txt)",
            python.display()
        );
    }
    let output = Command::new(&python)
        .arg(workspace_root().join("vmm/api/firecracker_peer.py"))
        .arg(env!("CARGO_BIN_EXE_vmm"))
        .arg(guest("counter"))
        .arg(work_dir(test))
        .output()
        .expect("running the firecracker-python peer");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "firecracker-python failed:\n{text}"
    );
    assert!(text.contains("firecracker-python drove the vmm"), "{text}");
}

/// The first `sh` block of vmm/README.md's API section, as written.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("vmm/README.md")).unwrap();
    let section = &readme[readme
        .find("## Firecracker's API")
        .expect("the API section")..];
    let block = &section[section.find("```sh\n").expect("an sh block") + 6..];
    block[..block.find("```").unwrap()].to_owned()
}

#[test]
fn the_readme_example_runs_as_written() {
    let test = "the_readme_example_runs_as_written";
    require_kvm!();
    ok_or_skip!(curl());
    let work = work_dir(test);
    std::os::unix::fs::symlink(guest("counter"), work.join("vmlinux")).unwrap();
    // The tiny guest ignores its initrd; the loader still places it.
    std::fs::write(work.join("rootfs.cpio"), vec![0u8; 4096]).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_vmm")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &readme_example()])
        .current_dir(&work)
        .env("PATH", path)
        .output()
        .expect("running the README example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    // Every PUT and PATCH answered 204 (no body): the output is the three GETs' answers.
    assert!(stdout.contains(r#""state":"Running""#), "{text}");
    assert!(!stdout.contains("fault_message"), "{text}");
    assert!(stdout.contains(r#""started_from":"snapshot""#), "{text}");
    assert!(work.join("vm.state.manifest.json").exists());
}
