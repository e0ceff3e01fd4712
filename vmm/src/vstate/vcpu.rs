//! One vCPU and the thread that runs it: KVM_RUN in a loop, port I/O and MMIO exits handed to
//! the buses, and every way a run can end turned into a [`VmExit`].

use crate::arch::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitSignal, VmExit};
use crate::persist::Persist;
use crate::seccomp::{self, ThreadKind};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{VcpuExit, VcpuFd};
use logging::Chain;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::vcpu_state::{self, VcpuState, VcpuStateError};
use super::vm::{Vm, VmError};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {id}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("{what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("starting the vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] VcpuStateError),
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with CPUID fitted to it, `masked` features hidden, the boot
    /// MSRs and PC-style LINT pins.
    pub fn new(
        vm: &Vm,
        id: u8,
        count: u8,
        masked: &[cpuid::FeatureBit],
    ) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        let mut supported = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VcpuError::Kvm {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        cpuid::normalize(&mut supported, id, count, masked);
        fd.set_cpuid2(&supported).map_err(|source| VcpuError::Kvm {
            what: "KVM_SET_CPUID2",
            source,
        })?;
        regs::setup_msrs(&fd)?;
        regs::setup_lint(&fd)?;
        Ok(Vcpu { id, fd })
    }

    /// Puts the boot vCPU at a 64-bit kernel's entry point.
    pub fn setup_boot(&self, memory: &GuestMemoryMmap, entry: u64) -> Result<(), VcpuError> {
        regs::setup_boot_vcpu(&self.fd, memory, entry)?;
        Ok(())
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// An I/O exit the VMM just handled is completed by the next KVM_RUN; with `immediate_exit`
    /// that run completes it and returns at once, so the saved state holds no half-done
    /// instruction.
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    /// One KVM_RUN; `Some` when the VM must stop.
    fn run_once(&mut self, context: &VcpuContext) -> Option<VmExit> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !context.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                context.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !context.mmio.read(addr, data) {
                    data.fill(0);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                context.mmio.write(addr, data);
                None
            }
            // With the in-kernel irqchip KVM handles HLT itself; an exit here means the guest
            // halted for good.
            Ok(VcpuExit::Hlt) => Some(VmExit::Shutdown),
            Ok(VcpuExit::Shutdown) => Some(self.crash("triple fault (KVM_EXIT_SHUTDOWN)")),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => Some(VmExit::Shutdown),
                KVM_SYSTEM_EVENT_CRASH => Some(self.crash("guest reported a crash")),
                other => Some(self.crash(&format!("unknown system event {other}"))),
            },
            Ok(VcpuExit::InternalError) => Some(
                self.crash("KVM internal error (an instruction the hypervisor could not emulate?)"),
            ),
            Ok(VcpuExit::FailEntry(reason, _)) => {
                Some(self.crash(&format!("VM entry failed, reason {reason:#x}")))
            }
            Ok(VcpuExit::Intr) => None,
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                Some(self.crash(&what))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmExit::VmmError(format!("vcpu{id}: KVM_RUN: {e}"))),
        }
    }

    fn crash(&self, what: &str) -> VmExit {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
        VmExit::GuestCrash(format!("vcpu{}: {what} at rip {rip:#x}", self.id))
    }
}

impl<'a> Persist<'a> for Vcpu {
    type State = VcpuState;
    /// The MSRs to read: KVM's `KVM_GET_MSR_INDEX_LIST`.
    type SaveArgs = &'a [u32];
    /// The VM the vCPU is created in.
    type RestoreArgs = &'a Vm;
    type SaveError = VcpuError;
    type RestoreError = VcpuError;

    /// The vCPU's state; call it only while the vCPU is not running.
    fn save(&self, msr_list: &'a [u32]) -> Result<VcpuState, VcpuError> {
        Ok(vcpu_state::save(self.id, &self.fd, msr_list)?)
    }

    /// Creates vCPU `state.id` in `vm` with the state a snapshot recorded.
    fn restore(vm: &'a Vm, state: &VcpuState) -> Result<Vcpu, VcpuError> {
        let id = state.id;
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        vcpu_state::restore(&fd, state)?;
        Ok(Vcpu { id, fd })
    }
}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// A no-op handler, so the kick signal interrupts KVM_RUN (EINTR) instead of killing us.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            log::warn!("installing the vCPU kick handler: {e}");
        }
    });
}

/// What the VMM wants the vCPU threads to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Run,
    Pause,
    Exit,
}

struct Gate {
    command: Command,
    /// Per vCPU: its thread is waiting for a command, with its vCPU unlocked.
    parked: Vec<bool>,
}

