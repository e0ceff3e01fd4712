//! Response streaming in local mode with real peers: the unmodified `lambda_runtime` crate's
//! streaming response (`tests/functions/rust-stream`) served by `lambda-local`, read with
//! boto3's `invoke_with_response_stream` (event-stream decoding and all) and with a buffered
//! `Invoke`.

use base64::Engine;
use integration_tests::aws_clients::{have_boto3, read_stream};
use integration_tests::peers::Launch;
use integration_tests::server::LocalServer;
use integration_tests::{host_binary, require, workspace_root};
use serde_json::{json, Value};

/// The prelude `lambda_runtime` writes before a streamed body (its HTTP integration metadata
/// and eight NUL bytes); Lambda passes it on as the first bytes of the stream.
const PRELUDE_END: &[u8] = b"\0\0\0\0\0\0\0\0";

/// A streaming function: `rust-stream` (the `lambda_runtime` crate) or `bootstrap-stream` (our
/// library's streaming handler).
fn stream_function(binary: &str) -> Option<Launch> {
    let runtime = require(host_binary(binary), binary)?;
    Some(Launch {
        runtime,
        handler: "stream".into(),
        task_root: workspace_root().join("tests/functions"),
        env: Vec::new(),
    })
}

fn server() -> Option<LocalServer> {
    server_of("rust-stream")
}

fn server_of(binary: &str) -> Option<LocalServer> {
    if !have_boto3() {
        return None;
    }
    LocalServer::start(&stream_function(binary)?, &["--timeout", "30"])
}

/// The chunks of a boto3 summary, decoded, with the prelude's two chunks dropped.
fn chunks(summary: &Value) -> Vec<String> {
    let decoded: Vec<Vec<u8>> = summary["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap_or_default())
                .expect("base64 chunk")
        })
        .collect();
    let after = decoded
        .iter()
        .position(|c| c == PRELUDE_END)
        .map_or(0, |at| at + 1);
    decoded[after..]
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

#[test]
fn boto3_gets_each_chunk_while_the_function_is_still_writing() {
    let Some(server) = server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let gate_arg = gate.display().to_string();
    // The function writes "first", then waits for the gate, which boto3 opens only once it has
    // read that chunk: without streaming end to end the function would give up waiting.
    let event = json!({"chunks": ["first", "second", "third"], "gate": gate_arg});
    let summary = read_stream(
        &server.invoke_addr,
        "function",
        &event,
        &["--gate", &gate_arg, "--tail"],
    );
    assert_eq!(summary["status"], 200, "{summary}");
    assert_eq!(summary["executed_version"], "$LATEST", "{summary}");
    assert_eq!(
        summary["content_type"], "application/vnd.awslambda.http-integration-response",
        "the runtime's content type: {summary}"
    );
    // Chunks are passed on as they come; how the network cuts them up on the way is its own.
    let got = chunks(&summary);
    assert_eq!(got.first().map(String::as_str), Some("first"), "{summary}");
    assert_eq!(got.concat(), "firstsecondthird", "{summary}");
    assert!(gate.exists());
    let complete = &summary["complete"];
    assert!(complete.get("ErrorCode").is_none(), "{summary}");
    let log = base64::engine::general_purpose::STANDARD
        .decode(complete["LogResult"].as_str().expect("LogResult with Tail"))
        .unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.starts_with("START RequestId: ") && log.contains("\nREPORT RequestId: "),
        "{log}"
    );
}

#[test]
fn a_buffered_invoke_of_a_streaming_function_gets_the_whole_body() {
    let Some(server) = server() else {
        return;
    };
    let reply = server.invoke(&json!({"chunks": ["a", "b", "c"]}));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.function_error, None, "{}", reply.text());
    assert!(
        reply.body.ends_with(b"\0\0\0\0\0\0\0\0abc"),
        "{}",
        reply.text()
    );

    // 7 MB streams whole, but is more than a buffered invoke may return.
    let seven_mb = json!({"bytes": 7 * 1024 * 1024});
    let summary = read_stream(&server.invoke_addr, "function", &seven_mb, &["--count"]);
    assert!(summary["complete"].get("ErrorCode").is_none(), "{summary}");
    let prelude = summary["bytes"].as_u64().unwrap() - 7 * 1024 * 1024;
    assert!(prelude < 200, "7 MiB and a small prelude: {summary}");
    let error = server.invoke(&seven_mb).unhandled_error();
    assert_eq!(
        error["errorType"], "Function.ResponseSizeTooLarge",
        "{error}"
    );
}

#[test]
fn a_stream_past_20_mib_or_a_crash_midway_ends_with_an_error_and_the_next_invoke_runs() {
    let Some(server) = server() else {
        return;
    };
    let too_big = json!({"bytes": 21 * 1024 * 1024});
    let summary = read_stream(&server.invoke_addr, "function", &too_big, &["--count"]);
    assert_eq!(
        summary["complete"]["ErrorCode"], "Function.ResponseSizeTooLarge",
        "{summary}"
    );
    assert!(
        summary["bytes"].as_u64().unwrap() <= 20 * 1024 * 1024 + 200,
        "{summary}"
    );

    let crash = json!({"action": "crash_midway", "chunks": ["before", "never"]});
    let summary = read_stream(&server.invoke_addr, "function", &crash, &[]);
    assert_eq!(chunks(&summary).concat(), "before", "{summary}");
    let code = summary["complete"]["ErrorCode"]
        .as_str()
        .unwrap_or_default();
    assert!(
        code == "Runtime.TruncatedResponse" || code == "Runtime.ExitError",
        "{summary}"
    );
    // A fresh runtime serves the next one.
    let summary = read_stream(
        &server.invoke_addr,
        "function",
        &json!({"chunks": ["again"]}),
        &[],
    );
    assert_eq!(chunks(&summary).concat(), "again", "{summary}");
}

#[test]
fn the_bootstrap_librarys_streaming_handler_streams_and_fails_midway_with_trailers() {
    let Some(server) = server_of("bootstrap-stream") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let gate_arg = gate.display().to_string();
    let event = json!({"chunks": ["first", "second"], "gate": gate_arg});
    let summary = read_stream(
        &server.invoke_addr,
        "function",
        &event,
        &["--gate", &gate_arg],
    );
    assert_eq!(summary["content_type"], "text/plain", "{summary}");
    // No prelude here: the chunks are the body.
    let got: Vec<String> = summary["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .collect();
    assert_eq!(got.first().map(String::as_str), Some("first"), "{summary}");
    assert_eq!(got.concat(), "firstsecond", "{summary}");

    // A failure after the first chunk: the chunk arrived, then Lambda's error trailers.
    let failing = json!({"action": "fail_midway", "chunks": ["partial", "never"]});
    let summary = read_stream(&server.invoke_addr, "function", &failing, &[]);
    assert_eq!(summary["chunks"].as_array().unwrap().len(), 1, "{summary}");
    let complete = &summary["complete"];
    assert_eq!(complete["ErrorCode"], "UpstreamError", "{summary}");
    assert_eq!(
        complete["ErrorDetails"], "the upstream went away",
        "{summary}"
    );
    let error = server.invoke(&failing).unhandled_error();
    assert_eq!(error["errorType"], "UpstreamError", "{error}");

    // 8 MiB streams whole; a buffered invoke of it is too large.
    let big = json!({"bytes": 8 * 1024 * 1024});
    let summary = read_stream(&server.invoke_addr, "function", &big, &["--count"]);
    assert_eq!(summary["bytes"], 8 * 1024 * 1024, "{summary}");
    assert!(summary["complete"].get("ErrorCode").is_none(), "{summary}");
}
