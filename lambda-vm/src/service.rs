//! One function's execution environments: a pool of microVMs, each its own `vmm` process
//! serving one invocation at a time, as Lambda's execution environments do.
//!
//! A request with no idle environment starts one (a restore of the SnapStart snapshot, or a
//! boot) while the function is under its reserved concurrency and the host under its cap;
//! beyond them it is refused at once ([`InvokeError::Throttled`], a 429). Provisioned
//! environments are started up front and kept; others are torn down after idling. An
//! environment that timed out, crashed or lost its link is dropped, never reused. Each
//! invocation runs on a blocking thread that owns its environment and gives it back itself, so
//! a client that hangs up leaks nothing.

use crate::guest::{Guest, GuestError, GuestSpec};
use crate::host_link::{self, Invoke, LinkError, Streamed};
use crate::pool::{Counts, Environment, HostLimit, Lease, Pool, Refusal};
use crate::snapshots::{KeyError, Snapshots};
use front_door::{Function, Invoker};
use proto::function_config::FunctionConfig;
use proto::host_link::Blob;
use proto::invoke::{
    Answer, Invocation, InvokeError, Outcome, ResponseStream, StreamEnd, StreamSender,
};
use proto::invoke_api::throttle_reason;
use proto::runtime_api::{function_error_type as error_type, ErrorRequest};
use proto::InitializationType;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Slack on top of the function's timeout before the host gives up on the guest: the guest
/// enforces the timeout itself and reports it; the host's limit only catches a stuck guest.
const HOST_DEADLINE_SLACK: Duration = Duration::from_secs(10);
/// How often idle environments are checked for expiry and provisioned ones topped up.
const MAINTENANCE_EVERY: Duration = Duration::from_millis(250);
/// How long a torn-down guest gets to power off before its `vmm` is killed.
const TEARDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where the function's log lines go (shared with the guests' host-link readers).
type LogFn = Arc<Mutex<dyn FnMut(&str) + Send>>;

/// Why an environment could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    SnapshotKey(#[from] KeyError),
    /// A snapshot just taken from a booted guest did not restore: restore itself is broken
    /// here, and no snapshot will do better.
    #[error("SnapStart: the snapshot just taken in {} did not restore", dir.display())]
    FreshSnapshot {
        dir: PathBuf,
        #[source]
        source: Box<GuestError>,
    },
}

/// An error with its causes, `: `-separated, for log lines ([`vmm::error::Chain`]).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    vmm::error::Chain(error).to_string()
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
    log: LogFn,
}

