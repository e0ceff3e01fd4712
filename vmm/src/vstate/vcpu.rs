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
use std::sync::{Arc, Once};
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
    pub stop: Arc<AtomicBool>,
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

    /// Runs the vCPU on its own thread until the VM exits or `context.stop` is set; the thread
    /// hands the vCPU back, so a paused VM can be saved or resumed.
    pub fn spawn(self, context: VcpuContext) -> Result<JoinHandle<Vcpu>, VcpuError> {
        install_kick_handler();
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run(context))
            .map_err(VcpuError::Thread)
    }

    fn run(mut self, context: VcpuContext) -> Vcpu {
        // Before the first KVM_RUN: no guest code runs in an unfiltered thread.
        if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
            let why = Chain(&e).to_string();
            context
                .exit
                .post(VmExit::VmmError(format!("vcpu{}: {why}", self.id)));
            return self;
        }
        while !context.stop.load(Ordering::Acquire) && context.exit.get().is_none() {
            if let Some(exit) = self.run_once(&context) {
                context.exit.post(exit);
                return self;
            }
        }
        self.complete_pending_io();
        self
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

/// Stops vCPU threads: sets `stop`, then signals each thread until it returns (a signal sent
/// just before a thread enters KVM_RUN would be missed, so keep sending).
pub fn stop_all(stop: &AtomicBool, threads: Vec<JoinHandle<Vcpu>>) -> Vec<Vcpu> {
    stop.store(true, Ordering::Release);
    let mut vcpus = Vec::with_capacity(threads.len());
    for thread in threads {
        while !thread.is_finished() {
            if thread.kill(kick_signal()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Ok(vcpu) = thread.join() {
            vcpus.push(vcpu);
        }
    }
    vcpus
}
