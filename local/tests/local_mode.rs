//! `lambda-local` end to end: the real binary, a real runtime (a shell script on curl, or the
//! test itself playing the runtime over HTTP), real sockets on ephemeral ports. The harness is
//! the workspace's one, `integration_tests::server`.

use integration_tests::server::{send_raw, LocalServer, Reply};
use integration_tests::{epoch_ms, process_gone, wait_until};
use proto::invoke_api::INVOKE_PATH;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long a log line may take to follow what caused it.
const LOG_WAIT: Duration = Duration::from_secs(20);

/// The shell runtime every ordinary test runs.
fn echo_runtime() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/runtimes/echo.sh")
}

/// `lambda-local` with `args`, on ephemeral ports.
fn lambda_local(args: &[&str]) -> LocalServer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lambda-local"));
    command
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"]);
    LocalServer::from_command(command, "lambda-local", true)
}

/// `lambda-local` running the shell echo runtime, with extra flags.
fn start(extra: &[&str]) -> LocalServer {
    let runtime = echo_runtime();
    let root = runtime
        .parent()
        .expect("runtimes dir")
        .display()
        .to_string();
    let script = runtime.display().to_string();
    let mut args = vec![
        "--runtime",
        "/bin/sh",
        "--arg",
        &script,
        "--task-root",
        &root,
    ];
    args.extend_from_slice(extra);
    lambda_local(&args)
}

/// `lambda-local` whose runtime is a placeholder that never polls, started at once (`init_type`
/// is eager): the test itself plays the runtime over HTTP.
fn start_for_manual_runtime(init_type: &str, extra: &[&str]) -> LocalServer {
    let mut args = vec![
        "--runtime",
        "/bin/sleep",
        "--arg",
        "600",
        "--init-type",
        init_type,
    ];
    args.extend_from_slice(extra);
    lambda_local(&args)
}

fn invoke(server: &LocalServer, body: &str) -> Reply {
    server.invoke_raw(body.as_bytes(), &[])
}

fn request_id(next: &Reply) -> String {
    next.header("Lambda-Runtime-Aws-Request-Id")
        .expect("Lambda-Runtime-Aws-Request-Id on every next invocation")
        .to_owned()
}

const SYNC_LIMIT: usize = 6_291_556;
const ASYNC_LIMIT: usize = 1_048_576;

fn fields(report: &str) -> Vec<&str> {
    report
        .split('\t')
        .filter_map(|f| f.split_once(": ").map(|(k, _)| k))
        .collect()
}

