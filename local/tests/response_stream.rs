//! The Runtime API's streaming response mode, with the test playing the runtime over raw HTTP:
//! a chunked upload with Lambda's error trailers, and the refusals around it.

use base64::Engine;
use integration_tests::server::{send_raw, LocalServer, Reply};
use std::io::{BufRead, BufReader, Read};
use std::process::Command;

/// `lambda-local` whose runtime never polls, started at once: the test is the runtime.
fn start_for_manual_runtime() -> LocalServer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lambda-local"));
    command.args([
        "--runtime",
        "/bin/sleep",
        "--arg",
        "600",
        "--init-type",
        "provisioned-concurrency",
        "--listen",
        "127.0.0.1:0",
        "--runtime-api",
        "127.0.0.1:0",
    ]);
    LocalServer::from_command(command, "lambda-local", true)
}

fn request_id(next: &Reply) -> String {
    next.header("Lambda-Runtime-Aws-Request-Id")
        .expect("a request id")
        .to_owned()
}

/// The status line's code of the answer on `stream`.
fn status_of(stream: std::net::TcpStream) -> u16 {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let mut rest = Vec::new();
    let _ = reader.take(4096).read_to_end(&mut rest);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"))
}

/// A streamed response upload, as a runtime writes it: chunks, then `trailers`.
fn upload(id: &str, chunks: &[&str], trailers: &str) -> Vec<u8> {
    let mut request = format!(
        "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: x\r\n\
         Lambda-Runtime-Function-Response-Mode: streaming\r\nTransfer-Encoding: chunked\r\n\
         Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n\
         Connection: close\r\n\r\n"
    );
    for chunk in chunks {
        request += &format!("{:x}\r\n{chunk}\r\n", chunk.len());
    }
    request += &format!("0\r\n{trailers}\r\n");
    request.into_bytes()
}

#[test]
fn error_trailers_fail_a_streamed_invocation_midway_with_the_runtimes_error() {
    let server = start_for_manual_runtime();
    let next = server.poll_next();
    let invoke = server.invoke_in_background(b"{}", &[]);
    let id = request_id(&next.join().unwrap());
    let error = base64::engine::general_purpose::STANDARD
        .encode(r#"{"errorMessage":"lost the upstream","errorType":"UpstreamError"}"#);
    let trailers = format!(
        "Lambda-Runtime-Function-Error-Type: UpstreamError\r\nLambda-Runtime-Function-Error-Body: {error}\r\n"
    );
    let stream = send_raw(
        &server.runtime_api_addr,
        &upload(&id, &["partial "], &trailers),
    );
    assert_eq!(status_of(stream), 202);
    let reply = invoke.join().unwrap();
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], "UpstreamError", "{error}");
    assert_eq!(error["errorMessage"], "lost the upstream", "{error}");
    // A function error: the REPORT line carries no status, as for an error post.
    let report = server.report_for(&id);
    assert!(!report.contains("Status:"), "{report}");

    // Without error trailers the chunks are the response.
    let next = server.poll_next();
    let invoke = server.invoke_in_background(b"{}", &[]);
    let id = request_id(&next.join().unwrap());
    let stream = send_raw(
        &server.runtime_api_addr,
        &upload(&id, &["whole ", "body"], ""),
    );
    assert_eq!(status_of(stream), 202);
    let reply = invoke.join().unwrap();
    assert_eq!(reply.function_error, None, "{}", reply.text());
    assert_eq!(reply.text(), "whole body");
}

#[test]
fn a_second_answer_while_streaming_and_an_unknown_mode_are_refused() {
    let server = start_for_manual_runtime();
    let next = server.poll_next();
    // InvokeWithResponseStream over raw HTTP: its head arrives once the stream has begun.
    let invoke = send_raw(
        &server.invoke_addr,
        b"POST /2021-11-15/functions/function/response-streaming-invocations HTTP/1.1\r\n\
          Host: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    let id = request_id(&next.join().unwrap());
    let path = format!("/invocation/{id}/response");
    let refused = server.runtime_api(
        "POST",
        &path,
        &[("Lambda-Runtime-Function-Response-Mode", "buffered-ish")],
        b"{}",
    );
    assert_eq!(refused.status, 400, "{}", refused.text());

    // The upload's head and one chunk, the rest held back: the invocation is streaming.
    let head = upload(&id, &["held"], "");
    let cut = head.len() - "0\r\n\r\n".len();
    let mut stream = send_raw(&server.runtime_api_addr, &head[..cut]);
    let mut invoke = BufReader::new(invoke);
    let mut status = String::new();
    invoke.read_line(&mut status).expect("the stream's head");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let second = server.runtime_api("POST", &path, &[], b"{}");
    assert_eq!(second.status, 403, "{}", second.text());
    let error = server.runtime_api("POST", &format!("/invocation/{id}/error"), &[], b"{}");
    assert_eq!(error.status, 403, "{}", error.text());
    std::io::Write::write_all(&mut stream, b"0\r\n\r\n").unwrap();
    assert_eq!(status_of(stream), 202);
    let mut rest = Vec::new();
    invoke.read_to_end(&mut rest).unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("PayloadChunk") && text.contains("held"),
        "{text}"
    );
    assert!(
        text.contains("InvokeComplete") && !text.contains("ErrorCode"),
        "{text}"
    );
}
