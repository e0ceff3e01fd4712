//! Accepted asynchronous events, kept on disk until they have an outcome, so that a crash, a
//! `kill -9` or a full disk loses none: an event is written and synced before its `202` is
//! sent, and marked done only once it ran, or its failure was recorded. At start, what is still
//! pending is run again (at least once, as Lambda runs async events).
//!
//! The store is a directory of append-only segment files (`events-N.log`), each a header and
//! then records framed with a length and CRCs ([`record`]), written with `pwrite` and
//! `fdatasync`. Marking an event done rewrites eight bytes of its record in place, so it needs
//! no new space and works on a full disk. A segment whose events are all done is deleted (the
//! one being written is truncated back to its header instead): that is the compaction, with no
//! copying. Only an index (request id → where its record is) is kept in memory; bodies are
//! read when their event runs. Damage never stops the reader: a record is trusted only when
//! its CRCs match, and after a damaged stretch the next good record is found by its marker.
//! See the crate README for why this and not an embedded database.

mod record;

use bytes::Bytes;
use proto::invoke::Invocation;
use record::{Frame, State};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use record::BodyError;

/// A segment is closed and a new one started once it holds this much.
const SEGMENT_TARGET: u64 = 64 << 20;
/// How long opening waits for a store another process still holds: a server restarted right
/// after a crash may find its predecessor's last threads still exiting.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the event store {}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the event store file {} is {why}. Move it out of {} to start without the events it \
         held, or put back a copy from a backup",
        file.display(),
        dir.display()
    )]
    Unusable {
        file: PathBuf,
        dir: PathBuf,
        why: String,
    },
    #[error(
        "the event store {} is a file, not a directory (an event store of an earlier version?); \
         move it aside to start with a new store there",
        path.display()
    )]
    NotADirectory { path: PathBuf },
    #[error("the event store {} is in use by another process", dir.display())]
    Locked { dir: PathBuf },
    #[error("the event {id} in {} (byte {offset}) cannot be read: {source}", file.display())]
    Damaged {
        id: String,
        file: PathBuf,
        offset: u64,
        #[source]
        source: BodyError,
    },
    #[error("the event cannot be stored: {0}")]
    TooLarge(#[source] BodyError),
    #[error("the store's worker thread failed: {0}")]
    Join(String),
}

fn io_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// What opening found besides the pending events: damage, if any.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Events without an outcome, to be run.
    pub pending: usize,
    /// Stretches of bytes where no record could be read.
    pub damaged: Vec<Damage>,
    /// Pending events whose state is damaged (neither pending nor done): run again rather than
    /// lost.
    pub unsure: usize,
    /// A record cut short at the end of the last segment (a write the process did not finish,
    /// whose event was never acknowledged, or a truncated file): removed.
    pub cut_short: Option<Damage>,
}

/// A stretch of a segment file that held no readable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    /// Record starts found inside it: about how many records (events, pending or done) it held.
    pub records: usize,
}

impl Recovery {
    /// One line for the log when something was wrong; `None` for a clean store.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.damaged.is_empty() {
            let bytes: u64 = self.damaged.iter().map(|d| d.bytes).sum();
            let records: usize = self.damaged.iter().map(|d| d.records.max(1)).sum();
            let places: Vec<String> = self
                .damaged
                .iter()
                .map(|d| {
                    format!(
                        "{} at byte {} ({} bytes)",
                        d.file.display(),
                        d.offset,
                        d.bytes
                    )
                })
                .collect();
            parts.push(format!(
                "{} damaged stretch(es), {bytes} bytes, could not be read: about {records} \
                 record(s), events pending or done, are lost ({})",
                self.damaged.len(),
                places.join("; ")
            ));
        }
        if self.unsure > 0 {
            parts.push(format!(
                "{} event(s) with a damaged state are run again",
                self.unsure
            ));
        }
        if let Some(cut) = &self.cut_short {
            parts.push(format!(
                "{} ended in a record cut short ({} bytes at byte {}: a write that did not \
                 finish, whose event was never acknowledged, or a truncated file), removed",
                cut.file.display(),
                cut.bytes,
                cut.offset
            ));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "recovered {} pending event(s); {}",
                self.pending,
                parts.join("; ")
            )
        })
    }
}

