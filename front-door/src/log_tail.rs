//! The end of one invocation's log, for `X-Amz-Log-Type: Tail`: every line from the
//! invocation's `START` to its `REPORT`, keeping the last [`LOG_RESULT_MAX`] bytes, as Lambda's
//! `LogResult` does. It watches the lines on their way to the log, so it works the same whether
//! the environment runs here (local mode) or in a microVM (its lines arrive over the host link).
//! An invocation's answer may come before its `END` and `REPORT` (rapid writes them once the
//! answer has left), so [`TailWatch::finish`] waits a moment for the `REPORT`.

use proto::invoke_api::LOG_RESULT_MAX;
use proto::log::LogSink;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Most invocations watched at once; a watch beyond it collects nothing.
const MAX_WATCHES: usize = 1024;
/// How long [`TailWatch::finish`] waits for a `REPORT` still to come after the answer.
pub const REPORT_WAIT: Duration = Duration::from_secs(2);

/// The invocations whose log is being collected. Cheap to clone; every clone sees the same
/// watches.
#[derive(Clone, Default)]
pub struct LogTails {
    watches: Arc<Mutex<Vec<Watched>>>,
    /// Wakes the finishing watches when one is done.
    done: Arc<Notify>,
}

struct Watched {
    start: String,
    report: String,
    started: bool,
    done: bool,
    tail: VecDeque<u8>,
}

/// One invocation's collection; [`TailWatch::finish`] returns what it collected.
pub struct TailWatch {
    tails: LogTails,
    start: String,
}

impl LogTails {
    /// Starts collecting the log of invocation `request_id`.
    pub fn watch(&self, request_id: &str) -> TailWatch {
        let start = format!("START RequestId: {request_id} ");
        let mut watches = self.lock();
        if watches.len() < MAX_WATCHES {
            watches.push(Watched {
                start: start.clone(),
                report: format!("REPORT RequestId: {request_id}\t"),
                started: false,
                done: false,
                tail: VecDeque::new(),
            });
        }
        TailWatch {
            tails: self.clone(),
            start,
        }
    }

    /// Whether the log of invocation `request_id` is being collected: an invoker that runs it
    /// elsewhere then brings its tail back with it ([`LogTails::fill`]).
    pub fn is_watching(&self, request_id: &str) -> bool {
        let start = format!("START RequestId: {request_id} ");
        self.lock().iter().any(|w| w.start == start)
    }

    /// Gives the watch of invocation `request_id` the tail collected where it ran (another
    /// host), in place of anything seen here.
    pub fn fill(&self, request_id: &str, tail: &[u8]) {
        let start = format!("START RequestId: {request_id} ");
        if let Some(watched) = self.lock().iter_mut().find(|w| w.start == start) {
            let keep = tail.len().saturating_sub(LOG_RESULT_MAX);
            watched.tail = tail[keep..].iter().copied().collect();
            watched.started = true;
            watched.done = true;
        }
    }

    /// Looks at one log line.
    pub fn line(&self, line: &str) {
        for watched in self.lock().iter_mut() {
            if watched.done {
                continue;
            }
            if !watched.started {
                if !line.starts_with(&watched.start) {
                    continue;
                }
                watched.started = true;
            }
            watched.tail.extend(line.as_bytes());
            watched.tail.push_back(b'\n');
            let excess = watched.tail.len().saturating_sub(LOG_RESULT_MAX);
            watched.tail.drain(..excess);
            watched.done = line.starts_with(&watched.report);
            if watched.done {
                self.done.notify_waiters();
            }
        }
    }

