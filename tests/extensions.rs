//! Lambda extensions in local mode, with real extension processes: a shell extension on curl
//! and a Python one (`tests/extensions/`), next to the conformance function on the unmodified
//! `lambda_runtime` crate, served by `lambda-local --extensions-dir`.

use integration_tests::peers::Peer;
use integration_tests::server::LocalServer;
use integration_tests::{host_binary, require, wait_for, wait_until, workspace_root};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// How long a line may take to follow what caused it.
const LOG_WAIT: Duration = Duration::from_secs(30);

/// A function environment with the named extensions of `tests/extensions/` in its extensions
/// directory, and `env` for the function and its extensions.
struct Setup {
    server: LocalServer,
    /// Holds the extensions directory for the server's life.
    _dir: tempfile::TempDir,
}

fn start(extensions: &[&str], env: &[(&str, String)], extra: &[&str]) -> Option<Setup> {
    let mut launch = Peer::LambdaRuntimeCrate.launch()?;
    let dir = tempfile::tempdir().unwrap();
    let opt = dir.path().join("extensions");
    std::fs::create_dir(&opt).unwrap();
    for name in extensions {
        // The scripts live in tests/extensions; the lambda-extension peer is built.
        let source = match *name {
            "rust-extension" | "bootstrap-extension" => require(host_binary(name), name)?,
            _ => workspace_root().join("tests/extensions").join(name),
        };
        std::fs::copy(&source, opt.join(name)).unwrap();
    }
    launch
        .env
        .extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let opt_arg = opt.display().to_string();
    let mut args = vec!["--extensions-dir", &opt_arg, "--timeout", "20"];
    args.extend_from_slice(extra);
    let server = LocalServer::start(&launch, &args)?;
    Some(Setup { server, _dir: dir })
}

/// The events an extension printed, parsed (`NAME: {json}` lines).
fn events(server: &LocalServer, name: &str) -> Vec<Value> {
    let prefix = format!("{name}: {{");
    server
        .logs()
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix[..prefix.len() - 1]))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect()
}

fn position(logs: &[String], predicate: impl Fn(&str) -> bool) -> Option<usize> {
    logs.iter().position(|l| predicate(l))
}

#[test]
fn shell_and_python_extensions_get_every_invoke_and_shutdown() {
    let Some(mut setup) = start(&["ext-sh", "ext-py"], &[], &[]) else {
        return;
    };
    let server = &setup.server;
    let first = server.assert_echo(&json!({"n": 1}));
    let second = server.assert_echo(&json!({"n": 2}));
    let ids = [first.id(), second.id()];
    for name in ["ext-sh", "ext-py"] {
        let got = wait_for(LOG_WAIT, || {
            let invokes: Vec<Value> = events(server, name)
                .into_iter()
                .filter(|e| e["eventType"] == "INVOKE")
                .collect();
            (invokes.len() == 2).then_some(invokes)
        })
        .unwrap_or_else(|| panic!("{name} got both invokes: {:#?}", server.logs()));
        for (event, id) in got.iter().zip(&ids) {
            assert_eq!(event["requestId"], id.as_str(), "{event}");
            assert_eq!(
                event["invokedFunctionArn"],
                "arn:aws:lambda:us-east-1:012345678912:function:function"
            );
            assert!(event["deadlineMs"].as_u64().unwrap() > integration_tests::epoch_ms());
            assert_eq!(event["tracing"]["type"], "X-Amzn-Trace-Id", "{event}");
            assert!(event["tracing"]["value"]
                .as_str()
                .unwrap()
                .starts_with("Root=1-"));
        }
    }
    // The runtime saw the same trace as the extensions.
    let context = server.invoke(&json!({"action": "context"})).json();
    let logs = server.wait_for_logs(LOG_WAIT, 3, |l| l.starts_with("ext-py: {\"deadlineMs\""));
    assert!(
        logs[2].contains(context["trace_id"].as_str().unwrap()),
        "{logs:?} {context}"
    );
    // Registration answered with the function and, as asked, the account.
    let registered = server.wait_for_log(LOG_WAIT, |l| l.starts_with("ext-py: registered "));
    let body: Value = serde_json::from_str(&registered["ext-py: registered ".len()..]).unwrap();
    assert_eq!(body["functionName"], "function");
    assert_eq!(body["functionVersion"], "$LATEST");
    assert_eq!(body["handler"], "echo");
    assert_eq!(body["accountId"], "012345678912");
    // Init waited for both, so it covers them: the first REPORT has it.
    let report = server.report_for(&ids[0]);
    assert!(report.contains("\tInit Duration: "), "{report}");

    let status = setup
        .server
        .terminate(LOG_WAIT)
        .expect("lambda-local stopped");
    assert!(status.success(), "{status:?}");
    for name in ["ext-sh", "ext-py"] {
        let shutdown = events(&setup.server, name)
            .into_iter()
            .find(|e| e["eventType"] == "SHUTDOWN")
            .unwrap_or_else(|| panic!("{name} got SHUTDOWN: {:#?}", setup.server.logs()));
        assert_eq!(shutdown["shutdownReason"], "spindown", "{shutdown}");
        assert!(shutdown["deadlineMs"].as_u64().is_some(), "{shutdown}");
    }
}

