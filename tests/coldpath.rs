//! The cold path of a SnapStart function (issue 23): `vmm` processes kept ready, each already
//! started, jailed and filtered in a network of its own and waiting on its API socket, so that
//! a new environment is one snapshot load into one of them. On real KVM with the real guest:
//!
//! - a restore is served by a ready process, and the pool refills;
//! - a ready process killed while it waits is replaced;
//! - a burst of 4 is served by 4 environments;
//! - after SIGTERM nothing is left: no `vmm` (ready ones included), no network of the service;
//! - the first invoke after the first restore records the working set beside the snapshot
//!   (`memory.ws`), the next restore loads it, and a corrupt one is ignored with one log line
//!   (memory then loads lazily) and recorded again.
//!
//! One boot per test (the snapshot's). Needs root (the jail and the networks), `/dev/kvm`,
//! `GUEST_VMLINUX`, `GUEST_SNAPSTART_ROOTFS` and `GUEST_SNAPSTART_FUNCTION_CONFIG`
//! (scripts/test.sh builds and sets them).

use integration_tests::server::LocalServer;
use integration_tests::{
    guest_artifact, host_binary, process_gone, require_kvm, says, skip_unless, wait_for, wait_until,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `GET /status`: the function's part.
fn status(server: &LocalServer) -> serde_json::Value {
    let url = format!("http://{}/status", server.invoke_addr);
    let reply = server.request("GET", &url, &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["functions"]["snap"].clone()
}

fn pids(status: &serde_json::Value, kind: &str) -> Vec<u32> {
    status[format!("{kind}_vmm_pids")]
        .as_array()
        .map(|pids| {
            pids.iter()
                .filter_map(serde_json::Value::as_u64)
                .filter_map(|p| u32::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The network slots whose claims (`/run/lambda-vm/net/<slot>`) name process `pid`.
fn claimed_slots(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/lambda-vm/net") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path())
                .is_ok_and(|owner| owner.split_whitespace().next() == Some(&pid.to_string()))
        })
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect()
}

#[test]
fn ready_vmms_serve_restores_are_replaced_when_killed_and_go_at_stop() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    skip_unless!(root, "the jail and the networks need root");
    let (Some(kernel), Some(image), Some(config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("coldpath");
    let _ = std::fs::remove_dir_all(&tmp);
    let function_dir = tmp.join("functions").join("snap");
    std::fs::create_dir_all(&function_dir).unwrap();
    let mut function: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    function["function_name"] = json!("snap");
    std::fs::write(function_dir.join("function.json"), function.to_string()).unwrap();
    std::os::unix::fs::symlink(&image, function_dir.join("snap.ext4")).unwrap();
    let mut command = Command::new(host_binary("lambda-vm"));
    command
        .arg("--kernel")
        .arg(&kernel)
        .arg("--functions-dir")
        .arg(tmp.join("functions"))
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .arg("--state-dir")
        .arg(tmp.join("state"))
        .args(["--listen", "127.0.0.1:0", "--ready-vmms", "2"])
        .args(["--max-concurrency", "8", "--idle-timeout", "600"]);
    let mut server = LocalServer::from_command(command, "lambda-vm", true);
    let networking = !server
        .logs()
        .iter()
        .chain(server.errors().iter())
        .any(|l| l.contains("functions run WITHOUT networking"));

    // The first invoke boots, snapshots after init and restores: no process is ready before
    // there is a snapshot to be ready for.
    let first = server.request("POST", &server.function_url("snap"), &[], b"[1]");
    assert_eq!((first.status, first.text()), (200, "[1]".to_owned()));
    assert!(server
        .logs()
        .iter()
        .any(|l| says(l, "snap", "microVM restored (into a new vmm")));

    // Then two wait, each its own jailed process.
    let ready = wait_for(Duration::from_secs(120), || {
        let ready = pids(&status(&server), "ready");
        (ready.len() == 2).then_some(ready)
    })
    .unwrap_or_else(|| panic!("no 2 ready vmm processes: {}", status(&server)));
    for pid in &ready {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        assert!(args.contains(&b"--api-sock".as_slice()), "{args:?}");
        assert!(args.contains(&b"--jail-root".as_slice()), "{args:?}");
    }
    let mut seen: BTreeSet<u32> = ready.iter().copied().collect();
    let slots = claimed_slots(server.pid());
    if networking {
        // The first environment's network, the ready ones', and those made ahead.
        assert!(slots.len() >= 3, "{slots:?}");
    }

    // A burst of 4, each holding its environment: 4 environments, the new ones restored into
    // the ready processes (and into new ones once those are taken, until the pool refills).
    let burst: Vec<_> = (0..4)
        .map(|tag| {
            let event = json!({"action": "whoami", "tag": tag, "ms": 2000});
            server.request_in_background(
                "POST",
                &server.function_url("snap"),
                event.to_string().as_bytes(),
            )
        })
        .collect();
    let mut environments = BTreeSet::new();
    for (tag, reply) in burst.into_iter().enumerate() {
        let reply = reply.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["tag"], json!(tag), "{}", reply.text());
        environments.insert(reply.json()["environment"].as_str().unwrap().to_owned());
    }
    assert_eq!(environments.len(), 4, "{environments:?}");
    let into_ready = server
        .logs()
        .iter()
        .filter(|l| says(l, "snap", "microVM restored (into a ready vmm"))
        .count();
    assert!(into_ready >= 2, "{:?}", server.logs());
    let now = status(&server);
    seen.extend(pids(&now, "idle"));
    seen.extend(pids(&now, "busy"));

    // The pool refills; a ready process killed while it waits is replaced by another.
    let ready = wait_for(Duration::from_secs(120), || {
        let ready = pids(&status(&server), "ready");
        (ready.len() == 2).then_some(ready)
    })
    .unwrap_or_else(|| panic!("the pool did not refill: {}", status(&server)));
    seen.extend(&ready);
    let killed = ready[0];
    let pid = nix::unistd::Pid::from_raw(i32::try_from(killed).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    server.wait_for_log(Duration::from_secs(30), |l| {
        says(
            l,
            "snap",
            &format!("ready vmm process {killed} died while waiting"),
        )
    });
    let replaced = wait_for(Duration::from_secs(120), || {
        let ready = pids(&status(&server), "ready");
        (ready.len() == 2 && !ready.contains(&killed)).then_some(ready)
    })
    .unwrap_or_else(|| {
        panic!(
            "the killed ready process was not replaced: {}",
            status(&server)
        )
    });
    seen.extend(&replaced);
    // A restore still finds a ready process.
    let again = server.request("POST", &server.function_url("snap"), &[], b"[2]");
    assert_eq!(again.status, 200, "{}", again.text());

    // SIGTERM: every vmm goes, the ready ones too, and every network of the service.
    let service = server.pid();
    let slots: BTreeSet<String> = slots.into_iter().chain(claimed_slots(service)).collect();
    let stopped = server
        .terminate(Duration::from_secs(120))
        .expect("lambda-vm exited after SIGTERM");
    assert!(stopped.success(), "{stopped:?}");
    let left: Vec<u32> = seen.into_iter().filter(|p| !process_gone(*p)).collect();
    assert!(left.is_empty(), "vmm processes left after stop: {left:?}");
    assert!(
        claimed_slots(service).is_empty(),
        "network claims left: {:?}",
        claimed_slots(service)
    );
    for slot in slots {
        // Gone, or (a slot freed at stop) taken by another service on this host since.
        let claim = Path::new("/run/lambda-vm/net").join(&slot);
        assert!(
            wait_until(Duration::from_secs(5), || !Path::new("/run/netns")
                .join(format!("lvm-{slot}"))
                .exists()
                || claim.exists()),
            "the network lvm-{slot} is left after stop"
        );
    }
}

/// The first file named `name` under `dir`, depth first.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// `n` invokes at once, each holding its environment for a while; all must succeed.
fn held_invokes(server: &LocalServer, n: usize) {
    let burst: Vec<_> = (0..n)
        .map(|tag| {
            let event = json!({"action": "whoami", "tag": tag, "ms": 1500});
            server.request_in_background(
                "POST",
                &server.function_url("snap"),
                event.to_string().as_bytes(),
            )
        })
        .collect();
    for (tag, reply) in burst.into_iter().enumerate() {
        let reply = reply.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["tag"], json!(tag), "{}", reply.text());
    }
}

#[test]
fn the_first_invoke_s_working_set_is_kept_loaded_by_later_restores_and_a_corrupt_one_is_ignored() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    skip_unless!(root, "the jail and the networks need root");
    let (Some(kernel), Some(image), Some(config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("working-set");
    let _ = std::fs::remove_dir_all(&tmp);
    let function_dir = tmp.join("functions").join("snap");
    std::fs::create_dir_all(&function_dir).unwrap();
    let mut function: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    function["function_name"] = json!("snap");
    std::fs::write(function_dir.join("function.json"), function.to_string()).unwrap();
    std::os::unix::fs::symlink(&image, function_dir.join("snap.ext4")).unwrap();
    let mut command = Command::new(host_binary("lambda-vm"));
    command
        .arg("--kernel")
        .arg(&kernel)
        .arg("--functions-dir")
        .arg(tmp.join("functions"))
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .arg("--state-dir")
        .arg(tmp.join("state"))
        .args(["--listen", "127.0.0.1:0", "--ready-vmms", "2"])
        .args(["--max-concurrency", "8", "--idle-timeout", "600"]);
    let mut server = LocalServer::from_command(command, "lambda-vm", true);
    let restored = |server: &LocalServer, what: &str| {
        server
            .logs()
            .iter()
            .filter(|l| says(l, "snap", "microVM restored (into") && l.contains(what))
            .count()
    };

    // The first restore has no working set; its first invoke records one beside the snapshot.
    let first = server.request("POST", &server.function_url("snap"), &[], b"[1]");
    assert_eq!((first.status, first.text()), (200, "[1]".to_owned()));
    assert_eq!(
        restored(&server, "no working set yet"),
        1,
        "{:?}",
        server.logs()
    );
    const RECORDED: &str = "working set recorded after the first invoke: ";
    let line = server.wait_for_log(Duration::from_secs(30), |l| says(l, "snap", RECORDED));
    let pages: u64 = line
        .split(RECORDED)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no page count in {line:?}"));
    assert!(pages > 0, "{line}");
    let path = find_file(&tmp, "memory.ws").expect("no working set beside the snapshot");
    assert!(
        path.with_file_name("memory").is_file(),
        "{}",
        path.display()
    );
    let recorded = std::fs::read(&path).unwrap();
    assert!(recorded.starts_with(b"LMVMWSET"), "{recorded:?}");

    // A second environment (the first is busy) is restored with it, in a ready process made
    // before the file existed.
    let idle = |server: &LocalServer, n: u64| {
        assert!(
            wait_until(Duration::from_secs(30), || status(server)["idle"]
                == json!(n)),
            "not {n} idle environments: {}",
            status(server)
        );
    };
    idle(&server, 1);
    held_invokes(&server, 2);
    let loaded = format!("working set of {pages} pages loaded");
    assert_eq!(restored(&server, &loaded), 1, "{:?}", server.logs());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        recorded,
        "a restore that loaded the working set recorded it again"
    );

    // A corrupt working set: the third environment's restore ignores it with one line,
    // loads memory lazily, answers, and records a good one again.
    let mut corrupt = recorded.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    std::fs::write(&path, &corrupt).unwrap();
    idle(&server, 2);
    held_invokes(&server, 3);
    assert_eq!(
        restored(&server, "working set not used (the checksum does not match"),
        1,
        "{:?}",
        server.logs()
    );
    server.wait_for_logs(Duration::from_secs(30), 2, |l| says(l, "snap", RECORDED));
    assert_ne!(std::fs::read(&path).unwrap(), corrupt);

    let stopped = server
        .terminate(Duration::from_secs(120))
        .expect("lambda-vm exited after SIGTERM");
    assert!(stopped.success(), "{stopped:?}");
}