impl FunctionService {
    /// `log` receives the function's log: the runtime's output and the START/END/REPORT lines
    /// from the guests, and the service's own lines about environments. `snapshots` is where a
    /// SnapStart function's snapshots live (`None` for other functions). Provisioned
    /// environments start at once, in the background.
    pub fn new(
        function: Function,
        config: FunctionConfig,
        spec: GuestSpec,
        snapshots: Option<Snapshots>,
        scaling: Scaling,
        log: impl FnMut(&str) + Send + 'static,
    ) -> FunctionService {
        let pool = Pool::new(scaling.reserved, scaling.host.clone());
        let inner = Arc::new(Inner {
            function,
            config,
            spec,
            snapshots,
            scaling,
            pool: Mutex::new(pool),
            snapshotting: Mutex::new(()),
            log: Arc::new(Mutex::new(log)),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name(format!("pool-{}", inner.config.function_name))
            .spawn(move || maintain(weak))
            .ok();
        FunctionService { inner }
    }

    pub fn name(&self) -> &str {
        &self.inner.config.function_name
    }

    /// The function's reserved concurrency, if it has one.
    pub fn reserved_concurrency(&self) -> Option<usize> {
        self.inner.scaling.reserved
    }

    /// Environments per state.
    pub fn counts(&self) -> Counts {
        self.inner.pool().counts()
    }

    /// Stops every environment: idle ones now (asked to power off, then killed), busy ones when
    /// their invocation ends.
    pub async fn shutdown(&self) {
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
    // first restore's path; later starts only compare file metadata.
    if let Some(snapshots) = inner.upgrade().as_ref().and_then(|i| i.snapshots.as_ref()) {
        let _ = snapshots.current();
    }
    let mut provisioning = Backoff::default();
    loop {
        std::thread::sleep(MAINTENANCE_EVERY);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let expired = inner.pool().expire(inner.scaling.idle_timeout);
        for guest in expired {
            let idle = inner.scaling.idle_timeout.as_secs_f64();
            inner.teardown(guest, &format!("idle for {idle:.0} s"));
        }
        if !provisioning.due() {
            continue;
        }
        let missing = inner.pool().provisioned_missing(inner.scaling.provisioned);
        for _ in 0..missing {
            let started = inner.provision();
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

impl Inner {
    fn log(&self, line: &str) {
        (self.log.lock().unwrap_or_else(|e| e.into_inner()))(line);
    }

    fn pool(&self) -> MutexGuard<'_, Pool<Guest>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> &str {
        &self.config.function_name
    }

    fn log_sink(&self) -> impl FnMut(&str) + Send + 'static {
        let log = self.log.clone();
        move |line| (log.lock().unwrap_or_else(|e| e.into_inner()))(line)
    }

    /// Starts one provisioned environment and adds it to the pool, idle; false if it failed.
    fn provision(&self) -> bool {
        let id = self.pool().begin_provisioning();
        match self.start_environment(true) {
            Ok(guest) => {
                self.log(&format!(
                    "lambda-vm: {}: provisioned environment ready (vmm pid {})",
                    self.name(),
                    guest.vmm.pid()
                ));
                if let Some(guest) = self.pool().provisioned_up(id, guest) {
                    self.teardown(guest, "the service is stopping");
                }
                true
            }
            Err(e) => {
                self.pool().provisioning_failed(id);
                self.log(&format!(
                    "lambda-vm: {}: a provisioned environment failed to start: {}",
                    self.name(),
                    chain(&e)
                ));
                false
            }
        }
    }

    /// Asks the guest to power off, gives it a moment, then kills its `vmm`; its directory
    /// goes with it.
    fn teardown(&self, guest: Guest, why: &str) {
        let pid = guest.vmm.pid();
        guest.shutdown(TEARDOWN_GRACE);
        self.log(&format!(
            "lambda-vm: {}: tore down the environment of vmm pid {pid} ({why})",
            self.name()
        ));
    }

    /// Serves one invocation with `lease`'s environment (starting one if the lease says so),
    /// then gives the environment back.
    fn serve(
        &self,
        lease: Lease<Guest>,
        invocation: Invocation,
        stream: &mut dyn FnMut(Streamed),
    ) -> Outcome {
        let (id, guest, provisioned) = match lease {
            Lease::Warm {
                id,
                env,
                provisioned,
            } => (id, env, provisioned),
            Lease::Start { id } => match self.start_environment(false) {
                Ok(guest) => {
                    self.pool().started(id, guest.vmm.pid());
                    (id, guest, false)
                }
                Err(e) => {
                    self.pool().start_failed(id);
                    let message = chain(&e);
                    self.log(&format!("lambda-vm: {}: {message}", self.name()));
                    return failure(error_type::RUNTIME_EXIT, &message);
                }
            },
        };
        let (kept, outcome) = self.run(guest, invocation, stream);
        if let Some(guest) = self.pool().checkin(id, kept, provisioned) {
            self.teardown(guest, "the service is stopping");
        }
        outcome
    }

    /// A new environment: for a SnapStart function a restore of its snapshot in a fresh VM
    /// (taking the snapshot first when there is none for the current kernel, image and
    /// configuration), otherwise a boot. A provisioned environment of an on-demand function
    /// runs its init at once, as Lambda's do.
    fn start_environment(&self, provisioned: bool) -> Result<Guest, StartError> {
        let Some(snapshots) = &self.snapshots else {
            let guest =
                if provisioned && self.config.initialization_type == InitializationType::OnDemand {
                    let mut spec = self.spec.clone();
                    let init_type = InitializationType::ProvisionedConcurrency;
                    spec.boot_args = Some(format!(
                        "{} INIT_INITIALIZATION_TYPE={init_type}",
                        spec.boot_args()
                    ));
                    Guest::boot(&spec, None, self.log_sink())?
                } else {
                    Guest::boot(&self.spec, None, self.log_sink())?
                };
            self.log(&format!(
                "lambda-vm: {}: scaled out: microVM booted (vmm pid {}), init connected after {} ms",
                self.name(),
                guest.vmm.pid(),
                guest.boot_time.as_millis()
            ));
            return Ok(guest);
        };
        let dir = snapshots.current()?;
        if dir.join(vmm::snapshot::STATE_FILE).exists() {
            match self.restore(&dir) {
                Ok(guest) => return Ok(guest),
                Err(e) => self.discard(&dir, &e),
            }
        }
        {
            let _one_at_a_time = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
            // Another start may have taken it while this one waited.
            if !dir.join(vmm::snapshot::STATE_FILE).exists() {
                self.take_snapshot(&dir)?;
                let removed = snapshots.remove_stale(&dir);
                if removed > 0 {
                    self.log(&format!(
                        "lambda-vm: removed {removed} SnapStart snapshot(s) of an older kernel, image or configuration from {}",
                        snapshots.root().display()
                    ));
                }
            }
        }
        self.restore(&dir).map_err(|e| StartError::FreshSnapshot {
            dir: dir.clone(),
            source: Box::new(e),
        })
    }

    /// Logs and removes a snapshot that did not restore.
    fn discard(&self, dir: &Path, error: &GuestError) {
        self.log(&format!(
            "lambda-vm: discarding the SnapStart snapshot {}: it did not restore: {}; taking a new one",
            dir.display(),
            chain(error)
        ));
        let _one_at_a_time = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = std::fs::remove_dir_all(dir) {
            self.log(&format!("lambda-vm: removing {}: {e}", dir.display()));
        }
    }

    /// SnapStart's first step: boots, waits for the runtime's init to finish, and snapshots.
    fn take_snapshot(&self, dir: &Path) -> Result<(), StartError> {
        let started = std::time::Instant::now();
        let guest = Guest::boot(&self.spec, Some(dir), |_| {})?;
        let limit = self.spec.init_timeout + HOST_DEADLINE_SLACK;
        let init = guest.snapshot_after_init(limit)?;
        self.log(&format!(
            "lambda-vm: SnapStart snapshot taken after init (Init Duration {} ms) in {} ms: {}",
            init.as_millis(),
            started.elapsed().as_millis(),
            dir.display()
        ));
        Ok(())
    }

    fn restore(&self, dir: &Path) -> Result<Guest, GuestError> {
        let guest = Guest::restore(&self.spec, dir, self.log_sink())?;
        let vmm_ms = guest.vmm_time.map_or_else(
            || "?".to_owned(),
            |t| format!("{:.1}", t.as_secs_f64() * 1000.0),
        );
        self.log(&format!(
            "lambda-vm: microVM restored in {vmm_ms} ms (VMM side, vmm pid {}), init reconnected after {} ms",
            guest.vmm.pid(),
            guest.boot_time.as_millis()
        ));
        Ok(guest)
    }

    /// Runs `invocation` in `guest`; returns the guest if it may serve the next invocation.
    fn run(
        &self,
        mut guest: Guest,
        invocation: Invocation,
        stream: &mut dyn FnMut(Streamed),
    ) -> (Option<Guest>, Outcome) {
        let timeout = Duration::from_secs(u64::from(self.config.timeout_secs));
        let deadline = self.spec.init_timeout + timeout + HOST_DEADLINE_SLACK;
        let result = guest.link.set_timeout(Some(deadline)).and_then(|()| {
            guest
                .link
                .invoke_streaming(invoke_frame(invocation), stream)
        });
        match result {
            Ok(host_link::Outcome::Success(body)) => (Some(guest), Outcome::Success(body.into())),
            Ok(host_link::Outcome::Failure { body, reset }) => {
                let keep = match &reset {
                    None => Some(guest),
                    Some(why) => {
                        self.log(&format!(
                            "lambda-vm: {}: the environment was reset ({}); it is replaced",
                            self.config.function_name,
                            match why {
                                host_link::Reset::Timeout => "the function timed out".to_owned(),
                                host_link::Reset::RuntimeExit { reason } => reason.clone(),
                            }
                        ));
                        None
                    }
                };
                let body = body.into();
                (keep, Outcome::Failure { body, reset })
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
                let exit = guest.vmm.exited(grace);
                self.log(&format!(
                    "lambda-vm: {}: {message} (vmm exit: {exit:?}); the environment is replaced",
                    self.config.function_name
                ));
                (None, failure(error_type::RUNTIME_EXIT, &message))
            }
        }
    }
}

fn invoke_frame(invocation: Invocation) -> Invoke {
    Invoke {
        request_id: invocation.request_id,
        event: Blob(invocation.event.to_vec()),
        trace_id: invocation.trace_id,
        client_context: invocation.client_context,
        cognito_identity: invocation.cognito_identity,
    }
}

fn failure(kind: &str, message: &str) -> Outcome {
    Outcome::failure(ErrorRequest::new(kind, message).to_json())
}

impl Invoker for FunctionService {
    fn function(&self) -> &Function {
        &self.inner.function
    }

    fn log(&self, line: &str) {
        self.inner.log(line);
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Outcome, InvokeError> {
        let answer = self.invoke_streaming(invocation).await?;
        Ok(answer.gather(proto::runtime_api::SYNC_PAYLOAD_LIMIT).await)
    }

    /// The blocking task that serves the invocation passes a streamed response's chunks on as
    /// the guest sends them.
    async fn invoke_streaming(&self, invocation: Invocation) -> Result<Answer, InvokeError> {
        let lease = self.inner.pool().checkout();
        let lease = match lease {
            Ok(lease) => lease,
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::Reserved => throttle_reason::RESERVED_FUNCTION,
                    Refusal::Host => throttle_reason::ACCOUNT,
                    Refusal::ShutDown => return Err(InvokeError::ShutDown),
                };
                self.inner.log(&format!(
                    "lambda-vm: {}: throttled ({reason})",
                    self.inner.name()
                ));
                return Err(InvokeError::Throttled { reason });
            }
        };
        // The blocking task owns the environment and gives it back itself: if this future is
        // dropped (the client hung up), the invocation still ends and nothing leaks.
        let inner = self.inner.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut answer = Some(answer);
            let mut streaming: Option<StreamSender> = None;
            let mut on_stream = |part: Streamed| match part {
                Streamed::Start { content_type } => {
                    let (sender, stream) = ResponseStream::channel(content_type);
                    if let Some(answer) = answer.take() {
                        let _ = answer.send(Answer::Stream(stream));
                    }
                    streaming = Some(sender);
                }
                Streamed::Chunk(chunk) => {
                    if let Some(sender) = &streaming {
                        // An invoker that has gone drops the rest.
                        sender.blocking_chunk(chunk.into());
                    }
                }
            };
            let outcome = inner.serve(lease, invocation, &mut on_stream);
            match (streaming, answer) {
                (Some(sender), _) => sender.blocking_end(match outcome {
                    Outcome::Success(_) => StreamEnd::Complete,
                    Outcome::Failure { body, reset } => StreamEnd::Failed { body, reset },
                }),
                (None, Some(answer)) => {
                    let _ = answer.send(Answer::Whole(outcome));
                }
                (None, None) => {}
            }
        });
        answered.await.map_err(|_| InvokeError::ShutDown)
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