#[test]
fn echo_with_lambda_log_lines() {
    let mut server = start(&["--memory", "256"]);
    let reply = server.assert_echo_bytes(br#"{"hello":"world","n":[1,2,3]}"#);
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    let id = reply.id();
    let report = server.report_for(&id);
    assert_eq!(
        fields(&report),
        [
            "REPORT RequestId",
            "Duration",
            "Billed Duration",
            "Memory Size",
            "Max Memory Used",
            "Init Duration"
        ],
        "{report}"
    );
    assert!(report.contains("\tMemory Size: 256 MB\t") && report.ends_with('\t'));
    let logs = server.logs();
    let at = |line: &str| logs.iter().position(|l| l == line);
    let start = at(&format!("START RequestId: {id} Version: $LATEST")).expect("START");
    let function = at(&format!("runtime: got {id}")).expect("the function's own line");
    let end = at(&format!("END RequestId: {id}")).expect("END");
    assert!(start < function && function < end, "{logs:#?}");

    // Same environment, no second init.
    let second = server.assert_echo_bytes(b"[]");
    let report = server.report_for(&second.id());
    assert!(!report.contains("Init Duration"), "{report}");
    // An empty body is the event `{}`.
    let empty = invoke(&server, "");
    assert_eq!(empty.body, b"{}");
    server.assert_serving();
}

#[test]
fn runtime_api_headers_and_environment() {
    let mut server = start_for_manual_runtime(
        "provisioned-concurrency",
        &[
            "--function-name",
            "ctx-fn",
            "--region",
            "eu-west-1",
            "--timeout",
            "7.5",
        ],
    );
    let poll = server.poll_next();
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let context = base64_encode(br#"{"custom":{"k":"v"}}"#);
    let invoker = server.invoke_in_background(
        br#"{"ctx":true}"#,
        &[
            ("X-Amzn-Trace-Id", trace),
            ("X-Amz-Client-Context", &context),
        ],
    );
    let before = epoch_ms();
    let next = poll.join().unwrap();
    assert_eq!(next.status, 200);
    assert_eq!(next.body, br#"{"ctx":true}"#);
    let id = request_id(&next);
    let deadline: u64 = next
        .header("Lambda-Runtime-Deadline-Ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        deadline >= before + 7_000 && deadline <= epoch_ms() + 7_500,
        "{deadline}"
    );
    assert_eq!(
        next.header("Lambda-Runtime-Invoked-Function-Arn"),
        Some("arn:aws:lambda:eu-west-1:012345678912:function:ctx-fn")
    );
    assert_eq!(next.header("Lambda-Runtime-Trace-Id"), Some(trace));
    assert_eq!(
        next.header("Lambda-Runtime-Client-Context"),
        Some(r#"{"custom":{"k":"v"}}"#)
    );
    let accepted = server.runtime_api(
        "POST",
        &format!("/invocation/{id}/response"),
        &[],
        b"\"done\"",
    );
    assert_eq!(
        (accepted.status, accepted.json()),
        (202, json!({"status": "OK"}))
    );
    let reply = invoker.join().unwrap();
    assert_eq!(reply.id(), id);
    assert_eq!(reply.body, b"\"done\"");

    // Without a trace header, one is generated in X-Ray's shape.
    let poll = server.poll_next();
    let invoker = server.invoke_in_background(b"{}", &[]);
    let next = poll.join().unwrap();
    let trace = next.header("Lambda-Runtime-Trace-Id").unwrap();
    assert!(
        trace.starts_with("Root=1-") && trace.ends_with(";Sampled=0"),
        "{trace}"
    );
    assert_eq!(next.header("Lambda-Runtime-Client-Context"), None);
    let id = next.header("Lambda-Runtime-Aws-Request-Id").unwrap();
    server.runtime_api("POST", &format!("/invocation/{id}/response"), &[], b"{}");
    assert_eq!(invoker.join().unwrap().status, 200);
    server.assert_serving();
}

#[test]
fn the_runtime_sees_lambdas_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let script = dir.join("env.sh");
    std::fs::write(
        &script,
        "env > \"$LAMBDA_TASK_ROOT/env.txt\"\nexec /bin/sh \"$1\"\n",
    )
    .unwrap();
    let echo = echo_runtime().display().to_string();
    let (script, root) = (script.display().to_string(), dir.display().to_string());
    let mut server = lambda_local(&[
        "--runtime",
        "/bin/sh",
        "--arg",
        &script,
        "--arg",
        &echo,
        "--task-root",
        &root,
        "--handler",
        "app.handler",
        "--env",
        "MY_VAR=1",
        "--env",
        "AWS_LAMBDA_FUNCTION_NAME=evil",
        "--init-type",
        "provisioned-concurrency",
    ]);
    server.assert_echo_bytes(b"{}");
    let env = std::fs::read_to_string(dir.join("env.txt")).unwrap();
    let get = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {env}"))
            .to_owned()
    };
    assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), "function");
    assert_eq!(get("MY_VAR"), "1");
    assert_eq!(get("_HANDLER"), "app.handler");
    assert_eq!(get("LAMBDA_TASK_ROOT"), root);
    assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), server.runtime_api_addr);
    assert_eq!(
        get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "provisioned-concurrency"
    );
    assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), "128");
    assert_eq!(get("AWS_EXECUTION_ENV"), "AWS_Lambda_provided.al2023");
    assert_eq!(get("TZ"), ":UTC");
    assert!(!env.contains("CARGO_"), "a clean environment: {env}");
    server.assert_serving();
}

