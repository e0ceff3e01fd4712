//! Where the guest's part of each invocation goes, only when init runs with timing on
//! (`INIT_TIMING=1`; the host puts it on the kernel command line when it logs timings). Each
//! answer frame then goes out right behind an `InvokeTiming` frame with the intervals from the
//! `Invoke` frame's arrival to `/next` answered, to the outcome, and to the answer's write, all
//! on the guest's clock. With timing off nothing here runs.

use proto::host_link::{InvokeTiming, Message};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The stamps of invocations whose answer is not written yet.
#[derive(Default)]
pub struct Timing {
    pending: Mutex<HashMap<String, Stamps>>,
}

/// One invocation's moments, up to its outcome.
pub struct Stamps {
    /// The `Invoke` frame was read.
    pub received: Instant,
    /// The runtime's `/next` was answered with the event (unknown when the environment moved
    /// on to another invocation first).
    pub next: Option<Instant>,
    /// The outcome was ready.
    pub outcome: Instant,
}

impl Timing {
    /// Keeps an invocation's stamps until its answer is written.
    pub fn record(&self, request_id: &str, stamps: Stamps) {
        self.lock().insert(request_id.to_owned(), stamps);
    }

    /// The `InvokeTiming` frame to send just before `answer`, when it is an answer whose
    /// stamps were recorded; its clock stops now.
    pub fn frame_before(&self, answer: &Message) -> Option<Message> {
        let (Message::Response { request_id, .. } | Message::Error { request_id, .. }) = answer
        else {
            return None;
        };
        let stamps = self.lock().remove(request_id)?;
        let since = |t: Instant| {
            let elapsed = t.saturating_duration_since(stamps.received).as_micros();
            u64::try_from(elapsed).unwrap_or(u64::MAX)
        };
        Some(Message::InvokeTiming(InvokeTiming {
            request_id: request_id.clone(),
            next_us: stamps.next.map_or(0, since),
            outcome_us: since(stamps.outcome),
            sent_us: since(Instant::now()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stamps>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_answer_gets_the_intervals_of_its_own_invocation_once() {
        let timing = Timing::default();
        // In the past, so that the answer is written after the outcome.
        let received = Instant::now() - Duration::from_millis(10);
        let stamps = Stamps {
            received,
            next: Some(received + Duration::from_micros(150)),
            outcome: received + Duration::from_micros(900),
        };
        timing.record("r1", stamps);
        let answer = |id: &str| Message::Response {
            request_id: id.into(),
            body: b"{}".as_slice().into(),
        };
        assert_eq!(timing.frame_before(&answer("other")), None);
        assert_eq!(timing.frame_before(&Message::Shutdown), None);
        let Some(Message::InvokeTiming(t)) = timing.frame_before(&answer("r1")) else {
            panic!("no timing frame for r1")
        };
        assert_eq!(
            (t.request_id.as_str(), t.next_us, t.outcome_us),
            ("r1", 150, 900)
        );
        assert!(t.sent_us >= t.outcome_us);
        assert_eq!(timing.frame_before(&answer("r1")), None, "sent once");
    }
}
