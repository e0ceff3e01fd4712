//! The host registry: each host writes its record ([`HostRecord`]: id, invoke address, what it
//! runs, its capacity and environments per function) into the replicated [`HOSTS_BUCKET`]
//! every [`HEARTBEAT`], and deletes it when it stops; the bucket forgets a record a minute after
//! its last write (a host that died). The same record goes out on [`HEARTBEATS`] at each beat,
//! and every host keeps a [`HostView`] from what arrives there: a host not heard from for
//! [`STALE_AFTER`], by this host's own clock, is stale and never routed to (it died, hangs, or
//! lost the cluster). A core subscription is re-made by the client on every reconnect, so the
//! view survives the loss of a NATS server without a watch to restart.
//!
//! [`HOSTS_BUCKET`]: crate::names::HOSTS_BUCKET
//! [`HEARTBEATS`]: crate::names::HEARTBEATS

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a host rewrites its record.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a record may go unrewritten before it is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// What one host offers, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    /// Its invoke endpoint (`http://ADDR:PORT`), for people and scripts; hosts forward over
    /// NATS, not to it.
    pub invoke_url: String,
    /// The artifact kinds it runs: `zip` (local mode), `ext4` and `cpio` (microVMs).
    pub runs: Vec<String>,
    /// Most environments in use at once.
    pub max_concurrency: usize,
    /// Environments in use (busy or starting) now.
    pub in_use: usize,
    /// Per function it holds anything of: its environments, idle ones, and whether it holds
    /// its snapshot.
    pub functions: BTreeMap<String, FunctionLoad>,
    /// Whether it takes forwarded invokes (false while it shuts down).
    pub accepting: bool,
    /// When it started (ms since the epoch, its own clock).
    pub started_ms: u64,
}

/// A host's environments of one function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionLoad {
    pub environments: usize,
    pub idle: usize,
    #[serde(default)]
    pub snapshot: bool,
}

impl HostRecord {
    /// Whether it can start one more environment.
    pub fn has_capacity(&self) -> bool {
        self.in_use < self.max_concurrency
    }

    /// Its idle environments of `function`.
    pub fn idle(&self, function: &str) -> usize {
        self.functions.get(function).map_or(0, |f| f.idle)
    }

    /// Whether it holds `function`'s snapshot.
    pub fn has_snapshot(&self, function: &str) -> bool {
        self.functions.get(function).is_some_and(|f| f.snapshot)
    }
}

/// A host id for this process: `ID` as given, or the host name and a random suffix (processes
/// on one machine share a host name). Subject tokens and keys allow letters, digits, `-`, `_`.
pub fn host_id(given: Option<&str>) -> Result<String, String> {
    let valid = |s: &str| {
        (1..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if let Some(id) = given {
        return if valid(id) {
            Ok(id.to_owned())
        } else {
            Err(format!(
                "--host-id {id:?}: 1 to 64 letters, digits, '-' or '_'"
            ))
        };
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let name = if name.is_empty() { "host".into() } else { name };
    Ok(format!("{name}-{suffix}"))
}

struct Seen {
    record: HostRecord,
    at: Instant,
}

/// Every host's record as this host last received it. Cheap to clone.
#[derive(Clone, Default)]
pub struct HostView {
    hosts: Arc<Mutex<HashMap<String, Seen>>>,
}

impl HostView {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in one heartbeat.
    pub fn apply(&self, record: HostRecord) {
        self.lock().insert(
            record.id.clone(),
            Seen {
                record,
                at: Instant::now(),
            },
        );
    }

    /// The records rewritten within [`STALE_AFTER`], but for `except` (this host).
    pub fn live(&self, except: &str) -> Vec<HostRecord> {
        let mut hosts = self.lock();
        // Long-stale records are dropped here too, so the map does not grow with dead hosts.
        hosts.retain(|_, seen| seen.at.elapsed() < HOST_FORGET);
        hosts
            .values()
            .filter(|seen| seen.at.elapsed() < STALE_AFTER && seen.record.id != except)
            .filter(|seen| seen.record.accepting)
            .map(|seen| seen.record.clone())
            .collect()
    }

    /// Every record with its age, stale ones included (for the status endpoint).
    pub fn all(&self) -> Vec<(HostRecord, Duration)> {
        let mut all: Vec<_> = self
            .lock()
            .values()
            .map(|seen| (seen.record.clone(), seen.at.elapsed()))
            .collect();
        all.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        all
    }
}

/// Records older than this are forgotten by the view (the bucket forgets them at a minute).
const HOST_FORGET: Duration = Duration::from_secs(60);

/// Keeps `view` up to date from the heartbeats arriving on `subscription`.
pub async fn watch(mut subscription: async_nats::Subscriber, view: HostView) {
    while let Some(message) = subscription.next().await {
        if let Ok(record) = serde_json::from_slice::<HostRecord>(&message.payload) {
            view.apply(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_subject_tokens() {
        let id = host_id(None).unwrap();
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{id}"
        );
        assert_ne!(host_id(None).unwrap(), id, "two processes get two ids");
        assert_eq!(host_id(Some("h-1")).unwrap(), "h-1");
        assert!(host_id(Some("a.b")).is_err());
        assert!(host_id(Some("")).is_err());
    }
}
