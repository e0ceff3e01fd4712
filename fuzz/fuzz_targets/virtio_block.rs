//! virtio-blk driven by a hostile driver through guest memory (see `fuzz::virtio`), on a
//! real 8-sector backing file rewritten for each input.
#![no_main]

use fuzz::virtio::{run, Script};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::Block;

const DISK_BYTES: usize = 8 * 512;

fuzz_target!(|input: (bool, Script)| {
    let (read_only, script) = input;
    let path = fuzz::scratch_path("disk");
    std::fs::write(&path, vec![0x5a; DISK_BYTES]).expect("backing file");
    let block = Block::new(&path, read_only, "fuzz").expect("block device");
    run(block, &script);
    // The device never grows or shrinks its backing file, whatever the guest asks.
    let len = std::fs::metadata(&path).expect("backing file").len();
    assert_eq!(len, DISK_BYTES as u64);
    if read_only {
        assert!(std::fs::read(&path)
            .expect("backing file")
            .iter()
            .all(|&b| b == 0x5a));
    }
});
