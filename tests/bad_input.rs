//! Bad input gets a clear error and loses nothing, with a real runtime behind the real server:
//! malformed requests, oversized payloads, unknown/stale/duplicate request ids, a client that
//! hangs up mid-invoke, and failed asynchronous invokes. After each, the server is alive and
//! the next invoke succeeds.

use integration_tests::peers::Peer;
use integration_tests::server::{send_raw, LocalServer};
use integration_tests::wait_until;
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

fn start(args: &[&str]) -> Option<LocalServer> {
    LocalServer::start(&Peer::BootstrapLibrary.launch()?, args)
}

fn still_serves(server: &mut LocalServer) {
    server.assert_alive();
    server.assert_echo(&json!({"still": "serving"}));
}

/// A Runtime API request from the test, as if it were a (misbehaving) runtime: the status, and
/// the body as JSON (or as a JSON string when it is not JSON).
fn runtime_api(server: &LocalServer, path: &str, body: &[u8]) -> (u16, Value) {
    let reply = server.runtime_api("POST", path, &[], body);
    let text = reply.text();
    (
        reply.status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn malformed_json_event_is_rejected_before_the_runtime() {
    let Some(mut server) = start(&[]) else { return };
    let reply = server.invoke_raw(b"{\"not\": json", &[]);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["Type"], "User", "{}", reply.text());
    assert!(!server.logs().iter().any(|l| l.starts_with("START")));
    still_serves(&mut server);
}

#[test]
fn oversized_sync_and_async_payloads_get_413() {
    let Some(mut server) = start(&[]) else { return };
    let sync = format!("\"{}\"", "a".repeat(6_291_556 - 1));
    let reply = server.invoke_raw(sync.as_bytes(), &[]);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(!reply.json()["Message"]
        .as_str()
        .unwrap_or_default()
        .is_empty());

    let at_limit = format!("\"{}\"", "a".repeat(6_291_556 - 2));
    let reply = server.invoke_raw(at_limit.as_bytes(), &[]);
    assert_eq!(reply.status, 200, "exactly the limit is accepted");
    assert_eq!(reply.body.len(), 6_291_556);

    let event = format!("\"{}\"", "a".repeat(1_048_576 - 1));
    let reply = server.invoke_raw(event.as_bytes(), &[("X-Amz-Invocation-Type", "Event")]);
    assert_eq!(reply.status, 413, "async limit is 1 MiB: {}", reply.text());
    still_serves(&mut server);
}

#[test]
fn unknown_stale_and_duplicate_request_ids() {
    let Some(mut server) = start(&["--timeout", "30"]) else {
        return;
    };
    let (status, body) = runtime_api(&server, "/invocation/no-such-id/response", b"{}");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errorType"], "InvalidRequestID");

    let done = server.invoke(&json!({"first": 1}));
    let stale = done.request_id.expect("request id");
    // Until the runtime polls again, its last invocation is still its own (a second response
    // for it is 403); once it took the next one, the first id is stale.
    server.assert_echo(&json!({"second": 2}));
    let path = format!("/invocation/{stale}/response");
    let (status, body) = runtime_api(&server, &path, b"{}");
    assert_eq!(status, 400, "a finished invoke's id is stale: {body}");

    // While the function sleeps, answer its invoke first from outside; the runtime's own
    // response then is a second response for the same id and must be refused.
    let invoker = server.invoke_in_background(br#"{"action":"sleep","ms":1500}"#, &[]);
    let starts = server.wait_for_logs(Duration::from_secs(10), 3, |l| l.starts_with("START"));
    let id = starts[2]["START RequestId: ".len()..]
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_owned();

    let error_path = format!("/invocation/{id}/error");
    let (status, body) = runtime_api(&server, &error_path, b"this is not json{");
    assert_eq!(status, 400, "malformed error JSON is refused: {body}");

    let response_path = format!("/invocation/{id}/response");
    let (status, _) = runtime_api(&server, &response_path, br#"{"answered":"early"}"#);
    assert_eq!(status, 202);
    let (status, body) = runtime_api(&server, &response_path, b"{}");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errorType"], "InvalidStateTransition");
    assert_eq!(invoker.join().unwrap().text(), r#"{"answered":"early"}"#);

    // The runtime's own late response, after its sleep, is refused. The next invoke reaches the
    // runtime only when it polls again, after that refusal: its echo shows the runtime went on.
    still_serves(&mut server);
}

#[test]
fn client_hanging_up_mid_invoke_loses_nothing() {
    let Some(mut server) = start(&[]) else { return };
    let body = r#"{"action":"sleep","ms":800}"#;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        proto::invoke_api::INVOKE_PATH,
        body.len(),
        body
    );
    let stream = send_raw(&server.invoke_addr, request.as_bytes());
    server.wait_for_log(Duration::from_secs(10), |l| l.starts_with("START"));
    drop(stream);
    server.wait_for_log(Duration::from_secs(10), |l| l.starts_with("END"));
    still_serves(&mut server);
}

#[test]
fn half_sent_request_does_not_block_others() {
    let Some(mut server) = start(&[]) else { return };
    let half = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{\"partial\":",
        proto::invoke_api::INVOKE_PATH
    );
    let stream = send_raw(&server.invoke_addr, half.as_bytes());
    still_serves(&mut server);
    drop(stream);
    let mut garbage = send_raw(&server.invoke_addr, b"\x00\x01NOT HTTP AT ALL\r\n\r\n");
    // The server's answer (an error, or a hang-up) before the next request.
    let mut answer = Vec::new();
    garbage.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = garbage.read_to_end(&mut answer);
    still_serves(&mut server);
}

#[test]
fn failed_async_invoke_is_retried_twice_then_sent_to_the_destination() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let destination = tmp.path();
    let dir = destination.display().to_string();
    let Some(mut server) = start(&["--on-failure-dir", &dir, "--async-retry-delay", "0.1"]) else {
        return;
    };
    let reply = server.invoke_raw(
        br#"{"action":"error","message":"async-failure"}"#,
        &[("X-Amz-Invocation-Type", "Event")],
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.request_id.expect("request id");
    let record_path = destination.join(format!("{id}.json"));
    assert!(
        wait_until(Duration::from_secs(30), || record_path.exists()),
        "no destination record; logs: {:#?}",
        server.logs()
    );
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["requestContext"]["requestId"], id.as_str());
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(record["requestPayload"]["message"], "async-failure");
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(server.count_logs("START"), 3, "one attempt and two retries");
    still_serves(&mut server);
}

#[test]
fn successful_async_invoke_runs_later() {
    let Some(mut server) = start(&[]) else { return };
    let reply = server.invoke_raw(br#"{"async":"ok"}"#, &[("X-Amz-Invocation-Type", "Event")]);
    assert_eq!(reply.status, 202);
    assert!(
        reply.body.is_empty() || reply.text().trim().is_empty(),
        "{}",
        reply.text()
    );
    let id = reply.request_id.expect("request id");
    let report = server.report_for(&id);
    assert!(!report.contains("Status: error"), "{report}");
    still_serves(&mut server);
}

/// Accepted `Event` invokes survive a `kill -9` of the server: each was on disk before its
/// 202, and a server restarted on the same store runs what the first did not finish, so every
/// accepted event reaches its outcome (a REPORT) in one run or the other.
#[test]
fn accepted_events_survive_a_kill_9() {
    events_survive(nix::sys::signal::Signal::SIGKILL);
}

/// The same through SIGTERM: the server stops, what it had not run stays in its store.
#[test]
fn accepted_events_survive_a_sigterm() {
    events_survive(nix::sys::signal::Signal::SIGTERM);
}

fn events_survive(signal: nix::sys::signal::Signal) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events");
    let store_arg = store.to_str().unwrap();
    let args = ["--event-store", store_arg, "--async-retry-delay", "0.1"];
    let Some(mut first) = start(&args) else {
        return;
    };
    let event = json!({"action": "sleep", "ms": 100}).to_string();
    let accepted: Vec<String> = (0..40)
        .map(|_| {
            let reply = first.invoke_raw(event.as_bytes(), &[("X-Amz-Invocation-Type", "Event")]);
            assert_eq!(reply.status, 202, "{}", reply.text());
            reply.id()
        })
        .collect();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(first.pid()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
    // Reaped, not only dead: until its last thread is gone it still holds the store's lock.
    first
        .terminate(Duration::from_secs(10))
        .expect("the first server exited");
    let first_logs = first.logs();
    let finished = |logs: &[String], id: &str| {
        logs.iter()
            .any(|l| l.starts_with(&format!("REPORT RequestId: {id}")))
    };
    let unfinished = accepted
        .iter()
        .filter(|id| !finished(&first_logs, id))
        .count();
    assert!(unfinished > 0, "the kill came too late to test anything");

    let Some(mut second) = start(&args) else {
        return;
    };
    second.wait_for_log(Duration::from_secs(10), |l| {
        l.starts_with("rapid: resuming") && l.contains("stored asynchronous invocation")
    });
    let all_done = wait_until(Duration::from_secs(60), || {
        let logs = second.logs();
        accepted
            .iter()
            .all(|id| finished(&first_logs, id) || finished(&logs, id))
    });
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !finished(&first_logs, id) && !finished(&second.logs(), id))
        .collect();
    assert!(all_done, "{} accepted events lost: {lost:?}", lost.len());
    still_serves(&mut second);
}

/// Lambda queues asynchronous events rather than refusing them: with more accepted than the
/// server holds in memory (128), the rest wait in the store, and every one of them runs.
#[test]
fn more_events_than_places_in_memory_are_accepted_and_all_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events");
    let args = ["--event-store", store.to_str().unwrap()];
    let Some(mut server) = start(&args) else {
        return;
    };
    // The first keeps the function busy while the others pile up behind it.
    let busy = json!({"action": "sleep", "ms": 3000}).to_string();
    let quick = json!({"action": "sleep", "ms": 1}).to_string();
    let accepted: Vec<String> = std::iter::once(&busy)
        .chain(std::iter::repeat_n(&quick, 199))
        .map(|event| {
            let reply = server.invoke_raw(event.as_bytes(), &[("X-Amz-Invocation-Type", "Event")]);
            assert_eq!(reply.status, 202, "{}", reply.text());
            reply.id()
        })
        .collect();
    let finished = |logs: &[String], id: &str| {
        logs.iter()
            .any(|l| l.starts_with(&format!("REPORT RequestId: {id}")))
    };
    let all_done = wait_until(Duration::from_secs(120), || {
        let logs = server.logs();
        accepted.iter().all(|id| finished(&logs, id))
    });
    let logs = server.logs();
    let unfinished = accepted.iter().filter(|id| !finished(&logs, id)).count();
    assert!(all_done, "{unfinished} of 200 accepted events did not run");
    still_serves(&mut server);
}

fn raw_invoke(body: &str) -> String {
    format!(
        "POST /2015-03-31/functions/function/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A client that half-closes its side after sending its request (`shutdown(SHUT_WR)`, as
/// `nc -N` does) still gets its response.
#[test]
fn a_half_closed_client_gets_its_response() {
    let Some(mut server) = start(&[]) else { return };
    let mut stream = send_raw(
        &server.invoke_addr,
        raw_invoke(r#"{"half":"closed"}"#).as_bytes(),
    );
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    // The server may first ask whether the caller is still there with an interim 100, which an
    // HTTP/1.1 client skips.
    let response = response
        .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
        .unwrap_or(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    assert!(response.ends_with(r#"{"half":"closed"}"#), "{response:?}");
    still_serves(&mut server);
}

/// Callers that hang up while their invocations wait hold no place and do not run the
/// function: while it is busy, 140 clients (more than the 128 that may wait) send a request and
/// close at once; a real caller is then served, not refused, and the function runs for the
/// real callers only.
#[test]
fn callers_that_hung_up_neither_run_nor_hold_a_place() {
    let Some(mut server) = start(&["--timeout", "30"]) else {
        return;
    };
    let busy = server.invoke_in_background(br#"{"action":"sleep","ms":3000}"#, &[]);
    server.wait_for_log(Duration::from_secs(10), |l| l.starts_with("START"));
    let gone = raw_invoke(r#"{"action":"sleep","ms":1000}"#);
    for _ in 0..140 {
        drop(send_raw(&server.invoke_addr, gone.as_bytes()));
    }
    let real = server.invoke(&json!({"real": "caller"}));
    assert_eq!(real.status, 200, "{}", real.text());
    assert_eq!(real.text(), r#"{"real":"caller"}"#);
    assert_eq!(busy.join().unwrap().status, 200);
    // Had any of the 140 been queued, it would start before a caller that comes after them all:
    // by the time that caller is answered, only its own invocation has been added.
    let last = server.invoke(&json!({"last": "caller"}));
    assert_eq!(last.status, 200, "{}", last.text());
    // Its REPORT follows its START (and any earlier START) in the server's output.
    server.report_for(&last.id());
    assert_eq!(server.count_logs("START"), 3, "{:#?}", server.logs());
    still_serves(&mut server);
}

/// Idle and slow clients cannot lock others out: with 8 connections allowed, 20 that connect
/// and send nothing are closed after the header timeout, and a real caller is served.
#[test]
fn idle_connections_are_bounded_and_timed_out() {
    let args = ["--max-connections", "8", "--header-timeout", "1"];
    let Some(mut server) = start(&args) else {
        return;
    };
    let idle: Vec<_> = (0..20)
        .map(|_| {
            send_raw(
                &server.invoke_addr,
                b"POST /2015-03-31/functions/function/invocations HTTP/1.1\r\n",
            )
        })
        .collect();
    let reply = server.invoke(&json!({"after": "idlers"}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The idle ones were closed by the server: timed out, or closed for a newer client at the
    // cap (a reset, when the server closed with their bytes unread).
    for mut stream in idle.into_iter().take(8) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(
            read.is_ok()
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }
    still_serves(&mut server);
}

/// A misconfigured failure destination is refused at start, naming it, before "listening".
#[test]
fn an_unusable_failure_destination_is_refused_at_start() {
    let Some(launch) = Peer::BootstrapLibrary.launch() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let output = std::process::Command::new(integration_tests::host_binary("lambda-local"))
        .arg("--runtime")
        .arg(&launch.runtime)
        .arg("--on-failure-dir")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--on-failure-dir") && stderr.contains("not-a-dir"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}

/// `--maximum-retry-attempts 0`: a failed event runs once and goes to the destination.
#[test]
fn a_failed_event_without_retries_runs_once() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().display().to_string();
    let args = [
        "--on-failure-dir",
        &dir,
        "--async-retry-delay",
        "0.1",
        "--maximum-retry-attempts",
        "0",
    ];
    let Some(mut server) = start(&args) else {
        return;
    };
    let reply = server.invoke_raw(
        br#"{"action":"error","message":"once"}"#,
        &[("X-Amz-Invocation-Type", "Event")],
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    let record_path = tmp.path().join(format!("{}.json", reply.id()));
    assert!(wait_until(Duration::from_secs(30), || record_path.exists()));
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    // The record can be written before the server's stdout reader has seen the lines of the
    // run; START comes before REPORT on that pipe, so once REPORT is there START is counted.
    assert!(wait_until(Duration::from_secs(30), || server
        .count_logs("REPORT")
        >= 1));
    assert_eq!(server.count_logs("START"), 1);
    still_serves(&mut server);
}
