//! `lambda-vm` killed with SIGKILL, then started again (another process, another pid) on the
//! same state and work directories, on real KVM (one boot, for the SnapStart snapshot; then
//! restores): the second start removes everything the dead service left
//! on the host (its jail cgroups, its environments' networks, its claims; its `vmm`s die
//! with it), and the asynchronous events the dead service had accepted run in the new one's
//! environments as they free, without a throttle. Then, in the same environment, a function
//! that takes more memory than its VM has is killed by the guest's OOM killer and the invoke
//! fails with `Runtime.OutOfMemory`, as in local mode (the test function's timeout is long:
//! under emulated KVM the guest kernel takes minutes to reclaim its way to the OOM kill).
//!
//! Needs root (the jail, cgroups, networks), `/dev/kvm` and the guest artefacts
//! (`GUEST_VMLINUX`, `GUEST_SNAPSTART_ROOTFS`, `GUEST_SNAPSTART_FUNCTION_CONFIG`;
//! scripts/test.sh builds them).

use integration_tests::server::LocalServer;
use integration_tests::{
    guest_artifact, guest_line, host_binary, jail_cgroups_of, process_gone, require_kvm,
    skip_unless, wait_until,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NET_CLAIMS: &str = "/run/lambda-vm/net";

/// The slots claimed in `dir` by process `pid`.
fn claims_of(dir: &str, pid: u32) -> Vec<u32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .is_ok_and(|owner| owner.split_whitespace().next() == Some(&pid.to_string()))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// What is left of the network of slot `slot`: its namespace, its host-side link, its table.
fn network_of(slot: u32) -> Vec<String> {
    let name = format!("lvm-{slot}");
    let mut left = Vec::new();
    if Path::new("/run/netns").join(&name).exists() {
        left.push(format!("namespace {name}"));
    }
    if Path::new("/sys/class/net").join(&name).exists() {
        left.push(format!("link {name}"));
    }
    let tables = Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if tables
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some(&name))
    {
        left.push(format!("table {name}"));
    }
    left
}

fn vmm_pids(server: &LocalServer) -> Vec<u32> {
    let url = format!("http://{}/status", server.invoke_addr);
    let status = server.request("GET", &url, &[], b"").json();
    let function = &status["functions"]["waits"];
    ["busy_vmm_pids", "idle_vmm_pids"]
        .iter()
        .flat_map(|key| function[key].as_array().cloned().unwrap_or_default())
        .filter_map(|p| u32::try_from(p.as_u64()?).ok())
        .collect()
}

#[test]
fn a_killed_service_leaves_nothing_its_events_run_in_the_next_and_oom_is_named() {
    require_kvm!();
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    skip_unless!(root, "the jail, its cgroups and the networks need root");
    let (Some(kernel), Some(rootfs), Some(config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let functions = tmp.path().join("functions");
    let function_dir = functions.join("waits");
    std::fs::create_dir_all(&function_dir).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    json["function_name"] = json!("waits");
    json["reserved_concurrency"] = json!(1);
    json["timeout_secs"] = json!(600);
    std::fs::write(function_dir.join("function.json"), json.to_string()).unwrap();
    std::os::unix::fs::symlink(&rootfs, function_dir.join("image.ext4")).unwrap();
    let service = |eager: bool| {
        let mut command = Command::new(host_binary("lambda-vm"));
        command
            .arg("--kernel")
            .arg(&kernel)
            .arg("--functions-dir")
            .arg(&functions)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("--work-dir")
            .arg(tmp.path().join("work"))
            .args(["--listen", "127.0.0.1:0"]);
        if eager {
            command.arg("--eager");
        } else {
            // The restarted service makes no network ahead: one made at once would take a
            // swept slot again before the check below.
            command.args(["--ready-networks", "0"]);
        }
        LocalServer::from_command(command, "lambda-vm", true)
    };

    let first = service(true);
    first.wait_for_error_line(Duration::from_secs(900), |l| l == "lambda-vm: ready");
    let ids: Vec<String> = (0..6)
        .map(|n| {
            let body = json!({"action": "sleep", "ms": 1000, "n": n}).to_string();
            let reply = first.invoke_raw(body.as_bytes(), &[("X-Amz-Invocation-Type", "Event")]);
            assert_eq!(reply.status, 202, "{}", reply.text());
            reply.id()
        })
        .collect();
    first.wait_for_log(Duration::from_secs(120), |l| {
        guest_line(l).starts_with("START")
    });
    let pid = first.pid();
    let vmms = vmm_pids(&first);
    let net_slots = claims_of(NET_CLAIMS, pid);
    assert!(!vmms.is_empty());
    assert!(!jail_cgroups_of(pid).is_empty(), "its vmm has cgroups");
    for slot in &net_slots {
        assert_eq!(network_of(*slot).len(), 3, "slot {slot}");
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
    let first_logs = first.logs();
    drop(first);
    assert!(
        wait_until(Duration::from_secs(10), || vmms
            .iter()
            .all(|p| process_gone(*p))),
        "a vmm outlived its service"
    );

    let mut second = service(false);
    second.wait_for_error_line(Duration::from_secs(60), |l| l == "lambda-vm: ready");
    assert_ne!(second.pid(), pid);
    // Before it listens, the second has removed what the first left.
    assert_eq!(jail_cgroups_of(pid), Vec::<PathBuf>::new());
    for slot in &net_slots {
        assert_eq!(network_of(*slot), Vec::<String>::new(), "slot {slot}");
    }
    assert_eq!(claims_of(NET_CLAIMS, pid), Vec::<u32>::new());

    // The events the first had not run wait for the second's one environment (reserved
    // concurrency 1), each as the one before frees it: none is throttled.
    let finished = |logs: &[String], id: &str| {
        logs.iter()
            .any(|l| guest_line(l).starts_with(&format!("REPORT RequestId: {id}")))
    };
    let all_ran = wait_until(Duration::from_secs(900), || {
        let logs = second.logs();
        ids.iter()
            .all(|id| finished(&first_logs, id) || finished(&logs, id))
    });
    let logs = second.logs();
    assert!(all_ran, "accepted events did not run: {logs:#?}");
    assert!(logs.iter().any(|l| l.contains("resuming")), "{logs:#?}");
    let throttles: Vec<&String> = logs.iter().filter(|l| l.contains("throttled")).collect();
    assert!(throttles.is_empty(), "{throttles:#?}");

    // More memory than the VM has (allocated a MiB at a time, so that none is refused outright):
    // the guest's OOM killer ends the runtime, and the invoke says so.
    let oom = second
        .invoke(&json!({"action": "alloc", "mb": 512}))
        .unhandled_error();
    assert_eq!(oom["errorType"], "Runtime.OutOfMemory", "{oom}");

    // A stop leaves nothing either: no claim, no cgroup, no network.
    let second_pid = second.pid();
    let second_nets = claims_of(NET_CLAIMS, second_pid);
    let status = second.terminate(Duration::from_secs(120)).expect("stopped");
    assert!(status.success(), "{status:?}");
    assert_eq!(claims_of(NET_CLAIMS, second_pid), Vec::<u32>::new());
    assert_eq!(jail_cgroups_of(second_pid), Vec::<PathBuf>::new());
    for slot in second_nets {
        assert_eq!(network_of(slot), Vec::<String>::new());
    }
}
