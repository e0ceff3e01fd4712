//! The environments of one function, as bookkeeping: which are starting, busy or idle, and the
//! limits that decide whether a request gets one. It holds idle environments only; a busy one
//! belongs to the invocation using it until that gives it back. Generic over the environment,
//! so the rules are tested without VMs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the pool needs to know of an environment.
pub trait Environment {
    /// Its process, for the status endpoint and for operators.
    fn pid(&self) -> u32;
}

/// The host-wide cap on environments in use (busy or starting), shared by every function: the
/// account concurrency of Lambda.
#[derive(Clone, Debug)]
pub struct HostLimit {
    max: usize,
    in_use: Arc<AtomicUsize>,
    /// Told whenever an environment stops being in use, of any function: whoever waits for
    /// one (an asynchronous event) tries again.
    freed: Arc<tokio::sync::Notify>,
}

impl HostLimit {
    pub fn new(max: usize) -> HostLimit {
        HostLimit {
            max,
            in_use: Arc::new(AtomicUsize::new(0)),
            freed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Notified each time an environment stops being in use (register before trying, so
    /// that a release in between is not missed).
    pub fn freed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.freed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    fn try_acquire(&self) -> bool {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        let _ = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.freed.notify_waiters();
    }
}

/// Why a request gets no environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The function's reserved concurrency is in use.
    Reserved,
    /// The host-wide cap is in use.
    Host,
    /// The function is shutting down.
    ShutDown,
}

/// The right to one environment for one invocation: give it back with [`Pool::checkin`].
#[must_use]
pub struct Lease<E> {
    pub id: u64,
    pub env: E,
    pub provisioned: bool,
}

/// What [`Pool::checkout`] gives a request.
#[must_use]
pub enum Checkout<E> {
    /// An idle environment, now busy.
    Warm(Lease<E>),
    /// None is idle: wait on `receive` for the next environment that is ready. With `start`,
    /// the request must start one (lease id `start`) and report it with [`Pool::ready`] or
    /// [`Pool::start_failed`]; without, one already starting has nobody waiting for it, and
    /// this request takes its place.
    Wait {
        waiter: u64,
        receive: oneshot::Receiver<Handoff<E>>,
        start: Option<u64>,
    },
}

/// What a waiting request is handed.
pub enum Handoff<E> {
    /// An environment, now busy with this request.
    Ready(Lease<E>),
    /// The start it waited for failed, for this reason.
    Failed(String),
    /// The environment it waited for is ready but may not serve it: a limit is reached.
    Refused(Refusal),
    /// The function is shutting down.
    ShutDown,
}

/// How many environments are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub starting: usize,
    pub busy: usize,
    pub idle: usize,
    /// Requests waiting for an environment to be ready.
    pub waiting: usize,
    /// Of all of them, how many are provisioned (kept however long they idle).
    pub provisioned: usize,
    /// Of the provisioned ones, how many are up (idle or busy, not starting).
    pub provisioned_ready: usize,
    /// The processes of the busy environments.
    pub busy_pids: Vec<u32>,
    /// The processes of the idle environments.
    pub idle_pids: Vec<u32>,
}

struct Idle<E> {
    id: u64,
    env: E,
    since: Instant,
    provisioned: bool,
}

/// A starting or busy environment.
struct Active {
    /// Its process, once it has one.
    pid: Option<u32>,
    /// Whether it holds a place under the host-wide cap (a provisioned start does not until it
    /// serves).
    holds_slot: bool,
}

struct Waiter<E> {
    id: u64,
    send: oneshot::Sender<Handoff<E>>,
}

/// One function's environments. Environments belong to the function, not to the request that
/// started them: an environment that becomes ready goes to the longest-waiting request, or is
/// idle for the next; a request that finds an environment starting with nobody waiting for it
/// waits for that one instead of starting another. So environments starting for callers who
/// left are never more than the callers waiting at once ever were, within the limits, and
/// each serves the next request.
pub struct Pool<E> {
    idle: Vec<Idle<E>>,
    /// Starting and busy environments by lease id.
    active: BTreeMap<u64, Active>,
    starting: usize,
    waiters: VecDeque<Waiter<E>>,
    provisioned: usize,
    /// Provisioned environments still starting.
    provisioning: usize,
    reserved: Option<usize>,
    host: HostLimit,
    next_id: u64,
    shut_down: bool,
}

impl<E: Environment> Pool<E> {
    pub fn new(reserved: Option<usize>, host: HostLimit) -> Pool<E> {
        Pool {
            idle: Vec::new(),
            active: BTreeMap::new(),
            starting: 0,
            waiters: VecDeque::new(),
            provisioned: 0,
            provisioning: 0,
            reserved,
            host,
            next_id: 0,
            shut_down: false,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The function's reserved concurrency.
    pub fn reserved(&self) -> Option<usize> {
        self.reserved
    }

    /// Changes the function's reserved concurrency; environments in use beyond a lowered one
    /// finish their invocations, and new requests are refused until they have.
    pub fn set_reserved(&mut self, reserved: Option<usize>) {
        self.reserved = reserved;
    }

    /// A place for one more environment in use, under both limits.
    fn acquire(&mut self) -> Result<(), Refusal> {
        if self.reserved.is_some_and(|r| self.active.len() >= r) {
            return Err(Refusal::Reserved);
        }
        if !self.host.try_acquire() {
            return Err(Refusal::Host);
        }
        Ok(())
    }

    /// An environment for one invocation: the most recently used idle one; else a place behind
    /// a start nobody waits for; else a new start, unless a limit is reached. Environments in
    /// use (starting or busy) count against both limits; idle ones against neither.
    pub fn checkout(&mut self) -> Result<Checkout<E>, Refusal> {
        if self.shut_down {
            return Err(Refusal::ShutDown);
        }
        if !self.idle.is_empty() {
            self.acquire()?;
            let idle = self.idle.pop().expect("checked: not empty");
            self.active.insert(
                idle.id,
                Active {
                    pid: Some(idle.env.pid()),
                    holds_slot: true,
                },
            );
            return Ok(Checkout::Warm(Lease {
                id: idle.id,
                env: idle.env,
                provisioned: idle.provisioned,
            }));
        }
        let start = if self.starting > self.waiters.len() {
            None
        } else {
            self.acquire()?;
            let id = self.next_id();
            let active = Active {
                pid: None,
                holds_slot: true,
            };
            self.active.insert(id, active);
            self.starting += 1;
            Some(id)
        };
        let (send, receive) = oneshot::channel();
        let waiter = self.next_id();
        self.waiters.push_back(Waiter { id: waiter, send });
        Ok(Checkout::Wait {
            waiter,
            receive,
            start,
        })
    }

    /// The request `waiter` no longer waits (its caller left). What it was handed meanwhile
    /// comes back through [`Pool::checkin`].
    pub fn leave(&mut self, waiter: u64) {
        self.waiters.retain(|w| w.id != waiter);
    }

    /// Hands `lease` to the longest-waiting request still there; gives it back if there is none.
    fn hand_over(&mut self, mut lease: Lease<E>) -> Option<Lease<E>> {
        while let Some(waiter) = self.waiters.pop_front() {
            let pid = lease.env.pid();
            let id = lease.id;
            match waiter.send.send(Handoff::Ready(lease)) {
                Ok(()) => {
                    if let Some(active) = self.active.get_mut(&id) {
                        active.pid = Some(pid);
                    }
                    return None;
                }
                Err(Handoff::Ready(back)) => lease = back,
                Err(_) => unreachable!("a send gives back what it was given"),
            }
        }
        Some(lease)
    }

    /// The environment of start `id` is ready: it goes to the longest-waiting request, or is
    /// idle. Returns it to tear down when the pool is shutting down.
    pub fn ready(&mut self, id: u64, env: E, provisioned: bool) -> Option<E> {
        self.starting = self.starting.saturating_sub(1);
        if provisioned {
            self.provisioning = self.provisioning.saturating_sub(1);
        }
        let holds_slot = self.active.get(&id).is_some_and(|a| a.holds_slot);
        if self.shut_down {
            self.active.remove(&id);
            if holds_slot {
                self.host.release();
            }
            if provisioned {
                self.provisioned = self.provisioned.saturating_sub(1);
            }
            return Some(env);
        }
        let lease = Lease {
            id,
            env,
            provisioned,
        };
        // A provisioned start serves only with a place under the host-wide cap.
        let lease = if !self.waiters.is_empty() && (holds_slot || self.host.try_acquire()) {
            if let Some(active) = self.active.get_mut(&id) {
                active.holds_slot = true;
            }
            match self.hand_over(lease) {
                None => return None,
                Some(lease) => {
                    self.host.release();
                    lease
                }
            }
        } else {
            if holds_slot {
                self.host.release();
            }
            lease
        };
        self.active.remove(&id);
        self.idle.push(Idle {
            id,
            env: lease.env,
            since: Instant::now(),
            provisioned,
        });
        // Requests that were waiting for this start and could not have it are refused, as they
        // would have been had it not been under way when they came.
        while self.waiters.len() > self.starting {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            let _ = waiter.send.send(Handoff::Refused(Refusal::Host));
        }
        None
    }

    /// Start `id` failed: requests waiting beyond the starts still under way get `why`.
    pub fn start_failed(&mut self, id: u64, provisioned: bool, why: &str) {
        self.starting = self.starting.saturating_sub(1);
        if provisioned {
            self.provisioned = self.provisioned.saturating_sub(1);
            self.provisioning = self.provisioning.saturating_sub(1);
        }
        if self.active.remove(&id).is_some_and(|a| a.holds_slot) {
            self.host.release();
        }
        while self.waiters.len() > self.starting {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            let _ = waiter.send.send(Handoff::Failed(why.to_owned()));
        }
    }

    /// Gives back the environment of lease `id` after its invocation: `Some` when it may serve
    /// again (it goes to a waiting request, or is idle), `None` when it is gone (crashed, timed
    /// out, lost). Returns an environment to tear down: this one, when the pool is shutting
    /// down.
    pub fn checkin(&mut self, id: u64, env: Option<E>, provisioned: bool) -> Option<E> {
        match env {
            Some(env) if !self.shut_down => {
                let lease = Lease {
                    id,
                    env,
                    provisioned,
                };
                let lease = self.hand_over(lease)?;
                self.active.remove(&id);
                self.host.release();
                self.idle.push(Idle {
                    id,
                    env: lease.env,
                    since: Instant::now(),
                    provisioned,
                });
                None
            }
            env => {
                self.active.remove(&id);
                self.host.release();
                if provisioned {
                    self.provisioned = self.provisioned.saturating_sub(1);
                }
                env
            }
        }
    }

    /// A provisioned environment is about to be started outside any request; returns its
    /// start id for [`Pool::ready`] or [`Pool::start_failed`].
    pub fn begin_provisioning(&mut self) -> u64 {
        let id = self.next_id();
        self.starting += 1;
        self.provisioned += 1;
        self.provisioning += 1;
        let active = Active {
            pid: None,
            holds_slot: false,
        };
        self.active.insert(id, active);
        id
    }

    /// How many provisioned environments are missing from `target` (a crashed one is replaced).
    pub fn provisioned_missing(&self, target: usize) -> usize {
        if self.shut_down {
            return 0;
        }
        target.saturating_sub(self.provisioned)
    }

    /// Takes out the idle environments that are not provisioned and have idled `timeout`.
    pub fn expire(&mut self, timeout: Duration) -> Vec<E> {
        let (expired, kept) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|idle| !idle.provisioned && idle.since.elapsed() >= timeout);
        self.idle = kept;
        expired.into_iter().map(|idle: Idle<E>| idle.env).collect()
    }

    /// Stops handing out environments: waiting requests are told, the idle environments are
    /// returned to tear down. Busy ones come back through [`Pool::checkin`], starting ones
    /// through [`Pool::ready`], for teardown.
    pub fn shut_down(&mut self) -> Vec<E> {
        self.shut_down = true;
        self.provisioned = 0;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send.send(Handoff::ShutDown);
        }
        std::mem::take(&mut self.idle)
            .into_iter()
            .map(|idle| idle.env)
            .collect()
    }

