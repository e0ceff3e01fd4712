//! The client against a one-shot TCP peer: what goes on the wire and how replies map to results.
//! The full behaviour is checked against the real Runtime API server by the conformance suite.

use bootstrap::{Client, Config, Error, ErrorRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::{self, JoinHandle};

/// Serves one request with `reply` and returns the request as received (head and body).
fn one_shot(reply: &'static str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let peer = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
            request.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        request.push_str(&String::from_utf8(body).unwrap());
        reader.get_mut().write_all(reply.as_bytes()).unwrap();
        request
    });
    (address, peer)
}

fn client(address: &str) -> Client {
    let config = Config {
        function_name: Some("fn".into()),
        ..Config::default()
    };
    Client::new(address, config).unwrap()
}

#[test]
fn next_reads_the_context_and_the_event() {
    let (address, peer) = one_shot(
        "HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: id-1\r\n\
         Lambda-Runtime-Deadline-Ms: 1700000000000\r\n\
         Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:1:function:fn\r\n\
         Content-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}",
    );
    let invocation = client(&address).next().unwrap();
    assert_eq!(invocation.context.request_id, "id-1");
    assert_eq!(invocation.context.deadline_ms, 1_700_000_000_000);
    assert_eq!(
        invocation.context.env_config.function_name.as_deref(),
        Some("fn")
    );
    assert_eq!(invocation.event, b"{\"a\":1}");
    let request = peer.join().unwrap();
    assert!(request.starts_with("GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n"));
}

#[test]
fn errors_are_posted_as_json_with_the_error_type_header() {
    let (address, peer) = one_shot(
        "HTTP/1.1 202 Accepted\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"OK\"}",
    );
    let error = ErrorRequest::new("ValueError", "bad");
    client(&address).invocation_error("id-1", &error).unwrap();
    let request = peer.join().unwrap().to_ascii_lowercase();
    assert!(request.starts_with("post /2018-06-01/runtime/invocation/id-1/error http/1.1\r\n"));
    assert!(request.contains("\r\nlambda-runtime-function-error-type: valueerror\r\n"));
    assert!(request.contains("\r\ncontent-type: application/json\r\n"));
    assert!(request.ends_with(r#"{"errormessage":"bad","errortype":"valueerror"}"#));
}

#[test]
fn a_rejection_carries_the_status_and_the_servers_error_body() {
    let body = r#"{"errorMessage":"too big","errorType":"RequestEntityTooLarge"}"#;
    let reply: &'static str = Box::leak(
        format!(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let (address, peer) = one_shot(reply);
    let error = client(&address).respond("id-1", b"payload").unwrap_err();
    peer.join().unwrap();
    assert_eq!(error.status(), Some(413));
    match error {
        Error::Status {
            error_type,
            message,
            ..
        } => {
            assert_eq!(error_type, "RequestEntityTooLarge");
            assert_eq!(message, "too big");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[test]
fn an_unreachable_api_is_a_transport_error() {
    // Bound and dropped at once, so nothing listens on the port.
    let address = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let error = client(&address).next().unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert_eq!(error.status(), None);
}
