//! Conformance: every runtime under test (our `bootstrap` in library and worker form, the
//! unmodified `lambda_runtime` crate and the unmodified awslambdaric) runs the same conformance
//! function (`tests/functions/README.md`) behind the real `lambda-local` server, through the same
//! cases.

use integration_tests::epoch_ms;
use integration_tests::peers::Peer;
use integration_tests::server::LocalServer;
use serde_json::{json, Value};
use std::time::Duration;

fn start(peer: Peer, args: &[&str]) -> Option<LocalServer> {
    let mut launch = peer.launch()?;
    launch
        .env
        .push(("CONFORMANCE_PEER".into(), format!("{peer:?}")));
    LocalServer::start(&launch, args)
}

fn start_failing_init(peer: Peer, args: &[&str]) -> Option<LocalServer> {
    let mut launch = peer.launch()?;
    launch.env.push(("ECHO_FAIL_INIT".into(), "1".into()));
    LocalServer::start(&launch, args)
}

/// The tab-separated `Name: value` fields of a REPORT line.
fn report_fields(line: &str) -> Vec<(String, String)> {
    line.split('\t')
        .filter_map(|field| field.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn report_has(line: &str, name: &str) -> bool {
    report_fields(line).iter().any(|(k, _)| k == name)
}

fn echo_success(peer: Peer) {
    let Some(mut server) = start(peer, &[]) else {
        return;
    };
    let event = json!({"hello": "world", "n": [1, 2, 3], "nested": {"ok": true}});
    let reply = server.invoke(&event);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.function_error, None, "{}", reply.text());
    assert_eq!(reply.json(), event);

    let id = reply.request_id.expect("X-Amzn-RequestId on the reply");
    server.wait_for_log(Duration::from_secs(5), |l| {
        l == format!("START RequestId: {id} Version: $LATEST")
    });
    server.wait_for_log(Duration::from_secs(5), |l| {
        l == format!("END RequestId: {id}")
    });
    let report = server.report_for(&id);
    assert!(
        report.ends_with('\t'),
        "Lambda's REPORT line ends with a tab: {report:?}"
    );
    let fields = report_fields(&report);
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "REPORT RequestId",
            "Duration",
            "Billed Duration",
            "Memory Size",
            "Max Memory Used",
            "Init Duration"
        ],
        "{report:?}"
    );
    for (name, value) in &fields[1..] {
        let (number, unit) = value.split_once(' ').expect("value and unit");
        assert!(number.parse::<f64>().is_ok(), "{name}: {value}");
        assert!(unit == "ms" || unit == "MB", "{name}: {value}");
    }
    assert!(fields
        .iter()
        .any(|(k, v)| k == "Memory Size" && v == "128 MB"));
    server.assert_alive();
}

fn handler_error_then_loop_goes_on(peer: Peer) {
    let Some(mut server) = start(peer, &[]) else {
        return;
    };
    let reply = server.invoke(&json!({"action": "error", "message": "kaboom-4711"}));
    let error = reply.unhandled_error();
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("kaboom-4711"),
        "{error}"
    );
    assert!(
        !error["errorType"].as_str().unwrap_or_default().is_empty(),
        "{error}"
    );

    // The same environment serves the next invoke: no fresh init.
    let reply = server.assert_echo(&json!({"after": "error"}));
    let report = server.report_for(&reply.request_id.unwrap());
    assert!(!report_has(&report, "Init Duration"), "{report}");
    server.assert_alive();
}

fn init_error_is_reported_and_retried(peer: Peer) {
    let Some(mut server) = start_failing_init(peer, &[]) else {
        return;
    };
    for attempt in 1..=2 {
        let reply = server.invoke(&json!({"attempt": attempt}));
        let error = reply.unhandled_error();
        assert!(
            !error["errorType"].as_str().unwrap_or_default().is_empty(),
            "{error}"
        );
    }
    // Each invoke ran init afresh: two init failures were reported.
    let init_reports = server.wait_for_logs(Duration::from_secs(10), 2, |l| {
        l.starts_with("INIT_REPORT") && l.contains("Status: error")
    });
    assert_eq!(init_reports.len(), 2, "{init_reports:#?}");
    server.assert_alive();
}

fn timeout_resets_the_environment(peer: Peer) {
    let Some(mut server) = start(peer, &["--timeout", "1"]) else {
        return;
    };
    let reply = server.invoke(&json!({"action": "sleep", "ms": 5000}));
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], "Sandbox.Timedout", "{error}");
    let message = error["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("Task timed out after 1.00 seconds"),
        "{error}"
    );
    let id = reply.request_id.unwrap();
    server.wait_for_log(Duration::from_secs(5), |l| {
        l.ends_with(&format!("{id} Task timed out after 1.00 seconds"))
    });
    assert!(server.report_for(&id).contains("Status: timeout"));

    // A fresh init serves the next invoke.
    let reply = server.assert_echo(&json!({"after": "timeout"}));
    let report = server.report_for(&reply.request_id.unwrap());
    assert!(report_has(&report, "Init Duration"), "{report}");
    server.assert_alive();
}

fn payload_near_the_sync_limit(peer: Peer) {
    let Some(mut server) = start(peer, &["--timeout", "30"]) else {
        return;
    };
    server.assert_echo(&json!({ "data": "x".repeat(6_000_000) }));
    server.assert_alive();
}

