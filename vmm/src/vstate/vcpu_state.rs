//! A vCPU's architectural state, as a snapshot stores it, and how to read and restore it.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Why a vCPU's state could not be read, or put back into a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("{what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU state, {what}: {why}")]
    Invalid { what: &'static str, why: String },
}

/// MSRs a running Linux guest cannot do without: system-call entry, TSC, kvm-clock and the
/// paravirtual features, PAT. A restore that cannot put one of these back fails; the other MSRs
/// KVM lists are restored where KVM takes them.
const ESSENTIAL_MSRS: &[u32] = &[
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0x10,        // IA32_TSC
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0x2ff,       // MTRR_DEF_TYPE
    0x6e0,       // IA32_TSC_DEADLINE
    MSR_KVM_WALL_CLOCK_NEW,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_INT,
    MSR_KVM_STEAL_TIME,
    MSR_KVM_PV_EOI_EN,
];
const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// The vector of "page ready" notifications. It must be set before `MSR_KVM_ASYNC_PF_EN`
/// enables them: without it a guest task that took an asynchronous page fault on a page of the
/// (lazily mapped) memory file would wait forever for its page.
const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;

/// The order MSRs go back in: KVM's list order, but the async-PF vector first.
fn restore_rank(index: u32) -> u8 {
    u8::from(index != MSR_KVM_ASYNC_PF_INT)
}

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The XSAVE area, which holds the FPU and SSE state; where KVM cannot give it, the bytes
    /// of `kvm_fpu` instead (kvm-bindings has no serde for that struct).
    pub fpu: FpuState,
    pub xcrs: Option<kvm_xcrs>,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<(u32, u64)>,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

#[derive(Serialize, Deserialize)]
pub enum FpuState {
    Xsave(Box<kvm_xsave>),
    Legacy(Vec<u8>),
}

fn fpu_to_bytes(fpu: &kvm_fpu) -> Vec<u8> {
    let len = std::mem::size_of::<kvm_fpu>();
    // SAFETY: `kvm_fpu` is a `repr(C)` struct of integer arrays and integers with no padding,
    // so all `len` bytes behind the reference are initialized and may be read as `u8`.
    unsafe { std::slice::from_raw_parts((fpu as *const kvm_fpu).cast::<u8>(), len) }.to_vec()
}

fn fpu_from_bytes(bytes: &[u8]) -> Option<kvm_fpu> {
    if bytes.len() != std::mem::size_of::<kvm_fpu>() {
        return None;
    }
    let mut fpu = kvm_fpu::default();
    // SAFETY: the destination is a whole `kvm_fpu`, exactly `bytes.len()` bytes long; every bit
    // pattern is a valid `kvm_fpu` (integers only), and the regions cannot overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut fpu as *mut kvm_fpu).cast::<u8>(),
            bytes.len(),
        )
    };
    Some(fpu)
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { what, source }
}

/// Reads the state of a vCPU that is not running: every MSR in `msr_list` (KVM's
/// `KVM_GET_MSR_INDEX_LIST`) that it can read.
pub fn save(id: u8, fd: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?;
    let mut msrs = Vec::with_capacity(msr_list.len());
    for &index in msr_list.iter().chain(ESSENTIAL_MSRS) {
        if msrs.iter().any(|&(i, _)| i == index) {
            continue;
        }
        let entry = kvm_msr_entry {
            index,
            ..Default::default()
        };
        let Ok(mut one) = Msrs::from_entries(&[entry]) else {
            continue;
        };
        if fd.get_msrs(&mut one) == Ok(1) {
            msrs.push((index, one.as_slice()[0].data));
        }
    }
    Ok(VcpuState {
        id,
        cpuid: cpuid.as_slice().to_vec(),
        regs: fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
        fpu: match fd.get_xsave() {
            Ok(xsave) => FpuState::Xsave(Box::new(xsave)),
            Err(_) => FpuState::Legacy(fpu_to_bytes(&fd.get_fpu().map_err(kvm("KVM_GET_FPU"))?)),
        },
        xcrs: fd.get_xcrs().ok(),
        lapic: fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
        msrs,
        mp_state: fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
        events: fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Puts `state` into a freshly created vCPU. The order matters: CPUID before MSRs and XSAVE
/// (they are checked against it), special registers (the APIC base) before the LAPIC, and the
/// pending events last.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuStateError::Invalid {
        what: "CPUID",
        why: format!("{} entries is too many", state.cpuid.len()),
    })?;
    fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    fd.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    fd.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    match &state.fpu {
        FpuState::Xsave(xsave) => {
            // SAFETY: `xsave` is a whole `kvm_xsave` (4 KiB); the legacy KVM_SET_XSAVE reads no
            // more than that struct holds.
            unsafe { fd.set_xsave(xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        }
        FpuState::Legacy(bytes) => {
            let fpu = fpu_from_bytes(bytes).ok_or_else(|| VcpuStateError::Invalid {
                what: "FPU",
                why: format!("{} bytes, not a kvm_fpu", bytes.len()),
            })?;
            fd.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
        }
    }
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    }
    fd.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    let mut ordered: Vec<(u32, u64)> = state.msrs.clone();
    ordered.sort_by_key(|&(index, _)| restore_rank(index));
    for (index, data) in ordered {
        let entry = kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let taken = Msrs::from_entries(&[entry])
            .ok()
            .and_then(|msrs| fd.set_msrs(&msrs).ok())
            == Some(1);
        if !taken {
            if ESSENTIAL_MSRS.contains(&index) {
                return Err(VcpuStateError::Invalid {
                    what: "MSRs",
                    why: format!("KVM refused MSR {index:#x}"),
                });
            }
            // Read-only and host-only MSRs (platform info, capabilities) read back fine but
            // cannot be written; the vCPU already has KVM's value for them.
            log::debug!("restore: KVM refused MSR {index:#x}; keeping its own value");
        }
    }
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_vcpu_events(&state.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
