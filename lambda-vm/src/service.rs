//! One function's execution environments: a pool of microVMs, each its own `vmm` process
//! serving one invocation at a time, as Lambda's execution environments do.
//!
//! A request with no idle environment waits for one: for a start nobody waits for (its caller
//! left), or for a new start (a restore of the SnapStart snapshot, or a boot) while the
//! function is under its reserved concurrency and the host under its cap; beyond them it is
//! refused at once ([`InvokeError::Throttled`], a 429). Starts run on threads of their own and
//! belong to the function, not to the request: a caller that hangs up leaves its environment
//! to the next request ([`crate::pool`]). Provisioned environments are started up front and
//! kept; others are torn down after idling. An environment that timed out, crashed or lost its
//! link is dropped, never reused. Each invocation runs on a blocking thread that owns its
//! environment and gives it back itself, so a client that hangs up mid-invoke leaks nothing.

use crate::guest::{Guest, GuestError, GuestSpec, Prepared};
use crate::host_link::{self, LinkError, Streamed};
use crate::logs::FunctionLog;
use crate::pool::{Checkout, Counts, Environment, Handoff, HostLimit, Lease, Pool, Refusal};
use crate::ready::ReadyPool;
use crate::snapshots::{KeyError, Snapshot, Snapshots};
use front_door::{ConcurrencyError, Function, Invoker};
use proto::function_config::FunctionConfig;
use proto::invoke::{
    Answer, Invocation, InvokeError, Outcome, ResponseStream, StreamEnd, StreamSender,
};
use proto::invoke_api::throttle_reason;
use proto::runtime_api::{function_error_type as error_type, ErrorRequest};
use proto::InitializationType;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Slack on top of the function's timeout before the host gives up on the guest: the guest
/// enforces the timeout itself and reports it; the host's limit only catches a stuck guest.
const HOST_DEADLINE_SLACK: Duration = Duration::from_secs(10);
/// How often idle environments are checked for expiry and provisioned ones topped up.
const MAINTENANCE_EVERY: Duration = Duration::from_millis(250);
/// How long a torn-down guest gets to power off before its `vmm` is killed.
const TEARDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why an environment could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    SnapshotKey(#[from] KeyError),
    #[error("SnapStart: writing the snapshot {}", dir.display())]
    Snapshot {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A snapshot just taken from a booted guest did not restore: restore itself is broken
    /// here, and no snapshot will do better.
    #[error("SnapStart: the snapshot just taken in {} did not restore", dir.display())]
    FreshSnapshot {
        dir: PathBuf,
        #[source]
        source: Box<GuestError>,
    },
    /// A bug panicked in the start: it fails this start as any error does, rather than
    /// leave the caller waiting for a timeout and its place in the pool taken.
    #[error("the environment's start failed on an internal error: {0}")]
    Panicked(String),
}

/// An error with its causes, `: `-separated, for log lines ([`logging::Chain`]).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    logging::Chain(error).to_string()
}

impl Environment for Guest {
    fn pid(&self) -> u32 {
        self.vmm.pid()
    }
}

/// How many environments a function may have, and keeps.
#[derive(Debug, Clone)]
pub struct Scaling {
    /// The function's reserved concurrency: at most this many in use.
    pub reserved: Option<usize>,
    /// Started up front and kept, however long they idle.
    pub provisioned: usize,
    /// How long an environment that is not provisioned may idle before it is torn down.
    pub idle_timeout: Duration,
    /// The host-wide cap, shared by every function.
    pub host: HostLimit,
    /// For a SnapStart function, how many `vmm` processes are kept ready to restore into
    /// ([`crate::ready`]).
    pub ready: usize,
}

/// One function: an [`Invoker`] over its pool of environments. Cheap to clone.
#[derive(Clone)]
pub struct FunctionService {
    inner: Arc<Inner>,
}

struct Inner {
    /// The function as the invoke API sees it.
    function: Function,
    /// Its `function.json`.
    config: FunctionConfig,
    spec: GuestSpec,
    /// For a SnapStart function, where its snapshots live.
    snapshots: Option<Snapshots>,
    scaling: Scaling,
    pool: Mutex<Pool<Guest>>,
    /// One snapshot is taken at a time: a burst of first invokes takes one, then restores it.
    snapshotting: Mutex<()>,
    log: FunctionLog,
    /// A SnapStart function's ready `vmm` processes.
    ready: Arc<ReadyPool>,
    /// The number of the next environment (in log lines and file names).
    next_env: Arc<AtomicU64>,
    /// Whether the provisioned environments were started once ([`FunctionService::provision`]);
    /// after that the maintenance thread replaces any that go.
    provisioned_once: AtomicBool,
    /// Invocations that were still running when their caller hung up (they ran to the end, as
    /// on Lambda; a caller that retries then needs another environment).
    abandoned: AtomicU64,
}

