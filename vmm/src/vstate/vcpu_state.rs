//! A vCPU's architectural state, as a snapshot stores it, and how to read and restore it.

use super::vcpu::VcpuError;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// MSRs a running Linux guest depends on: system-call entry, TSC, kvm-clock and paravirtual
/// features, PAT. Each is read on its own, and one KVM does not have is left out, so a snapshot
/// holds exactly what can be put back.
const SAVED_MSRS: &[u32] = &[
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x10,        // IA32_TSC
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0x2ff,       // MTRR_DEF_TYPE
    0x6e0,       // IA32_TSC_DEADLINE
    0x4b56_4d00, // KVM_WALL_CLOCK_NEW
    0x4b56_4d01, // KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // KVM_ASYNC_PF_EN
    0x4b56_4d03, // KVM_STEAL_TIME
    0x4b56_4d04, // KVM_PV_EOI_EN
];

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

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Kvm { what, source }
}

/// Reads the state of a vCPU that is not running.
pub fn save(id: u8, fd: &VcpuFd) -> Result<VcpuState, VcpuError> {
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?;
    let mut msrs = Vec::with_capacity(SAVED_MSRS.len());
    for &index in SAVED_MSRS {
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
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::State {
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
            let fpu = fpu_from_bytes(bytes).ok_or_else(|| VcpuError::State {
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
    let entries: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::State {
        what: "MSRs",
        why: format!("{} entries is too many", entries.len()),
    })?;
    let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        let index = entries.get(set).map(|e| e.index).unwrap_or_default();
        return Err(VcpuError::State {
            what: "MSRs",
            why: format!("KVM refused MSR {index:#x}"),
        });
    }
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_vcpu_events(&state.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
