//! Firecracker's API on the real `vmm` and real `/dev/kvm`, with the tiny counting guest: every
//! endpoint, its success and its refusals (bad JSON, unknown paths and fields, pre-boot-only
//! requests after boot and the reverse, missing files, bad IDs); boot, pause, snapshot and a
//! restore in a second process through the API alone; clients that send garbage, hang up or
//! flood the socket while the VM runs on; the exit reason of a guest that crashes. Every
//! exchange is checked against vmm/api/openapi.yaml.

mod api_support;
mod common;

use api_support::{ticks, ApiVmm, WAIT};
use common::guest;
use integration_tests::require_kvm;
use integration_tests::wait_until;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

fn machine(mem: u32) -> String {
    format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mem}}}"#)
}

fn boot_source(kernel: &std::path::Path) -> String {
    format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display())
}

#[test]
fn every_endpoint_before_and_after_boot_and_a_restore_in_a_second_process() {
    require_kvm!();
    let kernel = guest("counter");
    let mut vm = ApiVmm::start("endpoints", &["--id", "api_test"]);
    let dir = vm.dir.clone();
    let mode = std::fs::metadata(&vm.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is not owner-only");

    // Before boot: what GET reports, and what only makes sense after boot.
    let info = vm.get_json("/");
    assert_eq!(info["id"], "api_test");
    assert_eq!(info["state"], "Not started");
    assert!(vm.get_json("/version")["firecracker_version"].is_string());
    assert_eq!(vm.get_json("/machine-config")["mem_size_mib"], 128);
    assert!(vm.get_json("/vm/config")["boot-source"].is_null());
    assert_eq!(vm.get_json("/ext/status")["state"], "Not started");
    let before = "not supported before starting";
    vm.refused("PATCH", "/vm", Some(r#"{"state": "Paused"}"#), before);
    let create = format!(
        r#"{{"snapshot_path": "{0}/s.state", "mem_file_path": "{0}/s.mem"}}"#,
        dir.display()
    );
    vm.refused("PUT", "/snapshot/create", Some(&create), before);
    for action in ["FlushMetrics", "SendCtrlAltDel"] {
        let body = format!(r#"{{"action_type": "{action}"}}"#);
        vm.refused("PUT", "/actions", Some(&body), before);
    }
    vm.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "without a boot source",
    );

    // Malformed and unsupported requests.
    vm.refused("GET", "/nope", None, "invalid request method and/or path");
    vm.refused("DELETE", "/drives/root", None, "invalid request method");
    vm.refused("GET", "/", Some("{}"), "cannot have a body");
    vm.refused("PUT", "/machine-config", None, "empty PUT");
    vm.refused(
        "PUT",
        "/machine-config",
        Some("{\"vcpu_count\": "),
        "invalid JSON",
    );
    vm.refused(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#),
        "huge_pages",
    );
    vm.refused(
        "PUT",
        "/machine-config",
        Some(&machine(1 << 20)),
        "mem_size_mib",
    );
    vm.refused(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/no/such/vmlinux"}"#),
        "/no/such/vmlinux",
    );
    let drive_file = dir.join("disk.img");
    std::fs::write(&drive_file, vec![0u8; 4096]).unwrap();
    let drive = |id: &str, path: &std::path::Path| {
        format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
            path.display()
        )
    };
    vm.refused(
        "PUT",
        "/drives/bad-id",
        Some(&drive("bad-id", &drive_file)),
        "letters, digits and underscores",
    );
    vm.refused(
        "PUT",
        "/drives/one",
        Some(&drive("two", &drive_file)),
        "does not match",
    );
    vm.refused(
        "PUT",
        "/drives/gone",
        Some(&drive("gone", std::path::Path::new("/no/such/disk"))),
        "/no/such/disk",
    );
    vm.refused(
        "PUT",
        "/drives/data",
        Some(r#"{"drive_id": "data", "path_on_host": "/x", "is_root_device": false, "cache_type": "Writeback"}"#),
        "cache_type",
    );
    vm.refused(
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 1, "deflate_on_oom": false}"#),
        "not supported",
    );
    vm.refused("PUT", "/mmds", Some("{}"), "not supported");
    vm.refused(
        "PATCH",
        "/drives/data",
        Some(r#"{"drive_id": "data"}"#),
        "not supported",
    );
    vm.refused("PUT", "/logger", Some(r#"{"module": "api"}"#), "module");
    vm.refused("PUT", "/logger", Some(r#"{"level": "Loud"}"#), "Loud");

    // Configure and boot.
    let log = dir.join("vmm.log");
    let metrics = dir.join("metrics.json");
    let logger = format!(
        r#"{{"level": "info", "log_path": "{}", "show_level": true}}"#,
        log.display()
    );
    vm.ok("PUT", "/logger", Some(&logger));
    let metrics_body = format!(r#"{{"metrics_path": "{}"}}"#, metrics.display());
    vm.ok("PUT", "/metrics", Some(&metrics_body));
    vm.ok("PUT", "/machine-config", Some(&machine(64)));
    vm.ok("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 32}"#));
    vm.ok("PUT", "/boot-source", Some(&boot_source(&kernel)));
    vm.ok("PUT", "/drives/data", Some(&drive("data", &drive_file)));
    vm.ok("PUT", "/entropy", Some("{}"));
    let vsock = format!(
        r#"{{"guest_cid": 3, "uds_path": "{}"}}"#,
        dir.join("v.sock").display()
    );
    vm.ok("PUT", "/vsock", Some(&vsock));
    let config = vm.get_json("/vm/config");
    assert_eq!(config["machine-config"]["mem_size_mib"], 32);
    assert_eq!(config["drives"][0]["drive_id"], "data");
    vm.ok(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(vm.state(), "Running");
    vm.wait_console("a tick", |c| !ticks(c).is_empty());

    // After boot: pre-boot-only requests are refused, the rest works.
    let after = "not supported after starting";
    vm.refused("PUT", "/boot-source", Some(&boot_source(&kernel)), after);
    vm.refused("PUT", "/machine-config", Some(&machine(64)), after);
    vm.refused(
        "PUT",
        "/drives/data",
        Some(&drive("data", &drive_file)),
        after,
    );
    vm.refused("PUT", "/logger", Some(&logger), after);
    vm.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        after,
    );
    let load = format!(
        r#"{{"snapshot_path": "{0}/s.state", "mem_backend": {{"backend_type": "File", "backend_path": "{0}/s.mem"}}}}"#,
        dir.display()
    );
    vm.refused("PUT", "/snapshot/load", Some(&load), after);
    assert_eq!(vm.get_json("/machine-config")["mem_size_mib"], 32);
    vm.ok(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    vm.ok(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    let line = std::fs::read_to_string(&metrics).unwrap();
    let metric: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(
        metric["api_server"]["requests"].as_u64().unwrap() > 10,
        "{line}"
    );

    // Pause, snapshot (refused while running, as Diff, into a missing directory), resume.
    vm.refused("PUT", "/snapshot/create", Some(&create), "must be paused");
    vm.ok("PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(vm.state(), "Paused");
    let diff = format!(
        r#"{{"snapshot_type": "Diff", "snapshot_path": "{0}/d.state", "mem_file_path": "{0}/d.mem"}}"#,
        dir.display()
    );
    vm.refused("PUT", "/snapshot/create", Some(&diff), "Diff");
    vm.refused(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path": "/no/such/dir/s", "mem_file_path": "/no/such/dir/m"}"#),
        "/no/such/dir",
    );
    let paused_ticks = ticks(&vm.console());
    vm.ok("PUT", "/snapshot/create", Some(&create));
    let status = vm.get_json("/ext/status");
    assert_eq!(status["state"], "Paused");
    assert_eq!(status["started_from"], "boot");
    vm.refused(
        "GET",
        "/ext/working-set",
        None,
        "only a microVM restored from a snapshot",
    );
    assert!(status["timings"]["snapshot_create_ms"].as_f64().unwrap() > 0.0);
    let manifest_path = dir.join("s.state.manifest.json");
    let manifest = vmm::snapshot::manifest::SnapshotManifest::read(&manifest_path).unwrap();
    assert_eq!(manifest.mem_size_mib, 32);
    assert_eq!(manifest.drives[0].drive_id, "data");
    assert!(manifest.entropy);
    assert_eq!(status["last_snapshot"]["state_crc32"], manifest.state_crc32);
    vm.ok("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    let last = *paused_ticks.last().unwrap();
    vm.wait_console("ticks after the resume", |c| ticks(c).last() > Some(&last));

    // A second process restores the snapshot through the API and counts on from it.
    let mut restored = ApiVmm::start_in(&dir, "restored.sock", &[]);
    restored.refused(
        "GET",
        "/ext/working-set",
        None,
        "only a running restored microVM",
    );
    restored.refused(
        "PUT",
        "/ext/working-set",
        Some(r#"{"file": "x"}"#),
        "unknown field",
    );
    // A working set that is not there: the load goes on, lazily, and says why.
    let working_set = dir.join("s.ws");
    let put_working_set = format!(r#"{{"path": "{}"}}"#, working_set.display());
    restored.ok("PUT", "/ext/working-set", Some(&put_working_set));
    restored.refused("PUT", "/snapshot/load", Some(&format!(
        r#"{{"snapshot_path": "{0}/s.state", "mem_file_path": "{0}/s.mem", "mem_backend": {{"backend_type": "File", "backend_path": "{0}/s.mem"}}}}"#,
        dir.display()
    )), "not both");
    restored.refused("PUT", "/snapshot/load", Some(&format!(
        r#"{{"snapshot_path": "{0}/s.state", "mem_backend": {{"backend_type": "Uffd", "backend_path": "{0}/uffd.sock"}}}}"#,
        dir.display()
    )), "Uffd");
    restored.refused("PUT", "/snapshot/load", Some(&format!(
        r#"{{"snapshot_path": "{0}/s.state", "mem_file_path": "{0}/s.mem", "enable_diff_snapshots": true}}"#,
        dir.display()
    )), "enable_diff_snapshots");
    restored.refused(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path": "/no/such/state", "mem_file_path": "/no/such/mem"}"#),
        "/no/such/state",
    );
    restored.refused("PUT", "/snapshot/load", Some(&format!(
        r#"{{"snapshot_path": "{0}/s.state", "mem_file_path": "{0}/s.mem", "network_overrides": [{{"iface_id": "eth9", "host_dev_name": "tap9"}}]}}"#,
        dir.display()
    )), "eth9");
    let restored_load = format!(
        r#"{{"snapshot_path": "{0}/s.state", "mem_backend": {{"backend_type": "File", "backend_path": "{0}/s.mem"}}, "resume_vm": true, "vsock_override": {{"uds_path": "{0}/v2.sock"}}}}"#,
        dir.display()
    );
    restored.ok("PUT", "/snapshot/load", Some(&restored_load));
    assert_eq!(restored.state(), "Running");
    restored.wait_console("ticks after the restore", |c| !ticks(c).is_empty());
    let first = ticks(&restored.console())[0];
    // Paused after tick `last` was printed, maybe in the middle of the next line: the restored
    // guest finishes that line and then prints the one after.
    assert!(
        first == last + 1 || first == last + 2,
        "the restored guest did not go on from the snapshot: {first} after {last}"
    );
    let status = restored.get_json("/ext/status");
    assert_eq!(status["started_from"], "snapshot");
    assert!(status["timings"]["restore_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(status["working_set"]["pages"], 0, "{status}");
    assert!(
        status["working_set"]["ignored"]
            .as_str()
            .is_some_and(|why| why.contains("s.ws")),
        "{status}"
    );
    // What the restored guest touched: some pages, this snapshot's.
    let recorded: vmm::snapshot::working_set::WorkingSet =
        serde_json::from_str(&restored.ok("GET", "/ext/working-set", None)).unwrap();
    recorded.check(manifest.state_crc32, 32 << 20).unwrap();
    assert!(recorded.pages() > 0, "{recorded:?}");
    recorded.write(&working_set).unwrap();
    restored.refused(
        "PUT",
        "/ext/working-set",
        Some(&put_working_set),
        "after starting",
    );
    let config = restored.get_json("/vm/config");
    assert!(config["boot-source"].is_null());
    assert_eq!(config["machine-config"]["mem_size_mib"], 32);
    assert!(config["vsock"]["uds_path"]
        .as_str()
        .unwrap()
        .ends_with("v2.sock"));
    restored.refused(
        "PUT",
        "/snapshot/load",
        Some(&restored_load),
        "after starting",
    );

    // Another restore with that working set loads its pages before its vCPUs run.
    let mut prefetched = ApiVmm::start_in(&dir, "prefetched.sock", &[]);
    prefetched.ok("PUT", "/ext/working-set", Some(&put_working_set));
    prefetched.ok(
        "PUT",
        "/snapshot/load",
        Some(&restored_load.replace("v2.sock", "v3.sock")),
    );
    let status = prefetched.get_json("/ext/status");
    assert_eq!(status["working_set"]["pages"], recorded.pages(), "{status}");
    assert!(status["working_set"]["ignored"].is_null(), "{status}");
    prefetched.wait_console("ticks after the prefetched restore", |c| ticks(c).len() > 1);
    assert!(prefetched.check_contract());

    // `--restore-from DIR` with the API loads DIR/memory.ws, and its VM has a working set too.
    let snapshot_dir = dir.join("snapdir");
    std::fs::create_dir_all(&snapshot_dir).unwrap();
    std::fs::copy(dir.join("s.state"), snapshot_dir.join("state")).unwrap();
    std::fs::copy(dir.join("s.mem"), snapshot_dir.join("memory")).unwrap();
    recorded.write(&snapshot_dir.join("memory.ws")).unwrap();
    let v4 = dir.join("v4.sock");
    let mut adopted = ApiVmm::start_in(
        &dir,
        "adopted.sock",
        &[
            "--restore-from",
            snapshot_dir.to_str().unwrap(),
            "--vsock-uds",
            v4.to_str().unwrap(),
        ],
    );
    let status = adopted.get_json("/ext/status");
    assert_eq!(status["started_from"], "snapshot", "{status}");
    assert_eq!(status["working_set"]["pages"], recorded.pages(), "{status}");
    let again: vmm::snapshot::working_set::WorkingSet =
        serde_json::from_str(&adopted.ok("GET", "/ext/working-set", None)).unwrap();
    again.check(manifest.state_crc32, 32 << 20).unwrap();
    assert!(adopted.check_contract());

    // A process given boot resources may not load a snapshot. Network interfaces are checked
    // as they come (the tap is opened at boot, and this machine may have none).
    let mut third = ApiVmm::start_in(&dir, "third.sock", &[]);
    let iface = |id: &str, tap: &str, mac: &str| {
        format!(r#"{{"iface_id": "{id}", "host_dev_name": "{tap}", "guest_mac": "{mac}"}}"#)
    };
    third.ok(
        "PUT",
        "/network-interfaces/eth0",
        Some(&iface("eth0", "tap0", "06:00:ac:10:00:02")),
    );
    third.refused(
        "PUT",
        "/network-interfaces/eth1",
        Some(&iface("eth1", "tap0", "06:00:ac:10:00:03")),
        "already used",
    );
    third.refused(
        "PUT",
        "/network-interfaces/eth1",
        Some(&iface("eth1", "tap1", "01:00:5e:00:00:01")),
        "multicast",
    );
    third.refused(
        "PUT",
        "/network-interfaces/eth1",
        Some(r#"{"iface_id": "eth1", "host_dev_name": "tap1", "mtu": 1500}"#),
        "mtu",
    );
    assert_eq!(
        third.get_json("/vm/config")["network-interfaces"][0]["host_dev_name"],
        "tap0"
    );
    third.refused(
        "PUT",
        "/snapshot/load",
        Some(&restored_load),
        "boot-specific",
    );

    assert!(vm.check_contract());
    assert!(restored.check_contract());
    assert!(third.check_contract());
}

#[test]
fn garbage_hang_ups_and_floods_never_stop_the_vm() {
    require_kvm!();
    let kernel = guest("counter");
    let mut vm = ApiVmm::start("abuse", &[]);
    vm.ok("PUT", "/machine-config", Some(&machine(32)));
    vm.ok("PUT", "/boot-source", Some(&boot_source(&kernel)));
    vm.ok(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    vm.wait_console("a tick", |c| !ticks(c).is_empty());
    let socket = vm.socket.clone();
    let answer = |stream: &mut UnixStream| {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut text = Vec::new();
        let _ = stream.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    };

    // Garbage gets a 400 and a closed connection.
    let mut garbage = UnixStream::connect(&socket).unwrap();
    garbage
        .write_all(b"\x00\x01\x02 not http at all\r\n\r\n")
        .unwrap();
    let reply = answer(&mut garbage);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("fault_message"), "{reply}");

    // Too large a body, too many header bytes.
    let mut big = UnixStream::connect(&socket).unwrap();
    big.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 999999\r\n\r\n")
        .unwrap();
    assert!(answer(&mut big).starts_with("HTTP/1.1 413"));
    let mut headers = UnixStream::connect(&socket).unwrap();
    let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n", "a".repeat(10_000));
    let _ = headers.write_all(long.as_bytes());
    assert!(answer(&mut headers).starts_with("HTTP/1.1 431"));

    // A client that stops sending after its request still gets the answer.
    let mut half_closed = UnixStream::connect(&socket).unwrap();
    half_closed.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    half_closed.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = answer(&mut half_closed);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("Connection: close"), "{reply}");

    // A client that hangs up mid-request, and one that stalls mid-request.
    let mut hang_up = UnixStream::connect(&socket).unwrap();
    hang_up
        .write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"st")
        .unwrap();
    drop(hang_up);
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();

    // A flood: many more connections than the server keeps, each sending a request and
    // hanging up without reading the answer.
    let flood: Vec<UnixStream> = (0..64)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    for mut stream in flood {
        let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }

    // The VM ran on through all of it, and the API still answers.
    let count = ticks(&vm.console()).len();
    vm.wait_console("more ticks", |c| ticks(c).len() > count + 2);
    assert_eq!(vm.state(), "Running");
    // The stalled client is dropped after the server's I/O timeout.
    let closed = answer(&mut stalled);
    assert_eq!(closed, "", "a stalled request got an answer: {closed}");
    assert!(vm.child.try_wait().unwrap().is_none(), "the vmm died");
    assert!(vm.check_contract());
}

#[test]
fn a_crashed_guest_s_reason_is_reported_and_a_shut_down_one_ends_the_process() {
    require_kvm!();
    // With --serve-after-stop the API says why the guest stopped.
    let mut vm = ApiVmm::start("crash", &["--serve-after-stop"]);
    vm.ok("PUT", "/machine-config", Some(&machine(32)));
    vm.ok(
        "PUT",
        "/boot-source",
        Some(&boot_source(&guest("triple_fault"))),
    );
    vm.ok(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    let stopped = wait_until(WAIT, || vm.state() == "Stopped");
    assert!(stopped, "the guest never stopped: {}", vm.stderr());
    let status = vm.get_json("/ext/status");
    assert_eq!(status["exit"]["reason"], "guest_crash", "{status}");
    assert_eq!(status["exit"]["exit_code"], 3);
    assert!(status["exit"]["message"]
        .as_str()
        .unwrap()
        .contains("triple fault"));
    vm.refused(
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused"}"#),
        "has stopped",
    );
    assert!(vm.check_contract());

    // Without it the process ends with the guest, as Firecracker's does, and says how by its
    // exit code.
    let mut vm = ApiVmm::start("shutdown", &[]);
    vm.ok("PUT", "/machine-config", Some(&machine(32)));
    vm.ok("PUT", "/boot-source", Some(&boot_source(&guest("reset"))));
    vm.ok(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.stderr());
    assert!(!vm.socket.exists(), "the socket outlived the vmm");
    assert!(vm.check_contract());
}

#[test]
fn a_config_file_boots_before_the_api_serves_and_the_socket_never_clobbers_a_file() {
    require_kvm!();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("api/config-file");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}}}}"#,
        guest("counter").display()
    );
    std::fs::write(&config, json).unwrap();
    let mut vm = ApiVmm::start_in(
        &dir,
        "api.sock",
        &["--config-file", config.to_str().unwrap()],
    );
    assert_eq!(vm.state(), "Running");
    assert!(vm.get_json("/ext/status")["timings"]["boot_ms"].is_number());
    vm.refused(
        "PUT",
        "/machine-config",
        Some(&machine(64)),
        "after starting",
    );
    assert!(vm.check_contract());
    drop(vm);

    // A regular file where the socket should go is left alone.
    let file = dir.join("precious");
    std::fs::write(&file, "data").unwrap();
    let output = common::vmm(&["--api-sock", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}
