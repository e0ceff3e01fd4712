//! The Lambda API's routes and the invoke endpoint (the emulator's
//! `POST /2015-03-31/functions/function/invocations`), as any client reaches them: the input is
//! one connection's raw bytes. Behind it is a real
//! environment whose runtime cannot start, so every invoke gets Lambda's answer for that.
#![no_main]

use libfuzzer_sys::fuzz_target;
use front_door::invoke_http::Endpoint;
use front_door::{LogTails, Router};
use http_server::ConnectionLimits;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let runtime = fuzz::http::runtime();
    runtime.block_on(async {
        let tails = LogTails::default();
        let log = tails.around(Arc::new(fuzz::http::Discard));
        let sandbox = fuzz::http::local_sandbox("/nonexistent/bootstrap", &[], log);
        let router = Router::new([Endpoint::new(sandbox.clone(), tails, None)]);
        let response = fuzz::http::exchange(
            bytes::Bytes::copy_from_slice(data),
            ConnectionLimits::default(),
            move |r| router.clone().handle(r),
        )
        .await;
        fuzz::http::assert_http(&response);
        sandbox.handle.shutdown();
    });
});
