//! End to end in a microVM, on real KVM: `lambda-vm` boots the real guest kernel with the echo
//! function's ext4 image as a read-only root drive (our `init` as PID 1, the conformance echo
//! function on our `bootstrap` library as the runtime), and the function is invoked through the
//! emulator-compatible endpoint over HTTP, host link and vsock. Boots are few (two: the first,
//! and the fresh VM after a crash), since each takes tens of seconds on emulated KVM.
//!
//! The SnapStart test boots once, snapshots after init, and restores that snapshot in three
//! `lambda-vm` processes, two of them at once.
//!
//! Needs `GUEST_VMLINUX`, `GUEST_ROOTFS` and `GUEST_FUNCTION_CONFIG`, and for SnapStart
//! `GUEST_SNAPSTART_ROOTFS` and `GUEST_SNAPSTART_FUNCTION_CONFIG` (scripts/test.sh builds and
//! sets them).
//! Skipped, with the reason printed, only where /dev/kvm is absent; under CI that fails.

use integration_tests::aws_clients;
use integration_tests::server::LocalServer;
use integration_tests::{
    epoch_ms, guest_artifact, guest_line, host_binary, require, require_kvm, says,
};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The echo function booted in a microVM: it answers, fails with a handler error, crashes (its
/// environment replaced), and powers off.
#[test]
fn a_function_in_a_microvm_answers_fails_and_powers_off() {
    require_kvm!();
    let (Some(kernel), Some(rootfs), Some(service)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_ROOTFS"),
        require(host_binary("lambda-vm"), "lambda-vm"),
    ) else {
        return;
    };
    let Some(function_config) = guest_artifact("GUEST_FUNCTION_CONFIG") else {
        return;
    };
    let console = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microvm-console.log");
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microvm-state");
    let _ = std::fs::remove_dir_all(&state);
    let mut command = Command::new(service);
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--function-config")
        .arg(function_config)
        .arg("--console")
        .arg(&console)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"]);
    let mut server = LocalServer::from_command(command, "lambda-vm", true);

    // The first invoke boots the VM; the runtime's init is in the guest's first REPORT.
    let event = json!({"hello": "microvm", "n": [1, 2, 3]});
    let reply = server.assert_echo(&event);
    assert!(reply.request_id.is_some());
    let report = server.wait_for_log(Duration::from_secs(30), |l| {
        guest_line(l).starts_with("REPORT RequestId:")
    });
    assert!(report.starts_with("rust-echo[1] REPORT"), "{report}");
    assert!(report.contains("Init Duration:"), "{report}");
    assert!(report.contains("Memory Size: 128 MB"), "{report}");
    let logs = server.logs();
    assert!(
        logs.iter()
            .any(|l| guest_line(l).starts_with("START RequestId:")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| guest_line(l).starts_with("END RequestId:")),
        "{logs:?}"
    );

    // A handler error: 200 with X-Amz-Function-Error and the function's error JSON.
    let error = server
        .invoke(&json!({"action": "error", "message": "broken on purpose"}))
        .unhandled_error();
    assert_eq!(error["errorMessage"], "broken on purpose", "{error}");

    // The same VM goes on serving.
    server.assert_echo(&json!({"again": true}));
    let boots = |server: &LocalServer| {
        server
            .logs()
            .iter()
            .filter(|l| says(l, "rust-echo", "scaled out: microVM booted"))
            .count()
    };
    assert_eq!(boots(&server), 1);

    // The AWS SDK and CLI see Lambda's answers from the microVM too (Tail logs come over the
    // host link).
    aws_clients::check(&server.invoke_addr, "rust-echo", aws_clients::Service::Host);
    // (Its `Event` invoke runs beside the others, so it may have scaled out to a second
    // environment.)

    // A runtime that dies mid-invoke fails that invoke and its environment is replaced, never
    // reused; the next invoke is served.
    let crash = server.invoke(&json!({"action": "crash"}));
    assert_eq!(
        crash.function_error.as_deref(),
        Some("Unhandled"),
        "{crash:?}"
    );
    server.wait_for_log(Duration::from_secs(30), |l| {
        l.contains("the environment was reset") && l.contains("it is replaced")
    });
    server.assert_echo(&json!({"after": "crash"}));

    // SIGTERM: the service asks init to power off; the guest resets through the i8042 and the
    // service exits cleanly.
    let status = server
        .terminate(Duration::from_secs(120))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        console.contains("Run /init as init process"),
        "guest console:\n{console}"
    );
}