impl FunctionService {
    /// `log` is the function's log ([`FunctionLog`]). `snapshots` is where a SnapStart
    /// function's snapshots live (`None` for other functions). Provisioned environments start
    /// with [`FunctionService::provision`].
    pub fn new(
        function: Function,
        config: FunctionConfig,
        spec: GuestSpec,
        snapshots: Option<Snapshots>,
        scaling: Scaling,
        log: FunctionLog,
    ) -> FunctionService {
        let pool = Pool::new(scaling.reserved, scaling.host.clone());
        let ready = ReadyPool::new(if snapshots.is_some() {
            scaling.ready
        } else {
            0
        });
        let next_env = Arc::new(AtomicU64::new(1));
        let inner = Arc::new(Inner {
            function,
            config,
            spec,
            snapshots,
            scaling,
            pool: Mutex::new(pool),
            snapshotting: Mutex::new(()),
            log,
            ready: ready.clone(),
            next_env: next_env.clone(),
            provisioned_once: AtomicBool::new(false),
            abandoned: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let log_to = weak.clone();
        ready.start(
            &inner.config.function_name,
            inner.spec.clone(),
            move || next_env.fetch_add(1, Ordering::Relaxed),
            move |line| {
                if let Some(inner) = log_to.upgrade() {
                    inner.log.service(None, line);
                }
            },
        );
        std::thread::Builder::new()
            .name(format!("pool-{}", inner.config.function_name))
            .spawn(move || maintain(weak))
            .ok();
        FunctionService { inner }
    }

    pub fn name(&self) -> &str {
        &self.inner.config.function_name
    }

    /// Whether its SnapStart snapshot is taken, ready to restore.
    pub fn has_snapshot(&self) -> bool {
        self.inner
            .snapshots
            .as_ref()
            .and_then(|snapshots| snapshots.current().ok())
            .is_some_and(|dir| dir.join(vmm::snapshot::STATE_FILE).exists())
    }

    /// Environments per state.
    pub fn counts(&self) -> Counts {
        self.inner.pool().counts()
    }

    /// The processes of the `vmm`s kept ready for the next restores.
    pub fn ready_pids(&self) -> Vec<u32> {
        self.inner.ready.pids()
    }

    /// Whether every provisioned environment is up.
    pub fn provisioned_ready(&self) -> bool {
        self.counts().provisioned_ready >= self.inner.scaling.provisioned
    }

    /// How many invocations were still running when their caller hung up.
    pub fn abandoned_invocations(&self) -> u64 {
        self.inner.abandoned.load(Ordering::Relaxed)
    }

    /// Starts the function's provisioned environments, all at once, and waits for them; `Err`
    /// says why one did not start. From then on the service replaces any that go (one that
    /// failed here too, after a pause).
    pub async fn provision(&self) -> Result<(), String> {
        let wanted = self
            .inner
            .pool()
            .provisioned_missing(self.inner.scaling.provisioned);
        let starts: Vec<_> = (0..wanted)
            .map(|_| {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.provision_one())
            })
            .collect();
        let mut failed = None;
        for start in starts {
            match start.await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => failed = failed.or(Some(why)),
                Err(e) => failed = failed.or(Some(e.to_string())),
            }
        }
        self.inner.provisioned_once.store(true, Ordering::Release);
        failed.map_or(Ok(()), Err)
    }

    /// Stops handing out environments: requests waiting for one are told, idle ones are torn
    /// down now, starting and busy ones as they come back.
    pub async fn shutdown(&self) {
        self.inner.ready.stop();
        let idle = self.inner.pool().shut_down();
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for guest in idle {
                inner.teardown(guest, "the service is stopping");
            }
        })
        .await;
    }
}

