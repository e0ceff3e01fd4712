//! virtio-rng driven by a hostile driver through guest memory (see `fuzz::virtio`).
#![no_main]

use fuzz::virtio::{run, Script};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::rng::Rng;

fuzz_target!(|script: Script| {
    run(Rng::new().expect("eventfds"), &script);
});