/// `lambda-vm` serving the SnapStart echo function, its snapshots under `snapshots` in the
/// target's temp dir; `None` (the reason printed) when the guest artifacts are not built.
fn snapstart_service(snapshots: &str, name: &str) -> Option<LocalServer> {
    let (Some(kernel), Some(rootfs), Some(function_config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return None;
    };
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let work = tmp.join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let mut command = Command::new(host_binary("lambda-vm"));
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--function-config")
        .arg(function_config)
        .arg("--snapshot-dir")
        .arg(tmp.join(snapshots))
        .arg("--work-dir")
        .arg(&work)
        .arg("--state-dir")
        .arg(work.join("state"))
        .arg("--console")
        .arg(work.join("console.log"))
        .args(["--listen", "127.0.0.1:0", "--eager"]);
    Some(LocalServer::from_command(command, "lambda-vm", true))
}

/// `{"random": hex, "time_ms": n}` from the echo function's `unique` action.
fn unique(server: &LocalServer) -> (String, u64) {
    let reply = server.invoke(&json!({"action": "unique"}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.function_error.is_none(), "{}", reply.text());
    let value = reply.json();
    let random = value["random"].as_str().unwrap_or_default().to_owned();
    assert_eq!(random.len(), 32, "{value}");
    (random, value["time_ms"].as_u64().unwrap_or_default())
}

/// The snapshot directories under `root`, each named by its key.
fn snapshots_in(root: &std::path::Path) -> Vec<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|path| path.is_dir());
    dirs.sort();
    dirs
}

fn restored(server: &LocalServer) {
    server.wait_for_log(Duration::from_secs(300), |l| {
        says(l, "rust-echo-snap-start", "microVM restored")
    });
}

/// SnapStart for real: one boot and one snapshot after init, then every environment is a
/// restore of it in a fresh VM, here in fresh processes at once. Each restored copy must
/// diverge (its own random bytes), know the time (init set the clock from the host), have run
/// the runtime's after-restore hook, and report `Restore Duration`. A snapshot that no longer
/// loads is discarded and taken again, and the invoke still succeeds.
#[test]
fn snapstart_snapshots_once_and_restores_unique_guests_concurrently() {
    require_kvm!();
    let snapshot_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("snapstart-snapshots");
    let _ = std::fs::remove_dir_all(&snapshot_dir);
    // One subdirectory per function, each snapshot in it named by its key.
    let root = snapshot_dir.join("rust-echo-snap-start");

    // The first service boots, lets init run to restore/next, snapshots, and serves from a
    // restored copy.
    let Some(mut first) = snapstart_service("snapstart-snapshots", "snapstart-1") else {
        return;
    };
    restored(&first);
    let logs = first.logs();
    assert!(
        logs.iter()
            .any(|l| says(l, "rust-echo-snap-start", "SnapStart snapshot taken")),
        "{logs:?}"
    );
    let snapshots = snapshots_in(&root);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let snapshot = &snapshots[0];
    assert!(snapshot.join("state").is_file() && snapshot.join("memory").is_file());

    // Two more processes restore the same snapshot at once: no boot, no new snapshot.
    let started = ["snapstart-2", "snapstart-3"]
        .map(|name| snapstart_service("snapstart-snapshots", name).expect("artifacts are there"));
    let [mut second, mut third] = started;
    for server in [&second, &third] {
        restored(server);
        let logs = server.logs();
        assert!(
            !logs
                .iter()
                .any(|l| l.contains("snapshot taken") || l.contains("microVM booted")),
            "{logs:?}"
        );
    }

    // Each serves with its own randomness and the host's time (init reseeded the RNG and set
    // the clock before the runtime's after-restore hook ran).
    let mut randoms = Vec::new();
    for server in [&first, &second, &third] {
        let before = epoch_ms();
        let (random, time) = unique(server);
        let after = epoch_ms();
        assert!(
            before.saturating_sub(1000) <= time && time <= after + 1000,
            "guest clock {time}, host {before}..{after}"
        );
        randoms.push(random);
        let report = server.wait_for_log(Duration::from_secs(30), |l| {
            guest_line(l).starts_with("REPORT RequestId:")
        });
        assert!(report.contains("Restore Duration:"), "{report}");
        assert!(!report.contains("Init Duration:"), "{report}");
        let logs = server.logs();
        assert!(
            logs.iter()
                .any(|l| l.contains("conformance: after_restore")),
            "{logs:?}"
        );
        server.assert_echo(&json!({"restored": true}));
    }
    randoms.sort();
    randoms.dedup();
    assert_eq!(
        randoms.len(),
        3,
        "restored copies repeated random bytes: {randoms:?}"
    );
    for server in [&mut first, &mut second, &mut third] {
        let status = server
            .terminate(Duration::from_secs(120))
            .expect("lambda-vm exited after SIGTERM");
        assert!(status.success(), "{status:?}");
    }

    // A snapshot whose memory file is damaged (one bit flipped in the middle, where the guest
    // may never look: only the manifest's CRC-32 tells) is discarded and taken again; the
    // invoke that found it succeeds.
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut memory = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(snapshot.join("memory"))
            .unwrap();
        let middle = memory.metadata().unwrap().len() / 2;
        let mut byte = [0u8; 1];
        memory.seek(SeekFrom::Start(middle)).unwrap();
        memory.read_exact(&mut byte).unwrap();
        byte[0] ^= 0x10;
        memory.seek(SeekFrom::Start(middle)).unwrap();
        memory.write_all(&byte).unwrap();
    }
    let mut fourth = snapstart_service("snapstart-snapshots", "snapstart-4").unwrap();
    restored(&fourth);
    let logs = fourth.logs();
    assert!(
        logs.iter().any(|l| says(
            l,
            "rust-echo-snap-start",
            "discarding the SnapStart snapshot"
        ) && l.contains("the memory file is damaged")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| says(l, "rust-echo-snap-start", "SnapStart snapshot taken")),
        "{logs:?}"
    );
    fourth.assert_echo(&json!({"after": "a bad snapshot"}));
    assert_eq!(snapshots_in(&root), snapshots);
    let status = fourth
        .terminate(Duration::from_secs(120))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Writes function `name` into the functions directory `dir`: the host's function.json (the
