//! The Telemetry API's producing side: the environment's platform records, the function's and
//! the extensions' log lines, passed to every subscriber that asked for their category, each
//! subscriber buffered and delivered on its own ([`delivery`]).
//!
//! Events from the start of an init are kept until init ends, and a subscriber (subscribing is
//! an init-time act) gets them first: `platform.initStart` happens before any extension could
//! have subscribed. Subscribers of the older Logs API get the records their schema has
//! ([`logs_api`]).

pub mod api;
mod delivery;
mod logs_api;
pub mod records;

use delivery::Queue;
use proto::log::LogSink;
use proto::telemetry_api::{Buffering, Category, Event, Target};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Most bytes of events kept from an init for subscribers yet to come.
const BACKLOG_BYTES: usize = 1024 * 1024;

/// Which API a subscriber came through, so which schema its records follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Telemetry,
    Logs,
}

/// The subscribers of one environment and what is kept for them. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    hub: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    subscribers: Vec<Subscriber>,
    /// During init: what happened since it began.
    backlog: Option<Vec<(Category, Event)>>,
    backlog_bytes: usize,
}

struct Subscriber {
    /// The environment generation whose extension subscribed.
    generation: u64,
    types: Vec<Category>,
    flavour: Flavour,
    queue: Queue,
}

impl Subscriber {
    fn take(&self, category: Category, event: &Event) {
        if !self.types.contains(&category) {
            return;
        }
        match self.flavour {
            Flavour::Telemetry => self.queue.push(event.clone()),
            Flavour::Logs => {
                for event in logs_api::translate(category, event) {
                    self.queue.push(event);
                }
            }
        }
    }
}

impl Telemetry {
    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent data.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An init begins: keep its events for the subscribers to come.
    pub fn begin_init(&self) {
        let mut hub = self.hub();
        hub.backlog = Some(Vec::new());
        hub.backlog_bytes = 0;
    }

    /// Init is over: nobody subscribes any more.
    pub fn end_init(&self) {
        let mut hub = self.hub();
        hub.backlog = None;
        hub.backlog_bytes = 0;
    }

    /// Whether anybody listens (so that records nobody would get cost nothing to build).
    pub fn listened(&self) -> bool {
        let hub = self.hub();
        hub.backlog.is_some() || !hub.subscribers.is_empty()
    }

    /// Subscribes extension `name` of environment `generation`: what the init has produced so
    /// far goes out first, then everything of its `types` as it happens.
    pub fn subscribe(
        &self,
        generation: u64,
        name: &str,
        types: Vec<Category>,
        buffering: Buffering,
        target: Target,
        flavour: Flavour,
    ) {
        let queue = Queue::start(name.to_owned(), buffering, target);
        let subscriber = Subscriber {
            generation,
            types: types.clone(),
            flavour,
            queue,
        };
        let mut hub = self.hub();
        for (category, event) in hub.backlog.iter().flatten() {
            subscriber.take(*category, event);
        }
        hub.subscribers.push(subscriber);
        drop(hub);
        let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
        self.platform(
            "platform.telemetrySubscription",
            serde_json::json!({"name": name, "state": "Subscribed", "types": names}),
        );
    }

    /// A `platform.*` record.
    pub fn platform(&self, kind: &str, record: Value) {
        self.publish(Category::Platform, kind, record);
    }

    /// One log line of the function (`function`) or of an extension (`extension`).
    pub fn line(&self, category: Category, line: &str) {
        self.publish(category, category.as_str(), Value::String(line.to_owned()));
    }

    fn publish(&self, category: Category, kind: &str, record: Value) {
        let mut hub = self.hub();
        if hub.backlog.is_none() && hub.subscribers.is_empty() {
            return;
        }
        let event = Event {
            time: proto::time::rfc3339_now(),
            kind: kind.to_owned(),
            record,
        };
        for subscriber in &hub.subscribers {
            subscriber.take(category, &event);
        }
        let size = event.kind.len() + event.record.to_string().len();
        let Hub {
            backlog,
            backlog_bytes,
            ..
        } = &mut *hub;
        if let Some(backlog) = backlog {
            if *backlog_bytes + size <= BACKLOG_BYTES {
                *backlog_bytes += size;
                backlog.push((category, event));
            }
        }
    }

    /// Sends every subscriber what it holds now, without waiting for its buffering: the
    /// environment is about to shut down.
    pub fn flush(&self) {
        for subscriber in &self.hub().subscribers {
            subscriber.queue.flush();
        }
    }

    /// Ends the subscriptions of generations before `generation`, once what they hold is sent.
    pub fn retire_before(&self, generation: u64) {
        self.hub().subscribers.retain(|s| {
            let keep = s.generation >= generation;
            if !keep {
                s.queue.close();
            }
            keep
        });
    }

    /// A log sink that passes each line on to `inner` and to the subscribers of `category`.
    pub fn tee(&self, category: Category, inner: Arc<dyn LogSink>) -> Arc<dyn LogSink> {
        Arc::new(Tee {
            telemetry: self.clone(),
            category,
            inner,
        })
    }
}

struct Tee {
    telemetry: Telemetry,
    category: Category,
    inner: Arc<dyn LogSink>,
}

impl LogSink for Tee {
    fn line(&self, line: &str) {
        self.inner.line(line);
        self.telemetry.line(self.category, line);
    }
}