    /// A sink that shows every line to these watches, then passes it on to `inner`.
    pub fn around(&self, inner: Arc<dyn LogSink>) -> Arc<dyn LogSink> {
        Arc::new(Tee {
            tails: self.clone(),
            inner,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TailWatch {
    /// Once the invocation's `REPORT` has come (or [`REPORT_WAIT`] has passed), stops
    /// collecting; the last [`LOG_RESULT_MAX`] bytes of the invocation's log.
    pub async fn finish(self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + REPORT_WAIT;
        loop {
            let done = self.tails.done.notified();
            tokio::pin!(done);
            // Registered before the look, so a REPORT in between is not missed.
            done.as_mut().enable();
            if self.reported() {
                break;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                break;
            }
        }
        self.take()
    }

    /// Whether the invocation's `REPORT` was seen (or it is not watched at all).
    fn reported(&self) -> bool {
        let watches = self.tails.lock();
        watches
            .iter()
            .find(|w| w.start == self.start)
            .is_none_or(|w| w.done)
    }

    fn take(self) -> Vec<u8> {
        let mut watches = self.tails.lock();
        match watches.iter().position(|w| w.start == self.start) {
            Some(i) => watches.swap_remove(i).tail.into(),
            None => Vec::new(),
        }
    }
}

struct Tee {
    tails: LogTails,
    inner: Arc<dyn LogSink>,
}

impl LogSink for Tee {
    fn line(&self, line: &str) {
        self.tails.line(line);
        self.inner.line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_collects_its_invocation_from_start_to_report_only() {
        let tails = LogTails::default();
        let watch = tails.watch("r1");
        for line in [
            "before",
            "START RequestId: r0 Version: $LATEST",
            "START RequestId: r1 Version: $LATEST",
            "hello from the handler",
            "END RequestId: r1",
            "REPORT RequestId: r1\tDuration: 1.00 ms\t",
            "START RequestId: r2 Version: $LATEST",
        ] {
            tails.line(line);
        }
        let tail = String::from_utf8(watch.finish().await).unwrap();
        assert_eq!(
            tail,
            "START RequestId: r1 Version: $LATEST\nhello from the handler\nEND RequestId: r1\nREPORT RequestId: r1\tDuration: 1.00 ms\t\n"
        );
        assert!(tails.lock().is_empty());
    }

    #[tokio::test]
    async fn a_tail_from_elsewhere_replaces_what_was_seen_here() {
        let tails = LogTails::default();
        let watch = tails.watch("r1");
        assert!(tails.is_watching("r1"));
        assert!(!tails.is_watching("r2"));
        tails.fill(
            "r1",
            b"START RequestId: r1 Version: $LATEST\nREPORT RequestId: r1\t\n",
        );
        tails.line("START RequestId: r1 Version: $LATEST");
        tails.line("a line seen here after the tail arrived");
        let tail = watch.finish().await;
        assert_eq!(
            tail,
            b"START RequestId: r1 Version: $LATEST\nREPORT RequestId: r1\t\n"
        );
        assert!(!tails.is_watching("r1"));
    }

    #[tokio::test]
    async fn only_the_last_4_kb_are_kept() {
        let tails = LogTails::default();
        let watch = tails.watch("r1");
        tails.line("START RequestId: r1 Version: $LATEST");
        for _ in 0..100 {
            tails.line(&"x".repeat(100));
        }
        tails.line("REPORT RequestId: r1\tDuration: 1.00 ms\t");
        let tail = watch.finish().await;
        assert_eq!(tail.len(), LOG_RESULT_MAX);
        assert!(tail.ends_with(b"REPORT RequestId: r1\tDuration: 1.00 ms\t\n"));
    }

    /// The answer may come first: the watch waits for the REPORT that follows it.
    #[tokio::test]
    async fn finishing_waits_for_a_report_still_to_come() {
        let tails = LogTails::default();
        let watch = tails.watch("r1");
        tails.line("START RequestId: r1 Version: $LATEST");
        let later = tails.clone();
        let writer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            later.line("END RequestId: r1");
            later.line("REPORT RequestId: r1\tDuration: 1.00 ms\t");
        });
        let tail = String::from_utf8(watch.finish().await).unwrap();
        writer.await.unwrap();
        assert!(
            tail.ends_with("END RequestId: r1\nREPORT RequestId: r1\tDuration: 1.00 ms\t\n"),
            "{tail}"
        );
    }
}
