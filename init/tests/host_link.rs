//! `init` driven from the host side of the host link (`lambda_vm::host_link`) over a Unix socket, with
//! the conformance function on our `bootstrap` library (`bootstrap-echo`) as the runtime: as an
//! ordinary process, and as PID 1 of a PID namespace (`unshare`, with `--no-setup`).

use integration_tests::{skip, skip_unless, wait_for, wait_until};
use lambda_vm::host_link::{HostLink, Invoke, Listener, Outcome, Reset, PORT};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `bootstrap-echo`, built beside `init` (scripts/test.sh builds the whole workspace first).
fn bootstrap_echo() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_init")).with_file_name("bootstrap-echo");
    if !path.exists() {
        skip!(return None;
            "{} not found; run `cargo build -p bootstrap-echo` (scripts/test.sh builds it)",
            path.display()
        );
    }
    Some(path)
}

/// A running init and the host's end of its link.
struct Guest {
    dir: tempfile::TempDir,
    child: Child,
    listener: Listener,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Guest {
    /// Writes `function.json` (with `extra` keys) and starts init through `wrapper` (e.g.
    /// `unshare ...`) with `args`.
    fn start(runtime: &Path, extra: &str, wrapper: &[&str], args: &[&str]) -> Guest {
        let extra = if extra.contains("timeout_secs") {
            extra.to_owned()
        } else {
            format!(r#", "timeout_secs": 10{extra}"#)
        };
        Self::start_function(runtime, "echo", None, &extra, wrapper, args)
    }

    /// Like [`Guest::start`], with the function's handler and task root (default: a temp dir).
    fn start_function(
        runtime: &Path,
        handler: &str,
        task_root: Option<&Path>,
        extra: &str,
        wrapper: &[&str],
        args: &[&str],
    ) -> Guest {
        // Not under /tmp: as PID 1 with machine setup, init mounts a tmpfs there, which would
        // hide the link's socket (a checkout may itself live under /tmp).
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let base = if base.starts_with("/tmp") {
            Path::new("/var/tmp")
        } else {
            base
        };
        let dir = tempfile::tempdir_in(base).unwrap();
        let task_root = task_root.unwrap_or(dir.path()).to_path_buf();
        let config = dir.path().join("function.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"handler": "{handler}", "function_name": "init-test", "runtime": "{}"
                     {extra}}}"#,
                runtime.display()
            ),
        )
        .unwrap();
        let listener = Listener::bind(&dir.path().join("v.sock"), PORT).unwrap();
        let stderr = std::fs::File::create(dir.path().join("init.stderr")).unwrap();
        let (program, wrapper_args) = match wrapper.split_first() {
            Some((program, rest)) => (*program, rest.to_vec()),
            None => (env!("CARGO_BIN_EXE_init"), Vec::new()),
        };
        let mut command = Command::new(program);
        if !wrapper.is_empty() {
            command.args(&wrapper_args).arg(env!("CARGO_BIN_EXE_init"));
        }
        let link = format!("unix:{}", listener.path().display());
        command
            .args(["--config", config.to_str().unwrap(), "--host-link", &link])
            .args(["--runtime-api", "127.0.0.1:0"])
            .args(["--task-root", task_root.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().unwrap();
        Guest {
            dir,
            child,
            listener,
            logs: Arc::default(),
        }
    }

    /// Accepts init's next connection and collects its log lines.
    fn accept(&self) -> HostLink {
        let mut link = self.listener.accept(WAIT).unwrap();
        assert!(link.peer().agent.starts_with("init "), "{:?}", link.peer());
        link.set_timeout(Some(WAIT)).unwrap();
        let logs = Arc::clone(&self.logs);
        link.on_log(move |line| logs.lock().unwrap().push(line.to_owned()));
        link
    }

    fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn wait(&mut self) -> ExitStatus {
        wait_for(WAIT, || self.child.try_wait().unwrap()).expect("init did not exit")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let stderr = std::fs::read_to_string(self.dir.path().join("init.stderr"));
            eprintln!("init's stderr:\n{}", stderr.unwrap_or_default());
            eprintln!("function log:\n{}", self.logs.lock().unwrap().join("\n"));
        }
    }
}

fn invoke(id: &str, event: &str) -> Invoke {
    Invoke {
        request_id: id.into(),
        event: event.as_bytes().into(),
        trace_id: Some("Root=1-5759e988-bd862e3fe1be46a994272793".into()),
        client_context: None,
        cognito_identity: None,
    }
}

