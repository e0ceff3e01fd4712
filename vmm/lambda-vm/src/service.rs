//! The function service: the emulator-compatible invoke endpoint of local mode, with the
//! function running in a microVM. Each invocation goes over the host link to the guest's init,
//! which serves the Runtime API to the runtime inside the VM.
//!
//! One environment, one invocation at a time (as one Lambda execution environment). The first
//! invocation boots the VM; a timed-out, crashed or unreachable function gets a fresh VM on its
//! next invocation.

use crate::guest::{Guest, GuestError, GuestSpec};
use crate::host_link::{self, Invoke, LinkError};
use crate::snapshots::{KeyError, Snapshots};
use proto::host_link::Blob;
use proto::runtime_api::{function_error_type as error_type, ErrorRequest};
use rapid::sandbox::MAX_QUEUED;
use rapid::{EnvironmentConfig, Invocation, InvokeError, Invoker, Outcome};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Slack on top of the function's timeout before the host gives up on the guest: the guest
/// enforces the timeout itself and reports it; the host's limit only catches a stuck guest.
const HOST_DEADLINE_SLACK: Duration = Duration::from_secs(10);

/// Where the function's log lines go (shared with the guest's host-link reader).
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
    #[error("the start was cancelled")]
    Cancelled(#[source] tokio::task::JoinError),
}

/// An error with its causes, `: `-separated ([`vmm::error::Chain`]).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    vmm::error::Chain(error).to_string()
}

#[derive(Clone)]
pub struct FunctionService {
    inner: Arc<Inner>,
}

struct Inner {
    config: EnvironmentConfig,
    spec: GuestSpec,
    /// For a SnapStart function, where its snapshots live.
    snapshots: Option<Snapshots>,
    guest: tokio::sync::Mutex<Option<Guest>>,
    waiting: AtomicUsize,
    log: LogFn,
}

impl FunctionService {
    /// `log` receives the function's log: the runtime's output and the START/END/REPORT lines
    /// from the guest, and the service's own lines about VMs. `snapshots` is where a SnapStart
    /// function's snapshots live (`None` for other functions).
    pub fn new(
        config: EnvironmentConfig,
        spec: GuestSpec,
        snapshots: Option<Snapshots>,
        log: impl FnMut(&str) + Send + 'static,
    ) -> FunctionService {
        FunctionService {
            inner: Arc::new(Inner {
                config,
                spec,
                snapshots,
                guest: tokio::sync::Mutex::new(None),
                waiting: AtomicUsize::new(0),
                log: Arc::new(Mutex::new(log)),
            }),
        }
    }

    /// Boots the VM now instead of on the first invocation.
    pub async fn start(&self) -> Result<(), StartError> {
        let mut slot = self.inner.guest.lock().await;
        if slot.is_none() {
            let inner = self.inner.clone();
            let guest = tokio::task::spawn_blocking(move || inner.boot())
                .await
                .map_err(StartError::Cancelled)??;
            *slot = Some(guest);
        }
        Ok(())
    }

    /// Asks the guest to power off and waits for the VM to stop.
    pub async fn shutdown(&self) {
        let Some(guest) = self.inner.guest.lock().await.take() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let Guest { link, microvm, .. } = guest;
            if link.shutdown().is_ok() {
                microvm.wait(Some(Duration::from_secs(30)));
            }
            microvm.stop();
        })
        .await;
    }
}

impl Inner {
    fn log(&self, line: &str) {
        (self.log.lock().unwrap_or_else(|e| e.into_inner()))(line);
    }

