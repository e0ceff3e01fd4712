//! virtio-vsock driven by a hostile driver through guest memory (see `fuzz::virtio`), with its
//! real hybrid backend: a Unix listener for host clients and host services listening on
//! `<uds>_<port>` for the guest's connections.
#![no_main]

use fuzz::virtio::{run, Script};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::Vsock;

fuzz_target!(|script: Script| {
    let uds_path = fuzz::vsock_host().uds_path.clone();
    let vsock = Vsock::new(fuzz::GUEST_CID, &uds_path).expect("vsock device");
    run(vsock, &script);
    fuzz::vsock_host().serve_and_drop();
});