fn error_json(outcome: Outcome) -> serde_json::Value {
    error_and_reset(outcome).0
}

/// The error JSON of a failed invoke, and whether the guest said it reset the environment.
fn error_and_reset(outcome: Outcome) -> (serde_json::Value, Option<Reset>) {
    match outcome {
        Outcome::Failure { body, reset } => (serde_json::from_slice(&body).unwrap(), reset),
        Outcome::Success(body) => {
            panic!("expected a failure, got {}", String::from_utf8_lossy(&body))
        }
    }
}

#[test]
fn invokes_succeed_fail_and_survive_a_runtime_crash() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    let mut guest = Guest::start(&runtime, "", &[], &[]);
    let mut link = guest.accept();

    let event = r#"{"hello": "world"}"#;
    assert_eq!(
        link.invoke(invoke("r1", event)).unwrap(),
        Outcome::Success(event.as_bytes().to_vec().into())
    );
    assert!(guest.logged("START RequestId: r1"));
    assert!(guest.logged("REPORT RequestId: r1"));

    let (error, reset) = error_and_reset(
        link.invoke(invoke("r2", r#"{"action":"error","message":"boom"}"#))
            .unwrap(),
    );
    assert_eq!(error["errorType"], "EchoError");
    assert_eq!(
        reset, None,
        "a handler error leaves the environment as it is"
    );
    assert!(error["errorMessage"].as_str().unwrap().contains("boom"));

    let Outcome::Success(context) = link
        .invoke(invoke("r3", r#"{"action":"context"}"#))
        .unwrap()
    else {
        panic!("context failed")
    };
    let context: serde_json::Value = serde_json::from_slice(&context).unwrap();
    assert_eq!(context["request_id"], "r3");
    assert_eq!(context["function_name"], "init-test");
    assert_eq!(
        context["trace_id"],
        "Root=1-5759e988-bd862e3fe1be46a994272793"
    );

    let (crash, reset) =
        error_and_reset(link.invoke(invoke("r4", r#"{"action":"crash"}"#)).unwrap());
    assert_eq!(crash["errorType"], "Runtime.ExitError");
    assert!(
        matches!(reset, Some(Reset::RuntimeExit { .. })),
        "{reset:?}"
    );
    assert_eq!(
        link.invoke(invoke("r5", "[1]")).unwrap(),
        Outcome::Success(b"[1]".to_vec().into()),
        "a fresh runtime serves the next invoke"
    );

    link.shutdown().unwrap();
    assert!(guest.wait().success());
}

#[test]
fn with_timing_on_each_answer_comes_with_the_guests_intervals() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    let mut guest = Guest::start(&runtime, "", &["env", "INIT_TIMING=1"], &[]);
    let mut link = guest.accept();
    for id in ["t1", "t2"] {
        assert_eq!(
            link.invoke(invoke(id, "{}")).unwrap(),
            Outcome::Success(b"{}".to_vec().into())
        );
        let timing = link.last_timing().expect("an invoke_timing frame").clone();
        assert_eq!(timing.request_id, id);
        assert!(
            0 < timing.next_us && timing.next_us <= timing.outcome_us,
            "{timing:?}"
        );
        assert!(timing.outcome_us <= timing.sent_us, "{timing:?}");
    }
    link.shutdown().unwrap();
    assert!(guest.wait().success());

    // Off by default: no frame, nothing recorded.
    let mut guest = Guest::start(&runtime, "", &[], &[]);
    let mut link = guest.accept();
    assert!(matches!(
        link.invoke(invoke("u1", "{}")),
        Ok(Outcome::Success(_))
    ));
    assert_eq!(link.last_timing(), None);
    link.shutdown().unwrap();
    assert!(guest.wait().success());
}

#[test]
fn a_timed_out_invoke_is_reported_and_a_fresh_runtime_serves_the_next() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    let mut guest = Guest::start(&runtime, r#", "timeout_secs": 1"#, &[], &[]);
    let mut link = guest.accept();
    let (error, reset) = error_and_reset(
        link.invoke(invoke("t1", r#"{"action":"sleep","ms":5000}"#))
            .unwrap(),
    );
    assert_eq!(error["errorType"], "Sandbox.Timedout", "{error}");
    assert_eq!(reset, Some(Reset::Timeout));
    assert!(error["errorMessage"]
        .as_str()
        .unwrap()
        .contains("Task timed out after 1.00 seconds"));
    assert_eq!(
        link.invoke(invoke("t2", "[2]")).unwrap(),
        Outcome::Success(b"[2]".to_vec().into())
    );
    link.shutdown().unwrap();
    assert!(guest.wait().success());
}

/// The test virtualenv's Python, which has awslambdaric (scripts/test.sh installs it).
fn venv_python() -> Option<PathBuf> {
    let path = std::env::var_os("TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3"));
    if !path.exists() {
        skip!(return None;
            "{} not found; scripts/test.sh creates the virtualenv with awslambdaric",
            path.display()
        );
    }
    Some(path)
}

#[test]
fn an_unmodified_awslambdaric_function_is_served_through_init() {
    let Some(python) = venv_python() else {
        return;
    };
    let function = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/functions/python-ric")
        .canonicalize()
        .unwrap();
    let extra = format!(r#", "environment": {{"PYTHON": "{}"}}"#, python.display());
    let extra = format!(r#", "timeout_secs": 10{extra}"#);
    let mut guest = Guest::start_function(
        &function.join("bootstrap"),
        "echo.handler",
        Some(&function),
        &extra,
        &[],
        &[],
    );
    let mut link = guest.accept();
    let event = r#"{"from": "awslambdaric"}"#;
    let Outcome::Success(body) = link.invoke(invoke("p1", event)).unwrap() else {
        panic!("awslambdaric echo failed")
    };
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, serde_json::json!({"from": "awslambdaric"}));
    let error = error_json(
        link.invoke(invoke("p2", r#"{"action":"error","message":"py-boom"}"#))
            .unwrap(),
    );
    assert_eq!(error["errorType"], "ValueError", "{error}");
    assert!(guest.logged("REPORT RequestId: p2"));
    link.shutdown().unwrap();
    assert!(guest.wait().success());
}

#[test]
fn a_dropped_link_ends_an_ordinary_init() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    let mut guest = Guest::start(&runtime, "", &[], &[]);
    let mut link = guest.accept();
    assert!(matches!(
        link.invoke(invoke("r1", "{}")),
        Ok(Outcome::Success(_))
    ));
    drop(link);
    assert!(guest.wait().success());
}

#[test]
fn snap_start_waits_for_restore_on_a_new_connection() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    let extra = r#", "initialization_type": "snap-start""#;
    let mut guest = Guest::start(&runtime, extra, &[], &["--reconnect"]);
    let mut link = guest.accept();
    link.wait_init_done().unwrap();
    assert!(guest.logged("conformance: before_snapshot"));
    // What a snapshot restore looks like to init: the connection drops, it reconnects, and the
    // new host sends Restore first.
    drop(link);
    let mut link = guest.accept();
    link.restore().unwrap();
    assert_eq!(
        link.invoke(invoke("r1", r#"{"after":"restore"}"#)).unwrap(),
        Outcome::Success(br#"{"after":"restore"}"#.to_vec().into())
    );
    assert!(guest.logged("conformance: after_restore"));
    link.shutdown().unwrap();
    assert!(guest.wait().success());
}

#[test]
fn sigterm_is_forwarded_to_the_runtime_and_ends_init() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    // A runtime that notes the SIGTERM in a file (its log would not reach the host any more).
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, marker) = (dir.path().join("bootstrap"), dir.path().join("got-term"));
    let script = format!(
        "#!/bin/sh\ntrap 'echo term > {}; exit 0' TERM\n{} &\nwait\n",
        marker.display(),
        runtime.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&wrapper, executable).unwrap();

    let mut guest = Guest::start(&wrapper, "", &[], &[]);
    let mut link = guest.accept();
    assert!(matches!(
        link.invoke(invoke("r1", "{}")),
        Ok(Outcome::Success(_))
    ));
    let pid = i32::try_from(guest.child.id()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    assert!(guest.wait().success());
    assert!(marker.exists(), "the runtime got SIGTERM");
}

/// init's host pid when it runs under `unshare --fork`: the child of the unshare process.
fn child_of(parent: u32) -> Option<u32> {
    proc_info::all().find(|p| p.ppid == parent).map(|p| p.pid)
}

/// Children of `parent` running `command`, zombies included.
fn children_named(parent: u32, command: &str) -> usize {
    proc_info::all()
        .filter(|p| p.ppid == parent && p.command == command)
        .count()
}

/// Zombie children of `parent`.
fn zombies_of(parent: u32) -> usize {
    proc_info::all()
        .filter(|p| p.ppid == parent && p.is_zombie())
        .count()
}

#[test]
fn as_pid_1_of_a_pid_namespace_it_serves_and_reaps_orphans() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    let unshare = ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child"];
    let works = Command::new(unshare[0])
        .args(&unshare[1..])
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    skip_unless!(
        works,
        "`unshare --fork --pid --mount-proc` does not work here (needs root)"
    );
    // The runtime leaves an orphan behind: a background `sleep` whose parent exits at once, so
    // it is re-parented to init (PID 1 of the namespace), which must reap it when it exits.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("bootstrap");
    let script = format!("#!/bin/sh\n(sleep 1 &)\nexec {}\n", runtime.display());
    std::fs::write(&wrapper, script).unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&wrapper, executable).unwrap();

    let mut guest = Guest::start(&wrapper, "", &unshare, &["--no-setup"]);
    let mut link = guest.accept();
    assert_eq!(
        link.invoke(invoke("r1", "{}")).unwrap(),
        Outcome::Success(b"{}".to_vec().into())
    );
    assert!(guest.logged("REPORT RequestId: r1"));
    let init = child_of(guest.child.id()).expect("init runs under unshare");
    assert_eq!(
        children_named(init, "sleep"),
        1,
        "the orphan was re-parented to init"
    );
    assert!(
        wait_until(WAIT, || children_named(init, "sleep") == 0),
        "the orphan was never reaped"
    );
    assert_eq!(zombies_of(init), 0);

    link.shutdown().unwrap();
    assert!(guest.wait().success());
}

/// Init mounts a fresh tmpfs on /tmp when it sets up the machine, so a runtime inside a
/// checkout under /tmp would vanish: copy it out to /var/tmp first.
fn outside_tmp(runtime: PathBuf) -> (Option<tempfile::TempDir>, PathBuf) {
    if !runtime.starts_with("/tmp") {
        return (None, runtime);
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let copy = dir.path().join("bootstrap-echo");
    std::fs::copy(&runtime, &copy).unwrap();
    (Some(dir), copy)
}

#[test]
fn as_pid_1_in_namespaces_it_sets_up_the_machine_and_reboots() {
    let Some(runtime) = bootstrap_echo() else {
        return;
    };
    let (_copy, runtime) = outside_tmp(runtime);
    // New pid, mount, UTS and network namespaces: the mounts, hostname and loopback init sets up
    // are the namespaces' own, and reboot() in a PID namespace only ends that namespace (its
    // init dies of SIGHUP). The test never sends Restore: the wall clock is not namespaced.
    let unshare = [
        "unshare",
        "--fork",
        "--pid",
        "--mount-proc",
        "--uts",
        "--net",
        "--kill-child",
    ];
    let works = Command::new(unshare[0])
        .args(&unshare[1..])
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    skip_unless!(
        works,
        "`unshare --fork --pid --mount-proc --uts --net` does not work here (needs root)"
    );
    let mut guest = Guest::start(&runtime, r#", "tmp_size_mb": 16"#, &unshare, &[]);
    let mut link = guest.accept();
    // The runtime reaches the Runtime API on 127.0.0.1 in a fresh network namespace, whose `lo`
    // starts down: init brought it up.
    assert_eq!(
        link.invoke(invoke("r1", "[2]")).unwrap(),
        Outcome::Success(b"[2]".to_vec().into())
    );
    let init = child_of(guest.child.id()).expect("init runs under unshare");
    let mounts = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    let tmp = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/tmp"))
        .unwrap_or_else(|| panic!("no /tmp mount in\n{mounts}"));
    assert!(
        tmp.contains(" - tmpfs ") && tmp.contains("size=16384k"),
        "{tmp}"
    );
    let hostname = Command::new("nsenter")
        .args(["--target", &init.to_string(), "--uts", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&hostname.stdout).trim(),
        "localhost"
    );

    link.shutdown().unwrap();
    let status = guest.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGHUP),
        "reboot(RB_AUTOBOOT) ended the namespace: {status:?}"
    );
}
