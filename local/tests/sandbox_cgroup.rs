//! The local sandbox's cgroup, end to end: the real `lambda-local`, the shell runtime, the
//! host's real cgroups. The memory limit with `Runtime.OutOfMemory`, the process limit, the
//! kill that reaches a `setsid` child, `Max Memory Used` from the cgroup, and no cgroup left
//! behind by a server that stopped or crashed.
//!
//! Where the host has no cgroup to use, the server says so and these tests pass with a note;
//! under CI (`CI=true`) they fail instead.

use integration_tests::server::LocalServer;
use integration_tests::{ok_or_skip, process_gone, wait_until};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `lambda-local` running the shell runtime, with extra flags.
fn start(extra: &[&str]) -> LocalServer {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/runtimes/echo.sh");
    let root = script.parent().expect("runtimes dir").display().to_string();
    let script = script.display().to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lambda-local"));
    command
        .args([
            "--runtime",
            "/bin/sh",
            "--arg",
            &script,
            "--task-root",
            &root,
        ])
        .args(extra)
        .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"]);
    LocalServer::from_command(command, "lambda-local", true)
}

/// The server's start line about its sandbox.
fn sandbox_line(server: &LocalServer) -> String {
    server.wait_for_log(Duration::from_secs(10), |l| {
        l.starts_with("lambda-local: sandbox: ")
    })
}

/// The parent directories the server makes its cgroups in, from its start line; `Err`, the
/// line, when it has none (the test then skips, or fails under CI).
fn cgroup_parents(server: &LocalServer) -> Result<Vec<PathBuf>, String> {
    let line = sandbox_line(server);
    let Some((_, places)) = line.split_once(" (") else {
        return Err(line);
    };
    if line.contains("sandbox: no cgroup") {
        return Err(line);
    }
    let places = places.split_once(')').map(|(p, _)| p).unwrap_or_default();
    Ok(places
        .split(", ")
        .map(|place| PathBuf::from(place.rsplit(' ').next().unwrap_or(place)))
        .collect())
}

/// The cgroups of server `pid` under `parents`.
fn cgroups_of(parents: &[PathBuf], pid: u32) -> Vec<PathBuf> {
    let prefix = format!("rapid-{pid}-");
    parents
        .iter()
        .flat_map(|parent| std::fs::read_dir(parent).into_iter().flatten().flatten())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

fn invoke(server: &LocalServer, body: &str) -> integration_tests::server::Reply {
    server.invoke_raw(body.as_bytes(), &[])
}

#[test]
fn running_out_of_memory_is_runtime_out_of_memory_and_the_next_invoke_inits_afresh() {
    let mut server = start(&["--memory", "128"]);
    ok_or_skip!(cgroup_parents(&server));
    // A child of the runtime takes 300 MB: it is killed, and the invocation with it.
    let reply = invoke(&server, r#"{"action":"alloc","mb":300}"#);
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], "Runtime.OutOfMemory", "{error}");
    let report = server.report_for(&reply.id());
    assert!(
        report.contains("Status: error\tError Type: Runtime.OutOfMemory\t"),
        "{report}"
    );
    assert!(report.contains("\tMax Memory Used: 128 MB\t"), "{report}");
    let next = server.assert_echo_bytes(br#"{"after":"oom"}"#);
    let report = server.report_for(&next.id());
    assert!(report.contains("Init Duration"), "a fresh init: {report}");

    // The runtime itself grows past the limit: it is killed; same error, same recovery.
    let reply = invoke(&server, r#"{"action":"grow","mb":300}"#);
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], "Runtime.OutOfMemory", "{error}");
    let message = error["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("Runtime exited with error: signal: 9"),
        "{error}"
    );
    server.assert_echo_bytes(br#"{"after":"oom"}"#);
    server.assert_serving();
}

#[test]
fn max_memory_used_is_the_sandbox_peak_even_of_a_child_that_exited() {
    let mut server = start(&["--memory", "512"]);
    ok_or_skip!(cgroup_parents(&server));
    let reply = invoke(&server, r#"{"action":"alloc","mb":100}"#);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), r#"{"allocated":100}"#);
    let report = server.report_for(&reply.id());
    let used: u64 = report
        .split('\t')
        .find_map(|f| f.strip_prefix("Max Memory Used: "))
        .and_then(|v| v.trim_end_matches(" MB").parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!((95..=512).contains(&used), "{report}");
    server.assert_serving();
}

#[test]
fn a_setsid_child_does_not_survive_the_reset() {
    let mut server = start(&[]);
    ok_or_skip!(cgroup_parents(&server));
    let reply = invoke(&server, r#"{"action":"setsid"}"#);
    let orphan: Value = reply.json();
    let orphan = u32::try_from(orphan["orphan"].as_u64().expect("a pid")).unwrap();
    assert!(!process_gone(orphan), "the child runs until the reset");
    // The runtime exits mid-invoke: the environment is reset.
    let crash = invoke(&server, r#"{"action":"crash"}"#);
    assert_eq!(crash.unhandled_error()["errorType"], "Runtime.ExitError");
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(orphan)),
        "the setsid child {orphan} survived the reset"
    );
    server.assert_echo_bytes(b"[]");
    server.assert_serving();
}

#[test]
fn a_fork_bomb_is_bounded_by_the_process_limit_and_reported() {
    let mut server = start(&["--timeout", "60", "--memory", "2048"]);
    ok_or_skip!(cgroup_parents(&server));
    let reply = invoke(&server, r#"{"action":"forks","n":3000}"#);
    assert_eq!(reply.text(), r#"{"forks":"done"}"#);
    let id = reply.id();
    let limit = format!("rapid: RequestId: {id} the function reached its limit of 1024");
    let line = server.wait_for_log(Duration::from_secs(10), |l| l.starts_with(&limit));
    assert!(line.contains(" (forks refused: "), "{line}");
    server.assert_echo_bytes(br#"{"after":"forks"}"#);
    server.assert_serving();
}

#[test]
fn no_cgroup_is_left_after_a_stop_or_a_crash() {
    let mut first = start(&[]);
    let parents = ok_or_skip!(cgroup_parents(&first));
    let orphan = invoke(&first, r#"{"action":"setsid"}"#).json()["orphan"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("a pid");
    let first_pid = first.pid();
    assert!(!cgroups_of(&parents, first_pid).is_empty());
    // Killed without a chance to clean up: its runtime dies with it, the setsid child does
    // not, and its cgroup stays.
    let killed = Command::new("kill")
        .args(["-KILL", &first_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    first.terminate(Duration::from_secs(10));
    assert!(!process_gone(orphan), "the orphan outlives a killed server");
    assert!(!cgroups_of(&parents, first_pid).is_empty());

    // The next server removes what the first left, killing the orphan.
    let mut second = start(&[]);
    let line = sandbox_line(&second);
    assert!(line.contains("removed "), "{line}");
    assert!(cgroups_of(&parents, first_pid).is_empty(), "{line}");
    assert!(wait_until(Duration::from_secs(10), || process_gone(orphan)));

    // A server that stops removes its own.
    second.assert_echo_bytes(b"{}");
    let second_pid = second.pid();
    assert!(!cgroups_of(&parents, second_pid).is_empty());
    assert!(second.terminate(Duration::from_secs(10)).is_some());
    assert_eq!(cgroups_of(&parents, second_pid), Vec::<PathBuf>::new());
}
