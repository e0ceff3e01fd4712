//! The `vmm` API's request parser: a connection's raw bytes framed request after request
//! (`vmm::api::parse`), each routed to a typed request (`vmm::api::routes`), as the API thread
//! does. Invariants: framing always moves forward within the input; a routed request's body,
//! serialized again, routes to the same request; every answer is HTTP/1.1 that parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::parse::{parse_request, Framing};
use vmm::api::routes::{route, ApiRequest};
use vmm::api::ApiResponse;

/// The method, path and body that stand for `request`, for the round trip.
fn as_http(request: &ApiRequest) -> Option<(&'static str, String, Vec<u8>)> {
    let put = |path: &str, body: Vec<u8>| Some(("PUT", path.to_owned(), body));
    match request {
        ApiRequest::PutMachineConfig(c) => put("/machine-config", json(c)),
        ApiRequest::PatchMachineConfig(c) => Some(("PATCH", "/machine-config".into(), json(c))),
        ApiRequest::PutBootSource(b) => put("/boot-source", json(b)),
        ApiRequest::PutDrive(d) => put(&format!("/drives/{}", d.drive_id), json(d)),
        ApiRequest::PutNetworkInterface(n) => {
            put(&format!("/network-interfaces/{}", n.iface_id), json(n))
        }
        ApiRequest::PutVsock(v) => put("/vsock", json(v)),
        ApiRequest::PutSerial(s) => put("/serial", json(s)),
        ApiRequest::PutLogger(l) => put("/logger", json(l)),
        ApiRequest::PutMetrics(m) => put("/metrics", json(m)),
        ApiRequest::CreateSnapshot(s) => put("/snapshot/create", json(s)),
        ApiRequest::LoadSnapshot(s) => put("/snapshot/load", json(s)),
        _ => None,
    }
}

fn json<T: serde::Serialize>(body: &T) -> Vec<u8> {
    serde_json::to_vec(body).expect("a parsed body serializes")
}

fn assert_http(response: &ApiResponse, keep_alive: bool) {
    let bytes = response.to_http(keep_alive);
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let status = parsed.parse(&bytes).expect("an answer parses");
    assert!(status.is_complete());
    assert_eq!(parsed.code, Some(response.status));
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    // At most one request per byte: framing must move forward.
    for _ in 0..=data.len() {
        match parse_request(input) {
            Ok(Framing::Complete { request, used }) => {
                assert!(used > 0 && used <= input.len());
                input = &input[used..];
                match route(&request.method, &request.path, &request.body) {
                    Ok(typed) => {
                        if let Some((method, path, body)) = as_http(&typed) {
                            let again = route(method, &path, &body).expect("its own form routes");
                            assert_eq!(again, typed);
                        }
                        assert_http(&ApiResponse::no_content(), request.keep_alive);
                    }
                    Err(e) => {
                        assert!(e.status >= 400);
                        assert_http(&ApiResponse::fault(e.status, &e.message), false);
                    }
                }
            }
            Ok(Framing::Incomplete { .. }) => return,
            Err(e) => {
                assert_http(&ApiResponse::fault(e.status(), &e.to_string()), false);
                return;
            }
        }
    }
});