fn response_over_the_limit_fails_cleanly(peer: Peer) {
    let Some(mut server) = start(peer, &["--timeout", "30"]) else {
        return;
    };
    // A JSON string of N bytes plus its two quotes: one byte over the 6291556 limit.
    let error = server
        .invoke(&json!({"action": "big", "bytes": 6_291_555}))
        .unhandled_error();
    assert_eq!(
        error["errorType"], "Function.ResponseSizeTooLarge",
        "{error}"
    );
    server.assert_echo(&json!({"after": "too large"}));
    server.assert_alive();
}

fn many_sequential_invokes(peer: Peer) {
    let Some(mut server) = start(peer, &[]) else {
        return;
    };
    for i in 0..200 {
        let reply = server.invoke(&json!({ "i": i }));
        assert_eq!(reply.function_error, None, "invoke {i}: {}", reply.text());
        assert_eq!(reply.json(), json!({ "i": i }));
    }
    let inits = server
        .logs()
        .iter()
        .filter(|l| l.contains("Init Duration"))
        .count();
    assert_eq!(inits, 1, "one init for 200 invokes");
    server.assert_alive();
}

fn crash_mid_invoke_then_fresh_init(peer: Peer) {
    let Some(mut server) = start(peer, &[]) else {
        return;
    };
    let reply = server.invoke(&json!({"action": "crash"}));
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], "Runtime.ExitError", "{error}");
    server.assert_echo(&json!({"after": "crash"}));
    server.assert_alive();
}

fn context_reaches_the_handler(peer: Peer) {
    let Some(mut server) = start(
        peer,
        &[
            "--timeout",
            "7",
            "--memory",
            "256",
            "--function-name",
            "ctx-fn",
        ],
    ) else {
        return;
    };
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let before = epoch_ms();
    let reply = server.invoke_raw(br#"{"action":"context"}"#, &[("X-Amzn-Trace-Id", trace)]);
    assert_eq!(reply.function_error, None, "{}", reply.text());
    let ctx: Value = reply.json();
    assert_eq!(
        ctx["request_id"].as_str(),
        reply.request_id.as_deref(),
        "{ctx}"
    );
    let arn = ctx["function_arn"].as_str().unwrap_or_default();
    assert!(
        arn.starts_with("arn:aws:lambda:") && arn.ends_with(":function:ctx-fn"),
        "{ctx}"
    );
    let deadline = ctx["deadline_ms"].as_u64().unwrap_or(0);
    assert!(
        deadline >= before + 6_000 && deadline <= epoch_ms() + 7_000,
        "{ctx}"
    );
    assert_eq!(ctx["trace_id"], trace, "{ctx}");
    assert_eq!(ctx["env_trace_id"], trace, "{ctx}");
    assert_eq!(ctx["function_name"], "ctx-fn", "{ctx}");
    assert_eq!(ctx["memory_mb"], 256, "{ctx}");
    server.assert_alive();
}

fn snap_start_runs_hooks_and_reports_restore(peer: Peer) {
    let Some(mut server) = start(peer, &["--init-type", "snap-start"]) else {
        return;
    };
    let reply = server.assert_echo(&json!({"snap": "start"}));
    let report = server.report_for(&reply.request_id.unwrap());
    assert!(report_has(&report, "Restore Duration"), "{report}");
    let logs = server.logs();
    let before = logs
        .iter()
        .position(|l| l.contains("conformance: before_snapshot"));
    let after = logs
        .iter()
        .position(|l| l.contains("conformance: after_restore"));
    assert!(
        before.is_some() && after.is_some() && before < after,
        "{logs:#?}"
    );
    server.assert_alive();
}

macro_rules! conformance_suite {
    ($($module:ident => $peer:expr),* $(,)?) => {$(
        mod $module {
            use super::*;
            #[test] fn echo_success() { super::echo_success($peer) }
            #[test] fn handler_error_then_loop_goes_on() { super::handler_error_then_loop_goes_on($peer) }
            #[test] fn init_error_is_reported_and_retried() { super::init_error_is_reported_and_retried($peer) }
            #[test] fn timeout_resets_the_environment() { super::timeout_resets_the_environment($peer) }
            #[test] fn payload_near_the_sync_limit() { super::payload_near_the_sync_limit($peer) }
            #[test] fn response_over_the_limit_fails_cleanly() { super::response_over_the_limit_fails_cleanly($peer) }
            #[test] fn many_sequential_invokes() { super::many_sequential_invokes($peer) }
            #[test] fn crash_mid_invoke_then_fresh_init() { super::crash_mid_invoke_then_fresh_init($peer) }
            #[test] fn context_reaches_the_handler() { super::context_reaches_the_handler($peer) }
            #[test] fn snap_start_runs_hooks_and_reports_restore() { super::snap_start_runs_hooks_and_reports_restore($peer) }
        }
    )*};
}

conformance_suite! {
    bootstrap_library => Peer::BootstrapLibrary,
    bootstrap_worker => Peer::BootstrapWorker,
    lambda_runtime_crate => Peer::LambdaRuntimeCrate,
    awslambdaric => Peer::AwsLambdaRic,
}