/// Where a pending event's record is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    segment: u64,
    offset: u64,
    frame_len: u32,
    accepted_ms: u64,
    /// In memory the order of acceptance, for resuming in it.
    order: u64,
}

struct Segment {
    file: File,
    path: PathBuf,
    len: u64,
    /// Pending events in it.
    live: usize,
}

struct Inner {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    index: HashMap<String, Entry>,
    next_order: u64,
    /// Events done whose state byte could not be written yet: tried again on every write.
    unmarked: Vec<(u64, u64)>,
    /// The active segment may hold bytes past `len` from a write that failed.
    trim: bool,
    _lock: File,
}

/// The durable queue of one function's accepted events. Cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Mutex<Inner>>,
    dir: Arc<PathBuf>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("dir", &self.dir)
            .finish()
    }
}

fn segment_name(n: u64) -> String {
    format!("events-{n}.log")
}

fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("events-")?.strip_suffix(".log")?;
    digits
        .parse::<u64>()
        .ok()
        .filter(|n| n.to_string() == digits)
}

impl EventStore {
    /// Opens (or creates) the store in directory `dir`, reading what it holds: pending events
    /// are indexed (their bodies stay on disk), damage is skipped and reported. Refuses a
    /// segment it cannot read at all (named in the error, with what to do), and a store
    /// another process holds.
    pub fn open(dir: &Path) -> Result<(EventStore, Recovery), StoreError> {
        if dir.is_file() {
            return Err(StoreError::NotADirectory {
                path: dir.to_owned(),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir, "creating the directory"))?;
        let lock = lock(dir)?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir, "listing"))? {
            let entry = entry.map_err(io_error(dir, "listing"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = segment_number(&name) {
                numbers.push(n);
            } else if name.starts_with("events-") && name.ends_with(".log.tmp") {
                // A segment whose creation a crash cut short: it held no event yet.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        numbers.sort_unstable();
        let mut inner = Inner {
            dir: dir.to_owned(),
            segments: BTreeMap::new(),
            active: 0,
            index: HashMap::new(),
            next_order: 0,
            unmarked: Vec::new(),
            trim: false,
            _lock: lock,
        };
        let mut recovery = Recovery::default();
        for (i, &n) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            inner.load(n, last, &mut recovery)?;
        }
        match numbers.last() {
            Some(&n) => inner.active = n,
            None => inner.start_segment(1)?,
        }
        // Segments left with nothing pending (a crash came before they were retired).
        let empty: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(_, s)| s.live == 0)
            .map(|(&n, _)| n)
            .collect();
        for n in empty {
            if let Some(segment) = inner.segments.get_mut(&n) {
                segment.live = 1;
            }
            inner.retire(n);
        }
        recovery.pending = inner.index.len();
        let store = EventStore {
            inner: Arc::new(Mutex::new(inner)),
            dir: Arc::new(dir.to_owned()),
        };
        Ok((store, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `invocation`, accepted at `accepted_ms`; returns once it is on disk. On an error
    /// (a full disk) nothing of it is kept, and the next call tries afresh.
    pub fn put(&self, invocation: &Invocation, accepted_ms: u64) -> Result<(), StoreError> {
        let record = record::encode(&record::Event {
            accepted_ms,
            request_id: invocation.request_id.clone(),
            trace_id: invocation.trace_id.clone(),
            client_context: invocation.client_context.clone(),
            cognito_identity: invocation.cognito_identity.clone(),
            event: invocation.event.clone(),
        })
        .map_err(StoreError::TooLarge)?;
        let mut inner = self.lock();
        inner.mark_unmarked();
        inner.append(&invocation.request_id, &record, accepted_ms)
    }

    /// Marks the event `request_id` done: it has its outcome and never runs again. This writes
    /// eight bytes in place, so it works on a full disk; should it fail all the same, it is tried
    /// again with every later write.
    pub fn remove(&self, request_id: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.mark_unmarked();
        let Some(entry) = inner.index.remove(request_id) else {
            return Ok(());
        };
        let marked = inner.mark_done(entry.segment, entry.offset);
        if marked.is_err() {
            inner.unmarked.push((entry.segment, entry.offset));
        }
        inner.retire(entry.segment);
        marked
    }

    /// The ids of the events without an outcome, oldest first, with when each was accepted and
    /// the size of its record: what a restart needs to queue them without reading any body.
    pub fn pending_ids(&self) -> Vec<(String, u64, usize)> {
        let inner = self.lock();
        let mut pending: Vec<(&String, &Entry)> = inner.index.iter().collect();
        pending.sort_by_key(|(_, e)| e.order);
        pending
            .into_iter()
            .map(|(id, e)| (id.clone(), e.accepted_ms, e.frame_len as usize))
            .collect()
    }

    /// How many events are without an outcome.
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event `request_id`, read from disk, if it is still without an outcome.
    pub fn get(&self, request_id: &str) -> Result<Option<Invocation>, StoreError> {
        let inner = self.lock();
        let Some(entry) = inner.index.get(request_id).copied() else {
            return Ok(None);
        };
        let Some(segment) = inner.segments.get(&entry.segment) else {
            return Ok(None);
        };
        let damaged = |source| StoreError::Damaged {
            id: request_id.to_owned(),
            file: segment.path.clone(),
            offset: entry.offset,
            source,
        };
        let (frame, body) = read_record(&segment.file, entry.offset, segment.len)
            .map_err(io_error(&segment.path, "reading"))?
            .ok_or_else(|| damaged(BodyError::Malformed))?;
        let event = record::decode(body, frame.body_crc).map_err(damaged)?;
        if event.request_id != request_id {
            return Err(damaged(BodyError::Malformed));
        }
        Ok(Some(Invocation {
            request_id: event.request_id,
            event: event.event,
            trace_id: event.trace_id,
            client_context: event.client_context,
            cognito_identity: event.cognito_identity,
        }))
    }
}

/// Takes the store's lock file, waiting a little for a predecessor that is still exiting.
fn lock(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path, "opening the lock file"))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock(2) on a descriptor `file` owns; the lock goes with the descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::WouldBlock {
            return Err(io_error(&path, "locking")(error));
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Locked {
                dir: dir.to_owned(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The record at `offset` of a file `len` bytes long, if a whole one with a good frame is
/// there (its body is not checked yet).
fn read_record(file: &File, offset: u64, len: u64) -> io::Result<Option<(Frame, Bytes)>> {
    let Some(frame) = read_frame(file, offset, len)? else {
        return Ok(None);
    };
    if offset.saturating_add(frame.record_len()) > len {
        return Ok(None);
    }
    let mut body = vec![0u8; frame.len as usize];
    file.read_exact_at(&mut body, offset + record::FRAME_LEN)?;
    Ok(Some((frame, Bytes::from(body))))
}

fn read_frame(file: &File, offset: u64, len: u64) -> io::Result<Option<Frame>> {
    if len.saturating_sub(offset) < record::FRAME_LEN {
        return Ok(None);
    }
    let mut bytes = [0u8; record::FRAME_SIZE];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(Frame::parse(&bytes))
}

/// The offset of the next record marker at or after `from`, or `len` if there is none.
fn next_marker(file: &File, from: u64, len: u64) -> io::Result<u64> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut at = from;
    while at < len {
        let n = usize::try_from((len - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n]
            .windows(record::MARKER.len())
            .position(|w| w == record::MARKER)
        {
            return Ok(at + i as u64);
        }
        if n < record::MARKER.len() {
            break;
        }
        // Overlap by the marker's length less one, so a marker across two chunks is found.
        at += (n - (record::MARKER.len() - 1)) as u64;
        if n < CHUNK {
            break;
        }
    }
    Ok(len)
}

impl Inner {
    fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(segment_name(n))
    }

    /// Reads segment `n` into the index. `last`: it is the one written to, where a record cut
    /// short at the end is an unfinished write.
    fn load(&mut self, n: u64, last: bool, recovery: &mut Recovery) -> Result<(), StoreError> {
        let path = self.segment_path(n);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path, "opening"))?;
        let len = file
            .metadata()
            .map_err(io_error(&path, "reading the size of"))?
            .len();
        let mut header = vec![0u8; usize::try_from(len.min(record::HEADER_LEN)).unwrap_or(0)];
        file.read_exact_at(&mut header, 0)
            .map_err(io_error(&path, "reading"))?;
        record::check_header(&header).map_err(|why| StoreError::Unusable {
            file: path.clone(),
            dir: self.dir.clone(),
            why,
        })?;
        let mut live = 0usize;
        let mut at = record::HEADER_LEN;
        let mut damage: Option<Damage> = None;
        while at < len {
            let found = self
                .read_entry(&file, at, len)
                .map_err(io_error(&path, "reading"))?;
            let Some((frame, key)) = found else {
                // Not a whole, good record here: damage, until the next one.
                let stretch = damage.get_or_insert(Damage {
                    file: path.clone(),
                    offset: at,
                    bytes: 0,
                    records: 0,
                });
                if read_frame(&file, at, len)
                    .map_err(io_error(&path, "reading"))?
                    .is_some()
                    || at == stretch.offset
                {
                    stretch.records += 1;
                }
                let next = next_marker(&file, at + 1, len).map_err(io_error(&path, "reading"))?;
                stretch.bytes = next - stretch.offset;
                at = next;
                continue;
            };
            if let Some(stretch) = damage.take() {
                recovery.damaged.push(stretch);
            }
            if frame.state != State::Done {
                if frame.state == State::Unknown {
                    recovery.unsure += 1;
                }
                let (accepted_ms, id) = key;
                let entry = Entry {
                    segment: n,
                    offset: at,
                    frame_len: frame.len,
                    accepted_ms,
                    order: self.next_order,
                };
                self.next_order += 1;
                if let Some(old) = self.index.insert(id, entry) {
                    // The same id twice (only damage makes that): the later record stands, and
                    // the earlier is marked done, so that it cannot come back once the later
                    // one is done.
                    let file_of_old = if old.segment == n {
                        live -= 1;
                        Some(&file)
                    } else {
                        self.segments.get_mut(&old.segment).map(|segment| {
                            segment.live = segment.live.saturating_sub(1);
                            &segment.file
                        })
                    };
                    if let Some(old_file) = file_of_old {
                        let _ = old_file
                            .write_all_at(&record::DONE, old.offset + record::STATE_OFFSET)
                            .and_then(|()| old_file.sync_data());
                    }
                }
                live += 1;
            }
            at += frame.record_len();
        }
        let mut len = len;
        if let Some(stretch) = damage {
            if last && self.is_cut_short(&file, stretch.offset, len) {
                // Unfinished: its event was never acknowledged. The next write goes here.
                file.set_len(stretch.offset)
                    .and_then(|()| file.sync_data())
                    .map_err(io_error(&path, "truncating the unfinished record of"))?;
                len = stretch.offset;
                recovery.cut_short = Some(stretch);
            } else {
                recovery.damaged.push(stretch);
            }
        }
        self.segments.insert(
            n,
            Segment {
                file,
                path,
                len,
                live,
            },
        );
        Ok(())
    }

    /// Whether the damage from `offset` to the end `len` is one record cut short: the start of
    /// a frame that runs past the end.
    fn is_cut_short(&self, file: &File, offset: u64, len: u64) -> bool {
        let rest = len - offset;
        if rest < record::FRAME_LEN {
            let mut bytes = vec![0u8; usize::try_from(rest).unwrap_or(0)];
            return file.read_exact_at(&mut bytes, offset).is_ok()
                && record::MARKER.starts_with(&bytes[..bytes.len().min(record::MARKER.len())]);
        }
        matches!(read_frame(file, offset, len), Ok(Some(frame)) if offset + frame.record_len() > len)
    }

    /// The frame and key of a whole, good record at `at`.
    fn read_entry(
        &self,
        file: &File,
        at: u64,
        len: u64,
    ) -> io::Result<Option<(Frame, (u64, String))>> {
        let Some((frame, body)) = read_record(file, at, len)? else {
            return Ok(None);
        };
        if crc32fast::hash(&body) != frame.body_crc {
            return Ok(None);
        }
        Ok(record::decode_key(&body).ok().map(|key| (frame, key)))
    }

    /// Creates segment `n` whole (header written and synced under a temporary name, then
    /// renamed), and makes it the one written to.
    fn start_segment(&mut self, n: u64) -> Result<(), StoreError> {
        let path = self.segment_path(n);
        let temp = self.dir.join(format!("{}.tmp", segment_name(n)));
        let made = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            file.write_all_at(&record::header(), 0)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            File::open(&self.dir)?.sync_all()?;
            Ok(file)
        })();
        let file = made.map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            io_error(&path, "creating")(e)
        })?;
        self.segments.insert(
            n,
            Segment {
                file,
                path,
                len: record::HEADER_LEN,
                live: 0,
            },
        );
        self.active = n;
        Ok(())
    }

    fn append(&mut self, id: &str, record: &[u8], accepted_ms: u64) -> Result<(), StoreError> {
        let full = self
            .segments
            .get(&self.active)
            .is_some_and(|s| s.len >= SEGMENT_TARGET);
        if full {
            // Without room for a new segment, the full one takes the record.
            let _ = self.start_segment(self.active + 1);
        }
        let active = self.active;
        let trim = std::mem::take(&mut self.trim);
        let Some(segment) = self.segments.get_mut(&active) else {
            return Err(StoreError::Unusable {
                file: self.dir.join(segment_name(active)),
                dir: self.dir.clone(),
                why: "missing".into(),
            });
        };
        let at = segment.len;
        let written = (|| {
            if trim {
                segment.file.set_len(at)?;
            }
            segment.file.write_all_at(record, at)?;
            segment.file.sync_data()
        })();
        if let Err(e) = written {
            // Nothing of a failed write may stay: cut it off (that frees space, needing none).
            if segment.file.set_len(at).is_err() {
                self.trim = true;
            }
            return Err(io_error(&segment.path, "writing")(e));
        }
        segment.len = at + record.len() as u64;
        segment.live += 1;
        let entry = Entry {
            segment: active,
            offset: at,
            frame_len: u32::try_from(record.len() as u64 - record::FRAME_LEN).unwrap_or(u32::MAX),
            accepted_ms,
            order: self.next_order,
        };
        self.next_order += 1;
        self.index.insert(id.to_owned(), entry);
        Ok(())
    }

    fn mark_done(&self, segment: u64, offset: u64) -> Result<(), StoreError> {
        let Some(segment) = self.segments.get(&segment) else {
            // Deleted already: nothing of it can run again.
            return Ok(());
        };
        segment
            .file
            .write_all_at(&record::DONE, offset + record::STATE_OFFSET)
            .and_then(|()| segment.file.sync_data())
            .map_err(io_error(&segment.path, "marking an event done in"))
    }

    /// Tries again the marks that failed before.
    fn mark_unmarked(&mut self) {
        let unmarked = std::mem::take(&mut self.unmarked);
        for (segment, offset) in unmarked {
            if self.mark_done(segment, offset).is_err() {
                self.unmarked.push((segment, offset));
            }
        }
    }

    /// One fewer pending event in `segment`: once it has none, a full segment is deleted and
    /// the one being written is cut back to its header, giving the space back.
    fn retire(&mut self, n: u64) {
        let active = self.active;
        let Some(segment) = self.segments.get_mut(&n) else {
            return;
        };
        segment.live = segment.live.saturating_sub(1);
        if segment.live > 0 {
            return;
        }
        if n == active {
            if segment.len > record::HEADER_LEN
                && segment.file.set_len(record::HEADER_LEN).is_ok()
                && segment.file.sync_data().is_ok()
            {
                segment.len = record::HEADER_LEN;
                self.unmarked.retain(|(s, _)| *s != n);
            }
        } else if std::fs::remove_file(&segment.path).is_ok() {
            let _ = File::open(&self.dir).and_then(|d| d.sync_all());
            self.segments.remove(&n);
            self.unmarked.retain(|(s, _)| *s != n);
        }
    }
}

#[cfg(test)]
mod tests;
