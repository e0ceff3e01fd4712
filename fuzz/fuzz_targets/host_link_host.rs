//! The host's end of the host link (`lambda-vm`): a guest that sends the input's bytes and
//! closes. The host shakes hands, runs an invoke and waits for `InitDone`, as the function
//! service does; whatever the guest sends, each call ends with an answer or an error.
#![no_main]

use lambda_vm::host_link::{HostLink, Invoke};
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let (host, mut guest) = UnixStream::pair().expect("socket pair");
    guest.set_nonblocking(true).expect("nonblocking");
    // What does not fit the socket buffer is cut off, as a guest that stops writing would.
    let mut rest = data;
    while !rest.is_empty() {
        match guest.write(rest) {
            Ok(n) if n > 0 => rest = &rest[n..],
            _ => break,
        }
    }
    guest.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let Ok(mut link) = HostLink::handshake(host, Duration::from_secs(5)) else {
        return;
    };
    link.set_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    link.on_log(|line| assert!(line.len() <= proto::host_link::MAX_FRAME_LEN));
    let invoke = Invoke {
        request_id: "fuzz-request".into(),
        event: b"{}".as_slice().into(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
    };
    if link.invoke(invoke).is_ok() {
        let _ = link.wait_init_done();
    }
    drop(guest);
});
