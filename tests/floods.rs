//! Nobody is locked out: floods of clients that connect and send nothing, send half a request
//! and stop, or trickle a body a byte at a time, on the invoke endpoint and on the Runtime API
//! (from inside the function), against the real `lambda-local` with a real runtime. Each flood
//! costs the server a bounded number of descriptors and memory it gives back, and a real caller
//! is served while the flood is still there.

use integration_tests::peers::Peer;
use integration_tests::server::{send_raw, LocalServer};
use integration_tests::{open_descriptors, resident_kib, wait_for, wait_until};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

fn start(args: &[&str]) -> Option<LocalServer> {
    LocalServer::start_quiet(&Peer::BootstrapLibrary.launch()?, args)
}

fn invoke_head(length: usize) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n",
        proto::invoke_api::INVOKE_PATH
    )
}

/// A real caller on a connection of its own: its invoke must be answered within `patience`
/// (far shorter than any timeout of the flood's connections in these tests).
fn real_caller(server: &LocalServer, body: &str, patience: Duration) -> String {
    let mut stream = TcpStream::connect(&server.invoke_addr).unwrap();
    stream.set_read_timeout(Some(patience)).unwrap();
    let request = format!("{}{body}", invoke_head(body.len()));
    let request = request.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let read = stream.read_to_string(&mut answer);
    assert!(
        read.is_ok(),
        "the real caller got no answer in {patience:?}: {read:?}"
    );
    answer
}

/// Reads what the server sends on `stream` until it closes it (or `patience` passes).
fn until_closed(stream: &mut TcpStream, patience: Duration) -> Option<String> {
    stream.set_read_timeout(Some(patience)).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(String::new()),
        Err(_) => None,
    }
}