#[test]
fn an_invoke_is_over_only_when_every_extension_asked_for_its_next_event() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let env = [
        ("EXT_MODE", "post-invoke".to_owned()),
        ("EXT_GATE", gate.display().to_string()),
    ];
    let Some(setup) = start(&["ext-py"], &env, &[]) else {
        return;
    };
    let server = &setup.server;
    // The answer comes as soon as the runtime gives it, while the extension still works.
    let reply = server.assert_echo(&json!({"n": 1}));
    let id = reply.id();
    let end = format!("END RequestId: {id}");
    assert!(
        !server.logs().contains(&end),
        "END before the extension was done: {:#?}",
        server.logs()
    );
    let second = server.invoke_in_background(b"{\"n\":2}", &[]);
    std::fs::File::create(&gate).unwrap();
    server.wait_for_log(LOG_WAIT, |l| l == end);
    let logs = server.logs();
    let done = position(&logs, |l| l == format!("ext-py: done with {id}")).expect("done");
    let end_at = position(&logs, |l| l == end).unwrap();
    let report_at = position(&logs, |l| l.starts_with(&format!("REPORT RequestId: {id}"))).unwrap();
    assert!(done < end_at && end_at < report_at, "{logs:#?}");
    // The next invocation started only after that.
    let second = second.join().unwrap();
    assert_eq!(second.json(), json!({"n": 2}));
    let logs = server.logs();
    let started = position(&logs, |l| {
        l.starts_with(&format!("START RequestId: {}", second.id()))
    });
    assert!(started.unwrap() > report_at, "{logs:#?}");
}

#[test]
fn an_extension_that_never_registers_fails_init_with_a_clear_error() {
    let env = [("EXT_MODE", "never-register".to_owned())];
    let Some(mut setup) = start(&["ext-py"], &env, &["--init-timeout", "2"]) else {
        return;
    };
    for _ in 0..2 {
        let error = setup.server.invoke(&json!({})).unhandled_error();
        assert_eq!(error["errorType"], "Runtime.InitTimeout", "{error}");
        let message = error["errorMessage"].as_str().unwrap();
        assert!(message.contains("ext-py did not register"), "{message}");
    }
    let init = setup
        .server
        .wait_for_log(LOG_WAIT, |l| l.starts_with("INIT_REPORT"));
    assert!(init.ends_with("Error Type: Runtime.InitTimeout"), "{init}");
    setup.server.assert_serving();
}

#[test]
fn an_extension_that_crashes_mid_invoke_fails_it_and_the_next_invoke_runs() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("EXT_MODE", "crash-on-invoke".to_owned()),
        ("EXT_GATE", dir.path().join("crashed").display().to_string()),
    ];
    let Some(mut setup) = start(&["ext-py"], &env, &[]) else {
        return;
    };
    // The function is still sleeping when the extension dies.
    let reply = setup.server.invoke(&json!({"action": "sleep", "ms": 5000}));
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], "Extension.Crash", "{error}");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Extension ext-py exited: exit status 7"),
        "{error}"
    );
    let report = setup.server.report_for(&reply.id());
    assert!(
        report.ends_with("Status: error\tError Type: Extension.Crash\t"),
        "{report}"
    );
    // A fresh environment, extension and all.
    let again = setup.server.assert_echo(&json!({"again": true}));
    let report = setup.server.report_for(&again.id());
    assert!(report.contains("Init Duration"), "{report}");
    setup.server.assert_serving();
}

