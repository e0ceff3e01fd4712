//! The function service: the emulator-compatible invoke endpoint of local mode, with the
//! function running in a microVM. Each invocation goes over the host link to the guest's init,
//! which serves the Runtime API to the runtime inside the VM.
//!
//! One environment, one invocation at a time (as one Lambda execution environment). The first
//! invocation boots the VM; a timed-out, crashed or unreachable function gets a fresh VM on its
//! next invocation.

pub mod guest;

use crate::host_link::{self, Invoke, LinkError};
use guest::{Guest, GuestSpec};
use proto::host_link::Blob;
use proto::runtime_api::{function_error_type as error_type, ErrorRequest};
use rapid::sandbox::MAX_QUEUED;
use rapid::{FunctionConfig, Invocation, InvokeError, Invoker, Outcome};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Slack on top of the function's timeout before the host gives up on the guest: the guest
/// enforces the timeout itself and reports it; the host's limit only catches a stuck guest.
const HOST_DEADLINE_SLACK: Duration = Duration::from_secs(10);

/// Where the function's log lines go (shared with the guest's host-link reader).
type LogFn = Arc<Mutex<dyn FnMut(&str) + Send>>;

#[derive(Clone)]
pub struct FunctionService {
    inner: Arc<Inner>,
}

struct Inner {
    config: FunctionConfig,
    spec: GuestSpec,
    guest: tokio::sync::Mutex<Option<Guest>>,
    waiting: AtomicUsize,
    log: LogFn,
}

impl FunctionService {
    /// `log` receives the function's log: the runtime's output and the START/END/REPORT lines
    /// from the guest, and the service's own lines about VMs.
    pub fn new(
        config: FunctionConfig,
        spec: GuestSpec,
        log: impl FnMut(&str) + Send + 'static,
    ) -> FunctionService {
        FunctionService {
            inner: Arc::new(Inner {
                config,
                spec,
                guest: tokio::sync::Mutex::new(None),
                waiting: AtomicUsize::new(0),
                log: Arc::new(Mutex::new(log)),
            }),
        }
    }

    /// Boots the VM now instead of on the first invocation.
    pub async fn start(&self) -> Result<(), String> {
        let mut slot = self.inner.guest.lock().await;
        if slot.is_none() {
            let inner = self.inner.clone();
            let guest = tokio::task::spawn_blocking(move || inner.boot())
                .await
                .map_err(|e| e.to_string())??;
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

    /// A cold start: a restore of the SnapStart snapshot when there is one; otherwise a boot,
    /// and for a SnapStart function, a snapshot after init and then a restore of it.
    fn boot(&self) -> Result<Guest, String> {
        let spec = &self.spec;
        let limit = self.config.init_timeout + HOST_DEADLINE_SLACK;
        if spec.snapshot_dir.is_some() && !crate::snapshot::restores_linux_user_space() {
            let mut guest = Guest::boot(spec, self.log_sink()).map_err(|e| e.to_string())?;
            let init = guest
                .resume_in_place(limit)
                .map_err(|e| format!("SnapStart: {e}"))?;
            self.log(&format!(
                "lambda-vm: SnapStart without a snapshot (restored guests do not run user space on this host's kvm_pvm): resumed the booted microVM in place after init (Init Duration {} ms)",
                init.as_millis()
            ));
            return Ok(guest);
        }
        if let Some(dir) = &spec.snapshot_dir {
            if !dir.join(crate::snapshot::STATE_FILE).exists() {
                let guest = Guest::boot(spec, |_| {}).map_err(|e| e.to_string())?;
                let started = std::time::Instant::now();
                let init = guest
                    .snapshot_after_init(dir, limit)
                    .map_err(|e| format!("SnapStart snapshot: {e}"))?;
                self.log(&format!(
                    "lambda-vm: SnapStart snapshot taken after init (Init Duration {} ms) in {} ms",
                    init.as_millis(),
                    started.elapsed().as_millis()
                ));
            }
            let guest = Guest::restore(spec, dir, self.log_sink()).map_err(|e| e.to_string())?;
            self.log(&format!(
                "lambda-vm: microVM restored, init reconnected after {} ms",
                guest.boot_time.as_millis()
            ));
            return Ok(guest);
        }
        let guest = Guest::boot(spec, self.log_sink()).map_err(|e| e.to_string())?;
        self.log(&format!(
            "lambda-vm: microVM up, init connected after {} ms",
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
                    self.log(&format!("lambda-vm: {e}"));
                    return (None, failure(error_type::RUNTIME_EXIT, &e));
                }
            },
        };
        let deadline = self.config.init_timeout + self.config.timeout + HOST_DEADLINE_SLACK;
        let result = guest
            .link
            .set_timeout(Some(deadline))
            .and_then(|()| guest.link.invoke(invoke_frame(invocation)));
        let crashes = guest.link.take_crashes();
        match result {
            Ok(outcome) => {
                let (outcome, timed_out) = match outcome {
                    host_link::Outcome::Success(body) => (Outcome::Success(body.into()), false),
                    host_link::Outcome::Failure(body) => {
                        let timed_out =
                            error_type_of(&body).as_deref() == Some(error_type::TIMEOUT);
                        (Outcome::Failure(body.into()), timed_out)
                    }
                };
                if timed_out || !crashes.is_empty() {
                    self.log("lambda-vm: the function timed out or crashed; the next invocation gets a fresh microVM");
                    return (None, outcome);
                }
                (Some(guest), outcome)
            }
            Err(e) => {
                let message = match &e {
                    LinkError::Frame(proto::host_link::FrameError::Io(io))
                        if io.kind() == std::io::ErrorKind::WouldBlock
                            || io.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        format!("the microVM did not answer within {} s", deadline.as_secs())
                    }
                    _ => format!("lost the microVM's host link: {e}"),
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
    Outcome::Failure(ErrorRequest::new(kind, message).to_json().into())
}

fn error_type_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("errorType")?.as_str().map(str::to_owned)
}

impl Invoker for FunctionService {
    fn config(&self) -> &FunctionConfig {
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
