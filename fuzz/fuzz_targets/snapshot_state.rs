//! The snapshot state file (header, checksum, postcard payload) as `vmm` restores it. The input
//! is the whole file, or (first byte odd) a payload the target wraps in a correct header so that
//! the decoder behind the checksum gets fuzzed too. A state that decodes must encode back to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::file::{load, save, FORMAT_VERSION, MAGIC};
use vmm::snapshot::MicrovmState;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 1 {
        let mut file = Vec::with_capacity(24 + rest.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
        file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        file.extend_from_slice(rest);
        file
    } else {
        rest.to_vec()
    };
    let path = fuzz::scratch_path("state");
    std::fs::write(&path, &file).expect("scratch file");
    let Ok(state) = load::<MicrovmState>(&path) else {
        return;
    };
    save(&path, &state).expect("a decoded state saves");
    let saved = std::fs::read(&path).expect("scratch file");
    let again: MicrovmState = load(&path).expect("a saved state loads");
    save(&path, &again).expect("a decoded state saves");
    assert_eq!(std::fs::read(&path).expect("scratch file"), saved);
});
