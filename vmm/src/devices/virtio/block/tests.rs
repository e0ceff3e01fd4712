use super::*;
use crate::devices::virtio::test_queues::{GuestQueues, NEXT, WRITE};
use crate::devices::virtio::ActivateError;
use crate::devices::virtio::INTERRUPT_USED_RING;
use std::sync::atomic::{AtomicUsize, Ordering};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::Queue;
use vm_memory::GuestAddress;

const MEM_SIZE: u64 = 0x10_0000;
const QSIZE: u16 = 16;
const HEADER: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const SECTORS: u64 = 8;

const R: bool = false;
const W: bool = true;

/// A backing file under the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &[u8]) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-virtio-blk-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pattern() -> Vec<u8> {
    (0..SECTORS * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect()
}

fn memory() -> Memory {
    crate::devices::virtio::test_queues::memory(MEM_SIZE)
}

/// Makes `descs` (address, length, device-writable) a chain, available; its head must be
/// `first`, which the caller's addresses are derived from.
fn add_chain(guest: &mut GuestQueues, first: u16, descs: &[(u64, u32, bool)]) {
    let descs: Vec<(u64, u32, u16)> = descs
        .iter()
        .map(|&(addr, len, writable)| (addr, len, if writable { WRITE } else { 0 }))
        .collect();
    assert_eq!(guest.push_chain(0, &descs), first);
}

fn write_header(mem: &Memory, addr: u64, request_type: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(addr)).unwrap();
}

/// A header + data + status request whose head is `first`; returns where its status byte is.
fn add_request(
    guest: &mut GuestQueues,
    first: u16,
    request_type: u32,
    sector: u64,
    data: &[(u64, u32, bool)],
) -> u64 {
    let header = HEADER + u64::from(first) * 16;
    let status = STATUS + u64::from(first);
    write_header(guest.mem(), header, request_type, sector);
    guest.mem().write_obj(0xffu8, GuestAddress(status)).unwrap();
    let mut descs = vec![(header, 16, R)];
    descs.extend_from_slice(data);
    descs.push((status, 1, W));
    add_chain(guest, first, &descs);
    status
}

fn status_at(mem: &Memory, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

fn used(guest: &GuestQueues, i: usize) -> (u32, u32) {
    guest.used(0, u16::try_from(i).unwrap())
}

fn block(file: &TempFile, read_only: bool, guest: &GuestQueues) -> Block {
    let mut block = Block::new(&file.0, read_only, "drive-1").unwrap();
    block.activate(guest.mem().clone(), guest.queues()).unwrap();
    block
}

const OK: u8 = Status::Ok as u8;
const IOERR: u8 = Status::IoErr as u8;
const UNSUPP: u8 = Status::Unsupp as u8;

#[test]
fn reads_sectors_into_guest_memory() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let status = add_request(
        &mut guest,
        0,
        VIRTIO_BLK_T_IN,
        1,
        &[(DATA, 512, W), (DATA + 0x1000, 512, W)],
    );
    let mut blk = block(&file, false, &guest);
    assert_eq!(blk.process_queue().unwrap(), 1);
    assert_eq!(status_at(&mem, status), OK);
    assert_eq!(used(&guest, 0), (0, 1025));
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, pattern()[512..1024]);
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, pattern()[1024..1536]);
    assert_eq!(blk.interrupt().event().read().unwrap(), 1);
    assert_ne!(blk.interrupt().status() & INTERRUPT_USED_RING, 0);
}

#[test]
fn writes_sectors_and_reads_them_back() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let big = u32::try_from(4 * SECTOR_SIZE).unwrap();
    mem.write_slice(&[0x5a; 2048], GuestAddress(DATA)).unwrap();
    let write = add_request(&mut guest, 0, VIRTIO_BLK_T_OUT, 2, &[(DATA, big, R)]);
    let read = add_request(
        &mut guest,
        3,
        VIRTIO_BLK_T_IN,
        2,
        &[(DATA + 0x1000, big, W)],
    );
    let mut blk = block(&file, false, &guest);
    assert_eq!(blk.process_queue().unwrap(), 2);
    assert_eq!(status_at(&mem, write), OK);
    assert_eq!(status_at(&mem, read), OK);
    assert_eq!(used(&guest, 0), (0, 1));
    assert_eq!(used(&guest, 1), (3, big + 1));
    let mut expected = pattern();
    expected[1024..3072].fill(0x5a);
    assert_eq!(file.contents(), expected);
    let mut got = vec![0u8; 2048];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, vec![0x5a; 2048]);
}

