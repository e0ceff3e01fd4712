//! Host-link frames as either end reads them: a stream of length-prefixed JSON frames. Every
//! frame that decodes must encode back to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::host_link::{decode, read_frame, FrameError, LEN_PREFIX};

fuzz_target!(|data: &[u8]| {
    // The bytes as one frame body.
    if let Ok(message) = decode(data) {
        fuzz::assert_round_trip(&message);
    }
    // The bytes as a stream of frames, the way `read_frame` meets them on a socket.
    let mut stream = data;
    loop {
        match read_frame(&mut stream) {
            Ok(message) => fuzz::assert_round_trip(&message),
            Err(FrameError::Closed) => break,
            Err(FrameError::Malformed(_)) => {
                // The reader took the whole frame and can go on with the next one.
                assert!(data.len() >= LEN_PREFIX);
            }
            Err(_) => break,
        }
    }
});