    /// A cold start: a boot, or for a SnapStart function a restore of its snapshot in a fresh
    /// VM, taking the snapshot first when there is none for the current kernel, image and
    /// configuration.
    fn boot(&self) -> Result<Guest, StartError> {
        let Some(snapshots) = &self.snapshots else {
            let guest = Guest::boot(&self.spec, self.log_sink())?;
            self.log(&format!(
                "lambda-vm: microVM up in {} ms (VMM side), init connected after {} ms",
                guest.vmm_time.as_millis(),
                guest.boot_time.as_millis()
            ));
            return Ok(guest);
        };
        let dir = snapshots.current()?;
        if dir.join(vmm::snapshot::STATE_FILE).exists() {
            match self.restore(&dir) {
                Ok(guest) => return Ok(guest),
                Err(e) => {
                    self.log(&format!(
                        "lambda-vm: discarding the SnapStart snapshot {}: it did not restore: {}; taking a new one",
                        dir.display(),
                        chain(&e)
                    ));
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        self.log(&format!("lambda-vm: removing {}: {e}", dir.display()));
                    }
                }
            }
        }
        self.take_snapshot(&dir)?;
        let removed = snapshots.remove_stale(&dir);
        if removed > 0 {
            self.log(&format!(
                "lambda-vm: removed {removed} SnapStart snapshot(s) of an older kernel, image or configuration from {}",
                snapshots.root().display()
            ));
        }
        self.restore(&dir).map_err(|e| StartError::FreshSnapshot {
            dir: dir.clone(),
            source: Box::new(e),
        })
    }

    /// SnapStart's first step: boots, waits for the runtime's init to finish, and snapshots.
    fn take_snapshot(&self, dir: &Path) -> Result<(), StartError> {
        let guest = Guest::boot(&self.spec, |_| {})?;
        let started = std::time::Instant::now();
        let limit = self.config.init_timeout + HOST_DEADLINE_SLACK;
        let init = guest.snapshot_after_init(dir, limit)?;
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
        self.log(&format!(
            "lambda-vm: microVM restored in {} ms (VMM side), init reconnected after {} ms",
            guest.vmm_time.as_millis(),
            guest.boot_time.as_millis()
        ));
        Ok(guest)
    }

    fn log_sink(&self) -> impl FnMut(&str) + Send + 'static {
        let log = self.log.clone();
        move |line| (log.lock().unwrap_or_else(|e| e.into_inner()))(line)
    }

    /// Runs `invocation` in `guest` (booting one if there is none); returns the guest if it may
    /// serve the next invocation.
    fn run(&self, guest: Option<Guest>, invocation: Invocation) -> (Option<Guest>, Outcome) {
        let mut guest = match guest {
            Some(guest) => guest,
            None => match self.boot() {
                Ok(guest) => guest,
                Err(e) => {
                    let message = chain(&e);
                    self.log(&format!("lambda-vm: {message}"));
                    return (None, failure(error_type::RUNTIME_EXIT, &message));
                }
            },
        };
        let deadline = self.config.init_timeout + self.config.timeout + HOST_DEADLINE_SLACK;
        let result = guest
            .link
            .set_timeout(Some(deadline))
            .and_then(|()| guest.link.invoke(invoke_frame(invocation)));
        match result {
            Ok(host_link::Outcome::Success(body)) => (Some(guest), Outcome::Success(body.into())),
            Ok(host_link::Outcome::Failure { body, reset }) => {
                let keep = match &reset {
                    None => Some(guest),
                    Some(why) => {
                        self.log(&format!(
                            "lambda-vm: the environment was reset ({}); the next invocation gets a fresh microVM",
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
                let message = match &e {
                    LinkError::Frame(proto::host_link::FrameError::Io(io))
                        if io.kind() == std::io::ErrorKind::WouldBlock
                            || io.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        format!("the microVM did not answer within {} s", deadline.as_secs())
                    }
                    _ => format!("lost the microVM's host link: {}", chain(&e)),
                };
                let exit = guest.microvm.wait(Some(Duration::ZERO));
                self.log(&format!("lambda-vm: {message} (VM exit: {exit:?}); the next invocation gets a fresh microVM"));
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
    fn config(&self) -> &EnvironmentConfig {
        &self.inner.config
    }

    fn log(&self, line: &str) {
        self.inner.log(line);
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Outcome, InvokeError> {
        let inner = &self.inner;
        if inner.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
            inner.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::QueueFull);
        }
        let mut slot = inner.guest.lock().await;
        let guest = slot.take();
        let worker = inner.clone();
        let joined = tokio::task::spawn_blocking(move || worker.run(guest, invocation)).await;
        inner.waiting.fetch_sub(1, Ordering::AcqRel);
        match joined {
            Ok((guest, outcome)) => {
                *slot = guest;
                Ok(outcome)
            }
            Err(_) => Err(InvokeError::ShutDown),
        }
    }
}