#[test]
fn transfers_larger_than_the_bounce_buffer() {
    let sectors = 2 * u64::from(disk::BOUNCE_BYTES) / SECTOR_SIZE + 3;
    let contents: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i % 253) as u8)
        .collect();
    let file = TempFile::new(&contents);
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let len = u32::try_from(sectors * SECTOR_SIZE).unwrap();
    let read = add_request(&mut guest, 0, VIRTIO_BLK_T_IN, 0, &[(0x4_0000, len, W)]);
    let mut blk = block(&file, false, &guest);
    blk.process_queue().unwrap();
    assert_eq!(status_at(&mem, read), OK);
    let mut got = vec![0u8; len as usize];
    mem.read_slice(&mut got, GuestAddress(0x4_0000)).unwrap();
    assert_eq!(got, contents);
}

#[test]
fn flush_and_get_id() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let flush = add_request(&mut guest, 0, VIRTIO_BLK_T_FLUSH, 0, &[]);
    mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    let get_id = add_request(&mut guest, 2, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 32, W)]);
    let mut blk = block(&file, false, &guest);
    assert_eq!(blk.process_queue().unwrap(), 2);
    assert_eq!(status_at(&mem, flush), OK);
    assert_eq!(status_at(&mem, get_id), OK);
    assert_eq!(used(&guest, 1), (2, u32::try_from(ID_BYTES).unwrap() + 1));
    let mut id = [0u8; 32];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    let mut expected = [0u8; ID_BYTES];
    expected[..7].copy_from_slice(b"drive-1");
    assert_eq!(id[..ID_BYTES], expected);
    assert_eq!(id[ID_BYTES..], [0xee; 32 - ID_BYTES]);
}

#[test]
fn long_id_is_cut() {
    let file = TempFile::new(&pattern());
    let blk = Block::new(&file.0, false, "an-id-much-longer-than-twenty-bytes").unwrap();
    assert_eq!(&blk.id, b"an-id-much-longer-th");
}

#[test]
fn a_drive_saves_what_it_was_made_from_and_restores_from_it() {
    use crate::persist::Persist;
    let file = TempFile::new(&pattern());
    let state = persist::BlockState {
        drive_id: "an-id-much-longer-than-twenty-bytes".into(),
        path: file.0.clone(),
        read_only: true,
    };
    let blk = Block::restore((), &state).unwrap();
    assert!(blk.read_only());
    assert_eq!(&blk.id, b"an-id-much-longer-th");
    let Ok(saved) = blk.save(());
    assert_eq!(
        saved, state,
        "the whole id, not the 20 bytes the guest sees"
    );
    std::fs::remove_file(&file.0).unwrap();
    assert!(matches!(
        Block::restore((), &state),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn read_only_drive_rejects_writes() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let write = add_request(&mut guest, 0, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]);
    let read = add_request(&mut guest, 3, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]);
    let flush = add_request(&mut guest, 6, VIRTIO_BLK_T_FLUSH, 0, &[]);
    let mut blk = block(&file, true, &guest);
    assert!(blk.read_only());
    assert_ne!(blk.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(blk.process_queue().unwrap(), 3);
    assert_eq!(status_at(&mem, write), IOERR);
    assert_eq!(status_at(&mem, read), OK);
    assert_eq!(status_at(&mem, flush), OK);
    assert_eq!(file.contents(), pattern());
}

#[test]
fn out_of_range_and_unsupported() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let past_end = add_request(&mut guest, 0, VIRTIO_BLK_T_IN, SECTORS, &[(DATA, 512, W)]);
    let straddling = add_request(
        &mut guest,
        3,
        VIRTIO_BLK_T_OUT,
        SECTORS - 1,
        &[(DATA, 1024, R)],
    );
    let overflow = add_request(&mut guest, 6, VIRTIO_BLK_T_IN, u64::MAX, &[(DATA, 512, W)]);
    let unsupported = add_request(&mut guest, 9, 42, 0, &[]);
    let last = add_request(
        &mut guest,
        11,
        VIRTIO_BLK_T_IN,
        SECTORS - 1,
        &[(DATA, 512, W)],
    );
    let mut blk = block(&file, false, &guest);
    assert_eq!(blk.capacity(), SECTORS);
    assert_eq!(blk.process_queue().unwrap(), 5);
    assert_eq!(status_at(&mem, past_end), IOERR);
    assert_eq!(status_at(&mem, straddling), IOERR);
    assert_eq!(status_at(&mem, overflow), IOERR);
    assert_eq!(status_at(&mem, unsupported), UNSUPP);
    assert_eq!(status_at(&mem, last), OK);
    assert_eq!(used(&guest, 0), (0, 1));
    assert_eq!(file.contents(), pattern());
}