/// The pool's housekeeping, until the service is gone: idle environments past their time are
/// torn down, missing provisioned ones started.
fn maintain(inner: Weak<Inner>) {
    // The snapshot key hashes the kernel and the image (tens of MB): done now, it is not on the
    // first restore's path; later starts only compare file metadata. A snapshot already there
    // (an earlier run's) gets its ready processes now.
    if let Some(inner) = inner.upgrade() {
        if let Some(Ok(dir)) = inner.snapshots.as_ref().map(Snapshots::current) {
            if let Ok(Some(snapshot)) = Snapshot::open(&dir) {
                inner.ready.offer(&snapshot);
            }
        }
    }
    let mut provisioning = Backoff::default();
    loop {
        std::thread::sleep(MAINTENANCE_EVERY);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for pid in inner.ready.check() {
            inner.log.service(
                None,
                &format!("ready vmm process {pid} died while waiting; it is replaced"),
            );
        }
        let expired = inner.pool().expire(inner.scaling.idle_timeout);
        for guest in expired {
            let idle = inner.scaling.idle_timeout.as_secs_f64();
            inner.teardown(guest, &format!("idle for {idle:.0} s"));
        }
        if !inner.provisioned_once.load(Ordering::Acquire) || !provisioning.due() {
            continue;
        }
        let missing = inner.pool().provisioned_missing(inner.scaling.provisioned);
        for _ in 0..missing {
            let started = inner.provision_one().is_ok();
            provisioning.record(started);
            if !started {
                break;
            }
        }
    }
}

/// Waits between failed starts of provisioned environments: a start that fails at once (a bad
/// image, a host out of something) is not retried at the maintenance rate for ever.
#[derive(Default)]
struct Backoff {
    failures: u32,
    next: Option<Instant>,
}

impl Backoff {
    /// Longest wait between two failed starts.
    const MAX: Duration = Duration::from_secs(60);

    fn due(&self) -> bool {
        self.next.is_none_or(|next| Instant::now() >= next)
    }

    fn record(&mut self, started: bool) {
        if started {
            *self = Backoff::default();
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let wait = Duration::from_secs(1)
            .saturating_mul(2u32.saturating_pow(self.failures.saturating_sub(1).min(6)))
            .min(Self::MAX);
        self.next = Some(Instant::now() + wait);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ready.stop();
    }
}

impl Inner {
    fn pool(&self) -> MutexGuard<'_, Pool<Guest>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> &str {
        &self.config.function_name
    }

    /// A number for a new environment.
    fn new_env(&self) -> u64 {
        self.next_env.fetch_add(1, Ordering::Relaxed)
    }

