//! The event store's file, as a crash, a full disk or a damaged disk leaves it: the input is
//! a whole segment file. Opening never panics and allocates no more than a record's limit;
//! what it reports pending reads back (or says why not); and the store then works: a new event
//! and a done mark survive a reopen, and the reopen finds nothing cut short.
#![no_main]

use bytes::Bytes;
use front_door::event_store::EventStore;
use libfuzzer_sys::fuzz_target;
use proto::invoke::Invocation;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh store directory on a memory filesystem where there is one (syncs cost nothing).
fn fresh_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = ["/dev/shm", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!(
        "fuzz-event-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fuzz_target!(|data: &[u8]| {
    let dir = fresh_dir();
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::write(dir.join("events-1.log"), data).expect("the segment");
    check(&dir);
    std::fs::remove_dir_all(&dir).expect("the scratch directory goes");
});

fn check(dir: &std::path::Path) {
    let Ok((store, recovery)) = EventStore::open(dir) else {
        // Refused, with the file named (the tests check the message).
        return;
    };
    assert_eq!(recovery.pending, store.len());
    let pending = store.pending_ids();
    assert_eq!(pending.len(), store.len());
    for (id, _, _) in &pending {
        if let Ok(Some(event)) = store.get(id) {
            assert_eq!(&event.request_id, id);
        }
    }
    let added = Invocation::new(Bytes::from_static(b"{\"after\":\"damage\"}"));
    store.put(&added, 1).expect("a put after opening");
    let removed = pending.first().map(|(id, _, _)| id.clone());
    if let Some(id) = &removed {
        store.remove(id).expect("a done mark");
    }
    drop(store);
    let (store, again) = EventStore::open(dir).expect("a store that opened opens again");
    assert_eq!(again.cut_short, None, "{again:?}");
    assert_eq!(store.get(&added.request_id).expect("readable"), Some(added));
    if let Some(id) = &removed {
        assert_eq!(store.get(id).expect("readable"), None, "done stays done");
    }
    assert_eq!(
        store.len(),
        pending.len() + 1 - usize::from(removed.is_some())
    );
}