#[test]
fn config_space_and_features() {
    let file = TempFile::new(&pattern());
    let blk = Block::new(&file.0, false, "x").unwrap();
    assert_eq!(blk.device_type(), device_type::BLOCK);
    assert_eq!(blk.queue_max_sizes(), &[QUEUE_SIZE]);
    let features = blk.avail_features();
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    let mut capacity = [0u8; 8];
    blk.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), SECTORS);
    let mut high = [0xffu8; 4];
    blk.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    let mut seg_max = [0u8; 4];
    blk.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), SEG_MAX);
    let mut past = [0xffu8; 8];
    blk.read_config(14, &mut past);
    assert_eq!(past, [0, 0, 0, 0, 0, 0, 0, 0]);
    blk.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 8]);
}

#[test]
fn missing_file_is_an_error() {
    let missing = std::env::temp_dir().join("vmm-virtio-blk-test-does-not-exist");
    assert!(matches!(
        Block::new(&missing, true, "x"),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn hostile_requests_get_ioerr() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, 64);
    let mut statuses = vec![
        // Data buffer outside guest memory.
        add_request(
            &mut guest,
            0,
            VIRTIO_BLK_T_IN,
            0,
            &[(MEM_SIZE + 0x1000, 512, W)],
        ),
        // Data buffer running off the end of guest memory with an oversized length.
        add_request(
            &mut guest,
            3,
            VIRTIO_BLK_T_OUT,
            0,
            &[(DATA, 0xffff_0000, R)],
        ),
        // Data buffer whose address wraps the address space.
        add_request(
            &mut guest,
            6,
            VIRTIO_BLK_T_IN,
            0,
            &[(u64::MAX - 16, 512, W)],
        ),
        // Read into a device-readable buffer.
        add_request(&mut guest, 9, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, R)]),
    ];
    // Header too short.
    write_header(&mem, HEADER + 0x800, VIRTIO_BLK_T_IN, 0);
    add_chain(
        &mut guest,
        12,
        &[(HEADER + 0x800, 8, R), (DATA, 512, W), (STATUS + 12, 1, W)],
    );
    statuses.push(STATUS + 12);
    // Header device-writable.
    add_chain(
        &mut guest,
        15,
        &[(HEADER + 0x800, 16, W), (DATA, 512, W), (STATUS + 15, 1, W)],
    );
    statuses.push(STATUS + 15);
    // Header outside guest memory.
    add_chain(
        &mut guest,
        18,
        &[(MEM_SIZE - 8, 16, R), (STATUS + 18, 1, W)],
    );
    statuses.push(STATUS + 18);
    // No header at all.
    add_chain(&mut guest, 20, &[(STATUS + 20, 1, W)]);
    statuses.push(STATUS + 20);
    for &status in &statuses {
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    }
    let good = add_request(&mut guest, 21, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]);

    let mut blk = block(&file, false, &guest);
    assert_eq!(blk.process_queue().unwrap(), statuses.len() + 1);
    for (i, &status) in statuses.iter().enumerate() {
        assert_eq!(status_at(&mem, status), IOERR, "request {i}");
        assert_eq!(used(&guest, i).1, 1, "request {i}");
    }
    assert_eq!(status_at(&mem, good), OK);
    assert_eq!(file.contents(), pattern());
}

