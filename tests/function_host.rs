//! The function host as a new user meets it: started with relative paths from its own
//! directory (jailed, as root), refused at start when the host or a function cannot work, a
//! burst of AWS SDK callers whose read timeout is shorter than a boot, stopped by SIGTERM during
//! a boot, restarted on its state directory (a restore, no boot), a 5 MB echo, and a `kill -9`
//! whose leftovers the next start removes.
//!
//! One boot in all (the SnapStart snapshot's); every other environment is a restore of it.
//! Needs `GUEST_VMLINUX`, `GUEST_SNAPSTART_ROOTFS` and `GUEST_SNAPSTART_FUNCTION_CONFIG`
//! (scripts/test.sh builds and sets them), `/dev/kvm`, and boto3 in the test virtualenv.

use integration_tests::peers::venv_python;
use integration_tests::server::LocalServer;
use integration_tests::{
    guest_artifact, guest_line, host_binary, ok_or_skip, process_gone, require, require_kvm, says,
    service_line, wait_until, workspace_root,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A fresh directory under the target's temp dir.
fn fresh(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes function `name` into `dir/functions/name`: `config` renamed, with `extra` keys, and
/// its image linked as `image_name`.
fn function(dir: &Path, name: &str, config: &Path, image: &Path, extra: serde_json::Value) {
    let function_dir = dir.join("functions").join(name);
    std::fs::create_dir_all(&function_dir).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
    json["function_name"] = json!(name);
    for (key, value) in extra.as_object().unwrap() {
        json[key] = value.clone();
    }
    std::fs::write(function_dir.join("function.json"), json.to_string()).unwrap();
    let link = function_dir.join(format!("{name}.ext4"));
    std::os::unix::fs::symlink(image, link).unwrap();
}

/// `lambda-vm` started in `dir` with relative paths only, as the README shows it.
fn lambda_vm(dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(host_binary("lambda-vm"));
    command.current_dir(dir).args([
        "--kernel",
        "vmlinux",
        "--functions-dir",
        "functions/",
        "--state-dir",
        "state",
        "--work-dir",
        "work",
        "--listen",
        "127.0.0.1:0",
    ]);
    command.args(extra);
    command
}

/// Runs `command` until it exits (within 60 s, else it is killed and the test fails); returns
/// whether it succeeded and everything it printed.
fn run_to_exit(mut command: Command) -> (bool, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lambda-vm starts");
    let status =
        integration_tests::wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("lambda-vm's output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status.unwrap_or_else(|| panic!("lambda-vm did not exit:\n{text}"));
    (status.success(), text)
}

/// A start that must be refused: it exits non-zero, says `expected` in a `lambda-vm: error:`
/// line, and never listens.
fn refused(command: Command, expected: &str) {
    let (succeeded, output) = run_to_exit(command);
    assert!(!succeeded, "lambda-vm started:\n{output}");
    let error = output
        .lines()
        .find(|l| l.starts_with("lambda-vm: error: "))
        .unwrap_or_else(|| panic!("no error line:\n{output}"));
    assert!(error.contains(expected), "{error}\n(expected: {expected})");
    assert!(!output.contains("listening"), "{output}");
    assert!(!output.contains("Failed {"), "a debug dump:\n{output}");
}

/// Start-up checks: each refusal exits non-zero naming what is wrong and where, before
/// `listening`. A missing KVM device is simulated with `--kvm-device`; nothing boots.
#[test]
fn start_up_refuses_what_cannot_work_and_names_it() {
    let Some(binary) = require(host_binary("lambda-vm"), "lambda-vm") else {
        return;
    };
    let _ = binary;
    let dir = fresh("refusals");
    // A kernel-shaped ELF header and an ext4-shaped image: enough for the checks, never booted.
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    (elf[4], elf[5]) = (2, 1);
    elf[16..18].copy_from_slice(&2u16.to_le_bytes());
    elf[18..20].copy_from_slice(&62u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    std::fs::write(dir.join("vmlinux"), &elf).unwrap();
    let mut ext4 = vec![0u8; 4096];
    ext4[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    let image = dir.join("hello.ext4");
    std::fs::write(&image, &ext4).unwrap();
    let config = dir.join("hello.json");
    std::fs::write(&config, r#"{"function_name": "hello", "handler": "h"}"#).unwrap();
    function(&dir, "hello", &config, &image, json!({}));

    let no_kvm = dir.join("no-kvm");
    refused(
        lambda_vm(&dir, &["--kvm-device", "no-kvm"]),
        &format!("KVM {}: not present", no_kvm.display()),
    );
    require_kvm!();
    let text = fresh("refusals-kernel");
    std::fs::write(
        text.join("vmlinux"),
        "#!/bin/sh\necho not a kernel\n".repeat(8),
    )
    .unwrap();
    function(&text, "hello", &config, &image, json!({}));
    refused(
        lambda_vm(&text, &[]),
        &format!("kernel {}: not an ELF file", text.join("vmlinux").display()),
    );

    let other = fresh("refusals-image");
    std::fs::copy(dir.join("vmlinux"), other.join("vmlinux")).unwrap();
    let text = other.join("notes.ext4");
    std::fs::write(&text, "not an image").unwrap();
    function(&other, "notes", &config, &text, json!({}));
    refused(
        lambda_vm(&other, &[]),
        &format!(
            "image {}: neither an ext4 image nor a newc cpio archive",
            other.join("functions/notes/notes.ext4").display()
        ),
    );

    let big = fresh("refusals-memory");
    std::fs::copy(dir.join("vmlinux"), big.join("vmlinux")).unwrap();
    function(&big, "big", &config, &image, json!({"memory_mb": 4096}));
    refused(
        lambda_vm(&big, &[]),
        "function big: memory_mb 4096 is more than the 3072 MiB",
    );
}

/// The service's scratch directory, from its start-up line.
fn scratch_of(server: &LocalServer) -> PathBuf {
    let line = server.wait_for_log(Duration::from_secs(10), |l| {
        l.starts_with("lambda-vm: state in ")
    });
    let scratch = line
        .split(", scratch in ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" (removed at exit)"))
        .unwrap_or_else(|| panic!("{line}"));
    PathBuf::from(scratch)
}

/// What a service (process `pid`, scratch directory `scratch`) may have left: its scratch
/// directory, `vmm` processes running from it, its jail cgroups, its network claims.
fn left_by(pid: u32, scratch: &Path) -> Vec<String> {
    let mut left = Vec::new();
    if scratch.exists() {
        left.push(format!("directory {}", scratch.display()));
    }
    let scratch_text = scratch.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("vmm") && cmdline.contains(&scratch_text) {
            left.push(format!(
                "process {}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    for cgroup in integration_tests::jail_cgroups_of(pid) {
        left.push(format!("cgroup {}", cgroup.display()));
    }
    for entry in std::fs::read_dir("/run/lambda-vm/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if owner.split_whitespace().next() == Some(&pid.to_string()) {
            let slot = entry.file_name().to_string_lossy().into_owned();
            left.push(format!("network claim {slot}"));
            if Path::new("/run/netns").join(format!("lvm-{slot}")).exists() {
                left.push(format!("network namespace lvm-{slot}"));
            }
        }
    }
    left
}

/// `GET /status` of one function.
fn function_status(server: &LocalServer, name: &str) -> serde_json::Value {
    let url = format!("http://{}/status", server.invoke_addr);
    let reply = server.request("GET", &url, &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["functions"][name].clone()
}

fn count(status: &serde_json::Value, key: &str) -> u64 {
    status[key].as_u64().unwrap_or(0)
}

/// Runs tests/aws_clients/burst.py: `callers` boto3 invokes at once, each with a read timeout
/// of `read_timeout` s and up to `attempts` tries. Returns each caller's answer.
fn boto3_burst(
    server: &LocalServer,
    name: &str,
    callers: u32,
    read_timeout: u32,
    attempts: u32,
) -> Vec<serde_json::Value> {
    let script = workspace_root().join("tests/aws_clients/burst.py");
    let output = Command::new(venv_python())
        .arg(script)
        .arg(format!("http://{}", server.invoke_addr))
        .arg(name)
        .args([callers, read_timeout, attempts].map(|n| n.to_string()))
        .output()
        .expect("running the boto3 burst");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Whether boto3 is in the test virtualenv; `Err` says it is not.
fn boto3() -> Result<(), String> {
    let python = venv_python();
    let installed = Command::new(&python)
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    Err(format!(
        "boto3 is not installed for {}; scripts/test.sh installs it",
        python.display()
    ))
}

/// The life of one service directory, as a new user lives it: relative paths, jailed; SIGTERM
/// during the first boot; a burst of boto3 callers who time out and retry while the snapshot
/// is taken; a restart that restores from the state directory; a 5 MB echo; `kill -9`, and the
/// next start removing what that left.
#[test]
fn a_service_from_relative_paths_survives_a_burst_stops_restarts_and_cleans_up() {
    require_kvm!();
    ok_or_skip!(boto3());
    let (Some(kernel), Some(image), Some(config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let dir = fresh("first-try");
    std::os::unix::fs::symlink(&kernel, dir.join("vmlinux")).unwrap();
    function(&dir, "burst", &config, &image, json!({}));
    let start = |extra: &[&str]| {
        // Without networks: each environment's namespace, veth and rules cost process starts
        // this test does not need (tests/network.rs covers them, their cleanup included).
        let mut args = vec!["--log-dir", "logs", "--stop-grace", "5", "--no-network"];
        args.extend_from_slice(extra);
        let server = LocalServer::from_command(lambda_vm(&dir, &args), "lambda-vm", true);
        server.wait_for_error_line(Duration::from_secs(30), |l| l == "lambda-vm: ready");
        server
    };

    // 1. SIGTERM while the first environment boots (for the snapshot): the boot ends at once,
    // the service exits cleanly within its grace time, and nothing of it is left.
    let mut first = start(&[]);
    let scratch = scratch_of(&first);
    let pending = first.request_in_background("POST", &first.function_url("burst"), b"{}");
    let console = dir.join("logs/burst.1.console");
    assert!(
        wait_until(Duration::from_secs(120), || std::fs::metadata(&console)
            .is_ok_and(|m| m.len() > 0)),
        "the first boot wrote no console line to {}",
        console.display()
    );
    assert_eq!(count(&function_status(&first, "burst"), "initializing"), 1);
    let pid = first.pid();
    let status = first
        .terminate(Duration::from_secs(20))
        .expect("lambda-vm exited within its grace time after SIGTERM during a boot");
    assert!(status.success(), "{status:?}");
    let _ = pending.join();
    assert!(
        first
            .errors()
            .iter()
            .any(|l| l.starts_with("lambda-vm: stopping (SIGTERM)")),
        "{:?}",
        first.errors()
    );
    assert_eq!(left_by(pid, &scratch), Vec::<String>::new());

    // 2. A burst of 10 boto3 callers whose read timeout (10 s) is shorter than the boot and
    // snapshot: they time out and resend while it runs, and every one is answered, by no more
    // environments than callers (each start serves whichever request waits). Only a caller
    // whose invocation itself outlasted its timeout (a loaded machine) may have needed another:
    // its invocation ran on, as on Lambda, and its retry is a request of its own.
    let mut second = start(&[]);
    let scratch = scratch_of(&second);
    let answers = boto3_burst(&second, "burst", 10, 10, 40);
    for (caller, answer) in answers.iter().enumerate() {
        assert_eq!(answer["status"], 200, "caller {caller}: {answer}");
        assert_eq!(answer["payload"], json!({ "caller": caller }), "{answer}");
    }
    let retried = answers
        .iter()
        .filter(|a| a["attempts"].as_u64() > Some(1))
        .count();
    assert!(retried > 0, "no caller timed out and retried: {answers:?}");
    // Invocations whose callers left may still be running: they are counted once they end.
    assert!(wait_until(Duration::from_secs(600), || {
        let status = function_status(&second, "burst");
        count(&status, "busy") + count(&status, "initializing") == 0
    }));
    let status = function_status(&second, "burst");
    let environments = ["initializing", "busy", "idle"]
        .iter()
        .map(|k| count(&status, k))
        .sum::<u64>();
    // A resend can reach the service before it has seen its first attempt's connection close
    // (the watch for a caller who hung up takes up to a second): for that moment the request is
    // outstanding twice. One such overlap was seen once, at load average 15; more would mean
    // starts are tied to callers again. Invocations that outlasted their caller's timeout (a
    // loaded machine) each free a resend to need one more.
    let abandoned = count(&status, "abandoned_invocations");
    assert!(
        environments <= 11 + abandoned,
        "{environments} environments: {status}"
    );
    let logs = second.logs();
    let snapshots = logs
        .iter()
        .filter(|l| says(l, "burst", "SnapStart snapshot taken"))
        .count();
    assert_eq!(snapshots, 1, "{logs:#?}");
    // Every line is the service's own start-up line, or names the function (and the
    // environment where there is one).
    let start_up = [
        "lambda-vm: check: ",
        "lambda-vm: state in ",
        "lambda-vm: removed ",
        "lambda-vm: isolation: ",
        "lambda-vm: logs in ",
    ];
    for line in &logs {
        if start_up.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        match service_line(line) {
            Some((name, _)) => assert_eq!(name, "burst", "{line}"),
            None => assert!(
                guest_line(line) != line && line.starts_with("burst["),
                "a line that names no function: {line}"
            ),
        }
    }
    let own_log = std::fs::read_to_string(dir.join("logs/burst.log")).unwrap();
    assert!(own_log.contains("] START RequestId: "), "{own_log}");
    assert!(own_log.contains("lambda-vm: burst["), "{own_log}");
    let pid = second.pid();
    let status = second
        .terminate(Duration::from_secs(30))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(left_by(pid, &scratch), Vec::<String>::new());

    // 3. A restart on the same state directory restores the snapshot: no boot. A 5 MB request
    // is echoed whole (how long it takes is measured by scripts/bench-payload.sh).
    let mut third = start(&[]);
    let scratch = scratch_of(&third);
    third.assert_echo(&json!({"after": "a restart"}));
    let logs = third.logs();
    assert!(
        logs.iter().any(|l| says(l, "burst", "microVM restored")),
        "{logs:#?}"
    );
    assert!(
        !logs
            .iter()
            .any(|l| says(l, "burst", "SnapStart snapshot taken")
                || says(l, "burst", "scaled out: microVM booted")),
        "{logs:#?}"
    );
    let big = json!({ "pad": "x".repeat(5 * 1024 * 1024) }).to_string();
    let reply = third.request("POST", &third.function_url("burst"), &[], big.as_bytes());
    assert_eq!(
        reply.status,
        200,
        "{}",
        &reply.text()[..reply.body.len().min(300)]
    );
    assert!(reply.function_error.is_none());
    assert!(
        reply.body == big.as_bytes(),
        "the 5 MB echo came back changed"
    );

    // 4. kill -9: the service cleans up nothing; its vmm dies with it; the next start removes
    // its scratch directory, its cgroups and its networks.
    let vmms: Vec<u32> = function_status(&third, "burst")["idle_vmm_pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| u32::try_from(p.as_u64()?).ok())
        .collect();
    assert!(!vmms.is_empty());
    let pid = third.pid();
    third.kill();
    assert!(
        wait_until(Duration::from_secs(10), || vmms
            .iter()
            .all(|&p| process_gone(p))),
        "the vmm processes outlived their service"
    );
    assert!(
        scratch.exists(),
        "a killed service cannot remove its scratch"
    );
    let mut fourth = start(&[]);
    let removed = format!(
        "lambda-vm: removed {}, left by a service that is gone",
        scratch.display()
    );
    assert!(fourth.logs().contains(&removed), "{:#?}", fourth.logs());
    assert_eq!(left_by(pid, &scratch), Vec::<String>::new());
    let status = fourth
        .terminate(Duration::from_secs(30))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
}