/// Bodies that go silent or trickle are refused with 408 once they fall behind the minimum
/// rate, each costing only its own connection: the server closes every one of them, and a real
/// caller is served meanwhile.
#[test]
fn silent_and_trickling_bodies_are_refused_with_408() {
    let args = ["--body-timeout", "1", "--min-body-rate", "100"];
    let Some(mut server) = start(&args) else {
        return;
    };
    let head = invoke_head(1000);
    let mut silent: Vec<TcpStream> = (0..40)
        .map(|_| send_raw(&server.invoke_addr, format!("{head}{{\"a\":").as_bytes()))
        .collect();
    let mut trickling: Vec<TcpStream> = (0..40)
        .map(|_| send_raw(&server.invoke_addr, head.as_bytes()))
        .collect();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let tricklers: Vec<TcpStream> = trickling.iter().map(|s| s.try_clone().unwrap()).collect();
    // One byte every 300 ms on each: about 3 bytes a second, far below the rate.
    let trickle = std::thread::spawn(move || {
        let mut tricklers = tricklers;
        while stopped.recv_timeout(Duration::from_millis(300)) == Err(RecvTimeoutError::Timeout) {
            for stream in &mut tricklers {
                let _ = stream.write_all(b" ");
            }
        }
    });
    let answer = real_caller(&server, r#"{"real":"caller"}"#, Duration::from_secs(30));
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with(r#"{"real":"caller"}"#), "{answer}");
    for stream in silent.iter_mut().chain(trickling.iter_mut()) {
        let answer = until_closed(stream, Duration::from_secs(30))
            .expect("the server closed the slow connection");
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("RequestTimeoutException"), "{answer}");
        assert!(answer.contains("too slowly"), "{answer}");
    }
    drop(stop);
    trickle.join().unwrap();
    server.assert_echo(&json!({"after": "the flood"}));
    server.assert_alive();
}

/// At the connection cap, clients that have not sent a whole request give their places to
/// new ones: with 64 connections allowed and timeouts too long to matter, 100 connections
/// holding half a body (half of them trickling) do not keep a real caller out, and the server
/// never holds more connections than its cap.
#[test]
fn a_flood_of_slow_bodies_at_the_cap_does_not_lock_out_a_real_caller() {
    let args = [
        "--max-connections",
        "64",
        "--body-timeout",
        "600",
        "--header-timeout",
        "600",
        "--min-body-rate",
        "1",
    ];
    let Some(mut server) = start(&args) else {
        return;
    };
    server.assert_echo(&json!({"warm": "up"}));
    let baseline = open_descriptors(server.pid());
    let head = invoke_head(1000);
    let flood: Vec<TcpStream> = (0..100)
        .map(|_| send_raw(&server.invoke_addr, format!("{head}{{").as_bytes()))
        .collect();
    let tricklers: Vec<TcpStream> = flood
        .iter()
        .step_by(2)
        .map(|s| s.try_clone().unwrap())
        .collect();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let trickle = std::thread::spawn(move || {
        let mut tricklers = tricklers;
        while stopped.recv_timeout(Duration::from_millis(500)) == Err(RecvTimeoutError::Timeout) {
            for stream in &mut tricklers {
                let _ = stream.write_all(b" ");
            }
        }
    });
    for n in 0..4 {
        let body = format!(r#"{{"real":{n}}}"#);
        let answer = real_caller(&server, &body, Duration::from_secs(60));
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with(&body), "{answer}");
        // Each connection costs the server its socket and a copy of it (the caller watch).
        let open = open_descriptors(server.pid());
        assert!(
            open <= baseline + 2 * 64 + 4,
            "{open} descriptors open (at rest {baseline}); the cap is 64 connections"
        );
    }
    drop(stop);
    trickle.join().unwrap();
    drop(flood);
    server.assert_alive();
}

/// An HTTP/1.0 client knows no interim responses: one that half-closes after its request gets
/// its answer with no `100 Continue` before it.
#[test]
fn an_http_1_0_client_is_never_sent_100_continue() {
    let Some(server) = start(&[]) else { return };
    let body = r#"{"action":"sleep","ms":1500}"#;
    let request = format!(
        "POST {} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        proto::invoke_api::INVOKE_PATH,
        body.len()
    );
    let mut stream = send_raw(&server.invoke_addr, request.as_bytes());
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = until_closed(&mut stream, Duration::from_secs(30)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer:?}");
    assert!(!answer.contains("100 Continue"), "{answer:?}");
    assert!(answer.ends_with(r#"{"slept":1500}"#), "{answer:?}");
}

/// A flood of a thousand idle connections: the server holds them within its cap, and gives
/// back the memory they cost once they are gone.
#[test]
fn memory_is_given_back_after_a_flood() {
    let Some(server) = start(&[]) else { return };
    let pid = server.pid();
    for n in 0..20 {
        server.assert_echo(&json!({ "warm": n }));
    }
    let (rest_fds, rest_kib) = (open_descriptors(pid), resident_kib(pid));
    let flood: Vec<TcpStream> = (0..1000)
        .map(|_| {
            send_raw(
                &server.invoke_addr,
                b"POST /2015-03-31/functions/function/invo",
            )
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || open_descriptors(pid)
            >= rest_fds + 1000),
        "the server did not take the flood's connections: {} open",
        open_descriptors(pid)
    );
    let flood_kib = resident_kib(pid);
    drop(flood);
    assert!(
        wait_until(Duration::from_secs(30), || open_descriptors(pid)
            <= rest_fds + 2),
        "the flood's connections are still open: {}",
        open_descriptors(pid)
    );
    server.assert_echo(&json!({"after": "the flood"}));
    let after_kib = resident_kib(pid);
    println!(
        "resident: {rest_kib} KiB at rest, {flood_kib} KiB in the flood, {after_kib} KiB after"
    );
    let kept = after_kib.saturating_sub(rest_kib);
    let taken = flood_kib.saturating_sub(rest_kib);
    assert!(
        kept * 2 <= taken,
        "of the {taken} KiB the flood took, {kept} KiB were kept after it"
    );
}

/// A function that floods its own Runtime API with connections cut short costs the server no
/// more than the Runtime API's cap of 64 connections; the runtime still reaches the API (its
/// answer arrives), and the next invoke is served.
#[test]
fn a_runtime_api_flood_from_inside_the_function_is_bounded() {
    let Some(server) = start(&["--timeout", "60"]) else {
        return;
    };
    let pid = server.pid();
    server.assert_echo(&json!({"warm": "up"}));
    let rest_fds = open_descriptors(pid);
    let rest_kib = resident_kib(pid);
    let flood =
        server.invoke_in_background(br#"{"action":"flood","connections":3000,"ms":3000}"#, &[]);
    let mut most = 0;
    let answer = loop {
        most = most.max(open_descriptors(pid));
        if flood.is_finished() {
            break flood.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.function_error, None, "{}", answer.text());
    let outcome = answer.json();
    let connected = outcome["connected"].as_u64().unwrap();
    let closed = outcome["closed"].as_u64().unwrap();
    println!("flood: {outcome}; server descriptors: {rest_fds} at rest, at most {most}");
    assert!(connected >= 1000, "{outcome}");
    assert!(
        closed + 64 >= connected,
        "{outcome}: the server kept more than 64"
    );
    assert!(
        most <= rest_fds + 64 + 8,
        "{most} descriptors open during the flood (at rest {rest_fds}); the cap is 64"
    );
    let kib = resident_kib(pid);
    assert!(
        kib <= rest_kib + 32 * 1024,
        "{kib} KiB resident after the flood, {rest_kib} KiB before"
    );
    server.assert_echo(&json!({"after": "the flood"}));
    let settled = wait_for(Duration::from_secs(10), || {
        (open_descriptors(pid) <= rest_fds + 2).then_some(())
    });
    assert!(settled.is_some(), "{} descriptors", open_descriptors(pid));
}