    /// Where environment `env`'s guest lines go.
    fn guest_log(self: &Arc<Self>, env: u64) -> impl FnMut(&str) + Send + 'static {
        let inner = Arc::downgrade(self);
        move |line| {
            if let Some(inner) = inner.upgrade() {
                inner.log.guest(env, line);
            }
        }
    }

    /// [`Self::start_environment`], with a panic in it turned into [`StartError::Panicked`].
    fn start_caught(self: &Arc<Self>, provisioned: bool) -> Result<Guest, StartError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.start_environment(provisioned)
        }))
        .unwrap_or_else(|panic| Err(StartError::Panicked(logging::panic_message(&*panic))))
    }

    /// Starts one provisioned environment and adds it to the pool; `Err` says why it failed.
    fn provision_one(self: &Arc<Self>) -> Result<(), String> {
        let id = self.pool().begin_provisioning();
        match self.start_caught(true) {
            Ok(guest) => {
                let env = guest.env;
                self.log.service(
                    Some(env),
                    &format!(
                        "provisioned environment ready (vmm pid {})",
                        guest.vmm.pid()
                    ),
                );
                if let Some(guest) = self.pool().ready(id, guest, true) {
                    self.teardown(guest, "the service is stopping");
                }
                Ok(())
            }
            Err(e) => {
                let message = chain(&e);
                self.pool().start_failed(id, true, &message);
                self.log.service(
                    None,
                    &format!("a provisioned environment failed to start: {message}"),
                );
                Err(message)
            }
        }
    }

    /// Starts an environment for start `id` of the pool, and hands it to the pool (which gives
    /// it to the longest-waiting request, or keeps it idle).
    fn start_for_pool(self: &Arc<Self>, id: u64) {
        match self.start_caught(false) {
            Ok(guest) => {
                if let Some(guest) = self.pool().ready(id, guest, false) {
                    self.teardown(guest, "the service is stopping");
                }
            }
            Err(StartError::Guest(GuestError::Stopping)) => {
                let message = "the service is stopping";
                self.log.service(
                    None,
                    "an environment starting was ended: the service is stopping",
                );
                self.pool().start_failed(id, false, message);
            }
            Err(e) => {
                let message = chain(&e);
                self.log
                    .service(None, &format!("an environment failed to start: {message}"));
                self.pool().start_failed(id, false, &message);
            }
        }
    }

    /// Asks the guest to power off, gives it a moment, then kills its `vmm`; its directory
    /// goes with it.
    fn teardown(&self, guest: Guest, why: &str) {
        let (pid, env) = (guest.vmm.pid(), guest.env);
        guest.shutdown(TEARDOWN_GRACE);
        self.log.service(
            Some(env),
            &format!("tore down the environment (vmm pid {pid}; {why})"),
        );
    }

    /// Serves one invocation with `lease`'s environment, hands its outcome to `deliver`, then
    /// (a restored guest's first invoke recording its working set in between) gives the
    /// environment back. `caller_gone` says, at the end, whether the caller hung up meanwhile.
    fn serve(
        &self,
        lease: Lease<Guest>,
        invocation: Invocation,
        stream: &mut dyn FnMut(Streamed),
        caller_gone: &AtomicBool,
        deliver: impl FnOnce(Outcome),
    ) {
        let Lease {
            id,
            env: guest,
            provisioned,
        } = lease;
        let (mut kept, outcome) = self.run(guest, invocation, stream);
        if caller_gone.load(Ordering::Acquire) {
            self.abandoned.fetch_add(1, Ordering::Relaxed);
        }
        // The answer leaves first: recording is not on the caller's path.
        deliver(outcome);
        if let Some(guest) = kept.as_mut() {
            self.record_working_set(guest);
        }
        if let Some(guest) = self.pool().checkin(id, kept, provisioned) {
            self.teardown(guest, "the service is stopping");
        }
    }

    /// A new environment: for a SnapStart function a restore of its snapshot in a fresh VM
    /// (taking the snapshot first when there is none for the current kernel, image and
    /// configuration), otherwise a boot. A provisioned environment of an on-demand function
    /// runs its init at once, as Lambda's do.
    fn start_environment(self: &Arc<Self>, provisioned: bool) -> Result<Guest, StartError> {
        let Some(snapshots) = &self.snapshots else {
            let env = self.new_env();
            let log = self.guest_log(env);
            let guest =
                if provisioned && self.config.initialization_type == InitializationType::OnDemand {
                    let mut spec = self.spec.clone();
                    let init_type = InitializationType::ProvisionedConcurrency;
                    spec.boot_args = Some(format!(
                        "{} {}={init_type}",
                        spec.boot_args(),
                        proto::guest::cmdline::INITIALIZATION_TYPE
                    ));
                    Guest::boot(&spec, env, None, log)?
                } else {
                    Guest::boot(&self.spec, env, None, log)?
                };
            self.log.service(
                Some(env),
                &format!(
                    "scaled out: microVM booted (vmm pid {}), init connected after {} ms",
                    guest.vmm.pid(),
                    guest.boot_time.as_millis()
                ),
            );
            return Ok(guest);
        };
        let dir = snapshots.current()?;
        let known = self.ready.snapshot(&dir).map(Some).map(Ok);
        match known.unwrap_or_else(|| Snapshot::open(&dir)) {
            Ok(Some(snapshot)) => match self.restore(&snapshot) {
                Ok(guest) => return Ok(guest),
                Err(GuestError::Stopping) => return Err(GuestError::Stopping.into()),
                Err(e) => self.discard(&dir, &chain(&e)),
            },
            Ok(None) => {}
            Err(e) => self.discard(&dir, &chain(&e)),
        }
        let (snapshot, fetched) = {
            let _one_at_a_time = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
            // Another start may have taken it while this one waited.
            match Snapshot::open(&dir) {
                Ok(Some(snapshot)) => (snapshot, false),
                _ => match self.fetch_shared(snapshots, &dir) {
                    Some(snapshot) => (snapshot, true),
                    None => (self.take_and_share(snapshots, &dir)?, false),
                },
            }
        };
        match self.restore(&snapshot) {
            Ok(guest) => Ok(guest),
            Err(GuestError::Stopping) => Err(GuestError::Stopping.into()),
            // Another host's snapshot that does not restore here: take one here instead (it
            // is not fetched again).
            Err(e) if fetched => {
                self.discard(&dir, &chain(&e));
                self.start_environment(provisioned)
            }
            Err(e) => Err(StartError::FreshSnapshot {
                dir: dir.clone(),
                source: Box::new(e),
            }),
        }
    }

    /// Takes the snapshot `dir` here, offers it to the other hosts, and removes the older ones.
    fn take_and_share(
        self: &Arc<Self>,
        snapshots: &Snapshots,
        dir: &Path,
    ) -> Result<Snapshot, StartError> {
        let snapshot = self.take_snapshot(dir)?;
        self.publish_shared(snapshots, dir);
        let removed = snapshots.remove_stale(dir);
        if removed > 0 {
            self.log.service(
                None,
                &format!(
                    "removed {removed} SnapStart snapshot(s) of an older kernel, image or configuration from {}",
                    snapshots.root().display()
                ),
            );
        }
        Ok(snapshot)
    }

    /// The current snapshot as another host of the cluster took it, if one is shared and
    /// usable here; else `None` (and a log line saying why not, when one was there).
    fn fetch_shared(&self, snapshots: &Snapshots, dir: &Path) -> Option<Snapshot> {
        let started = Instant::now();
        match snapshots.fetch_shared(dir) {
            Ok(Some(snapshot)) => {
                self.log.service(
                    None,
                    &format!(
                        "SnapStart snapshot fetched from the cluster in {} ms: {}",
                        started.elapsed().as_millis(),
                        dir.display()
                    ),
                );
                self.ready.offer(&snapshot);
                snapshots.remove_stale(dir);
                Some(snapshot)
            }
            Ok(None) => None,
            Err(why) => {
                self.log.service(
                    None,
                    &format!(
                        "the cluster's SnapStart snapshot {} is not usable here ({why}); booting to take one",
                        dir.display()
                    ),
                );
                None
            }
        }
    }

    /// Offers the snapshot just taken into `dir` to the other hosts of the cluster, if any.
    fn publish_shared(self: &Arc<Self>, snapshots: &Snapshots, dir: &Path) {
        let inner = Arc::downgrade(self);
        snapshots.publish_shared(
            dir,
            Box::new(move |result| {
                if let Some(inner) = inner.upgrade() {
                    let line = match result {
                        Ok(line) => line,
                        Err(why) => {
                            format!("publishing the SnapStart snapshot to the cluster: {why}")
                        }
                    };
                    inner.log.service(None, &line);
                }
            }),
        );
    }

    /// Logs and removes a snapshot that did not restore.
    fn discard(&self, dir: &Path, why: &str) {
        self.ready.forget(dir);
        self.log.service(
            None,
            &format!(
                "discarding the SnapStart snapshot {}: it did not restore: {why}; taking a new one",
                dir.display(),
            ),
        );
        let _one_at_a_time = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = std::fs::remove_dir_all(dir) {
            self.log
                .service(None, &format!("removing {}: {e}", dir.display()));
        }
    }

    /// SnapStart's first step: boots, waits for the runtime's init to finish, and snapshots
    /// into a staging directory beside `dir`, which then becomes `dir` in one rename (so a
    /// snapshot is there whole or not at all).
    fn take_snapshot(self: &Arc<Self>, dir: &Path) -> Result<Snapshot, StartError> {
        let started = std::time::Instant::now();
        let staging = vmm::snapshot::dir::stage(dir).map_err(|source| StartError::Snapshot {
            dir: dir.to_owned(),
            source,
        })?;
        let taken = (|| {
            let env = self.new_env();
            let guest = Guest::boot(&self.spec, env, Some(&staging), self.guest_log(env))?;
            let limit = self.spec.init_timeout + HOST_DEADLINE_SLACK;
            let init = guest.snapshot_after_init(&staging, limit)?;
            Ok::<_, StartError>((env, init))
        })();
        let (env, init) = match taken {
            Ok(taken) => taken,
            Err(e) => {
                vmm::snapshot::dir::discard(&staging);
                return Err(e);
            }
        };
        let published = vmm::snapshot::dir::publish(&staging, dir)
            .and_then(|()| match Snapshot::open_written(dir) {
                Ok(Some(snapshot)) => Ok(snapshot),
                Ok(None) => Err(std::io::Error::other("the vmm wrote no manifest")),
                Err(e) => Err(std::io::Error::other(chain(&e))),
            })
            .map_err(|source| StartError::Snapshot {
                dir: dir.to_owned(),
                source,
            });
        let snapshot = match published {
            Ok(snapshot) => snapshot,
            Err(e) => {
                vmm::snapshot::dir::discard(&staging);
                return Err(e);
            }
        };
        self.log.service(
            Some(env),
            &format!(
                "SnapStart snapshot taken after init (Init Duration {} ms) in {} ms: {}",
                init.as_millis(),
                started.elapsed().as_millis(),
                dir.display()
            ),
        );
        self.ready.offer(&snapshot);
        Ok(snapshot)
    }

    /// Restores `snapshot` in a ready `vmm` process if one is waiting, else in a new one.
    fn restore(self: &Arc<Self>, snapshot: &Snapshot) -> Result<Guest, GuestError> {
        let (prepared, from) = match self.ready.take(&snapshot.dir) {
            Some(prepared) => (prepared, "a ready vmm"),
            None => {
                let prepared = Prepared::for_restore(&self.spec, self.new_env(), snapshot)?;
                (prepared, "a new vmm")
            }
        };
        let env = prepared.env;
        let working_sets = self.snapshots.as_ref().is_some_and(Snapshots::working_sets);
        let working_set = snapshot.working_set();
        let load = working_sets && working_set.exists();
        let mut guest = Guest::resume(
            &self.spec,
            prepared,
            snapshot,
            load.then_some(working_set.as_path()),
            self.guest_log(env),
        )?;
        let vmm_ms = guest.vmm_time.map_or_else(
            || "?".to_owned(),
            |t| format!("{:.1}", t.as_secs_f64() * 1000.0),
        );
        let pages = match &guest.working_set {
            _ if !working_sets => "working sets off".to_owned(),
            None => "no working set yet: recorded after the first invoke".to_owned(),
            Some(used) => match &used.ignored {
                None => format!(
                    "working set of {} pages loaded in {:.1} ms",
                    used.pages, used.load_ms
                ),
                Some(why) => format!(
                    "working set not used ({why}): memory loads lazily, and it is recorded again"
                ),
            },
        };
        let usable = guest
            .working_set
            .as_ref()
            .is_some_and(|u| u.ignored.is_none());
        if working_sets && !usable {
            guest.record_working_set = Some(working_set);
        }
        self.log.service(
            Some(env),
            &format!(
                "microVM restored (into {from}; VMM side {vmm_ms} ms, {pages}, vmm pid {}), init answered after {} ms ({} connection(s))",
                guest.vmm.pid(),
                guest.boot_time.as_millis(),
                guest.dial_attempts
            ),
        );
        Ok(guest)
    }

    /// Keeps the working set of `guest`, a restored guest that just served its first invoke,
    /// beside its snapshot (if it is to record one): the pages that restore and invoke touched,
    /// which the next restores load before the guest runs.
    fn record_working_set(&self, guest: &mut Guest) {
        let Some(path) = guest.record_working_set.take() else {
            return;
        };
        let started = std::time::Instant::now();
        let recorded = guest
            .vmm
            .working_set()
            .map_err(|e| chain(&e))
            .and_then(|set| {
                set.write(&path)
                    .map(|()| set)
                    .map_err(|e| format!("writing {}: {e}", path.display()))
            });
        let message = match recorded {
            Ok(set) => format!(
                "working set recorded after the first invoke: {} pages in {} ranges, {} ({} ms)",
                set.pages(),
                set.ranges.len(),
                path.display(),
                started.elapsed().as_millis()
            ),
            Err(why) => format!("recording the working set failed: {why}"),
        };
        self.log.service(Some(guest.env), &message);
    }

    /// Runs `invocation` in `guest`; returns the guest if it may serve the next invocation.
    fn run(
        &self,
        mut guest: Guest,
        invocation: Invocation,
        stream: &mut dyn FnMut(Streamed),
    ) -> (Option<Guest>, Outcome) {
        let env = Some(guest.env);
        let timeout = Duration::from_secs(u64::from(self.config.timeout_secs));
        let deadline = self.spec.init_timeout + timeout + HOST_DEADLINE_SLACK;
        let result = guest
            .link
            .set_timeout(Some(deadline))
            .and_then(|()| guest.link.invoke_streaming(invocation.into(), stream));
        match result {
            Ok(Outcome::Success(body)) => (Some(guest), Outcome::Success(body)),
            Ok(Outcome::Failure { body, reset }) => {
                let keep = match &reset {
                    None => Some(guest),
                    Some(why) => {
                        let why = match why {
                            host_link::Reset::Timeout => "the function timed out".to_owned(),
                            host_link::Reset::RuntimeExit { reason } => reason.clone(),
                        };
                        self.log.service(
                            env,
                            &format!("the environment was reset ({why}); it is replaced"),
                        );
                        None
                    }
                };
                (keep, Outcome::Failure { body, reset })
            }
            Err(_) if guest.ended() => {
                let message = "the service stopped before the invocation finished";
                self.log.service(env, message);
                (None, failure(error_type::RUNTIME_EXIT, message))
            }
            Err(e) => {
                // A lost link usually means the vmm is dying: give its exit status a moment
                // to show (a PID namespace's process 1 is reaped after its namespace empties).
                let (message, grace) = match &e {
                    LinkError::Frame(proto::host_link::FrameError::Io(io))
                        if io.kind() == std::io::ErrorKind::WouldBlock
                            || io.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        let secs = deadline.as_secs();
                        let message = format!("the microVM did not answer within {secs} s");
                        (message, Duration::ZERO)
                    }
                    _ => (
                        format!("lost the microVM's host link: {}", chain(&e)),
                        Duration::from_millis(500),
                    ),
                };
                let exit = guest
                    .vmm
                    .exited(grace)
                    .map_or_else(|| "still running, killed".to_owned(), |e| e.to_string());
                self.log.service(
                    env,
                    &format!("{message} (vmm: {exit}); the environment is replaced"),
                );
                (None, failure(error_type::RUNTIME_EXIT, &message))
            }
        }
    }
}