#[test]
fn invoke_bodies_over_the_limits_are_refused_before_the_runtime() {
    let mut server = start(&[]);
    let big = vec![b' '; SYNC_LIMIT + 1];
    let reply = server.invoke_raw(&big, &[]);
    assert_eq!(reply.status, 413, "{}", reply.text());
    // The service's own errors have the Lambda API's shape (the exception is in a header).
    assert_eq!(reply.json()["Type"], "User", "{}", reply.text());
    assert!(reply.json()["Message"]
        .as_str()
        .unwrap()
        .contains(&format!("smaller than {} bytes", SYNC_LIMIT + 1)));
    reply.id();

    let event = format!("\"{}\"", "x".repeat(ASYNC_LIMIT - 1));
    let reply = server.invoke_raw(event.as_bytes(), &[("X-Amz-Invocation-Type", "Event")]);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(server.count_logs("START"), 0, "{:#?}", server.logs());

    // Exactly at the limits is fine.
    let event = format!("\"{}\"", "x".repeat(SYNC_LIMIT - 2));
    let reply = invoke(&server, &event);
    assert_eq!((reply.status, reply.body.len()), (200, SYNC_LIMIT));
    server.assert_serving();
}

#[test]
fn malformed_invokes_are_refused() {
    let mut server = start(&[]);
    let reply = invoke(&server, "{not json");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["Type"], "User", "{}", reply.text());
    let message = reply.json()["Message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("Could not parse request body into json"),
        "{message}"
    );
    reply.id();

    let reply = server.invoke_raw(b"{}", &[("X-Amz-Client-Context", "%%%")]);
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.invoke_raw(b"{}", &[("X-Amz-Invocation-Type", "Sometimes")]);
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.invoke_raw(b"{}", &[("X-Amz-Invocation-Type", "DryRun")]);
    assert_eq!(reply.status, 204, "{}", reply.text());
    let reply = server.request("GET", &server.invoke_url(), &[], b"");
    assert_eq!(reply.status, 405);
    assert_eq!(server.count_logs("START"), 0, "{:#?}", server.logs());
    server.assert_serving();
}

