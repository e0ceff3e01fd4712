//! The Extensions API and the Telemetry and Logs APIs with the test playing the runtime, an
//! internal extension and a telemetry destination over raw HTTP: registration rules, the
//! refusals, and the Logs API's older records.

use integration_tests::server::{LocalServer, Reply};
use integration_tests::wait_for;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `lambda-local` whose runtime never polls, with the given init type: the test is the runtime.
fn start(init_type: &str) -> LocalServer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lambda-local"));
    command.args([
        "--runtime",
        "/bin/sleep",
        "--arg",
        "600",
        "--init-type",
        init_type,
        "--listen",
        "127.0.0.1:0",
        "--runtime-api",
        "127.0.0.1:0",
    ]);
    LocalServer::from_command(command, "lambda-local", true)
}

fn extension_api(
    server: &LocalServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let url = format!("http://{}{path}", server.runtime_api_addr);
    server.request(method, &url, headers, body)
}

fn register(server: &LocalServer, name: &str, events: &[&str]) -> Reply {
    let body = json!({ "events": events }).to_string();
    extension_api(
        server,
        "POST",
        "/2020-01-01/extension/register",
        &[("Lambda-Extension-Name", name)],
        body.as_bytes(),
    )
}

fn error_type(reply: &Reply) -> String {
    reply.json()["errorType"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A telemetry destination: answers every POST with 200 and keeps the events it got.
fn destination() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end().to_ascii_lowercase();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(n) = line.strip_prefix("content-length:") {
                            length = n.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let batch: Vec<Value> = serde_json::from_slice(&body).unwrap();
                    sink.lock().unwrap().extend(batch);
                    let stream = reader.get_mut();
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (port, got)
}

#[test]
fn internal_extensions_register_during_init_for_invoke_only_and_hold_init_until_ready() {
    let server = start("provisioned-concurrency");
    let refused = register(&server, "internal-x", &["INVOKE", "SHUTDOWN"]);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(error_type(&refused), "Extension.InvalidEventType");
    let bad = register(&server, "internal-x", &["BOOT"]);
    assert_eq!(
        (bad.status, error_type(&bad).as_str()),
        (403, "Extension.InvalidEventType")
    );
    let unnamed = register(&server, "", &["INVOKE"]);
    assert_eq!(
        (unnamed.status, error_type(&unnamed).as_str()),
        (403, "Extension.InvalidExtensionName")
    );

    let registered = register(&server, "internal-x", &["INVOKE"]);
    assert_eq!(registered.status, 200, "{}", registered.text());
    assert_eq!(registered.json()["functionName"], "function");
    assert!(registered.json().get("accountId").is_none());
    let id = registered
        .header("Lambda-Extension-Identifier")
        .expect("an identifier")
        .to_owned();
    let twice = register(&server, "internal-x", &["INVOKE"]);
    assert_eq!(
        (twice.status, error_type(&twice).as_str()),
        (403, "Extension.InvalidExtensionState")
    );
    let nobody = extension_api(&server, "GET", "/2020-01-01/extension/event/next", &[], b"");
    assert_eq!(
        (nobody.status, error_type(&nobody).as_str()),
        (403, "Extension.MissingExtensionIdentifier")
    );
    let stranger = extension_api(
        &server,
        "GET",
        "/2020-01-01/extension/event/next",
        &[("Lambda-Extension-Identifier", "not-one-of-ours")],
        b"",
    );
    assert_eq!(
        (stranger.status, error_type(&stranger).as_str()),
        (403, "Extension.UnknownExtensionIdentifier")
    );

    // The runtime waits, an invocation waits, and neither gets it before the extension asks.
    let runtime = server.poll_next();
    let invoke = server.invoke_in_background(b"{\"n\":1}", &[]);
    let url = format!(
        "http://{}/2020-01-01/extension/event/next",
        server.runtime_api_addr
    );
    let headers = [("Lambda-Extension-Identifier", id.as_str())];
    let event = server.request("GET", &url, &headers, b"");
    assert_eq!(event.status, 200, "{}", event.text());
    assert!(event.header("Lambda-Extension-Event-Identifier").is_some());
    let event = event.json();
    let next = runtime.join().unwrap();
    let request_id = next.header("Lambda-Runtime-Aws-Request-Id").unwrap();
    assert_eq!(event["eventType"], "INVOKE");
    assert_eq!(event["requestId"], request_id);
    assert_eq!(
        event["tracing"]["value"].as_str(),
        next.header("Lambda-Runtime-Trace-Id"),
        "the extension and the runtime get one trace"
    );
    server.wait_for_log(Duration::from_secs(10), |l| {
        l.starts_with("INIT_REPORT Init Duration")
    });
    let late = register(&server, "internal-y", &["INVOKE"]);
    assert_eq!(
        (late.status, error_type(&late).as_str()),
        (403, "Extension.RegistrationClosed")
    );

    // The runtime answers; the invocation is over once the extension asks again.
    let answered = server.runtime_api(
        "POST",
        &format!("/invocation/{request_id}/response"),
        &[],
        b"\"ok\"",
    );
    assert_eq!(answered.status, 202);
    assert_eq!(invoke.join().unwrap().text(), "\"ok\"");
    let end = format!("END RequestId: {request_id}");
    let second = std::thread::spawn({
        let (url, id) = (url.clone(), id.clone());
        let agent = ureq::Agent::new_with_defaults();
        move || {
            agent
                .get(&url)
                .header("Lambda-Extension-Identifier", &id)
                .call()
                .map(|mut r| r.body_mut().read_to_string().unwrap_or_default())
        }
    });
    server.wait_for_log(Duration::from_secs(10), |l| l == end);
    drop(second);
}

#[test]
fn subscriptions_are_checked_and_the_logs_api_gets_its_older_records() {
    let server = start("provisioned-concurrency");
    let registered = register(&server, "internal-logs", &["INVOKE"]);
    let id = registered
        .header("Lambda-Extension-Identifier")
        .unwrap()
        .to_owned();
    let headers = [("Lambda-Extension-Identifier", id.as_str())];
    let (port, got) = destination();
    let subscription = |schema: &str, timeout: u32, uri: &str| {
        json!({
            "schemaVersion": schema,
            "types": ["platform", "function"],
            "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": timeout},
            "destination": {"protocol": "HTTP", "URI": uri},
        })
        .to_string()
    };
    let ours = format!("http://sandbox.localdomain:{port}");
    let put = |path: &str, body: &str, headers: &[(&str, &str)]| {
        extension_api(&server, "PUT", path, headers, body.as_bytes())
    };
    let too_fast = put(
        "/2022-07-01/telemetry",
        &subscription("2022-12-13", 5, &ours),
        &headers,
    );
    assert_eq!(
        (too_fast.status, error_type(&too_fast).as_str()),
        (400, "ValidationError")
    );
    let elsewhere = put(
        "/2022-07-01/telemetry",
        &subscription("2022-12-13", 25, "http://example.com:80"),
        &headers,
    );
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.text());
    let wrong_schema = put(
        "/2020-08-15/logs",
        &subscription("2022-12-13", 25, &ours),
        &headers,
    );
    assert_eq!(wrong_schema.status, 400, "{}", wrong_schema.text());
    let anonymous = put(
        "/2020-08-15/logs",
        &subscription("2021-03-18", 25, &ours),
        &[],
    );
    assert_eq!(anonymous.status, 403, "{}", anonymous.text());
    let ok = put(
        "/2020-08-15/logs",
        &subscription("2021-03-18", 25, &ours),
        &headers,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), "\"OK\"");

    let runtime = server.poll_next();
    let invoke = server.invoke_in_background(b"{}", &[]);
    let url = format!(
        "http://{}/2020-01-01/extension/event/next",
        server.runtime_api_addr
    );
    let event = server.request("GET", &url, &headers, b"");
    assert_eq!(event.status, 200);
    let next = runtime.join().unwrap();
    let request_id = next
        .header("Lambda-Runtime-Aws-Request-Id")
        .unwrap()
        .to_owned();
    let after_init = put(
        "/2022-07-01/telemetry",
        &subscription("2022-12-13", 25, &ours),
        &headers,
    );
    assert_eq!(
        (after_init.status, error_type(&after_init).as_str()),
        (403, "Telemetry.SubscriptionClosed")
    );
    server.runtime_api(
        "POST",
        &format!("/invocation/{request_id}/response"),
        &[],
        b"{}",
    );
    invoke.join().unwrap();
    let next_event = std::thread::spawn({
        let (url, id) = (url.clone(), id.clone());
        move || {
            let _ = ureq::Agent::new_with_defaults()
                .get(&url)
                .header("Lambda-Extension-Identifier", &id)
                .call();
        }
    });
    let events = wait_for(Duration::from_secs(20), || {
        let events = got.lock().unwrap().clone();
        events
            .iter()
            .any(|e| e["type"] == "platform.report")
            .then_some(events)
    })
    .expect("a platform.report");
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"platform.logsSubscription"), "{kinds:?}");
    let start = kinds
        .iter()
        .position(|k| *k == "platform.start")
        .expect("start");
    let end = kinds
        .iter()
        .position(|k| *k == "platform.end")
        .expect("end");
    let report = kinds.iter().position(|k| *k == "platform.report").unwrap();
    assert!(start < end && end < report, "{kinds:?}");
    assert_eq!(events[end]["record"], json!({"requestId": request_id}));
    let metrics = &events[report]["record"]["metrics"];
    assert!(metrics["billedDurationMs"].as_u64().is_some(), "{metrics}");
    assert!(
        !kinds.contains(&"platform.initStart"),
        "not in the Logs API's schema: {kinds:?}"
    );
    drop(next_event);
}