/// The vCPU threads of a VM, one per vCPU, for the VM's whole life. Pausing parks them (out of
/// `KVM_RUN`, the vCPU unlocked so its state can be read) and resuming wakes the same threads:
/// a thread started later would be a child of the main thread and inherit its seccomp filter,
/// which does not allow `KVM_RUN`.
pub struct VcpuThreads {
    vcpus: Vec<Arc<Mutex<Vcpu>>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
    /// Read by the run loop on every exit, so it does not take the gate's lock each time.
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU, running at once or (`paused`) parked until [`resume`].
    ///
    /// [`resume`]: VcpuThreads::resume
    pub fn start(
        vcpus: Vec<Vcpu>,
        context: VcpuContext,
        paused: bool,
    ) -> Result<VcpuThreads, VcpuError> {
        install_kick_handler();
        let command = if paused { Command::Pause } else { Command::Run };
        let mut threads = VcpuThreads {
            gate: Arc::new((
                Mutex::new(Gate {
                    command,
                    parked: vec![false; vcpus.len()],
                }),
                Condvar::new(),
            )),
            stop: Arc::new(AtomicBool::new(paused)),
            vcpus: vcpus
                .into_iter()
                .map(|vcpu| Arc::new(Mutex::new(vcpu)))
                .collect(),
            threads: Vec::new(),
        };
        for (index, vcpu) in threads.vcpus.iter().enumerate() {
            let id = lock(vcpu).id;
            let worker = VcpuWorker {
                index,
                vcpu: vcpu.clone(),
                gate: threads.gate.clone(),
                stop: threads.stop.clone(),
                context: context.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => threads.threads.push(handle),
                Err(e) => {
                    threads.end();
                    return Err(VcpuError::Thread(e));
                }
            }
        }
        Ok(threads)
    }

    /// Stops every vCPU after the instruction it is in, and returns once all are parked.
    pub fn pause(&self) {
        {
            let mut gate = lock(&self.gate.0);
            if gate.command == Command::Exit {
                return;
            }
            gate.command = Command::Pause;
            self.stop.store(true, Ordering::Release);
        }
        self.wait_parked();
    }

    /// Runs the parked vCPUs again.
    pub fn resume(&self) {
        let mut gate = lock(&self.gate.0);
        if gate.command == Command::Exit {
            return;
        }
        // Cleared before the threads can see `Run`, so none leaves again at once.
        self.stop.store(false, Ordering::Release);
        gate.command = Command::Run;
        self.gate.1.notify_all();
    }

    /// Whether the vCPUs are paused (or stopped for good).
    pub fn is_paused(&self) -> bool {
        lock(&self.gate.0).command != Command::Run
    }

    /// Every vCPU's state, in id order; the vCPUs must be paused.
    pub fn save_states(&self, msr_list: &[u32]) -> Result<Vec<VcpuState>, VcpuError> {
        if !self.is_paused() {
            return Err(VcpuError::State(VcpuStateError::Invalid {
                what: "saving",
                why: "the vCPUs are running; pause them first".into(),
            }));
        }
        self.vcpus
            .iter()
            .map(|vcpu| lock(vcpu).save(msr_list))
            .collect()
    }

    /// Ends the threads (each after the instruction it is in) and waits for them.
    pub fn end(&mut self) {
        {
            let mut gate = lock(&self.gate.0);
            gate.command = Command::Exit;
            self.stop.store(true, Ordering::Release);
            self.gate.1.notify_all();
        }
        for thread in std::mem::take(&mut self.threads) {
            while !thread.is_finished() {
                if thread.kill(kick_signal()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = thread.join();
        }
    }

    /// Kicks the threads still in `KVM_RUN` until every one is parked. A signal sent just
    /// before a thread enters `KVM_RUN` would be missed, so the kick is repeated.
    fn wait_parked(&self) {
        let (gate, parked) = &*self.gate;
        let mut state = lock(gate);
        loop {
            let running: Vec<usize> = (0..state.parked.len())
                .filter(|&i| !state.parked[i])
                .collect();
            if running.is_empty() {
                return;
            }
            for index in running {
                if let Some(thread) = self.threads.get(index) {
                    if thread.is_finished() {
                        // A thread that ended (it cannot start its filter) has nothing to park.
                        state.parked[index] = true;
                    } else {
                        let _ = thread.kill(kick_signal());
                    }
                }
            }
            state = parked
                .wait_timeout(state, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.end();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One vCPU thread's share of [`VcpuThreads`].
struct VcpuWorker {
    index: usize,
    vcpu: Arc<Mutex<Vcpu>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
    stop: Arc<AtomicBool>,
    context: VcpuContext,
}

impl VcpuWorker {
    fn run(self) {
        // Before the first KVM_RUN: no guest code runs in an unfiltered thread.
        if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
            let id = lock(&self.vcpu).id;
            let why = Chain(&e).to_string();
            self.context
                .exit
                .post(VmExit::VmmError(format!("vcpu{id}: {why}")));
            return;
        }
        while self.wait_for_run() {
            let mut vcpu = lock(&self.vcpu);
            let mut exited = false;
            while !self.stop.load(Ordering::Acquire) && self.context.exit.get().is_none() {
                if let Some(exit) = vcpu.run_once(&self.context) {
                    self.context.exit.post(exit);
                    exited = true;
                    break;
                }
            }
            if !exited {
                vcpu.complete_pending_io();
            }
        }
    }

    /// Parks until told to run (true) or to end (false). A VM that has stopped never runs
    /// again: its threads stay parked until they are ended.
    fn wait_for_run(&self) -> bool {
        let (gate, changed) = &*self.gate;
        let mut state = lock(gate);
        loop {
            match state.command {
                Command::Exit => return false,
                Command::Run if self.context.exit.get().is_none() => {
                    state.parked[self.index] = false;
                    return true;
                }
                Command::Run | Command::Pause => {}
            }
            if !state.parked[self.index] {
                state.parked[self.index] = true;
                changed.notify_all();
            }
            state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}
