//! Accepted asynchronous events, kept on disk until they have an outcome, so that a crash or a
//! `kill -9` of the service loses none: an event is written and synced before its `202` is
//! sent, and removed only once it ran, or its failure was recorded. At start, what is still
//! there is run again (at least once, as Lambda runs async events).
//!
//! The store is `redb`: an embedded, crash-safe (copy-on-write, checksummed, fsync on commit)
//! key-value store in pure Rust, so there is no C library to build and no server to run.

use bytes::Bytes;
use proto::invoke::Invocation;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Request id → the event as JSON ([`Stored`]).
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the event store {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("the event store failed")]
    Store(#[source] Box<redb::Error>),
    #[error("an event in the store cannot be read")]
    Decode(#[source] serde_json::Error),
    #[error("the store's worker thread failed: {0}")]
    Join(String),
}

fn store_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Store(Box::new(e.into()))
}

/// How long opening waits for a store another process still holds: a server restarted right
/// after a crash may find its predecessor's last threads still exiting.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn create_waiting_for_lock(path: &Path) -> Result<Database, redb::DatabaseError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// What is kept of an accepted event.
#[derive(Serialize, Deserialize)]
struct Stored {
    request_id: String,
    event: String,
    trace_id: Option<String>,
    client_context: Option<String>,
    cognito_identity: Option<String>,
    /// When it was accepted, for its maximum age across restarts.
    accepted_ms: u64,
}

/// The durable queue of one function's accepted events. Cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    db: Arc<Database>,
}

impl EventStore {
    /// Opens (or creates) the store at `path`; its directory is created if needed.
    pub fn open(path: &Path) -> Result<EventStore, StoreError> {
        let open_error = |source: redb::Error| StoreError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_error(redb::Error::Io(e)))?;
        }
        let db = create_waiting_for_lock(path).map_err(|e| open_error(e.into()))?;
        // Create the table now, so that reading an empty store is not an error.
        let txn = db.begin_write().map_err(|e| open_error(e.into()))?;
        txn.open_table(EVENTS).map_err(|e| open_error(e.into()))?;
        txn.commit().map_err(|e| open_error(e.into()))?;
        Ok(EventStore { db: Arc::new(db) })
    }

    /// Keeps `invocation`, accepted at `accepted_ms`; returns once it is on disk.
    pub fn put(&self, invocation: &Invocation, accepted_ms: u64) -> Result<(), StoreError> {
        let stored = Stored {
            request_id: invocation.request_id.clone(),
            event: String::from_utf8_lossy(&invocation.event).into_owned(),
            trace_id: invocation.trace_id.clone(),
            client_context: invocation.client_context.clone(),
            cognito_identity: invocation.cognito_identity.clone(),
            accepted_ms,
        };
        let bytes = serde_json::to_vec(&stored).map_err(StoreError::Decode)?;
        let txn = self.db.begin_write().map_err(store_error)?;
        txn.open_table(EVENTS)
            .map_err(store_error)?
            .insert(invocation.request_id.as_str(), bytes.as_slice())
            .map_err(store_error)?;
        txn.commit().map_err(store_error)
    }

    /// Forgets the event `request_id`: it has its outcome.
    pub fn remove(&self, request_id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(store_error)?;
        txn.open_table(EVENTS)
            .map_err(store_error)?
            .remove(request_id)
            .map_err(store_error)?;
        txn.commit().map_err(store_error)
    }

    /// Every event still without an outcome, with when it was accepted.
    pub fn pending(&self) -> Result<Vec<(Invocation, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(EVENTS).map_err(store_error)?;
        let mut pending = Vec::new();
        for entry in table.iter().map_err(store_error)? {
            let (_, value) = entry.map_err(store_error)?;
            pending.push(decode(value.value())?);
        }
        Ok(pending)
    }

    /// The ids of the events still without an outcome, with when each was accepted: what a
    /// restart needs to queue them without holding every event in memory.
    pub fn pending_ids(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .pending()?
            .into_iter()
            .map(|(invocation, accepted_ms)| (invocation.request_id, accepted_ms))
            .collect())
    }

    /// The event `request_id`, if it is still without an outcome.
    pub fn get(&self, request_id: &str) -> Result<Option<Invocation>, StoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(EVENTS).map_err(store_error)?;
        let Some(value) = table.get(request_id).map_err(store_error)? else {
            return Ok(None);
        };
        decode(value.value()).map(|(invocation, _)| Some(invocation))
    }
}

fn decode(bytes: &[u8]) -> Result<(Invocation, u64), StoreError> {
    let stored: Stored = serde_json::from_slice(bytes).map_err(StoreError::Decode)?;
    let invocation = Invocation {
        request_id: stored.request_id,
        event: Bytes::from(stored.event),
        trace_id: stored.trace_id,
        client_context: stored.client_context,
        cognito_identity: stored.cognito_identity,
    };
    Ok((invocation, stored.accepted_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_reopen_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events").join("store.redb");
        let mut first = Invocation::new(Bytes::from_static(br#"{"n":1}"#));
        first.trace_id = Some("Root=1-abc".into());
        let second = Invocation::new(Bytes::from_static(b"[2]"));
        {
            let store = EventStore::open(&path).unwrap();
            store.put(&first, 10).unwrap();
            store.put(&second, 20).unwrap();
            store.remove(&second.request_id).unwrap();
        }
        let store = EventStore::open(&path).unwrap();
        let pending = store.pending().unwrap();
        assert_eq!(pending.len(), 1);
        let (event, accepted) = &pending[0];
        assert_eq!((event, *accepted), (&first, 10));
        assert_eq!(
            store.pending_ids().unwrap(),
            [(first.request_id.clone(), 10)]
        );
        assert_eq!(store.get(&first.request_id).unwrap().as_ref(), Some(&first));
        assert_eq!(store.get(&second.request_id).unwrap(), None);
    }

    #[test]
    fn a_store_that_cannot_be_opened_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_store = dir.path().join("file");
        std::fs::write(&not_a_store, b"not a database").unwrap();
        let Err(error) = EventStore::open(&not_a_store) else {
            panic!("a text file opened as an event store");
        };
        assert!(error.to_string().contains("file"), "{error}");
    }
}
