//! Seccomp filters for the `vmm` process, one per thread kind, built with `seccompiler`.
//!
//! The guest is hostile: whatever it makes a vCPU or a device do runs in one of our threads, so
//! each thread may make only the system calls its kind needs ([`rules`]), and any other call
//! kills the whole process (`SECCOMP_RET_KILL_PROCESS`, seen by the parent as death by SIGSYS).
//!
//! The `vmm` binary compiles the filters at start ([`Filters::compile`]) and [`enable`]s them;
//! from then on each vCPU thread and the device thread install theirs ([`install`]) first thing,
//! before they run any guest code or touch a guest-filled queue; so does the API thread before it
//! reads a client's byte. The main thread installs its own once the VM is built and running: it
//! does all the setup (files, KVM, memory) first and afterwards only waits, answers the API's
//! typed requests (pause, resume, snapshot), and exits. A library user that never calls
//! [`enable`] (tests, benches) runs unfiltered.

mod rules;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::sync::OnceLock;

pub use rules::allowed_syscalls;

/// The kinds of thread in a `vmm` process, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that builds the VM, then waits for its end or a snapshot request.
    Main,
    /// The device event loop: virtio queues, the vsock muxer's sockets, block I/O.
    EventLoop,
    /// A vCPU: `KVM_RUN`, port I/O and MMIO exits.
    Vcpu,
    /// The API thread (`--api-sock`): accepts clients, reads and answers their requests.
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::EventLoop,
        ThreadKind::Vcpu,
        ThreadKind::Api,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::EventLoop => "event loop",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {} thread's seccomp filter", .0.name())]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    #[error("compiling the {} thread's seccomp filter", .0.name())]
    Compile(ThreadKind, #[source] seccompiler::BackendError),
    #[error("installing the {} thread's seccomp filter", .0.name())]
    Install(ThreadKind, #[source] seccompiler::Error),
}

/// The compiled filter of every thread kind.
pub struct Filters {
    main: BpfProgram,
    event_loop: BpfProgram,
    vcpu: BpfProgram,
    api: BpfProgram,
}

impl Filters {
    pub fn compile() -> Result<Filters, SeccompError> {
        Ok(Filters {
            main: compile(ThreadKind::Main)?,
            event_loop: compile(ThreadKind::EventLoop)?,
            vcpu: compile(ThreadKind::Vcpu)?,
            api: compile(ThreadKind::Api)?,
        })
    }

    fn of(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::EventLoop => &self.event_loop,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Api => &self.api,
        }
    }

    /// Installs `kind`'s filter on the calling thread (and the threads it starts later). It
    /// cannot be removed; `no_new_privs` is set on the way, as the kernel requires of a process
    /// without CAP_SYS_ADMIN.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        seccompiler::apply_filter(self.of(kind)).map_err(|e| SeccompError::Install(kind, e))
    }
}

fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules::rules(kind).map_err(|e| SeccompError::Build(kind, e))?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind, e))
}

static ENABLED: OnceLock<Filters> = OnceLock::new();

/// Makes [`install`] install `filters` in every thread that calls it from now on. A second call
/// is ignored: filters, once on, stay on.
pub fn enable(filters: Filters) {
    let _ = ENABLED.set(filters);
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    ENABLED.get().is_some()
}

/// Installs `kind`'s filter on the calling thread if filters are [`enable`]d; does nothing
/// otherwise.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    match ENABLED.get() {
        Some(filters) => filters.install(kind),
        None => Ok(()),
    }
}
