//! The Runtime API as the runtime speaks it: the input is one connection's raw bytes (any
//! number of pipelined requests). One invocation is queued first, so `/next` hands it out and
//! `REQID` in the input stands for its request id. The runtime process is a placeholder
//! (`sleep`); the input plays its part.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use http_server::ConnectionLimits;
use rapid::Invocation;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let runtime = fuzz::http::runtime();
    runtime.block_on(async {
        let sandbox =
            fuzz::http::environment("/bin/sleep", &["3600"], Arc::new(fuzz::http::Discard));
        let invocation = Invocation::new(Bytes::from_static(b"{\"fuzz\":1}"));
        let request = fuzz::replace(data, b"REQID", invocation.request_id.as_bytes());
        let invoker = sandbox.clone();
        let invoke = tokio::spawn(async move { invoker.invoke(invocation).await });
        let api = sandbox.clone();
        let response = fuzz::http::exchange(request.into(), ConnectionLimits::NONE, move |r| {
            rapid::runtime_api::handle(api.clone(), r)
        })
        .await;
        fuzz::http::assert_http(&response);
        sandbox.shutdown();
        invoke.abort();
    });
});