    pub fn counts(&self) -> Counts {
        Counts {
            starting: self.starting,
            busy: self.active.len() - self.starting,
            idle: self.idle.len(),
            waiting: self.waiters.len(),
            provisioned: self.provisioned,
            provisioned_ready: self.provisioned.saturating_sub(self.provisioning),
            busy_pids: self.active.values().filter_map(|a| a.pid).collect(),
            idle_pids: self.idle.iter().map(|idle| idle.env.pid()).collect(),
        }
    }

    /// Whether nothing is starting, busy or idle.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.idle.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Env(u32);

    impl Environment for Env {
        fn pid(&self) -> u32 {
            self.0
        }
    }

    type Receiver = oneshot::Receiver<Handoff<Env>>;

    /// A checkout that must begin a start: (start id, waiter id, its receiver).
    fn start(pool: &mut Pool<Env>) -> (u64, u64, Receiver) {
        match pool.checkout() {
            Ok(Checkout::Wait {
                waiter,
                receive,
                start: Some(id),
            }) => (id, waiter, receive),
            Ok(_) => panic!("expected a start"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    /// A checkout that must wait for a start already under way.
    fn wait(pool: &mut Pool<Env>) -> (u64, Receiver) {
        match pool.checkout() {
            Ok(Checkout::Wait {
                waiter,
                receive,
                start: None,
            }) => (waiter, receive),
            Ok(_) => panic!("expected to wait for a start under way"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    fn warm(pool: &mut Pool<Env>) -> Lease<Env> {
        match pool.checkout() {
            Ok(Checkout::Warm(lease)) => lease,
            Ok(_) => panic!("expected an idle environment"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    fn handed(receive: &mut Receiver) -> Lease<Env> {
        match receive.try_recv() {
            Ok(Handoff::Ready(lease)) => lease,
            Ok(Handoff::Failed(why)) => panic!("failed: {why}"),
            Ok(Handoff::ShutDown) => panic!("shut down"),
            Ok(Handoff::Refused(refusal)) => panic!("refused: {refusal:?}"),
            Err(e) => panic!("nothing handed over: {e:?}"),
        }
    }

    #[test]
    fn idle_environments_are_reused_and_new_ones_started_up_to_the_reserved_limit() {
        let host = HostLimit::new(10);
        let mut pool = Pool::new(Some(2), host.clone());
        let (a, _, mut ra) = start(&mut pool);
        let (b, _, mut rb) = start(&mut pool);
        assert_eq!(pool.checkout().err(), Some(Refusal::Reserved));
        assert_eq!(pool.ready(a, Env(100), false), None);
        assert_eq!(pool.ready(b, Env(101), false), None);
        let first = handed(&mut ra);
        let second = handed(&mut rb);
        assert_eq!(host.in_use(), 2);
        assert_eq!(pool.checkin(first.id, Some(first.env), false), None);
        assert_eq!(host.in_use(), 1);
        assert_eq!(warm(&mut pool).env, Env(100));
        let counts = pool.counts();
        assert_eq!((counts.starting, counts.busy, counts.idle), (0, 2, 0));
        drop(second);
    }

    /// A caller that leaves while its environment starts does not take the environment with
    /// it: the next request waits for that start instead of beginning another, and gets it.
    #[test]
    fn an_environment_started_for_a_caller_who_left_serves_the_next_request() {
        let host = HostLimit::new(10);
        let mut pool = Pool::new(None, host.clone());
        let (id, waiter, receive) = start(&mut pool);
        pool.leave(waiter);
        drop(receive);
        assert_eq!(pool.counts().waiting, 0);
        // The retry waits for the start under way.
        let (_, mut retry) = wait(&mut pool);
        assert_eq!(pool.counts().starting, 1);
        assert_eq!(pool.ready(id, Env(7), false), None);
        let lease = handed(&mut retry);
        assert_eq!((lease.id, lease.env.pid()), (id, 7));
        assert_eq!(host.in_use(), 1);
        assert_eq!(pool.counts().busy_pids, vec![7]);
        // With nobody waiting, a ready environment is idle and holds no place.
        let (second, waiter, receive) = start(&mut pool);
        pool.leave(waiter);
        drop(receive);
        assert_eq!(pool.ready(second, Env(8), false), None);
        assert_eq!(host.in_use(), 1);
        assert_eq!(pool.counts().idle_pids, vec![8]);
    }

    /// Each start serves one waiting request; a burst of callers who all leave and come back
    /// (a client's retries) starts no more environments than callers.
    #[test]
    fn retries_start_no_more_environments_than_callers() {
        let host = HostLimit::new(16);
        let mut pool = Pool::new(None, host.clone());
        let mut starts = Vec::new();
        let mut waiting = Vec::new();
        for _ in 0..10 {
            let (id, waiter, receive) = start(&mut pool);
            starts.push(id);
            waiting.push((waiter, receive));
        }
        for round in 0..3 {
            for (waiter, receive) in waiting.drain(..) {
                pool.leave(waiter);
                drop(receive);
            }
            for _ in 0..10 {
                waiting.push(wait(&mut pool));
            }
            assert_eq!(pool.counts().starting, 10, "round {round}");
        }
        for (n, id) in starts.into_iter().enumerate() {
            let pid = u32::try_from(n).unwrap();
            assert_eq!(pool.ready(id, Env(pid), false), None);
        }
        for (_, receive) in &mut waiting {
            let _busy = handed(receive);
        }
        let counts = pool.counts();
        assert_eq!((counts.busy, counts.idle, counts.waiting), (10, 0, 0));
        assert_eq!(host.in_use(), 10);
    }

    /// A busy environment given back goes to a waiting request before any start finishes.
    #[test]
    fn a_checked_in_environment_goes_to_the_first_waiting_request() {
        let host = HostLimit::new(10);
        let mut pool = Pool::new(None, host.clone());
        let (id, _, mut first) = start(&mut pool);
        assert_eq!(pool.ready(id, Env(1), false), None);
        let busy = handed(&mut first);
        let (started, _, mut second) = start(&mut pool);
        assert_eq!(pool.checkin(busy.id, Some(busy.env), false), None);
        assert_eq!(handed(&mut second).env, Env(1));
        // The start then finishes with nobody waiting: idle.
        assert_eq!(pool.ready(started, Env(2), false), None);
        assert_eq!(pool.counts().idle_pids, vec![2]);
        assert_eq!(host.in_use(), 1);
    }

    #[test]
    fn a_failed_start_fails_the_requests_it_leaves_without_a_start() {
        let host = HostLimit::new(10);
        let mut pool: Pool<Env> = Pool::new(None, host.clone());
        let (id, _, mut first) = start(&mut pool);
        let (other, _, mut second) = start(&mut pool);
        pool.start_failed(id, false, "no kernel");
        assert!(matches!(first.try_recv(), Ok(Handoff::Failed(why)) if why == "no kernel"));
        assert!(
            second.try_recv().is_err(),
            "the other start is still under way"
        );
        assert_eq!(pool.ready(other, Env(3), false), None);
        assert_eq!(handed(&mut second).env, Env(3));
        assert_eq!(host.in_use(), 1);
    }

    /// A request waiting for a provisioned start that cannot serve it (the host is full when
    /// it is ready) is refused, not left waiting.
    #[test]
    fn a_request_waiting_for_a_start_that_cannot_serve_it_is_refused() {
        let host = HostLimit::new(1);
        let mut pool = Pool::new(None, host.clone());
        let mut other: Pool<Env> = Pool::new(None, host.clone());
        let p = pool.begin_provisioning();
        let (_, mut waiting) = wait(&mut pool);
        let (o, _, _r) = start(&mut other);
        assert_eq!(pool.ready(p, Env(1), true), None);
        assert!(matches!(
            waiting.try_recv(),
            Ok(Handoff::Refused(Refusal::Host))
        ));
        assert_eq!(pool.counts().idle_pids, vec![1]);
        other.start_failed(o, false, "gone");
        assert_eq!(host.in_use(), 0);
    }

    #[test]
    fn the_host_limit_is_shared_and_released_on_every_path() {
        let host = HostLimit::new(1);
        let mut first: Pool<Env> = Pool::new(None, host.clone());
        let mut second: Pool<Env> = Pool::new(None, host.clone());
        let (id, _, _r) = start(&mut first);
        assert_eq!(second.checkout().err(), Some(Refusal::Host));
        first.start_failed(id, false, "gone");
        let (id, _, mut receive) = start(&mut second);
        assert_eq!(second.ready(id, Env(7), false), None);
        let lease = handed(&mut receive);
        // A crashed environment comes back as None: nothing idles, the slot is free.
        assert_eq!(second.checkin(lease.id, None, false), None);
        assert_eq!(host.in_use(), 0);
        assert!(second.is_empty());
    }

    /// Whoever waits for an environment is told when one stops being in use, of any function
    /// sharing the host limit, on every path that frees one.
    #[test]
    fn a_freed_environment_wakes_those_waiting_for_one() {
        use std::pin::Pin;
        use tokio::sync::futures::Notified;
        let host = HostLimit::new(1);
        let mut first: Pool<Env> = Pool::new(None, host.clone());
        let mut second: Pool<Env> = Pool::new(None, host.clone());
        let freed = host.freed();
        fn waiting(freed: &tokio::sync::Notify) -> Pin<Box<Notified<'_>>> {
            let mut wait = Box::pin(freed.notified());
            wait.as_mut().enable();
            wait
        }
        let ready = |wait: &mut Pin<Box<Notified<'_>>>| {
            let waker = std::task::Waker::noop();
            std::future::Future::poll(wait.as_mut(), &mut std::task::Context::from_waker(waker))
                .is_ready()
        };
        let (id, _, _r) = start(&mut first);
        assert_eq!(second.checkout().err(), Some(Refusal::Host));
        let mut wait = waiting(&freed);
        assert!(!ready(&mut wait));
        first.start_failed(id, false, "gone");
        assert!(ready(&mut wait), "a failed start frees its place");
        let (id, _, mut receive) = start(&mut second);
        assert_eq!(second.ready(id, Env(9), false), None);
        let lease = handed(&mut receive);
        let mut wait = waiting(&freed);
        assert_eq!(second.checkin(lease.id, None, false), None);
        assert!(
            ready(&mut wait),
            "an environment given back frees its place"
        );
        assert!(first.checkout().is_ok());
    }

    #[test]
    fn only_unprovisioned_idle_environments_expire() {
        let host = HostLimit::new(10);
        let mut pool = Pool::new(None, host.clone());
        let p = pool.begin_provisioning();
        assert_eq!(pool.provisioned_missing(1), 0);
        assert_eq!(pool.counts().provisioned_ready, 0);
        assert_eq!(host.in_use(), 0);
        assert_eq!(pool.ready(p, Env(1), true), None);
        let counts = pool.counts();
        assert_eq!(
            (counts.idle, counts.provisioned, counts.provisioned_ready),
            (1, 1, 1)
        );
        let lease = warm(&mut pool);
        assert!(lease.provisioned);
        let (other, waiter, receive) = start(&mut pool);
        pool.leave(waiter);
        drop(receive);
        assert_eq!(pool.ready(other, Env(2), false), None);
        assert_eq!(pool.checkin(lease.id, Some(lease.env), true), None);
        assert_eq!(pool.expire(Duration::ZERO), vec![Env(2)]);
        assert_eq!(pool.counts().idle, 1);
        // A provisioned environment that crashed is missing until replaced.
        let lease = warm(&mut pool);
        assert_eq!(pool.checkin(lease.id, None, lease.provisioned), None);
        assert_eq!(pool.provisioned_missing(1), 1);
        assert_eq!(host.in_use(), 0);
    }

    #[test]
    fn shutting_down_tells_the_waiting_and_returns_idle_and_later_environments() {
        let mut pool = Pool::new(None, HostLimit::new(10));
        let (a, _, mut ra) = start(&mut pool);
        assert_eq!(pool.ready(a, Env(1), false), None);
        let busy = handed(&mut ra);
        let (b, waiter, rb) = start(&mut pool);
        pool.leave(waiter);
        drop(rb);
        assert_eq!(pool.ready(b, Env(2), false), None);
        // The idle one serves the next request; the one after starts another.
        let also_busy = warm(&mut pool);
        let (c, _, mut rc) = start(&mut pool);
        assert_eq!(pool.shut_down(), vec![]);
        assert!(matches!(rc.try_recv(), Ok(Handoff::ShutDown)));
        assert!(matches!(pool.checkout(), Err(Refusal::ShutDown)));
        assert_eq!(pool.ready(c, Env(3), false), Some(Env(3)));
        assert_eq!(pool.checkin(busy.id, Some(busy.env), false), Some(Env(1)));
        let id = also_busy.id;
        assert_eq!(pool.checkin(id, Some(also_busy.env), false), Some(Env(2)));
        assert!(pool.is_empty());
        assert_eq!(pool.provisioned_missing(3), 0);
    }
}