#[test]
fn unanswerable_chains_are_returned_empty() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, 64);
    write_header(&mem, HEADER, VIRTIO_BLK_T_IN, 0);
    mem.write_slice(&[0xff; 64], GuestAddress(STATUS)).unwrap();
    // Status descriptor read-only.
    add_chain(
        &mut guest,
        0,
        &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, R)],
    );
    // Status descriptor of length 0.
    add_chain(
        &mut guest,
        3,
        &[(HEADER, 16, R), (DATA, 512, W), (STATUS + 3, 0, W)],
    );
    // Status byte outside guest memory.
    add_chain(
        &mut guest,
        6,
        &[(HEADER, 16, R), (DATA, 512, W), (MEM_SIZE, 1, W)],
    );
    // A descriptor loop: 9 -> 10 -> 9 ...
    let looped = guest.push_raw(0, |head| {
        vec![
            SplitDescriptor::new(HEADER, 16, NEXT, head + 1),
            SplitDescriptor::new(STATUS + 10, 1, NEXT | WRITE, head),
        ]
    });
    assert_eq!(looped, 9);
    // A next index past the descriptor table.
    let bad_next = guest.push_raw(0, |_| vec![SplitDescriptor::new(HEADER, 16, NEXT, 1000)]);
    assert_eq!(bad_next, 11);
    let good = add_request(&mut guest, 12, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]);

    let mut blk = block(&file, false, &guest);
    assert_eq!(blk.process_queue().unwrap(), 6);
    for (i, head) in [0, 3, 6, 9, 11].into_iter().enumerate() {
        assert_eq!(used(&guest, i), (head, 0), "request {i}");
    }
    let mut untouched = [0u8; 12];
    mem.read_slice(&mut untouched, GuestAddress(STATUS))
        .unwrap();
    assert!(untouched.iter().all(|&b| b == 0xff));
    assert_eq!(used(&guest, 5), (12, 513));
    assert_eq!(status_at(&mem, good), OK);
}

#[test]
fn bogus_head_index_is_dropped() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    add_request(&mut guest, 0, VIRTIO_BLK_T_FLUSH, 0, &[]);
    guest.queue(0).avail().ring().ref_at(0).unwrap().store(1000);
    let good = add_request(&mut guest, 2, VIRTIO_BLK_T_FLUSH, 0, &[]);
    let mut blk = block(&file, false, &guest);
    assert_eq!(blk.process_queue().unwrap(), 1);
    assert_eq!(used(&guest, 0), (2, 1));
    assert_eq!(status_at(&mem, good), OK);
}

#[test]
fn broken_queue_is_a_typed_error() {
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let broken = || {
        let mut queue: Queue = guest.queue(0).create_queue().unwrap();
        queue.set_used_ring_address(Some(0xffff_0000), Some(0));
        queue.set_avail_ring_address(Some(0xffff_0000), Some(0));
        queue
    };
    let mut blk = Block::new(&file.0, false, "x").unwrap();
    assert!(matches!(blk.process_queue(), Err(BlockError::NotActivated)));
    assert!(matches!(
        blk.activate(mem.clone(), vec![broken()]),
        Err(ActivateError::InvalidQueue(0))
    ));
    assert!(matches!(
        blk.activate(mem.clone(), vec![]),
        Err(ActivateError::QueueCount {
            expected: 1,
            got: 0
        })
    ));
    assert!(!blk.is_activated());
    // Bypass activation's check to see the processing path cope with it too.
    blk.base.active = Some(Active {
        mem: mem.clone(),
        queues: vec![broken()],
    });
    assert!(matches!(blk.process_queue(), Err(BlockError::Queue(_))));
    let mut not_ready: Queue = guest.queue(0).create_queue().unwrap();
    not_ready.set_ready(false);
    blk.base.active = Some(Active {
        mem: mem.clone(),
        queues: vec![not_ready],
    });
    assert!(matches!(blk.process_queue(), Err(BlockError::Queue(_))));

    // A reset and a fresh activation bring the device back.
    blk.reset();
    assert!(!blk.is_activated());
    let status = add_request(&mut guest, 0, VIRTIO_BLK_T_FLUSH, 0, &[]);
    blk.activate(mem.clone(), vec![guest.queue(0).create_queue().unwrap()])
        .unwrap();
    assert_eq!(blk.process_queue().unwrap(), 1);
    assert_eq!(status_at(&mem, status), OK);
}

#[test]
fn event_loop_processes_kicks() {
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    let file = TempFile::new(&pattern());
    let mem = memory();
    let mut guest = GuestQueues::new(&mem, 1, QSIZE);
    let status = add_request(&mut guest, 0, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]);
    let blk = Arc::new(Mutex::new(block(&file, false, &guest)));
    let mut manager = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    manager.add_subscriber(blk.clone());
    blk.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(status_at(&mem, status), OK);
    assert_eq!(blk.lock().unwrap().interrupt().event().read().unwrap(), 1);
}
