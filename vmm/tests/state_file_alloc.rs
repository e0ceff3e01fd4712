//! A state file whose payload carries a lying length (a sequence or string that claims far
//! more elements than the payload holds) is refused without allocating what it claims.
//!
//! Its own test binary, because it counts every allocation the process makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use vmm::snapshot::file::{self, StateFileError};

/// The system allocator, keeping the live total and its peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the counters are only bookkeeping on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System.alloc` shares.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most a lying state may make the loader allocate beyond what was live before: the
/// payload itself is a few bytes here, so anything near this is the claimed length at work.
const ALLOWED: usize = 4 << 20;

/// How many bytes above the live total at the start `f` made the peak reach.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

/// A varint (postcard's length encoding) of 2^56, then a few bytes of "elements".
const LYING_PAYLOAD: [u8; 13] = [
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1, 2, 3, 4,
];

fn assert_refused_cheaply<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &str) {
    let (result, peak) = peak_during(|| file::load::<T>(path));
    assert!(
        matches!(result, Err(StateFileError::Decode { .. })),
        "{what}: {:?}",
        result.err()
    );
    assert!(peak < ALLOWED, "{what}: decoding allocated {peak} bytes");
}

#[test]
fn a_lying_length_does_not_allocate_what_it_claims() {
    // The counter itself works: a real allocation shows in the peak.
    let (big, peak) = peak_during(|| vec![1u8; 32 << 20]);
    assert!(peak >= big.len(), "the allocation counter missed {peak}");
    drop(big);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    // An array of u8 encodes as its bytes, with no length: the payload is exactly this.
    file::save(&path, &LYING_PAYLOAD).unwrap();
    assert_refused_cheaply::<Vec<u64>>(&path, "Vec<u64>");
    assert_refused_cheaply::<Vec<[u64; 32]>>(&path, "Vec<[u64; 32]>");
    assert_refused_cheaply::<Vec<Vec<u8>>>(&path, "Vec<Vec<u8>>");
    assert_refused_cheaply::<String>(&path, "String");
    assert_refused_cheaply::<Vec<u8>>(&path, "Vec<u8>");
    // The real thing: its first field is a string, then sequences of vCPUs and devices.
    assert_refused_cheaply::<vmm::snapshot::MicrovmState>(&path, "MicrovmState");
}
