//! The guest init's end of the host link (`init`'s `Conn`, compiled from its source): a
//! host that sends the input's bytes and closes. Init shakes hands and reads frames until the
//! link ends; every frame it accepts round-trips.
#![no_main]

use fuzz::init_host_link::{Conn, LinkAddr};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let path = fuzz::scratch_path("link.sock");
    let _ = std::fs::remove_file(&path);
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(&path).expect("host socket");
        let addr = LinkAddr::Unix(path.clone());
        let host = async {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let _ = stream.write_all(data).await;
            let _ = stream.shutdown().await;
            stream
        };
        let guest = async {
            let Ok((conn, _hello)) = Conn::open(&addr).await else {
                return;
            };
            while let Ok(message) = conn.read().await {
                fuzz::assert_round_trip(&message);
            }
        };
        let run = async { tokio::join!(host, guest) };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the guest's reads end when the host closes");
    });
});