#[test]
fn an_extension_that_ignores_shutdown_is_killed_at_the_deadline() {
    let env = [("EXT_MODE", "ignore-shutdown".to_owned())];
    let Some(mut setup) = start(&["ext-py"], &env, &[]) else {
        return;
    };
    setup.server.assert_echo(&json!({"n": 1}));
    let status = setup
        .server
        .terminate(LOG_WAIT)
        .expect("lambda-local stopped");
    assert!(status.success(), "{status:?}");
    let logs = setup.server.logs();
    let ignored = position(&logs, |l| l == "ext-py: ignoring SHUTDOWN").expect("SHUTDOWN seen");
    let killed = position(&logs, |l| {
        l == "rapid: ext-py did not exit by the shutdown deadline; killed"
    })
    .expect("killed at the deadline");
    assert!(ignored < killed, "{logs:#?}");
}

#[test]
fn init_and_exit_errors_fail_with_the_extensions_error_type() {
    let env = [("EXT_MODE", "init-error".to_owned())];
    let Some(setup) = start(&["ext-py"], &env, &[]) else {
        return;
    };
    let error = setup.server.invoke(&json!({})).unhandled_error();
    assert_eq!(error["errorType"], "Extension.ConfigInvalid", "{error}");
    assert!(error["errorMessage"]
        .as_str()
        .unwrap()
        .contains("the configuration is invalid"));
    let init = setup
        .server
        .wait_for_log(LOG_WAIT, |l| l.starts_with("INIT_REPORT"));
    assert!(
        init.ends_with("Error Type: Extension.ConfigInvalid"),
        "{init}"
    );
    drop(setup);

    let env = [("EXT_MODE", "exit-error".to_owned())];
    let Some(setup) = start(&["ext-py"], &env, &[]) else {
        return;
    };
    let reply = setup.server.invoke(&json!({"action": "sleep", "ms": 5000}));
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], "Extension.Broken", "{error}");
    assert!(error["errorMessage"]
        .as_str()
        .unwrap()
        .contains("lost its backend"));
}

/// Waits until `path` holds at least one line satisfying `predicate`.
pub fn wait_for_line(path: &Path, predicate: impl Fn(&str) -> bool) -> bool {
    wait_until(LOG_WAIT, || {
        std::fs::read_to_string(path).is_ok_and(|text| text.lines().any(&predicate))
    })
}

