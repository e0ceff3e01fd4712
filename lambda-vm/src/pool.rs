//! The environments of one function, as bookkeeping: which are starting, busy or idle, and the
//! limits that decide whether a request gets one. It holds idle environments only; a busy one
//! belongs to the invocation using it until that gives it back. Generic over the environment,
//! so the rules are tested without VMs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The right to one environment for one invocation; give it back with [`Pool::checkin`] (or
/// [`Pool::start_failed`] for a start that failed).
#[must_use]
pub enum Lease<E> {
    /// An idle environment, now busy.
    Warm { id: u64, env: E, provisioned: bool },
    /// None was idle: start one (it counts as starting until [`Pool::started`]).
    Start { id: u64 },
}

/// How many environments are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub starting: usize,
    pub busy: usize,
    pub idle: usize,
    /// Of all of them, how many are provisioned (kept however long they idle).
    pub provisioned: usize,
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

pub struct Pool<E> {
    idle: Vec<Idle<E>>,
    /// Starting and busy environments by lease id, with their process once known.
    active: BTreeMap<u64, Option<u32>>,
    starting: usize,
    provisioned: usize,
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
            provisioned: 0,
            reserved,
            host,
            next_id: 0,
            shut_down: false,
        }
    }

    fn lease_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// An environment for one invocation: the most recently used idle one, or the right to
    /// start one, unless a limit is reached. Environments in use count against both limits;
    /// idle ones count against neither.
    pub fn checkout(&mut self) -> Result<Lease<E>, Refusal> {
        if self.shut_down {
            return Err(Refusal::ShutDown);
        }
        if self.reserved.is_some_and(|r| self.active.len() >= r) {
            return Err(Refusal::Reserved);
        }
        if !self.host.try_acquire() {
            return Err(Refusal::Host);
        }
        match self.idle.pop() {
            Some(idle) => {
                self.active.insert(idle.id, Some(idle.env.pid()));
                Ok(Lease::Warm {
                    id: idle.id,
                    env: idle.env,
                    provisioned: idle.provisioned,
                })
            }
            None => {
                let id = self.lease_id();
                self.active.insert(id, None);
                self.starting += 1;
                Ok(Lease::Start { id })
            }
        }
    }

    /// The environment of lease `id` is up (process `pid`) and serving its invocation.
    pub fn started(&mut self, id: u64, pid: u32) {
        self.starting = self.starting.saturating_sub(1);
        self.active.insert(id, Some(pid));
    }

    /// The environment of lease `id` could not be started.
    pub fn start_failed(&mut self, id: u64) {
        self.starting = self.starting.saturating_sub(1);
        self.active.remove(&id);
        self.host.release();
    }

    /// Gives back the environment of lease `id` after its invocation: `Some` when it may serve
    /// again, `None` when it is gone (crashed, timed out, lost). Returns an environment to
    /// tear down: this one, when the pool is shutting down.
    pub fn checkin(&mut self, id: u64, env: Option<E>, provisioned: bool) -> Option<E> {
        self.active.remove(&id);
        self.host.release();
        match env {
            Some(env) if !self.shut_down => {
                self.idle.push(Idle {
                    id,
                    env,
                    since: Instant::now(),
                    provisioned,
                });
                None
            }
            env => {
                if provisioned {
                    self.provisioned = self.provisioned.saturating_sub(1);
                }
                env
            }
        }
    }

    /// A provisioned environment is about to be started outside any invocation; returns its
    /// lease id for [`Pool::provisioned_up`] or [`Pool::provisioning_failed`].
    pub fn begin_provisioning(&mut self) -> u64 {
        let id = self.lease_id();
        self.starting += 1;
        self.provisioned += 1;
        self.active.insert(id, None);
        id
    }

    /// A provisioned environment is ready and idle (or, if shutting down, returned to go).
    pub fn provisioned_up(&mut self, id: u64, env: E) -> Option<E> {
        self.starting = self.starting.saturating_sub(1);
        self.active.remove(&id);
        if self.shut_down {
            self.provisioned = self.provisioned.saturating_sub(1);
            return Some(env);
        }
        self.idle.push(Idle {
            id,
            env,
            since: Instant::now(),
            provisioned: true,
        });
        None
    }

    pub fn provisioning_failed(&mut self, id: u64) {
        self.starting = self.starting.saturating_sub(1);
        self.provisioned = self.provisioned.saturating_sub(1);
        self.active.remove(&id);
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

    /// Stops handing out environments; returns the idle ones to tear down. Busy ones come back
    /// through [`Pool::checkin`] for teardown.
    pub fn shut_down(&mut self) -> Vec<E> {
        self.shut_down = true;
        self.provisioned = 0;
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
            provisioned: self.provisioned,
            busy_pids: self.active.values().flatten().copied().collect(),
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

    fn start(pool: &mut Pool<Env>) -> u64 {
        match pool.checkout() {
            Ok(Lease::Start { id }) => id,
            Ok(Lease::Warm { .. }) => panic!("expected a start"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    #[test]
    fn idle_environments_are_reused_and_new_ones_started_up_to_the_reserved_limit() {
        let host = HostLimit::new(10);
        let mut pool = Pool::new(Some(2), host.clone());
        let a = start(&mut pool);
        let b = start(&mut pool);
        assert_eq!(pool.checkout().err(), Some(Refusal::Reserved));
        pool.started(a, 100);
        pool.started(b, 101);
        assert_eq!(host.in_use(), 2);
        assert_eq!(pool.checkin(a, Some(Env(100)), false), None);
        assert_eq!(host.in_use(), 1);
        match pool.checkout() {
            Ok(Lease::Warm { env, .. }) => assert_eq!(env, Env(100)),
            _ => panic!("expected the idle environment"),
        }
        let counts = pool.counts();
        assert_eq!((counts.starting, counts.busy, counts.idle), (0, 2, 0));
    }

    #[test]
    fn the_host_limit_is_shared_and_released_on_every_path() {
        let host = HostLimit::new(1);
        let mut first: Pool<Env> = Pool::new(None, host.clone());
        let mut second: Pool<Env> = Pool::new(None, host.clone());
        let id = start(&mut first);
        assert_eq!(second.checkout().err(), Some(Refusal::Host));
        first.start_failed(id);
        let id = start(&mut second);
        second.started(id, 7);
        // A crashed environment comes back as None: nothing idles, the slot is free.
        assert_eq!(second.checkin(id, None, false), None);
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
        let id = start(&mut first);
        assert_eq!(second.checkout().err(), Some(Refusal::Host));
        let mut wait = waiting(&freed);
        assert!(!ready(&mut wait));
        first.start_failed(id);
        assert!(ready(&mut wait), "a failed start frees its place");
        let id = start(&mut second);
        second.started(id, 9);
        let mut wait = waiting(&freed);
        assert_eq!(second.checkin(id, Some(Env(9)), false), None);
        assert!(ready(&mut wait), "a checked-in environment frees its place");
        assert!(matches!(first.checkout(), Ok(Lease::Start { .. })));
    }

    #[test]
    fn only_unprovisioned_idle_environments_expire() {
        let mut pool = Pool::new(None, HostLimit::new(10));
        let p = pool.begin_provisioning();
        assert_eq!(pool.provisioned_missing(1), 0);
        assert_eq!(pool.provisioned_up(p, Env(1)), None);
        let counts = pool.counts();
        assert_eq!((counts.idle, counts.provisioned), (1, 1));
        let lease = pool.checkout().ok().unwrap();
        let Lease::Warm {
            id,
            env,
            provisioned,
        } = lease
        else {
            panic!("expected the provisioned environment")
        };
        assert!(provisioned);
        let other = start(&mut pool);
        pool.started(other, 2);
        assert_eq!(pool.checkin(other, Some(Env(2)), false), None);
        assert_eq!(pool.checkin(id, Some(env), provisioned), None);
        assert_eq!(pool.expire(Duration::ZERO), vec![Env(2)]);
        assert_eq!(pool.counts().idle, 1);
        // A provisioned environment that crashed is missing until replaced.
        let Ok(Lease::Warm {
            id, provisioned, ..
        }) = pool.checkout()
        else {
            panic!("expected the provisioned environment")
        };
        assert_eq!(pool.checkin(id, None, provisioned), None);
        assert_eq!(pool.provisioned_missing(1), 1);
    }

    #[test]
    fn shutting_down_returns_idle_and_later_checked_in_environments() {
        let mut pool = Pool::new(None, HostLimit::new(10));
        let a = start(&mut pool);
        pool.started(a, 1);
        let b = start(&mut pool);
        pool.started(b, 2);
        assert_eq!(pool.checkin(a, Some(Env(1)), false), None);
        assert_eq!(pool.shut_down(), vec![Env(1)]);
        assert_eq!(pool.checkout().err(), Some(Refusal::ShutDown));
        assert_eq!(pool.checkin(b, Some(Env(2)), false), Some(Env(2)));
        assert!(pool.is_empty());
        assert_eq!(pool.provisioned_missing(3), 0);
    }
}