fn failure(kind: &str, message: &str) -> Outcome {
    Outcome::failure(ErrorRequest::new(kind, message).to_json())
}

/// A request waiting for an environment. Dropped before it got one (its caller left), it
/// leaves the queue, and an environment handed to it in the meantime goes back to the pool.
struct Waiting {
    inner: Arc<Inner>,
    waiter: u64,
    receive: Option<oneshot::Receiver<Handoff<Guest>>>,
}

impl Waiting {
    async fn handoff(mut self) -> Handoff<Guest> {
        let Some(receive) = self.receive.as_mut() else {
            return Handoff::ShutDown;
        };
        let handoff = receive.await.unwrap_or(Handoff::ShutDown);
        self.receive = None;
        handoff
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut receive) = self.receive.take() else {
            return;
        };
        self.inner.pool().leave(self.waiter);
        receive.close();
        if let Ok(Handoff::Ready(lease)) = receive.try_recv() {
            let back = self
                .inner
                .pool()
                .checkin(lease.id, Some(lease.env), lease.provisioned);
            if let Some(guest) = back {
                self.inner.teardown(guest, "the service is stopping");
            }
        }
    }
}

/// Marks, when dropped before [`CallerWatch::answered`], that the caller hung up (the future
/// that waits for the invocation was dropped).
#[derive(Default)]
struct CallerWatch {
    gone: Arc<AtomicBool>,
    answered: bool,
}