/// A free port on the loopback (bound and let go: the extension binds it next).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The telemetry events the Python extension received, in order.
fn received(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn the_telemetry_api_delivers_platform_records_and_function_lines() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records");
    let env = [
        ("EXT_MODE", "telemetry".to_owned()),
        ("EXT_PORT", free_port().to_string()),
        ("EXT_RECORDS", records.display().to_string()),
        ("EXT_TYPES", "platform,function,extension".to_owned()),
    ];
    let Some(setup) = start(&["ext-py"], &env, &[]) else {
        return;
    };
    let server = &setup.server;
    let mut ids = Vec::new();
    for n in 0..3 {
        let message = format!("hello telemetry {n}");
        let reply = server.invoke(&json!({"action": "log", "message": message}));
        assert_eq!(reply.json()["logged"], message.as_str());
        ids.push(reply.id());
    }
    // Every invoke's platform.report arrives (and the lines before it).
    let all = wait_for(LOG_WAIT, || {
        let all = received(&records);
        let reports = all
            .iter()
            .filter(|e| e["type"] == "platform.report")
            .count();
        (reports == ids.len()).then_some(all)
    })
    .unwrap_or_else(|| panic!("three reports: {:#?}", received(&records)));
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "platform.initStart",
        "platform.telemetrySubscription",
        "platform.extension",
        "platform.initRuntimeDone",
        "platform.initReport",
        "extension",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let at = |kind: &str, id: &str| {
        all.iter()
            .position(|e| e["type"] == kind && e["record"]["requestId"] == id)
            .unwrap_or_else(|| panic!("{kind} of {id}: {all:#?}"))
    };
    for (n, id) in ids.iter().enumerate() {
        let (start, done, report) = (
            at("platform.start", id),
            at("platform.runtimeDone", id),
            at("platform.report", id),
        );
        let line = all
            .iter()
            .position(|e| e["type"] == "function" && e["record"] == format!("hello telemetry {n}"))
            .unwrap_or_else(|| panic!("the function's line {n}: {all:#?}"));
        assert!(
            start < line && line < report && start < done && done < report,
            "{kinds:?}"
        );
        let done = &all[done]["record"];
        assert_eq!(done["status"], "success", "{done}");
        assert!(done["metrics"]["durationMs"].as_f64().is_some(), "{done}");
        assert!(
            done["metrics"]["producedBytes"].as_u64().unwrap() > 0,
            "{done}"
        );
        let spans: Vec<&str> = done["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(spans, ["responseLatency", "responseDuration"], "{done}");
        let report = &all[report]["record"];
        assert_eq!(report["status"], "success", "{report}");
        let metrics = &report["metrics"];
        assert_eq!(metrics["memorySizeMB"], 128, "{report}");
        assert!(
            metrics["billedDurationMs"].as_u64().unwrap() >= 1,
            "{report}"
        );
        assert!(metrics["maxMemoryUsedMB"].as_u64().is_some(), "{report}");
        assert_eq!(metrics.get("initDurationMs").is_some(), n == 0, "{report}");
        assert_eq!(report["tracing"]["type"], "X-Amzn-Trace-Id", "{report}");
        for event in &all {
            let time = event["time"].as_str().unwrap();
            assert!(time.len() == 24 && time.ends_with('Z'), "{event}");
        }
    }
    let init = &all[kinds
        .iter()
        .position(|k| *k == "platform.initStart")
        .unwrap()]["record"];
    assert_eq!(init["initializationType"], "on-demand", "{init}");
    assert_eq!(init["phase"], "init", "{init}");
    let extension = &all[kinds
        .iter()
        .position(|k| *k == "platform.extension")
        .unwrap()]["record"];
    assert_eq!(extension["name"], "ext-py", "{extension}");
    assert_eq!(extension["state"], "Ready", "{extension}");
}

#[test]
fn the_lambda_extension_crate_runs_unmodified_with_its_telemetry_processor() {
    let env = [("RUST_EXTENSION_TELEMETRY_PORT", free_port().to_string())];
    let Some(mut setup) = start(&["rust-extension"], &env, &[]) else {
        return;
    };
    let server = &setup.server;
    let reply = server.invoke(&json!({"action": "log", "message": "to the crate"}));
    let id = reply.id();
    assert_eq!(reply.json()["logged"], "to the crate");
    let context = server.invoke(&json!({"action": "context"}));
    let trace = context.json()["trace_id"].as_str().unwrap().to_owned();
    for expected in [
        format!("rust-extension: INVOKE {id} "),
        format!("rust-extension: INVOKE {} {trace}", context.id()),
        "rust-extension: telemetry platform.initStart OnDemand".to_owned(),
        "rust-extension: telemetry platform.initReport true".to_owned(),
        format!("rust-extension: telemetry platform.start {id}"),
        "rust-extension: telemetry function to the crate".to_owned(),
        format!(
            "rust-extension: telemetry platform.runtimeDone {id} Success {}",
            reply.body.len()
        ),
        format!("rust-extension: telemetry platform.report {id} Success 128 MB"),
    ] {
        server.wait_for_log(LOG_WAIT, |l| l.starts_with(&expected));
    }
    // The crate refuses a whole batch it cannot parse into its types: the records above got
    // through, so each kind parsed.
    let status = setup
        .server
        .terminate(LOG_WAIT)
        .expect("lambda-local stopped");
    assert!(status.success(), "{status:?}");
    assert!(
        setup
            .server
            .logs()
            .contains(&"rust-extension: SHUTDOWN spindown".to_owned()),
        "{:#?}",
        setup.server.logs()
    );
}

#[test]
fn an_extension_on_the_bootstrap_library_gets_events_and_telemetry() {
    let Some(mut setup) = start(&["bootstrap-extension"], &[], &[]) else {
        return;
    };
    let server = &setup.server;
    let reply = server.invoke(&json!({"action": "log", "message": "to our extension"}));
    let id = reply.id();
    for expected in [
        format!("bootstrap-extension: INVOKE {id}"),
        "bootstrap-extension: telemetry platform.initStart ".to_owned(),
        format!("bootstrap-extension: telemetry platform.start {id}"),
        "bootstrap-extension: telemetry function to our extension".to_owned(),
        format!("bootstrap-extension: telemetry platform.runtimeDone {id}"),
        format!("bootstrap-extension: telemetry platform.report {id}"),
    ] {
        server.wait_for_log(LOG_WAIT, |l| l == expected);
    }
    let status = setup
        .server
        .terminate(LOG_WAIT)
        .expect("lambda-local stopped");
    assert!(status.success(), "{status:?}");
    let logs = setup.server.logs();
    assert!(
        logs.contains(&"bootstrap-extension: SHUTDOWN Spindown".to_owned()),
        "{logs:#?}"
    );
    // It exits on SHUTDOWN by itself: nothing had to be killed.
    assert!(
        !logs.iter().any(|l| l.contains("did not exit")),
        "{logs:#?}"
    );
}

/// An example of `bootstrap/examples/`, built with the workspace (`--all-targets`).
fn example(name: &str) -> Option<std::path::PathBuf> {
    let profile = std::env::var("TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = integration_tests::target_dir()
        .join(profile)
        .join("examples")
        .join(name);
    require(path, &format!("the bootstrap example {name}"))
}

#[test]
fn the_bootstrap_readme_examples_stream_and_extend() {
    let (Some(streaming), Some(extension)) = (example("streaming"), example("extension")) else {
        return;
    };
    if !integration_tests::aws_clients::have_boto3() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opt = dir.path().join("extensions");
    std::fs::create_dir(&opt).unwrap();
    std::fs::copy(&extension, opt.join("extension")).unwrap();
    let launch = integration_tests::peers::Launch {
        runtime: streaming,
        handler: "count".into(),
        task_root: dir.path().to_owned(),
        env: Vec::new(),
    };
    let opt_arg = opt.display().to_string();
    let Some(mut server) = LocalServer::start(&launch, &["--extensions-dir", &opt_arg]) else {
        return;
    };
    let summary = integration_tests::aws_clients::read_stream(
        &server.invoke_addr,
        "function",
        &json!({"lines": 3}),
        &[],
    );
    let chunks: Vec<String> = summary["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .collect();
    assert_eq!(
        chunks.concat(),
        "line 1 of 3\nline 2 of 3\nline 3 of 3\n",
        "{summary}"
    );
    assert_eq!(summary["content_type"], "text/plain", "{summary}");
    server.wait_for_log(LOG_WAIT, |l| l.starts_with("extension: invoke 1: "));
    server.wait_for_log(LOG_WAIT, |l| l.starts_with("extension: report {"));
    let status = server.terminate(LOG_WAIT).expect("lambda-local stopped");
    assert!(status.success(), "{status:?}");
    let logs = server.logs();
    assert!(
        logs.contains(&"extension: shutdown (Spindown) after 1 invokes, 1 reports".to_owned()),
        "{logs:#?}"
    );
}

#[test]
fn a_snap_start_environment_reports_its_restore_through_the_telemetry_api() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records");
    let env = [
        ("EXT_MODE", "telemetry".to_owned()),
        ("EXT_PORT", free_port().to_string()),
        ("EXT_RECORDS", records.display().to_string()),
    ];
    let Some(setup) = start(&["ext-py"], &env, &["--init-type", "snap-start"]) else {
        return;
    };
    let reply = setup.server.assert_echo(&json!({"restored": true}));
    let report = setup.server.report_for(&reply.id());
    assert!(report.contains("\tRestore Duration: "), "{report}");
    let all = wait_for(LOG_WAIT, || {
        let all = received(&records);
        all.iter()
            .any(|e| e["type"] == "platform.report")
            .then_some(all)
    })
    .unwrap_or_else(|| panic!("a platform.report: {:#?}", received(&records)));
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let at = |kind: &str| {
        kinds
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("{kind} in {kinds:?}"))
    };
    assert!(
        at("platform.initReport") < at("platform.restoreStart"),
        "{kinds:?}"
    );
    assert!(
        at("platform.restoreStart") < at("platform.restoreRuntimeDone"),
        "{kinds:?}"
    );
    assert!(
        at("platform.restoreRuntimeDone") < at("platform.restoreReport"),
        "{kinds:?}"
    );
    assert!(
        at("platform.restoreReport") < at("platform.start"),
        "{kinds:?}"
    );
    let init = &all[at("platform.initStart")]["record"];
    assert_eq!(init["initializationType"], "snap-start", "{init}");
    let restored = &all[at("platform.restoreReport")]["record"];
    assert_eq!(restored["status"], "success", "{restored}");
    assert!(
        restored["metrics"]["durationMs"].as_f64().is_some(),
        "{restored}"
    );
    let metrics = &all[at("platform.report")]["record"]["metrics"];
    assert!(metrics["restoreDurationMs"].as_f64().is_some(), "{metrics}");
}