/// image's own, renamed, with `extra` keys) beside a link to the image.
fn host_function(
    dir: &std::path::Path,
    name: &str,
    config: &PathBuf,
    image: &PathBuf,
    extra: serde_json::Value,
) {
    let function_dir = dir.join(name);
    std::fs::create_dir_all(&function_dir).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
    json["function_name"] = json!(name);
    for (key, value) in extra.as_object().unwrap() {
        json[key] = value.clone();
    }
    std::fs::write(function_dir.join("function.json"), json.to_string()).unwrap();
    std::os::unix::fs::symlink(image, function_dir.join("image.ext4")).unwrap();
}

/// `GET /status`: every function's environments per state.
fn status(server: &LocalServer) -> serde_json::Value {
    let reply = server.request(
        "GET",
        &format!("http://{}/status", server.invoke_addr),
        &[],
        b"",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn pids(status: &serde_json::Value, function: &str, state: &str) -> Vec<u32> {
    status["functions"][function][format!("{state}_vmm_pids")]
        .as_array()
        .map(|pids| {
            pids.iter()
                .filter_map(|p| p.as_u64())
                .filter_map(|p| u32::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The function host: three functions in one `lambda-vm`, each environment its own `vmm`
/// process. A burst gets one environment per concurrent request (SnapStart restores), reserved
/// concurrency throttles with Lambda's 429, a provisioned environment is ready before the first
/// invoke, a killed `vmm` fails only its invoke and is replaced, idle environments are torn
/// down without leaving a process, and routing goes by name, `name:$LATEST` and ARN.
#[test]
fn a_function_host_scales_out_throttles_provisions_and_tears_down() {
    require_kvm!();
    let (Some(kernel), Some(rootfs), Some(config), Some(snap_rootfs), Some(snap_config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_ROOTFS"),
        guest_artifact("GUEST_FUNCTION_CONFIG"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("function-host");
    let _ = std::fs::remove_dir_all(&tmp);
    let functions = tmp.join("functions");
    host_function(&functions, "snap", &snap_config, &snap_rootfs, json!({}));
    host_function(
        &functions,
        "provisioned",
        &config,
        &rootfs,
        json!({"provisioned_concurrency": 1}),
    );
    host_function(
        &functions,
        "reserved-one",
        &config,
        &rootfs,
        json!({"reserved_concurrency": 1}),
    );
    let mut command = Command::new(host_binary("lambda-vm"));
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--functions-dir")
        .arg(&functions)
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .arg("--state-dir")
        .arg(tmp.join("state"))
        .arg("--console")
        .arg(tmp.join("console.log"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--idle-timeout",
            "6",
            "--max-concurrency",
            "8",
        ]);
    let mut server = LocalServer::from_command(command, "lambda-vm", true);

    // Provisioned: ready before any invoke, and its first invoke shows no Init Duration.
    server.wait_for_log(Duration::from_secs(300), |l| {
        says(l, "provisioned", "provisioned environment ready")
    });
    let reply = server.request(
        "POST",
        &server.function_url("provisioned"),
        &[],
        br#"{"to":"provisioned"}"#,
    );
    assert_eq!(
        (reply.status, reply.text()),
        (200, r#"{"to":"provisioned"}"#.to_owned())
    );
    let report = server.wait_for_log(Duration::from_secs(30), |l| {
        guest_line(l).starts_with(&format!("REPORT RequestId: {}", reply.id()))
    });
    assert!(!report.contains("Init Duration"), "{report}");

    // Routing: an unknown name is ResourceNotFoundException; ARN and name:$LATEST reach it.
    let unknown = server.request("POST", &server.function_url("nope"), &[], b"{}");
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.header("x-amzn-errortype"),
        Some("ResourceNotFoundException")
    );
    for name in [
        "provisioned:$LATEST",
        "arn:aws:lambda:us-east-1:012345678912:function:provisioned",
    ] {
        let reply = server.request("POST", &server.function_url(name), &[], b"[7]");
        assert_eq!(
            (reply.status, reply.text()),
            (200, "[7]".to_owned()),
            "{name}"
        );
    }

    // A burst of 4 to the SnapStart function: 4 environments (one snapshot, 4 restores), and
    // every response answers its own request.
    let burst: Vec<_> = (0..4)
        .map(|tag| {
            let event = json!({"action": "whoami", "tag": tag, "ms": 3000});
            server.request_in_background(
                "POST",
                &server.function_url("snap"),
                event.to_string().as_bytes(),
            )
        })
        .collect();
    let mut environments = Vec::new();
    for (tag, reply) in burst.into_iter().enumerate() {
        let reply = reply.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["tag"], json!(tag), "{}", reply.text());
        environments.push(reply.json()["environment"].as_str().unwrap().to_owned());
    }
    environments.sort();
    environments.dedup();
    assert_eq!(environments.len(), 4, "{environments:?}");
    let snapshots_taken = server
        .logs()
        .iter()
        .filter(|l| says(l, "snap", "SnapStart snapshot taken"))
        .count();
    assert_eq!(snapshots_taken, 1, "{:?}", server.logs());
    // Each environment goes back to the pool once its answer has left and, after a restored
    // guest's first invoke, its working set is recorded: idle a moment after the replies.
    let all_idle = integration_tests::wait_until(Duration::from_secs(60), || {
        pids(&status(&server), "snap", "idle").len() == 4
    });
    assert!(all_idle, "{}", status(&server));

    // Reserved concurrency 1: while one invoke holds the environment, a second gets 429 at once.
    let held = server.request_in_background(
        "POST",
        &server.function_url("reserved-one"),
        json!({"action": "whoami", "ms": 2000})
            .to_string()
            .as_bytes(),
    );
    assert!(
        integration_tests::wait_until(Duration::from_secs(60), || {
            let s = status(&server);
            let f = &s["functions"]["reserved-one"];
            f["initializing"].as_u64().unwrap_or(0) + f["busy"].as_u64().unwrap_or(0) == 1
        }),
        "{}",
        status(&server)
    );
    let throttled = server.request("POST", &server.function_url("reserved-one"), &[], b"{}");
    assert_eq!(throttled.status, 429, "{}", throttled.text());
    assert_eq!(
        throttled.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(
        throttled.json()["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
    assert_eq!(held.join().unwrap().status, 200);
    let concurrency = server.request(
        "GET",
        &format!(
            "http://{}/2015-03-31/functions/reserved-one/concurrency",
            server.invoke_addr
        ),
        &[],
        b"",
    );
    assert_eq!(
        concurrency.json(),
        json!({"ReservedConcurrentExecutions": 1})
    );

    // kill -9 of a vmm mid-invoke fails that invoke only; the next one gets an environment.
    let doomed = server.request_in_background(
        "POST",
        &server.function_url("snap"),
        json!({"action": "whoami", "ms": 5000})
            .to_string()
            .as_bytes(),
    );
    let busy = integration_tests::wait_for(Duration::from_secs(30), || {
        pids(&status(&server), "snap", "busy").first().copied()
    })
    .expect("a busy environment");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(busy).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let failed = doomed.join().unwrap();
    assert_eq!(failed.status, 200);
    assert_eq!(
        failed.function_error.as_deref(),
        Some("Unhandled"),
        "{}",
        failed.text()
    );
    assert_eq!(
        failed.json()["errorType"],
        "Runtime.ExitError",
        "{}",
        failed.text()
    );
    let after = server.request("POST", &server.function_url("snap"), &[], b"[8]");
    assert_eq!((after.status, after.text()), (200, "[8]".to_owned()));
    assert!(!pids(&status(&server), "snap", "idle").contains(&busy));

    // Idle environments go after --idle-timeout, their vmm processes with them; the
    // provisioned one stays.
    let before = status(&server);
    let expiring: Vec<u32> = ["snap", "reserved-one"]
        .iter()
        .flat_map(|f| pids(&before, f, "idle"))
        .collect();
    assert!(!expiring.is_empty());
    assert!(
        integration_tests::wait_until(Duration::from_secs(60), || {
            let s = status(&server);
            pids(&s, "snap", "idle").is_empty() && pids(&s, "reserved-one", "idle").is_empty()
        }),
        "{}",
        status(&server)
    );
    assert!(
        integration_tests::wait_until(Duration::from_secs(10), || {
            expiring
                .iter()
                .all(|pid| integration_tests::process_gone(*pid))
        }),
        "torn-down vmm processes remain: {expiring:?}"
    );
    let kept = pids(&status(&server), "provisioned", "idle");
    assert_eq!(kept.len(), 1);

    // SIGTERM stops every vmm.
    let status = server
        .terminate(Duration::from_secs(120))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(kept.iter().all(|pid| integration_tests::process_gone(*pid)));
}

/// Response streaming and an extension in a microVM: the unmodified `lambda_runtime` crate's
/// streaming response, read with boto3's `invoke_with_response_stream` from `lambda-vm`
/// (chunks over the host link), and the unmodified `lambda-extension` crate as an external
/// extension, added as a Lambda layer (a zip listed in `function.json`).
#[test]
fn a_streaming_function_with_an_extension_layer_in_a_microvm() {
    require_kvm!();
    if !aws_clients::have_boto3() {
        return;
    }
    let (Some(kernel), Some(rootfs), Some(config), Some(service)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_STREAM_ROOTFS"),
        guest_artifact("GUEST_STREAM_FUNCTION_CONFIG"),
        require(host_binary("lambda-vm"), "lambda-vm"),
    ) else {
        return;
    };
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microvm-stream-state");
    let _ = std::fs::remove_dir_all(&state);
    let mut command = Command::new(service);
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--function-config")
        .arg(config)
        .arg("--state-dir")
        .arg(&state)
        // Two processes start in the guest before init ends (the extension, then the runtime),
        // at about 2 s each on this project's emulated KVM, slower on a loaded host: allow more
        // than Lambda's 10 s.
        .args(["--init-timeout", "300"])
        .args(["--listen", "127.0.0.1:0"]);
    let mut server = LocalServer::from_command(command, "lambda-vm", true);

    // The first invoke boots the VM: the extension registers, then the runtime starts.
    let event = json!({"chunks": ["one ", "two ", "three"]});
    let summary = aws_clients::read_stream(&server.invoke_addr, "stream-ext", &event, &[]);
    assert_eq!(summary["status"], 200, "{summary}");
    assert!(summary["complete"].get("ErrorCode").is_none(), "{summary}");
    let chunks: Vec<u8> = summary["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert!(
        chunks.ends_with(b"\0\0\0\0\0\0\0\0one two three"),
        "{summary}"
    );
    assert!(summary["chunk_count"].as_u64().unwrap() >= 3, "{summary}");

    // A buffered invoke of the same function gets the whole body.
    let reply = server.invoke(&json!({"chunks": ["whole"]}));
    assert_eq!(reply.function_error, None, "{}", reply.text());
    assert!(reply.body.ends_with(b"whole"), "{}", reply.text());
    let id = reply.id();

    // The extension saw the invoke and got its platform.report through the Telemetry API. It
    // prints the record after the invoke has answered, and a guest's lines between invokes reach
    // the host with the next one: invoke until it shows (each invoke brings what is pending).
    let expected = format!("rust-extension: telemetry platform.report {id} Success");
    let seen = |server: &LocalServer| {
        server
            .logs()
            .iter()
            .any(|l| guest_line(l).starts_with(&expected))
    };
    for _ in 0..10 {
        if seen(&server) {
            break;
        }
        server.invoke(&json!({"chunks": ["next"]}));
    }
    assert!(seen(&server), "{:#?}", server.logs());
    let invoked = format!("rust-extension: INVOKE {id} ");
    assert!(
        server
            .logs()
            .iter()
            .any(|l| guest_line(l).starts_with(&invoked)),
        "{:#?}",
        server.logs()
    );
    let report = server.wait_for_log(Duration::from_secs(60), |l| {
        guest_line(l).starts_with(&format!("REPORT RequestId: {id}"))
    });
    assert!(report.contains("Memory Size: 128 MB"), "{report}");

    let status = server
        .terminate(Duration::from_secs(120))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
}
