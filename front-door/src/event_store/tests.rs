use super::*;

fn invocation(body: &'static [u8]) -> Invocation {
    Invocation::new(Bytes::from_static(body))
}

fn open(dir: &Path) -> (EventStore, Recovery) {
    EventStore::open(dir).unwrap_or_else(|e| panic!("{}", logging::Chain(&e)))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

#[test]
fn events_survive_a_reopen_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let mut first = invocation(br#"{"n":1}"#);
    first.trace_id = Some("Root=1-abc".into());
    first.client_context = Some(r#"{"custom":{}}"#.into());
    let second = invocation(b"[2]");
    {
        let (store, recovery) = open(&path);
        assert_eq!(recovery, Recovery::default(), "a new store is clean");
        store.put(&first, 10).unwrap();
        store.put(&second, 20).unwrap();
        store.remove(&second.request_id).unwrap();
    }
    let (store, recovery) = open(&path);
    assert_eq!(recovery.pending, 1);
    assert_eq!(recovery.describe(), None);
    assert_eq!(
        store.pending_ids(),
        [(first.request_id.clone(), 10, store.pending_ids()[0].2)]
    );
    assert_eq!(store.get(&first.request_id).unwrap().as_ref(), Some(&first));
    assert_eq!(store.get(&second.request_id).unwrap(), None);
}

#[test]
fn bodies_are_kept_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // Not UTF-8 (a JSON string with raw bytes in it passes the endpoint's check).
    let odd = invocation(b"\"\xff\xfe\x80 \xc3\x28 \xed\xa0\x80\"");
    {
        let (store, _) = open(dir.path());
        store.put(&odd, 1).unwrap();
        assert_eq!(
            store.get(&odd.request_id).unwrap().unwrap().event,
            odd.event
        );
    }
    let (store, _) = open(dir.path());
    assert_eq!(store.get(&odd.request_id).unwrap().unwrap(), odd);
}

#[test]
fn a_file_in_the_stores_place_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.redb");
    std::fs::write(&file, b"redb\x1a\x0a\xa9\x0d\x0a").unwrap();
    let error = EventStore::open(&file).unwrap_err().to_string();
    assert!(
        error.contains("events.redb") && error.contains("not a directory"),
        "{error}"
    );
}

#[test]
fn an_empty_or_foreign_segment_is_refused_by_name_with_what_to_do() {
    for (contents, why) in [
        (&b""[..], "empty (0 bytes)"),
        (b"not a segment at all", "not an event store segment"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("events-1.log");
        std::fs::write(&segment, contents).unwrap();
        let error = EventStore::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains(&segment.display().to_string()), "{error}");
        assert!(error.contains(why), "{error}");
        assert!(error.contains("Move it out of"), "{error}");
    }
}

#[test]
fn a_second_process_cannot_open_a_store_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (_held, _) = open(dir.path());
    match EventStore::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A store of three events, one of them done.
fn three_events(dir: &Path) -> Vec<Invocation> {
    let (store, _) = open(dir);
    let events = [
        invocation(br#"{"first":1}"#),
        invocation(br#"{"second":"\u00e9"}"#),
        invocation(br#"{"third":[3]}"#),
    ];
    for (n, event) in events.iter().enumerate() {
        store.put(event, n as u64).unwrap();
    }
    store.remove(&events[1].request_id).unwrap();
    vec![events[0].clone(), events[2].clone()]
}

#[test]
fn a_truncated_store_keeps_what_is_whole_and_says_what_was_cut() {
    let dir = tempfile::tempdir().unwrap();
    let pending = three_events(dir.path());
    let segment = &segments(dir.path())[0];
    let len = std::fs::metadata(segment).unwrap().len();
    let file = OpenOptions::new().write(true).open(segment).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.pending, 1, "{recovery:?}");
    let cut = recovery.cut_short.as_ref().expect("the cut is reported");
    assert_eq!(cut.file, *segment);
    assert!(recovery.describe().unwrap().contains("cut short"));
    assert_eq!(
        store.get(&pending[0].request_id).unwrap().as_ref(),
        Some(&pending[0])
    );
    // The store goes on: a new event is kept after what is whole.
    let next = invocation(b"{}");
    store.put(&next, 9).unwrap();
    drop(store);
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.describe(), None, "the cut was removed");
    assert_eq!(store.len(), 2);
}

/// Any one byte of a store damaged: opening never panics, and never drops a pending event
/// without saying so (an event counts as lost only when the report names damage).
#[test]
fn a_damaged_byte_anywhere_is_never_a_silent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let pending = three_events(dir.path());
    let segment = segments(dir.path())[0].clone();
    let original = std::fs::read(&segment).unwrap();
    for at in 0..original.len() {
        for flip in [0x01u8, 0xFF] {
            let mut damaged = original.clone();
            damaged[at] ^= flip;
            std::fs::write(&segment, &damaged).unwrap();
            match EventStore::open(dir.path()) {
                Err(StoreError::Unusable { file, .. }) => {
                    assert!((at as u64) < record::HEADER_LEN, "byte {at}");
                    assert_eq!(file, segment);
                }
                Err(other) => panic!("byte {at}: {other}"),
                Ok((store, recovery)) => {
                    let kept = pending
                        .iter()
                        .filter(|e| store.get(&e.request_id).ok().flatten().as_ref() == Some(*e))
                        .count();
                    if kept < pending.len() {
                        assert!(
                            recovery.describe().is_some(),
                            "byte {at} ^ {flip:#x}: a silent loss"
                        );
                    }
                    for (id, _, _) in store.pending_ids() {
                        // Whatever is pending reads back whole, or says why it cannot.
                        let _ = store.get(&id);
                    }
                }
            }
        }
    }
}

#[test]
fn drained_segments_give_their_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let big = Bytes::from(vec![b'7'; 1 << 20]);
    let mut ids = Vec::new();
    // More than one segment's worth.
    for _ in 0..(SEGMENT_TARGET >> 20) + 8 {
        let event = Invocation::new(big.clone());
        store.put(&event, 0).unwrap();
        ids.push(event.request_id);
    }
    assert_eq!(segments(dir.path()).len(), 2);
    for id in &ids {
        store.remove(id).unwrap();
    }
    let left = segments(dir.path());
    assert_eq!(left.len(), 1, "the full segment was deleted");
    assert_eq!(
        std::fs::metadata(&left[0]).unwrap().len(),
        record::HEADER_LEN
    );
    drop(store);
    let (store, recovery) = open(dir.path());
    assert_eq!((store.len(), recovery.describe()), (0, None));
}

/// Found by the fuzzer: a record written twice (only damage does that) is one event, and once
/// it is done neither copy comes back.
#[test]
fn an_event_recorded_twice_is_done_once_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let event = invocation(br#"{"twice":true}"#);
    {
        let (store, _) = open(dir.path());
        store.put(&event, 5).unwrap();
    }
    let segment = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    let record = bytes[usize::try_from(record::HEADER_LEN).unwrap()..].to_vec();
    bytes.extend_from_slice(&record);
    std::fs::write(&segment, &bytes).unwrap();
    {
        let (store, _) = open(dir.path());
        assert_eq!(store.len(), 1);
        store.remove(&event.request_id).unwrap();
        // Another event keeps the segment from being cut back, so both copies stay on disk.
        store.put(&invocation(b"{}"), 6).unwrap();
    }
    let (store, _) = open(dir.path());
    assert_eq!(store.get(&event.request_id).unwrap(), None);
    assert_eq!(store.len(), 1);
}