impl CallerWatch {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for CallerWatch {
    fn drop(&mut self) {
        if !self.answered {
            self.gone.store(true, Ordering::Release);
        }
    }
}

impl Invoker for FunctionService {
    fn function(&self) -> &Function {
        &self.inner.function
    }

    fn log(&self, line: &str) {
        self.inner.log.service(None, line);
    }

    fn reserved_concurrency(&self) -> Option<u32> {
        let reserved = self.inner.pool().reserved();
        reserved.map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn set_reserved_concurrency(&self, reserved: Option<u32>) -> Result<(), ConcurrencyError> {
        let max = self.inner.scaling.host.max();
        let asked = reserved.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        if let (Some(asked), Some(n)) = (reserved, asked) {
            if n > max {
                return Err(ConcurrencyError::TooHigh { asked, max });
            }
        }
        self.inner.pool().set_reserved(asked);
        Ok(())
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Outcome, InvokeError> {
        let answer = self.invoke_streaming(invocation).await?;
        Ok(answer.gather(proto::runtime_api::SYNC_PAYLOAD_LIMIT).await)
    }

    /// The blocking task that serves the invocation passes a streamed response's chunks on as
    /// the guest sends them.
    async fn invoke_streaming(&self, invocation: Invocation) -> Result<Answer, InvokeError> {
        let checkout = self.inner.pool().checkout();
        match checkout {
            Ok(checkout) => self.run(checkout, invocation).await,
            Err(refusal) => Err(self.refused(refusal)),
        }
    }

    /// An event waits for an environment instead of being throttled: it tries again each time
    /// one of this host's environments stops being in use.
    async fn invoke_event(
        &self,
        invocation: Invocation,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, InvokeError> {
        let freed = self.inner.scaling.host.freed();
        loop {
            let released = freed.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let checkout = self.inner.pool().checkout();
            match checkout {
                Ok(checkout) => {
                    let answer = self.run(checkout, invocation).await?;
                    return Ok(answer.gather(proto::runtime_api::SYNC_PAYLOAD_LIMIT).await);
                }
                Err(Refusal::ShutDown) => return Err(InvokeError::ShutDown),
                Err(refusal) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(self.refused(refusal));
                    }
                }
            }
        }
    }
}

impl FunctionService {
    /// Runs `invocation` once `checkout` has an environment for it.
    async fn run(
        &self,
        checkout: Checkout<Guest>,
        invocation: Invocation,
    ) -> Result<Answer, InvokeError> {
        let lease = match checkout {
            Checkout::Warm(lease) => lease,
            Checkout::Wait {
                waiter,
                receive,
                start,
            } => {
                let waiting = Waiting {
                    inner: self.inner.clone(),
                    waiter,
                    receive: Some(receive),
                };
                if let Some(id) = start {
                    let inner = self.inner.clone();
                    let started = std::thread::Builder::new()
                        .name(format!("start-{}", self.inner.name()))
                        .spawn(move || inner.start_for_pool(id));
                    if let Err(e) = started {
                        let message = format!("cannot start a thread for the environment: {e}");
                        self.inner.pool().start_failed(id, false, &message);
                    }
                }
                match waiting.handoff().await {
                    Handoff::Ready(lease) => lease,
                    Handoff::Failed(message) => {
                        return Ok(Answer::Whole(failure(error_type::RUNTIME_EXIT, &message)))
                    }
                    Handoff::Refused(refusal) => return Err(self.refused(refusal)),
                    Handoff::ShutDown => return Err(InvokeError::ShutDown),
                }
            }
        };
        self.serve(lease, invocation).await
    }