#[test]
fn a_response_over_the_limit_fails_the_invoke_only() {
    let mut server = start(&["--timeout", "30"]);
    let refused = invoke(
        &server,
        &format!(r#"{{"action":"big","bytes":{}}}"#, SYNC_LIMIT - 1),
    );
    let id = refused.id();
    assert_eq!(
        refused.unhandled_error(),
        json!({
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": "Response payload size (6291557 bytes) exceeded maximum allowed payload size (6291556 bytes)."
        })
    );
    // The runtime's own line about the 413 comes before the invocation's END, as on Lambda.
    let logs = server.logs();
    let said = logs
        .iter()
        .position(|l| l == &format!("runtime: the response for {id} was refused with 413"));
    let end = logs
        .iter()
        .position(|l| l == &format!("END RequestId: {id}"));
    assert!(
        matches!((said, end), (Some(s), Some(e)) if s < e),
        "{logs:#?}"
    );
    let reply = invoke(
        &server,
        &format!(r#"{{"action":"big","bytes":{}}}"#, SYNC_LIMIT - 2),
    );
    assert_eq!((reply.status, reply.body.len()), (200, SYNC_LIMIT));
    server.assert_echo_bytes(br#"{"after":"too large"}"#);
    server.assert_serving();
}

#[test]
fn the_runtime_api_refuses_what_is_out_of_order() {
    let mut server = start_for_manual_runtime("provisioned-concurrency", &[]);
    let (status_of, error_of) = (
        |r: &Reply| r.status,
        |r: &Reply| {
            r.json()["errorType"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        },
    );
    let poll = server.poll_next();
    let invoker = server.invoke_in_background(br#"{"n":1}"#, &[]);
    let next = poll.join().unwrap();
    let id = request_id(&next);

    let early = server.runtime_api("GET", "/invocation/next", &[], b"");
    assert_eq!(
        (status_of(&early), error_of(&early)),
        (403, "InvalidStateTransition".into())
    );
    let unknown = server.runtime_api("POST", "/invocation/nope/response", &[], b"{}");
    assert_eq!(status_of(&unknown), 400);
    assert_eq!(
        unknown.json(),
        json!({"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"})
    );
    let garbage = server.runtime_api("POST", &format!("/invocation/{id}/error"), &[], b"<html>");
    assert_eq!(
        (status_of(&garbage), error_of(&garbage)),
        (400, "InvalidErrorBody".into())
    );
    let late_init = server.runtime_api("POST", "/init/error", &[], b"{}");
    assert_eq!(status_of(&late_init), 403);
    let restore = server.runtime_api("GET", "/restore/next", &[], b"");
    assert_eq!(status_of(&restore), 403);
    let restore_error = server.runtime_api("POST", "/restore/error", &[], b"");
    assert_eq!(status_of(&restore_error), 403);
    let missing = server.runtime_api("GET", "/nothing/here", &[], b"");
    assert_eq!(
        (status_of(&missing), error_of(&missing)),
        (404, "NotFound".into())
    );
    let wrong = server.runtime_api("GET", &format!("/invocation/{id}/response"), &[], b"");
    assert_eq!(status_of(&wrong), 405);

    // The invoke survived all that; a proper error (Node's `trace`, no type header) ends it.
    let body = br#"{"errorType":"Error","errorMessage":"boom","trace":["Error: boom"]}"#;
    let posted = server.runtime_api("POST", &format!("/invocation/{id}/error"), &[], body);
    assert_eq!(posted.status, 202);
    let again = server.runtime_api("POST", &format!("/invocation/{id}/response"), &[], b"{}");
    assert_eq!(
        (status_of(&again), error_of(&again)),
        (403, "InvalidStateTransition".into())
    );
    let reply = invoker.join().unwrap();
    assert_eq!(
        reply.unhandled_error(),
        serde_json::from_slice::<Value>(body).unwrap()
    );

    // An empty error body with only the header (the `lambda_runtime` crate's fallback).
    let poll = server.poll_next();
    let invoker = server.invoke_in_background(b"{}", &[]);
    let id2 = request_id(&poll.join().unwrap());
    let stale = server.runtime_api("POST", &format!("/invocation/{id}/response"), &[], b"{}");
    assert_eq!(status_of(&stale), 400);
    let header = [("Lambda-Runtime-Function-Error-Type", "unhandled")];
    let posted = server.runtime_api("POST", &format!("/invocation/{id2}/error"), &header, b"");
    assert_eq!(posted.status, 202);
    assert_eq!(
        invoker.join().unwrap().unhandled_error()["errorType"],
        "unhandled"
    );
    server.assert_serving();
}

#[test]
fn a_timeout_kills_the_runtime_and_the_next_invoke_inits_afresh() {
    let mut server = start(&["--timeout", "0.5"]);
    let pid = invoke(&server, r#"{"action":"pid"}"#).json()["pid"].as_u64();
    let pid = pid.and_then(|p| u32::try_from(p).ok()).unwrap();
    let reply = invoke(&server, r#"{"action":"sleep","s":"5"}"#);
    let id = reply.id();
    assert_eq!(
        reply.unhandled_error(),
        json!({
            "errorType": "Sandbox.Timedout",
            "errorMessage": format!("RequestId: {id} Error: Task timed out after 0.50 seconds")
        })
    );
    let line = server.wait_for_log(LOG_WAIT, |l| {
        l.ends_with(&format!(" {id} Task timed out after 0.50 seconds"))
    });
    assert!(line.starts_with("20") && line.contains('T'), "{line}");
    assert!(server.report_for(&id).ends_with("\tStatus: timeout\t"));
    let fresh = server.assert_echo_bytes(br#"{"after":"timeout"}"#);
    assert!(server.report_for(&fresh.id()).contains("\tInit Duration: "));
    assert!(
        wait_until(LOG_WAIT, || process_gone(pid)),
        "the timed-out runtime {pid} was not killed"
    );
    server.assert_serving();
}

#[test]
fn a_crash_mid_invoke_is_reported_and_the_next_invoke_works() {
    let mut server = start(&[]);
    let reply = invoke(&server, r#"{"action":"crash"}"#);
    let id = reply.id();
    assert_eq!(
        reply.unhandled_error(),
        json!({
            "errorType": "Runtime.ExitError",
            "errorMessage": format!("RequestId: {id} Error: Runtime exited with error: exit status 3")
        })
    );
    assert!(server
        .report_for(&id)
        .ends_with("\tStatus: error\tError Type: Runtime.ExitError\t"));
    server.assert_echo_bytes(br#"{"after":"crash"}"#);
    server.assert_serving();
}

#[test]
fn a_handler_error_reaches_the_invoker_and_the_environment_goes_on() {
    let mut server = start(&[]);
    let error = invoke(&server, r#"{"action":"error"}"#).unhandled_error();
    assert_eq!(
        error,
        json!({"errorMessage": "failed on purpose", "errorType": "HandlerError", "stackTrace": ["a", "b"]})
    );
    let reply = server.assert_echo_bytes(b"{}");
    assert!(!server.report_for(&reply.id()).contains("Init Duration"));
    server.assert_serving();
}

#[test]
fn init_error_fails_the_invoke_and_init_is_retried() {
    let mut server = start(&["--env", "RUNTIME_FAIL_INIT=1"]);
    for _ in 0..2 {
        let error = invoke(&server, "{}").unhandled_error();
        assert_eq!(
            error,
            json!({"errorMessage": "init failed on purpose", "errorType": "InitFailed"})
        );
    }
    let reports = server.wait_for_logs(LOG_WAIT, 2, |l| {
        l.starts_with("INIT_REPORT Init Duration: ")
    });
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let report = server
        .logs()
        .into_iter()
        .find(|l| l.starts_with("INIT_REPORT"))
        .unwrap();
    assert!(
        report.ends_with("\tPhase: init\tStatus: error\tError Type: InitFailed"),
        "{report}"
    );
    // Each failed invoke is logged as Lambda logs one: START, INIT_REPORT, END, REPORT with
    // the error, and the runtime's own last line comes before them (drained before the kill).
    assert_eq!(
        server.count_logs("START RequestId: "),
        2,
        "{:#?}",
        server.logs()
    );
    assert_eq!(
        server.count_logs("END RequestId: "),
        2,
        "{:#?}",
        server.logs()
    );
    let logs = server.logs();
    let failed = logs
        .iter()
        .filter(|l| l.starts_with("REPORT RequestId: "))
        .collect::<Vec<_>>();
    assert_eq!(failed.len(), 2, "{logs:#?}");
    assert!(
        failed
            .iter()
            .all(|l| l.ends_with("Status: error\tError Type: InitFailed\t")),
        "{failed:#?}"
    );
    let last_words = logs.iter().position(|l| l == "runtime: failing init");
    let first_start = logs.iter().position(|l| l.starts_with("START RequestId: "));
    assert!(
        matches!((last_words, first_start), (Some(w), Some(s)) if w < s),
        "{logs:#?}"
    );
    server.assert_serving();
}

#[test]
fn a_client_hanging_up_mid_invoke_breaks_nothing() {
    let mut server = start(&[]);
    let body = r#"{"action":"sleep","s":"0.5"}"#;
    let request = format!(
        "POST {INVOKE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let stream = send_raw(&server.invoke_addr, request.as_bytes());
    server.wait_for_log(LOG_WAIT, |l| l.starts_with("START"));
    drop(stream);
    let report = server.wait_for_log(LOG_WAIT, |l| l.starts_with("REPORT"));
    assert!(!report.contains("Status:"), "{report}");
    server.assert_echo_bytes(br#"{"after":"hang-up"}"#);
    // A half-sent request and plain garbage do not get in the way either.
    let half = format!("POST {INVOKE_PATH} HTTP/1.1\r\nContent-Length: 100\r\n\r\n{{");
    let half = send_raw(&server.invoke_addr, half.as_bytes());
    let garbage = send_raw(&server.runtime_api_addr, b"\x00\x01 NOT HTTP\r\n\r\n");
    server.assert_echo_bytes(br#"{"after":"garbage"}"#);
    drop((half, garbage));
    server.assert_serving();
}

#[test]
fn a_failed_async_invoke_is_retried_then_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dir_arg = dir.display().to_string();
    let mut server = start(&["--on-failure-dir", &dir_arg, "--async-retry-delay", "0.1"]);
    let reply = server.invoke_raw(
        br#"{"action":"error","n":7}"#,
        &[("X-Amz-Invocation-Type", "Event")],
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert!(reply.body.is_empty());
    let id = reply.id();
    server.wait_for_log(LOG_WAIT, |l| {
        l.contains(&format!(
            "async invoke {id}: RetriesExhausted after 3 attempt(s)"
        ))
    });
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{id}.json"))).unwrap()).unwrap();
    assert_eq!(record["version"], "1.0");
    assert_eq!(record["requestContext"]["requestId"], id.as_str());
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(
        record["requestContext"]["functionArn"],
        "arn:aws:lambda:us-east-1:012345678912:function:function:$LATEST"
    );
    assert_eq!(record["requestPayload"], json!({"action": "error", "n": 7}));
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(record["responsePayload"]["errorType"], "HandlerError");
    assert_eq!(server.count_logs("START"), 3, "one attempt, two retries");
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        1,
        "no temporary file left"
    );

    // A successful one runs once and writes nothing.
    let reply = server.invoke_raw(b"{}", &[("X-Amz-Invocation-Type", "Event")]);
    assert_eq!(reply.status, 202);
    let report = server.report_for(&reply.id());
    assert!(!report.contains("Status"), "{report}");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
    server.assert_serving();
}

#[test]
fn snap_start_restores_through_the_runtime_api() {
    let mut server = start_for_manual_runtime("snap-start", &[]);
    let restored = server.runtime_api("GET", "/restore/next", &[], b"");
    assert_eq!((restored.status, restored.body.len()), (200, 0));
    let poll = server.poll_next();
    let invoker = server.invoke_in_background(b"{}", &[]);
    let id = request_id(&poll.join().unwrap());
    server.runtime_api("POST", &format!("/invocation/{id}/response"), &[], b"{}");
    invoker.join().unwrap();
    let report = server.report_for(&id);
    assert!(report.contains("\tRestore Duration: "), "{report}");
    assert!(!report.contains("Init Duration"), "{report}");
    server.assert_serving();
}

#[test]
fn sigterm_stops_the_runtime_and_exits_cleanly() {
    let mut server = start(&["--init-type", "provisioned-concurrency"]);
    let line = server.wait_for_log(LOG_WAIT, |l| l.starts_with("runtime: init pid "));
    let pid: u32 = line["runtime: init pid ".len()..].parse().unwrap();
    assert!(!process_gone(pid));
    let status = server.terminate(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(
        wait_until(Duration::from_secs(5), || process_gone(pid)),
        "runtime {pid} survived"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    for (args, flag) in [
        (&["--memory", "64"][..], "--memory"),
        (&["--memory", "20000"][..], "--memory"),
        (&["--timeout", "0"][..], "--timeout"),
        (&["--timeout", "abc"][..], "--timeout"),
        (&["--init-type", "lazy"][..], "--init-type"),
        (&["--function-name", "no spaces"][..], "--function-name"),
        (&["--env", "NOEQUALS"][..], "--env"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lambda-local"))
            .args([
                "--runtime",
                "/bin/sh",
                "--listen",
                "127.0.0.1:0",
                "--runtime-api",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lambda-local"))
        .args(["--runtime", "/does/not/exist"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runtime"));
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