    /// Runs `invocation` in the environment of `lease`; a response the runtime streams is
    /// passed on chunk by chunk as the guest sends it.
    async fn serve(
        &self,
        lease: Lease<Guest>,
        invocation: Invocation,
    ) -> Result<Answer, InvokeError> {
        // The blocking task owns the environment and gives it back itself: if this future is
        // dropped (the client hung up), the invocation still ends and nothing leaks.
        let inner = self.inner.clone();
        let watch = CallerWatch::default();
        let gone = watch.gone.clone();
        let (answer, answered) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            // Where the answer goes: the whole outcome, or a stream once the runtime starts one.
            // Both the stream's parts and the end reach it, one after the other.
            let reply = std::cell::RefCell::new((Some(answer), None::<StreamSender>));
            let mut on_stream = |part: Streamed| {
                let (answer, streaming) = &mut *reply.borrow_mut();
                match part {
                    Streamed::Start { content_type } => {
                        let (sender, stream) = ResponseStream::channel(content_type);
                        if let Some(answer) = answer.take() {
                            let _ = answer.send(Answer::Stream(stream));
                        }
                        *streaming = Some(sender);
                    }
                    Streamed::Chunk(chunk) => {
                        if let Some(sender) = streaming {
                            // An invoker that has gone drops the rest.
                            sender.blocking_chunk(chunk.into());
                        }
                    }
                }
            };
            let deliver = |outcome| {
                let (answer, streaming) = &mut *reply.borrow_mut();
                match (streaming.take(), answer.take()) {
                    (Some(sender), _) => sender.blocking_end(match outcome {
                        Outcome::Success(_) => StreamEnd::Complete,
                        Outcome::Failure { body, reset } => StreamEnd::Failed { body, reset },
                    }),
                    (None, Some(answer)) => {
                        let _ = answer.send(Answer::Whole(outcome));
                    }
                    (None, None) => {}
                }
            };
            inner.serve(lease, invocation, &mut on_stream, &gone, deliver);
        });
        let answer = answered.await.map_err(|_| InvokeError::ShutDown);
        watch.answered();
        answer
    }

    /// The error for a request that got no environment, logged.
    fn refused(&self, refusal: Refusal) -> InvokeError {
        let reason = match refusal {
            Refusal::Reserved => throttle_reason::RESERVED_FUNCTION,
            Refusal::Host => throttle_reason::ACCOUNT,
            Refusal::ShutDown => return InvokeError::ShutDown,
        };
        self.inner
            .log
            .service(None, &format!("throttled ({reason})"));
        InvokeError::Throttled { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Instant;

    #[test]
    fn failed_provisioning_waits_longer_each_time_and_a_start_resets_it() {
        let mut backoff = Backoff::default();
        assert!(backoff.due());
        let mut waits = Vec::new();
        for _ in 0..9 {
            let before = Instant::now();
            backoff.record(false);
            assert!(!backoff.due(), "retried at once after a failure");
            let wait = backoff.next.unwrap().duration_since(before);
            waits.push(wait.as_secs_f64().round());
        }
        assert_eq!(waits, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
        backoff.record(true);
        assert!(backoff.due());
        assert!(backoff.next.is_none() && backoff.failures == 0);
    }
}
